"""A run store on Redis, so that several uvicorn workers (or hosts) share runs.

Install the extra: ``pip install "fastapi-ikstream[redis]"``. Then::

    from fastapi_ikstream.redis import RedisRunStore

    router = create_router(deployment, store=RedisRunStore("redis://127.0.0.1:6379/0"))

Layout in Redis (``{p}`` is the key prefix, ``ikstream:`` by default):

- ``{p}run:{id}``: a stream per run; entry ids are the seqs (``{seq}-0``), so Redis itself
  refuses an event at or below the top (order and duplicate guard). Fields ``type`` and
  ``data`` (the event's compact JSON). Trimmed exactly to ``max_events_per_run``.
- ``{p}meta:{id}``: a hash: ``status``, ``first_seq``, ``last_seq``, ``finished``,
  ``latest``, ``principal``, ``cancel`` and ``cancel_reason``, ``owner``, and the readers:
  ``w:{worker id}`` per worker and ``watchers``, their sum over live workers.
- ``{p}lease:{id}``: the owner's lease, a key with a short TTL refreshed while the run lives.
- ``{p}active``: a sorted set of unfinished runs, scored by the time their lease lapses.
- ``{p}worker:{worker id}``: each worker's heartbeat, with the lease's TTL.
- channel ``{p}cancel``: cancel notices, ``{"run_id": ..., "reason": ...}``.

Every write to a run (the events, the trim, the expiry and the meta hash) is one Lua script,
so readers never see an event without its meta data or the other way round. A finished run
expires ``retention`` seconds after ``done``; an unfinished one is kept alive by its owner.

Per worker, the store holds a small, fixed number of connections whatever the number of
readers: a bounded pool for commands, ONE connection for a shared blocking ``XREAD`` that
fans new events out to every local reader, and one for the cancel channel. It needs a
single Redis server (or a primary with replicas), not Redis Cluster.
"""

from .._exceptions import MissingExtraError

try:
    import redis  # noqa: F401
except ImportError as exc:
    raise MissingExtraError("redis", "fastapi_ikstream.redis") from exc

from ._reads import ORPHANED_MESSAGE as ORPHANED_MESSAGE
from ._store import RedisRunStore as RedisRunStore
from ._subscription import RedisRunSubscription as RedisRunSubscription

__all__ = ["ORPHANED_MESSAGE", "RedisRunStore", "RedisRunSubscription"]
