// Stands in for seed 001's tRPC client: `query` answers what a tRPC stream link hands back,
// a stream of the procedure's yielded states, here a ReadableStream of objects built from
// the router's JSON-lines stream.
export const trpc = {
  stableDiffusion: {
    async query(prompt: string): Promise<ReadableStream<object>> {
      const response = await fetch('/api/job/stream', {
        method: 'POST',
        headers: {'content-type': 'application/json', accept: 'application/jsonl'},
        body: JSON.stringify({inputs: [], parameters: {prompt}}),
      });
      let rest = '';
      const toStates = new TransformStream<string, object>({
        transform(text, controller) {
          const lines = (rest + text).split('\n');
          rest = lines.pop() ?? '';
          for (const line of lines) {
            const item = JSON.parse(line);
            if (item.type !== 'keepalive') controller.enqueue(item);
          }
        },
      });
      return response.body!.pipeThrough(new TextDecoderStream()).pipeThrough(toStates);
    },
  },
};
