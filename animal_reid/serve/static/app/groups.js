"use strict";
// Proposed new individuals (discovery groups: queue items that look like one animal nobody has filed yet),
// reviewed as groups: accept one under a name, split an item off, or merge two groups.

const G = { groups: [] };

async function loadGroups() {
  try {
    const data = await api("/v1/groups" + query({ species: $("queue-species").value, status: "proposed" }));
    G.groups = (data.groups || []).filter((g) => g.status === "proposed");
  } catch (err) {
    G.groups = [];
    if (err.status !== 404) say(err.message, "error", "groups-msg");
  }
  renderGroups();
}

function renderGroups() {
  const cards = G.groups.map(groupCard);
  const none = h("p", { class: "muted" }, "No proposed new individuals.");
  $("groups").replaceChildren(...(cards.length ? cards : [none]));
}

function itemThumb(id) {
  const item = Q.items.find((i) => i.id === id);
  const first = item && item.photos[0];
  return first ? zoomable(first.url, `item ${id}`, { class: "thumb zoomable" }) : null;
}

function splitButton(group, id) {
  const done = `item ${id} split off group ${group.id}`;
  const body = { items: [id], version: group.version };
  return h("button", { type: "button", class: "split",
    onclick: (e) => groupAction(e.currentTarget, `/v1/groups/${group.id}/split`, body, done) }, "split off");
}

function acceptForm(group) {
  const name = h("input", { value: group.proposed_name || "", autocomplete: "off", maxlength: "200" });
  const form = h("form", { class: "accept" }, h("label", {}, "Name ", name),
    h("button", { type: "submit", class: "primary" }, "accept as a new individual"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = name.value.trim();
    if (!chosen) return say("type a name for the new individual", "error", "groups-msg");
    groupAction(event.submitter, `/v1/groups/${group.id}/accept`, { name: chosen, version: group.version },
      `group ${group.id} filed as ${chosen}`);
  });
  return form;
}

function mergeRow(group) {
  const others = G.groups.filter((g) => g.id !== group.id);
  if (!others.length) return null;
  const target = h("select", {},
    others.map((g) => h("option", { value: g.id }, `group ${g.id} (${g.items.length} items)`)));
  const merge = (e) => groupAction(e.currentTarget, "/v1/groups/merge",
    { groups: [group.id, Number(target.value)] }, `groups ${group.id} and ${target.value} merged`);
  return h("p", {}, h("label", {}, "Merge with ", target),
    h("button", { type: "button", class: "merge", onclick: merge }, "merge"));
}

function groupCard(group) {
  const items = group.items.map((id) => h("li", { dataset: { item: id } }, itemThumb(id), ` item ${id} `,
    group.items.length > 1 ? splitButton(group, id) : null));
  return h("article", { class: "cand group", dataset: { group: group.id } },
    h("h3", {}, `group ${group.id}: ${group.items.length} item(s) · ${group.status}`),
    h("ul", { class: "plain" }, items), acceptForm(group), mergeRow(group));
}

async function groupAction(button, path, body, done) {
  const card = button.closest("article");
  setButtons(card, true);
  try {
    await api(path, { json: body });
    say(done + " ✓", "ok", "groups-msg");
  } catch (err) {
    say(err.message, "error", "groups-msg");
    setButtons(card, false);
  }
  await loadQueue();
  await loadGroups();
}
