// The viewer page: upload one X-ray to /predict and show what comes back. No library, nothing from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const LABELS = {
  fracture: "Fracture",
  suspicious: "Suspicious",
  "no fracture": "No fracture",
  "not assessable": "Not assessable",
};
const ACCEPT = /\.(dcm|dicom|png|jpe?g|nii|nii\.gz)$/i;
let limits = { max_upload_bytes: 50e6 };

function megabytes(n) {
  return `${(n / 1e6).toPrecision(3).replace(/\.?0+$/, "")} MB`;
}

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = `message ${kind}`;
  box.hidden = !text;
}

async function loadHealth() {
  try {
    const res = await fetch("/health");
    const info = await res.json();
    limits = info.limits;
    $("model-info").textContent = `model ${info.bundle_version} · ${info.device}`;
    $("accepted").textContent = `DICOM, PNG, JPEG or NIfTI · up to ${megabytes(limits.max_upload_bytes)}`;
    showPoints(info.thresholds);
  } catch (err) {
    $("model-info").textContent = "service not reachable";
    showMessage("The service does not answer: is `make serve` running?");
  }
}

function showPoints(points) {
  const s = points.suspicious;
  const f = points.fracture;
  $("zone-low").style.width = `${s * 100}%`;
  $("zone-mid").style.width = `${Math.max(0, f - s) * 100}%`;
  $("mark-suspicious").style.left = `calc(${s * 100}% - 1px)`;
  $("mark-fracture").style.left = `calc(${f * 100}% - 1px)`;
  $("mark-fracture").hidden = f === s;
  $("points").textContent = f === s
    ? `threshold ${s.toFixed(2)}`
    : `suspicious ≥ ${s.toFixed(2)} · fracture ≥ ${f.toFixed(2)}`;
}

function clearResult() {
  $("finding").className = "finding idle";
  $("finding").textContent = "No image yet";
  for (const id of ["reason", "probability", "verdict", "region-note", "downloads"]) $(id).textContent = "";
  for (const id of ["detector", "size", "elapsed"]) $(id).textContent = "-";
  $("marker").hidden = true;
  $("warnings").hidden = true;
  $("figure").hidden = true;
  $("stage").classList.add("empty");
  $("region-layer").dataset.ready = "false";
  for (const id of ["crop", "repaired"]) {
    $(id).hidden = true;
    $(id).removeAttribute("src");
    $(`${id}-empty`).hidden = false;
  }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`could not load ${url}`));
    img.src = url;
  });
}

// Paint a mask PNG (gray) onto a canvas: `paint(value) -> [r, g, b, a]` per pixel; returns how many were painted.
async function paintLayer(canvas, url, paint) {
  const img = await loadImage(url);
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const px = data.data;
  const w = canvas.width;
  const h = canvas.height;
  const gray = new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) gray[i] = px[4 * i];
  let painted = 0;
  for (let i = 0; i < w * h; i++) {
    const rgba = paint(gray, i, w, h);
    px.set(rgba, 4 * i);
    if (rgba[3] > 0) painted++;
  }
  ctx.putImageData(data, 0, 0);
  return painted;
}

// The suspected region: a translucent amber fill with an opaque yellow edge.
function regionPaint(gray, i, w, h) {
  if (gray[i] < 128) return [0, 0, 0, 0];
  const x = i % w;
  const y = (i - x) / w;
  const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
    gray[i - 1] < 128 || gray[i + 1] < 128 || gray[i - w] < 128 || gray[i + w] < 128;
  return edge ? [255, 222, 40, 255] : [255, 170, 0, 90];
}

function heatPaint(gray, i) {
  return [230, 40, 40, Math.round(gray[i] * 0.6)];
}

// The X-ray as large as the stage allows (the layers above it follow its size).
function fit() {
  const img = $("xray");
  const stage = $("stage");
  if (!img.naturalWidth || $("figure").hidden) return;
  const scale = Math.min((stage.clientWidth - 32) / img.naturalWidth, (stage.clientHeight - 32) / img.naturalHeight);
  img.style.width = `${Math.floor(img.naturalWidth * scale)}px`;
  img.style.height = `${Math.floor(img.naturalHeight * scale)}px`;
}

// One sentence: where the probability lies against the operating points.
function verdict(p, points) {
  if (p === null) return "";
  const s = points.suspicious.toFixed(2);
  const f = points.fracture.toFixed(2);
  if (points.suspicious === points.fracture) return `${p >= points.fracture ? "At or above" : "Below"} the threshold (${f}).`;
  if (p >= points.fracture) return `At or above the fracture point (${f}).`;
  if (p >= points.suspicious) return `Between the suspicious (${s}) and fracture (${f}) points.`;
  return `Below the suspicious point (${s}).`;
}

// Why the region overlay is empty, by the finding (the generator's map can be empty even for a fracture).
function emptyRegionNote(finding) {
  if (finding === "fracture" || finding === "suspicious") return "no region above the map's threshold";
  if (finding === "no fracture") return "no suspected region (below the suspicious point)";
  return ""; // not assessable: no probability, so nothing to say about a region
}

function drawBox(record) {
  const svg = $("box-layer");
  const [w, h] = record.image_size;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.replaceChildren();
  const box = record.nasal_bone_box;
  if (!box) return;
  const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
  rect.setAttribute("x", box[0]);
  rect.setAttribute("y", box[1]);
  rect.setAttribute("width", box[2] - box[0]);
  rect.setAttribute("height", box[3] - box[1]);
  rect.setAttribute("class", record.finding.replace(" ", "-"));
  svg.appendChild(rect);
}

async function showResult(record) {
  const finding = record.finding;
  $("finding").className = `finding ${finding.replace(" ", "-")}`;
  $("finding").textContent = LABELS[finding] || finding;
  $("reason").textContent = record.finding_reason ? `Reason: ${record.finding_reason}` : "";
  showPoints(record.thresholds);
  const p = record.fracture_probability;
  $("probability").textContent = p === null ? "n/a" : p.toFixed(2);
  $("marker").hidden = p === null;
  $("verdict").textContent = verdict(p, record.thresholds);
  if (p !== null) $("marker").style.left = `${Math.min(1, Math.max(0, p)) * 100}%`;
  $("detector").textContent = record.detector_confidence.toFixed(2);
  $("size").textContent = `${record.image_size[0]} × ${record.image_size[1]} px`;
  $("elapsed").textContent = `${Math.round(record.seconds * 1000)} ms`;
  const warnings = record.warnings || [];
  $("warnings").replaceChildren(...warnings.map((w) => Object.assign(document.createElement("li"), { textContent: w })));
  $("warnings").hidden = warnings.length === 0;

  const links = record.links;
  $("downloads").replaceChildren(
    "Download:",
    ...[["overlay", "Overlay PNG"], ["json", "JSON"]]
      .filter(([key]) => links[key])
      .map(([key, text]) => Object.assign(document.createElement("a"), { href: links[key], textContent: text, download: "" })),
  );
  for (const id of ["crop", "repaired"]) {
    $(id).hidden = !links[id];
    $(`${id}-empty`).hidden = Boolean(links[id]);
    if (links[id]) $(id).src = links[id];
  }
  await loadImage(links.xray).then((img) => { $("xray").src = img.src; });
  drawBox(record);
  $("figure").hidden = false;
  $("stage").classList.remove("empty");
  fit();
  const regionPixels = await paintLayer($("region-layer"), links.region_mask, regionPaint);
  await paintLayer($("heatmap-layer"), links.heatmap, heatPaint);
  $("region-note").textContent = regionPixels ? "" : emptyRegionNote(finding);
  $("region-layer").dataset.ready = "true";
}

async function assess(file) {
  clearResult();
  if (!file) return;
  if (file.size === 0) return showMessage("This file is empty (0 bytes).");
  if (file.size > limits.max_upload_bytes) {
    return showMessage(`This file is ${megabytes(file.size)}; the limit is ${megabytes(limits.max_upload_bytes)}.`);
  }
  if (!ACCEPT.test(file.name) && file.type && !/dicom|png|jpeg/.test(file.type)) {
    showMessage("Not a usual X-ray file name; sending it anyway.", "warn");
  } else {
    showMessage("Assessing...", "info");
  }
  document.body.classList.add("busy");
  const form = new FormData();
  form.append("file", file, "upload"); // the file's own name (often a patient's) is not sent
  try {
    const res = await fetch("/predict", { method: "POST", body: form });
    const body = await res.json().catch(() => ({ detail: `HTTP ${res.status}` }));
    if (!res.ok) {
      const detail = String(body.detail || `HTTP ${res.status}`);
      if (res.status === 422) {
        const text = /^not assessed/i.test(detail) ? detail : `Not assessed: ${detail}`;
        showMessage(text.charAt(0).toUpperCase() + text.slice(1));
        $("finding").className = "finding not-assessable";
        $("finding").textContent = "Not assessed";
      } else {
        showMessage(`${res.status === 503 ? "Busy" : "Upload refused"}: ${detail}`);
        $("finding").textContent = "No result";
      }
      return;
    }
    showMessage("");
    await showResult(body);
    if (body.finding === "not assessable") {
      showMessage(`Not assessable: ${body.finding_reason}. Check that this is a lateral head X-ray.`, "warn");
    }
  } catch (err) {
    showMessage(`The service could not be reached or failed (${err.message}).`);
  } finally {
    document.body.classList.remove("busy");
    $("file").value = "";
  }
}

function bindToggle(id, layerId) {
  const sync = () => $(layerId).toggleAttribute("hidden", !$(id).checked); // SVG has no .hidden property
  $(id).addEventListener("change", sync);
  sync();
}

function init() {
  bindToggle("toggle-region", "region-layer");
  bindToggle("toggle-heatmap", "heatmap-layer");
  bindToggle("toggle-box", "box-layer");
  $("file").addEventListener("change", () => assess($("file").files[0]));
  $("new").addEventListener("click", () => $("file").click());
  $("dropzone").addEventListener("click", (e) => { if (e.target.tagName !== "LABEL") $("file").click(); });
  const stage = $("stage");
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (e) => { e.preventDefault(); stage.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) {
    document.addEventListener(type, (e) => { e.preventDefault(); stage.classList.remove("dragging"); });
  }
  document.addEventListener("drop", (e) => assess(e.dataTransfer.files[0]));
  window.addEventListener("resize", fit);
  clearResult();
  loadHealth();
}

document.addEventListener("DOMContentLoaded", init);
