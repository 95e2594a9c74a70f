"""Parts of the stateful lifecycle test: a clock that moves when told, a deployment whose
runs move when told, a uvicorn server on the test's own loop, and an SSE reader.

Everything runs on one event loop that the test drives step by step with
``run_until_complete``: between two steps nothing runs, and time jumps only when a step
says so (`JumpLoop.jump`), so a reconnect grace expires exactly when the test wants it to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from pydantic import BaseModel

from fastapi_ikstream import DeploymentError

TERMINAL = {"result", "failed", "cancelled"}
SETTLE_TIMEOUT = 3.0
"""Wall-clock seconds a step may take to settle before the test fails (a hang, not a race)."""


class JumpLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock runs with real time, plus jumps the test makes."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset

    def jump(self, seconds: float) -> None:
        """Move the clock ahead: every timer due by then fires on the next iteration."""
        self.offset += seconds


async def settle(check: Callable[[], Any], what: Callable[[], str]) -> None:
    """Wait until ``await check()`` is true; fail with ``what()`` if it never becomes so."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never settled: {what()}")
        await asyncio.sleep(0.002)


# -- a deployment whose runs move only when told ------------------------------------------


class Job(BaseModel):
    """The body: ``token`` names the run's gate."""

    token: int = 0


class Gates:
    """A deployment: each run waits for commands on its gate (``progress``/``finish``/``fail``)."""

    def __init__(self) -> None:
        self.queues: dict[int, asyncio.Queue[str]] = {}

    def open_run(self, inputs: Any, parameters: Mapping[str, Any]) -> Any:
        job: Job = inputs
        queue: asyncio.Queue[str] = asyncio.Queue()
        self.queues[job.token] = queue
        return self._run(queue)

    def send(self, token: int, command: str) -> None:
        self.queues[token].put_nowait(command)

    async def _run(self, queue: asyncio.Queue[str]) -> AsyncIterator[dict[str, Any]]:
        steps = 0
        while True:
            command = await queue.get()
            if command == "progress":
                steps += 1
                yield {"state": "STARTED", "progress": {"current": steps, "total": 1000}}
            elif command == "finish":
                yield {"results": [{"DATA_DICT": {"steps": steps}}]}
                return
            else:
                raise DeploymentError("it broke", code="broke")


# -- the server, on the test's loop -------------------------------------------------------


class LoopServer(uvicorn.Server):
    """uvicorn on the running loop; the process's signal handlers are left alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def start_server(app: Any, port: int) -> tuple[LoopServer, asyncio.Task[None]]:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = LoopServer(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    await settle(lambda: _true(server.started or task.done()), lambda: "uvicorn start")
    assert server.started, "uvicorn did not start"
    return server, task


async def _true(value: bool) -> bool:
    return value


# -- readers ------------------------------------------------------------------------------


@dataclass
class Event:
    seq: int
    type: str
    data: str


@dataclass
class Reader:
    """One client that reads one run, over one or more connections (it resumes)."""

    name: int
    run_id: str
    principal: str
    kind: str  # "stream" (started by POST /stream) or "events" (GET /runs/{id}/events)
    seen: list[Event] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    connections: int = 0

    @property
    def live(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def ended(self) -> bool:
        """It saw ``done`` (or was told 204): it will not come back."""
        return bool(self.seen) and self.seen[-1].type == "done"

    @property
    def last_seq(self) -> int:
        return self.seen[-1].seq if self.seen else 0


async def connect(
    client: httpx.AsyncClient, reader: Reader | None, method: str, url: str, **kw: Any
) -> httpx.Response:
    """Send the request; on a 200 a task reads the stream into ``reader`` until it ends.

    Returns the response (its body read unless it is a 200 stream).
    """
    loop = asyncio.get_running_loop()
    started: asyncio.Future[httpx.Response] = loop.create_future()

    async def read() -> None:
        try:
            async with client.stream(method, url, **kw) as response:
                if response.status_code != 200 or reader is None:
                    await response.aread()
                    started.set_result(response)
                    return
                started.set_result(response)
                await _read_events(response, reader)
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    task = loop.create_task(read())
    response = await started
    if response.status_code == 200 and reader is not None:
        reader.task = task
        reader.connections += 1
    else:
        await task
    return response


async def _read_events(response: httpx.Response, reader: Reader) -> None:
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
        elif line == "" and data:
            text = "\n".join(data)
            data = []
            body = json.loads(text)
            reader.seen.append(Event(int(body["seq"]), str(body["type"]), text))
        # id:, event:, retry: and ": keep-alive" comments carry nothing the checks need


async def drop(reader: Reader) -> None:
    """Close the reader's connection now, as a client that goes away does."""
    task = reader.task
    assert task is not None
    task.cancel()
    await asyncio.wait([task])


# -- the model and its checks --------------------------------------------------------------


@dataclass
class RunModel:
    run_id: str
    principal: str
    token: int
    attached: bool
    last_seq: int = 1  # the ``run`` event
    end: str | None = None  # the terminal event it must end with

    @property
    def finished(self) -> bool:
        return self.end is not None

    def ends(self, end: str) -> None:
        self.end = end
        self.last_seq += 2  # the terminal state and ``done``


def check_events(
    readers: list[Reader], runs: list[RunModel], stored: dict[str, list[tuple[int, str, str]]]
) -> None:
    """Readers saw 1, 2, 3, … of what is stored; runs end as the model says."""
    for reader in readers:
        seen = [(e.seq, e.type, e.data) for e in reader.seen]
        assert [s for s, _, _ in seen] == list(range(1, len(seen) + 1)), seen
        kinds = [k for _, k, _ in seen]
        assert sum(k in TERMINAL for k in kinds) <= 1, kinds
        assert "done" not in kinds[:-1], kinds
        if reader.ended:
            assert kinds[-2] in TERMINAL, kinds
            assert seen == stored[reader.run_id], (reader.name, seen)
        else:
            assert seen == stored[reader.run_id][: len(seen)], (reader.name, seen)
    for run in runs:
        kinds = [k for _, k, _ in stored[run.run_id]]
        assert kinds[0] == "run"
        if run.finished:  # a detached run ends as its deployment or DELETE said
            assert kinds[-2:] == [run.end, "done"], (run, kinds)
        else:
            assert not TERMINAL & set(kinds), (run, kinds)


def assert_refused(response: httpx.Response, codes: set[str]) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["detail"]["error"] in codes, response.text
    assert int(response.headers["retry-after"]) >= 1
