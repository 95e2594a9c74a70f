// Reads a run with the `eventsource` package's EventSource; prints what it saw as JSON.
//
// It listens for every event kind with addEventListener, closes the source on `done` (unless
// closeOnDone is false, to see what the source does after the stream ends), and stops when
// the source gives up by itself (readyState CLOSED after an `error` event).
// The `fetch` option (eventsource v3+) records each request's Last-Event-ID header and how
// many events had arrived before it.
//
// Usage: node eventsource.mjs '{"url": "...", "kinds": ["run", ...], "closeOnDone": true,
//                              "timeoutMs": 10000}'
// Output: {events: [{kind, id, data}], errors: [{message, code, readyState}],
//          requests: [{lastEventId, received}], endedBy: "done" | "closed"}
import { EventSource } from "eventsource";

const { url, kinds, closeOnDone = true, timeoutMs = 10000 } = JSON.parse(process.argv[2]);
setTimeout(() => {
  process.stderr.write("timed out\n");
  process.exit(3);
}, timeoutMs).unref();

const events = [];
const errors = [];
const requests = [];
const source = new EventSource(url, {
  fetch: (input, init) => {
    requests.push({ lastEventId: new Headers(init.headers).get("last-event-id"), received: events.length });
    return fetch(input, init);
  },
});

function finish(endedBy) {
  source.close();
  const output = { events, errors, requests, endedBy };
  process.stdout.write(JSON.stringify(output), () => process.exit(0));
}

for (const kind of [...kinds, "message"]) {
  source.addEventListener(kind, (event) => {
    events.push({ kind, id: event.lastEventId, data: event.data });
    if (kind === "done" && closeOnDone) finish("done");
  });
}
source.addEventListener("error", (event) => {
  errors.push({ message: event.message ?? null, code: event.code ?? null, readyState: source.readyState });
  if (source.readyState === EventSource.CLOSED) finish("closed");
});
