"use strict";
// Shared by every page: building elements, calling the API with the reviewer's token, the status line,
// the sign-in box (the token is typed once and kept in localStorage), bands and scores, and the zoom overlay.

const ROOT = (document.querySelector('meta[name="root"]') || {}).content || "";
const TOKEN_KEY = "animal-reid-token";
const BANDS = { known: "likely known", unsure: "unsure", new: "likely new" };

function $(id) {
  return document.getElementById(id);
}

/** An element: h("button", {class: "x", onclick: f}, "text", child, ...); null/false children are left out. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) el.append(child);
  }
  return el;
}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** The server's one-line ``detail``, whatever shape the answer has. */
function detailOf(data, response) {
  let detail = data && data.detail;
  if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  if (!detail) detail = `the server answered ${response.status} ${response.statusText}`.trim();
  return String(detail).split("\n")[0];
}

/** Call the API: ``json`` or ``form`` is the body; the stored token goes with every call. */
async function api(path, { method, json, form } = {}) {
  const headers = {};
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  let body = form;
  if (json !== undefined) {
    body = JSON.stringify(json);
    headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(ROOT + path, { method: method || (body ? "POST" : "GET"), body, headers });
  } catch (err) {
    throw new ApiError(0, "the server did not answer: is it running, and is this machine connected to it?");
  }
  const data = await response.json().catch(() => null);
  if (response.status === 401) throw new ApiError(401, "sign in first: type your token at the top of the page");
  if (!response.ok) throw new ApiError(response.status, detailOf(data, response));
  return data;
}

/** Show one line in a status element (``kind``: "error", "ok" or ""). */
function say(text, kind = "", where = "status") {
  const el = $(where);
  if (!el) return;
  el.textContent = text;
  el.className = "status" + (kind ? " " + kind : "");
}

function score2(value) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(2);
}

/** The band chip: "likely known" / "unsure" / "likely new", or why there is no band ("no band" when ``short``,
 * the reason then in its tooltip). */
function bandChip(band, reason, short = false) {
  const why = reason || "no calibration for this species yet";
  const label = BANDS[band] ? BANDS[band] : short ? "no band" : "no band: " + why;
  return h("span", { class: "band band-" + (BANDS[band] ? band : "none"), title: reason || "" }, label);
}

/** A date-time as "2026-12-07 14:05" (the server's ISO text), or "date unknown". */
function when(iso, unknown = "date unknown") {
  return iso ? String(iso).replace("T", " ").slice(0, 16) : unknown;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const text = q.toString();
  return text ? "?" + text : "";
}

// --- species ---------------------------------------------------------------------------------------

async function loadSpecies() {
  try {
    return (await api("/v1/species")).species || [];
  } catch (err) {
    return []; // the list is a convenience: typing a species still works
  }
}

/** Fill every <datalist> / <select> named in ``ids`` with the catalogue's species. */
async function fillSpecies(...ids) {
  const species = await loadSpecies();
  for (const id of ids) {
    const el = $(id);
    if (!el) continue;
    const keep = el.tagName === "SELECT" ? [...el.querySelectorAll("option[data-keep]")] : [];
    el.replaceChildren(...keep);
    for (const s of species) {
      const label = el.tagName === "SELECT" ? s.name : `${s.name}: ${s.individuals} individuals`;
      el.append(h("option", { value: s.name }, label));
    }
  }
  return species;
}

/** Make sure a <select> offers ``value`` (a species the catalogue does not hold yet). */
function ensureOption(select, value) {
  if (![...select.options].some((o) => o.value === value)) select.append(h("option", { value }, value));
}

// --- exports: a file per format, fetched with the token and saved by the browser ---------------------

const EXPORTS = [["csv", "CSV"], ["coco", "COCO"], ["camtrapdp", "Camtrap DP"], ["capture", "capture histories"]];

function filenameOf(response, fallback) {
  const header = response.headers.get("Content-Disposition") || "";
  const match = header.match(/filename\*?=(?:UTF-8'')?"?([^";]+)"?/i);
  return match ? decodeURIComponent(match[1]) : fallback;
}

async function download(link, msgId) {
  say(`preparing ${link.dataset.format} export…`, "", msgId);
  const token = localStorage.getItem(TOKEN_KEY);
  try {
    const response = await fetch(link.href, { headers: token ? { Authorization: "Bearer " + token } : {} });
    if (!response.ok) {
      throw new ApiError(response.status, detailOf(await response.json().catch(() => null), response));
    }
    const url = URL.createObjectURL(await response.blob());
    const name = filenameOf(response, `export-${link.dataset.format}`);
    const save = h("a", { href: url, download: name, class: "hidden" });
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    say(`${link.dataset.format} export downloaded ✓`, "ok", msgId);
  } catch (err) {
    say(err instanceof ApiError ? err.message : "the export did not download: " + err.message, "error", msgId);
  }
}

/** Export links (one per format) for ``species`` ("" = every species) into ``container``. */
function exportLinks(container, species, msgId) {
  container.replaceChildren(...EXPORTS.map(([format, label]) => {
    const link = h("a", { class: "button export", href: `${ROOT}/v1/export${query({ species, format })}`,
      dataset: { format } }, label);
    link.addEventListener("click", (event) => {
      event.preventDefault();
      download(link, msgId);
    });
    return link;
  }));
}

// --- signing in --------------------------------------------------------------------------------------

async function showWho() {
  const token = localStorage.getItem(TOKEN_KEY);
  $("signin").classList.toggle("hidden", !!token);
  $("signed-in").classList.toggle("hidden", !token);
  if (!token) return;
  try {
    const who = await api("/v1/whoami");
    $("who").textContent = "signed in as " + who.reviewer;
  } catch (err) {
    $("who").textContent = err.status === 404 ? "token saved" : err.message;
  }
}

function setupSignin() {
  $("signin").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    localStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    showWho();
  });
  $("signout").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    showWho();
  });
  showWho();
}

// --- zoom: click a photo to see it full screen; Esc or a click closes ---------------------------------

let zoomReturn = null;

function openZoom(src, alt) {
  closeZoom();
  zoomReturn = document.activeElement;
  const attrs = { id: "zoom", role: "dialog", "aria-modal": "true", "aria-label": "zoomed photo", tabindex: "-1" };
  const overlay = h("div", attrs, h("img", { src, alt }), h("p", {}, "Esc or click to close"));
  overlay.addEventListener("click", closeZoom);
  document.body.append(overlay);
  overlay.focus();
}

function closeZoom() {
  const overlay = $("zoom");
  if (!overlay) return;
  overlay.remove();
  if (zoomReturn && zoomReturn.isConnected) zoomReturn.focus();
  zoomReturn = null;
}

/** A photo that zooms when clicked (or Enter / Space when focused). */
function zoomable(src, alt, attrs = {}) {
  const img = h("img", { src, alt, class: "zoomable", tabindex: "0", ...attrs });
  img.addEventListener("click", () => openZoom(src, alt));
  img.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      openZoom(src, alt);
    }
  });
  return img;
}

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") closeZoom();
});
