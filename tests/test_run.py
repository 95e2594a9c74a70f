"""StreamingRun: run functions, generators, options, faults and cancellation."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import weakref
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from fastapi_ikstream import DeploymentError, EventType, RunFailedError, RunStatus, StreamingRun
from fastapi_ikstream.errors import RunCancelledError, StreamConsumedError


def ikclient_like(results, *, fail=False):
    """A run function calling on_progress exactly as ikclient's AsyncClient does."""

    async def run(on_progress):
        kw = {"run_id": "0a1b2c3d4e5f", "name": "wf"}
        on_progress(**kw, uuid=None, state="BLOCKING", eta=(None, None))
        on_progress(**kw, uuid=None, state="SENDING", eta=(None, None))
        on_progress(**kw, uuid="u1", state="PENDING", eta=(1500, 4000))
        await asyncio.sleep(0)
        on_progress(**kw, uuid="u1", state="STARTED", eta=(800, 2500))
        if fail:
            on_progress(**kw, uuid="u1", state="FAILURE", eta=(0, 0))
            raise DeploymentError("the workflow failed: bad image", code="upstream_failed")
        on_progress(**kw, uuid="u1", state="SUCCESS", eta=(0, 0), results=results)
        return results

    return run


async def collect(run):
    return [state async for state in run.aiter_states()]


async def test_ikclient_callback_form_maps_states_and_results():
    results = [{"image": "AAAA"}, {"DATA_DICT": {"faces": 2}}]
    states = await collect(StreamingRun(ikclient_like(results)))
    assert [s.type for s in states] == [
        EventType.RUN,
        EventType.PROGRESS,
        EventType.PROGRESS,
        EventType.PROGRESS,
        EventType.PROGRESS,
        EventType.RESULT,
        EventType.DONE,
    ]
    assert [s.seq for s in states] == list(range(1, 8))
    assert [s.state for s in states[1:5]] == ["BLOCKING", "SENDING", "PENDING", "STARTED"]
    assert [s.status for s in states[1:5]] == [
        RunStatus.QUEUED,
        RunStatus.SCHEDULED,
        RunStatus.QUEUED,
        RunStatus.RUNNING,
    ]
    assert states[3].eta == (1500, 4000)
    assert states[5].results == results
    assert states[5].state == "SUCCESS"
    assert states[5].eta == (0, 0)
    assert states[-1].status is RunStatus.COMPLETED
    assert len({s.run_id for s in states}) == 1
    assert states[0].run_id.startswith("r_")
    assert len(states[0].run_id) == 26


async def test_dict_form_and_async_generator_form():
    async def gen():
        yield {"status": "preparing", "logs": ["loading"]}
        yield {"progress": {"current": 1, "total": 3}, "state": "RUNNING"}
        yield {"logs": [{"level": "WARNING", "message": "slow"}]}
        yield {"partial_output": {"text": "hel"}}
        yield {"results": [{"DATA_DICT": {"text": "hello"}}]}

    states = await collect(StreamingRun(gen()))
    kinds = [s.type for s in states]
    assert kinds == ["run", "progress", "progress", "log", "partial", "result", "done"]
    assert states[1].status is RunStatus.PREPARING
    assert states[1].logs[0].message == "loading"
    assert states[2].progress.current == 1
    assert states[2].progress.total == 3
    assert states[3].logs[0].level == "WARNING"
    assert states[4].partial_output == {"text": "hel"}

    def positional(on_progress):
        on_progress({"state": "STARTED", "eta": [10, 20]})

        async def finish():
            return {"results": [{"image": "QUJD"}]}

        return finish()

    states = await collect(StreamingRun(positional))
    assert states[1].eta == (10, 20)
    assert states[-2].results == [{"image": "QUJD"}]


async def test_consumed_once():
    run = StreamingRun(ikclient_like([]))
    await collect(run)
    with pytest.raises(StreamConsumedError):
        await collect(run)
    with pytest.raises(StreamConsumedError):
        run.to_response()
    with pytest.raises(RuntimeError):  # StreamConsumedError is also a RuntimeError
        [b async for b in run.aiter_sse()]


async def test_failure_yields_failed_then_done_then_raises():
    run = StreamingRun(ikclient_like([], fail=True))
    seen = []

    async def read() -> None:
        async for state in run.aiter_states():
            seen.append(state)

    with pytest.raises(RunFailedError) as info:
        await read()
    assert [s.type for s in seen[-2:]] == ["failed", "done"]
    failed = seen[-2]
    assert failed.error is not None
    assert failed.error.code == "upstream_failed"
    assert failed.error.message == "the workflow failed: bad image"
    assert failed.state == "FAILURE"
    assert info.value.state == failed
    assert not any(s.status is RunStatus.FAILED for s in seen if s.type == "progress")


async def test_raise_on_error_false_and_unexpected_exception_is_sanitized(caplog):
    secret = "sk-live-123456"

    async def broken(on_progress):
        on_progress(state="STARTED")
        raise RuntimeError(f"cannot reach https://user:{secret}@host/")

    with caplog.at_level(logging.ERROR, logger="fastapi_ikstream"):
        states = await collect(StreamingRun(broken, raise_on_error=False))
    failed = states[-2]
    assert failed.type == "failed"
    assert states[-1].type == "done"
    assert failed.error.code == "deployment_error"
    assert secret not in failed.to_json()
    assert "Traceback" not in failed.to_json()
    assert secret in caplog.text  # the details go to the server log


async def test_timeout_ends_with_failed_timeout():
    async def hung(on_progress):
        await asyncio.sleep(30)

    started = time.monotonic()
    states = await collect(StreamingRun(hung, timeout=0.2, raise_on_error=False))
    assert time.monotonic() - started < 2
    assert states[-2].error.code == "timeout"
    assert states[-2].error.retryable
    assert states[-1].type == "done"
    assert states[-1].status is RunStatus.FAILED


async def test_inner_timeout_error_is_not_reported_as_our_timeout():
    async def inner(on_progress):
        await asyncio.wait_for(asyncio.sleep(1), 0.01)

    states = await collect(StreamingRun(inner, raise_on_error=False))
    assert states[-2].error.code == "deployment_error"


async def test_include_inputs_on_result_only_when_asked():
    inputs = [{"image": "QUJD"}]
    states = await collect(StreamingRun(ikclient_like([]), inputs=inputs, include_inputs=True))
    assert states[-2].inputs == inputs
    states = await collect(StreamingRun(ikclient_like([]), inputs=inputs))
    assert all(s.inputs is None for s in states)


async def test_cancel_ends_with_cancelled_and_done():
    started = asyncio.Event()

    async def long(on_progress):
        on_progress(state="STARTED")
        started.set()
        await asyncio.sleep(30)

    run = StreamingRun(long)

    async def cancel_soon():
        await started.wait()
        run.cancel("stopped by the user")

    seen = []
    canceller = asyncio.create_task(cancel_soon())

    async def read() -> None:
        async for state in run.aiter_states():
            seen.append(state)

    with pytest.raises(RunCancelledError):
        await read()
    await canceller
    assert [s.type for s in seen[-2:]] == ["cancelled", "done"]
    assert seen[-2].error is not None
    assert seen[-2].error.message == "stopped by the user"


async def test_consumer_that_stops_cancels_the_deployment():
    cancelled = asyncio.Event()

    async def long(on_progress):
        try:
            for i in range(1000):
                on_progress(progress=(i, 1000))
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    run = StreamingRun(long)
    agen = run.aiter_states()
    async for state in agen:
        if state.seq == 3:
            break
    await agen.aclose()  # type: ignore[attr-defined]  # an async generator, typed as an iterator
    await asyncio.wait_for(cancelled.wait(), 1)
    assert run.task is not None
    assert run.task.done()


async def test_slow_reader_is_bounded_and_told_of_the_gap():
    """A sync on_progress flood cannot grow memory without bound: the reader gets `reset`."""

    async def flood(on_progress):
        for i in range(5000):
            on_progress(progress=(i, 5000))
        await asyncio.sleep(0)
        return []

    run = StreamingRun(flood, max_events=100)
    rest = [s async for s in run.aiter_states()]  # the flood is produced before the first read
    assert rest[0].type == "reset"
    assert rest[0].first_seq is not None
    assert rest[0].first_seq > 2
    assert rest[0].seq == rest[0].first_seq - 1
    seqs = [s.seq for s in rest[1:]]
    assert seqs == list(range(rest[0].first_seq, rest[0].first_seq + len(seqs)))
    assert len(seqs) <= 125
    assert rest[-1].type == "done"


async def test_sse_and_jsonl_bytes():
    sse = b"".join([b async for b in StreamingRun(ikclient_like([])).aiter_sse()])
    assert sse.startswith(b"event: run\ndata: {")
    assert b"\nretry: 3000\n\n" in sse.split(b"\n\n", 1)[0] + b"\n\n"
    assert sse.count(b"retry:") == 1
    assert sse.endswith(b"\n\n")
    assert b"event: done\n" in sse
    lines = b"".join([b async for b in StreamingRun(ikclient_like([])).aiter_jsonl()]).splitlines()
    assert [line.split(b'"type":"')[1].split(b'"')[0] for line in lines][-2:] == [
        b"result",
        b"done",
    ]


async def test_to_response_headers_and_jsonl_negotiation():
    app = FastAPI()

    @app.get("/r")
    async def endpoint(request: Request):
        return StreamingRun(ikclient_like([])).to_response(
            headers={"X-Custom": "v"}, accept=request.headers.get("accept")
        )

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        response = await client.get("/r")
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["x-custom"] == "v"
        assert "content-encoding" not in response.headers
        assert "content-length" not in response.headers
        response = await client.get("/r", headers={"accept": "application/x-ndjson"})
        assert response.headers["content-type"].startswith("application/x-ndjson")
        assert response.text.splitlines()[-1].startswith('{"type":"done"')


async def test_disconnect_cancels_deployment_within_one_second(serve_app):
    cancelled_at: list[float] = []
    tasks: list[asyncio.Task[Any]] = []

    async def long(on_progress):
        task = asyncio.current_task()  # the run's own task
        assert task is not None
        tasks.append(task)
        try:
            for i in range(10_000):
                on_progress(progress=(i, 10_000))
                await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            cancelled_at.append(time.monotonic())
            raise

    runs: list[weakref.ref[StreamingRun]] = []
    app = FastAPI()

    @app.get("/run")
    async def endpoint():
        run = StreamingRun(long)
        runs.append(weakref.ref(run))
        return run.to_response()

    with serve_app(app) as server:
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream("GET", server.url + "/run") as response:
                async for chunk in response.aiter_bytes():
                    if chunk.count(b"event: progress") >= 1:
                        break
            dropped = time.monotonic()
        for _ in range(300):  # the deployment runs on the server's own loop, in its thread
            if cancelled_at:
                break
            await asyncio.sleep(0.01)
        assert cancelled_at, "the deployment never saw the cancellation"
        assert cancelled_at[0] - dropped < 1.0
        # nothing is left behind: the run's task ends and the run itself is freed
        task = tasks[0]
        for _ in range(100):
            if task.done():
                break
            await asyncio.sleep(0.01)
        assert task.done()
        tasks.clear()
        del task
        gc.collect()
        assert runs[0]() is None, "the run is still referenced after its stream ended"
