// The lab page: upload one patient's images, show counts, differential, subtype and a gallery.
// Plain JavaScript, no external resources (hospital networks are offline).
"use strict";

const $ = (id) => document.getElementById(id);
const GROUP_PREVIEW = 60;  // cells shown per label before "Show all"
const MAX_IMAGES = 2000;  // the gateway's defaults (MAX_IMAGES, GATEWAY_MAX_IMAGE_BYTES): checked before sending
const MAX_IMAGE_BYTES = 50 * 1024 * 1024;
const THUMBNAIL_CONCURRENCY = 4;  // thumbnails share the key's rate limit (burst 60, 600/min)
const THUMBNAIL_TRIES = 5;
const PATIENT_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
let chosen = [];
// the report on screen: { report, local (sha256 -> the File sent with its request), corrections (sha256 -> label,
// not saved yet), edits (corrections made so far), images (sha256 -> promise of an object URL), retired }
let current = null;
// the latest request whose answer would replace the report on screen: only that answer is shown
let pending = null;
let requestSeq = 0;
let reviewing = false;  // a review POST is in flight: no second one
// the key lives in this tab's sessionStorage only: gone when the tab closes
$("api-key").value = sessionStorage.getItem("aml-api-key") || "";
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("aml-api-key", $("api-key").value.trim());
  showIdentity();
});

// whose key this is (GET /me): a personal key's reviews are signed with its owner's name, so the reviewer box
// shows that name, read-only; a shared key's reviewer is typed in
let identitySeq = 0;
async function showIdentity() {
  const seq = ++identitySeq;
  const key = $("api-key").value.trim();
  const box = $("reviewer");
  if (box.readOnly) {  // the name of the key before goes with it
    box.readOnly = false;
    box.value = "";
  }
  $("reviewer-note").textContent = "";
  if (!key) return;
  let me = null, problem = "";
  try {
    const response = await fetchKeyed("/me", { headers: { "X-API-Key": key } });
    if (response.ok) me = await response.json();
    else problem = response.status === 401 ? "this API key is not accepted (401)"
      : `could not check this API key (${response.status}); the gateway checks the reviewer's name when a review is sent`;
  } catch (e) {  // unreachable now: the box stays free, and the gateway checks the name when a review is sent
    problem = "could not check this API key (network error)";
  }
  if (seq !== identitySeq) return;  // another key was entered meanwhile
  if (!me) {
    $("reviewer-note").textContent = problem;
    return;
  }
  if (me.reviewer) {
    box.value = me.reviewer;
    box.readOnly = true;
    $("reviewer-note").textContent = `your key ${me.key_id}: reviews are signed with this name`;
  } else if (me.scopes.includes("review")) {
    $("reviewer-note").textContent = me.review_requires_personal_key
      ? `key ${me.key_id} is shared, and this gateway takes reviews only from personal keys`
      : `key ${me.key_id} is shared: enter who reviewed`;
  }
}
showIdentity();

function selectionProblem(files) {
  if (files.length > MAX_IMAGES) return `${files.length} images selected: at most ${MAX_IMAGES} per patient are accepted.`;
  const big = files.find((f) => f.size > MAX_IMAGE_BYTES);
  return big ? `${big.webkitRelativePath || big.name} is ${(big.size / 2 ** 20).toFixed(1)} MiB: ` +
    `at most ${MAX_IMAGE_BYTES / 2 ** 20} MiB per image are accepted. Leave it out.` : null;
}

function updateSelection() {
  const files = [...$("images").files, ...$("folder").files].filter((f) => /\.(jpe?g|png|tiff?|bmp)$/i.test(f.name));
  chosen = files;
  const problem = selectionProblem(files);
  $("selection").textContent = files.length ? `${files.length} image(s) selected` + (problem ? `: ${problem}` : "") : "";
}
$("images").addEventListener("change", updateSelection);
$("folder").addEventListener("change", updateSelection);

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function showNotice(message) {
  $("notice").textContent = message;
  $("notice").hidden = !message;
}

function clearMessages() {
  $("error").hidden = true;
  showNotice("");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const num = (v, digits) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "n/a");
const pct = (v, digits = 1) => (typeof v === "number" && Number.isFinite(v) ? `${(v * 100).toFixed(digits)}%` : "n/a");

function retryAfterSeconds(value) {
  // Retry-After: seconds or a date; null when absent or unreadable
  if (!value) return null;
  if (/^\s*\d+\s*$/.test(value)) return Number(value);
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

function problemText(status, body, retryAfter) {
  let text = body && body.detail ? `${body.title || "Error"} (${status}): ${body.detail}` : `HTTP ${status}`;
  const wait = retryAfterSeconds(retryAfter);
  if ((status === 429 || status === 503) && wait !== null) text += ` (try again in ${wait} s)`;
  return text;
}

function barChart(svg, entries, format) {
  const width = svg.clientWidth || 500, height = svg.clientHeight || 260;
  const max = Math.max(...entries.map(([, v]) => v), 1e-9);
  const band = (height - 20) / Math.max(entries.length, 1);
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  entries.forEach(([label, value], i) => {
    const y = 10 + i * band;
    const w = Math.max(1, (width - 220) * (Number.isFinite(value) ? value : 0) / max);
    const text = document.createElementNS(ns, "text");
    text.setAttribute("x", 8); text.setAttribute("y", y + band * 0.65); text.setAttribute("font-size", "12");
    text.textContent = label;
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", 120); rect.setAttribute("y", y + band * 0.15);
    rect.setAttribute("width", w); rect.setAttribute("height", band * 0.7); rect.setAttribute("fill", "#3c6fd1");
    const val = document.createElementNS(ns, "text");
    val.setAttribute("x", 126 + w); val.setAttribute("y", y + band * 0.65); val.setAttribute("font-size", "12");
    val.textContent = format(value);
    svg.append(text, rect, val);
  });
}

function countsNow() {
  const report = current.report;
  if (!report.cells) return { ...report.cell_counts };
  const counts = Object.fromEntries(Object.keys(report.cell_counts).map((k) => [k, 0]));
  report.cells.forEach((c) => { const label = current.corrections.get(c.sha256) || c.label; counts[label] = (counts[label] || 0) + 1; });
  return counts;
}

function showCounts() {
  // the counts chart and both tables with the unsaved corrections; a figure they change shows the saved one beside
  const counts = countsNow();
  barChart($("chart-counts"), Object.entries(counts), (v) => String(v));
  const report = current.report;
  const differential = report.leukocyte_differential || {};
  const per100 = report.per_100_leukocytes || {};
  // as the gateway computes them: percent of the leukocytes (the differential's categories), rounded to 0.01
  const leukocytes = Object.keys(differential).reduce((n, t) => n + (counts[t] || 0), 0);
  const n = current.corrections.size;
  // no leukocyte left: nothing is a share of them (n/a), and the gateway would refuse such a review
  const now = (saved) => (t) => (!n ? saved[t] : leukocytes ? Math.round(10000 * (counts[t] || 0) / leukocytes) / 100 : null);
  $("r-differential").querySelector("tbody").replaceChildren(
    ...tableRows(Object.keys(differential).map((t) => [t, now(differential)(t), differential[t]])));
  $("r-per100").querySelector("tbody").replaceChildren(
    ...tableRows(Object.keys(per100).map((t) => [t, now(per100)(t), per100[t]])));
  $("r-corrections").textContent = n ? `${n} correction(s) not saved yet` +
    (leukocytes ? "" : ": no leukocyte is left, so there is no differential and the gateway will refuse to save") : "";
}

// corrections live in this page until saved: never drop them without asking
function unsavedCorrections() {
  return current ? current.corrections.size : 0;
}

function keepUnsaved() {
  // true when there are unsaved corrections and the reviewer chose to stay with them
  const n = unsavedCorrections();
  return n > 0 && !window.confirm(
    `${n} correction(s) of patient ${current.report.patient_id} are not saved and will be lost. Continue?`);
}

window.addEventListener("beforeunload", (event) => {
  if (unsavedCorrections()) {
    event.preventDefault();
    event.returnValue = "";  // the browser asks "Leave site? Changes you made may not be saved."
  }
});

// --- requests that replace the report on screen ---------------------------------------------------

function beginRequest(kind, patient, what, askUnsaved = true) {
  // a new request for the view (null: the reviewer chose to stay); the one before it is abandoned
  if (pending && pending.kind === "upload" && !window.confirm(
    `The images of patient ${pending.patient} are still being classified. Stop waiting for them and ${what}?`)) return null;
  if (askUnsaved && keepUnsaved()) return null;
  const previous = pending;
  requestSeq += 1;
  pending = null;
  if (previous) previous.abort();
  const controller = new AbortController();
  pending = { seq: requestSeq, kind, patient, view: current, edits: current ? current.edits : 0,
              signal: controller.signal, abort: () => controller.abort() };
  clearMessages();
  $("progress-box").hidden = true;
  return pending;
}

function endRequest(req) {
  // true when req is still the latest request: its answer may be shown
  if (req.seq !== requestSeq || pending !== req) return false;
  pending = null;
  $("progress-box").hidden = true;
  return true;
}

function mayReplace(req, patient) {
  // corrections made while the request ran were never agreed to be dropped: ask now
  if (current && (current !== req.view || current.edits !== req.edits) && keepUnsaved()) {
    showNotice(`The report of patient ${patient} was not shown, to keep your unsaved corrections of patient ` +
               `${current.report.patient_id}: save them, then open it again.`);
    return false;
  }
  return true;
}

function showProgress(text, value) {
  $("progress-box").hidden = false;
  $("progress-text").textContent = text;
  if (value === null) $("progress").removeAttribute("value");
  else $("progress").value = value;
}

async function fetchKeyed(url, options) {
  // a 429 (the key's rate, which the thumbnails share) is tried once more after a short Retry-After,
  // the thumbnails holding back meanwhile; any other answer is the caller's
  const response = await fetch(url, options);
  const wait = response.status === 429 ? retryAfterSeconds(response.headers.get("Retry-After")) : null;
  if (wait === null || wait > 10) return response;
  thumbnails.pausedUntil = Math.max(thumbnails.pausedUntil, Date.now() + 1000 * wait + 500);
  await sleep(1000 * wait);
  return fetch(url, options);
}

function fetchLatest(patient, key, req, onReport) {
  // the patient's latest report version with its cells: onReport(body) only while req is the latest request
  showProgress(`loading the latest report of patient ${patient}…`, null);
  fetchKeyed(`/patients/${encodeURIComponent(patient)}/classification?include=cells`,
        { headers: { "X-API-Key": key }, signal: req.signal })
    .then(async (response) => {
      const body = await readJson(response);
      if (!endRequest(req)) return;
      if (response.ok && body) onReport(body);
      else showError(problemText(response.status, body, response.headers.get("Retry-After")));
    }).catch(() => { if (endRequest(req)) showError("Network error: the gateway could not be reached."); });
}

async function readJson(response) {
  try { return await response.json(); } catch (e) { return null; }
}

// --- the images of the cells ----------------------------------------------------------------------

function hex(buffer) {
  return [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function localImages(files, req) {
  // the files of one request by the sha256 of their bytes (the gateway's cell key), so a cell never shows
  // another file; without Web Crypto (a page served neither over TLS nor from localhost) only a name that is
  // unique in that request's own list identifies its file, and the other cells show the gateway's thumbnails
  const local = new Map();
  if (!(window.crypto && crypto.subtle)) {
    const seen = new Map();
    files.forEach((f) => seen.set(f.name, seen.has(f.name) ? null : f));
    seen.forEach((f, name) => { if (f) local.set(`name:${name}`, f); });
    return local;
  }
  let next = 0;
  const worker = async () => {
    while (next < files.length && req.seq === requestSeq) {
      const file = files[next++];
      try {
        const sha = hex(await crypto.subtle.digest("SHA-256", await file.arrayBuffer()));
        if (!local.has(sha)) local.set(sha, file);
      } catch (e) { /* unreadable now: its cell shows the gateway's thumbnail */ }
    }
  };
  await Promise.all([worker(), worker()]);
  return local;
}

const thumbnails = { queue: [], running: 0, pausedUntil: 0 };

function queueThumbnail(view, sha) {
  return new Promise((resolve) => { thumbnails.queue.push({ view, sha, resolve }); pumpThumbnails(); });
}

function pumpThumbnails() {
  while (thumbnails.running < THUMBNAIL_CONCURRENCY && thumbnails.queue.length) {
    const job = thumbnails.queue.shift();
    if (job.view.retired) { job.resolve(null); continue; }
    thumbnails.running += 1;
    loadThumbnail(job).catch(() => null).then((url) => {
      thumbnails.running -= 1;
      job.resolve(url);
      pumpThumbnails();
    });
  }
}

async function loadThumbnail(job) {
  // a cell of a stored report whose file is not on this computer: the gateway's thumbnail, a few at a time;
  // 429/503: the whole queue waits for Retry-After (the key's rate is shared), a few tries at most
  const url = `/reports/${encodeURIComponent(job.view.report.report_id)}/cells/${job.sha}.jpg`;
  for (let attempt = 1; ; attempt += 1) {
    const wait = thumbnails.pausedUntil - Date.now();
    if (wait > 0) await sleep(wait);
    if (job.view.retired) return null;
    let response = null;
    try {
      response = await fetch(url, { headers: { "X-API-Key": $("api-key").value.trim() } });
    } catch (e) { /* network failure: tried again below */ }
    if (response && response.ok) {
      const blob = await response.blob();
      return job.view.retired ? null : URL.createObjectURL(blob);
    }
    if ((response && response.status !== 429 && response.status !== 503) || attempt >= THUMBNAIL_TRIES) return null;
    const seconds = response ? retryAfterSeconds(response.headers.get("Retry-After")) : null;
    const delay = 1000 * Math.min(30, seconds === null ? attempt : Math.max(seconds, 0.2));
    thumbnails.pausedUntil = Math.max(thumbnails.pausedUntil, Date.now() + delay);
  }
}

function imageUrl(view, cell) {
  // one object URL per cell of the view: the file sent with its request, else the gateway's thumbnail
  if (!view.images.has(cell.sha256)) {
    const file = view.local.get(cell.sha256) || view.local.get(`name:${cell.filename}`);
    view.images.set(cell.sha256, file ? Promise.resolve(URL.createObjectURL(file))
      : view.report.report_id ? queueThumbnail(view, cell.sha256) : Promise.resolve(null));
  }
  return view.images.get(cell.sha256);
}

function retire(view) {
  // the view leaves the screen: its queued thumbnails are not fetched, its object URLs are freed
  view.retired = true;
  view.images.forEach((p) => p.then((url) => { if (url) URL.revokeObjectURL(url); }));
}

// --- the report -----------------------------------------------------------------------------------

function lineage(report) {
  // the report across its versions (version 1's id)
  return report.first_report_id || report.report_id || null;
}

function updateReviewButtons() {
  const status = current ? current.report.status || "preliminary" : "preliminary";
  $("save-draft").disabled = reviewing || status !== "preliminary";  // a released report changes only by a signed-off amendment
  $("sign-off").disabled = reviewing;
  $("relabel").disabled = reviewing;
}

function showStatus(report) {
  const status = report.status || "preliminary";
  $("r-status").className = `status ${status}`;
  $("r-status").textContent = `${status} · version ${report.version || 1}` +
    (report.reviewed_by ? ` · reviewed by ${report.reviewed_by} at ${report.reviewed_at}` +
      (report.reviewer_key_id ? ` (personal key ${report.reviewer_key_id})` : " (name given with a shared key)")
      : " · not reviewed yet");
  $("r-review-comment").textContent = report.review_comment ? `Reviewer's comment: ${report.review_comment}` : "";
  $("r-review-comment").hidden = !report.review_comment;
  $("sign-off").textContent = status === "preliminary" ? "Sign off" : "Sign off amendment";
  updateReviewButtons();
}

function labelText(cell) {
  const label = current.corrections.get(cell.sha256) || cell.label;
  const model = cell.model_label || (label !== cell.label ? cell.label : null);
  return model ? `${label} (model: ${model})` : label;
}

function cellBoxes(sha) {
  return document.querySelectorAll(`#gallery .cell[data-sha256="${CSS.escape(sha)}"]`);
}

function refreshCell(sha) {
  const cell = current.report.cells.find((c) => c.sha256 === sha);
  cellBoxes(sha).forEach((box) => {
    box.querySelector(".label-badge").textContent = labelText(cell);
    box.classList.toggle("corrected", labelText(cell).includes("(model:"));
  });
}

function selectCell(cell, box, fromKeyboard) {
  document.querySelectorAll("#gallery .cell.selected").forEach((b) => {
    b.classList.remove("selected");
    b.setAttribute("aria-pressed", "false");
  });
  cellBoxes(cell.sha256).forEach((b) => { b.classList.add("selected"); b.setAttribute("aria-pressed", "true"); });
  current.selectedBox = box;
  $("cell-editor").hidden = false;
  $("cell-editor").dataset.sha256 = cell.sha256;
  $("cell-name").textContent = cell.filename;
  $("cell-model-label").textContent = cell.model_label || cell.label;
  $("relabel").value = current.corrections.get(cell.sha256) || cell.label;
  $("relabel").focus({ preventScroll: !fromKeyboard });  // the picker takes the keys; a click keeps the gallery in view
}

$("relabel").addEventListener("change", () => {
  const sha = $("cell-editor").dataset.sha256;
  const cell = current.report.cells.find((c) => c.sha256 === sha);
  if ($("relabel").value === cell.label) current.corrections.delete(sha);
  else current.corrections.set(sha, $("relabel").value);
  current.edits += 1;
  refreshCell(sha);
  showCounts();
  if (current.selectedBox && current.selectedBox.isConnected) current.selectedBox.focus();  // back to the cell
});
$("relabel").addEventListener("keydown", (e) => {
  if (e.key === "Escape" && current && current.selectedBox && current.selectedBox.isConnected) current.selectedBox.focus();
});

function sendReview(signOff) {
  if (reviewing || !current) return;
  clearMessages();
  $("stale").hidden = true;
  const personal = $("reviewer").readOnly;  // the key's own reviewer signs: the gateway fills in the name
  const reviewer = $("reviewer").value.trim();
  if (!reviewer && !personal) return showError("Enter the reviewer's name.");
  const key = $("api-key").value.trim();
  const view = current;
  const body = { comment: $("review-comment").value.trim(), sign_off: signOff,
                 corrections: [...view.corrections].map(([sha256, label]) => ({ sha256, label })) };
  if (!personal) body.reviewer = reviewer;
  const req = beginRequest("review", view.report.patient_id, `save the review of patient ${view.report.patient_id}`, false);
  if (!req) return;
  req.abort = () => {};  // a review once sent may be saved already: a later request only leaves its answer unshown
  reviewing = true;
  updateReviewButtons();
  fetchKeyed(`/reports/${encodeURIComponent(view.report.report_id)}/review?include=cells`, {
    method: "POST", headers: { "Content-Type": "application/json", "X-API-Key": key }, body: JSON.stringify(body),
  }).then(async (response) => {
    const answer = await readJson(response);
    reviewing = false;
    updateReviewButtons();
    if (!endRequest(req)) return;
    if (response.status === 201 && answer) render(answer, view.local);
    else if (response.status === 409) offerNewest(view, answer);
    else showError(problemText(response.status, answer, response.headers.get("Retry-After")));
  }).catch(() => {
    reviewing = false;
    updateReviewButtons();
    if (endRequest(req)) showError("Network error: the gateway could not be reached.");
  });
}
$("sign-off").addEventListener("click", () => sendReview(true));
$("save-draft").addEventListener("click", () => sendReview(false));

function offerNewest(view, answer) {
  // 409: someone else reviewed this report first; the corrections stay here until the newest version is loaded
  const n = view.corrections.size;
  $("stale-text").textContent = `Someone else reviewed this report of patient ${view.report.patient_id} first` +
    (answer && answer.detail ? ` (${answer.detail})` : "") + `. Your ${n} correction(s) are still on this page: ` +
    "load the newest version to apply them to it, check and save again.";
  $("stale").hidden = false;
}

$("load-newest").addEventListener("click", () => {
  const view = current;
  const patient = view.report.patient_id;  // this report's patient, whatever the input box holds now
  const key = $("api-key").value.trim();
  const req = beginRequest("open", patient, `open the newest report of patient ${patient}`, false);
  if (!req) return;
  $("stale").hidden = true;
  fetchLatest(patient, key, req, (body) => {
    const carried = new Map(current.corrections);  // with any made while it loaded
    const same = lineage(body) === lineage(view.report);
    render(body, same ? view.local : [...view.local].filter(([k]) => !k.startsWith("name:")));
    if (!current) return;  // it could not be shown (render said why)
    const cells = new Map((body.cells || []).map((c) => [c.sha256, c]));
    let applied = 0, already = 0, absent = 0;
    carried.forEach((label, sha) => {
      const cell = cells.get(sha);
      if (!cell) absent += 1;
      else if (cell.label === label) already += 1;
      else { current.corrections.set(sha, label); applied += 1; }
    });
    current.corrections.forEach((label, sha) => refreshCell(sha));
    showCounts();
    showNotice(`Loaded version ${body.version || 1} of patient ${patient}'s report` +
      (body.reviewed_by ? ` (reviewed by ${body.reviewed_by})` : "") +
      `: ${applied} of your corrections re-applied, not saved yet; check them and save or sign off again.` +
      (already ? ` ${already} cell(s) already had your label.` : "") +
      (absent ? ` ${absent} cell(s) are not in this version.` : "") +
      (same ? "" : " This is a newer classification of the patient than the report you reviewed."));
  });
});

function showApl(report) {
  // the APL alert (issue 10): a red banner when it fires, the probability whenever there is one
  $("r-apl-banner").hidden = report.apl_alert !== true;
  const known = typeof report.apl_probability === "number";
  $("r-apl").hidden = !known;
  $("r-apl").classList.toggle("alert", report.apl_alert === true);
  // two decimals: at one, a probability just below the threshold could read as equal to it
  $("r-apl").textContent = known ? `APL probability ${pct(report.apl_probability, 2)}` +
    (typeof report.apl_threshold === "number" ? ` (alert at ${pct(report.apl_threshold, 2)} or more)` : "") +
    (report.apl_alert ? ": suspected APL" : ": below the alert threshold") : "";
}

function cellBox(view, c, note) {
  const box = document.createElement("div");
  box.className = "cell";
  box.dataset.sha256 = c.sha256;
  box.tabIndex = 0;
  box.setAttribute("role", "button");
  box.setAttribute("aria-pressed", "false");
  box.title = `${c.filename}: click (or Enter) to correct its label`;
  const img = Object.assign(document.createElement("img"), { alt: c.filename });
  imageUrl(view, c).then((url) => {
    if (url) { img.src = url; return; }
    img.alt = `${c.filename}: image unavailable`;
    box.classList.add("no-image");
    img.after(Object.assign(document.createElement("span"), { className: "no-image-note", textContent: "image unavailable" }));
  });
  box.append(img, Object.assign(document.createElement("span"), { className: "label-badge" }),
             document.createElement("br"), document.createTextNode(note));
  box.addEventListener("click", () => selectCell(c, box, false));
  box.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); selectCell(c, box, true); }
  });
  return box;
}

function tableRows(entries) {
  // [label, figure now, figure as saved]: a figure the unsaved corrections changed is marked, the saved one beside
  return entries.map(([k, now, saved]) => {
    const tr = document.createElement("tr");
    const changed = typeof saved === "number" && num(now, 1) !== num(saved, 1);
    tr.append(Object.assign(document.createElement("td"), { textContent: k }),
              Object.assign(document.createElement("td"), { textContent: num(now, 1) + (changed ? ` (saved ${num(saved, 1)})` : ""),
                                                            className: changed ? "changed" : "" }));
    return tr;
  });
}

function render(report, local = []) {
  // local: [sha256, File] pairs (or a Map) of the files sent with this report's request
  const sameReport = current !== null && lineage(current.report) !== null && lineage(current.report) === lineage(report);
  if (current) retire(current);
  const view = { report, local: new Map(local), corrections: new Map(), edits: 0, images: new Map(), retired: false,
                 selectedBox: null };
  current = view;
  try {
    draw(view, sameReport);
  } catch (e) {
    // never a half-drawn mix of two reports
    $("result").hidden = true;
    current = null;
    retire(view);
    showError(`The report could not be shown: ${e.message}`);
  }
}

function draw(view, sameReport) {
  const report = view.report;
  $("stale").hidden = true;
  if (!sameReport) $("review-comment").value = "";  // a comment belongs to its report, never to the next patient's
  $("result").hidden = false;
  showStatus(report);
  $("cell-editor").hidden = true;
  delete $("cell-editor").dataset.sha256;
  $("relabel").replaceChildren(...Object.keys(report.cell_counts).map((label) =>
    Object.assign(document.createElement("option"), { value: label, textContent: label })));
  $("r-patient").textContent = report.patient_id;
  $("r-prediction").textContent = `${report.prediction} (P(AML) ${pct(report.aml_probability)})`;
  $("r-summary").textContent = `${report.n_images} images: ${report.n_classified} classified, ` +
    `${report.n_unclassified} unclassified, ${report.n_failed} failed` +
    (report.n_duplicates ? `, ${report.n_duplicates} exact duplicate(s) counted once` : "") +
    (report.cached ? " (from cache)" : "");
  showApl(report);
  $("r-warnings").replaceChildren(...(report.warnings || []).map((w) => Object.assign(document.createElement("li"), { textContent: w })));
  const quality = report.quality;
  $("r-quality-banner").hidden = !(quality && quality.review_every_cell);
  $("r-quality-banner").textContent = quality && quality.looks_out_of_domain
    ? "These images look unlike the images the model was trained on (another scanner, stain, magnification or focus?): review every cell."
    : "Many cells could not be placed by the model: review every cell.";
  const distance = quality && typeof quality.appearance_distance === "number"
    ? `, appearance distance ${num(quality.appearance_distance, 1)}` +
      (typeof quality.appearance_threshold === "number" ? ` (warning above ${num(quality.appearance_threshold, 1)})` : "")
    : "";
  $("r-quality").textContent = quality ? `Quality: ${pct(quality.unclassified_fraction)} unclassified, ` +
    `${pct(quality.smudge_fraction)} smudge cells${distance}` : "";
  showCounts();
  barChart($("chart-probabilities"), Object.entries(report.probabilities || {}), pct);
  const groups = new Map();
  (report.cells || []).forEach((c) => { if (!groups.has(c.label)) groups.set(c.label, []); groups.get(c.label).push(c); });
  const sections = [...groups.entries()].sort((a, b) => b[1].length - a[1].length).map(([label, cells]) => {
    const section = document.createElement("div");
    section.className = "group";
    section.dataset.label = label;
    section.append(Object.assign(document.createElement("h4"), {
      textContent: `${label} (${cells.length}${cells.length > 1 ? ", least confident first" : ""})` }));
    const strip = document.createElement("div");
    strip.className = "cells";
    // the cells the model was least sure of first: where a reviewer's look changes most labels
    const ordered = [...cells].sort((a, b) => a.confidence - b.confidence);
    const box = (c) => cellBox(view, c, typeof c.confidence === "number" ? `${(c.confidence * 100).toFixed(0)}%` : "n/a");
    ordered.slice(0, GROUP_PREVIEW).forEach((c) => strip.append(box(c)));
    section.append(strip);
    if (ordered.length > GROUP_PREVIEW) {
      // every cell can be reviewed ("review every cell"), the rest on demand so a 500-cell patient stays quick
      const more = Object.assign(document.createElement("button"), {
        type: "button", className: "show-all",
        textContent: `Show all ${ordered.length} (${ordered.length - GROUP_PREVIEW} more)` });
      more.addEventListener("click", () => {
        ordered.slice(GROUP_PREVIEW).forEach((c) => { strip.append(box(c)); refreshCell(c.sha256); });
        more.remove();
      });
      section.append(more);
    }
    return section;
  });
  // the cells that drove the APL probability first: what the reviewer looks at first
  const bySha = new Map((report.cells || []).map((c) => [c.sha256, c]));
  const top = (report.apl_top_cells || []).filter((t) => bySha.has(t.sha256));
  if (top.length) {
    const section = document.createElement("div");
    section.className = "group apl-top";
    section.append(Object.assign(document.createElement("h4"), {
      textContent: `Highest APL evidence (${top.length} cells, highest first)` }));
    const strip = document.createElement("div");
    strip.className = "cells";
    top.forEach((t) => strip.append(cellBox(view, bySha.get(t.sha256), `APL logit ${num(t.apl_logit, 2)}`)));
    section.append(strip);
    sections.unshift(section);
  }
  $("gallery").replaceChildren(...sections);
  (report.cells || []).forEach((c) => refreshCell(c.sha256));
  const models = report.models || {};
  const model = (m) => (m ? `${m.name} ${m.version}` : "n/a");
  $("r-models").textContent = `cell model ${model(models.cell)}; subtype model ${model(models.subtype)}; ` +
    (models.apl_patient ? `APL model ${model(models.apl_patient)}; ` : "") + `request ${report.request_id}`;
}

$("upload-form").addEventListener("submit", (event) => {
  event.preventDefault();
  clearMessages();
  const patient = $("patient-id").value.trim();
  if (!PATIENT_ID.test(patient)) return showError("Invalid patient id.");
  if (!chosen.length) return showError("Choose at least one image.");
  const problem = selectionProblem(chosen);
  if (problem) return showError(`${problem} Nothing was sent.`);
  const key = $("api-key").value.trim();
  if (!key) return showError("Enter your API key.");
  const req = beginRequest("upload", patient, `classify the images of patient ${patient}`);
  if (!req) return;
  sessionStorage.setItem("aml-api-key", key);
  const files = chosen.slice();  // this request's own files: its cells are matched to these, never to a later choice
  const hashed = localImages(files, req);  // computed while the images upload
  const form = new FormData();
  files.forEach((f) => form.append("images", f, f.name));
  const xhr = new XMLHttpRequest();
  req.abort = () => xhr.abort();
  xhr.open("POST", `/patients/${encodeURIComponent(patient)}/classify?include=cells`);
  xhr.setRequestHeader("X-API-Key", key);
  showProgress(`uploading the images of patient ${patient}`, 0);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable && req.seq === requestSeq) {
      $("progress").value = (100 * e.loaded) / e.total;
      $("progress-text").textContent = `uploading the images of patient ${patient}: ${Math.round((100 * e.loaded) / e.total)}%`;
    }
  };
  xhr.upload.onload = () => { if (req.seq === requestSeq) $("progress-text").textContent = `classifying patient ${patient}…`; };
  xhr.onload = async () => {
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
    if (!(xhr.status === 200 && body)) {
      if (endRequest(req)) showError(problemText(xhr.status, body, xhr.getResponseHeader("Retry-After")));
      return;
    }
    const local = await hashed;
    if (endRequest(req) && mayReplace(req, patient)) render(body, local);
  };
  xhr.onerror = () => { if (endRequest(req)) showError("Network error: the gateway could not be reached."); };
  xhr.ontimeout = xhr.onerror;
  xhr.onabort = () => { endRequest(req); };  // abandoned for a newer request: that one owns the screen now
  xhr.send(form);
});

// a stored report, days later: its cells come from the gateway's thumbnails
$("open-latest").addEventListener("click", () => {
  clearMessages();
  const patient = $("patient-id").value.trim();
  if (!PATIENT_ID.test(patient)) return showError("Invalid patient id.");
  const key = $("api-key").value.trim();
  if (!key) return showError("Enter your API key.");
  const req = beginRequest("open", patient, `open the latest report of patient ${patient}`);
  if (!req) return;
  sessionStorage.setItem("aml-api-key", key);
  fetchLatest(patient, key, req, (body) => { if (mayReplace(req, patient)) render(body, []); });
});
