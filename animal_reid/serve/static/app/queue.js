"use strict";
// The review queue: items waiting with their band; open one to compare it with its candidates and decide
// "same as <name>" / "new individual" / "unsure (skip)" / "not an animal". Guards against filing mistakes:
// - opening an item clears the previous item's candidates before anything else;
// - a decision carries the version of the item shown (a stale one is refused by the server with 409);
// - a button that no longer belongs to the item shown files nothing;
// - every button is disabled from the click until the answer, and for ARM_MS after a new item appears
//   (so the second click of a double-click cannot land on the next item);
// - the recent decisions are listed, each with an undo.

const Q = { items: [], current: null, busy: false, shown: 0 };
const RECENT_KEY = "animal-reid-recent-decisions";
const ARM_MS = 600;

function panel() {
  return $("compare");
}

async function loadQueue() {
  const params = { species: $("queue-species").value, status: $("queue-status").value };
  try {
    const data = await api("/v1/queue" + query(params));
    Q.items = data.items || [];
    renderQueueList(data.counts || {});
  } catch (err) {
    say(err.message, "error", "queue-msg");
  }
}

function renderQueueList(counts) {
  $("queue-counts").textContent = Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(", ");
  const rows = Q.items.map((item) => h("li", {}, h("button", {
    type: "button", dataset: { item: item.id }, onclick: () => openItem(item.id),
    "aria-current": String(Boolean(Q.current && Q.current.id === item.id)),
  }, `item ${item.id} · ${item.species} · ${item.photos.length} photo(s) · `,
  bandChip(item.band, item.band_reason, true), ` best ${score2(item.best_score)}`)));
  const none = h("li", { class: "muted" }, "Nothing to review here.");
  $("queue-list").replaceChildren(...(rows.length ? rows : [none]));
}

/** Forget the item shown: its candidates and buttons go first, before anything else happens. */
function clearItem() {
  panel().replaceChildren();
  history.replaceState(null, "", location.pathname);
  Q.current = null;
  Q.shown += 1;
  say("", "", "compare-msg");
  return Q.shown;
}

async function openItem(id) {
  const ticket = clearItem();
  try {
    const item = await api(`/v1/queue/${id}`);
    if (ticket === Q.shown) showItem(item); // else another item was asked for meanwhile
  } catch (err) {
    say(err.message, "error", "compare-msg");
  }
}

function showItem(item) {
  clearItem();
  Q.current = item;
  renderComparison(panel(), {
    photos: item.photos.map((p, i) => ({ ...p, alt: `item ${item.id}, photo ${i + 1}` })),
    candidates: item.candidates || [],
    header: itemHeader(item),
    decisions: decisionBar(item),
    onSame: (cand, button) => decide(item, { kind: "same", individual_id: cand.individual_id }, button),
  });
  for (const b of $("queue-list").querySelectorAll("button")) {
    b.setAttribute("aria-current", String(Number(b.dataset.item) === item.id));
  }
  history.replaceState(null, "", `${location.pathname}?item=${item.id}`);
  arm();
}

/** Buttons of a newly shown item answer only after ARM_MS. */
function arm() {
  const ticket = Q.shown;
  setButtons(panel(), true);
  setTimeout(() => {
    if (ticket === Q.shown && !Q.busy) setButtons(panel(), false);
  }, ARM_MS);
}

function itemHeader(item) {
  const taken = item.photos.map((p) => p.taken_at).filter(Boolean);
  return h("p", { id: "item-header", dataset: { item: item.id, version: item.version } },
    `item ${item.id} (${item.species}, batch ${item.batch_id}) `, bandChip(item.band, item.band_reason),
    ` best score ${score2(item.best_score)}`, taken.length ? ` · taken ${when(taken[0])}` : "",
    item.status === "waiting" ? "" : ` · ${describeDecision(item)}`);
}

function decisionBar(item) {
  const name = h("input", { id: "new-name", autocomplete: "off", maxlength: "200" });
  const form = h("form", { id: "new-form", class: "hidden" },
    h("label", {}, "Name of the new individual ", name),
    h("button", { type: "submit", class: "primary", id: "new-confirm" }, "file as new individual"),
    h("button", { type: "button", onclick: () => form.classList.add("hidden") }, "cancel"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!name.value.trim()) return say("type the new individual's name first", "error", "compare-msg");
    decide(item, { kind: "new", name: name.value.trim() }, event.submitter || $("new-confirm"));
  });
  const ask = () => {
    form.classList.remove("hidden");
    name.focus();
  };
  const kind = (k) => (event) => decide(item, { kind: k }, event.currentTarget);
  return h("div", { class: "decisions" },
    h("button", { type: "button", id: "decide-new", onclick: ask }, "new individual…"),
    h("button", { type: "button", id: "decide-unsure", onclick: kind("unsure") }, "unsure (skip)"),
    h("button", { type: "button", id: "decide-not-animal", onclick: kind("not_animal") }, "not an animal"),
    form);
}

async function decide(item, body, button) {
  if (Q.busy) return;
  if (item !== Q.current || !panel().contains(button)) {
    const why = `that button belonged to item ${item.id}, which is no longer shown: nothing was filed`;
    say(why, "error", "compare-msg");
    return;
  }
  setBusy(true);
  say(`filing item ${item.id}…`, "", "compare-msg");
  try {
    const answer = await api(`/v1/queue/${item.id}/decide`, { json: { ...body, version: item.version } });
    decided(item, answer);
  } catch (err) {
    await refused(item, err);
  } finally {
    setBusy(false);
  }
}

function setBusy(busy) {
  Q.busy = busy;
  $("queue-box").disabled = busy;
  if (busy) setButtons(panel(), true);
}

function describeDecision(item) {
  const d = item.decision;
  if (!d) return item.status === "unsure" ? "unsure (skipped)" : item.status;
  if (d.kind === "same") return `same as ${d.individual_name}`;
  if (d.kind === "new") return `new individual ${d.individual_name}`;
  return "not an animal";
}

/** The item leaves the view; the decision goes on the recent list; the next item is shown. */
function decided(item, answer) {
  const skipped = (answer.decision && answer.decision.skipped) || [];
  const notFiled = skipped.length ? ` (not filed: ${skipped.join("; ")})` : "";
  const text = `item ${item.id}: ${describeDecision(answer)}${notFiled}`;
  remember({ id: item.id, text });
  clearItem();
  say(text + " ✓", "ok", "compare-msg");
  Q.items = Q.items.filter((i) => i.id !== item.id);
  renderRecent();
  nextItem(text);
}

async function nextItem(text) {
  await loadQueue();
  loadGroups();
  if (Q.current || !Q.items.length) return;
  await openItem(Q.items[0].id);
  say(`${text} ✓ — now item ${Q.items[0].id}`, "ok", "compare-msg");
}

/** A refused decision: say why; after a 409 (decided elsewhere, or changed since shown) show the item afresh. */
async function refused(item, err) {
  if (err.status !== 409) {
    say(err.message, "error", "compare-msg");
    if (Q.current === item) setButtons(panel(), false);
    return;
  }
  await loadQueue();
  if (Q.current !== item) return say(err.message, "error", "compare-msg");
  try {
    const fresh = await api(`/v1/queue/${item.id}`);
    if (Q.current !== item) return say(err.message, "error", "compare-msg");
    if (fresh.status === "waiting" || fresh.status === "unsure") showItem(fresh);
    else clearItem();
  } catch (e) {
    clearItem();
  }
  say(err.message + " — nothing was filed", "error", "compare-msg");
}

// --- recent decisions, each with an undo ---------------------------------------------------------------

function recent() {
  try {
    return JSON.parse(localStorage.getItem(RECENT_KEY)) || [];
  } catch (err) {
    return [];
  }
}

function remember(entry) {
  const list = [entry, ...recent().filter((e) => e.id !== entry.id)].slice(0, 10);
  localStorage.setItem(RECENT_KEY, JSON.stringify(list));
}

function forget(id) {
  localStorage.setItem(RECENT_KEY, JSON.stringify(recent().filter((e) => e.id !== id)));
}

function renderRecent() {
  const undoButton = (entry) => h("button", { type: "button", class: "undo", dataset: { item: entry.id },
    onclick: (e) => undo(entry, e.currentTarget) }, "undo");
  const rows = recent().map((entry) => h("li", {}, entry.text, " ", undoButton(entry)));
  $("recent").replaceChildren(...(rows.length ? rows : [h("li", { class: "muted" }, "No decisions yet.")]));
}

async function undo(entry, button) {
  button.disabled = true;
  try {
    await api(`/v1/queue/${entry.id}/undo`, { method: "POST" });
    say(`undone: ${entry.text}; item ${entry.id} is back in the queue`, "ok", "compare-msg");
    forget(entry.id);
  } catch (err) {
    say(err.message, "error", "compare-msg");
    if (err.status === 404 || err.status === 409) forget(entry.id);
    else button.disabled = false;
  }
  renderRecent();
  loadQueue();
  loadGroups();
}

function setupQueue() {
  const reload = () => {
    loadQueue();
    loadGroups();
  };
  $("queue-species").addEventListener("change", reload);
  $("queue-status").addEventListener("change", loadQueue);
  $("queue-refresh").addEventListener("click", reload);
  renderRecent();
  loadQueue();
  const linked = Number(new URLSearchParams(location.search).get("item"));
  if (linked) openItem(linked); // /?item=5 opens item 5
}
