"""The client's other forms: byte streams, fal-style StateStream listeners, image inputs."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from fastapi_ikstream import EventType, RunFailedError, RunState, RunStatus, create_router
from fastapi_ikstream.client import (
    StateStream,
    StreamConnectionError,
    StreamTimeoutError,
    image_input,
    process_readable_stream,
    process_readable_stream_sync,
    stream_states,
)
from fastapi_ikstream.errors import RunCancelledError, StreamConsumedError
from fastapi_ikstream.testing import FakeDeployment
from fastapi_ikstream.wire import encode_jsonl, encode_sse

pytestmark = pytest.mark.timeout(30)

OUTPUTS = [{"DATA_DICT": {"n": 1}}]


def states(final: str = "result") -> list[RunState]:
    run_id = "r_bytes"
    terminal: dict[str, Any] = {"status": RunStatus.COMPLETED, "results": OUTPUTS}
    if final == "failed":
        terminal = {"status": RunStatus.FAILED, "error": {"code": "x", "message": "broken"}}
    if final == "cancelled":
        terminal = {"status": RunStatus.CANCELLED}
    return [
        RunState(type=EventType.RUN, run_id=run_id, seq=1, status=RunStatus.RECEIVED),
        RunState(
            type=EventType.PROGRESS,
            run_id=run_id,
            seq=2,
            status=RunStatus.RUNNING,
            progress={"current": 1, "total": 1},
        ),
        RunState(type=EventType(final), run_id=run_id, seq=3, **terminal),
        RunState(type=EventType.DONE, run_id=run_id, seq=4, status=terminal["status"]),
    ]


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def achunks(chunks: list[bytes], pause: float = 0.0) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await asyncio.sleep(pause)
        yield chunk


@pytest.mark.parametrize("size", [1, 7, 10_000])
async def test_process_readable_stream_reads_sse_bytes_in_chunks_of_any_size(size):
    data = b"".join(encode_sse(state, retry=3000 if state.seq == 1 else None) for state in states())
    seen: list[str] = []

    async def record(state: RunState) -> None:
        seen.append(state.type.value)

    async with asyncio.timeout(10):
        results = await process_readable_stream(achunks(split(data, size)), record)
    assert seen == ["run", "progress", "result", "done"]
    assert results.get_output(0) == OUTPUTS[0]


async def test_process_readable_stream_reads_json_lines_and_raises_for_failures():
    data = b"".join(encode_jsonl(state) for state in states("failed"))
    with pytest.raises(RunFailedError) as caught:
        await process_readable_stream(achunks(split(data, 5)), jsonl=True)
    assert caught.value.state.error is not None
    assert caught.value.state.error.message == "broken"


async def test_process_readable_stream_ending_early_and_going_silent():
    data = b"".join(encode_sse(state) for state in states()[:2])
    with pytest.raises(StreamConnectionError):
        await process_readable_stream(achunks([data]))
    with pytest.raises(StreamTimeoutError) as caught:
        await process_readable_stream(achunks([data, b""], pause=0.3), timeout=0.1)
    assert caught.value.status == 408
    assert caught.value.seconds == 0.1


def test_process_readable_stream_sync():
    data = b"".join(encode_sse(state) for state in states())
    seen: list[int] = []

    def chunks() -> Iterator[bytes]:
        yield from split(data, 3)

    results = process_readable_stream_sync(chunks(), lambda state: seen.append(state.seq))
    assert seen == [1, 2, 3, 4]
    assert len(results) == 1
    lines = b"".join(encode_jsonl(state) for state in states("cancelled"))
    with pytest.raises(RunCancelledError):
        process_readable_stream_sync([lines], jsonl=True)


def test_stream_timeout_error_has_status_408():
    assert StreamTimeoutError(15.0).status == 408
    assert isinstance(StreamTimeoutError(1.0), TimeoutError)


# -- StateStream ------------------------------------------------------------------------------


UPDATES: list[dict[str, Any]] = [
    {"state": "STARTED", "progress": {"current": 1, "total": 2}},
    {"state": "STARTED", "progress": {"current": 2, "total": 2}},
    {"results": OUTPUTS},
]


@pytest.fixture
def base_url(serve_app: Any) -> Iterator[str]:
    app = FastAPI()
    app.include_router(create_router(FakeDeployment(UPDATES, delay=0.01), path="/ok"))
    failing = FakeDeployment(UPDATES, delay=0.01, fail_at=1)
    app.include_router(create_router(failing, path="/bad"))
    slow = FakeDeployment(UPDATES, delay=0.5)
    app.include_router(create_router(slow, path="/slow"))
    with serve_app(app) as server:
        yield server.url


async def test_listeners_sync_and_async_then_done_twice(base_url):
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(5, read=20)) as http:
        stream = stream_states(http, "POST", "/ok/stream", json={})
        seen: list[str] = []
        aliased: list[int] = []
        removed: list[int] = []

        async def on_state(state: RunState) -> None:
            await asyncio.sleep(0)
            seen.append(state.type.value)

        def not_called(state: RunState) -> None:
            removed.append(state.seq)

        stream.on("message", on_state).on("data", lambda s: aliased.append(s.seq))
        stream.on("state", not_called).off("state", not_called)
        stream.off("done", not_called)  # never added: nothing happens
        results = await stream.done()
        assert await stream.done() is results
    assert seen == ["run", "progress", "progress", "result", "done"]
    assert aliased == [1, 2, 3, 4, 5]
    assert removed == []
    assert [s.seq for s in stream.states] == aliased
    assert results.get_output(0) == OUTPUTS[0]


async def test_async_for_then_done_and_a_second_loop_is_refused(base_url):
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(5, read=20)) as http:
        stream = stream_states(http, "POST", "/ok/stream", json={})
        kinds = [state.type.value async for state in stream]
        assert kinds[-1] == "done"
        assert (await stream.done()).run_id == stream.states[0].run_id
        with pytest.raises(StreamConsumedError):
            [state async for state in stream]


async def collect_kinds(stream: StateStream, into: list[str]) -> None:
    async for state in stream:
        into.append(state.type.value)


async def test_a_failed_run_raises_from_the_loop_and_from_done(base_url):
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(5, read=20)) as http:
        stream = stream_states(http, "POST", "/bad/stream", json={})
        errors: list[BaseException] = []
        stream.on("error", errors.append)
        kinds: list[str] = []
        with pytest.raises(RunFailedError):
            await collect_kinds(stream, kinds)
        assert kinds[-2:] == ["failed", "done"]
        with pytest.raises(RunFailedError):
            await stream.done()
    assert len(errors) == 1


async def test_leaving_a_loop_early_ends_the_stream_and_done_says_so(base_url):
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(5, read=20)) as http:
        stream = stream_states(http, "POST", "/slow/stream", json={})
        async with asyncio.timeout(10):
            async for state in stream:
                assert state.type is EventType.RUN
                break
        with pytest.raises(StreamConsumedError, match="left it before the run's end"):
            await stream.done()


async def test_done_while_a_loop_reads_is_refused(base_url):
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(5, read=20)) as http:
        stream = stream_states(http, "POST", "/slow/stream", json={})
        iterator = stream.__aiter__()
        first = await anext(iterator)
        assert first.type is EventType.RUN
        with pytest.raises(StreamConsumedError, match="a loop is reading"):
            await stream.done()
        await iterator.aclose()  # type: ignore[attr-defined]


def test_an_unknown_listener_type_is_refused():
    stream = StateStream(lambda: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="no such stream event"):
        stream.on("finish", print)  # type: ignore[arg-type]


# -- image_input ------------------------------------------------------------------------------


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def decoded(url: str) -> tuple[str, bytes]:
    head, _, payload = url.partition(";base64,")
    return head.removeprefix("data:"), base64.b64decode(payload)


def test_image_input_from_bytes_path_and_pil(tmp_path: Path):
    data = png_bytes()
    assert decoded(image_input(data)) == ("image/png", data)
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    assert decoded(image_input(path)) == ("image/png", data)
    assert decoded(image_input(str(path))) == ("image/png", data)
    mime, pil_data = decoded(image_input(Image.new("L", (4, 4), 128)))
    assert mime == "image/png"
    assert Image.open(io.BytesIO(pil_data)).size == (4, 4)
    mime, jpeg = decoded(image_input(Image.new("RGB", (4, 4)), format="JPEG"))
    assert mime == "image/jpeg"
    assert jpeg[:3] == b"\xff\xd8\xff"


def test_image_input_unknown_bytes_and_bad_types(tmp_path: Path):
    assert image_input(b"\x00\x01").startswith("data:application/octet-stream;base64,")
    odd = tmp_path / "scan.tiff"
    odd.write_bytes(b"II*\x00rest")
    assert image_input(odd).startswith("data:image/tiff;base64,")
    with pytest.raises(TypeError):
        image_input(42)  # type: ignore[arg-type]


async def test_image_input_is_accepted_by_the_default_request_model(serve_app):
    seen: list[Any] = []

    async def echo(inputs: Any, parameters: Any, on_progress: Any) -> Any:
        seen.append(inputs)
        return OUTPUTS

    app = FastAPI()
    app.include_router(create_router(echo, path="/echo"))
    url = image_input(png_bytes())
    with serve_app(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            response = await http.post("/echo", json={"inputs": [url]})
    assert response.status_code == 200
    assert seen == [[url]]
