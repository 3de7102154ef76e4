"use strict";
// The catalogue: individuals per species, searched by name or alias; each links to its page. Export links below.

const C = { offset: 0, limit: 50 };

function individualRow(ind) {
  const cover = ind.cover ? zoomable(ind.cover.url, `${ind.name}`, { class: "thumb zoomable" }) : "";
  const also = (ind.aliases || []).join(", ");
  const aliases = also ? h("span", { class: "muted" }, ` (also ${also})`) : "";
  return h("tr", { dataset: { individual: ind.id } },
    h("td", {}, cover),
    h("td", {}, h("a", { href: `${ROOT}/individuals/${ind.id}` }, ind.name), aliases),
    h("td", {}, ind.species),
    h("td", {}, String(ind.n_sightings ?? "")),
    h("td", { class: "wide" }, String(ind.n_encounters ?? "")),
    h("td", { class: "wide" }, when(ind.first_seen, "—")),
    h("td", {}, when(ind.last_seen, "—")));
}

async function loadList(more) {
  C.offset = more ? C.offset + C.limit : 0;
  const params = { species: $("cat-species").value, q: $("cat-q").value.trim(), limit: C.limit, offset: C.offset };
  try {
    const data = await api("/v1/individuals" + query(params));
    const page = Array.isArray(data) ? { total: data.length, individuals: data } : data;
    const rows = page.individuals.map(individualRow);
    if (more) $("cat-rows").append(...rows);
    else $("cat-rows").replaceChildren(...rows);
    const shown = $("cat-rows").children.length;
    $("cat-total").textContent = `${page.total} individual(s)` + (shown < page.total ? `, ${shown} shown` : "");
    $("cat-more").classList.toggle("hidden", shown >= page.total);
    say(page.total ? "" : "No individuals match.", "", "cat-msg");
  } catch (err) {
    say(err.message, "error", "cat-msg");
  }
}

function search(event) {
  if (event) event.preventDefault();
  const params = { species: $("cat-species").value, q: $("cat-q").value.trim() };
  history.replaceState(null, "", location.pathname + query(params));
  exportLinks($("export-links"), params.species, "export-msg");
  loadList(false);
}

async function setupCatalogue() {
  setupSignin();
  const params = new URLSearchParams(location.search);
  await fillSpecies("cat-species");
  if (params.get("species")) {
    ensureOption($("cat-species"), params.get("species"));
    $("cat-species").value = params.get("species");
  }
  $("cat-q").value = params.get("q") || "";
  $("search-form").addEventListener("submit", search);
  $("cat-species").addEventListener("change", search);
  $("cat-more").addEventListener("click", () => loadList(true));
  search();
}

setupCatalogue();
