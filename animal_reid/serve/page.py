"""The review page served at ``/``: plain HTML and a little JavaScript, no build step.

Upload a photo (draw a box on it or type one), see the top candidates beside their catalogue photos with
scores, then click "same as ..." or "new individual"; the page posts the sighting with the bearer token typed
into it (kept in the browser's localStorage). The species field offers the catalogue's species (``/v1/species``)
as a drop-down and still takes a new one.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>animal-reid review</title>
<link rel="icon" href="data:,">
<style>
 body { font-family: sans-serif; margin: 1.5em; max-width: 70em; }
 fieldset { margin-bottom: 1em; }
 label { margin-right: 1em; }
 #preview { max-width: 28em; max-height: 20em; border: 1px solid #888; cursor: crosshair; }
 .row { display: flex; gap: 1em; flex-wrap: wrap; }
 .cand { border: 1px solid #aaa; padding: .5em; width: 15em; }
 .cand img { max-width: 100%; max-height: 10em; display: block; }
 #status { font-weight: bold; margin: .5em 0; }
 .error { color: #b00; }
</style>
</head>
<body>
<h1>Who is this?</h1>
<fieldset>
 <label>Photo <input type="file" id="file" accept="image/jpeg,image/png,image/webp"></label>
 <label>Species <input id="species" list="species-list" value="" placeholder="e.g. lion" size="12"
  autocomplete="off"></label>
 <datalist id="species-list"></datalist>
 <label>Box x,y,w,h <input id="box" placeholder="drag on the photo" size="18"></label>
 <label>Token <input id="token" type="password" size="12"></label>
 <button id="identify">Identify</button>
</fieldset>
<canvas id="preview" width="0" height="0"></canvas>
<div id="status"></div>
<div id="verdict"></div>
<div class="row" id="candidates"></div>
<p>
 <label>New individual's name <input id="new-name" size="16"></label>
 <button id="new-individual">New individual</button>
</p>
<script>
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (ch) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[ch]));
let img = null, scale = 1, drag = null;
$("token").value = localStorage.getItem("animal-reid-token") || "";
$("token").addEventListener("change", () => localStorage.setItem("animal-reid-token", $("token").value));

async function loadSpecies() {
  try {
    const r = await fetch("/v1/species");
    if (!r.ok) return;
    const list = $("species-list");
    list.innerHTML = "";
    for (const s of (await r.json()).species) {
      const o = document.createElement("option");
      o.value = s.name;
      o.label = `${s.name}: ${s.individuals} individuals`;
      list.appendChild(o);
    }
  } catch (err) { /* the list is a convenience: typing a species still works */ }
}
loadSpecies();
function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}
function draw(box) {
  const c = $("preview"), ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0, c.width, c.height);
  if (box) { ctx.strokeStyle = "red"; ctx.lineWidth = 2;
             ctx.strokeRect(box[0] / scale, box[1] / scale, box[2] / scale, box[3] / scale); }
}
$("file").addEventListener("change", () => {
  const f = $("file").files[0];
  if (!f) return;
  img = new Image();
  img.onload = () => {
    scale = Math.max(1, img.width / 448);
    $("preview").width = img.width / scale; $("preview").height = img.height / scale;
    draw(null);
  };
  img.src = URL.createObjectURL(f);
});
$("preview").addEventListener("mousedown", (e) => { drag = [e.offsetX, e.offsetY]; });
$("preview").addEventListener("mouseup", (e) => {
  if (!drag || !img) return;
  const x = Math.min(drag[0], e.offsetX), y = Math.min(drag[1], e.offsetY);
  const w = Math.abs(e.offsetX - drag[0]), h = Math.abs(e.offsetY - drag[1]);
  drag = null;
  if (w < 4 || h < 4) return;
  const box = [x, y, w, h].map((v) => Math.round(v * scale));
  $("box").value = box.join(",");
  draw(box);
});

function form() {
  const fd = new FormData();
  fd.append("file", $("file").files[0]);
  if ($("box").value.trim()) fd.append("box", $("box").value.trim());
  return fd;
}
async function call(url, fd, write) {
  const headers = write ? { "Authorization": "Bearer " + $("token").value } : {};
  const r = await fetch(url, { method: "POST", body: fd, headers });
  const body = await r.json();
  if (!r.ok) throw new Error(body.detail || r.statusText);
  return body;
}
function candidate(c) {
  const div = document.createElement("div");
  div.className = "cand";
  const photos = c.photos.map((p) => `<img src="${p.url}" alt="sighting ${p.sighting_id}">`).join("");
  div.innerHTML = `<b>#${c.rank} ${esc(c.name)}</b> score ${c.score.toFixed(3)}${photos}`;
  const b = document.createElement("button");
  b.className = "confirm"; b.dataset.individual = c.individual_id;
  b.textContent = "same as " + c.name;
  b.addEventListener("click", () => record({ individual_id: c.individual_id }, c.name));
  div.appendChild(b);
  return div;
}
$("identify").addEventListener("click", async () => {
  if (!$("file").files[0]) { status("choose a photo first", true); return; }
  $("candidates").innerHTML = ""; $("verdict").textContent = "";
  status("identifying...");
  const fd = form(); fd.append("species", $("species").value.trim()); fd.append("top_k", "5");
  try {
    const r = await call("/v1/identify", fd, false);
    r.candidates.forEach((c) => $("candidates").appendChild(candidate(c)));
    $("verdict").textContent = r.new_individual === null ? "no calibrated threshold: your call"
      : r.new_individual ? "looks like a new individual" : "looks like a known individual";
    status(r.candidates.length + " candidates");
  } catch (err) { status(err.message, true); }
});
async function record(fields, name) {
  const fd = form();
  for (const [k, v] of Object.entries(fields)) fd.append(k, v);
  try {
    const r = await call("/v1/sightings", fd, true);
    status(`recorded sighting ${r.id} of ${r.individual_name} (individual ${r.individual_id})`);
    loadSpecies();
  } catch (err) { status(err.message, true); }
}
$("new-individual").addEventListener("click", () => {
  if (!$("file").files[0]) { status("choose a photo first", true); return; }
  const name = $("new-name").value.trim();
  if (!name) { status("type the new individual's name", true); return; }
  record({ name, species: $("species").value.trim() }, name);
});
</script>
</body>
</html>
"""
