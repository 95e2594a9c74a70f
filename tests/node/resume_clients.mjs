// POSTs a run and reconnects after drops, as an application using one of two npm clients
// would; prints what it saw as JSON.
//
// - "parser": Node's fetch fed to eventsource-parser, with the reconnect loop such an
//   application writes itself: after a drop, wait the `retry:` delay and POST again with
//   Last-Event-ID; stop on `done`, on 204, and on a 4xx other than 429.
// - "fes": @microsoft/fetch-event-source with the idiom of its README: `onopen` throws a
//   fatal error for a 4xx other than 429 and a retriable one otherwise, `onclose` throws a
//   retriable error (the stream ended early), `onerror` rethrows the fatal one.
//
// Usage: node resume_clients.mjs '{"client": "parser" | "fes", "url": "...", "body": {...},
//                                  "timeoutMs": 10000}'
// Output: {events: [{event, id, data}], requests: [{lastEventId, status, body}],
//          errors: [message], endedBy: "done" | "fatal" | "204"}
globalThis.window = globalThis; // fetch-event-source calls window.setTimeout and window.fetch
globalThis.document = { hidden: false, addEventListener() {}, removeEventListener() {} };
const { createParser } = await import("eventsource-parser");
const { fetchEventSource } = await import("@microsoft/fetch-event-source");

const { client, url, body, timeoutMs = 10000 } = JSON.parse(process.argv[2]);
setTimeout(() => {
  process.stderr.write("timed out\n");
  process.exit(3);
}, timeoutMs).unref();

const events = [];
const requests = [];
const errors = [];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class FatalError extends Error {}
class RetriableError extends Error {}

async function withParser() {
  let lastEventId = null;
  let retry = 3000;
  for (;;) {
    const headers = { "content-type": "application/json", accept: "text/event-stream" };
    if (lastEventId !== null) headers["last-event-id"] = lastEventId;
    const request = { lastEventId, status: null, body: null };
    requests.push(request);
    let response;
    try {
      response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
    } catch (error) {
      errors.push(String(error?.message ?? error));
      await sleep(retry);
      continue;
    }
    request.status = response.status;
    if (response.status === 204) return "204";
    if (!response.ok) {
      request.body = await response.text();
      if (response.status >= 400 && response.status < 500 && response.status !== 429) return "fatal";
      await sleep(retry);
      continue;
    }
    let done = false;
    const parser = createParser({
      onEvent: (event) => {
        events.push({ event: event.event ?? null, id: event.id ?? null, data: event.data });
        if (event.id) lastEventId = event.id;
        if (event.event === "done") done = true;
      },
      onRetry: (ms) => {
        retry = ms;
      },
    });
    const decoder = new TextDecoder();
    try {
      for await (const chunk of response.body) {
        parser.feed(decoder.decode(chunk, { stream: true }));
        if (done) return "done";
      }
    } catch (error) {
      errors.push(String(error?.message ?? error));
    }
    if (done) return "done";
    await sleep(retry);
  }
}

async function withFetchEventSource() {
  const controller = new AbortController();
  let endedBy = null;
  await fetchEventSource(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal: controller.signal,
    openWhenHidden: true,
    fetch: async (input, init) => {
      const request = { lastEventId: init.headers["last-event-id"] ?? null, status: null, body: null };
      requests.push(request);
      const response = await fetch(input, init);
      request.status = response.status;
      if (!response.ok) request.body = await response.clone().text();
      return response;
    },
    async onopen(response) {
      // The README compares the content type with "text/event-stream" exactly; a server
      // may add a charset, so this compares its start.
      if (response.ok && (response.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
        return;
      }
      if (response.status >= 400 && response.status < 500 && response.status !== 429) {
        throw new FatalError(`HTTP ${response.status}`);
      }
      throw new RetriableError(`HTTP ${response.status}`);
    },
    onmessage(message) {
      events.push({ event: message.event, id: message.id, data: message.data });
      if (message.event === "done") {
        endedBy = "done";
        controller.abort();
      }
    },
    onclose() {
      throw new RetriableError("the stream ended early");
    },
    onerror(error) {
      errors.push(String(error?.message ?? error));
      if (error instanceof FatalError) throw error;
      // anything else: retry after the server's `retry:` delay
    },
  }).catch((error) => {
    if (error instanceof FatalError) endedBy = "fatal";
    else throw error;
  });
  return endedBy;
}

const endedBy = client === "parser" ? await withParser() : await withFetchEventSource();
const output = { events, requests, errors, endedBy };
process.stdout.write(JSON.stringify(output), () => process.exit(0));
