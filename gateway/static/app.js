// The lab page: upload one patient's images, show counts, differential, subtype and a gallery.
// Plain JavaScript, no external resources (hospital networks are offline).
"use strict";

const $ = (id) => document.getElementById(id);
const GROUP_PREVIEW = 60;  // cells shown per label before "Show all"
let chosen = [];
// the report on screen and the reviewer's unsaved corrections (sha256 -> label)
let current = null;
// the key lives in this tab's sessionStorage only: gone when the tab closes
$("api-key").value = sessionStorage.getItem("aml-api-key") || "";
$("api-key").addEventListener("change", () => sessionStorage.setItem("aml-api-key", $("api-key").value.trim()));

function updateSelection() {
  const files = [...$("images").files, ...$("folder").files].filter((f) => /\.(jpe?g|png|tiff?|bmp)$/i.test(f.name));
  chosen = files;
  $("selection").textContent = files.length ? `${files.length} image(s) selected` : "";
}
$("images").addEventListener("change", updateSelection);
$("folder").addEventListener("change", updateSelection);

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function barChart(svg, entries, format) {
  const width = svg.clientWidth || 500, height = svg.clientHeight || 260;
  const max = Math.max(...entries.map(([, v]) => v), 1e-9);
  const band = (height - 20) / entries.length;
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  entries.forEach(([label, value], i) => {
    const y = 10 + i * band;
    const w = Math.max(1, (width - 220) * value / max);
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
  report.cells.forEach((c) => { counts[current.corrections.get(c.sha256) || c.label] += 1; });
  return counts;
}

function showCounts() {
  barChart($("chart-counts"), Object.entries(countsNow()), (v) => String(v));
  const n = current.corrections.size;
  $("r-corrections").textContent = n ? `${n} correction(s) not saved yet` : "";
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

function showStatus(report) {
  const status = report.status || "preliminary";
  $("r-status").className = `status ${status}`;
  $("r-status").textContent = `${status} · version ${report.version || 1}` +
    (report.reviewed_by ? ` · reviewed by ${report.reviewed_by} at ${report.reviewed_at}` : " · not reviewed yet");
  $("save-draft").disabled = status !== "preliminary";  // a released report changes only by a signed-off amendment
  $("sign-off").textContent = status === "preliminary" ? "Sign off" : "Sign off amendment";
}

function labelText(cell) {
  const label = current.corrections.get(cell.sha256) || cell.label;
  const model = cell.model_label || (label !== cell.label ? cell.label : null);
  return model ? `${label} (model: ${model})` : label;
}

function refreshCell(sha) {
  const cell = current.report.cells.find((c) => c.sha256 === sha);
  document.querySelectorAll(`#gallery .cell[data-sha256="${sha}"]`).forEach((box) => {
    box.querySelector(".label-badge").textContent = labelText(cell);
    box.classList.toggle("corrected", labelText(cell).includes("(model:"));
  });
}

function selectCell(cell) {
  document.querySelectorAll("#gallery .cell.selected").forEach((b) => b.classList.remove("selected"));
  document.querySelectorAll(`#gallery .cell[data-sha256="${cell.sha256}"]`).forEach((b) => b.classList.add("selected"));
  $("cell-editor").hidden = false;
  $("cell-editor").dataset.sha256 = cell.sha256;
  $("cell-name").textContent = cell.filename;
  $("cell-model-label").textContent = cell.model_label || cell.label;
  $("relabel").value = current.corrections.get(cell.sha256) || cell.label;
}

$("relabel").addEventListener("change", () => {
  const sha = $("cell-editor").dataset.sha256;
  const cell = current.report.cells.find((c) => c.sha256 === sha);
  if ($("relabel").value === cell.label) current.corrections.delete(sha);
  else current.corrections.set(sha, $("relabel").value);
  refreshCell(sha);
  showCounts();
});

async function thumbnail(img, reportId, sha) {
  // cells of a stored report whose files are not on this computer: the gateway's thumbnail
  const response = await fetch(`/reports/${reportId}/cells/${sha}.jpg`, { headers: { "X-API-Key": $("api-key").value.trim() } });
  if (response.ok) img.src = URL.createObjectURL(await response.blob());
}

function sendReview(signOff) {
  $("error").hidden = true;
  const reviewer = $("reviewer").value.trim();
  if (!reviewer) return showError("Enter the reviewer's name.");
  const key = $("api-key").value.trim();
  const body = { reviewer, comment: $("review-comment").value.trim(), sign_off: signOff,
                 corrections: [...current.corrections].map(([sha256, label]) => ({ sha256, label })) };
  $("sign-off").disabled = true;
  fetch(`/reports/${current.report.report_id}/review?include=cells`, {
    method: "POST", headers: { "Content-Type": "application/json", "X-API-Key": key }, body: JSON.stringify(body),
  }).then(async (response) => {
    let answer = null;
    try { answer = await response.json(); } catch (e) { /* not JSON */ }
    $("sign-off").disabled = false;
    if (response.status === 201 && answer) render(answer, current.files);
    else showError(answer && answer.detail ? `${answer.title || "Error"} (${response.status}): ${answer.detail}` : `HTTP ${response.status}`);
  }).catch(() => { $("sign-off").disabled = false; showError("Network error: the gateway could not be reached."); });
}
$("sign-off").addEventListener("click", () => sendReview(true));
$("save-draft").addEventListener("click", () => sendReview(false));

function showApl(report) {
  // the APL alert (issue 10): a red banner when it fires, the probability whenever there is one
  $("r-apl-banner").hidden = report.apl_alert !== true;
  const known = typeof report.apl_probability === "number";
  $("r-apl").hidden = !known;
  $("r-apl").classList.toggle("alert", report.apl_alert === true);
  $("r-apl").textContent = known ? `APL probability ${(report.apl_probability * 100).toFixed(1)}%` +
    (typeof report.apl_threshold === "number" ? ` (alert at ${(report.apl_threshold * 100).toFixed(1)}% or more)` : "") +
    (report.apl_alert ? ": suspected APL" : "") : "";
}

function cellBox(c, report, byName, note) {
  const box = document.createElement("div");
  box.className = "cell";
  box.dataset.sha256 = c.sha256;
  box.tabIndex = 0;
  box.title = `${c.filename}: click to correct its label`;
  const file = byName.get(c.filename);
  const img = Object.assign(document.createElement("img"), { alt: c.filename });
  if (file) img.src = URL.createObjectURL(file);
  else if (report.report_id) thumbnail(img, report.report_id, c.sha256);
  box.append(img, Object.assign(document.createElement("span"), { className: "label-badge" }),
             document.createElement("br"), document.createTextNode(note));
  box.addEventListener("click", () => selectCell(c));
  box.addEventListener("keydown", (e) => { if (e.key === "Enter") selectCell(c); });
  return box;
}

function render(report, files) {
  current = { report, files, corrections: new Map() };
  $("result").hidden = false;
  showStatus(report);
  $("cell-editor").hidden = true;
  $("relabel").replaceChildren(...Object.keys(report.cell_counts).map((label) =>
    Object.assign(document.createElement("option"), { value: label, textContent: label })));
  $("r-patient").textContent = report.patient_id;
  $("r-prediction").textContent = `${report.prediction} (P(AML) ${(report.aml_probability * 100).toFixed(1)}%)`;
  $("r-summary").textContent = `${report.n_images} images: ${report.n_classified} classified, ` +
    `${report.n_unclassified} unclassified, ${report.n_failed} failed` +
    (report.n_duplicates ? `, ${report.n_duplicates} exact duplicate(s) counted once` : "") +
    (report.cached ? " (from cache)" : "");
  showApl(report);
  $("r-warnings").replaceChildren(...report.warnings.map((w) => Object.assign(document.createElement("li"), { textContent: w })));
  const quality = report.quality;
  $("r-quality-banner").hidden = !(quality && quality.review_every_cell);
  $("r-quality-banner").textContent = quality && quality.looks_out_of_domain
    ? "These images look unlike the images the model was trained on (another scanner, stain, magnification or focus?): review every cell."
    : "Many cells could not be placed by the model: review every cell.";
  $("r-quality").textContent = quality ? `Quality: ${(quality.unclassified_fraction * 100).toFixed(1)}% unclassified, ` +
    `${(quality.smudge_fraction * 100).toFixed(1)}% smudge cells` + (quality.appearance_distance === null ? "" :
    `, appearance distance ${quality.appearance_distance.toFixed(1)} (warning above ${quality.appearance_threshold.toFixed(1)})`) : "";
  showCounts();
  barChart($("chart-probabilities"), Object.entries(report.probabilities), (v) => `${(v * 100).toFixed(1)}%`);
  const rows = Object.entries(report.leukocyte_differential).map(([k, v]) => {
    const tr = document.createElement("tr");
    tr.append(Object.assign(document.createElement("td"), { textContent: k }),
              Object.assign(document.createElement("td"), { textContent: v.toFixed(1) }));
    return tr;
  });
  $("r-differential").querySelector("tbody").replaceChildren(...rows);
  const per100 = Object.entries(report.per_100_leukocytes || {}).map(([k, v]) => {
    const tr = document.createElement("tr");
    tr.append(Object.assign(document.createElement("td"), { textContent: k }),
              Object.assign(document.createElement("td"), { textContent: v.toFixed(1) }));
    return tr;
  });
  $("r-per100").querySelector("tbody").replaceChildren(...per100);
  const byName = new Map();
  files.forEach((f) => { if (!byName.has(f.name)) byName.set(f.name, f); });
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
    const box = (c) => cellBox(c, report, byName, `${(c.confidence * 100).toFixed(0)}%`);
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
    top.forEach((t) => strip.append(cellBox(bySha.get(t.sha256), report, byName, `APL logit ${t.apl_logit.toFixed(2)}`)));
    section.append(strip);
    sections.unshift(section);
  }
  $("gallery").replaceChildren(...sections);
  (report.cells || []).forEach((c) => refreshCell(c.sha256));
  const apl = report.models.apl_patient;
  $("r-models").textContent = `cell model ${report.models.cell.name} ${report.models.cell.version}; ` +
    `subtype model ${report.models.subtype.name} ${report.models.subtype.version}; ` +
    (apl ? `APL model ${apl.name} ${apl.version}; ` : "") + `request ${report.request_id}`;
}

$("upload-form").addEventListener("submit", (event) => {
  event.preventDefault();
  $("error").hidden = true;
  const patient = $("patient-id").value.trim();
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(patient)) return showError("Invalid patient id.");
  if (!chosen.length) return showError("Choose at least one image.");
  const key = $("api-key").value.trim();
  if (!key) return showError("Enter your API key.");
  if (keepUnsaved()) return;
  sessionStorage.setItem("aml-api-key", key);
  const form = new FormData();
  chosen.forEach((f) => form.append("images", f, f.name));
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/patients/${encodeURIComponent(patient)}/classify?include=cells`);
  xhr.setRequestHeader("X-API-Key", key);
  $("progress-box").hidden = false;
  $("submit").disabled = true;
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) {
      $("progress").value = (100 * e.loaded) / e.total;
      $("progress-text").textContent = `uploading ${Math.round((100 * e.loaded) / e.total)}%`;
    }
  };
  xhr.upload.onload = () => { $("progress-text").textContent = "classifying…"; };
  xhr.onload = () => {
    $("submit").disabled = false;
    $("progress-box").hidden = true;
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
    if (xhr.status === 200 && body) render(body, chosen);
    else showError(body && body.detail ? `${body.title || "Error"} (${xhr.status}): ${body.detail}` : `HTTP ${xhr.status}`);
  };
  xhr.onerror = () => { $("submit").disabled = false; showError("Network error: the gateway could not be reached."); };
  xhr.send(form);
});

// a stored report, days later: its cells come from the gateway's thumbnails
$("open-latest").addEventListener("click", () => {
  $("error").hidden = true;
  const patient = $("patient-id").value.trim();
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(patient)) return showError("Invalid patient id.");
  const key = $("api-key").value.trim();
  if (!key) return showError("Enter your API key.");
  if (keepUnsaved()) return;
  sessionStorage.setItem("aml-api-key", key);
  fetch(`/patients/${encodeURIComponent(patient)}/classification?include=cells`, { headers: { "X-API-Key": key } })
    .then(async (response) => {
      let body = null;
      try { body = await response.json(); } catch (e) { /* not JSON */ }
      if (response.ok && body) render(body, []);
      else showError(body && body.detail ? `${body.title || "Error"} (${response.status}): ${body.detail}` : `HTTP ${response.status}`);
    }).catch(() => showError("Network error: the gateway could not be reached."));
});
