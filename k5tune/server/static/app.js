// k5tune web UI: plain JavaScript, no build step and no library. Every form is built from
// GET /api/schema, so the page never declares a setting of its own.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
  return node;
};

// ---------------------------------------------------------------------------------------------
// token and API calls

const params = new URLSearchParams(location.search);
if (params.get("token")) {
  sessionStorage.setItem("k5tune-token", params.get("token"));
  params.delete("token");  // keep it out of the address bar and the history
  history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
}
const token = () => sessionStorage.getItem("k5tune-token") || "";

// for elements that cannot send headers (EventSource, <video>, <img>)
function withToken(url) {
  const t = token();
  return t ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(t) : url;
}
const fileUrl = (path) => withToken("/api/files?path=" + encodeURIComponent(path));
const downloadUrl = (path) => withToken("/api/files?download=1&path=" + encodeURIComponent(path));
const baseName = (path) => path.split("/").pop();
const LORA_FILE = "pytorch_lora_weights.safetensors";

async function api(method, url, body) {
  const headers = {};
  if (token()) headers.Authorization = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) {
    $("#token-banner").hidden = false;
    throw new Error("this server needs its access token");
  }
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok && response.status !== 422 && response.status !== 409) {
    throw new Error((data && data.detail) || `${response.status} ${response.statusText}`);
  }
  return { status: response.status, data };
}

function say(target, text, kind) {
  const node = $(target);
  node.textContent = text;
  node.className = "status " + (kind || "");
}

$("#token-save").addEventListener("click", () => {
  sessionStorage.setItem("k5tune-token", $("#token-input").value.trim());
  location.reload();
});

// forms are never submitted (the page saves through the API); a handler here, not inline in the page:
// the Content-Security-Policy allows no inline script
document.addEventListener("submit", (e) => e.preventDefault());

// ---------------------------------------------------------------------------------------------
// tabs

const tabs = document.querySelectorAll("#tabs button");
function showTab(name) {
  tabs.forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".tab").forEach((s) => { s.hidden = s.id !== "tab-" + name; });
  location.hash = name;
  if (name === "training") { refreshRuns(); redrawChart(); }
  if (name === "gallery") loadGallery();
  if (name === "system") loadSystem().catch((e) => { $("#system-note").textContent = e.message; });
}
tabs.forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));

// ---------------------------------------------------------------------------------------------
// one form field, generated from a schema entry

const shown = (v) => (v === null || v === undefined ? "none" : typeof v === "object" ? JSON.stringify(v) : String(v));

function toText(field, value) {
  if (value === undefined) return "";
  if (value === null) return "null";
  if (field.kind === "list" && Array.isArray(value)) return value.join(", ");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

// the typed value of an input; undefined means "not set: use the default"
function fromText(field, text) {
  const t = text.trim();
  if (t === "") return undefined;
  if (t === "null" && field.nullable) return null;
  switch (field.kind) {
    case "bool": return t === "true";
    case "int":
    case "float": return /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(t) ? Number(t) : t;  // the loader names bad input
    case "list":
      try { const v = JSON.parse(t); if (Array.isArray(v)) return v; } catch (_) { /* comma list below */ }
      return t.split(",").map((s) => s.trim()).filter(Boolean);
    case "json":
      try { return JSON.parse(t); } catch (_) { return t; }
    default: return text;
  }
}

// field: schema entry; get/set read and write the value in the edited object; key: name for errors
function fieldRow(field, get, set, key, onChange) {
  const id = "f-" + key.replace(/[^\w-]/g, "_") + "-" + Math.random().toString(36).slice(2, 7);
  const value = get();
  let input;
  if (field.kind === "bool" || field.kind === "enum") {
    const choices = field.kind === "bool" ? ["true", "false"] : field.choices.map(String);
    const about = field.choice_descriptions || {};
    input = el("select", { id },
      el("option", { value: "", text: `default (${shown(field.default)})` }),
      choices.map((c) => el("option", { value: c, text: about[c] ? `${c} — ${about[c]}` : c })));
    input.value = value === undefined ? "" : String(value);
  } else {
    const placeholder = field.required ? "required" : `default: ${shown(field.default)}`;
    input = el("input", { id, type: "text", placeholder, spellcheck: "false" });
    input.value = toText(field, value);
  }
  input.name = key;
  const reset = el("button", { type: "button", class: "reset", title: "remove: use the default", text: "↺" });
  const error = el("div", { class: "field-error" });
  const row = el("div", { class: "field", "data-field": key },
    el("label", { for: id }, el("code", { text: field.name }),
      field.aliases && field.aliases.length ? el("span", { class: "muted", text: ` (alias ${field.aliases.join(", ")})` }) : null),
    el("div", { class: "control" }, input, reset),
    el("div", { class: "help", text: field.description + (field.kind === "list" ? " (comma-separated)" : "") }),
    error);
  const mark = () => row.classList.toggle("is-set", get() !== undefined);
  input.addEventListener("change", () => { set(fromText(field, input.value)); mark(); onChange(); });
  reset.addEventListener("click", () => { set(undefined); input.value = ""; mark(); onChange(); });
  mark();
  return row;
}

function clearFieldErrors(root) {
  root.querySelectorAll(".field.has-error").forEach((f) => f.classList.remove("has-error"));
  root.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; });
}

// put an error at its field when there is one; otherwise in the box
function showFieldError(root, box, error, fieldKey) {
  const field = fieldKey ? root.querySelector(`.field[data-field="${CSS.escape(fieldKey)}"]`) : null;
  if (field) {
    const section = field.closest("details");
    if (section) section.open = true;
    field.classList.add("has-error");
    field.querySelector(".field-error").textContent = error.message;
    field.scrollIntoView({ block: "nearest" });
    $(box).hidden = true;
  } else {
    $(box).hidden = false;
    $(box).textContent = error.text || error.message;
  }
}

function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

let schema = null;

// ---------------------------------------------------------------------------------------------
// config.json editor

const config = { values: {} };

// one collapsible group per section: the basic ones first and open, the advanced ones collapsed unless
// they hold a setting of this file
function renderConfigForm() {
  const form = $("#config-form");
  form.replaceChildren();
  const sections = new Map(schema.sections.map((s) => [s.title,
    el("details", { class: "section" + (s.basic ? " basic" : " advanced"), "data-section": s.title, open: s.basic },
      el("summary", {}, el("b", { text: s.title }), el("span", { class: "muted", text: s.basic ? "" : " (advanced)" })),
      el("div", { class: "fields" }))]));
  for (const field of schema.config) {
    const section = sections.get(field.section);
    section.querySelector(".fields").append(fieldRow(field,
      () => config.values[field.name],
      (v) => { if (v === undefined) delete config.values[field.name]; else config.values[field.name] = v; },
      field.name, checkConfig));
    if (config.values[field.name] !== undefined) section.open = true;
  }
  form.append(...sections.values());
  filterConfig();
}

function filterConfig() {
  const text = $("#config-filter").value.trim().toLowerCase();
  const onlySet = $("#config-only-set").checked;
  document.querySelectorAll("#config-form details.section").forEach((section) => {
    let visible = 0;
    section.querySelectorAll(".field").forEach((f) => {
      const hay = f.textContent.toLowerCase();
      const ok = (!text || hay.includes(text)) && (!onlySet || f.classList.contains("is-set"));
      f.hidden = !ok;
      if (ok) visible++;
    });
    section.hidden = visible === 0;  // a section with nothing to show is not left as an empty box
    if ((text || onlySet) && visible) section.open = true;
  });
}
$("#config-filter").addEventListener("input", filterConfig);
$("#config-only-set").addEventListener("change", filterConfig);

function showNotices(notices) {
  $("#config-notices").replaceChildren(...(notices || []).map((n) => el("li", { text: "note: " + n })));
}

// memory presets: the wizard's (`k5tune configure`), for the config's flavour and this machine's card
let presetList = null;

async function loadPresets() {
  const gib = $("#preset-gpu").value.trim();
  const query = "config=" + encodeURIComponent($("#config-path").value) + (gib ? "&gpu_gib=" + encodeURIComponent(gib) : "");
  const { data } = await api("GET", "/api/presets?" + query);
  presetList = data;
  if (!gib && data.gpu_gib) $("#preset-gpu").placeholder = `${data.gpu_gib.toFixed(0)} GiB`;
  $("#preset-select").replaceChildren(el("option", { value: "", text: "memory preset…" }),
    ...data.presets.map((p) => el("option", { value: p.name,
      text: `${p.title}${p.name === data.recommended ? " (recommended)" : ""}`
        + (p.predicted_gib != null ? ` · ~${p.predicted_gib} GiB at ${data.shape}` : "")
        + (p.held_back ? ` · pins ~${p.pinned_gib} GiB of CPU memory, this machine spares ~${data.pinnable_gib}` : "") })));
  if (data.recommended) $("#preset-select").value = data.recommended;
  showPresetNote();
}

function showPresetNote() {
  const chosen = presetList && presetList.presets.find((p) => p.name === $("#preset-select").value);
  // the presets are measured at 512x768x61; where none fits the dataset's clips, the shape the
  // recommended one fits (k5tune estimate's prediction, as the wizard says it)
  const shorter = presetList && presetList.fits_shape && presetList.fits_shape !== presetList.shape
    ? ` · no preset fits ${presetList.shape} ${presetList.cpu_bound ? "within this machine's CPU memory" : "on this card"}: `
      + `${presetList.recommended} fits ${presetList.fits_shape}` : "";
  $("#preset-note").textContent = chosen ? chosen.note + shorter : "";
  $("#preset-apply").disabled = !chosen;
}

function applyPreset() {
  const chosen = presetList.presets.find((p) => p.name === $("#preset-select").value);
  for (const key of presetList.keys) {  // a key the preset does not set goes back to its default
    if (key in chosen.settings) config.values[key] = chosen.settings[key]; else delete config.values[key];
  }
  renderConfigForm();
  checkConfig();
  say("#config-status", `preset ${chosen.name} applied: Save writes it`, "good");
}
$("#preset-select").addEventListener("change", showPresetNote);
$("#preset-gpu").addEventListener("change", () => loadPresets().catch((e) => say("#config-status", e.message, "bad")));
$("#preset-apply").addEventListener("click", applyPreset);

// a file that does not parse: shown as text, with the error's line and column; the form is withheld
function showRawConfig(data) {
  const broken = Boolean(data && data.parse_error);
  $("#config-raw").hidden = !broken;
  $("#config-form").hidden = broken;
  $("#config-save").disabled = broken;
  if (!broken) return;
  const error = data.parse_error;
  const text = $("#config-raw-text");
  text.value = data.text;
  $("#config-raw-error").textContent = error.line ? `line ${error.line}, column ${error.column}: ${error.message}` : error.message;
  if (error.line) {
    const lines = data.text.split("\n");
    const offset = lines.slice(0, error.line - 1).reduce((n, l) => n + l.length + 1, 0) + error.column - 1;
    text.focus();
    text.setSelectionRange(offset, offset);
  }
}

async function saveRawConfig() {
  const { status, data } = await api("PUT", "/api/config/text",
    { path: $("#config-path").value, text: $("#config-raw-text").value });
  if (status === 422) {
    const e = data.error;
    $("#config-raw-error").textContent = e.line ? `line ${e.line}, column ${e.column}: ${e.message}` : (e.text || e.message);
    say("#config-raw-status", "not saved", "bad");
    return;
  }
  await loadConfig();
  say("#config-status", `saved ${data.path}` + (data.kept ? ` (previous version kept as ${data.kept})` : ""), "good");
}
$("#config-raw-save").addEventListener("click", () => saveRawConfig().catch((e) => say("#config-raw-status", e.message, "bad")));

async function loadConfig() {
  const { data } = await api("GET", "/api/config?path=" + encodeURIComponent($("#config-path").value));
  config.values = data.values || {};
  showRawConfig(data);
  renderConfigForm();
  clearFieldErrors($("#config-form"));
  $("#config-error").hidden = true;
  showNotices(data.notices);
  say("#config-status", data.exists ? `loaded ${data.path}` : `${data.path} does not exist yet: Save creates it`);
  if (data.error) showFieldError($("#config-form"), "#config-error", data.error, data.error.field);
}

let configSaves = 0;  // a check that began before the latest save says nothing new: its answer is dropped

async function sendConfig(validateOnly) {
  const saves = validateOnly ? configSaves : ++configSaves;
  const { status, data } = await api("PUT", "/api/config",
    { path: $("#config-path").value, values: config.values, validate_only: validateOnly });
  if (validateOnly && saves !== configSaves) return true;
  clearFieldErrors($("#config-form"));
  $("#config-error").hidden = true;
  if (status === 409) {  // the file on disk is not JSON: never overwritten by the form
    showFieldError($("#config-form"), "#config-error", data.error, null);
    say("#config-status", "not saved", "bad");
    return false;
  }
  if (status === 422) {
    showFieldError($("#config-form"), "#config-error", data.error, data.error.field);
    say("#config-status", validateOnly ? "not valid yet" : "not saved: fix the marked setting", "bad");
    return false;
  }
  showNotices(data.notices);
  say("#config-status", validateOnly ? "valid"
    : `saved ${data.path}` + (data.kept ? ` (previous version kept as ${data.kept})` : ""), "good");
  return true;
}
const checkConfig = debounce(() => sendConfig(true).catch((e) => say("#config-status", e.message, "bad")), 300);
$("#config-save").addEventListener("click", () => sendConfig(false).catch((e) => say("#config-status", e.message, "bad")));
$("#config-reload").addEventListener("click", () => loadConfig().catch((e) => say("#config-status", e.message, "bad")));

// ---------------------------------------------------------------------------------------------
// dataset editor and preview

const datasets = { backends: [] };

function backendFields(type) {
  return type === "text_embeds" ? schema.datasets.text_embeds : type === "image" ? schema.datasets.image : schema.datasets.video;
}

function renderBackends() {
  const root = $("#backends");
  root.replaceChildren();
  datasets.backends.forEach((backend, index) => {
    const type = backend.dataset_type || "video";
    const card = el("div", { class: "backend", "data-index": index },
      el("div", { class: "backend-head" },
        el("b", { text: `${type} backend` }), el("span", { class: "muted", text: backend.id ? ` “${backend.id}”` : "" }),
        el("button", { type: "button", class: "danger small", text: "remove",
          onclick: () => { datasets.backends.splice(index, 1); renderBackends(); } })));
    const grid = el("div", { class: "fields" });
    for (const field of backendFields(type)) {
      grid.append(fieldRow(field, () => backend[field.name],
        (v) => { if (v === undefined) delete backend[field.name]; else backend[field.name] = v; },
        field.name, checkDatasets));
    }
    card.append(grid);
    if (type === "video") {
      const video = el("div", { class: "fields" });
      for (const field of schema.datasets.video_options) {
        video.append(fieldRow(field, () => (backend.video || {})[field.name],
          (v) => {
            backend.video = backend.video || {};
            if (v === undefined) delete backend.video[field.name]; else backend.video[field.name] = v;
            if (!Object.keys(backend.video).length) delete backend.video;
          }, "video." + field.name, checkDatasets));
      }
      card.append(el("h4", { text: "video options" }), video);
    }
    root.append(card);
  });
}

function showDatasetError(error) {
  clearFieldErrors($("#backends"));
  $("#datasets-error").hidden = true;
  if (!error) return;
  const card = error.backend !== null && error.backend !== undefined
    ? $(`#backends .backend[data-index="${error.backend}"]`) : null;
  if (card && error.key) showFieldError(card, "#datasets-error", error, error.key);
  else { $("#datasets-error").hidden = false; $("#datasets-error").textContent = error.text || error.message; }
}

async function loadDatasets() {
  const path = $("#datasets-path").value.trim();
  const query = "config=" + encodeURIComponent($("#config-path").value) + (path ? "&path=" + encodeURIComponent(path) : "");
  const { data } = await api("GET", "/api/datasets?" + query);
  $("#datasets-path").value = data.path;
  datasets.backends = data.backends || [];
  renderBackends();
  showDatasetError(data.error);
  say("#datasets-status", data.exists ? `loaded ${data.path}` : `${data.path} does not exist yet: Save creates it`);
}

async function sendDatasets(validateOnly) {
  const { status, data } = await api("PUT", "/api/datasets?config=" + encodeURIComponent($("#config-path").value),
    { path: $("#datasets-path").value.trim() || null, backends: datasets.backends, validate_only: validateOnly });
  if (status === 422 || status === 409) {
    showDatasetError(data.error);
    say("#datasets-status", status === 409 ? "not saved" : validateOnly ? "not valid yet" : "not saved: fix the marked setting", "bad");
    return false;
  }
  showDatasetError(null);
  say("#datasets-status", validateOnly ? "valid" : `saved ${data.path}`, "good");
  return true;
}
const checkDatasets = debounce(() => sendDatasets(true).catch((e) => say("#datasets-status", e.message, "bad")), 300);

function fmt(n, digits = 3) { return Number.isFinite(n) ? +n.toPrecision(digits) : "–"; }

async function previewDatasets() {
  say("#datasets-status", "scanning clips…");
  const { status, data } = await api("POST", "/api/datasets/preview",
    { backends: datasets.backends, config: $("#config-path").value });
  $("#preview").hidden = false;
  if (status === 422) {
    if (data.error.backend !== undefined && data.error.backend !== null) showDatasetError(data.error);
    $("#preview-summary").replaceChildren(el("pre", { class: "error-box", text: data.error.text || data.error.message }));
    ["#preview-buckets", "#preview-clips", "#preview-skipped", "#preview-notes"].forEach((s) => $(s).replaceChildren());
    $("#preview-skipped-title").hidden = true;
    say("#datasets-status", "preview failed", "bad");
    return;
  }
  $("#preview-summary").textContent =
    `${data.found} file(s) found, ${data.used} used, ${data.skipped.length} skipped (frame rate ${data.frame_rate} fps).`;
  $("#preview-buckets").replaceChildren(
    el("tr", {}, el("th", { text: "bucket (WxH@frames)" }), el("th", { text: "clips" })),
    ...Object.entries(data.buckets).map(([name, n]) => el("tr", {}, el("td", { text: name }), el("td", { text: n }))));
  $("#preview-clips").replaceChildren(...data.clips.map((c) => el("figure", { class: "card clip" },
    el("img", { src: withToken("/api/thumbnail?path=" + encodeURIComponent(c.path)), alt: c.path, loading: "lazy" }),
    el("figcaption", {},
      el("b", { text: c.path.split("/").pop() }),
      el("span", { class: "muted", text: ` ${c.width}×${c.height}, ${fmt(c.fps)} fps, ${c.frames} frames → ${c.bucket}` }),
      el("div", { class: "caption", text: c.caption })))));
  $("#preview-skipped-title").hidden = !data.skipped.length;
  $("#preview-skipped").replaceChildren(...(data.skipped.length ? [
    el("tr", {}, ["file", "reason", "detail"].map((h) => el("th", { text: h }))),
    ...data.skipped.map((s) => el("tr", { class: "skipped" }, el("td", { text: s.path }),
      el("td", { title: s.hint }, el("code", { text: s.reason })), el("td", { text: s.detail })))] : []));
  $("#preview-notes").replaceChildren(...data.notes.map((n) => el("li", { text: n })));
  say("#datasets-status", "preview ready", "good");
}

document.querySelectorAll("[data-add]").forEach((b) => b.addEventListener("click", () => {
  const type = b.dataset.add;
  const n = datasets.backends.filter((x) => x.dataset_type === type).length + 1;
  const backend = type === "text_embeds"
    ? { id: "text-embeds", type: "local", dataset_type: "text_embeds", default: true }
    : { id: `${type}s-${n}`, type: "local", dataset_type: type, instance_data_dir: `datasets/${type}s` };
  datasets.backends.push(backend);
  renderBackends();
  checkDatasets();
}));
$("#datasets-save").addEventListener("click", () => sendDatasets(false).catch((e) => say("#datasets-status", e.message, "bad")));
$("#datasets-reload").addEventListener("click", () => loadDatasets().catch((e) => say("#datasets-status", e.message, "bad")));
$("#datasets-preview").addEventListener("click", () => previewDatasets().catch((e) => say("#datasets-status", e.message, "bad")));

// ---------------------------------------------------------------------------------------------
// runs: list, start/stop/resume, live progress over Server-Sent Events

const live = { runId: null, source: null, rows: [], run: null, outputs: null, logLines: 0 };
const FINISHED = ["completed", "stopped", "failed", "cancelled"];

function when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }
function duration(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  const s = Math.round(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return (h ? `${h}:${String(m).padStart(2, "0")}` : `${m}`) + `:${String(s % 60).padStart(2, "0")}`;
}

async function refreshRuns() {
  const { data } = await api("GET", "/api/runs");
  const table = $("#runs");
  // the outcome first (status, exit code, steps), then what the run trained on: narrow screens keep the outcome
  table.replaceChildren(el("tr", {}, ["#", "status", "exit", "steps", "config", "dataset", "output", "started"]
    .map((h) => el("th", { text: h, class: "col-" + h }))),
    ...data.map((r) => el("tr", { class: r.id === live.runId ? "selected" : "", "data-run": r.id, onclick: () => selectRun(r.id) },
      el("td", { text: r.id + (r.resume ? " ↻" : "") }),
      el("td", { title: r.error || "" }, el("span", { class: "pill " + r.status, text: r.status })),
      el("td", { class: "col-exit", text: r.exit_code === null ? "" : r.exit_code }),
      el("td", { class: "col-steps", text: r.steps_done === null || r.steps_done === undefined ? ""
        : r.total_steps ? `${r.steps_done} / ${r.total_steps}` : String(r.steps_done) }),
      el("td", { class: "wrap", text: r.config_path + (r.resume_from ? ` (from ${r.resume_from})` : "") }),
      el("td", { class: "wrap", text: (r.datasets || []).join(", ") || r.dataset_file || "" }),
      el("td", { class: "wrap", text: r.output_dir }), el("td", { text: when(r.started_at) }))));
  if (live.runId === null && data.length) selectRun(data[0].id);
  const current = data.find((r) => r.id === live.runId);
  if (current) updateRunControls(current);
}

function updateRunControls(run) {
  live.run = run;
  const active = !FINISHED.includes(run.status);
  $("#run-stop").disabled = !active;
  $("#run-stop").textContent = run.status === "stopping" ? "Kill now" : run.status === "queued" ? "Cancel" : "Stop";
  $("#stat-status").textContent = run.status + (run.exit_code !== null ? ` (exit ${run.exit_code})` : "");
  $("#stat-status").className = "pill " + run.status;
  if (!active) {
    $("#stat-eta").textContent = "–";
    if ($("#run-status-msg").textContent.startsWith("stopping")) say("#run-status-msg", `run ${run.id} ${run.status}`, "good");
  }
  $("#run-title").textContent = `Run ${run.id}: ${run.config_path}${run.resume ? " (resume)" : ""} → ${run.output_dir}`;
  const snapshot = run.config_snapshot || {};
  $("#run-snapshot-text").textContent = JSON.stringify({ config: snapshot.config, datasets: snapshot.datasets,
    resume_from: snapshot.resume_from }, null, 2);
  const failed = run.status === "failed";
  $("#run-error").hidden = !failed;
  if (failed && live.errorShownFor !== run.id) {
    live.errorShownFor = run.id;
    api("GET", `/api/runs/${run.id}?tail=15`).then(({ data }) => {
      $("#run-error").replaceChildren(
        el("b", { text: `Failed (exit code ${data.exit_code === null ? "unknown" : data.exit_code}): ${data.error || ""}` }),
        el("pre", { text: (data.log_tail || []).join("\n") }));
    });
  }
}

function selectRun(id) {
  if (live.runId === id && live.source) return;
  if (live.source) live.source.close();
  Object.assign(live, { runId: id, rows: [], outputs: null, source: null, logLines: 0 });
  document.querySelectorAll("#runs tr[data-run]").forEach((tr) => tr.classList.toggle("selected", +tr.dataset.run === id));
  $("#log").textContent = ""; $("#log-current").textContent = "";
  $("#run-log-link").href = withToken(`/api/runs/${id}/log?tail=20000`);
  $("#run-log-link").hidden = false;
  ["step", "loss", "lr", "speed", "eta", "gpu"].forEach((k) => { $("#stat-" + k).textContent = "–"; });
  redrawChart();
  connect(id);
}

function connect(id) {
  const source = new EventSource(withToken(`/api/runs/${id}/events`));
  live.source = source;
  // the stream starts from the beginning on every (re)connect: start from a clean slate
  source.onopen = () => { live.rows = []; $("#log").textContent = ""; live.logLines = 0; };
  source.addEventListener("status", (e) => { updateRunControls(JSON.parse(e.data)); refreshRuns(); });
  source.addEventListener("metrics", (e) => {
    const data = JSON.parse(e.data);
    if (data.reset) live.rows = [];
    live.rows.push(...data.rows);
    showSummary(data.summary);
    redrawChart();
  });
  source.addEventListener("log", (e) => {
    const data = JSON.parse(e.data);
    const log = $("#log");
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    if (data.lines.length) {
      log.append(data.lines.join("\n") + "\n");
      live.logLines += data.lines.length;
      if (live.logLines > 3000) { log.textContent = log.textContent.split("\n").slice(-2000).join("\n"); live.logLines = 2000; }
    }
    $("#log-current").textContent = data.current || "";
    if (atBottom) log.scrollTop = log.scrollHeight;
  });
  source.addEventListener("outputs", (e) => {
    live.outputs = JSON.parse(e.data);
    const dir = $("#gallery-dir").value.trim();
    if (!dir || dir === live.outputs.output_dir) renderGallery(live.outputs);
  });
  source.addEventListener("end", (e) => {
    const run = JSON.parse(e.data);
    updateRunControls(run);
    source.close();
    live.source = null;
    say("#run-status-msg", `run ${run.id} ${run.status}` + (run.exit_code !== null ? ` (exit code ${run.exit_code})` : ""),
      run.status === "failed" ? "bad" : "good");
    refreshRuns();
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED && live.source === source) {
      live.source = null;
      setTimeout(() => { if (live.runId === id && !live.source) connect(id); }, 3000);
    }
  };
}

function showSummary(s) {
  if (!s || s.step === undefined) return;
  $("#stat-step").textContent = s.total_steps ? `${s.step} / ${s.total_steps}` : String(s.step);
  $("#stat-loss").textContent = fmt(s.loss, 4);
  // CREPA runs: the loss is flow + lambda * CREPA term; both shown apart
  $("#stat-crepa-box").hidden = !Number.isFinite(s.crepa_loss);
  $("#stat-crepa").textContent = Number.isFinite(s.crepa_loss) ? `${fmt(s.flow_loss, 4)} / ${fmt(s.crepa_loss, 4)}` : "–";
  $("#stat-lr").textContent = Number.isFinite(s.lr) ? s.lr.toExponential(2) : "–";
  $("#stat-speed").textContent = !s.it_per_s ? "–" : s.it_per_s >= 1 ? `${s.it_per_s.toFixed(2)} it/s` : `${(1 / s.it_per_s).toFixed(2)} s/it`;
  $("#stat-eta").textContent = duration(s.eta_seconds);
  $("#stat-gpu").textContent = Number.isFinite(s.gpu_peak_gib) ? `${s.gpu_peak_gib.toFixed(2)} GiB` : "–";
}

function redrawChart() { drawLossChart($("#loss-chart"), live.rows); }
window.addEventListener("resize", debounce(redrawChart, 150));

async function startRun(resume, from) {
  try {
    const { data } = await api("POST", "/api/runs", { config: $("#run-config").value, resume, resume_from: from || null });
    if (from) showTab("training");
    say("#run-status-msg", data.status === "queued"
      ? `run ${data.id} queued: another run is using ${data.output_dir}` : `run ${data.id} started`, "good");
    live.runId = null;
    selectRun(data.id);
    refreshRuns();
  } catch (e) { say("#run-status-msg", e.message, "bad"); }
}
$("#run-start").addEventListener("click", () => startRun(false));
$("#run-resume").addEventListener("click", () => startRun(true));
$("#run-stop").addEventListener("click", async () => {
  if (live.runId === null) return;
  const force = live.run && live.run.status === "stopping";
  if (force && !confirm("Kill the run now? It will not save a checkpoint.")) return;
  try {
    const { data } = await api("POST", `/api/runs/${live.runId}/stop`, { force });
    updateRunControls(data);
    say("#run-status-msg", data.status === "stopping" ? "stopping: finishing the step and saving a checkpoint…" : data.status);
  } catch (e) { say("#run-status-msg", e.message, "bad"); }
});

// ---------------------------------------------------------------------------------------------
// gallery: validation videos and checkpoints of an output folder

function renderGallery(outputs) {
  const byStep = new Map();
  for (const v of outputs.videos) {
    if (!byStep.has(v.step)) byStep.set(v.step, []);
    byStep.get(v.step).push(v);
  }
  // keep playing <video> elements when nothing changed for them
  const root = $("#videos");
  const existing = new Map([...root.querySelectorAll("figure[data-path]")].map((f) => [f.dataset.path, f]));
  const keep = (v) => {  // a playing video stays; its caption follows prompts.txt, which may come after it
    const figure = existing.get(v.path);
    if (figure && figure.querySelector(".caption").textContent !== v.prompt) figure.querySelector(".caption").textContent = v.prompt;
    return figure;
  };
  const figures = [...byStep.keys()].sort((a, b) => b - a).flatMap((step) => byStep.get(step).map((v) =>
    keep(v) || el("figure", { class: "card video", "data-path": v.path },
      el("video", { src: fileUrl(v.path), controls: true, muted: true, loop: true, playsinline: true, preload: "metadata" }),
      el("figcaption", {}, el("b", { text: `step ${v.step}` }), el("span", { class: "muted", text: " " + v.name }),
        el("div", { class: "caption", text: v.prompt })))));
  root.replaceChildren(...figures);
  $("#videos-empty").hidden = figures.length > 0;
  $("#checkpoints").replaceChildren(
    el("tr", {}, ["checkpoint", "step", "size", "saved", "LoRA", ""].map((h) => el("th", { text: h }))),
    ...outputs.checkpoints.slice().reverse().map((c) => el("tr", { class: "checkpoint", "data-path": c.path },
      el("td", { text: c.path }), el("td", { text: c.step }), el("td", { text: `${(c.size_bytes / 1048576).toFixed(2)} MiB` }),
      el("td", { text: new Date(c.modified * 1000).toLocaleString() }),
      el("td", {}, c.files.includes(LORA_FILE)
        ? el("a", { class: "download", href: downloadUrl(c.path + "/" + LORA_FILE), download: LORA_FILE, text: "download" }) : ""),
      el("td", {}, el("button", { type: "button", class: "resume-here", text: "resume from here",
        onclick: () => startRun(true, c.path) })))));
  $("#gallery-lora").replaceChildren(...(outputs.lora
    ? ["final LoRA: ", el("a", { href: downloadUrl(outputs.lora), text: outputs.lora, download: baseName(outputs.lora) })] : []));
  if (!$("#gallery-dir").value) $("#gallery-dir").placeholder = outputs.output_dir;
}

async function loadGallery() {
  const dir = $("#gallery-dir").value.trim();
  if (!dir && live.outputs) { renderGallery(live.outputs); return; }
  const query = dir ? "dir=" + encodeURIComponent(dir) : "config=" + encodeURIComponent($("#config-path").value);
  const { data } = await api("GET", "/api/outputs?" + query);
  renderGallery(data);
}
$("#gallery-reload").addEventListener("click", () => loadGallery().catch((e) => alert(e.message)));

// ---------------------------------------------------------------------------------------------
// system: each GPU's memory and utilisation, and the queue

const gib = (mib) => (Number.isFinite(mib) ? (mib / 1024).toFixed(1) : "?");

async function loadSystem() {
  const { data } = await api("GET", "/api/system");
  $("#system-note").textContent = data.note || "";
  $("#system-gpus").replaceChildren(...(data.gpus.length ? [
    el("tr", {}, ["GPU", "name", "memory used / total", "utilisation"].map((h) => el("th", { text: h }))),
    ...data.gpus.map((g) => el("tr", { class: "gpu" },
      el("td", { text: String(g.index) }), el("td", { text: g.name }),
      el("td", {}, `${gib(g.memory_used_mib)} / ${gib(g.memory_total_mib)} GiB `,
        el("meter", { min: 0, max: g.memory_total_mib || 1, value: g.memory_used_mib || 0 })),
      el("td", { text: Number.isFinite(g.utilization_percent) ? `${g.utilization_percent}%` : "?" })))] : []));
  $("#system-queue-empty").hidden = data.queue.length > 0;
  $("#system-queue").replaceChildren(...(data.queue.length ? [
    el("tr", {}, ["run", "status", "output folder", "config", "queued at"].map((h) => el("th", { text: h }))),
    ...data.queue.map((r) => el("tr", { class: "queued-run" }, el("td", { text: String(r.id) }), el("td", { text: r.status }),
      el("td", { text: r.output_dir }), el("td", { text: r.config_path }), el("td", { text: r.created_at })))] : []));
}
setInterval(() => { if (!$("#tab-system").hidden) loadSystem().catch(() => {}); }, 3000);

// ---------------------------------------------------------------------------------------------

async function start() {
  try {
    const { data: info } = await api("GET", "/api/info");
    $("#project").textContent = info.project_dir;
    schema = (await api("GET", "/api/schema")).data;
    await loadConfig();
    await loadPresets();
    await loadDatasets();
    await refreshRuns();
    setInterval(() => refreshRuns().catch(() => {}), 3000);
  } catch (e) {
    say("#config-status", e.message, "bad");
  }
  const wanted = location.hash.slice(1);
  if (["config", "datasets", "training", "gallery", "system"].includes(wanted)) showTab(wanted);
}
start();
