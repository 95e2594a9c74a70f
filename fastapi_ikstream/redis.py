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

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ._cursor import MAX_SEQ
from ._exceptions import (
    MissingExtraError,
    QuotaExceededError,
    RunNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from ._models import EventType, RunError, RunState, RunStatus
from ._store import CancelHandler, RunInfo, RunStore, StoredEvent, Subscription, reset_event

try:
    from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
    from redis.asyncio.client import PubSub
    from redis.asyncio.connection import AbstractConnection
    from redis.exceptions import NoScriptError, RedisError
except ImportError as exc:
    raise MissingExtraError("redis", "fastapi_ikstream.redis") from exc

from ._redis_faults import (
    UNAVAILABLE_AFTER,
    Health,
    is_permanent,
    refused,
    translated,
    unavailable,
)

__all__ = ["ORPHANED_MESSAGE", "RedisRunStore", "RedisRunSubscription"]

logger = logging.getLogger("fastapi_ikstream")

ORPHANED_MESSAGE = "The worker running this run stopped."
"""The public message of the ``failed`` event (code ``orphaned``) of a run whose owner died."""

_RANGE_COUNT = 500  # entries per shared XREAD round
_CATCH_UP_COUNT = 64  # entries per XRANGE of one reader catching up
_BATCH_BYTES = 64 * 1024  # bytes of event data one reader's batch holds at most
_WRITE_BATCH = 256  # events per script call
_WRITE_RUNS = 64  # script calls per pipeline
_BLOCK_SECONDS = 5.0  # one blocking XREAD waits this long at most
_CLOSE_FLUSH_SECONDS = 2.0

# KEYS: stream, meta, lease, active. Appends (seq, type, data, status) quadruples found in
# ``argv`` from index ``start``; skips seqs already stored, trims before a jump, ends the run
# on ``done``. Returns the last stored seq, -1 if the run had ended, -2 if it is unknown.
_APPEND_FUNCTION = """
local function append_events(keys, run_id, maxlen, ret_ms, live_ms, argv, start)
  local m = redis.call('HMGET', keys[2], 'finished', 'last_seq', 'first_seq', 'maxbytes', 'bytes')
  if not m[1] then return -2 end
  if m[1] == '1' then return -1 end
  local last = tonumber(m[2])
  local first = tonumber(m[3])
  local maxbytes = tonumber(m[4] or '0')
  local total = tonumber(m[5] or '0')
  local trim_to = false
  local latest = false
  local status = false
  local done = false
  for i = start, #argv, 4 do
    local seq = tonumber(argv[i])
    if seq > last then
      if seq > last + 1 then
        trim_to = argv[i]
        first = seq
        total = 0
      end
      if maxbytes > 0 then
        if redis.call('XLEN', keys[1]) >= tonumber(maxlen) then
          local old = redis.call('XRANGE', keys[1], '-', '+', 'COUNT', 1)
          if old[1] then total = total - string.len(old[1][2][4]) end
        end
        total = total + string.len(argv[i + 2])
      end
      redis.call('XADD', keys[1], 'MAXLEN', maxlen, argv[i] .. '-0',
        'type', argv[i + 1], 'data', argv[i + 2])
      last = seq
      if argv[i + 3] ~= '' then status = argv[i + 3] end
      if argv[i + 1] == 'done' then
        done = true
        break
      end
      latest = argv[i + 2]
    end
  end
  if trim_to then redis.call('XTRIM', keys[1], 'MINID', trim_to .. '-0') end
  if maxbytes > 0 then
    if total > maxbytes then
      local target = maxbytes - math.floor(maxbytes / 4)
      local n = redis.call('XLEN', keys[1])
      while total > target and n > 2 do
        local batch = redis.call('XRANGE', keys[1], '-', '+', 'COUNT', math.min(64, n - 2))
        for _, e in ipairs(batch) do
          total = total - string.len(e[2][4])
          redis.call('XDEL', keys[1], e[1])
          n = n - 1
          first = tonumber(string.match(e[1], '^(%d+)')) + 1
          if total <= target or n <= 2 then break end
        end
      end
    end
    redis.call('HSET', keys[2], 'bytes', string.format('%d', total))
  end
  local floor = last - tonumber(maxlen) + 1
  if floor > first then first = floor end
  redis.call('HSET', keys[2], 'last_seq', string.format('%d', last),
    'first_seq', string.format('%d', first))
  if status then redis.call('HSET', keys[2], 'status', status) end
  if latest then redis.call('HSET', keys[2], 'latest', latest) end
  if done then
    redis.call('HSET', keys[2], 'finished', '1')
    local holder = redis.call('HGET', keys[2], 'holder')
    if holder then redis.call('ZREM', holder, run_id) end
    redis.call('PEXPIRE', keys[1], ret_ms)
    redis.call('PEXPIRE', keys[2], ret_ms)
    redis.call('DEL', keys[3])
    redis.call('ZREM', keys[4], run_id)
  else
    redis.call('PEXPIRE', keys[1], live_ms)
    redis.call('PEXPIRE', keys[2], live_ms)
  end
  return last
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# ARGV: run_id, maxlen, retention ms, live ttl ms, events...
_APPEND = (
    _APPEND_FUNCTION + "return append_events(KEYS, ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV, 5)"
)

# ARGV: run_id, expected last seq, maxlen, retention ms, live ttl ms, events...
_ORPHAN = (
    _APPEND_FUNCTION
    + """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local m = redis.call('HMGET', KEYS[2], 'finished', 'last_seq')
if (not m[1]) or m[1] == '1' then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 0
end
if tonumber(m[2]) ~= tonumber(ARGV[2]) then return 0 end
if append_events(KEYS, ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV, 6) > 0 then return 1 end
return 0
"""
)

# KEYS: stream, meta, lease, active. ARGV: run_id, owner, principal, has principal, lease ms,
# live ttl ms, attached ('1'/'0'), holder key ('' for none), max active (0 for no bound),
# meta key prefix, max bytes per run (0 for no bound). Returns 1 created, 0 exists, -1 the
# holder has max active unfinished runs.
# The holder's sorted set lists its unfinished runs: the append script removes a run from it
# with ``done``, whatever wrote it (the run's end, a cancel, shutdown, an orphan sweep), and
# members whose meta hash is gone or finished are dropped here.
_CREATE = (
    _APPEND_FUNCTION
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local holder = ARGV[8]
if holder ~= '' then
  local bound = tonumber(ARGV[9])
  if bound > 0 then
    local live = 0
    for _, rid in ipairs(redis.call('ZRANGE', holder, 0, -1)) do
      local f = redis.call('HGET', ARGV[10] .. rid, 'finished')
      if (not f) or f == '1' then redis.call('ZREM', holder, rid) else live = live + 1 end
    end
    if live >= bound then return -1 end
  end
  redis.call('ZADD', holder, now_ms(), ARGV[1])
  redis.call('PEXPIRE', holder, ARGV[6])
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'status', 'received', 'last_seq', '0', 'first_seq', '1',
  'finished', '0', 'cancel', '0', 'watchers', '0', 'owner', ARGV[2], 'attached', ARGV[7])
if holder ~= '' then redis.call('HSET', KEYS[2], 'holder', holder) end
if tonumber(ARGV[11]) > 0 then redis.call('HSET', KEYS[2], 'maxbytes', ARGV[11], 'bytes', '0') end
if ARGV[4] == '1' then redis.call('HSET', KEYS[2], 'principal', ARGV[3]) end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[5])
redis.call('ZADD', KEYS[4], now_ms() + tonumber(ARGV[5]), ARGV[1])
return 1
"""
)

# KEYS: stream, meta, lease, active. ARGV: run_id, owner, lease ms, live ttl ms.
# Returns {0} unknown, {1} finished, {2} owned elsewhere, {3, cancel flag, reason}.
_REFRESH = (
    _APPEND_FUNCTION
    + """
local f = redis.call('HMGET', KEYS[2], 'finished', 'owner', 'cancel', 'cancel_reason')
if not f[1] then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return {0}
end
if f[1] == '1' then return {1} end
if f[2] ~= ARGV[2] then return {2} end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[4], now_ms() + tonumber(ARGV[3]), ARGV[1])
return {3, f[3] or '0', f[4] or ''}
"""
)

# KEYS: active. ARGV: limit. The unfinished runs whose lease should have lapsed.
_DUE = (
    _APPEND_FUNCTION
    + "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, ARGV[1])"
)

# KEYS: meta. ARGV: reason, channel, notice.
_CANCEL = """
local f = redis.call('HGET', KEYS[1], 'finished')
if (not f) or f == '1' then return 0 end
redis.call('HSET', KEYS[1], 'cancel', '1', 'cancel_reason', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

# KEYS: meta. ARGV: delta.
# KEYS: meta. ARGV: delta, this worker's field (``w:{worker id}``), worker key prefix.
# Counts per worker, and sums only the workers alive (their heartbeat key exists), so the
# readers of a worker that died stop counting once its heartbeat lapses.
_WATCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[1], ARGV[2], ARGV[1]) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[2])
end
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, 1, 2) == 'w:' then
    if name == ARGV[2] or redis.call('EXISTS', ARGV[3] .. string.sub(name, 3)) == 1 then
      total = total + tonumber(fields[i + 1])
    end
  end
end
redis.call('HSET', KEYS[1], 'watchers', total)
return total
"""

_SCRIPTS = {
    "append": _APPEND,
    "orphan": _ORPHAN,
    "create": _CREATE,
    "refresh": _REFRESH,
    "due": _DUE,
    "cancel": _CANCEL,
    "watch": _WATCH,
}

_T = TypeVar("_T")
_Pending = tuple[int, str, str, str]  # seq, type, data, status ("" for none)


@dataclass(slots=True)
class _Meta:
    first_seq: int
    last_seq: int
    finished: bool


@dataclass(slots=True)
class _Peek:
    last_seq: int
    finished: bool
    lease_alive: bool


class _LocalRun:
    """A run this worker created: its unwritten events and its writer's progress."""

    __slots__ = (
        "cancel_handled",
        "done",
        "ended_elsewhere",
        "pending",
        "top",
        "waiters",
        "written",
    )

    def __init__(self) -> None:
        self.pending: deque[_Pending] = deque()
        self.top = 0
        self.written = 0
        self.done = False
        self.ended_elsewhere = False
        self.cancel_handled = False
        self.waiters: list[asyncio.Future[None]] = []

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


def _fields(state: RunState) -> _Pending:
    status = state.status.value if state.status is not None else ""
    return (state.seq, state.type.value, state.to_json(), status)


def _pairs(fields: Any) -> dict[str, str]:
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[::2], fields[1::2], strict=True))


def _events(run_id: str, entries: Sequence[Any]) -> list[StoredEvent]:
    events = []
    for entry_id, raw in entries:
        fields = _pairs(raw)
        seq = int(entry_id.partition("-")[0])
        events.append(StoredEvent(run_id, seq, fields["type"], fields["data"]))
    return events


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class RedisRunStore(RunStore):
    """Keeps runs in Redis, shared by every worker that points at the same server.

    ``append`` never waits on the network: events are queued per run and written in order by
    a background task, several per script call when they pile up (``flush`` waits for them).
    The worker that creates a run owns it and holds a lease on it; if the lease lapses
    before the run ends (the worker died, even by ``kill -9``), any worker ends the run with
    a ``failed`` event (code ``orphaned``) and ``done``, exactly once.

    Example::

        store = RedisRunStore("redis://127.0.0.1:6379/0", retention=600)
        router = create_router(deployment, store=store)

    Args:
        url: the Redis URL (``redis://``, ``rediss://`` or ``unix://``). Default
            ``"redis://127.0.0.1:6379/0"``.
        prefix: prefix of every key and channel. Default ``"ikstream:"``.
        max_events_per_run: events kept per run (the stream is trimmed exactly to it); a
            reader that asks for older ones gets a ``reset``. Default 10,000.
        max_bytes_per_run: bytes of event JSON kept per run at most; the oldest events are
            dropped first (a reader that asks for them gets a ``reset``), the last two (a
            run's terminal state and ``done``) always stay. None for no bound. Default 16 MiB.
        retention: seconds a finished run stays readable. Default 300.0.
        lease_seconds: lifetime of the owner's lease, refreshed three times per lease. A run
            whose owner stops is ended as ``orphaned`` within about ``lease_seconds +
            sweep_interval``. Default 5.0.
        sweep_interval: seconds between two searches for runs whose lease lapsed; None uses
            ``lease_seconds``. Default None.
        max_watcher_queue: events buffered per local reader; a reader that falls further
            behind reads from its own cursor instead. Default 256.
        max_connections: connections of the command pool; callers wait for a free one.
            Default 16.
        **redis_options: passed to ``redis.asyncio.Redis.from_url`` and the pools
            (e.g. ``socket_timeout``, ``password``, ``ssl_ca_certs``).

    Raises:
        MissingExtraError: on import, when ``redis`` is not installed.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "ikstream:",
        max_events_per_run: int = 10_000,
        max_bytes_per_run: int | None = 16 * 1024 * 1024,
        retention: float = 300.0,
        lease_seconds: float = 5.0,
        sweep_interval: float | None = None,
        max_watcher_queue: int = 256,
        max_connections: int = 16,
        **redis_options: Any,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.max_events_per_run = max(1, max_events_per_run)
        self.max_bytes_per_run = max_bytes_per_run
        self.retention = retention
        self.lease_seconds = lease_seconds
        self.sweep_interval = lease_seconds if sweep_interval is None else sweep_interval
        self.max_watcher_queue = max(1, max_watcher_queue)
        self.max_connections = max(2, max_connections)
        self.redis_options = redis_options
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.cancel_channel = f"{prefix}cancel"
        self._worker_key = f"{prefix}worker:{self.worker_id}"
        self._retention_ms = max(1, int(retention * 1000))
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._live_ms = self._retention_ms + 2 * self._lease_ms + int(self.sweep_interval * 1000)
        self._idle_check = max(0.05, lease_seconds)
        self._cancel_handler: CancelHandler | None = None
        self._local: dict[str, _LocalRun] = {}
        self._started = False
        self._closed = False
        self._closing = False
        self._start_lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._generation = 0
        self._inflight: dict[str, asyncio.Task[Any]] = {}
        self._client: Redis | None = None
        self._pubsub_client: Redis | None = None
        self._pubsub: PubSub | None = None
        self._reader: _SharedReader | None = None
        self._wake_writer: asyncio.Event | None = None
        self._shas: dict[str, str] = {}
        self._subscriptions: weakref.WeakSet[RedisRunSubscription] = weakref.WeakSet()
        self.health = Health()

    # -- keys ------------------------------------------------------------------------------

    def _keys(self, run_id: str) -> list[str]:
        p = self.prefix
        return [f"{p}run:{run_id}", f"{p}meta:{run_id}", f"{p}lease:{run_id}", f"{p}active"]

    @property
    def client(self) -> Redis:
        """The command client (started). Raises `StoreError` before `start`."""
        if self._client is None:
            raise StoreError("the Redis run store is not started")
        return self._client

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and start the writer, the shared reader, the lease and cancel tasks.

        Called on first use; safe to call more than once.

        Raises:
            StoreError: Redis cannot be reached.
        """
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            options = {**self.redis_options, "decode_responses": True}
            pool = BlockingConnectionPool.from_url(
                self.url, max_connections=self.max_connections, **options
            )
            client = Redis.from_pool(pool)
            pubsub_client = Redis.from_url(self.url, **options)
            pubsub = pubsub_client.pubsub(ignore_subscribe_messages=True)
            self._client = client
            try:
                await client.ping()
                await self._heartbeat()
                await self._load_scripts()
                await pubsub.subscribe(self.cancel_channel)
            except (RedisError, OSError) as exc:
                self._client = None
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await pubsub_client.aclose()
                await client.aclose()
                raise unavailable(exc, "connecting") from None
            self._pubsub_client = pubsub_client
            self._pubsub = pubsub
            self._wake_writer = asyncio.Event()
            self._reader = _SharedReader(self, ConnectionPool.from_url(self.url, **options))
            self._generation += 1
            gen = self._generation
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._write_loop(gen), name="ikstream-redis-writer"),
                loop.create_task(self._reader.run(), name="ikstream-redis-reader"),
                loop.create_task(self._refresh_loop(gen), name="ikstream-redis-leases"),
                loop.create_task(self._sweep_loop(gen), name="ikstream-redis-sweeper"),
                loop.create_task(self._listen_loop(gen), name="ikstream-redis-cancels"),
            ]
            self._closed = False
            self._started = True

    async def _load_scripts(self) -> None:
        for name, text in _SCRIPTS.items():
            self._shas[name] = await self.client.script_load(text)

    async def _eval(self, name: str, keys: list[str], args: Sequence[Any]) -> Any:
        """Run one of the module's Lua scripts by its SHA, loading them again if Redis lost them."""
        try:
            return await self.client.evalsha(self._shas[name], len(keys), *keys, *args)
        except NoScriptError:
            await self._load_scripts()
            return await self.client.evalsha(self._shas[name], len(keys), *keys, *args)

    async def _ensure_started(self) -> None:
        if not self._started:
            await self.start()

    async def aclose(self) -> None:
        """Write what is queued (for up to 2 s), stop the background tasks and disconnect.

        Runs this worker still owns are not ended: their leases lapse and another worker
        ends them as ``orphaned``.
        """
        if not self._started or self._closing:
            return
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flush_all(), _CLOSE_FLUSH_SECONDS)
        self._started = False
        self._closed = True
        self._generation += 1  # background loops end even if a cancellation gets lost
        if self._reader is not None:
            self._reader.running = False
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        with contextlib.suppress(RedisError, OSError):
            await asyncio.wait_for(self.client.delete(self._worker_key), 1.0)
        for run in self._local.values():
            run.wake()
        self._local.clear()
        if self._reader is not None:
            await self._reader.aclose()
        for subscription in list(self._subscriptions):
            subscription.wake(False)
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        if self._pubsub_client is not None:
            await self._pubsub_client.aclose()
        if self._client is not None:
            await self._client.aclose()
        self._client = self._pubsub_client = self._pubsub = None
        self._reader = None
        self._start_lock = None
        self._closing = False

    async def _flush_all(self) -> None:
        for run_id in list(self._local):
            await self.flush(run_id)

    # -- runs ------------------------------------------------------------------------------

    @translated("creating a run")
    async def create_run(
        self,
        run_id: str,
        *,
        principal: str | None,
        quota_key: str | None = None,
        max_active: int | None = None,
        attached: bool = False,
    ) -> None:
        """Register a new run, owned by this worker (see `RunStore.create_run`).

        The caller's unfinished runs are counted in Redis, so ``max_active`` holds across
        every worker of the store.

        Raises:
            QuotaExceededError: ``quota_key`` has ``max_active`` unfinished runs.
            StoreError: the run exists already.
            StoreUnavailableError: Redis cannot be reached.
        """
        await self._ensure_started()
        if run_id in self._local:
            raise StoreError(f"run {run_id} exists already")
        args = [run_id, self.worker_id, principal or "", "0" if principal is None else "1"]
        holder = "" if quota_key is None else f"{self.prefix}holder:{quota_key}"
        extra = [
            "1" if attached else "0",
            holder,
            max_active or 0,
            f"{self.prefix}meta:",
            self.max_bytes_per_run or 0,
        ]
        created = await self._eval(
            "create", self._keys(run_id), [*args, self._lease_ms, self._live_ms, *extra]
        )
        if created == -1:
            raise QuotaExceededError(max_active or 0)
        if not created:
            raise StoreError(f"run {run_id} exists already")
        self._local[run_id] = _LocalRun()

    def append(self, state: RunState) -> None:
        """Queue the run's next event for writing; never blocks (see `RunStore.append`).

        When more than ``max_events_per_run`` events of a run wait to be written (Redis is
        slow or away), the oldest are dropped: they would be trimmed on writing anyway, and
        readers that asked for them get a ``reset``.

        Raises:
            RunNotFoundError: the run was not created by this store.
            ValueError: the seq does not follow the previous one, or ``done`` was appended.
        """
        run = self._local.get(state.run_id)
        if run is None:
            if self._closed:
                return
            raise RunNotFoundError(state.run_id)
        if run.done:
            raise ValueError("the run's log already ended with 'done'")
        if state.seq != run.top + 1:
            raise ValueError(f"seq {state.seq} does not follow {run.top}")
        run.top = state.seq
        run.pending.append(_fields(state))
        if len(run.pending) > self.max_events_per_run:
            run.pending.popleft()
        if state.type is EventType.DONE:
            run.done = True
        if self._wake_writer is not None:
            self._wake_writer.set()

    async def flush(self, run_id: str) -> None:
        """Wait until every event appended so far for the run is written to Redis."""
        run = self._local.get(run_id)
        if run is None:
            return
        target = run.top
        loop = asyncio.get_running_loop()
        while run.written < target and self._local.get(run_id) is run and self._started:
            fut: asyncio.Future[None] = loop.create_future()
            run.waiters.append(fut)
            await fut

    @translated("reading a run")
    async def get_info(self, run_id: str) -> RunInfo | None:
        """See `RunStore.get_info`."""
        await self._ensure_started()
        data: dict[Any, Any] = await self.client.hgetall(self._keys(run_id)[1])
        if not data or "last_seq" not in data:
            return None
        return RunInfo(
            run_id=run_id,
            principal=data.get("principal"),
            status=RunStatus(data.get("status", RunStatus.RECEIVED.value)),
            first_seq=int(data.get("first_seq", "1")),
            last_seq=int(data["last_seq"]),
            finished=data.get("finished") == "1",
            latest=data.get("latest"),
            cancel_requested=data.get("cancel") == "1",
            attached=data.get("attached") == "1",
        )

    def subscribe(self, run_id: str, after_seq: int = 0) -> Subscription:
        """Read the run's events after ``after_seq`` (see `RunStore.subscribe`).

        The run is looked up on the first ``next_batch`` (this method cannot wait on
        Redis): for an unknown or expired run, ``next_batch`` returns None at once. Check
        with `get_info` first to answer 404.
        """
        subscription = RedisRunSubscription(self, run_id, after_seq)
        self._subscriptions.add(subscription)
        return subscription

    @translated("cancelling a run")
    async def request_cancel(self, run_id: str, reason: str) -> bool:
        """Set the run's durable cancel flag and notify every worker (see `RunStore`)."""
        await self._ensure_started()
        notice = json.dumps({"run_id": run_id, "reason": reason})
        accepted = await self._eval(
            "cancel", [self._keys(run_id)[1]], [reason, self.cancel_channel, notice]
        )
        if accepted and run_id in self._local:
            self._dispatch_cancel(run_id, reason)
        return bool(accepted)

    @translated("counting readers")
    async def add_watcher(self, run_id: str, delta: int) -> int:
        """Count a reader in (+1) or out (-1); returns the readers open on all live workers.

        Each worker counts its own readers in the run's meta hash; the readers of a worker
        that stopped without counting them out no longer count once its heartbeat (renewed
        with the leases) lapses.
        """
        await self._ensure_started()
        args = [delta, f"w:{self.worker_id}", f"{self.prefix}worker:"]
        total = await self._eval("watch", [self._keys(run_id)[1]], args)
        return int(total)

    @translated("claiming a usage record")
    async def claim_usage(self, run_id: str) -> bool:
        """True for the first worker that asks, of all workers (see `RunStore.claim_usage`).

        One ``SET NX`` on ``{prefix}usage:{run_id}``, kept as long as the run's keys.
        """
        await self._ensure_started()
        key = f"{self.prefix}usage:{run_id}"
        return bool(await self.client.set(key, self.worker_id, nx=True, px=self._live_ms))

    @translated("sweeping")
    async def sweep(self) -> int:
        """End the runs whose owner's lease lapsed as ``orphaned`` (also done periodically).

        Returns:
            How many runs this call ended; concurrent sweeps on other workers end each
            run once in all.
        """
        await self._ensure_started()
        return await self._sweep()

    async def _sweep(self) -> int:
        due = await self._eval("due", [self._keys("")[3]], [100])
        ended = 0
        for run_id in due:
            local = self._local.get(run_id)
            if local is not None and not local.ended_elsewhere:
                continue  # alive here: the lease task renews it
            if await self._orphan_now(run_id):
                ended += 1
        return ended

    # -- internals: checks -----------------------------------------------------------------

    async def _range(
        self, run_id: str, cursor: int, count: int
    ) -> tuple[_Meta | None, list[StoredEvent]]:
        stream, meta = self._keys(run_id)[:2]
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hmget(meta, ["first_seq", "last_seq", "finished"])
            pipe.xrange(stream, min=f"{cursor + 1}-0", max="+", count=count)
            values, entries = await pipe.execute()
        if values[1] is None:
            return None, []
        info = _Meta(int(values[0] or 1), int(values[1]), values[2] == "1")
        return info, _events(run_id, entries)

    async def _peek_now(self, run_id: str) -> _Peek | None:
        keys = self._keys(run_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hmget(keys[1], ["finished", "last_seq"])
            pipe.exists(keys[2])
            values, lease = await pipe.execute()
        if values[1] is None:
            return None
        return _Peek(int(values[1]), values[0] == "1", bool(lease))

    async def _shared(self, key: str, make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Run ``make()`` once for all the local readers that ask for ``key`` at the same time."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(make())
            self._inflight[key] = task

            def forget(done: asyncio.Task[Any]) -> None:
                if self._inflight.get(key) is done:
                    del self._inflight[key]
                if not done.cancelled():
                    done.exception()  # retrieved here so an unawaited failure is not logged

            task.add_done_callback(forget)
        result: _T = await asyncio.shield(task)
        return result

    async def _ping(self) -> None:
        await self.client.ping()

    async def _peek(self, run_id: str) -> _Peek | None:
        return await self._shared(f"peek:{run_id}", lambda: self._peek_now(run_id))

    async def _orphan(self, run_id: str) -> bool:
        return await self._shared(f"orphan:{run_id}", lambda: self._orphan_now(run_id))

    async def _orphan_now(self, run_id: str) -> bool:
        """End an unfinished run whose lease lapsed with ``failed`` (orphaned) and ``done``."""
        peek = await self._peek_now(run_id)
        if peek is None or peek.finished or peek.lease_alive:
            return False
        last = peek.last_seq
        failed = RunState(
            type=EventType.FAILED,
            run_id=run_id,
            seq=last + 1,
            status=RunStatus.FAILED,
            eta=(0, 0),
            error=RunError(code="orphaned", message=ORPHANED_MESSAGE, retryable=True),
        )
        done = RunState(type=EventType.DONE, run_id=run_id, seq=last + 2, status=RunStatus.FAILED)
        args: list[Any] = [run_id, last, self.max_events_per_run, self._retention_ms, self._live_ms]
        for state in (failed, done):
            args.extend(_fields(state))
        ended = bool(await self._eval("orphan", self._keys(run_id), args))
        if ended:
            logger.warning("run %s: the worker running it stopped; ended as orphaned", run_id)
            self._notify_orphaned(run_id)
        return ended

    def _dispatch_cancel(self, run_id: str, reason: str) -> None:
        run = self._local.get(run_id)
        handler = self._cancel_handler
        if run is None or run.cancel_handled or run.done or handler is None:
            return
        run.cancel_handled = True
        try:
            handler(run_id, reason)
        except Exception:
            logger.exception("run %s: the cancel handler raised", run_id)

    # -- internals: background tasks -------------------------------------------------------

    async def _write_loop(self, gen: int) -> None:
        wake = self._wake_writer
        assert wake is not None
        backoff = 0.05
        while self._generation == gen:
            await wake.wait()
            wake.clear()
            while self._generation == gen:
                runs = [(run_id, run) for run_id, run in self._local.items() if run.pending]
                if not runs:
                    break
                try:
                    await self._write(runs[:_WRITE_RUNS])
                except Exception as exc:
                    logger.warning("run store: writing to Redis failed (%s); retrying", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                else:
                    backoff = 0.05

    async def _write(self, runs: list[tuple[str, _LocalRun]]) -> None:
        sha = self._shas["append"]
        sent: list[tuple[str, _LocalRun, int]] = []
        async with self.client.pipeline(transaction=False) as pipe:
            for run_id, run in runs:
                chunk = list(itertools.islice(run.pending, _WRITE_BATCH))
                args: list[Any] = [
                    run_id,
                    self.max_events_per_run,
                    self._retention_ms,
                    self._live_ms,
                ]
                for event in chunk:
                    args.extend(event)
                pipe.evalsha(sha, 4, *self._keys(run_id), *args)
                sent.append((run_id, run, chunk[-1][0]))
            results = await pipe.execute(raise_on_error=False)
        if any(isinstance(result, NoScriptError) for result in results):
            await self._load_scripts()  # Redis restarted or flushed its scripts: write again
            return
        for (run_id, run, last), result in zip(sent, results, strict=True):
            while run.pending and run.pending[0][0] <= last:
                run.pending.popleft()
            run.written = max(run.written, last)
            if isinstance(result, Exception):
                logger.error("run %s: Redis refused its events: %s", run_id, result)
            elif result == -1 and not run.ended_elsewhere:
                run.ended_elsewhere = True
                logger.warning("run %s was ended by another worker; its events are dropped", run_id)
            elif result == -2:
                logger.warning("run %s is no longer in Redis; its events are dropped", run_id)
            if self._local.get(run_id) is run:
                del self._local[run_id]
                if not (run.done and run.written >= run.top):
                    self._local[run_id] = run  # to the end: runs beyond a round's share go next
            run.wake()

    async def _refresh_loop(self, gen: int) -> None:
        interval = max(0.02, self.lease_seconds / 3)
        while self._generation == gen:
            await asyncio.sleep(interval)
            if self._generation != gen:
                break
            try:
                await self._refresh()
            except Exception as exc:
                logger.warning("run store: renewing leases failed: %s", exc)

    async def _heartbeat(self) -> None:
        await self.client.set(self._worker_key, "1", px=self._lease_ms)

    async def _refresh(self) -> None:
        runs = [(rid, run) for rid, run in self._local.items() if not run.ended_elsewhere]
        sha = self._shas["refresh"]
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self._worker_key, "1", px=self._lease_ms)
            for run_id, _ in runs:
                args: list[Any] = [run_id, self.worker_id, self._lease_ms, self._live_ms]
                pipe.evalsha(sha, 4, *self._keys(run_id), *args)
            results = (await pipe.execute(raise_on_error=False))[1:]
        if any(isinstance(result, NoScriptError) for result in results):
            await self._load_scripts()
            return
        for (run_id, run), result in zip(runs, results, strict=True):
            if isinstance(result, Exception):
                logger.error("run %s: renewing its lease failed: %s", run_id, result)
                continue
            code = int(result[0])
            if code == 3:
                if result[1] == "1":  # a cancel whose notice this worker missed
                    self._dispatch_cancel(run_id, result[2] or "cancelled")
            elif not run.done:
                run.ended_elsewhere = True
                self._dispatch_cancel(run_id, "the run was ended by another worker")

    async def _sweep_loop(self, gen: int) -> None:
        while self._generation == gen:
            await asyncio.sleep(self.sweep_interval)
            if self._generation != gen:
                break
            try:
                await self._sweep()
            except Exception as exc:
                logger.warning("run store: sweeping orphaned runs failed: %s", exc)

    async def _listen_loop(self, gen: int) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        backoff = 0.05
        while self._generation == gen:
            try:
                async for message in pubsub.listen():
                    backoff = 0.05
                    if message.get("type") == "message":
                        self._on_notice(message["data"])
            except Exception as exc:
                logger.warning("run store: the cancel channel failed: %s", exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _on_notice(self, data: str) -> None:
        try:
            notice = json.loads(data)
            run_id, reason = str(notice["run_id"]), str(notice["reason"])
        except (ValueError, KeyError, TypeError):
            logger.warning("run store: ignored a malformed cancel notice")
            return
        self._dispatch_cancel(run_id, reason)


class _SharedReader:
    """One blocking ``XREAD`` per worker over every stream local readers wait on.

    New events are pushed to each reader's bounded queue. When the set of streams changes
    while the read blocks, ``CLIENT UNBLOCK`` (sent on the command pool) ends it early.
    """

    def __init__(self, store: RedisRunStore, pool: ConnectionPool) -> None:
        self.store = store
        self.pool = pool
        self.subs: dict[str, set[RedisRunSubscription]] = {}
        self.pos: dict[str, int] = {}
        self.gen = 0
        self.snap_gen = 0
        self.in_flight = False
        self.client_id: int | None = None
        self.conn: AbstractConnection | None = None
        self.changed = asyncio.Event()
        self.kicker: asyncio.Task[None] | None = None
        self.running = True
        self.stream_prefix = f"{store.prefix}run:"

    def register(self, sub: RedisRunSubscription) -> None:
        run_id = sub.run_id
        subs = self.subs.get(run_id)
        sub.registered = True
        if subs is None:
            self.subs[run_id] = {sub}
            self.pos[run_id] = sub.cursor
            self.gen += 1
            self.changed.set()
            if self.kicker is None or self.kicker.done():
                self.kicker = asyncio.get_running_loop().create_task(self._unblock())
            return
        subs.add(sub)
        if self.pos[run_id] > sub.cursor:
            sub.need_range = True  # the shared read is past this reader: catch up alone

    def unregister(self, sub: RedisRunSubscription) -> None:
        sub.registered = False
        subs = self.subs.get(sub.run_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subs[sub.run_id]
                del self.pos[sub.run_id]

    async def _unblock(self) -> None:
        delay = 0.001
        while self.running and self.snap_gen < self.gen:
            if self.in_flight and self.client_id is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self.store.client.client_unblock(self.client_id)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _connect(self) -> AbstractConnection:
        conn = self.conn
        if conn is None:
            conn = self.conn = self.pool.make_connection()  # type: ignore[no-untyped-call]
        if self.client_id is None:
            await conn.connect()
            await conn.send_command("CLIENT", "ID")
            self.client_id = int(await conn.read_response())
        return conn

    async def run(self) -> None:
        backoff = 0.05
        while self.running:
            if not self.pos:
                self.changed.clear()
                self.snap_gen = self.gen
                await self.changed.wait()
                continue
            try:
                conn = await self._connect()
                self.snap_gen = self.gen
                runs = list(self.pos.items())
                keys = [self.stream_prefix + run_id for run_id, _ in runs]
                ids = [f"{seq}-0" for _, seq in runs]
                block_ms = int(_BLOCK_SECONDS * 1000)
                self.in_flight = True
                try:
                    await conn.send_command(
                        "XREAD", "COUNT", _RANGE_COUNT, "BLOCK", block_ms, "STREAMS", *keys, *ids
                    )
                    reply = await conn.read_response(timeout=_BLOCK_SECONDS + 5.0)
                finally:
                    self.in_flight = False
                self.store.health.ok()
            except Exception as exc:
                logger.warning("run store: the shared Redis reader failed (%s); reconnecting", exc)
                permanent = is_permanent(exc)
                if not permanent:
                    self.store.health.failed()
                self._fail_readers(drop=permanent)
                await self._disconnect()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            if reply:
                try:
                    self._dispatch(reply)
                except Exception:
                    logger.exception("run store: could not read events from Redis")

    def _fail_readers(self, *, drop: bool) -> None:
        """Wake every reader: each rides the outage out, or leaves on a permanent error.

        See ``RedisRunSubscription._ride_out``; a reader that leaves reads Redis on its own.
        """
        for subs in list(self.subs.values()):
            for sub in list(subs):
                if drop:
                    self.unregister(sub)
                    sub.need_range = True
                sub.wake(True)

    def _dispatch(self, reply: Any) -> None:
        items = reply.items() if isinstance(reply, dict) else reply
        cut = len(self.stream_prefix)
        for key, entries in items:
            run_id = key[cut:]
            subs = self.subs.get(run_id)
            if not subs or not entries:
                continue
            events = _events(run_id, entries)
            self.pos[run_id] = max(self.pos[run_id], events[-1].seq)
            for sub in list(subs):
                sub.push(events)
            if events[-1].type == EventType.DONE.value:
                for sub in subs:
                    sub.registered = False
                del self.subs[run_id]
                del self.pos[run_id]

    async def _disconnect(self) -> None:
        self.client_id = None
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.disconnect(nowait=True)

    async def aclose(self) -> None:
        self.running = False
        if self.kicker is not None:
            self.kicker.cancel()
            await asyncio.gather(self.kicker, return_exceptions=True)
        await self._disconnect()
        await self.pool.aclose()
        for subs in self.subs.values():
            for sub in subs:
                sub.registered = False
                sub.wake(True)
        self.subs.clear()
        self.pos.clear()


class RedisRunSubscription(Subscription):
    """A reader of one run in a `RedisRunStore`, from a cursor on.

    It first reads what it lacks with ``XRANGE`` (a ``reset`` first when its cursor is older
    than the kept window), then joins the worker's shared blocking reader. When its queue
    overflows, or an event arrives out of order, it reads from its own cursor again. When
    nothing comes for a while it re-checks the run's meta data, so a lost notification or a
    dead owner cannot leave it waiting.
    """

    __slots__ = (
        "_closed",
        "_ended",
        "_queue",
        "_store",
        "_waiter",
        "cursor",
        "need_range",
        "registered",
        "run_id",
    )

    def __init__(self, store: RedisRunStore, run_id: str, after_seq: int) -> None:
        self._store = store
        self.run_id = run_id
        self.cursor = min(max(0, after_seq), MAX_SEQ)
        self._queue: deque[StoredEvent] = deque()
        self.need_range = True
        self.registered = False
        self._ended = False
        self._closed = False
        self._waiter: asyncio.Future[bool] | None = None

    def push(self, events: list[StoredEvent]) -> None:
        """Take events from the shared reader (drops them all and reads alone on overflow)."""
        queue = self._queue
        if len(queue) + len(events) > self._store.max_watcher_queue:
            queue.clear()
            self.need_range = True
        else:
            queue.extend(events)
        self.wake(True)

    def wake(self, value: bool) -> None:
        """End a pending wait."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(value)

    def _take_queue(self) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        queue = self._queue
        cursor = self.cursor
        while queue:
            event = queue.popleft()
            if event.seq <= cursor:
                continue
            if event.seq != cursor + 1:  # a gap: read it from Redis
                queue.clear()
                self.need_range = True
                break
            out.append(event)
            cursor = event.seq
            if event.type == EventType.DONE.value:
                queue.clear()
                break
        self.cursor = cursor
        return out

    async def _read_range(self) -> list[StoredEvent] | None:
        store = self._store
        meta, events = await store._range(self.run_id, self.cursor, _CATCH_UP_COUNT)
        store.health.ok()
        if meta is None:
            return None
        out: list[StoredEvent] = []
        if self.cursor > meta.last_seq:  # past the end: start again from what is kept
            reset = reset_event(self.run_id, meta.first_seq)
            out.append(reset)
            self.cursor = reset.seq
            meta, events = await store._range(self.run_id, self.cursor, _CATCH_UP_COUNT)
            if meta is None:
                return None
        cursor = self.cursor
        first = events[0].seq if events else meta.first_seq
        if first > cursor + 1 and (events or meta.last_seq > cursor):
            reset = reset_event(self.run_id, first)
            out.append(reset)
            cursor = reset.seq
        done = False
        size = 0
        cut = False
        for event in events:
            if event.seq <= cursor:
                continue
            if size >= _BATCH_BYTES:
                cut = True  # the rest is read again once this batch is written
                break
            size += len(event.data)
            out.append(event)
            cursor = event.seq
            if event.type == EventType.DONE.value:
                done = True
                break
        self.cursor = cursor
        self.need_range = (cut or len(events) >= _CATCH_UP_COUNT) and not done
        if not out and meta.finished and cursor >= meta.last_seq:
            return None
        if not done and not self.need_range and not self.registered and store._reader is not None:
            store._reader.register(self)
        return out

    async def _wait(self, seconds: float) -> bool:
        if self._queue or self.need_range:
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiter = fut
        handle = loop.call_later(seconds, _expire, fut)
        try:
            return await fut
        finally:
            handle.cancel()
            self._waiter = None

    def _end(self) -> None:
        self._ended = True
        reader = self._store._reader
        if self.registered and reader is not None:
            reader.unregister(self)

    async def _collect(self) -> list[StoredEvent] | None:
        batch = self._take_queue()
        if batch or not self.need_range:
            return batch
        return await self._read_range()

    async def _check(self) -> bool | None:
        """Re-check the meta hash after a quiet wait: None if the run ended or is gone."""
        store = self._store
        peek = await store._peek(self.run_id)
        store.health.ok()
        if peek is None or (peek.finished and peek.last_seq <= self.cursor):
            return None
        if peek.last_seq > self.cursor:  # a notification was lost or is late: read
            self.need_range = True
            return True
        if not peek.lease_alive and await store._orphan(self.run_id):
            self.need_range = True
            return True
        return False

    async def next_batch(self, timeout: float | None) -> list[StoredEvent] | None:
        """See `Subscription.next_batch`; None also when the run is unknown or expired."""
        store = self._store
        if self._ended or self._closed or store._closed:
            return None
        await store._ensure_started()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        while store._started and not self._closed:
            try:
                if store.health.down_since is not None:
                    if not await self._ride_out(deadline):
                        return []  # a keep-alive while Redis is away
                    continue
                batch = await self._collect()
                if batch is None:
                    break
                if batch:
                    if batch[-1].type == EventType.DONE.value:
                        self._end()
                    return batch
                wait = store._idle_check
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                if wait > 0 and await self._wait(wait):
                    continue
                if self._closed or not store._started:
                    break
                found = await self._check()
                if found is None:
                    break
                if found:
                    continue
            except (RedisError, OSError) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # redis-py may turn a cancellation into a connection error: the stream
                    # was stopped (a shutdown, a disconnect), so stop, do not retry
                    raise asyncio.CancelledError from exc
                if is_permanent(exc):
                    self._end()
                    raise refused(exc, f"reading run {self.run_id}") from None
                logger.info("run %s: reading it from Redis failed: %s", self.run_id, exc)
                store.health.failed()  # the loop rides the outage out, or ends the stream
            if deadline is not None and loop.time() >= deadline:
                return []
        self._end()
        return None

    async def _ride_out(self, deadline: float | None) -> bool:
        """Wait while Redis fails; end the stream after `UNAVAILABLE_AFTER` seconds of it.

        Readers do not probe Redis here: the shared reader does, and one PING shared by
        all of them confirms the outage before their streams end.

        Returns:
            True once Redis answers again (the reader then reads from its cursor); False
            if ``deadline`` came first.

        Raises:
            StoreUnavailableError: Redis has been failing for too long.
        """
        store = self._store
        health = store.health
        loop = asyncio.get_running_loop()
        while health.down_since is not None and not self._closed:
            wait = UNAVAILABLE_AFTER - health.down_for()
            if wait <= 0:
                if health.recently_failed():  # confirmed already: no probe of our own
                    self._end()
                    raise StoreUnavailableError()
                try:
                    await store._shared("ping", store._ping)
                except (RedisError, OSError) as exc:
                    health.failed()
                    self._end()
                    raise unavailable(exc, f"reading run {self.run_id}") from None
                health.ok()
                break
            if deadline is not None:
                if loop.time() >= deadline:
                    return False
                wait = min(wait, deadline - loop.time())
            await health.wait_back(wait)
        self.need_range = True
        return True

    async def aclose(self) -> None:
        """Leave the shared reader."""
        self._closed = True
        self._end()
        self.wake(False)
