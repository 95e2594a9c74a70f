"""Microseconds per event of each step of the package's hot path, next to the floor's.

    .venv/bin/python -m bench.micro

Each step runs on its own (``timeit``, best of 5), in one process, without a server: it
shows where the time of one event goes, not what a server achieves (``bench.run`` does).
"""

import asyncio
import json
import time
import timeit
import tracemalloc
from collections.abc import Callable
from typing import Any

import uvloop

from bench.servers import MESSAGE, log_lines, new_run_id, state_dict


def per_call_us(fn: Callable[[], Any], number: int = 20_000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    from fastapi_ikstream import MemoryRunStore, RunState, StreamingRun
    from fastapi_ikstream._store import StoredEvent
    from fastapi_ikstream._wire import sse_block
    from fastapi_ikstream.models import LogLine, Progress

    run_id = new_run_id()
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    rows: list[tuple[str, float]] = []

    def floor_event() -> bytes:
        data = dumps(state_dict(run_id, 7, 100, time.time()))
        return f"event: progress\ndata: {data}\nid: {run_id}:7\n\n".encode()

    rows.append(("floor: state dict + json.dumps + SSE block", per_call_us(floor_event)))

    kwargs = {
        "state": "STARTED",
        "eta": [800, 2500],
        "progress": {"current": 7.0, "total": 100.0},
        "logs": [{"ts": time.time(), "level": "INFO", "message": MESSAGE}],
    }
    state = RunState.model_validate(
        {**state_dict(run_id, 7, 100, time.time()), "status": "running"}
    )
    log_line = {"ts": time.time(), "level": "INFO", "message": MESSAGE}
    plain = {**state_dict(run_id, 7, 100, time.time()), "status": "running"}
    data = state.to_json()
    rows += [
        ("LogLine(**item) (validated)", per_call_us(lambda: LogLine(**log_line))),
        (
            "Progress.model_construct",
            per_call_us(lambda: Progress.model_construct(current=7.0, total=100.0)),
        ),
        (
            "RunState.model_construct (fields given)",
            per_call_us(
                lambda: RunState.model_construct(
                    type=state.type,
                    run_id=run_id,
                    seq=7,
                    status=state.status,
                    state="STARTED",
                    eta=(800, 2500),
                    progress=state.progress,
                    logs=state.logs,
                    partial_output=None,
                )
            ),
        ),
        (
            "RunState(**fields) (validated, same fields)",
            per_call_us(
                lambda: RunState(
                    type=state.type,
                    run_id=run_id,
                    seq=7,
                    status=state.status,
                    state="STARTED",
                    eta=(800, 2500),
                    progress=state.progress,
                    logs=state.logs,
                    partial_output=None,
                )
            ),
        ),
        (
            "RunState.model_validate(plain dict, nested models too)",
            per_call_us(lambda: RunState.model_validate(plain)),
        ),
        (
            "Progress(current=, total=) (validated)",
            per_call_us(lambda: Progress(current=7.0, total=100.0)),
        ),
        ("RunState.to_json (model_dump_json, exclude_none)", per_call_us(state.to_json)),
        ("StoredEvent.from_state", per_call_us(lambda: StoredEvent.from_state(state))),
        (
            "sse_block (f-string + encode of the JSON)",
            per_call_us(lambda: sse_block(data, "progress", f"{run_id}:7")),
        ),
    ]

    async def producer_path() -> float:
        store = MemoryRunStore(max_events_per_run=1_000_000)
        run = StreamingRun(lambda on_progress: None, run_id=run_id)
        await store.create_run(run_id, principal=None)
        run._sink = store.append  # what StreamingRun.start wires, without the task
        run._consumed = True
        return per_call_us(lambda: run.on_progress(**kwargs), number=50_000)

    rows.append(("on_progress(...) into a MemoryRunStore, whole", asyncio.run(producer_path())))
    five = {**kwargs, "logs": log_lines(time.time(), 5)}

    async def producer_path_five() -> float:
        store = MemoryRunStore(max_events_per_run=1_000_000)
        run = StreamingRun(lambda on_progress: None, run_id=new_run_id())
        await store.create_run(run.run_id, principal=None)
        run._sink = store.append
        run._consumed = True
        return per_call_us(lambda: run.on_progress(**five), number=50_000)

    rows.append(("the same, a ~512-byte state with 5 log lines", asyncio.run(producer_path_five())))
    rows.append(
        (
            "floor, the same 5-line state",
            per_call_us(
                lambda: (
                    f"event: progress\ndata: {dumps(state_dict(run_id, 7, 100, time.time(), 5))}"
                    f"\nid: {run_id}:7\n\n".encode()
                )
            ),
        )
    )

    from jose import jwt

    from bench.servers import JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET, bench_token

    token = bench_token()
    rows.append(
        (
            "python-jose jwt.decode (HS256), once per request",
            per_call_us(
                lambda: jwt.decode(
                    token,
                    JWT_SECRET,
                    algorithms=["HS256"],
                    audience=JWT_AUDIENCE,
                    issuer=JWT_ISSUER,
                ),
                number=2_000,
            ),
        )
    )
    rows.append(
        ("a sync `def` dependency's threadpool hop (FastAPI)", uvloop.run(threadpool_hop_us()))
    )
    for every in (1, 256):
        rows.append(
            (
                f"on_progress -> store -> reader task, {every} update(s) per loop turn",
                uvloop.run(run_to_reader_us(kwargs, every, 10.0)),
            )
        )
    width = max(len(label) for label, _ in rows)
    for label, us in rows:
        print(f"{label:<{width}}  {us:7.2f} us")
    kept = asyncio.run(stored_bytes(kwargs))
    print(f"{'memory per event kept in a MemoryRunStore':<{width}}  {kept:7.0f} B")
    held, events = asyncio.run(progress_only_hour())
    label = "1-hour progress-only run at 10/s (36,000 states), held"
    print(f"{label:<{width}}  {held / 1024:7.1f} KB in {events} events")


async def progress_only_hour(count: int = 36_000) -> tuple[int, int]:
    """Bytes a default `MemoryRunStore` holds (tracemalloc) for a run that only reports
    progress (no log lines), 10 states a second for an hour, and the events it keeps."""
    from fastapi_ikstream import MemoryRunStore, StreamingRun

    store = MemoryRunStore()
    run_id = new_run_id()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        await store.create_run(run_id, principal=None)
        run = StreamingRun(lambda on_progress: None, run_id=run_id)
        run._sink = store.append
        run._consumed = True
        for k in range(count):
            run.on_progress(state="STARTED", eta=[800, 2500], progress=(k, count))
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return held, len(store._runs[run_id].log.read_after(0) or [])


async def run_to_reader_us(
    kwargs: dict[str, Any], every: int, keep_alive: float | None, count: int = 50_000
) -> float:
    """Per progress event: ``on_progress`` in the run's task, through a `MemoryRunStore`, to
    a subscription's reader in another task (the router's path without HTTP); the run
    gives the loop a turn once per ``every`` updates."""
    from fastapi_ikstream import MemoryRunStore, StreamingRun

    async def source(on_progress: Callable[..., None]) -> None:
        for k in range(1, count + 1):
            on_progress(**kwargs)
            if k % every == 0:
                await asyncio.sleep(0)

    store = MemoryRunStore(max_events_per_run=count + 10)
    run = StreamingRun(source)
    await store.create_run(run.run_id, principal=None)
    started = time.perf_counter()
    run.start(store.append)
    subscription = store.subscribe(run.run_id, 0)
    while await subscription.next_batch(keep_alive) is not None:
        pass
    return (time.perf_counter() - started) / count * 1e6


async def threadpool_hop_us(count: int = 5_000) -> float:
    """FastAPI runs every plain ``def`` dependency through ``run_in_threadpool``."""
    from starlette.concurrency import run_in_threadpool

    def nothing() -> None:
        return None

    for _ in range(200):
        await run_in_threadpool(nothing)
    started = time.perf_counter()
    for _ in range(count):
        await run_in_threadpool(nothing)
    return (time.perf_counter() - started) / count * 1e6


async def stored_bytes(kwargs: dict[str, Any], count: int = 10_000) -> float:
    """Bytes a memory store holds per progress event of a running run (tracemalloc)."""
    from fastapi_ikstream import MemoryRunStore, StreamingRun

    store = MemoryRunStore(max_events_per_run=1_000_000)
    run_id = new_run_id()
    await store.create_run(run_id, principal=None)
    run = StreamingRun(lambda on_progress: None, run_id=run_id)
    run._sink = store.append
    run._consumed = True
    run.on_progress(**kwargs)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(count):
            run.on_progress(**kwargs)
        kept = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in kept.compare_to(before, "filename")) / count


if __name__ == "__main__":
    main()
