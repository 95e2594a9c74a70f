/**
 * ikstream.js: read fastapi-ikstream run streams in the browser.
 *
 * A plain ES module without dependencies or build step. It reads the run's Server-Sent Events
 * (or JSON lines) over `fetch`, so POST bodies and `Authorization` headers work, reconnects
 * with `Last-Event-ID` when the connection drops, and returns the results with images as data
 * URLs. Aborting the `signal` closes the connection, which cancels the run on the server.
 *
 * @example
 * import {streamRun} from "/api/generate-image/ikstream.js";
 * const results = await streamRun("/api/generate-image/stream", {
 *   body: {inputs: [image]},
 *   signal: controller.signal,
 *   onProgress: state => { bar.value = state.progress?.current ?? 0; },
 * });
 * img.src = results.getOutput(0).dataUrl;
 *
 * @module ikstream
 */

const SSE_TYPE = "text/event-stream";
const JSONL_TYPES = ["application/jsonl", "application/x-ndjson", "application/json-seq"];
const EVENT_TYPES = [
  "run",
  "progress",
  "log",
  "partial",
  "result",
  "failed",
  "cancelled",
  "done",
  "reset",
];
const TERMINAL_TYPES = new Set(["result", "failed", "cancelled"]);
const FIRST_RETRY_DELAY = 1000;

/**
 * A run state, one event of the run, as sent on the wire.
 * @typedef {object} RunState
 * @property {string} type - "run", "progress", "log", "partial", "result", "failed",
 *   "cancelled", "done" or "reset".
 * @property {string} run_id - the run's id.
 * @property {number} seq - position of the event in its run: 1, 2, 3 …
 * @property {string} [status] - "queued", "running", "completed", "failed" …
 * @property {string} [state] - the deployment's own state word, e.g. "STARTED".
 * @property {number} [code] - the status's numeric code (inference.sh's 1 … 12).
 * @property {Array<number|null>} eta - [min, max] milliseconds to completion; on an event
 *   that has none (a `log`, `done`), the module puts the last ETA sent, or `[null, null]`.
 * @property {string} [upstream_id] - the deployment's own run id (SCALE's uuid), once known.
 * @property {{current: number, total?: number}} [progress] - work done so far.
 * @property {Array<{ts: number, level: string, message: string}>} [logs] - new log lines.
 * @property {*} [partial_output] - an intermediate output.
 * @property {Array<object>} [results] - the outputs, e.g. [{image: "<base64>"}].
 * @property {{code: string, message: string, retryable: boolean}} [error] - why it failed.
 */

/**
 * One Server-Sent Event as parsed, before it is read as a run state.
 * @typedef {object} SSEEvent
 * @property {string} event - the event name ("message" when none was given).
 * @property {string} data - the data lines, joined with "\n".
 * @property {string} id - the last event id seen.
 * @property {number|undefined} retry - the last reconnection delay (ms) the server sent.
 */

// -- errors -------------------------------------------------------------------------------

/** Root of the errors thrown by this module. */
export class IKStreamError extends Error {
  /**
   * @param {string} message
   * @param {{cause?: *}} [options]
   */
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The server answered with a non-2xx status before the stream began. */
export class HTTPError extends IKStreamError {
  /**
   * @param {number} status - the HTTP status, e.g. 401 or 429.
   * @param {*} body - the JSON body (e.g. `{detail: "..."}`), or its text if not JSON.
   * @param {Response} [response] - the response (its body already read).
   */
  constructor(status, body, response) {
    const detail = body && typeof body === "object" && "detail" in body ? body.detail : body;
    super(`HTTP ${status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    this.status = status;
    this.body = body;
    this.response = response;
  }
}

/** The run ended with a `failed` state; `.state.error` says why. */
export class RunFailedError extends IKStreamError {
  /** @param {RunState} state */
  constructor(state) {
    super(state.error?.message ?? "run failed");
    this.state = state;
  }
}

/** The run ended with a `cancelled` state. */
export class RunCancelledError extends IKStreamError {
  /** @param {RunState} state */
  constructor(state) {
    super(state.error?.message ?? "run cancelled");
    this.state = state;
  }
}

/** Nothing arrived (not even a keep-alive) for `timeout` milliseconds; `status` is 408. */
export class StreamTimeoutError extends IKStreamError {
  /** @param {number} timeout - the inactivity timeout that passed, in milliseconds. */
  constructor(timeout) {
    super(`the event stream sent nothing for ${Math.round(timeout / 1000)} s`);
    this.status = 408;
    this.timeout = timeout;
  }
}

/** The answer is not an event stream, or an event is not a valid run state. */
export class StreamProtocolError extends IKStreamError {}

/** The connection could not be made, or it dropped and reconnecting failed. */
export class StreamConnectionError extends IKStreamError {
  /**
   * @param {string} message
   * @param {string|null} lastEventId - the id of the last event received.
   * @param {{cause?: *}} [options]
   */
  constructor(message, lastEventId = null, options) {
    super(message, options);
    this.lastEventId = lastEventId;
  }
}

/** The server could not resume the run after a dropped connection. */
export class StreamResumeError extends StreamConnectionError {}

/** A read failed under us (the connection dropped): reconnect. Internal. */
class Dropped extends Error {}

// -- results ------------------------------------------------------------------------------

const MAGIC = [
  [[0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 0, "image/png"],
  [[0xff, 0xd8, 0xff], 0, "image/jpeg"],
  [[0x47, 0x49, 0x46, 0x38], 0, "image/gif"],
  [[0x57, 0x45, 0x42, 0x50], 8, "image/webp"],
];

function normalizeBase64(text) {
  const clean = text.replace(/\s+/g, "").replace(/-/g, "+").replace(/_/g, "/");
  return clean + "=".repeat((4 - (clean.length % 4)) % 4);
}

/** An `{image: "<base64>"}` output. */
export class ImageOutput {
  /** @param {{image: string}} raw - the output object (a `data:` URL is accepted too). */
  constructor(raw) {
    const value = String(raw.image);
    /** The output object as received. */
    this.raw = raw;
    /** The image file, base64-encoded. */
    this.base64 = value.startsWith("data:") ? value.slice(value.indexOf("base64,") + 7) : value;
  }

  /** The media type sniffed from the first bytes: PNG, JPEG, GIF or WebP. @type {string} */
  get mime() {
    let head;
    try {
      head = atob(normalizeBase64(this.base64.slice(0, 24)));
    } catch {
      return "application/octet-stream";
    }
    for (const [magic, offset, mime] of MAGIC) {
      if (magic.every((byte, i) => head.charCodeAt(offset + i) === byte)) return mime;
    }
    return "application/octet-stream";
  }

  /** `data:{mime};base64,{data}`, ready for an `<img src>`. @type {string} */
  get dataUrl() {
    return `data:${this.mime};base64,${this.base64}`;
  }

  /** @returns {Uint8Array} the image file's bytes. */
  toBytes() {
    const binary = atob(normalizeBase64(this.base64));
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  /** @returns {Blob} the image file, typed with `mime` (for `URL.createObjectURL`). */
  toBlob() {
    return new Blob([this.toBytes()], {type: this.mime});
  }
}

/** A `{storage_object: {url, data_type, metadata}}` output. */
export class StorageObjectOutput {
  /** @param {{storage_object: {url: string, data_type?: string, metadata?: *}}} raw */
  constructor(raw) {
    this.raw = raw;
    this.url = raw.storage_object.url;
    this.dataType = raw.storage_object.data_type;
    this.metadata = raw.storage_object.metadata;
  }
}

/** The outputs of a completed run, like the JavaScript `ikclient` results. */
export class Results {
  /** @param {RunState} state - the run's `result` state. */
  constructor(state) {
    /** The `result` state. */
    this.state = state;
    /** The raw outputs, e.g. `[{image: "..."}, {DATA_DICT: {...}}]`. */
    this.outputs = state.results ?? [];
  }

  /** The run's id. @type {string} */
  get runId() {
    return this.state.run_id;
  }

  /** How many outputs. @type {number} */
  get length() {
    return this.outputs.length;
  }

  /**
   * @param {number} [index=0]
   * @returns {ImageOutput|StorageObjectOutput|object} an image, a storage object, or the raw
   *   output object (e.g. `{DATA_DICT: {...}}`).
   */
  getOutput(index = 0) {
    const raw = this.outputs[index];
    if (raw === undefined) throw new RangeError(`no output ${index} (${this.length} in all)`);
    const keys = Object.keys(raw);
    if (keys.length === 1 && keys[0] === "image") return new ImageOutput(raw);
    if (keys.length === 1 && keys[0] === "storage_object") return new StorageObjectOutput(raw);
    return raw;
  }

  /** @returns {Array<ImageOutput|StorageObjectOutput|object>} every output, decoded. */
  getOutputs() {
    return this.outputs.map((_, i) => this.getOutput(i));
  }

  [Symbol.iterator]() {
    return this.getOutputs()[Symbol.iterator]();
  }
}

// -- Server-Sent Events -------------------------------------------------------------------

/**
 * An incremental Server-Sent Events parser (HTML Living Standard, "Interpreting an event
 * stream"): lines end with CR, LF or CRLF (also split across chunks), comments are skipped,
 * `data` lines are joined with "\n", `id` (without NUL) and `retry` (digits only) are kept,
 * and a block without `data` dispatches nothing.
 */
export class SSEParser {
  /** @param {(event: SSEEvent) => void} onEvent - called with each dispatched event. */
  constructor(onEvent) {
    this.onEvent = onEvent;
    /** The last event id seen. */
    this.lastEventId = "";
    /** The last reconnection delay the server sent, in milliseconds. */
    this.retry = undefined;
    this._buffer = "";
    this._afterCR = false;
    this._started = false;
    this._data = [];
    this._event = "";
    this._id = "";
  }

  /** @param {string} text - the next decoded chunk. */
  feed(text) {
    if (!this._started && text.length > 0) {
      this._started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this._afterCR && text[0] === "\n") text = text.slice(1);
    this._afterCR = false;
    const buffer = this._buffer + text;
    let start = 0;
    const ends = /\r\n|\r|\n/g;
    let match;
    while ((match = ends.exec(buffer)) !== null) {
      if (match[0] === "\r" && match.index === buffer.length - 1) this._afterCR = true;
      this._line(buffer.slice(start, match.index));
      start = ends.lastIndex;
    }
    this._buffer = buffer.slice(start);
  }

  /** Drop an unfinished event at the end of the stream, as the standard says. */
  end() {
    this._buffer = "";
    this._data = [];
    this._event = "";
  }

  _line(line) {
    if (line === "") return this._dispatch();
    if (line[0] === ":") return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") this._data.push(value);
    else if (field === "event") this._event = value;
    else if (field === "id" && !value.includes("\0")) this._id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }

  _dispatch() {
    this.lastEventId = this._id;
    const data = this._data;
    const event = this._event;
    this._data = [];
    this._event = "";
    if (data.length === 0) return;
    this.onEvent({
      event: event || "message",
      data: data.join("\n"),
      id: this.lastEventId,
      retry: this.retry,
    });
  }
}

// -- reading run states -------------------------------------------------------------------

class Tracker {
  constructor() {
    this.runId = null;
    this.eta = [null, null];
    this.lastSeq = 0;
    this.lastEventId = null;
    this.retry = undefined;
    this.terminal = null;
    this.done = false;
  }

  /** @returns {RunState|null} the state, or null for keep-alives, empty events, repeats. */
  accept(item, eventId) {
    if (typeof item === "string") {
      if (item.trim() === "") return null;
      try {
        item = JSON.parse(item);
      } catch (error) {
        throw new StreamProtocolError(`an event's data is not JSON: ${item.slice(0, 80)}`, {
          cause: error,
        });
      }
    }
    if (item?.type === "keepalive") return null;
    if (
      typeof item?.run_id !== "string" ||
      !Number.isInteger(item.seq) ||
      typeof item.type !== "string"
    ) {
      throw new StreamProtocolError(
        `an event is not a run state: ${JSON.stringify(item).slice(0, 80)}`,
      );
    }
    if (this.runId === null) this.runId = item.run_id;
    else if (item.run_id !== this.runId) {
      throw new StreamResumeError(
        `the server sent run ${item.run_id} instead of resuming run ${this.runId}`,
        this.lastEventId,
      );
    }
    if (item.seq <= this.lastSeq) return null;
    // Always there, as in ikclient: an event without one keeps the last ETA sent.
    if (Array.isArray(item.eta)) this.eta = item.eta;
    else item.eta = this.eta;
    this.lastSeq = item.seq;
    this.lastEventId = eventId || `${item.run_id}:${item.seq}`;
    if (TERMINAL_TYPES.has(item.type)) this.terminal = item;
    else if (item.type === "done") this.done = true;
    return item;
  }

  get over() {
    return this.done || this.terminal !== null;
  }

  retryDelay(cap) {
    return Math.max(0, Math.min(this.retry ?? FIRST_RETRY_DELAY, cap));
  }

  finish() {
    const state = this.terminal;
    if (state?.type === "failed") throw new RunFailedError(state);
    if (state?.type === "cancelled") throw new RunCancelledError(state);
    if (state === null) {
      throw new StreamConnectionError("the stream ended before the run did", this.lastEventId);
    }
    return new Results(state);
  }
}

function mediaType(response) {
  return (response.headers.get("content-type") ?? "").split(";")[0].trim().toLowerCase();
}

function streamKind(response, fallback) {
  const media = mediaType(response);
  if (media === SSE_TYPE) return "sse";
  if (JSONL_TYPES.includes(media)) return "jsonl";
  if (fallback && response.status !== 204) return fallback;
  const got = `HTTP ${response.status} ${media || "without a content type"}`;
  throw new StreamProtocolError(
    `expected an event stream (${SSE_TYPE} or application/jsonl), got ${got}`,
  );
}

async function httpError(response) {
  const text = await response.text().catch(() => "");
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return new HTTPError(response.status, body, response);
}

function abortError(signal) {
  return signal.reason ?? new DOMException("The operation was aborted.", "AbortError");
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(signal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, {once: true});
  });
}

/** Reads decoded text chunks; a read failure is a `Dropped`, a silence a timeout. */
async function readText(stream, timeout, onText) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  try {
    for (;;) {
      let timer;
      const silence = new Promise((_, reject) => {
        if (timeout > 0) timer = setTimeout(() => reject(new StreamTimeoutError(timeout)), timeout);
      });
      const read = reader.read().catch(error => {
        throw new Dropped(error?.message ?? String(error), {cause: error});
      });
      let chunk;
      try {
        chunk = await Promise.race([read, silence]);
      } catch (error) {
        read.catch(() => {}); // the read left behind settles when the reader is cancelled
        throw error;
      } finally {
        clearTimeout(timer);
      }
      if (chunk.done) {
        onText(decoder.decode());
        return;
      }
      if (onText(decoder.decode(chunk.value, {stream: true})) === false) return;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** Reads a response's states into the tracker; returns when the stream ends or at `done`. */
async function readStates(response, tracker, {timeout, onProgress, onEvent, onState, fallback}) {
  const accept = (data, id) => {
    const state = tracker.accept(data, id);
    if (state !== null) {
      onState?.(state);
      onProgress?.(state);
    }
  };
  if (streamKind(response, fallback) === "sse") {
    const parser = new SSEParser(event => {
      onEvent?.(event);
      if (event.retry !== undefined) tracker.retry = event.retry;
      accept(event.data, event.id);
    });
    await readText(response.body, timeout, text => {
      parser.feed(text);
      return !tracker.done;
    });
    return;
  }
  let rest = "";
  await readText(response.body, timeout, text => {
    const lines = (rest + text).split("\n");
    rest = lines.pop();
    for (const line of lines) {
      accept(line.replace(/\r$/, ""));
      if (tracker.done) return false;
    }
    return true;
  });
  if (!tracker.done && rest.trim()) accept(rest);
}

function requestInit(options, lastEventId, signal) {
  const {body, method = "POST", headers, jsonl = false, credentials} = options;
  const h = new Headers(headers);
  if (!h.has("Accept")) h.set("Accept", jsonl ? JSONL_TYPES[0] : SSE_TYPE);
  if (lastEventId) h.set("Last-Event-ID", lastEventId);
  const init = {method, headers: h, signal, cache: "no-store"};
  if (credentials) init.credentials = credentials;
  const upper = method.toUpperCase();
  if (body !== undefined && upper !== "GET" && upper !== "HEAD") {
    const raw =
      typeof body === "string" ||
      body instanceof Blob ||
      body instanceof FormData ||
      body instanceof URLSearchParams ||
      body instanceof ArrayBuffer ||
      ArrayBuffer.isView(body);
    init.body = raw ? body : JSON.stringify(body);
    if (!raw && !h.has("Content-Type")) h.set("Content-Type", "application/json");
  }
  return init;
}

function link(signal, controller) {
  if (!signal) return () => {};
  const onAbort = () => controller.abort(signal.reason);
  signal.addEventListener("abort", onAbort, {once: true});
  return () => signal.removeEventListener("abort", onAbort);
}

/**
 * Start a run and follow its stream to the end, reconnecting with `Last-Event-ID` when the
 * connection drops (a network error, or the stream ending before `done`).
 *
 * @param {string|URL} url - the stream endpoint, e.g. "/api/generate-image/stream".
 * @param {object} [options]
 * @param {*} [options.body] - the request body; objects are sent as JSON.
 * @param {string} [options.method="POST"]
 * @param {HeadersInit} [options.headers] - e.g. `{Authorization: "Bearer …"}`.
 * @param {AbortSignal} [options.signal] - aborting it closes the connection (the server
 *   cancels the run) and rejects with the signal's reason, an `AbortError` by default.
 * @param {(state: RunState) => void} [options.onProgress] - called with every state, in
 *   order, `run` first and `done` last (`state.eta[1]` is the longest ETA in ms).
 * @param {(event: SSEEvent) => void} [options.onEvent] - called with every parsed SSE event.
 * @param {number} [options.timeout=15000] - milliseconds without a byte (keep-alives count)
 *   before rejecting with `StreamTimeoutError`; 0 waits forever.
 * @param {number} [options.maxReconnects=3] - reconnects in a row without a new event.
 * @param {number} [options.maxRetryDelay=5000] - cap, in ms, on the server's `retry:` delay.
 * @param {boolean} [options.jsonl=false] - ask for JSON lines instead of SSE.
 * @param {RequestCredentials} [options.credentials] - passed to `fetch`.
 * @returns {Promise<Results>} the results of the `result` state.
 * @throws {HTTPError} a non-2xx answer before the stream (`.status`, `.body`).
 * @throws {RunFailedError} the run failed (`.state`); `RunCancelledError` if cancelled.
 * @throws {StreamTimeoutError} the stream went silent.
 * @throws {StreamConnectionError} the connection dropped and could not be resumed.
 */
export async function streamRun(url, options = {}) {
  const {
    signal,
    onProgress,
    onEvent,
    timeout = 15000,
    maxReconnects = 3,
    maxRetryDelay = 5000,
  } = options;
  signal?.throwIfAborted();
  const tracker = new Tracker();
  let attempts = 0;
  let reason = null;
  for (;;) {
    if (reason !== null) {
      attempts += 1;
      if (attempts > maxReconnects) {
        throw new StreamConnectionError(
          `the connection dropped (${reason}); gave up after ${maxReconnects} reconnects`,
          tracker.lastEventId,
        );
      }
      await sleep(tracker.retryDelay(maxRetryDelay), signal);
    }
    const controller = new AbortController();
    const unlink = link(signal, controller);
    try {
      let response;
      try {
        response = await fetch(url, requestInit(options, tracker.lastEventId, controller.signal));
      } catch (error) {
        if (signal?.aborted) throw abortError(signal);
        if (reason === null) {
          throw new StreamConnectionError(`could not reach ${url}: ${error.message}`, null, {
            cause: error,
          });
        }
        reason = error.message;
        continue;
      }
      if (reason === null && response.status === 204) {
        throw new StreamProtocolError("the server answered 204 No Content: nothing to stream");
      }
      if (reason !== null && response.status === 204 && tracker.terminal !== null) break;
      if (!response.ok) {
        const error = await httpError(response);
        if (reason === null) throw error;
        if (response.status >= 500) {
          reason = error.message;
          continue;
        }
        const after = `${tracker.runId} after ${tracker.lastEventId}`;
        throw new StreamResumeError(
          `the server could not resume run ${after}: HTTP ${response.status}`,
          tracker.lastEventId,
          {cause: error},
        );
      }
      if (response.status === 204) {
        throw new StreamResumeError(
          `the server has no more events for run ${tracker.runId}`,
          tracker.lastEventId,
        );
      }
      try {
        await readStates(response, tracker, {
          timeout,
          onProgress,
          onEvent,
          onState: () => (attempts = 0),
        });
      } catch (error) {
        if (signal?.aborted) throw abortError(signal);
        if (!(error instanceof Dropped)) throw error;
        reason = error.message;
        if (tracker.over) break;
        continue;
      }
      if (tracker.over) break;
      reason = "the stream ended before the run did";
    } finally {
      unlink();
      controller.abort();
    }
  }
  return tracker.finish();
}

/**
 * Read an open `fetch` response (SSE or JSON lines) to the end, like the JavaScript
 * `ikclient`'s `processStreamingResponse`. There is no reconnect: use `streamRun` for that.
 *
 * @param {Response} response - the answer of a stream endpoint.
 * @param {(state: RunState) => void} [onProgress] - called with every state, in order.
 * @param {object} [options]
 * @param {number} [options.timeout=15000] - milliseconds without a byte before rejecting.
 * @param {(event: SSEEvent) => void} [options.onEvent] - called with every parsed SSE event.
 * @returns {Promise<Results>} the results of the `result` state.
 * @throws {HTTPError} the response is not 2xx (`.status`, `.body`).
 * @throws {RunFailedError} the run failed; `RunCancelledError` if cancelled.
 * @throws {StreamConnectionError} the stream ended before the run did.
 */
export async function processStreamingResponse(response, onProgress, options = {}) {
  return readResponse(response, onProgress, options, null);
}

async function readResponse(response, onProgress, {timeout = 15000, onEvent} = {}, fallback) {
  if (!response.ok) throw await httpError(response);
  const tracker = new Tracker();
  try {
    await readStates(response, tracker, {timeout, onProgress, onEvent, fallback});
  } catch (error) {
    if (!(error instanceof Dropped)) throw error;
    if (!tracker.over) {
      throw new StreamConnectionError(
        `the connection dropped: ${error.message}`,
        tracker.lastEventId,
        {
          cause: error.cause,
        },
      );
    }
  }
  return tracker.finish();
}

/**
 * Read a JSON-lines run stream, or any (async) iterable of states, to the end, like the
 * JavaScript `ikclient`'s `processJsonStream` (e.g. a tRPC stream of states).
 *
 * @param {Response|ReadableStream<*>|AsyncIterable<*>|Iterable<*>} source - a response of
 *   JSON lines; a `ReadableStream` of JSON-lines bytes, or of states (objects or JSON text,
 *   one per chunk); or an iterable of states.
 * @param {(state: RunState) => void} [onProgress] - called with every state, in order.
 * @param {object} [options]
 * @param {number} [options.timeout=15000] - milliseconds without a byte (or, from a
 *   `ReadableStream` of states, without a chunk) before rejecting; not for other iterables.
 * @returns {Promise<Results>} the results of the `result` state.
 * @throws {HTTPError} a response that is not 2xx.
 * @throws {RunFailedError} the run failed; `RunCancelledError` if cancelled.
 */
export async function processJsonStream(source, onProgress, options = {}) {
  if (typeof Response !== "undefined" && source instanceof Response) {
    return readResponse(source, onProgress, options, "jsonl");
  }
  if (typeof ReadableStream !== "undefined" && source instanceof ReadableStream) {
    source = readableItems(source, options.timeout ?? 15000);
  }
  const tracker = new Tracker();
  for await (const item of source) {
    const state = tracker.accept(item);
    if (state !== null) onProgress?.(state);
    if (tracker.done) break;
  }
  return tracker.finish();
}

/**
 * Follow a run's GET event stream (e.g. the resumable `{path}/runs/{run_id}/events`) with
 * the browser's own `EventSource`, which reconnects with `Last-Event-ID` by itself; the
 * source is closed at `done`, on abort, or after `maxReconnects` failed reconnects.
 *
 * @param {string|URL} eventsUrl - a GET endpoint answering `text/event-stream`.
 * @param {object} [options]
 * @param {(state: RunState) => void} [options.onProgress] - called with every state.
 * @param {(event: SSEEvent) => void} [options.onEvent] - called with every event.
 * @param {AbortSignal} [options.signal] - aborting closes the source and rejects.
 * @param {boolean} [options.withCredentials=false] - send cookies cross-origin.
 * @param {number} [options.maxReconnects=3] - connection errors in a row before rejecting.
 * @returns {Promise<Results>} the results of the `result` state.
 * @throws {RunFailedError} the run failed; `RunCancelledError` if cancelled.
 * @throws {StreamConnectionError} the source could not be opened or kept open.
 */
export function watchRun(eventsUrl, options = {}) {
  const {onProgress, onEvent, signal, withCredentials = false, maxReconnects = 3} = options;
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const tracker = new Tracker();
    const source = new EventSource(eventsUrl, {withCredentials});
    let errors = 0;
    const settle = (fn, value) => {
      source.close();
      signal?.removeEventListener("abort", onAbort);
      fn(value);
    };
    const onAbort = () => settle(reject, abortError(signal));
    const onMessage = message => {
      errors = 0;
      onEvent?.({
        event: message.type,
        data: message.data,
        id: message.lastEventId,
        retry: undefined,
      });
      try {
        const state = tracker.accept(message.data, message.lastEventId);
        if (state !== null) onProgress?.(state);
        if (tracker.done) settle(resolve, tracker.finish());
      } catch (error) {
        settle(reject, error);
      }
    };
    for (const type of [...EVENT_TYPES, "message"]) source.addEventListener(type, onMessage);
    source.addEventListener("error", () => {
      errors += 1;
      if (source.readyState === EventSource.CLOSED || errors > maxReconnects) {
        settle(
          reject,
          new StreamConnectionError(
            source.readyState === EventSource.CLOSED
              ? `could not open the event stream at ${eventsUrl}`
              : `the event stream dropped ${errors} times in a row`,
            tracker.lastEventId,
          ),
        );
      }
    });
    signal?.addEventListener("abort", onAbort, {once: true});
  });
}

// -- readable streams, async iteration, listeners ----------------------------------------

function withTimeout(promise, timeout) {
  if (!(timeout > 0)) return promise;
  let timer;
  const silence = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new StreamTimeoutError(timeout)), timeout);
  });
  return Promise.race([promise, silence]).finally(() => clearTimeout(timer));
}

/** The items of a `ReadableStream`: byte chunks are split into lines, other chunks kept. */
async function* readableItems(stream, timeout) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let rest = "";
  try {
    for (;;) {
      const {value, done} = await withTimeout(reader.read(), timeout);
      if (done) break;
      if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) {
        const lines = (rest + decoder.decode(value, {stream: true})).split("\n");
        rest = lines.pop();
        yield* lines;
      } else {
        yield value;
      }
    }
    rest += decoder.decode();
    if (rest.trim()) yield rest;
  } finally {
    reader.cancel().catch(() => {});
  }
}

/**
 * Read a `ReadableStream` of Server-Sent Events bytes (or JSON lines) to the end, like the
 * JavaScript `ikclient`'s `processReadableStream`: for a stream from your own transport
 * (tRPC, a worker, a custom fetch) without a `Response` around it.
 *
 * @param {ReadableStream<Uint8Array>} stream - the bytes of a run's event stream.
 * @param {(state: RunState) => void} [onProgress] - called with every state, in order.
 * @param {object} [options]
 * @param {boolean} [options.jsonl=false] - the bytes are JSON lines, not SSE.
 * @param {number} [options.timeout=15000] - milliseconds without a byte before rejecting.
 * @param {(event: SSEEvent) => void} [options.onEvent] - called with every parsed SSE event.
 * @returns {Promise<Results>} the results of the `result` state.
 * @throws {RunFailedError} the run failed; `RunCancelledError` if cancelled.
 * @throws {StreamConnectionError} the stream ended before the run did.
 */
export async function processReadableStream(stream, onProgress, options = {}) {
  const {jsonl = false, ...rest} = options;
  const response = new Response(stream, {
    headers: {"content-type": jsonl ? JSONL_TYPES[0] : SSE_TYPE},
  });
  return readResponse(response, onProgress, rest, null);
}

const LISTENED = new Set(["message", "data", "state", "error", "done"]);

/**
 * A run's stream, read as it arrives: an async iterable of states, fal-style listeners
 * (`on("message" | "error" | "done", listener)`) and a `done()` promise. It starts at once
 * (like fal's `FalStream`) and reconnects as `streamRun` does. Made by `streamStates`.
 *
 * @example
 * const stream = streamStates("/api/generate-image/stream", {body: {inputs: [image]}});
 * for await (const state of stream) console.log(state.status, state.progress);
 * const results = await stream.done();
 */
export class RunStream {
  /**
   * @param {string|URL} url - the stream endpoint.
   * @param {object} [options] - as for `streamRun` (but `onProgress`), and:
   * @param {*} [options.input] - the request body, under fal's name (`body` wins).
   */
  constructor(url, options = {}) {
    const {signal, input, body = input, onProgress, ...rest} = options;
    /** Every state received so far, in order. @type {RunState[]} */
    this.states = [];
    this._listeners = new Map();
    this._waiters = [];
    this._ended = false;
    this._error = null;
    this._results = null;
    this._controller = new AbortController();
    if (signal) {
      if (signal.aborted) this._controller.abort(signal.reason);
      else signal.addEventListener("abort", () => this.abort(signal.reason), {once: true});
    }
    this._done = streamRun(url, {
      ...rest,
      body,
      signal: this._controller.signal,
      onProgress: state => {
        this.states.push(state);
        this._wake();
        onProgress?.(state);
        this._emit("message", state);
      },
    });
    this._done.then(
      results => this._settle(null, results),
      error => this._settle(error, null),
    );
  }

  _settle(error, results) {
    this._ended = true;
    this._error = error;
    this._results = results;
    this._wake();
    if (error) this._emit("error", error);
    else this._emit("done", results);
  }

  _wake() {
    const waiters = this._waiters;
    this._waiters = [];
    for (const wake of waiters) wake();
  }

  _emit(type, value) {
    const names = type === "message" ? ["message", "data", "state"] : [type];
    for (const name of names) {
      for (const listener of this._listeners.get(name) ?? []) listener(value);
    }
  }

  /**
   * Add a listener: `"message"` (also `"data"` or `"state"`) gets every state; `"error"`
   * the error the stream ended with; `"done"` the `Results`. A `"done"` or `"error"`
   * listener added after the end is called at once.
   *
   * @param {"message"|"data"|"state"|"error"|"done"} type
   * @param {(value: *) => void} listener
   * @returns {this}
   */
  on(type, listener) {
    if (!LISTENED.has(type)) throw new TypeError(`no such stream event: ${type}`);
    if (!this._listeners.has(type)) this._listeners.set(type, []);
    this._listeners.get(type).push(listener);
    if (this._ended && type === "done" && !this._error) listener(this._results);
    if (this._ended && type === "error" && this._error) listener(this._error);
    return this;
  }

  /**
   * Remove a listener added with `on`.
   * @param {"message"|"data"|"state"|"error"|"done"} type
   * @param {(value: *) => void} listener
   * @returns {this}
   */
  off(type, listener) {
    const listeners = this._listeners.get(type) ?? [];
    const index = listeners.indexOf(listener);
    if (index !== -1) listeners.splice(index, 1);
    return this;
  }

  /**
   * The end of the run: resolves with its `Results`, rejects as `streamRun` does
   * (`RunFailedError`, `HTTPError`, `StreamTimeoutError`, the abort reason …).
   * @returns {Promise<Results>}
   */
  done() {
    return this._done;
  }

  /**
   * Close the connection (the server cancels the run); `done()` rejects with `reason`.
   * @param {*} [reason] - default an `AbortError`.
   */
  abort(reason) {
    this._controller.abort(reason);
  }

  /**
   * Iterate over the states, `run` first and `done` last; each loop sees them all. A
   * failed or cancelled run throws `RunFailedError` (or `RunCancelledError`) after `done`;
   * other errors are thrown as they happen. Leaving the loop before the run's end closes
   * the connection (the server cancels the run).
   * @returns {AsyncGenerator<RunState, void, undefined>}
   */
  async *[Symbol.asyncIterator]() {
    let index = 0;
    let finished = false;
    try {
      for (;;) {
        if (index < this.states.length) {
          const state = this.states[index++];
          if (TERMINAL_TYPES.has(state.type)) finished = true;
          yield state;
          continue;
        }
        if (this._ended) break;
        await new Promise(resolve => this._waiters.push(resolve));
      }
      finished = true;
      if (this._error) throw this._error;
    } finally {
      if (!finished && !this._ended) this.abort();
    }
  }
}

/**
 * Start a run and read its states with `for await`, listeners, or `done()`.
 *
 * @example
 * for await (const state of streamStates(url, {body, signal})) {
 *   if (state.progress) bar.value = state.progress.current / state.progress.total;
 * }
 *
 * @param {string|URL} url - the stream endpoint, e.g. "/api/generate-image/stream".
 * @param {object} [options] - as for `streamRun`; `input` is taken as the body too.
 * @returns {RunStream} the stream, already started.
 */
export function streamStates(url, options = {}) {
  return new RunStream(url, options);
}

// -- inputs -------------------------------------------------------------------------------

/**
 * Turn a browser `File` or `Blob` (an `<input type="file">` pick, a canvas blob) into a run
 * input: a `data:` URL with base64, which the router's default request model accepts.
 *
 * @example
 * const body = {inputs: [await fileToInput(input.files[0])]};
 *
 * @param {Blob} file - the file; its `type` becomes the URL's media type.
 * @returns {Promise<string>} `data:{type};base64,{data}`.
 */
export async function fileToInput(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return `data:${file.type || "application/octet-stream"};base64,${btoa(binary)}`;
}

// -- inference.sh's client shape ---------------------------------------------------------

function inferenceUpdate(state, status) {
  const update = {...state, status};
  if (state.logs) update.logs = state.logs.map(line => line.message);
  if (state.results) update.output = state.results;
  if (state.error) update.error = state.error.message;
  return update;
}

async function* inferenceUpdates(stream) {
  let status;
  for await (const state of stream) {
    if (state.type === "done" || state.type === "reset") continue;
    status = state.status ?? status;
    yield inferenceUpdate(state, status);
    if (TERMINAL_TYPES.has(state.type)) return;
  }
}

/**
 * A client in the shape of the inference.sh SDK's (`client.run(config, {stream: true})`),
 * for code written against it. Each update is a run state with `status` always set, `logs`
 * as strings, `output` (the results) and `error` (its message); the iteration ends with the
 * `result`, `failed` or `cancelled` update, without throwing.
 *
 * @example
 * const client = inference({apiKey: "inf_..."});
 * const stream = await client.run({app: "acme/flux", input: {prompt}}, {stream: true});
 * for await (const update of stream) console.log(update.status);
 *
 * @param {object} [options]
 * @param {string} [options.apiKey] - sent as `Authorization: Bearer {apiKey}`.
 * @param {string} [options.proxyUrl] - POST every run here, the whole config as the body.
 * @param {string} [options.baseUrl=""] - else POST `config.input` to
 *   `{baseUrl}/{config.app}/stream` (a router mounted at the app's path).
 * @param {HeadersInit} [options.headers] - extra request headers.
 * @returns {{run: (config: {app?: string, input?: *}, options?: {stream?: boolean,
 *   signal?: AbortSignal}) => Promise<*>}}
 */
export function inference(options = {}) {
  const {apiKey, proxyUrl, baseUrl = "", headers} = options;
  return {
    async run(config, {stream = false, signal} = {}) {
      const h = new Headers(headers);
      if (apiKey) h.set("Authorization", `Bearer ${apiKey}`);
      const url = proxyUrl ?? `${baseUrl}/${config.app}/stream`;
      const body = proxyUrl ? config : (config.input ?? {});
      const updates = inferenceUpdates(new RunStream(url, {body, headers: h, signal}));
      if (stream) return updates;
      let last;
      for await (const update of updates) last = update;
      return last;
    },
  };
}
