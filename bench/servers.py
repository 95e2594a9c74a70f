"""The servers under test, each run alone in its own process by ``bench.run``.

Every server streams the same progress states (~530 bytes of compact JSON each; see
`state_dict`) over SSE, ``n`` of them per stream, ``interval`` seconds apart (0: no pacing),
each carrying its ``seq`` and the wall-clock time it was made (``logs[0].ts``), so the load
generator can check order and measure delivery latency.

- ``floor``: a raw Starlette ``StreamingResponse`` with ``json.dumps`` per state.
- ``sse-starlette``: sse-starlette's ``EventSourceResponse``.
- ``fastapi``: FastAPI's native SSE (``response_class=EventSourceResponse`` on a typed
  async generator yielding a pydantic model).
- ``package``: fastapi-ikstream's real router path: ``create_router`` with the default
  request model, JWT bearer auth with a valid token, and a memory run store; ``POST
  /runs/stream`` runs a deployment that reports the same states through ``on_progress``.
- ``package-run``: fastapi-ikstream's ``StreamingRun(...).to_response()`` on a plain route.

Each process also answers ``GET /`` on a second port, from a thread of its own (so it
answers even when the event loop is saturated), with its garbage-collection totals.

Run one: ``python -m bench.servers NAME PORT STATS_PORT``.
"""

import asyncio
import contextlib
import gc
import json
import os
import resource
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

SERVERS = ("floor", "sse-starlette", "fastapi", "package", "package-run")
"""Names of the servers, in table order."""

JWT_SECRET = "bench-secret-" + "0" * 32
"""HS256 key of the package row's bearer auth (loopback benchmark only)."""
JWT_ISSUER = "bench"
JWT_AUDIENCE = "bench"

STREAM_PATH = "/stream"
"""Peers: ``GET /stream?n=…&interval=…``."""
PACKAGE_PATH = "/runs"
"""Package: ``POST /runs/stream`` with ``{"parameters": {"n": …, "interval": …}}``."""

MESSAGE = (
    (
        "tile 7 of 12 done: 2 faces, 14 keypoints, mean confidence 0.87; "
        "next tile queued on gpu 0 (batch 4, fp16); "
    )
    * 3
)[:303]
"""The log line every state carries; its length brings a state to ~530 bytes."""

LINES_MESSAGES = (
    "tile 7/12: 2 faces",
    "14 keypoints",
    "confidence 0.87",
    "next on gpu 0",
    "fp16, 31 ms",
)
"""With ``lines=5``, the five log lines of a state: ~512 bytes of JSON in all (the issue's
"realistic update": several short lines rather than one long one)."""

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def new_run_id() -> str:
    """A run id of the package's form: ``r_`` and 24 hex digits."""
    return "r_" + secrets.token_hex(12)


def log_lines(ts: float, lines: int = 1) -> list[dict[str, Any]]:
    """A state's log lines: one long line (``lines=1``, default) or the five short ones."""
    if lines == 1:
        return [{"ts": ts, "level": "INFO", "message": MESSAGE}]
    return [{"ts": ts, "level": "INFO", "message": m} for m in LINES_MESSAGES[:lines]]


def state_dict(run_id: str, seq: int, total: int, ts: float, lines: int = 1) -> dict[str, Any]:
    """One progress state, field for field what the package sends for the same update."""
    return {
        "type": "progress",
        "run_id": run_id,
        "seq": seq,
        "status": "running",
        "state": "STARTED",
        "eta": [800, 2500],
        "progress": {"current": float(seq), "total": float(total)},
        "logs": log_lines(ts, lines),
    }


YIELD_EVERY = 256
"""Without pacing, every source gives the loop a turn once per this many states (default)."""


async def ticks(
    n: int, interval: float, start: float = 0.0, every: int = YIELD_EVERY
) -> AsyncIterator[int]:
    """Yield 1 … n, the first at ``start`` (Unix time; 0: at once), then every ``interval`` s.

    Every server's states come from this generator. ``start`` lets many streams opened one
    after another begin together. With ``interval`` > 0, tick k is due ``(k - 1) *
    interval`` after tick 1; deadlines are absolute, so a slow server falls behind rather
    than drifting.

    Without pacing, it awaits ``asyncio.sleep(0)`` once per ``every`` ticks. Some turn is
    needed: a generator that never awaits keeps a Starlette stream running after its client
    has gone (uvicorn drops writes to a closed connection without an error, so only the
    disconnect listener, which needs a loop turn, can stop it), and a package deployment
    that never awaits writes its whole run into the store before any reader runs. ``every=1``
    models a deployment whose updates each arrive on their own loop turn (from the network).
    """
    if start > 0 and (wait := start - time.time()) > 0:
        await asyncio.sleep(wait)
    loop = asyncio.get_running_loop()
    first = loop.time()
    for k in range(1, n + 1):
        if interval > 0:
            if k > 1:
                delay = first + (k - 1) * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
        elif k % every == 0:
            await asyncio.sleep(0)
        yield k


def _params(request: Request) -> tuple[int, float, float, int, int]:
    query = request.query_params
    return (
        int(query.get("n", "10")),
        float(query.get("interval", "0")),
        float(query.get("start", "0")),
        int(query.get("every", str(YIELD_EVERY))),
        int(query.get("lines", "1")),
    )


# -- GC accounting -----------------------------------------------------------------------


class GCStats:
    """Collections and time spent in the cyclic garbage collector, per generation."""

    def __init__(self) -> None:
        self.time = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self.max_pause = 0.0
        self._start = 0.0

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        elapsed = time.perf_counter() - self._start
        gen = info["generation"]
        self.time[gen] += elapsed
        self.count[gen] += 1
        self.max_pause = max(self.max_pause, elapsed)

    def snapshot(self) -> dict[str, Any]:
        return {
            "gc_time_s": list(self.time),
            "gc_count": list(self.count),
            "gc_max_pause_s": self.max_pause,
            "gc_threshold": list(gc.get_threshold()),
            "cpu_s": time.process_time(),
            "pid": os.getpid(),
        }


GC_STATS = GCStats()


def tracked_objects(top: int = 40) -> dict[str, Any]:
    """The objects the cyclic GC tracks, counted by type (stops the process while it counts)."""
    counts: dict[str, int] = {}
    objects = gc.get_objects()
    for obj in objects:
        name = type(obj).__qualname__
        counts[name] = counts.get(name, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
    return {"total": len(objects), "by_type": dict(ranked)}


class _StatsHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        snapshot = tracked_objects() if self.path == "/objects" else GC_STATS.snapshot()
        body = json.dumps(snapshot).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_stats(port: int) -> None:
    """Answer ``GET /`` on 127.0.0.1:``port`` from a daemon thread: `GCStats.snapshot`.

    ``GET /objects`` answers `tracked_objects` instead (used by ``bench.profile``).
    """
    server = HTTPServer(("127.0.0.1", port), _StatsHandler)
    threading.Thread(target=server.serve_forever, name="bench-stats", daemon=True).start()


# -- the floor ---------------------------------------------------------------------------


def floor_app() -> Starlette:
    """Starlette ``StreamingResponse``, one ``json.dumps`` and one f-string per state."""
    dumps = json.JSONEncoder(separators=(",", ":")).encode

    async def stream(request: Request) -> Response:
        n, interval, start, every, lines = _params(request)
        run_id = new_run_id()

        async def body() -> AsyncIterator[bytes]:
            async for k in ticks(n, interval, start, every):
                data = dumps(state_dict(run_id, k, n, time.time(), lines))
                yield f"event: progress\ndata: {data}\nid: {run_id}:{k}\n\n".encode()

        return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)

    return Starlette(routes=[Route(STREAM_PATH, stream)])


# -- sse-starlette -----------------------------------------------------------------------


def sse_starlette_app() -> Starlette:
    """sse-starlette's ``EventSourceResponse`` fed dicts (its documented form), LF line ends."""
    from sse_starlette import EventSourceResponse

    dumps = json.JSONEncoder(separators=(",", ":")).encode

    async def stream(request: Request) -> Response:
        n, interval, start, every, lines = _params(request)
        run_id = new_run_id()

        async def events() -> AsyncIterator[dict[str, str]]:
            async for k in ticks(n, interval, start, every):
                data = dumps(state_dict(run_id, k, n, time.time(), lines))
                yield {"event": "progress", "data": data, "id": f"{run_id}:{k}"}

        return EventSourceResponse(events(), sep="\n", headers={"X-Accel-Buffering": "no"})

    return Starlette(routes=[Route(STREAM_PATH, stream)])


# -- FastAPI native SSE ------------------------------------------------------------------


def fastapi_app() -> Any:
    """FastAPI's ``response_class=EventSourceResponse`` on a typed generator of models."""
    from fastapi import FastAPI
    from fastapi.sse import EventSourceResponse
    from pydantic import BaseModel

    class BenchProgress(BaseModel):
        current: float
        total: float

    class BenchLog(BaseModel):
        ts: float
        level: str
        message: str

    class BenchState(BaseModel):
        type: str
        run_id: str
        seq: int
        status: str
        state: str
        eta: tuple[int, int]
        progress: BenchProgress
        logs: list[BenchLog]

    app = FastAPI()

    @app.get(STREAM_PATH, response_class=EventSourceResponse)
    async def stream(
        n: int = 10,
        interval: float = 0.0,
        start: float = 0.0,
        every: int = YIELD_EVERY,
        lines: int = 1,
    ) -> AsyncIterable[BenchState]:
        run_id = new_run_id()
        async for k in ticks(n, interval, start, every):
            yield BenchState(**state_dict(run_id, k, n, time.time(), lines))

    return app


# -- the package ---------------------------------------------------------------------------


async def package_run_fn(inputs: Any, parameters: Any, on_progress: Callable[..., None]) -> Any:
    """The package rows' deployment: the same states, reported through ``on_progress``."""
    n = int(parameters.get("n", 10))
    interval = float(parameters.get("interval", 0.0))
    start = float(parameters.get("start", 0.0))
    every = int(parameters.get("every", YIELD_EVERY))
    lines = int(parameters.get("lines", 1))
    eta = [800, 2500]
    async for k in ticks(n, interval, start, every):
        on_progress(
            state="STARTED",
            eta=eta,
            progress={"current": float(k), "total": float(n)},
            logs=log_lines(time.time(), lines),
        )
    return [{"DATA_DICT": {"tiles": n}}]


def bench_token() -> str:
    """A valid HS256 bearer token for the package row."""
    from jose import jwt

    claims = {
        "sub": "bench",
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "exp": int(time.time()) + 86400,
    }
    return str(jwt.encode(claims, JWT_SECRET, algorithm="HS256"))


def package_auth() -> Any:
    """The package's JWT bearer dependency, configured for `bench_token`."""
    from fastapi_ikstream.security import JWTBearer

    return JWTBearer(
        secret=JWT_SECRET, algorithms=["HS256"], issuer=JWT_ISSUER, audience=JWT_AUDIENCE
    )


def package_app() -> Any:
    """fastapi-ikstream's router: request model, JWT auth, memory store, ``POST /runs/stream``."""
    from fastapi import FastAPI

    from fastapi_ikstream import (
        CallableDeployment,
        MemoryRunStore,
        Quotas,
        RunRequest,
        create_router,
    )

    store = MemoryRunStore(max_runs=20_000)
    if os.environ.get("BENCH_STORE_MAX_EVENTS"):  # experiments only
        store = MemoryRunStore(
            max_runs=20_000, max_events_per_run=int(os.environ["BENCH_STORE_MAX_EVENTS"])
        )
    router = create_router(
        CallableDeployment(package_run_fn, name="bench"),
        path=PACKAGE_PATH,
        request_model=RunRequest,
        auth=package_auth(),
        store=store,
        # Every stream of the load comes from one principal (one token): its per-caller
        # quotas would refuse the load, which models many callers.
        quotas=Quotas(runs=None, streams=None, resumes=None),
        # The load generator never reconnects, and the peers stop producing as soon as their
        # client goes: with the default 30 s grace, the unpaced 10-million-state runs of one
        # measurement would go on producing for nobody through the next ones.
        reconnect_grace=0,
    )
    app = FastAPI()
    app.include_router(router)
    return app


def package_run_app() -> Any:
    """fastapi-ikstream's ``StreamingRun(...).to_response()`` on a plain FastAPI route."""
    from fastapi import FastAPI

    from fastapi_ikstream import StreamingRun

    app = FastAPI()

    @app.get(STREAM_PATH)
    async def stream(
        n: int = 10,
        interval: float = 0.0,
        start: float = 0.0,
        every: int = YIELD_EVERY,
        lines: int = 1,
    ) -> Response:
        params = {"n": n, "interval": interval, "start": start, "every": every, "lines": lines}
        run = StreamingRun(lambda on_progress: package_run_fn(None, params, on_progress))
        return run.to_response()

    return app


APPS: dict[str, Callable[[], Any]] = {
    "floor": floor_app,
    "sse-starlette": sse_starlette_app,
    "fastapi": fastapi_app,
    "package": package_app,
    "package-run": package_run_app,
}


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str]) -> None:
    """``python -m bench.servers NAME PORT STATS_PORT``: serve on 127.0.0.1 until SIGTERM."""
    name, port, stats_port = argv[0], int(argv[1]), int(argv[2])
    raise_nofile()
    gc.callbacks.append(GC_STATS.callback)
    if os.environ.get("BENCH_GC_DEBUG"):
        gc.set_debug(gc.DEBUG_STATS)  # every collection's sizes and time, on stderr
    serve_stats(stats_port)
    app = APPS[name]()
    tune_gc(os.environ.get("BENCH_GC", ""))
    profile = os.environ.get("BENCH_PROFILE")  # "pyinstrument:PATH" or "cprofile:PATH"
    if profile:
        kind, _, path = profile.partition(":")
        with profiled(kind, path):
            serve(app, port)
    else:
        serve(app, port)


def tune_gc(spec: str) -> None:
    """Experiments only (the benchmark runs with Python's defaults): ``BENCH_GC`` is
    ``freeze`` (``gc.freeze()`` once the app is built), ``threshold:A,B,C``
    (``gc.set_threshold``), or both joined by ``+``.
    """
    for part in filter(None, spec.split("+")):
        if part == "freeze":
            gc.collect()
            gc.freeze()
        elif part.startswith("threshold:"):
            a, b, c = (int(x) for x in part.removeprefix("threshold:").split(","))
            gc.set_threshold(a, b, c)
        else:
            raise SystemExit(f"BENCH_GC: unknown {part!r}")


@contextlib.contextmanager
def profiled(kind: str, path: str) -> Iterator[None]:
    """Profile the block with pyinstrument (text report) or cProfile (pstats dump) into ``path``."""
    if kind == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
        try:
            yield
        finally:
            profiler.stop()
            with open(path, "w") as f:
                f.write(profiler.output_text(unicode=False, color=False, show_all=False))
        return
    import cProfile

    cprofiler = cProfile.Profile()
    cprofiler.enable()
    try:
        yield
    finally:
        cprofiler.disable()
        cprofiler.dump_stats(path)


def serve(app: Any, port: int) -> None:
    """uvicorn on 127.0.0.1: uvloop, httptools, one worker, no access log; until SIGTERM."""
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
