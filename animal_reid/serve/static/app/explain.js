"use strict";
// "Explain" beside a candidate of the comparison view (review queue and single-photo identify): on demand, sends
// the query photo (with its box) and the candidate's best-matching sighting to POST /v1/explain?format=json and
// shows the picture it answers (the strongest correspondences as lines, a relevance heat map) with the scores as
// text. Only on a click: an explanation takes seconds on a CPU.

const EXPLAIN_TOP = 10;

/** The query photo as a Blob: the file chosen for identify (``blob``), else fetched from its URL (a queue photo). */
async function queryPhotoBlob(photo) {
  if (photo.blob) return photo.blob;
  const token = localStorage.getItem(TOKEN_KEY);
  let response;
  try {
    response = await fetch(photo.url, { headers: token ? { Authorization: "Bearer " + token } : {} });
  } catch (err) {
    throw new ApiError(0, "the query photo did not load: is the server running?");
  }
  if (!response.ok) {
    throw new ApiError(response.status, "the query photo did not load: " +
      detailOf(await response.json().catch(() => null), response));
  }
  return response.blob();
}

/** The request: the query photo as ``image_a`` (its box and theta too), the sighting as ``sighting_b``. */
function explainForm(blob, photo, sightingId) {
  const form = new FormData();
  const name = (blob.name || (typeof photo.file === "string" && photo.file.split("/").pop()) || "query photo");
  form.append("image_a", blob, name);
  if (Array.isArray(photo.box) && photo.box.length === 4) form.append("box_a", JSON.stringify(photo.box));
  if (photo.theta) form.append("theta_a", String(photo.theta));
  form.append("sighting_b", String(sightingId));
  return form;
}

/** The scores as one line of text. */
function explainScores(answer) {
  const s = answer.scores;
  return `cosine ${score2(answer.cosine)} · geometry ${score2(s.residual)} · coverage ${score2(s.coverage)} · ` +
    `matched similarity ${score2(s.similarity)} · ` +
    `${s.n_matches} mutual matches, ${answer.matches.length} drawn (stage ${answer.stage}, ` +
    `relevance ${answer.relevance_method})`;
}

async function runExplain(button, out, photo, sighting, name) {
  if (button.dataset.busy) return; // the queue's setButtons may enable it again meanwhile
  button.dataset.busy = "1";
  button.disabled = true;
  out.replaceChildren(h("p", { class: "status" }, "explaining… (a few seconds)"));
  try {
    const form = explainForm(await queryPhotoBlob(photo), photo, sighting.sighting_id);
    const answer = await api("/v1/explain" + query({ format: "json", top: EXPLAIN_TOP }), { form });
    const alt = `why the photo matches ${name}, sighting ${sighting.sighting_id}: the strongest correspondences`;
    out.replaceChildren(h("figure", {}, zoomable(answer.image, alt, { class: "explain-picture" }),
      h("figcaption", { class: "explain-scores" }, explainScores(answer))));
  } catch (err) {
    out.replaceChildren(h("p", { class: "status error" }, err.message));
  } finally {
    delete button.dataset.busy;
    button.disabled = false;
  }
}

/** The "Explain" button and the place for its picture, for ``cand`` against the query ``photos`` (the query
 * photo its best sighting matched; the first one otherwise). Null when there is nothing to explain. */
function explainBox(cand, photos) {
  const best = [...(cand.photos || [])].sort((a, b) => (b.score ?? -Infinity) - (a.score ?? -Infinity))[0];
  if (!best || !photos.length) return null;
  const photo = photos.find((p) => p.id !== undefined && p.id === best.query_photo_id) || photos[0];
  const name = cand.name || "individual " + cand.individual_id;
  const out = h("div", { class: "explain-out", "aria-live": "polite" });
  const button = h("button", { type: "button", class: "explain", dataset: { sighting: best.sighting_id },
    title: `show where the photo and ${name}'s sighting ${best.sighting_id} agree` }, "Explain");
  button.addEventListener("click", () => runExplain(button, out, photo, best, name));
  return h("div", { class: "explain-box" }, button, out);
}
