"use strict";
// An individual's page: its sightings over time (photo, date, place, observer, notes), rename and edit notes and
// aliases, merge another individual into it, delete it (photo files are kept), its change history, exports.

const P = { id: Number(location.pathname.split("/").filter(Boolean).pop()), ind: null, confirm: null };

async function loadIndividual() {
  try {
    P.ind = await api(`/v1/individuals/${P.id}`);
  } catch (err) {
    $("ind-body").classList.add("hidden");
    return say(err.message, "error");
  }
  renderIndividual(P.ind);
  loadHistory();
  loadMergeChoices();
}

function renderIndividual(ind) {
  document.title = `animal-reid: ${ind.name}`;
  $("ind-name").textContent = ind.name;
  $("back").href = `${ROOT}/catalogue${query({ species: ind.species })}`;
  const aliases = (ind.aliases || []).length ? ` · also known as ${ind.aliases.join(", ")}` : "";
  const seen = ind.first_seen ? ` · seen ${when(ind.first_seen)} to ${when(ind.last_seen)}` : "";
  $("ind-meta").textContent = `${ind.species} · individual ${ind.id} · ${ind.n_sightings} sighting(s)` +
    (ind.n_encounters !== undefined ? ` in ${ind.n_encounters} encounter(s)` : "") + seen + aliases;
  $("ind-notes").textContent = ind.notes || "";
  $("ind-notes").classList.toggle("hidden", !ind.notes);
  $("edit-name").value = ind.name;
  $("edit-aliases").value = (ind.aliases || []).join(", ");
  $("edit-notes").value = ind.notes || "";
  $("delete-button").textContent = `Delete ${ind.name}…`;
  const rows = (ind.sightings || []).map((s) => sightingItem(ind, s));
  $("sightings").replaceChildren(...(rows.length ? rows : [h("li", { class: "muted" }, "No sightings.")]));
  exportLinks($("export-links"), ind.species, "export-msg");
  $("ind-body").classList.remove("hidden");
}

function place(s) {
  const coords = s.lat !== null && s.lat !== undefined && s.lon !== null && s.lon !== undefined
    ? `${Number(s.lat).toFixed(5)}, ${Number(s.lon).toFixed(5)}` : null;
  return [s.site, coords].filter(Boolean).join(" · ") || "place unknown";
}

function sightingItem(ind, s) {
  const url = s.url || `${ROOT}/v1/photos/${s.photo}`;
  const facts = [`sighting ${s.id}`, s.encounter_id ? `encounter ${s.encounter_id}` : null,
    s.viewpoint ? `viewpoint ${s.viewpoint}` : null, s.observer ? `observed by ${s.observer}` : null,
    `filed ${when(s.created_at)}${s.created_by ? " by " + s.created_by : ""}`].filter(Boolean).join(" · ");
  return h("li", { dataset: { sighting: s.id } },
    zoomable(url, `${ind.name}, sighting ${s.id}`),
    h("div", {},
      h("strong", { class: "when" }, when(s.taken_at)), h("div", { class: "place" }, place(s)),
      h("div", { class: "muted" }, facts),
      s.notes ? h("div", {}, s.notes) : null,
      s.flag ? h("div", { class: "flag" }, "⚑ " + s.flag) : null));
}

// --- history ---------------------------------------------------------------------------------------------

function changeText(c) {
  const before = c.before || {}, after = c.after || {};
  const changed = (k) => k in before && JSON.stringify(before[k]) !== JSON.stringify(after[k]);
  const fields = Object.keys(after).filter(changed);
  const diff = fields.map((k) => `${k}: ${JSON.stringify(before[k])} → ${JSON.stringify(after[k])}`).join("; ");
  const what = {
    "individual.create": "created", "individual.update": "edited", "individual.delete": "deleted",
    "individual.merge": `merged (individual ${c.other_id})`, "sighting.add": `sighting ${c.sighting_id} added`,
    "sighting.update": `sighting ${c.sighting_id} edited`, "sighting.delete": `sighting ${c.sighting_id} removed`,
  }[c.kind] || c.kind;
  return `${when(c.at)} · ${c.actor} · ${what}${diff ? " (" + diff + ")" : ""}`;
}

async function loadHistory() {
  try {
    const data = await api("/v1/changes" + query({ individual_id: P.id, limit: 100 }));
    const newest = (data.changes || []).slice().reverse();
    const rows = newest.map((c) => h("li", { dataset: { kind: c.kind } }, changeText(c)));
    $("history").replaceChildren(...(rows.length ? rows : [h("li", { class: "muted" }, "No changes logged.")]));
  } catch (err) {
    const text = err.status === 404 ? "No change log on this server." : err.message;
    $("history").replaceChildren(h("li", { class: "muted" }, text));
  }
}

// --- edit, merge, delete ------------------------------------------------------------------------------------

async function save(event) {
  event.preventDefault();
  const aliases = $("edit-aliases").value.split(",").map((a) => a.trim()).filter(Boolean);
  const body = { name: $("edit-name").value.trim(), notes: $("edit-notes").value, aliases };
  $("edit-save").disabled = true;
  try {
    await api(`/v1/individuals/${P.id}`, { method: "PATCH", json: body });
    say("saved ✓", "ok");
    await loadIndividual();
  } catch (err) {
    say(err.message, "error");
  } finally {
    $("edit-save").disabled = false;
  }
}

async function loadMergeChoices() {
  try {
    const data = await api("/v1/individuals" + query({ species: P.ind.species, limit: 500 }));
    const all = Array.isArray(data) ? data : data.individuals;
    const others = all.filter((i) => i.id !== P.id);
    const options = others.map((i) => h("option", { value: i.id }, `${i.name} (${i.n_sightings} sightings)`));
    $("merge-source").replaceChildren(...options);
    $("merge-button").disabled = !others.length;
  } catch (err) {
    say(err.message, "error");
  }
}

/** Ask before a change that cannot be undone from the page; ``action`` runs on "Yes". */
function ask(text, action) {
  P.confirm = action;
  $("confirm-text").textContent = text;
  $("confirm").classList.remove("hidden");
  $("confirm-no").focus();
}

async function answer(yes) {
  const action = P.confirm;
  P.confirm = null;
  $("confirm").classList.add("hidden");
  if (!yes || !action) return;
  $("confirm-yes").disabled = true;
  try {
    await action();
  } catch (err) {
    say(err.message, "error");
  } finally {
    $("confirm-yes").disabled = false;
  }
}

function askMerge(event) {
  event.preventDefault();
  const select = $("merge-source");
  if (!select.value) return;
  const other = select.options[select.selectedIndex].textContent;
  const question = `Merge ${other} into ${P.ind.name}? Its sightings and names move here (its name becomes an alias).`;
  ask(question, async () => {
    await api(`/v1/individuals/${P.id}/merge`, { json: { source: Number(select.value) } });
    say(`merged ${other} into ${P.ind.name} ✓`, "ok");
    await loadIndividual();
  });
}

function askDelete() {
  ask(`Delete ${P.ind.name} and its ${P.ind.n_sightings} sighting(s)? The photo files are kept.`, async () => {
    const gone = await api(`/v1/individuals/${P.id}`, { method: "DELETE" });
    $("ind-body").classList.add("hidden");
    $("ind-name").textContent = `${P.ind.name} (deleted)`;
    const also = gone && gone.sightings !== undefined ? ` and ${gone.sightings} sighting(s)` : "";
    say(`deleted ${P.ind.name}${also} ✓`, "ok");
  });
}

function setupIndividual() {
  setupSignin();
  $("edit-form").addEventListener("submit", save);
  $("merge-form").addEventListener("submit", askMerge);
  $("delete-button").addEventListener("click", askDelete);
  $("confirm-yes").addEventListener("click", () => answer(true));
  $("confirm-no").addEventListener("click", () => answer(false));
  loadIndividual();
}

setupIndividual();
