import { streamStates as stream } from '/api/job/ikstream.js';

// Listeners, and the done() promise "developers should always call".
export async function withListeners(input: any) {
  const messages: any[] = [];
  const falStream = await stream('/api/job/stream', { input });
  falStream.on('message', (data) => messages.push(data));
  let doneWith: any;
  falStream.on('done', (data) => (doneWith = data));
  let errorWith: any;
  falStream.on('error', (error) => (errorWith = error));
  try {
    const result = await falStream.done();
    return { messages, result, doneWith, errorWith };
  } catch (error) {
    return { messages, error, errorWith };
  }
}

// The AsyncIterator form, then done() for the final result.
export async function withAsyncIterator(input: any) {
  const partials: any[] = [];
  const falStream = await stream('/api/job/stream', { input });
  for await (const partial of falStream) {
    partials.push(partial);
  }
  const result = await falStream.done();
  return { partials, result };
}
