"use strict";
// Batch upload: several photos or one zip (photos, optionally with a MegaDetector JSON or a Camtrap DP
// package), the species, observer and site; the answer is summarised and the queue shows the new items.

/** Why a file was skipped, naming it once (the server's reason often names it already). */
function skipReason(skip) {
  return skip.reason.startsWith(skip.file) ? skip.reason : `${skip.file}: ${skip.reason}`;
}

function batchSummary(batch) {
  const skipped = batch.skipped || [];
  return h("div", { id: "batch-result" },
    h("p", {}, `batch ${batch.id} (${batch.species}): ${batch.n_photos} photo(s) in ${batch.n_encounters} `,
      `encounter(s), ${batch.n_items} item(s) to review.`),
    skipped.length ? h("div", {}, h("p", {}, `${skipped.length} file(s) skipped:`),
      h("ul", { id: "batch-skipped" }, skipped.map((s) => h("li", {}, skipReason(s))))) : null);
}

async function uploadBatch(event) {
  event.preventDefault();
  const files = $("batch-files").files;
  const species = $("batch-species").value.trim();
  if (!files.length) return say("choose photos or a zip first", "error", "batch-msg");
  if (!species) return say("type or pick the species", "error", "batch-msg");
  const form = new FormData();
  for (const f of files) form.append("files", f);
  form.append("species", species);
  for (const field of ["observer", "site"]) {
    const value = $("batch-" + field).value.trim();
    if (value) form.append(field, value);
  }
  $("batch-submit").disabled = true;
  say(`uploading ${files.length} file(s)…`, "", "batch-msg");
  try {
    const batch = await api("/v1/batches", { form });
    say(`batch ${batch.id} uploaded ✓`, "ok", "batch-msg");
    $("batch-summary").replaceChildren(batchSummary(batch));
    $("batch-form").reset();
    await fillSpecies("species-list", "queue-species");
    ensureOption($("queue-species"), batch.species);
    $("queue-species").value = batch.species;
    await loadQueue();
    loadGroups();
  } catch (err) {
    say(err.message, "error", "batch-msg");
  } finally {
    $("batch-submit").disabled = false;
  }
}

function setupUpload() {
  $("batch-form").addEventListener("submit", uploadBatch);
}
