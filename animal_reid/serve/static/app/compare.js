"use strict";
// The comparison view shared by the review queue and the single-photo identify: the query photo pinned (sticky)
// beside the candidates, each candidate with its photos best match first and every score to 2 decimals.
// setButtons() disables every button of a comparison at once (from a click until the server's answer).

/** A photo with its box drawn over it (the box is in the photo's own pixels; drawn in percent of its size). */
function photoWithBox(src, alt, box, attrs = {}) {
  const img = zoomable(src, alt, attrs);
  const wrap = h("span", { class: "photo-box" }, img);
  if (Array.isArray(box) && box.length === 4) {
    img.addEventListener("load", () => {
      const [x, y, w, hgt] = box;
      const W = img.naturalWidth, H = img.naturalHeight;
      if (!W || !H) return;
      const mark = h("span", { class: "box" });
      Object.assign(mark.style, { left: `${(100 * x) / W}%`, top: `${(100 * y) / H}%`,
        width: `${(100 * w) / W}%`, height: `${(100 * hgt) / H}%` });
      wrap.append(mark);
    });
  }
  return wrap;
}

/** The pinned query: its first photo large, the others (an encounter's photos) small beside it. */
function queryPanel(photos) {
  const [first, ...rest] = photos;
  const label = (i) => (photos.length > 1 ? h("figcaption", {}, `photo ${i + 1}`) : null);
  const main = first && photoWithBox(first.url, first.alt || "the photo to identify", first.box, { id: "query-photo" });
  const more = rest.map((p, i) => h("figure", {},
    photoWithBox(p.url, p.alt || "another photo of this encounter", p.box), label(i + 1)));
  return h("section", { class: "query", "aria-label": "the photo to identify" },
    main ? h("figure", {}, main, label(0)) : null,
    more.length ? h("div", { class: "query-more" }, more) : null);
}

/** One candidate: name, score, its photos best match first (each with its score), "same as <name>", and
 * "Explain" (explain.js, on the pages that load it) against ``queryPhotos``. */
function candidateCard(cand, rank, onSame, queryNames, queryPhotos = []) {
  const photos = [...(cand.photos || [])].sort((a, b) => (b.score ?? -Infinity) - (a.score ?? -Infinity));
  const name = cand.name || "individual " + cand.individual_id;
  const button = h("button", { class: "confirm primary", type: "button", dataset: { individual: cand.individual_id } },
    "same as " + name);
  button.addEventListener("click", () => onSame(cand, button));
  return h("article", { class: "cand", "aria-label": `candidate ${rank}: ${name}` },
    h("h3", {}, `#${rank} `, h("a", { href: `${ROOT}/individuals/${cand.individual_id}`, target: "_blank" }, name),
      " · score ", h("span", { class: "score" }, score2(cand.score))),
    h("div", { class: "photos" }, photos.map((p) => h("figure", {},
      zoomable(p.url, `${name}, sighting ${p.sighting_id}`),
      h("figcaption", {}, "score ", h("span", { class: "photo-score" }, score2(p.score)),
        queryNames[p.query_photo_id] ? ` vs ${queryNames[p.query_photo_id]}` : "")))),
    button, typeof explainBox === "function" ? explainBox(cand, queryPhotos) : null);
}

/**
 * Render a comparison into ``container`` (cleared first). ``photos``: the query photos [{url, box, theta?,
 * blob?}] (``blob``: the photo itself when its URL is a blob: one, which "Explain" cannot fetch);
 * ``candidates``: [{individual_id, name, score, photos: [{sighting_id, url, score}]}], best first;
 * ``header`` and ``decisions``: elements shown above them (what is shown, the other decision buttons);
 * ``onSame(candidate, button)``: what "same as <name>" does.
 */
function renderComparison(container, { photos, candidates, decisions, onSame, header }) {
  container.replaceChildren();
  const list = h("section", { class: "candidates", "aria-label": "candidates" },
    candidates.length ? candidates.map((c, i) => candidateCard(c, i + 1, onSame, queryNames(photos), photos))
      : h("p", {}, "No candidates: nobody of this species is in the catalogue yet."));
  container.append(h("div", { class: "decide-box" }, header || null, decisions || null),
    h("div", { class: "compare" }, queryPanel(photos), list));
}

/** {photo id: "photo 2"} when the query has several photos (a candidate photo names the one it matched). */
function queryNames(photos) {
  const names = {};
  if (photos.length > 1) photos.forEach((p, i) => { if (p.id !== undefined) names[p.id] = `photo ${i + 1}`; });
  return names;
}

/** Disable (or enable) every button inside ``container``. */
function setButtons(container, disabled) {
  for (const b of container.querySelectorAll("button")) b.disabled = disabled;
}
