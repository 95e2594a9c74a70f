"""The wire format: byte-identical to fastapi.sse.format_sse_event, and clean for httpx-sse."""

from __future__ import annotations

import json
import string

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.sse import format_sse_event
from httpx_sse import aconnect_sse
from hypothesis import given, settings
from hypothesis import strategies as st

from fastapi_ikstream import EventType, RunState, RunStatus, StreamingRun
from fastapi_ikstream._store import StoredEvent
from fastapi_ikstream._wire import JSONL_KEEPALIVE, SSE_KEEPALIVE, UnnamedEvent, sse_block
from fastapi_ikstream.wire import encode_jsonl, encode_sse

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    data=json_values,
    event=st.sampled_from([kind.value for kind in EventType]),
    run_id=st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=30),
    seq=st.integers(min_value=0, max_value=2**40),
    retry=st.none() | st.integers(min_value=0, max_value=10**6),
)
def test_sse_block_is_byte_identical_to_fastapi(data, event, run_id, seq, retry):
    payload = json.dumps(data, separators=(",", ":"))
    ours = sse_block(payload, event, f"{run_id}:{seq}", retry)
    theirs = format_sse_event(data_str=payload, event=event, id=f"{run_id}:{seq}", retry=retry)
    assert ours == theirs


@settings(max_examples=300, deadline=None)
@given(
    data=json_values,
    run_id=st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=30),
    seq=st.integers(min_value=0, max_value=2**40),
    retry=st.none() | st.integers(min_value=0, max_value=10**6),
)
def test_unnamed_sse_block_is_byte_identical_to_fastapi(data, run_id, seq, retry):
    payload = json.dumps(data, separators=(",", ":"))
    ours = sse_block(payload, None, f"{run_id}:{seq}", retry)
    theirs = format_sse_event(data_str=payload, id=f"{run_id}:{seq}", retry=retry)
    assert ours == theirs
    assert not ours.startswith(b"event:")
    stored = StoredEvent(run_id, seq, "progress", payload)
    assert UnnamedEvent(stored).sse == format_sse_event(data_str=payload, id=f"{run_id}:{seq}")
    if retry is not None:
        assert UnnamedEvent(stored).sse_with_retry(retry) == theirs
    assert UnnamedEvent(stored).jsonl == stored.jsonl


def every_kind() -> list[RunState]:
    run_id = "r_test"
    return [
        RunState(type=EventType.RUN, run_id=run_id, seq=1, status=RunStatus.RECEIVED),
        RunState(
            type=EventType.PROGRESS,
            run_id=run_id,
            seq=2,
            status=RunStatus.RUNNING,
            state="STARTED",
            eta=(800, 2500),
            progress={"current": 3, "total": 10},
        ),
        RunState(
            type=EventType.LOG,
            run_id=run_id,
            seq=3,
            logs=[{"ts": 1.5, "level": "INFO", "message": "faces: 2\nline two ✓"}],
        ),
        RunState(type=EventType.PARTIAL, run_id=run_id, seq=4, partial_output={"text": "a\r\nb"}),
        RunState(
            type=EventType.RESULT,
            run_id=run_id,
            seq=5,
            status=RunStatus.COMPLETED,
            results=[{"image": "AAAA"}, {"DATA_DICT": {"faces": 2}}],
        ),
        RunState(
            type=EventType.FAILED,
            run_id=run_id,
            seq=6,
            status=RunStatus.FAILED,
            error={"code": "x", "message": "bad\nthing"},
        ),
        RunState(type=EventType.CANCELLED, run_id=run_id, seq=7, status=RunStatus.CANCELLED),
        RunState(type=EventType.RESET, run_id=run_id, seq=8, first_seq=9),
        RunState(type=EventType.DONE, run_id=run_id, seq=9, status=RunStatus.COMPLETED),
    ]


def test_every_kind_encodes_one_data_line_lf_utf8_no_bom():
    for state in every_kind():
        block = encode_sse(state, retry=3000 if state.seq == 1 else None)
        assert not block.startswith(b"\xef\xbb\xbf")
        assert b"\r" not in block
        text = block.decode("utf-8")
        lines = text.split("\n")
        assert lines[-2:] == ["", ""]
        assert [line for line in lines if line.startswith("data:")] == ["data: " + state.to_json()]
        assert f"event: {state.type.value}" in lines
        assert f"id: {state.run_id}:{state.seq}" in lines
        assert json.loads(state.to_json())["type"] == state.type.value
        assert encode_jsonl(state) == state.to_json().encode() + b"\n"
        assert StoredEvent.from_state(state).sse == encode_sse(state)
        unnamed = encode_sse(state, named=False)
        assert unnamed == format_sse_event(data_str=state.to_json(), id=state.event_id)
        assert UnnamedEvent(StoredEvent.from_state(state)).sse == unnamed
        assert ("code" in json.loads(state.to_json())) == (state.status is not None)


def test_no_event_is_named_error():
    assert "error" not in {kind.value for kind in EventType}


def test_keepalives_are_not_blocks():
    assert SSE_KEEPALIVE == b": keep-alive\n"
    assert not SSE_KEEPALIVE.endswith(b"\n\n")
    assert json.loads(JSONL_KEEPALIVE) == {"type": "keepalive"}


async def test_round_trip_through_httpx_sse_without_empty_events():
    """Every kind, with keep-alives between them, read back by httpx-sse: no empty event."""
    states = every_kind()

    async def body():
        for state in states:
            yield SSE_KEEPALIVE
            yield SSE_KEEPALIVE
            yield encode_sse(state, retry=3000 if state.seq == 1 else None)
            yield SSE_KEEPALIVE

    app = FastAPI()

    @app.get("/s")
    async def stream(request: Request):
        from starlette.responses import StreamingResponse

        return StreamingResponse(body(), media_type="text/event-stream")

    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
        aconnect_sse(client, "GET", "/s") as source,
    ):
        events = [event async for event in source.aiter_sse()]
    assert len(events) == len(states)
    for event, state in zip(events, states, strict=True):
        assert event.data, "an empty event surfaced"
        assert event.event == state.type.value
        assert event.id == f"{state.run_id}:{state.seq}"
        assert RunState.model_validate_json(event.data) == state
    assert events[0].retry == 3000


async def test_streaming_run_sse_parses_with_httpx_sse_including_keepalives(serve_app):
    """A real server, a slow deployment (keep-alives between events), read by httpx-sse."""
    import asyncio

    async def slow(on_progress):
        on_progress(state="STARTED", progress=(1, 2))
        await asyncio.sleep(0.35)
        on_progress(log="halfway")
        await asyncio.sleep(0.35)
        return [{"DATA_DICT": {"ok": True}}]

    app = FastAPI()

    @app.get("/run")
    async def run_endpoint():
        return StreamingRun(slow).to_response(keep_alive=0.1)

    with serve_app(app) as server:
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream("GET", server.url + "/run") as response:
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            async with aconnect_sse(client, "GET", server.url + "/run") as source:
                events = [event async for event in source.aiter_sse()]
    assert raw.count(SSE_KEEPALIVE) >= 4
    assert [e.event for e in events] == ["run", "progress", "log", "result", "done"]
    assert all(e.data for e in events)
    assert [int(e.id.rsplit(":", 1)[1]) for e in events] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("kind", list(EventType))
def test_event_type_values_are_single_tokens(kind):
    assert kind.value.isidentifier()
