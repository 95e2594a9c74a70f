// Renders seed 002's `useStream` hook (the seed's own `Generator` markup is lost in its text).
import {createRoot} from 'react-dom/client';
import {useStream} from '../seed002_use_stream';

function Generator() {
  const {status, output, logs, run, cancel} = useStream();
  return (
    <div>
      <p id="status">Status: {status}</p>
      <ul id="logs">
        {logs.map((log: string, i: number) => (
          <li key={i}>{log}</li>
        ))}
      </ul>
      {output && <p id="output">{JSON.stringify(output)}</p>}
      <button id="run" onClick={() => run({app: 'infsh/flux-schnell', input: {prompt: 'A fox', steps: 3}})}>
        Run
      </button>
      <button id="slow" onClick={() => run({app: 'infsh/flux-schnell', input: {prompt: 'slow', steps: 500}})}>
        Slow
      </button>
      <button id="fail" onClick={() => run({app: 'infsh/flux-schnell', input: {prompt: 'fail', steps: 1}})}>
        Fail
      </button>
      <button id="cancel" onClick={cancel}>
        Cancel
      </button>
    </div>
  );
}

createRoot(document.getElementById('root')!).render(<Generator />);
(window as any).harnessReady = true;
