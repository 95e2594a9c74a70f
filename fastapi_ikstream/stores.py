"""Run stores: where a run's events are kept for readers and resumes.

`RunStore` is the protocol (with `Subscription`, `StoredEvent` and `RunInfo`);
`MemoryRunStore` the default, for one worker. The Redis store, for several workers, is
``fastapi_ikstream.redis.RedisRunStore`` (extra ``redis``).
"""

from ._memory import MemoryRunStore
from ._store import RunInfo, RunStore, StoredEvent, Subscription

__all__ = ["MemoryRunStore", "RunInfo", "RunStore", "StoredEvent", "Subscription"]
