"""A run id (public on `StreamingRun`) cannot inject lines into the SSE stream: it is
checked as ``fastapi.sse`` checks ``id`` and ``event``."""

from __future__ import annotations

import pytest
from fastapi.sse import ServerSentEvent

from fastapi_ikstream import StreamingRun
from fastapi_ikstream._wire import check_event_name, check_sse_id

HOSTILE = ["a\nevent: done", "a\rdata: x", "a\r\nretry: 1", "a\x00b", "\n", "a\n\nid: b"]


def source(on_progress: object) -> list[dict[str, object]]:
    return [{"DATA_DICT": {}}]


@pytest.mark.parametrize("run_id", HOSTILE)
def test_a_run_id_that_would_break_the_id_line_is_refused(run_id: str) -> None:
    with pytest.raises(ValueError, match="SSE 'run_id'"):
        StreamingRun(source, run_id=run_id)


@pytest.mark.parametrize("value", HOSTILE)
def test_the_checks_refuse_what_fastapi_sse_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="SSE"):
        ServerSentEvent(data="x", id=value)
    with pytest.raises(ValueError, match="SSE"):
        check_sse_id(value)
    if "\x00" not in value:
        with pytest.raises(ValueError, match="SSE"):
            ServerSentEvent(data="x", event=value)
        with pytest.raises(ValueError, match="SSE"):
            check_event_name(value)


async def test_a_plain_run_id_streams_one_id_line_per_event() -> None:
    run = StreamingRun(source, run_id="run-42_ok")
    blocks = [chunk async for chunk in run.aiter_sse()]
    for block in blocks:
        lines = block.decode().splitlines()
        assert sum(line.startswith("id: ") for line in lines) == 1
        assert any(line.startswith("id: run-42_ok:") for line in lines)
