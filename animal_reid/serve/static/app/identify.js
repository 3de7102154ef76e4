"use strict";
// One photo at a time: choose it, draw or type a box, identify, compare, and file it as "same as <name>" or
// as a new individual. Choosing another photo clears the candidates first; clearing the box field clears the
// rectangle; a button from an earlier photo files nothing; buttons are disabled from the click to the answer.

const I = { img: null, url: null, scale: 1, drag: null, shown: 0, busy: false };

function idResult() {
  return $("identify-result");
}

/** Forget the candidates shown (first thing on a new photo or a new identify). */
function clearIdentify() {
  idResult().replaceChildren();
  I.shown += 1;
  return I.shown;
}

function parseBoxField() {
  const text = $("box").value.trim();
  if (!text) return null;
  const box = text.split(",").map(Number);
  return box.length === 4 && box.every(Number.isFinite) && box[2] > 0 && box[3] > 0 ? box : null;
}

function drawPreview() {
  const canvas = $("preview");
  if (!I.img) return;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(I.img, 0, 0, canvas.width, canvas.height);
  const box = parseBoxField();
  if (!box) return;
  ctx.strokeStyle = "red";
  ctx.lineWidth = 2;
  ctx.strokeRect(box[0] / I.scale, box[1] / I.scale, box[2] / I.scale, box[3] / I.scale);
}

function choosePhoto() {
  clearIdentify();
  $("box").value = "";
  say("", "", "identify-msg");
  const file = $("file").files[0];
  if (I.url) URL.revokeObjectURL(I.url);
  I.img = null;
  I.url = null;
  if (!file) return;
  I.url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {
    I.img = img;
    I.scale = Math.max(1, img.width / 448);
    $("preview").width = Math.round(img.width / I.scale);
    $("preview").height = Math.round(img.height / I.scale);
    drawPreview();
  };
  img.src = I.url;
}

/** Canvas point in photo pixels (the canvas may be shown smaller than its own size at phone width). */
function photoPoint(event) {
  const canvas = $("preview");
  const rect = canvas.getBoundingClientRect();
  const k = (canvas.width / rect.width) * I.scale;
  return [(event.clientX - rect.left) * k, (event.clientY - rect.top) * k];
}

function endDrag(event) {
  if (!I.drag || !I.img) return;
  const [x1, y1] = photoPoint(event);
  const [x0, y0] = I.drag;
  I.drag = null;
  const box = [Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0)].map(Math.round);
  if (box[2] < 4 || box[3] < 4) return;
  $("box").value = box.join(",");
  drawPreview();
}

function sightingForm(fields, withMeta = true) {
  const form = new FormData();
  form.append("file", $("file").files[0]);
  const box = parseBoxField();
  if (box) form.append("box", box.join(","));
  for (const key of withMeta ? ["observer", "site", "notes"] : []) {
    const value = $("id-" + key).value.trim();
    if (value) form.append(key, value);
  }
  for (const [k, v] of Object.entries(fields)) form.append(k, v);
  return form;
}

async function identify() {
  const ticket = clearIdentify();
  if (!$("file").files[0]) return say("choose a photo first", "error", "identify-msg");
  if ($("box").value.trim() && !parseBoxField()) {
    return say("box: type x,y,w,h (4 numbers) or leave it empty", "error", "identify-msg");
  }
  say("identifying…", "", "identify-msg");
  const form = sightingForm({ species: $("species").value.trim(), top_k: "5" }, false);
  try {
    const answer = await api("/v1/identify", { form });
    if (ticket !== I.shown) return; // another photo was chosen meanwhile
    showCandidates(answer, ticket);
    say(`${answer.candidates.length} candidates`, "", "identify-msg");
  } catch (err) {
    if (ticket === I.shown) say(err.message, "error", "identify-msg");
  }
}

function verdict(answer) {
  if (answer.band !== undefined) return bandChip(answer.band, answer.band_reason);
  if (answer.new_individual === null || answer.new_individual === undefined) {
    return bandChip(null, "no threshold for this species");
  }
  return bandChip(answer.new_individual ? "new" : "known", "");
}

function showCandidates(answer, ticket) {
  const name = h("input", { id: "new-name", autocomplete: "off", maxlength: "200" });
  const form = h("form", { id: "new-form" }, h("label", {}, "New individual's name ", name),
    h("button", { type: "submit", id: "new-individual" }, "new individual"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!name.value.trim()) return say("type the new individual's name", "error", "identify-msg");
    record({ name: name.value.trim(), species: answer.species }, ticket, `new individual ${name.value.trim()}`);
  });
  renderComparison(idResult(), {
    photos: [{ url: I.url, box: parseBoxField(), alt: "your photo", blob: $("file").files[0] }],
    candidates: answer.candidates,
    header: h("p", { id: "verdict" }, verdict(answer), " best score ", score2(answer.best_score)),
    decisions: form,
    onSame: (cand) => record({ individual_id: cand.individual_id }, ticket, `same as ${cand.name}`),
  });
}

async function record(fields, ticket, what) {
  if (I.busy) return;
  if (ticket !== I.shown) {
    return say("those candidates belonged to an earlier photo: nothing was filed", "error", "identify-msg");
  }
  I.busy = true;
  setButtons(idResult(), true);
  say(`filing: ${what}…`, "", "identify-msg");
  try {
    const s = await api("/v1/sightings", { form: sightingForm(fields) });
    clearIdentify(); // filed: its candidates leave the view
    const flag = s.flag ? " — flagged: " + s.flag : "";
    say(`recorded sighting ${s.id} of ${s.individual_name} (individual ${s.individual_id})${flag}`, "ok", "identify-msg");
    fillSpecies("species-list");
  } catch (err) {
    say(err.message, "error", "identify-msg");
    if (ticket === I.shown) setButtons(idResult(), false);
  } finally {
    I.busy = false;
  }
}

function setupIdentify() {
  $("file").addEventListener("change", choosePhoto);
  $("box").addEventListener("input", drawPreview);
  $("identify").addEventListener("click", identify);
  const canvas = $("preview");
  canvas.addEventListener("pointerdown", (e) => { if (I.img) I.drag = photoPoint(e); });
  canvas.addEventListener("pointerup", endDrag);
}
