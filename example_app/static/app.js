// The example page: pick a photo, run the workflow, watch its stream, show the results.
// It only uses the package's browser module, served by the router next to the endpoints.
import {
  HTTPError,
  ImageOutput,
  RunCancelledError,
  RunFailedError,
  streamRun,
} from "/api/detect/ikstream.js";

const API = "/api/detect";
const MAX_UPLOAD_BYTES = 7 * 1024 * 1024; // base64 grows it by 4/3: stays under the 10 MiB body limit
const MAX_LOG_LINES = 200;

const $ = id => document.getElementById(id);
const ui = {
  signin: $("signin"),
  samples: $("samples"),
  file: $("file"),
  preview: $("preview"),
  previewCaption: $("preview-caption"),
  run: $("run"),
  cancel: $("cancel"),
  message: $("message"),
  messageText: $("message-text"),
  relogin: $("relogin"),
  status: $("status"),
  eta: $("eta"),
  progress: $("progress"),
  progressText: $("progress-text"),
  log: $("log"),
  summary: $("summary"),
  outBoxes: $("out-boxes"),
  outEdges: $("out-edges"),
  detections: $("detections").tBodies[0],
  config: $("config"),
  detectFaces: $("detect-faces"),
  detectCats: $("detect-cats"),
  cannyLow: $("canny-low"),
  cannyHigh: $("canny-high"),
};

// What the page knows; exposed as `window.ikDemo` so that it can be inspected.
const demo = {
  token: null,
  subject: null,
  image: null, // {dataUrl, label}
  current: null, // {controller, runId}
  lastRunId: null,
  runs: 0,
  progressUpdates: [], // {current, total} of the current run, in arrival order
  lastError: null,
  setToken(token) {
    demo.token = token;
  },
};
window.ikDemo = demo;

// -- small helpers -----------------------------------------------------------------------

function setState(state) {
  document.body.dataset.state = state;
}

function setStatus(kind, text) {
  ui.status.dataset.status = kind;
  ui.status.textContent = text;
}

function showMessage(text, {kind = "error", relogin = false} = {}) {
  ui.message.hidden = false;
  ui.message.dataset.kind = kind;
  ui.messageText.textContent = text;
  ui.relogin.hidden = !relogin;
}

function clearMessage() {
  ui.message.hidden = true;
  ui.messageText.textContent = "";
  ui.relogin.hidden = true;
}

function updateButtons() {
  const running = demo.current !== null;
  ui.run.disabled = running || !demo.token || !demo.image;
  ui.cancel.disabled = !running;
}

function detailOf(body) {
  if (body && typeof body === "object" && "detail" in body) {
    const detail = body.detail;
    if (typeof detail === "string") return detail;
    if (typeof detail?.message === "string") return detail.message;
    if (Array.isArray(detail)) return detail.map(item => item.msg ?? JSON.stringify(item)).join("; ");
    return JSON.stringify(detail);
  }
  return typeof body === "string" ? body : "";
}

function retryAfterSeconds(response) {
  const value = response?.headers?.get("retry-after");
  const seconds = Number.parseInt(value ?? "", 10);
  return Number.isFinite(seconds) ? seconds : null;
}

function formatSeconds(ms) {
  const seconds = ms / 1000;
  return seconds < 10 ? seconds.toFixed(1) : String(Math.round(seconds));
}

function readAsDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error ?? new Error("could not read the file"));
    reader.readAsDataURL(blob);
  });
}

// -- sign-in ------------------------------------------------------------------------------

async function login() {
  ui.signin.textContent = "Signing in…";
  demo.token = null;
  updateButtons();
  let response;
  try {
    response = await fetch("/api/login", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({name: "guest"}),
    });
  } catch (error) {
    ui.signin.textContent = "Not signed in.";
    showMessage(`Cannot reach the server to sign in: ${error.message}`, {relogin: true});
    return false;
  }
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    ui.signin.textContent = "Not signed in.";
    if (response.status === 429) {
      const wait = retryAfterSeconds(response);
      showMessage(`Too many sign-ins from this address: retry after ${wait ?? "a few"} s.`, {
        relogin: true,
      });
    } else {
      showMessage(`Sign-in failed (HTTP ${response.status}): ${detailOf(body)}`, {relogin: true});
    }
    return false;
  }
  const body = await response.json();
  demo.token = body.access_token;
  demo.subject = body.subject;
  const minutes = Math.round(body.expires_in / 60);
  ui.signin.textContent = `Signed in as a guest (demo token, valid ${minutes} min).`;
  updateButtons();
  return true;
}

// -- picking a photo ---------------------------------------------------------------------

function selectButton(button) {
  for (const other of ui.samples.querySelectorAll("button")) {
    other.setAttribute("aria-pressed", String(other === button));
  }
}

function useImage(dataUrl, label) {
  demo.image = {dataUrl, label};
  ui.preview.src = dataUrl;
  ui.preview.hidden = false;
  ui.previewCaption.textContent = label;
  updateButtons();
}

async function pickSample(sample, button) {
  selectButton(button);
  ui.previewCaption.textContent = `Loading ${sample.caption}…`;
  const response = await fetch(sample.url);
  if (!response.ok) {
    showMessage(`Could not load the sample ${sample.name} (HTTP ${response.status}).`);
    return;
  }
  useImage(await readAsDataUrl(await response.blob()), sample.caption);
}

async function loadSamples() {
  const response = await fetch("/api/samples");
  if (!response.ok) {
    showMessage(`Could not list the sample photos (HTTP ${response.status}).`);
    return;
  }
  const samples = await response.json();
  ui.samples.replaceChildren();
  for (const sample of samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample";
    button.dataset.sample = sample.name;
    button.setAttribute("aria-pressed", "false");
    const img = document.createElement("img");
    img.src = sample.thumbnail_url;
    img.alt = "";
    img.loading = "lazy";
    const caption = document.createElement("span");
    caption.textContent = sample.caption;
    button.append(img, caption);
    button.addEventListener("click", () => pickSample(sample, button).catch(reportUnexpected));
    ui.samples.append(button);
  }
  const first = ui.samples.querySelector("button");
  if (first && !demo.image) await pickSample(samples[0], first);
}

async function pickFile() {
  const file = ui.file.files?.[0];
  if (!file) return;
  clearMessage();
  if (!file.type.startsWith("image/")) {
    showMessage(`${file.name} is not an image.`);
    return;
  }
  if (file.size > MAX_UPLOAD_BYTES) {
    const mb = (file.size / 1024 / 1024).toFixed(1);
    showMessage(`${file.name} is ${mb} MB; the limit is 7 MB.`);
    return;
  }
  selectButton(null);
  useImage(await readAsDataUrl(file), file.name);
}

// -- running -----------------------------------------------------------------------------

const STATUS_TEXT = {
  received: "Received",
  queued: "Queued",
  scheduled: "Scheduled",
  preparing: "Preparing",
  serving: "Serving",
  setting_up: "Setting up",
  running: "Running",
  uploading: "Uploading results",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
};

function parameters() {
  const detect = [];
  if (ui.detectFaces.checked) detect.push("faces");
  if (ui.detectCats.checked) detect.push("cats");
  return {
    detect: detect.join(",") || "none",
    canny_low: String(ui.cannyLow.value || "100"),
    canny_high: String(ui.cannyHigh.value || "200"),
  };
}

function resetRunView() {
  clearMessage();
  ui.log.replaceChildren();
  ui.progress.value = 0;
  ui.progressText.textContent = "Starting…";
  ui.eta.textContent = "";
  ui.summary.textContent = "Waiting for the results…";
  for (const img of [ui.outBoxes, ui.outEdges]) {
    img.hidden = true;
    img.removeAttribute("src");
  }
  setDetections(null);
}

function appendLogs(lines) {
  for (const line of lines) {
    const item = document.createElement("li");
    item.dataset.level = line.level;
    const time = new Date(line.ts * 1000).toLocaleTimeString([], {hour12: false});
    const stamp = document.createElement("time");
    stamp.textContent = time;
    const text = document.createElement("span");
    text.textContent = line.message;
    item.append(stamp, text);
    ui.log.append(item);
  }
  while (ui.log.children.length > MAX_LOG_LINES) ui.log.firstElementChild.remove();
  ui.log.scrollTop = ui.log.scrollHeight;
}

function onState(state) {
  if (demo.current && state.run_id) demo.current.runId = demo.lastRunId = state.run_id;
  if (state.status && STATUS_TEXT[state.status]) {
    const word = state.state ? ` (${state.state})` : "";
    setStatus(state.status, `${STATUS_TEXT[state.status]}${word}`);
  }
  if (state.progress) {
    const {current, total} = state.progress;
    if (total) ui.progress.max = total;
    ui.progress.value = current;
    ui.progress.textContent = `${current} of ${total ?? "?"}`;
    ui.progressText.textContent = total ? `Stage ${current} of ${total} done.` : `${current} done.`;
    demo.progressUpdates.push({current, total: total ?? null});
  }
  if (Array.isArray(state.eta)) {
    const max = state.eta[1];
    if (state.type === "result" || max === 0) ui.eta.textContent = "";
    else ui.eta.textContent = max == null ? "ETA unknown" : `ETA ${formatSeconds(max)} s`;
  }
  if (state.logs?.length) appendLogs(state.logs);
}

function setDetections(detections) {
  const rows = [];
  if (detections === null) {
    rows.push(emptyRow("Nothing yet."));
  } else if (detections.length === 0) {
    rows.push(emptyRow("No faces or cats found."));
  } else {
    detections.forEach((det, index) => {
      const row = document.createElement("tr");
      const box = det.box ?? {};
      const cells = [
        String(index + 1),
        det.label ?? "?",
        typeof det.confidence === "number" ? det.confidence.toFixed(2) : "?",
        `${box.x}, ${box.y}, ${box.width} × ${box.height}`,
      ];
      for (const value of cells) {
        const cell = document.createElement("td");
        cell.textContent = value;
        row.append(cell);
      }
      row.dataset.label = det.label ?? "";
      rows.push(row);
    });
  }
  ui.detections.replaceChildren(...rows);
}

function emptyRow(text) {
  const row = document.createElement("tr");
  row.className = "empty";
  const cell = document.createElement("td");
  cell.colSpan = 4;
  cell.textContent = text;
  row.append(cell);
  return row;
}

async function showImage(img, output) {
  img.src = output.dataUrl;
  img.hidden = false;
  await img.decode();
}

async function showResults(results) {
  const outputs = results.getOutputs();
  const images = outputs.filter(output => output instanceof ImageOutput);
  const found = outputs.find(output => output?.OBJECT_DETECTION)?.OBJECT_DETECTION;
  const data = outputs.find(output => output?.DATA_DICT)?.DATA_DICT;
  setDetections(found?.detections ?? []);
  const shown = [];
  if (images[0]) shown.push(showImage(ui.outBoxes, images[0]));
  if (images[1]) shown.push(showImage(ui.outEdges, images[1]));
  await Promise.all(shown);
  if (data) {
    const ms = Object.values(data.timings_ms ?? {}).reduce((sum, value) => sum + value, 0);
    ui.summary.textContent =
      `${data.faces ?? 0} face(s) and ${data.cats ?? 0} cat(s) in a ${data.width}×${data.height} px ` +
      `image; the stages took ${Math.round(ms)} ms of computing.`;
  } else {
    ui.summary.textContent = `${outputs.length} output(s).`;
  }
}

function explain(error) {
  if (error?.name === "AbortError") {
    setStatus("cancelled", "Cancelled");
    ui.eta.textContent = "";
    ui.progressText.textContent = "You cancelled the run; the server stopped it.";
    ui.summary.textContent = "The run was cancelled.";
    return;
  }
  if (error instanceof HTTPError) {
    const detail = detailOf(error.body);
    setStatus("refused", `Refused (HTTP ${error.status})`);
    if (error.status === 401) {
      demo.token = null;
      showMessage(`Your sign-in has expired or is not valid (${detail}). Log in again.`, {
        relogin: true,
      });
    } else if (error.status === 429) {
      const wait = retryAfterSeconds(error.response) ?? error.body?.detail?.retry_after ?? null;
      const limit = error.body?.detail?.limit;
      if (wait !== null) {
        const which = limit ? ` (${limit} per user)` : "";
        showMessage(`Rate limited${which}: retry after ${wait} s.`, {kind: "warning"});
      } else {
        showMessage(`Too many runs: ${detail || "wait for one to finish."}`, {kind: "warning"});
      }
    } else {
      showMessage(`The server refused the run (HTTP ${error.status}): ${detail}`);
    }
    ui.progressText.textContent = "The run did not start.";
    ui.summary.textContent = "No results.";
    return;
  }
  if (error instanceof RunCancelledError) {
    setStatus("cancelled", "Cancelled");
    showMessage(`The run was cancelled: ${error.message}`, {kind: "warning"});
    return;
  }
  if (error instanceof RunFailedError) {
    const code = error.state?.error?.code;
    setStatus("failed", "Failed");
    showMessage(`The run failed: ${error.message}${code ? ` (${code})` : ""}`);
    ui.summary.textContent = "No results.";
    return;
  }
  setStatus("failed", "Failed");
  showMessage(`Connection problem: ${error?.message ?? error}`);
}

async function run() {
  if (demo.current || !demo.image) return;
  if (!demo.token && !(await login())) return;
  resetRunView();
  demo.progressUpdates = [];
  demo.lastError = null;
  const controller = new AbortController();
  demo.current = {controller, runId: null};
  demo.lastRunId = null;
  demo.runs += 1;
  setState("running");
  setStatus("queued", "Sending…");
  updateButtons();
  try {
    const results = await streamRun(`${API}/stream`, {
      body: {inputs: [demo.image.dataUrl], parameters: parameters()},
      headers: {Authorization: `Bearer ${demo.token}`},
      signal: controller.signal,
      onProgress: onState,
    });
    await showResults(results);
    setStatus("completed", "Completed");
    ui.progressText.textContent = `All ${ui.progress.max} stages done.`;
    setState("completed");
  } catch (error) {
    demo.lastError = {name: error?.name, status: error?.status ?? null, message: error?.message};
    explain(error);
    setState(ui.status.dataset.status);
  } finally {
    demo.current = null;
    updateButtons();
  }
}

function cancel() {
  const current = demo.current;
  if (!current) return;
  // Closing the connection makes the server cancel the run once its reconnect grace is
  // over; the DELETE cancels it at once.
  if (current.runId) {
    fetch(`${API}/runs/${encodeURIComponent(current.runId)}`, {
      method: "DELETE",
      headers: {Authorization: `Bearer ${demo.token}`},
      keepalive: true,
    }).catch(() => {});
  }
  current.controller.abort(new DOMException("Cancelled by you.", "AbortError"));
}

function reportUnexpected(error) {
  showMessage(`Something went wrong: ${error?.message ?? error}`);
}

async function showConfig() {
  const response = await fetch("/api/config");
  if (!response.ok) return;
  const config = await response.json();
  const where =
    config.mode === "ikomia"
      ? `an Ikomia SCALE deployment (${config.deployment})`
      : `the in-process workflow (${config.deployment})`;
  const pace = config.stage_delay_ms ? `, paced ${config.stage_delay_ms} ms per stage` : "";
  ui.config.textContent =
    `Endpoint ${config.api}/stream runs ${where}${pace}. ` +
    `Limits: ${config.rate_limit} runs, ${config.max_concurrent_runs} at once per user.`;
}

ui.run.addEventListener("click", () => run().catch(reportUnexpected));
ui.cancel.addEventListener("click", cancel);
ui.file.addEventListener("change", () => pickFile().catch(reportUnexpected));
ui.relogin.addEventListener("click", async () => {
  if (await login()) clearMessage();
});

setState("loading");
await Promise.all([login(), loadSamples().catch(reportUnexpected), showConfig().catch(() => {})]);
setState("ready");
