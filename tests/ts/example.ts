// A small typed front end over ikstream.js: checked with `tsc --strict` (tests/test_typings.py).
import {
  HTTPError,
  ImageOutput,
  RunFailedError,
  StreamTimeoutError,
  fileToInput,
  inference,
  processJsonStream,
  processReadableStream,
  processStreamingResponse,
  streamRun,
  streamStates,
  type Output,
  type RunState,
} from "../../fastapi_ikstream/static/ikstream.js";

export async function generate(prompt: string, img: HTMLImageElement): Promise<number | undefined> {
  let eta: number | undefined;
  const response = await fetch(`/api/generate-image?prompt=${encodeURIComponent(prompt)}`);
  const results = await processStreamingResponse(response, progress => {
    eta = progress.eta[1] ?? undefined;
  });
  img.src = results.getOutput<ImageOutput>(0).dataUrl;
  return eta;
}

export async function upload(file: File, signal: AbortSignal): Promise<string[]> {
  const statuses: string[] = [];
  const stream = streamStates("/api/job/stream", {body: {inputs: [await fileToInput(file)]}, signal});
  stream.on("message", (state: RunState) => statuses.push(state.status ?? state.type));
  stream.on("error", error => {
    if (error instanceof StreamTimeoutError) statuses.push(`timeout ${error.status}`);
  });
  for await (const state of stream) {
    if (state.progress?.total) statuses.push(`${state.progress.current}/${state.progress.total}`);
  }
  const results = await stream.done();
  const outputs: Output[] = results.getOutputs();
  return [...statuses, String(outputs.length), String(results.runId)];
}

export async function reconnecting(): Promise<Blob | null> {
  try {
    const results = await streamRun("/api/job/stream", {body: {inputs: []}, timeout: 20_000});
    const first = results.getOutput(0);
    return first instanceof ImageOutput ? first.toBlob() : null;
  } catch (error) {
    if (error instanceof HTTPError && error.status === 429) return null;
    if (error instanceof RunFailedError) console.warn(error.state.error?.code, error.state.code);
    throw error;
  }
}

export async function fromBytes(bytes: ReadableStream<Uint8Array>): Promise<number> {
  const results = await processReadableStream(bytes, state => console.log(state.seq));
  return results.length;
}

export async function fromObjects(states: RunState[]): Promise<unknown> {
  const source = new ReadableStream<RunState>({
    start(controller) {
      for (const state of states) controller.enqueue(state);
      controller.close();
    },
  });
  const results = await processJsonStream(source, progress => {
    const [, maxEta] = progress.eta;
    if (maxEta) console.log(`ETA: ${Math.round(maxEta / 1000)}s`);
  });
  return results.getOutput<Record<string, unknown>>(1)["DATA_DICT"];
}

export async function inferenceShaped(signal: AbortSignal): Promise<string[]> {
  const client = inference({apiKey: "inf_key"});
  const stream = await client.run({app: "acme/flux", input: {prompt: "a fox"}}, {stream: true, signal});
  const logs: string[] = [];
  for await (const update of stream) {
    if (update.logs?.length) logs.push(...update.logs);
    if (update.status === "failed") logs.push(update.error ?? "");
  }
  return logs;
}
