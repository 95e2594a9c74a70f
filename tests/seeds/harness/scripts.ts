import {browserSSE} from '../seed002_eventsource';
import {withAsyncIterator, withListeners} from '../seed003_fal_forms';

(window as any).harness = {
  browserSSE,
  withListeners,
  withAsyncIterator,
  forAwait: () => import('../seed002_for_await'),
  trpcConsumer: () => import('../seed001_trpc_consumer'),
};
(window as any).harnessReady = true;
