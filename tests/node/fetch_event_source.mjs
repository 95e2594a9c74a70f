// POSTs a run with @microsoft/fetch-event-source in Node; prints what it saw as JSON.
//
// The package is written for browsers: it reads `document` (page visibility) and calls
// `window.setTimeout`, `window.clearTimeout` and `window.fetch`. This minimal shim gives it
// those, and `openWhenHidden: true` keeps it from listening for visibility changes.
globalThis.window = globalThis;
globalThis.document = { hidden: false, addEventListener() {}, removeEventListener() {} };

// Usage: node fetch_event_source.mjs '{"url": "...", "body": {...}, "timeoutMs": 10000}'
// Output: {messages: [{event, id, data, retry}], errors: [message],
//          requests: [{method, lastEventId, body, received}]}
const { fetchEventSource } = await import("@microsoft/fetch-event-source");

const { url, body, timeoutMs = 10000 } = JSON.parse(process.argv[2]);
setTimeout(() => {
  process.stderr.write("timed out\n");
  process.exit(3);
}, timeoutMs).unref();

class FatalError extends Error {}

const messages = [];
const errors = [];
const requests = [];
const controller = new AbortController();

await fetchEventSource(url, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify(body),
  signal: controller.signal,
  openWhenHidden: true,
  fetch: (input, init) => {
    const lastEventId = init.headers["last-event-id"] ?? null;
    requests.push({ method: init.method, lastEventId, body: init.body, received: messages.length });
    return fetch(input, init);
  },
  async onopen(response) {
    const type = response.headers.get("content-type") ?? "";
    if (response.status !== 200 || !type.startsWith("text/event-stream")) {
      throw new FatalError(`unexpected response: ${response.status} ${type}`);
    }
  },
  onmessage(message) {
    messages.push({ event: message.event, id: message.id, data: message.data, retry: message.retry ?? null });
    if (message.event === "done") controller.abort();
  },
  onerror(error) {
    errors.push(String(error?.message ?? error));
    if (error instanceof FatalError) throw error;
    // anything else: retry after the server's `retry:` delay
  },
}).catch((error) => errors.push(`gave up: ${error?.message ?? error}`));

const output = { messages, errors, requests };
process.stdout.write(JSON.stringify(output), () => process.exit(0));
