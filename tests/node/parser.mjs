// Reads one stream with Node's fetch and eventsource-parser; prints what it saw as JSON.
//
// Usage: node parser.mjs '{"url": "...", "body": {...}, "timeoutMs": 10000}'
// Output: {status, contentType, raw, events: [{event, id, data}], retries: [{ms, before}],
//          comments: [text], parseErrors: [message]}
import { createParser } from "eventsource-parser";

const { url, body, timeoutMs = 10000 } = JSON.parse(process.argv[2]);
setTimeout(() => {
  process.stderr.write("timed out\n");
  process.exit(3);
}, timeoutMs).unref();

const events = [];
const retries = [];
const comments = [];
const parseErrors = [];
const parser = createParser({
  onEvent: (event) => events.push({ event: event.event ?? null, id: event.id ?? null, data: event.data }),
  onRetry: (ms) => retries.push({ ms, before: events.length }),
  onComment: (text) => comments.push(text),
  onError: (error) => parseErrors.push(String(error.message)),
});

const response = await fetch(url, {
  method: "POST",
  headers: { "content-type": "application/json", accept: "text/event-stream" },
  body: JSON.stringify(body),
});
const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
let raw = "";
for await (const chunk of response.body) {
  const text = decoder.decode(chunk, { stream: true });
  raw += text;
  parser.feed(text);
}
const rest = decoder.decode();
raw += rest;
parser.feed(rest);

const output = {
  status: response.status,
  contentType: response.headers.get("content-type"),
  raw,
  events,
  retries,
  comments,
  parseErrors,
};
process.stdout.write(JSON.stringify(output), () => process.exit(0));
