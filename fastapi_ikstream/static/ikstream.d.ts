/**
 * Type declarations for ikstream.js, the browser module of fastapi-ikstream.
 *
 * Served beside the module by the router (`{path}/ikstream.d.ts`); checked with
 * `tsc --strict`, and compared with the module's real exports, by the test suite.
 *
 * @module ikstream
 */

/** `[min, max]` milliseconds to completion; either is null when unknown. */
export type ETA = [number | null, number | null];

/** An event kind: the SSE `event:` name (when events are named) and the JSON `type`. */
export type EventType =
  | "run"
  | "progress"
  | "log"
  | "partial"
  | "result"
  | "failed"
  | "cancelled"
  | "done"
  | "reset";

/** The canonical lifecycle of a run (inference.sh's task statuses). */
export type RunStatus =
  | "received"
  | "queued"
  | "scheduled"
  | "preparing"
  | "serving"
  | "setting_up"
  | "running"
  | "uploading"
  | "completed"
  | "failed"
  | "cancelled";

/** One log line of a run. */
export interface LogLine {
  /** Unix time in seconds. */
  ts: number;
  level: string;
  message: string;
}

/** Why a run failed or was cancelled. */
export interface RunError {
  code: string;
  message: string;
  retryable?: boolean;
}

/** One raw output, a single-key object such as `{image: "<base64>"}`. */
export type RawOutput = Record<string, unknown>;

/** One event of a run, as sent on the wire. */
export interface RunState {
  type: EventType;
  run_id: string;
  /** Position of the event in its run: 1, 2, 3 … */
  seq: number;
  status?: RunStatus;
  /** The status's numeric code: 1 … 8, 10 (completed), 11 (failed), 12 (cancelled). */
  code?: number;
  /** The deployment's own state word, e.g. "STARTED". */
  state?: string;
  /** Always there on the states this module hands out: an event without one (`log`,
   * `done`) gets the last ETA sent, or `[null, null]`. */
  eta: ETA;
  progress?: {current: number; total?: number | null};
  logs?: LogLine[];
  partial_output?: unknown;
  results?: RawOutput[];
  inputs?: unknown;
  error?: RunError;
  first_seq?: number;
  /** The deployment's own id of the run (Ikomia SCALE's uuid), once known. */
  upstream_id?: string;
}

/** One Server-Sent Event as parsed. */
export interface SSEEvent {
  /** The event name ("message" when none was given). */
  event: string;
  data: string;
  id: string;
  retry: number | undefined;
}

export type OnProgress = (state: RunState) => void;

/** Root of the errors thrown by this module. */
export class IKStreamError extends Error {
  constructor(message: string, options?: {cause?: unknown});
}

/** The server answered with a non-2xx status before the stream began. */
export class HTTPError extends IKStreamError {
  constructor(status: number, body: unknown, response?: Response);
  status: number;
  body: unknown;
  response: Response | undefined;
}

/** The run ended with a `failed` state. */
export class RunFailedError extends IKStreamError {
  constructor(state: RunState);
  state: RunState;
}

/** The run ended with a `cancelled` state. */
export class RunCancelledError extends IKStreamError {
  constructor(state: RunState);
  state: RunState;
}

/** Nothing arrived for `timeout` milliseconds. */
export class StreamTimeoutError extends IKStreamError {
  constructor(timeout: number);
  /** Always 408. */
  status: number;
  timeout: number;
}

/** The answer is not an event stream, or an event is not a run state. */
export class StreamProtocolError extends IKStreamError {}

/** The connection could not be made, or it dropped and reconnecting failed. */
export class StreamConnectionError extends IKStreamError {
  constructor(message: string, lastEventId?: string | null, options?: {cause?: unknown});
  lastEventId: string | null;
}

/** The server could not resume the run after a dropped connection. */
export class StreamResumeError extends StreamConnectionError {}

/** An `{image: "<base64>"}` output. */
export class ImageOutput {
  constructor(raw: {image: string});
  raw: {image: string};
  base64: string;
  /** "image/png", "image/jpeg", "image/gif", "image/webp" or "application/octet-stream". */
  readonly mime: string;
  /** `data:{mime};base64,{data}`. */
  readonly dataUrl: string;
  toBytes(): Uint8Array;
  toBlob(): Blob;
}

/** A `{storage_object: {url, data_type, metadata}}` output. */
export class StorageObjectOutput {
  constructor(raw: {storage_object: {url: string; data_type?: string; metadata?: unknown}});
  raw: {storage_object: {url: string; data_type?: string; metadata?: unknown}};
  url: string;
  dataType: string | undefined;
  metadata: unknown;
}

/** One decoded output. */
export type Output = ImageOutput | StorageObjectOutput | RawOutput;

/** The outputs of a completed run. */
export class Results implements Iterable<Output> {
  constructor(state: RunState);
  state: RunState;
  outputs: RawOutput[];
  readonly runId: string;
  readonly length: number;
  /** Output `index`, typed as you say (`getOutput<ImageOutput>(0)`); throws RangeError. */
  getOutput<T = Output>(index?: number): T;
  getOutputs(): Output[];
  [Symbol.iterator](): Iterator<Output>;
}

/** An incremental Server-Sent Events parser. */
export class SSEParser {
  constructor(onEvent: (event: SSEEvent) => void);
  onEvent: (event: SSEEvent) => void;
  lastEventId: string;
  retry: number | undefined;
  feed(text: string): void;
  end(): void;
}

/** A request body: objects are sent as JSON, the rest as they are. */
export type Body = BodyInit | Record<string, unknown> | unknown[] | null;

/** Options of `streamRun`, `streamStates` and `RunStream`. */
export interface StreamRunOptions {
  body?: Body;
  /** Default "POST". */
  method?: string;
  headers?: HeadersInit;
  signal?: AbortSignal;
  onProgress?: OnProgress;
  onEvent?: (event: SSEEvent) => void;
  /** Milliseconds without a byte before `StreamTimeoutError`; 0 waits forever. Default 15000. */
  timeout?: number;
  /** Default 3. */
  maxReconnects?: number;
  /** Default 5000 (ms). */
  maxRetryDelay?: number;
  /** Ask for JSON lines instead of SSE. Default false. */
  jsonl?: boolean;
  credentials?: RequestCredentials;
}

export interface ProcessOptions {
  /** Milliseconds without a byte before `StreamTimeoutError`. Default 15000. */
  timeout?: number;
  onEvent?: (event: SSEEvent) => void;
}

export interface ReadableStreamOptions extends ProcessOptions {
  /** The bytes are JSON lines, not SSE. Default false. */
  jsonl?: boolean;
}

export interface WatchRunOptions {
  onProgress?: OnProgress;
  onEvent?: (event: SSEEvent) => void;
  signal?: AbortSignal;
  withCredentials?: boolean;
  maxReconnects?: number;
}

export function streamRun(url: string | URL, options?: StreamRunOptions): Promise<Results>;

export function processStreamingResponse(
  response: Response,
  onProgress?: OnProgress,
  options?: ProcessOptions,
): Promise<Results>;

/** A state as `processJsonStream` takes it: a state object or its JSON text. */
export type StateItem = RunState | Omit<RunState, "eta"> | string;

export function processJsonStream(
  source:
    | Response
    | ReadableStream<Uint8Array | StateItem>
    | AsyncIterable<StateItem>
    | Iterable<StateItem>,
  onProgress?: OnProgress,
  options?: ProcessOptions,
): Promise<Results>;

export function processReadableStream(
  stream: ReadableStream<Uint8Array>,
  onProgress?: OnProgress,
  options?: ReadableStreamOptions,
): Promise<Results>;

export function watchRun(eventsUrl: string | URL, options?: WatchRunOptions): Promise<Results>;

/** What a `RunStream` listener listens to. */
export type StreamEventType = "message" | "data" | "state" | "error" | "done";

export interface RunStreamOptions extends Omit<StreamRunOptions, "onProgress"> {
  /** The request body, under fal's name (`body` wins). */
  input?: Body;
  onProgress?: OnProgress;
}

/** A run's stream: `for await`, fal-style listeners and `done()`. */
export class RunStream implements AsyncIterable<RunState> {
  constructor(url: string | URL, options?: RunStreamOptions);
  /** Every state received so far, in order. */
  states: RunState[];
  on(type: "message" | "data" | "state", listener: (state: RunState) => void): this;
  on(type: "error", listener: (error: unknown) => void): this;
  on(type: "done", listener: (results: Results) => void): this;
  off(type: StreamEventType, listener: (value: never) => void): this;
  done(): Promise<Results>;
  abort(reason?: unknown): void;
  [Symbol.asyncIterator](): AsyncGenerator<RunState, void, undefined>;
}

export function streamStates(url: string | URL, options?: RunStreamOptions): RunStream;

/** A `File` or `Blob` as a run input: `data:{type};base64,{data}`. */
export function fileToInput(file: Blob): Promise<string>;

/** An update of `inference(...).run(config, {stream: true})`, in inference.sh's shape. */
export interface InferenceUpdate extends Omit<RunState, "logs" | "error" | "status"> {
  status: RunStatus;
  logs?: string[];
  output?: RawOutput[];
  error?: string;
}

export interface InferenceOptions {
  /** Sent as `Authorization: Bearer {apiKey}`. */
  apiKey?: string;
  /** POST every run here, the whole config as the body. */
  proxyUrl?: string;
  /** Else POST `config.input` to `{baseUrl}/{config.app}/stream`. Default "". */
  baseUrl?: string;
  headers?: HeadersInit;
}

export interface InferenceConfig {
  app?: string;
  input?: unknown;
  [key: string]: unknown;
}

export interface InferenceClient {
  run(
    config: InferenceConfig,
    options: {stream: true; signal?: AbortSignal},
  ): Promise<AsyncGenerator<InferenceUpdate, void, undefined>>;
  run(
    config: InferenceConfig,
    options?: {stream?: false; signal?: AbortSignal},
  ): Promise<InferenceUpdate | undefined>;
}

/** A client in the inference.sh SDK's shape, for code written against it. */
export function inference(options?: InferenceOptions): InferenceClient;
