"""The Python client against real uvicorn servers: states, results, timeouts, errors, reconnects."""

import asyncio
import base64
import io
import subprocess
import sys
import time
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ikclient.core.io import ImageIO
from PIL import Image
from proxy import CuttingProxy
from pydantic import BaseModel

from fastapi_ikstream import (
    DeploymentError,
    EventType,
    RunFailedError,
    RunState,
    RunStatus,
    StreamingRun,
    create_router,
)
from fastapi_ikstream.client import (
    ImageOutput,
    Results,
    StorageObjectOutput,
    StreamConnectionError,
    StreamHTTPError,
    StreamProtocolError,
    StreamResumeError,
    StreamTimeoutError,
    StreamTimeoutWarning,
    aconnect_states,
    connect_states,
    process_json_stream,
    process_json_stream_sync,
    process_streaming_response,
    process_streaming_response_sync,
)
from fastapi_ikstream.errors import RunCancelledError, StreamConsumedError
from fastapi_ikstream.wire import encode_sse

pytestmark = pytest.mark.timeout(30)

TIMEOUT = httpx.Timeout(5.0, read=20.0)


def encode_image(fmt: str, size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 40)).save(buffer, fmt)
    return buffer.getvalue()


PNG = encode_image("PNG")
PNG_B64 = base64.b64encode(PNG).decode()
DETECTION = {
    "detections": [
        {
            "box": {"x": 1, "y": 2, "width": 3, "height": 4},
            "color": {"r": 255, "g": 0, "b": 0, "a": 255},
            "confidence": 0.9,
            "id": 0,
            "label": "face",
        }
    ],
    "referenceImageIndex": 0,
}
OUTPUTS: list[dict[str, Any]] = [
    {"image": PNG_B64},
    {"DATA_DICT": {"faces": 2}},
    {"OBJECT_DETECTION": DETECTION},
    {"storage_object": {"url": "https://storage.example/o/1", "data_type": "image"}},
]


class Job(BaseModel):
    steps: int = 3
    delay: float = 0.01
    silent: float = 0.0
    fail: bool = False
    cancel: bool = False


def make_app(*, keep_alive: float = 10.0, retry: int | None = 3000) -> FastAPI:
    """An app streaming a job through StreamingRun.to_response, plus raw endpoints."""
    app = FastAPI()
    app.state.seen_auth = []

    @app.post("/stream")
    async def stream(job: Job, request: Request) -> Any:
        async def run_job(on_progress: Any) -> list[dict[str, Any]]:
            for step in range(job.steps):
                on_progress(
                    state="STARTED",
                    eta=[100 * (job.steps - step), 300 * (job.steps - step)],
                    progress={"current": step + 1, "total": job.steps},
                )
                await asyncio.sleep(job.delay)
            await asyncio.sleep(job.silent)
            on_progress(log={"level": "INFO", "message": "faces: 2"})
            if job.fail:
                raise DeploymentError("no face in the image", code="no_faces")
            if job.cancel:
                asyncio.get_running_loop().call_soon(run.cancel, "stopped by the operator")
                await asyncio.sleep(5)
            return OUTPUTS

        run = StreamingRun(run_job, keep_alive=keep_alive, retry=retry)
        return run.to_response(accept=request.headers.get("accept"))

    @app.post("/guarded")
    async def guarded(request: Request) -> Any:
        app.state.seen_auth.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != "Bearer good":
            raise HTTPException(401, detail="Missing or bad token.")
        raise HTTPException(429, detail="Too many runs.", headers={"Retry-After": "7"})

    @app.post("/final")
    async def final() -> Any:
        return JSONResponse({"type": "result", "run_id": "r_x", "seq": 2, "results": []})

    @app.post("/raw")
    async def raw() -> Any:
        state = RunState(type=EventType.RUN, run_id="r_raw", seq=1, status=RunStatus.RECEIVED)
        result = RunState(
            type=EventType.RESULT, run_id="r_raw", seq=2, status="completed", results=OUTPUTS[1:2]
        )
        done = RunState(type=EventType.DONE, run_id="r_raw", seq=3, status="completed")
        blocks = [
            b": a comment, then a blank line: an empty event for httpx-sse\n\n",
            encode_sse(state),
            b"id: r_raw:1\n\n",  # id only: an empty event once an id was seen
            b"data:\n\n",  # empty data
            b": keep-alive\n",
            encode_sse(state),  # a repeat: skipped by seq
            encode_sse(result),
            encode_sse(done),
        ]

        async def body() -> Any:
            for block in blocks:
                yield block

        return StreamingResponse(body(), media_type="text/event-stream")

    return app


def flaky_app(mode: str, *, cut: int = 3, retry: int = 20) -> FastAPI:
    """A hand-made resumable server whose first connection drops after ``cut`` events.

    mode ``error`` breaks the connection (the body is cut mid-chunk), ``end`` ends the body
    before ``done``; on a reconnect (``Last-Event-ID``) it resends from the last seen event
    (a duplicate the client must skip). ``trickle`` resends it and one new event, then breaks
    again; ``always`` resends only it, then breaks; ``other-run`` answers with another run,
    ``gone`` with 404, ``no-content`` with 204.
    """
    app = FastAPI()
    app.state.last_event_ids = []
    run_id = "r_flaky"
    states = [
        RunState(type=EventType.RUN, run_id=run_id, seq=1, status=RunStatus.RECEIVED),
        *[
            RunState(
                type=EventType.PROGRESS,
                run_id=run_id,
                seq=seq,
                status=RunStatus.RUNNING,
                progress={"current": seq - 1, "total": 3},
            )
            for seq in (2, 3, 4)
        ],
        RunState(type=EventType.RESULT, run_id=run_id, seq=5, status="completed", results=OUTPUTS),
        RunState(type=EventType.DONE, run_id=run_id, seq=6, status="completed"),
    ]

    @app.post("/flaky")
    async def flaky(request: Request, body: dict[str, Any]) -> Any:
        last = request.headers.get("last-event-id")
        app.state.last_event_ids.append(last)
        drop = last is None or mode in ("always", "trickle")
        if last is None:
            events = states[:cut]
        elif mode == "gone":
            return JSONResponse({"detail": "No such run."}, status_code=404)
        elif mode == "no-content":
            return JSONResponse(None, status_code=204)
        elif mode == "other-run":
            events = [state.model_copy(update={"run_id": "r_other"}) for state in states]
        else:
            seen = int(last.rpartition(":")[2])
            end = {"always": seen, "trickle": seen + 1}.get(mode, len(states))
            events = states[seen - 1 : end]

        async def gen() -> Any:
            for index, state in enumerate(events):
                yield encode_sse(state, retry=retry if index == 0 else None)
                await asyncio.sleep(0.005)
            if drop and mode in ("error", "always", "trickle"):
                raise RuntimeError("connection broken on purpose")

        return StreamingResponse(gen(), media_type="text/event-stream")

    return app


def check_results(results: Results) -> None:
    assert len(results) == 4
    image = results.get_output(0)
    assert isinstance(image, ImageOutput)
    assert image.to_bytes() == PNG
    assert image.mime == "image/png"
    assert image.data_url == "data:image/png;base64," + PNG_B64
    assert image.to_pil().size == (8, 6)
    assert results.get_output(1) == {"DATA_DICT": {"faces": 2}}
    assert results.get_output(2) == {"OBJECT_DETECTION": DETECTION}
    storage = results.get_output(3)
    assert isinstance(storage, StorageObjectOutput)
    assert (storage.url, storage.data_type) == ("https://storage.example/o/1", "image")
    assert [type(out) for out in results] == [ImageOutput, dict, dict, StorageObjectOutput]
    assert results.state.type is EventType.RESULT
    assert results.state.status is RunStatus.COMPLETED


def check_order(states: list[RunState]) -> None:
    kinds = [state.type.value for state in states]
    assert kinds == ["run", "progress", "progress", "progress", "log", "result", "done"]
    seqs = [state.seq for state in states]
    assert seqs == list(range(1, len(states) + 1))
    assert len({state.run_id for state in states}) == 1
    progress = [state.progress.current for state in states if state.progress is not None]
    assert progress == [1, 2, 3]
    assert states[1].eta == (300, 900)
    assert states[4].logs is not None
    assert states[4].logs[0].message == "faces: 2"


# -- happy paths --------------------------------------------------------------------------


async def test_process_streaming_response_gives_states_in_order_and_decoded_results(serve_app):
    states: list[RunState] = []
    with serve_app(make_app()) as server:
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            results = await process_streaming_response(
                http.stream("POST", server.url + "/stream", json={}), on_progress=states.append
            )
    check_order(states)
    check_results(results)
    assert results.run_id == states[0].run_id


async def test_async_on_progress_is_awaited_and_an_open_response_is_accepted(serve_app):
    seen: list[int] = []

    async def on_progress(state: RunState) -> None:
        await asyncio.sleep(0)
        seen.append(state.seq)

    with serve_app(make_app()) as server:
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            request = http.build_request("POST", server.url + "/stream", json={})
            response = await http.send(request, stream=True)
            results = await process_streaming_response(response, on_progress)
            assert response.is_closed
    assert seen == list(range(1, 8))
    assert len(results) == 4


def test_sync_twin_and_connect_states(serve_app):
    states: list[RunState] = []
    with serve_app(make_app()) as server, httpx.Client(timeout=TIMEOUT) as http:
        results = process_streaming_response_sync(
            http.stream("POST", server.url + "/stream", json={}), states.append
        )
        check_order(states)
        check_results(results)
        with connect_states(http, "POST", server.url + "/stream", json={"steps": 2}) as stream:
            kinds = [state.type.value for state in stream.iter_states()]
            assert stream.results().get_output(1) == {"DATA_DICT": {"faces": 2}}
            with pytest.raises(StreamConsumedError):
                next(stream.iter_states())
    assert kinds == ["run", "progress", "progress", "log", "result", "done"]


async def test_aconnect_states_yields_typed_states_and_skips_keep_alives(serve_app):
    app = make_app(keep_alive=0.02)
    body = {"steps": 2, "delay": 0.1}
    with serve_app(app) as server:
        url = server.url + "/stream"
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            raw = await http.post(url, json=body)
            assert b"\n: keep-alive\n" in raw.content  # the server did send keep-alives
            async with aconnect_states(http, "POST", url, json=body) as stream:
                assert stream.response.request.headers["accept"] == "text/event-stream"
                states = [state async for state in stream.aiter_states()]
    assert all(isinstance(state, RunState) for state in states)
    assert [state.type.value for state in states] == [
        "run",
        "progress",
        "progress",
        "log",
        "result",
        "done",
    ]
    assert stream.last_event_id == f"{states[0].run_id}:6"
    assert stream.reconnects == 0


async def test_empty_events_comments_and_repeats_are_ignored(serve_app):
    with serve_app(make_app()) as server:
        async with (
            asyncio.timeout(10),
            httpx.AsyncClient(timeout=TIMEOUT) as http,
            aconnect_states(http, "POST", server.url + "/raw") as stream,
        ):
            seqs = [state.seq async for state in stream.aiter_states()]
    assert seqs == [1, 2, 3]
    assert stream.results().get_output(0) == {"DATA_DICT": {"faces": 2}}


JSONL = {"Accept": "application/jsonl"}


async def test_json_lines(serve_app):
    app = make_app(keep_alive=0.02)
    body = {"steps": 2, "delay": 0.06}
    with serve_app(app) as server:
        url = server.url + "/stream"
        headers = JSONL
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            raw = await http.post(url, json=body, headers=headers)
            assert raw.headers["content-type"].startswith("application/jsonl")
            assert b'\n{"type":"keepalive"}\n' in raw.content
            states: list[RunState] = []
            results = await process_json_stream(
                http.stream("POST", url, json=body, headers=headers), states.append
            )
            async with aconnect_states(http, "POST", url, json=body, jsonl=True) as stream:
                assert stream.response.headers["content-type"].startswith("application/jsonl")
                kinds = [state.type.value async for state in stream.aiter_states()]
    assert [state.type.value for state in states] == kinds
    assert kinds == ["run", "progress", "progress", "log", "result", "done"]
    check_results(results)


def test_json_lines_sync(serve_app):
    with serve_app(make_app()) as server, httpx.Client(timeout=TIMEOUT) as http:
        url = server.url + "/stream"
        results = process_json_stream_sync(http.stream("POST", url, json={}, headers=JSONL))
        with connect_states(http, "POST", url, json={}, jsonl=True) as stream:
            assert stream.response.headers["content-type"].startswith("application/jsonl")
            seqs = [state.seq for state in stream.iter_states()]
    check_results(results)
    assert seqs == list(range(1, 8))


async def test_process_json_stream_reads_iterables_of_states():
    states = [
        {"type": "run", "run_id": "r_1", "seq": 1, "status": "received"},
        '{"type":"keepalive"}',
        b'{"type":"progress","run_id":"r_1","seq":2,"progress":{"current":1,"total":2}}',
        RunState(type=EventType.RESULT, run_id="r_1", seq=3, results=OUTPUTS[:1]),
        {"type": "done", "run_id": "r_1", "seq": 4, "status": "completed"},
    ]

    async def agen() -> Any:
        for item in states:
            yield item

    seen: list[int] = []
    results = await process_json_stream(agen(), lambda s: seen.append(s.seq))
    assert seen == [1, 2, 3, 4]
    assert isinstance(results.get_output(0), ImageOutput)
    assert len(process_json_stream_sync(states)) == 1

    failed = [
        states[0],
        {
            "type": "failed",
            "run_id": "r_1",
            "seq": 2,
            "status": "failed",
            "error": {"code": "no_faces", "message": "no face"},
        },
    ]
    with pytest.raises(RunFailedError) as info:
        process_json_stream_sync(failed)
    assert info.value.state.error is not None
    assert info.value.state.error.code == "no_faces"
    with pytest.raises(StreamProtocolError):
        await process_json_stream([{"type": "run", "run_id": "r_1"}])
    with pytest.raises(StreamProtocolError):
        await process_json_stream(["not json"])
    with pytest.raises(StreamProtocolError, match="without a result"):
        process_json_stream_sync(states[:2])


# -- failures -------------------------------------------------------------------------------


async def test_failed_and_cancelled_runs_raise_with_the_state(serve_app):
    with serve_app(make_app()) as server:
        url = server.url + "/stream"
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            seen: list[str] = []
            with pytest.raises(RunFailedError) as failed:
                await process_streaming_response(
                    http.stream("POST", url, json={"fail": True}), lambda s: seen.append(s.type)
                )
            with pytest.raises(RunCancelledError) as cancelled:
                await process_streaming_response(http.stream("POST", url, json={"cancel": True}))
    assert seen[-2:] == ["failed", "done"]
    assert failed.value.state.type is EventType.FAILED
    assert failed.value.state.error is not None
    assert failed.value.state.error.code == "no_faces"
    assert str(failed.value) == "no face in the image"
    assert cancelled.value.state.type is EventType.CANCELLED
    assert cancelled.value.state.error is not None
    assert cancelled.value.state.error.message == "stopped by the operator"


def test_failed_run_sync(serve_app):
    with serve_app(make_app()) as server, httpx.Client(timeout=TIMEOUT) as http:
        url = server.url + "/stream"
        with pytest.raises(RunFailedError) as failed:
            process_streaming_response_sync(http.stream("POST", url, json={"fail": True}))
        with connect_states(http, "POST", url, json={"fail": True}, raise_on_error=False) as stream:
            last = list(stream.iter_states())[-2:]
    assert failed.value.state.error is not None
    assert failed.value.state.error.code == "no_faces"
    assert [state.type for state in last] == [EventType.FAILED, EventType.DONE]
    assert stream.terminal_state is not None
    assert stream.terminal_state.type is EventType.FAILED
    with pytest.raises(RunFailedError):
        stream.results()


async def test_http_errors_before_the_stream_carry_status_and_json_body(serve_app):
    app = make_app()
    with serve_app(app) as server:
        url = server.url + "/guarded"
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            with pytest.raises(StreamHTTPError) as unauthorized:
                await process_streaming_response(http.stream("POST", url, json={}))
            with pytest.raises(StreamHTTPError) as limited:
                async with aconnect_states(
                    http, "POST", url, json={}, headers={"Authorization": "Bearer good"}
                ):
                    pass
    assert unauthorized.value.status_code == 401
    assert unauthorized.value.body == {"detail": "Missing or bad token."}
    assert str(unauthorized.value).startswith("HTTP 401 from http://127.0.0.1")
    assert str(unauthorized.value).endswith("/guarded: Missing or bad token.")
    assert limited.value.status_code == 429
    assert limited.value.body == {"detail": "Too many runs."}
    assert limited.value.headers["retry-after"] == "7"
    assert app.state.seen_auth == [None, "Bearer good"]


def test_http_error_sync(serve_app):
    with (
        serve_app(make_app()) as server,
        httpx.Client(timeout=TIMEOUT) as http,
        pytest.raises(StreamHTTPError) as info,
        connect_states(http, "POST", server.url + "/guarded", json={}),
    ):
        pass
    assert (info.value.status_code, info.value.body) == (401, {"detail": "Missing or bad token."})


async def test_a_json_answer_is_not_an_event_stream(serve_app):
    with serve_app(make_app()) as server:
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            with pytest.raises(StreamProtocolError, match="application/json"):
                await process_streaming_response(http.stream("POST", server.url + "/final"))


async def test_unreachable_server_is_a_connection_error():
    with socket_closed_port() as port:
        url = f"http://127.0.0.1:{port}/stream"
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            with pytest.raises(StreamConnectionError, match="could not reach"):
                async with aconnect_states(http, "POST", url, json={}):
                    pass
            with pytest.raises(StreamConnectionError, match=f"could not reach {url}: ConnectError"):
                await process_streaming_response(http.stream("POST", url, json={}))


class socket_closed_port:
    """A port on 127.0.0.1 where nothing listens (bound, never listening)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# -- timeouts -------------------------------------------------------------------------------


SILENT = {"steps": 1, "silent": 5}


async def test_inactivity_timeout_fires_on_a_silent_server(serve_app):
    with serve_app(make_app(keep_alive=0)) as server:
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            seen: list[RunState] = []
            started = time.monotonic()
            with pytest.raises(StreamTimeoutError) as info:
                await process_streaming_response(
                    http.stream("POST", server.url + "/stream", json=SILENT),
                    seen.append,
                    timeout=0.2,
                )
            elapsed = time.monotonic() - started
    assert isinstance(info.value, TimeoutError)
    assert info.value.seconds == 0.2
    assert len(seen) == 2  # run and the first progress arrived
    assert 0.2 <= elapsed < 2


def test_inactivity_timeout_sync(serve_app):
    with serve_app(make_app(keep_alive=0)) as server, httpx.Client(timeout=TIMEOUT) as http:
        started = time.monotonic()
        with (
            pytest.raises(StreamTimeoutError) as info,
            connect_states(http, "POST", server.url + "/stream", json=SILENT, timeout=0.2) as st,
        ):
            list(st.iter_states())
        assert 0.2 <= time.monotonic() - started < 2
    assert info.value.seconds == 0.2


async def test_keep_alives_count_as_activity(serve_app):
    body = {"steps": 1, "silent": 0.35}
    with serve_app(make_app(keep_alive=0.03)) as server:
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            results = await process_streaming_response(
                http.stream("POST", server.url + "/stream", json=body), timeout=0.2
            )
    assert len(results) == 4


def test_keep_alives_count_as_activity_sync(serve_app):
    body = {"steps": 1, "silent": 0.35}
    with (
        serve_app(make_app(keep_alive=0.03)) as server,
        httpx.Client(timeout=TIMEOUT) as http,
        connect_states(http, "POST", server.url + "/stream", json=body, timeout=0.2) as stream,
    ):
        kinds = [state.type.value for state in stream.iter_states()]
    assert kinds[-2:] == ["result", "done"]


async def test_a_short_read_timeout_is_warned_about(serve_app):
    with serve_app(make_app()) as server:
        async with asyncio.timeout(10), httpx.AsyncClient() as http:  # httpx's default: 5 s
            with pytest.warns(StreamTimeoutWarning, match="read timeout"):
                results = await process_streaming_response(
                    http.stream("POST", server.url + "/stream", json={})
                )
    assert len(results) == 4


# -- reconnects -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["error", "end"])
async def test_a_dropped_stream_resumes_with_last_event_id(serve_app, mode):
    app = flaky_app(mode)
    with serve_app(app) as server:
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            states: list[RunState] = []
            async with aconnect_states(
                http, "POST", server.url + "/flaky", json={"x": 1}, max_retry_delay=1
            ) as stream:
                async for state in stream.aiter_states():
                    states.append(state)
            assert stream.reconnects == 1
    assert [state.seq for state in states] == [1, 2, 3, 4, 5, 6]
    assert app.state.last_event_ids == [None, "r_flaky:3"]
    check_results(stream.results())


def test_sync_stream_resumes_and_honors_a_capped_retry(serve_app):
    app = flaky_app("error", retry=60_000)
    with serve_app(app) as server, httpx.Client(timeout=TIMEOUT) as http:
        started = time.monotonic()
        results = process_streaming_response_sync(
            http.stream("POST", server.url + "/flaky", json={"x": 1}), max_retry_delay=0.05
        )
        assert time.monotonic() - started < 2
    assert app.state.last_event_ids == [None, "r_flaky:3"]
    check_results(results)


async def test_the_retry_delay_is_waited(serve_app):
    app = flaky_app("end", retry=150)
    with serve_app(app) as server:
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            started = time.monotonic()
            await process_streaming_response(
                http.stream("POST", server.url + "/flaky", json={"x": 1})
            )
            assert time.monotonic() - started >= 0.15


async def test_reconnects_are_bounded_in_a_row(serve_app):
    app = flaky_app("always", cut=2)
    with serve_app(app) as server:
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            with pytest.raises(StreamConnectionError, match="gave up after 2 reconnects") as info:
                await process_streaming_response(
                    http.stream("POST", server.url + "/flaky", json={"x": 1}),
                    max_reconnects=2,
                )
    assert app.state.last_event_ids == [None, "r_flaky:2", "r_flaky:2"]
    assert info.value.last_event_id == "r_flaky:2"
    assert not isinstance(info.value, StreamResumeError)


async def test_each_new_event_restarts_the_reconnect_count(serve_app):
    app = flaky_app("trickle", cut=2)
    with serve_app(app) as server:
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            results = await process_streaming_response(
                http.stream("POST", server.url + "/flaky", json={"x": 1}), max_reconnects=1
            )
    # the connection that brings the result breaks before done: the run is over anyway
    assert app.state.last_event_ids == [None, "r_flaky:2", "r_flaky:3", "r_flaky:4"]
    check_results(results)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("other-run", "sent run r_other instead of resuming run r_flaky"),
        ("gone", "could not resume run r_flaky after r_flaky:3: HTTP 404"),
        ("no-content", "no more events"),
    ],
)
async def test_a_server_that_cannot_resume_fails_clearly(serve_app, mode, message):
    with serve_app(flaky_app(mode)) as server:
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            with pytest.raises(StreamResumeError, match=message) as info:
                await process_streaming_response(
                    http.stream("POST", server.url + "/flaky", json={"x": 1})
                )
    assert info.value.last_event_id == "r_flaky:3"
    if mode == "gone":
        cause = info.value.__cause__
        assert isinstance(cause, StreamHTTPError)
        assert (cause.status_code, cause.body) == (404, {"detail": "No such run."})


async def test_without_a_resumable_server_a_dropped_stream_is_not_mixed_with_a_new_run(serve_app):
    """A read timeout shorter than the silence drops the stream; re-posting starts a new run."""
    with serve_app(make_app(keep_alive=0)) as server:
        url = server.url + "/stream"
        async with asyncio.timeout(10):
            async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=0.2)) as http:
                with (
                    pytest.warns(StreamTimeoutWarning),
                    pytest.raises(StreamResumeError, match="instead of resuming"),
                ):
                    await process_streaming_response(
                        http.stream("POST", url, json={"steps": 1, "silent": 0.5}),
                        max_retry_delay=0,
                    )


# -- the router: real resume and cancel ------------------------------------------------------


def router_app(delay: float = 0.05, steps: int = 4, **options: Any) -> tuple[FastAPI, list[str]]:
    events: list[str] = []

    async def deployment(inputs: Any, parameters: Any, on_progress: Any) -> Any:
        try:
            for step in range(steps):
                on_progress(state="STARTED", progress={"current": step + 1, "total": steps})
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        events.append("finished")
        return OUTPUTS

    app = FastAPI()
    app.include_router(create_router(deployment, path="/job", **options), prefix="/api")
    return app, events


async def test_router_run_resumes_through_a_broken_connection(serve_app):
    app, events = router_app(retry=20)
    with serve_app(app) as server:
        async with (
            asyncio.timeout(10),
            CuttingProxy(server.config.port, cut_after=2, max_cuts=1).running() as proxy,
            httpx.AsyncClient(timeout=TIMEOUT) as http,
        ):
            url = f"http://127.0.0.1:{proxy.port}/api/job/stream"
            async with aconnect_states(http, "POST", url, json={}) as stream:
                states = [state async for state in stream.aiter_states()]
            assert proxy.cuts == 1
            assert stream.reconnects == 1
    assert [state.seq for state in states] == list(range(1, len(states) + 1))
    assert [state.type.value for state in states][-2:] == ["result", "done"]
    assert len([state for state in states if state.type is EventType.PROGRESS]) == 4
    assert events == ["finished"]
    check_results(stream.results())


async def test_router_cancel_ends_the_stream_with_run_cancelled(serve_app):
    app, events = router_app(delay=0.2, steps=20)
    answers: list[int] = []

    async def follow_and_cancel(http: httpx.AsyncClient, base: str) -> None:
        async with aconnect_states(http, "POST", base + "/stream", json={}) as stream:
            async for state in stream.aiter_states():
                if state.type is EventType.PROGRESS and not answers:
                    answer = await http.delete(f"{base}/runs/{state.run_id}")
                    answers.append(answer.status_code)

    with serve_app(app) as server:
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            with pytest.raises(RunCancelledError) as info:
                await follow_and_cancel(http, server.url + "/api/job")
    assert answers == [202]
    assert info.value.state.error is not None
    assert info.value.state.error.message == "cancelled by the client"
    assert events == ["cancelled"]


async def test_router_detached_run_is_followed_on_its_events_url(serve_app):
    app, _ = router_app(delay=0.01)
    with serve_app(app) as server:
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=TIMEOUT) as http:
            created = (await http.post(server.url + "/api/job/runs", json={})).json()
            async with aconnect_states(http, "GET", server.url + created["events_url"]) as stream:
                states = [state async for state in stream.aiter_states()]
            # resuming after the last event: the run is over, nothing more (204)
            last = states[-1].event_id
            again = await http.get(
                server.url + created["events_url"], headers={"Last-Event-ID": last}
            )
            final = await http.post(server.url + "/api/job", json={})
            with pytest.raises(StreamProtocolError):
                await process_streaming_response(
                    http.stream("POST", server.url + "/api/job", json={})
                )
    assert states[0].run_id == created["run_id"]
    assert states[-1].type is EventType.DONE
    assert again.status_code == 204
    assert final.status_code == 200


# -- results --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp")],
)
def test_image_mime_is_sniffed_from_magic_bytes(fmt, mime):
    data = encode_image(fmt, (5, 4))
    image = ImageOutput({"image": base64.b64encode(data).decode()})
    assert image.mime == mime
    assert image.data_url.startswith(f"data:{mime};base64,")
    assert image.to_bytes() == data
    assert image.to_pil().format == fmt
    assert image.to_numpy().shape[:2] == (4, 5)
    from_url = ImageOutput({"image": image.data_url})
    assert from_url.to_bytes() == data


def test_unknown_bytes_and_bad_base64():
    assert ImageOutput({"image": base64.b64encode(b"plain text").decode()}).mime == (
        "application/octet-stream"
    )
    with pytest.raises(ValueError, match="base64"):
        ImageOutput({"image": "a"}).to_bytes()


def test_results_convert_to_ikclient_results(tmp_path):
    state = RunState(type=EventType.RESULT, run_id="r_1", seq=3, results=OUTPUTS)
    results = Results(state)
    converted = results.to_ikclient()
    assert len(converted) == 4
    assert converted.uuid == "r_1"
    image = converted.get_output(0)
    assert isinstance(image, ImageIO)
    assert image.to_pil().size == (8, 6)
    assert converted.get_output(1).data == {"faces": 2}
    assert results.images()[0].save(tmp_path / "out.png").read_bytes() == PNG
    assert np.asarray(results.images()[0].to_numpy()).shape == (6, 8, 3)
    with pytest.raises(IndexError):
        results.get_output(9)


def test_missing_extra_names_the_extra_to_install():
    code = "import sys; sys.modules['httpx_sse'] = None; import fastapi_ikstream.client"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    assert "MissingExtraError" in proc.stderr
    assert 'pip install "fastapi-ikstream[client]"' in proc.stderr
