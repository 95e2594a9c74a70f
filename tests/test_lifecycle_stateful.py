"""Random interleavings of start / read / drop / resume / cancel / progress / finish / fail.

A hypothesis state machine drives a router served by uvicorn on the test's own event loop
(real sockets, so a dropped reader is a real disconnect), with a deployment whose runs move
only when a step says so, and a clock that jumps past the reconnect grace only when a step
says so. After every step the world must settle to what the model predicts, and then:

- each reader saw seqs 1, 2, 3, … with no gap across its resumes, and at most one
  terminal event (``done`` last, right after it);
- what a reader saw is a prefix of the run's stored events, all of them once it saw
  ``done``;
- a detached run ends only by its own end or ``DELETE``, never because a reader left;
- the caller's unfinished runs in the store and open streams in the admission equal the
  runs and readers actually live; the manager holds exactly the unfinished runs, the
  attached ones, the grace timers of attached runs without a reader, one handle per
  stream;
- a 422 takes nothing, an over-quota request gets 429 with ``Retry-After`` and takes
  nothing.

At the end every run is ended, the app's lifespan closed, every count is zero and no
asyncio task is left. Runs with the memory store and with a real Redis; with Redis the
clock jumps also fire the store's own timers and read deadlines, as a long stall of the
worker would (a read past its deadline must not leave its connection one reply behind).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import pytest
import redis.asyncio as aioredis
from conftest import free_port
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from hypothesis.stateful import run_state_machine_as_test as run_machine
from lifecycle_support import bearer, jwt_auth, jwt_key
from redis_server import RedisServer, run_redis_server
from stateful_support import (
    Gates,
    Job,
    JumpLoop,
    Reader,
    RunModel,
    assert_refused,
    check_events,
    connect,
    drop,
    settle,
    start_server,
)

from fastapi_ikstream import MemoryRunStore, Quotas, create_router
from fastapi_ikstream.redis import RedisRunStore

pytestmark = [pytest.mark.timeout(120)]

T = TypeVar("T")
PRINCIPALS = ("alice", "bob")
RUN_CAP = 2  # unfinished runs per caller
STREAM_CAP = 3  # open streams per caller
RETRY_MS = 1000
GRACE = 30.0  # well above the retry delay, as create_router demands
KEEP_ALIVE = 15.0
SETTINGS = settings(
    max_examples=int(os.environ.get("IKSTREAM_STATEFUL_EXAMPLES", "12")),  # more for a soak
    stateful_step_count=30,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class Refusals(logging.Handler):
    """The messages of logged Redis refusals (a command Redis answered with an error)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Redis refused" in message:
            self.messages.append(message)


class Lifecycle(RuleBasedStateMachine):
    """One router, two callers, and the model of what they should hold."""

    kind = "memory"
    redis_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = JumpLoop()
        self.gates = Gates()
        self.prefix = f"sm{uuid.uuid4().hex[:8]}:"
        self.redis: aioredis.Redis | None = None
        self.refusals = Refusals()
        logging.getLogger("fastapi_ikstream").addHandler(self.refusals)
        if self.kind == "memory":
            store: Any = MemoryRunStore(live_progress=None)
        else:
            store = RedisRunStore(self.redis_url, prefix=self.prefix, lease_seconds=5.0)
            self.redis = aioredis.from_url(self.redis_url, decode_responses=True)
        self.router = create_router(
            self.gates,
            path="/g",
            request_model=Job,
            store=store,
            auth=jwt_auth(),
            quotas=Quotas(runs=RUN_CAP, streams=STREAM_CAP, resumes="1000/minute"),
            reconnect_grace=GRACE,
            retry=RETRY_MS,
            keep_alive=KEEP_ALIVE,
            timeout=None,
            drain_timeout=1.0,
        )
        app = FastAPI()
        app.include_router(self.router)
        port = free_port()
        self.server, self.server_task = self.run(start_server(app, port))
        # no read timeout: streams are idle across clock jumps (a hang fails `settle`)
        timeout = httpx.Timeout(10, read=None)
        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=timeout)
        self.auth = {who: bearer(who) for who in PRINCIPALS}
        self.tokens = itertools.count(1)
        self.runs: dict[str, RunModel] = {}
        self.readers: list[Reader] = []

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    # -- the model's view ------------------------------------------------------------------

    def unfinished(self, who: str | None = None) -> list[RunModel]:
        return [r for r in self.runs.values() if not r.finished and who in (None, r.principal)]

    def live(self, who: str | None = None) -> list[Reader]:
        return [r for r in self.readers if r.live and who in (None, r.principal)]

    def refusal(self, who: str, *, run: bool, stream: bool) -> set[str]:
        """The 429 codes a request may get (empty: it must be admitted)."""
        codes = set()
        if run and len(self.unfinished(who)) >= RUN_CAP:
            codes.add("too_many_runs")
        if stream and len(self.live(who)) >= STREAM_CAP:
            codes.add("too_many_streams")
        return codes

    def pick(self, items: list[T], index: int) -> T:
        return items[index % len(items)]

    async def active_runs(self, who: str) -> int:
        if self.redis is None:
            return int(self.router.store.active_runs(jwt_key(who)))  # type: ignore[attr-defined]
        return int(await self.redis.zcard(f"{self.prefix}holder:{jwt_key(who)}"))

    # -- settling ----------------------------------------------------------------------------

    async def settled(self) -> bool:
        manager, admission = self.router.manager, self.router.admission
        for run in self.runs.values():
            info = await self.router.store.get_info(run.run_id)
            if info is None or (info.last_seq, info.finished) != (run.last_seq, run.finished):
                return False
        unfinished = {r.run_id for r in self.unfinished()}
        attached = {r.run_id for r in self.unfinished() if r.attached}
        watched = {r.run_id for r in self.live()}
        if set(manager.runs) != unfinished or manager.attached != attached:
            return False
        if manager.in_grace != attached - watched:
            return False
        for reader in self.live():
            if reader.last_seq != self.runs[reader.run_id].last_seq:
                return False
        if len(manager.streams) != len(self.live()):
            return False
        for who in PRINCIPALS:
            if admission.open_streams(jwt_key(who)) != len(self.live(who)):
                return False
            if await self.active_runs(who) != len(self.unfinished(who)):
                return False
        return True

    def describe(self) -> str:
        manager = self.router.manager
        return (
            f"model runs={[(r.run_id[:6], r.last_seq, r.end) for r in self.runs.values()]} "
            f"live={[(r.name, r.run_id[:6], r.last_seq) for r in self.live()]} | "
            f"manager runs={len(manager.runs)} attached={len(manager.attached)} "
            f"grace={len(manager.in_grace)} streams={len(manager.streams)} "
            f"open={[self.router.admission.open_streams(jwt_key(w)) for w in PRINCIPALS]}"
        )

    async def settle(self) -> None:
        await settle(self.settled, self.describe)
        for reader in self.readers:
            task = reader.task
            done = task is not None and task.done() and not task.cancelled()
            if done and task is not None and (exc := task.exception()) is not None:
                raise exc

    # -- rules: starting, reading, dropping, resuming -----------------------------------------

    @rule(who=st.sampled_from(PRINCIPALS))
    def start_stream(self, who: str) -> None:
        self.run(self._start(who, attached=True))

    @rule(who=st.sampled_from(PRINCIPALS))
    def start_detached(self, who: str) -> None:
        self.run(self._start(who, attached=False))

    async def _start(self, who: str, *, attached: bool) -> None:
        token = next(self.tokens)
        refused = self.refusal(who, run=True, stream=attached)
        reader = Reader(len(self.readers), "", who, "stream")
        if attached:
            response = await connect(
                self.client,
                reader,
                "POST",
                "/g/stream",
                json={"token": token},
                headers=self.auth[who],
            )
        else:
            response = await connect(
                self.client,
                None,
                "POST",
                "/g/runs",
                json={"token": token},
                headers=self.auth[who],
            )
        if refused:
            assert_refused(response, refused)
        else:
            assert response.status_code == (200 if attached else 201), response.text
            run_id = response.headers["x-run-id"] if attached else response.json()["run_id"]
            self.runs[run_id] = RunModel(run_id, who, token, attached)
            if attached:
                reader.run_id = run_id
                self.readers.append(reader)
        await self.settle()

    @precondition(lambda self: self.runs)
    @rule(index=st.integers(0, 99), intruder=st.booleans())
    def open_reader(self, index: int, intruder: bool) -> None:
        run = self.pick(list(self.runs.values()), index)
        self.run(self._open_reader(run, intruder))

    async def _open_reader(self, run: RunModel, intruder: bool) -> None:
        who = run.principal
        if intruder:
            who = next(p for p in PRINCIPALS if p != run.principal)
        reader = Reader(len(self.readers), run.run_id, who, "events")
        response = await connect(
            self.client, reader, "GET", f"/g/runs/{run.run_id}/events", headers=self.auth[who]
        )
        if intruder:
            assert response.status_code == 404, response.headers
        elif refused := self.refusal(who, run=False, stream=True):
            assert_refused(response, refused)
        else:
            assert response.status_code == 200, response.text
            self.readers.append(reader)
        await self.settle()

    @precondition(lambda self: self.live())
    @rule(index=st.integers(0, 99))
    def drop_reader(self, index: int) -> None:
        reader = self.pick(self.live(), index)
        self.run(drop(reader))
        self.run(self.settle())

    @precondition(lambda self: any(not r.live and not r.ended for r in self.readers))
    @rule(index=st.integers(0, 99), method=st.sampled_from(["POST", "GET"]))
    def resume(self, index: int, method: str) -> None:
        reader = self.pick([r for r in self.readers if not r.live and not r.ended], index)
        self.run(self._resume(reader, method))

    async def _resume(self, reader: Reader, method: str) -> None:
        run = self.runs[reader.run_id]
        ended = run.finished and reader.last_seq == run.last_seq
        refused = self.refusal(reader.principal, run=False, stream=True)
        cursor = f"{run.run_id}:{reader.last_seq}"
        headers = {**self.auth[reader.principal], "last-event-id": cursor}
        if reader.kind == "stream":  # as EventSource (GET) or a fetch client (POST) resumes
            kw: dict[str, Any] = {"json": {}} if method == "POST" else {}
            response = await connect(
                self.client, reader, method, "/g/stream", headers=headers, **kw
            )
        else:
            response = await connect(
                self.client, reader, "GET", f"/g/runs/{run.run_id}/events", headers=headers
            )
        if ended:
            assert response.status_code == 204, cursor
        elif refused:
            assert_refused(response, refused)
        else:
            assert response.status_code == 200, cursor
        await self.settle()

    # -- rules: the run's own moves, cancel, time ---------------------------------------------

    @precondition(lambda self: self.unfinished())
    @rule(index=st.integers(0, 99), command=st.sampled_from(["progress", "finish", "fail"]))
    def deployment_moves(self, index: int, command: str) -> None:
        run = self.pick(self.unfinished(), index)
        self.gates.send(run.token, command)
        if command == "progress":
            run.last_seq += 1
        else:
            run.ends("result" if command == "finish" else "failed")
        self.run(self.settle())

    @precondition(lambda self: self.runs)
    @rule(index=st.integers(0, 99))
    def delete(self, index: int) -> None:
        run = self.pick(list(self.runs.values()), index)
        self.run(self._delete(run))

    async def _delete(self, run: RunModel) -> None:
        response = await self.client.delete(
            f"/g/runs/{run.run_id}", headers=self.auth[run.principal]
        )
        assert response.status_code == (200 if run.finished else 202), response.text
        if not run.finished:
            run.ends("cancelled")
        await self.settle()

    @rule()
    def grace_passes(self) -> None:
        """The clock jumps past the grace: attached runs nobody reads are cancelled."""
        watched = {r.run_id for r in self.live()}
        for run in self.unfinished():
            if run.attached and run.run_id not in watched:
                run.ends("cancelled")
        self.loop.jump(GRACE + 1)
        self.run(self.settle())

    @rule(
        who=st.sampled_from(PRINCIPALS),
        endpoint=st.sampled_from(["POST /g/stream", "GET /g/stream", "POST /g/runs", "POST /g"]),
        raw=st.booleans(),
    )
    def invalid_body(self, who: str, endpoint: str, raw: bool) -> None:
        self.run(self._invalid(who, endpoint, raw))

    async def _invalid(self, who: str, endpoint: str, raw: bool) -> None:
        method, path = endpoint.split(" ")
        kw: dict[str, Any]
        if method == "GET":
            kw = {"params": {"token": "not a number"}}
        elif raw:
            kw = {"content": b"{not json", "headers": {"content-type": "application/json"}}
        else:
            kw = {"json": {"token": "not a number"}}
        headers = {**self.auth[who], **kw.pop("headers", {})}
        response = await self.client.request(method, path, headers=headers, **kw)
        assert response.status_code == 422, response.text  # never 429, even with full quotas
        await self.settle()

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def readers_saw_the_stored_events(self) -> None:
        self.run(self._check_readers())

    async def _check_readers(self) -> None:
        stored = {run_id: await self.stored(run_id) for run_id in self.runs}
        check_events(self.readers, list(self.runs.values()), stored)

    async def stored(self, run_id: str) -> list[tuple[int, str, str]]:
        subscription = self.router.store.subscribe(run_id, 0)
        events: list[tuple[int, str, str]] = []
        try:
            while batch := await subscription.next_batch(0):
                events += [(e.seq, e.type, e.data) for e in batch]
        finally:
            await subscription.aclose()
        return events

    # -- the end ----------------------------------------------------------------------------

    def teardown(self) -> None:
        failing = sys.exc_info()[0] is not None
        try:
            self.run(self._teardown(check=not failing))
        finally:
            self.loop.close()
            logging.getLogger("fastapi_ikstream").removeHandler(self.refusals)
        if not failing:  # the store never sends Redis a command it refuses
            assert self.refusals.messages == []

    async def _teardown(self, *, check: bool) -> None:
        try:
            if check:
                for run in self.unfinished():
                    await self._delete(run)
        finally:
            for reader in self.live():
                await drop(reader)
            await self.client.aclose()
            self.server.should_exit = True
            await self.server_task
        if not check:
            if self.redis is not None:
                await self.redis.aclose()
            return
        manager, admission = self.router.manager, self.router.admission
        assert not manager.runs
        assert not manager.attached
        assert not manager.streams
        assert not manager.in_grace
        for who in PRINCIPALS:
            assert admission.open_streams(jwt_key(who)) == 0
            assert await self.active_runs(who) == 0
        if self.redis is not None:
            await self.redis.aclose()
        left = asyncio.all_tasks() - {asyncio.current_task()}
        assert not left, left


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with run_redis_server() as server:
        yield server


def test_interleavings_with_the_memory_store() -> None:
    run_machine(Lifecycle, settings=SETTINGS)


def test_a_stream_refused_by_the_stream_quota_starts_no_run() -> None:
    """Found by the machine: the run was created before the stream quota refused the stream,
    and, attached with no reader ever, held its caller's slot until its timeout."""
    machine = Lifecycle()
    try:
        machine.start_stream("bob")
        machine.open_reader(0, intruder=False)
        machine.open_reader(0, intruder=False)  # bob's three streams: the quota is full
        machine.start_stream("bob")  # 429, and no run
        machine.readers_saw_the_stored_events()
    finally:
        machine.teardown()


@pytest.mark.redis
def test_interleavings_with_redis(redis_server: RedisServer) -> None:
    class RedisLifecycle(Lifecycle):
        kind = "redis"
        redis_url = redis_server.url

    run_machine(RedisLifecycle, settings=SETTINGS)
