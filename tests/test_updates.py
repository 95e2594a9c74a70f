"""States built from progress updates without a second validation: the same bytes as before.

The producer puts values of their models' exact types into `RunState` unvalidated; every
other value goes through pydantic. Here each update is also validated the old way (every
field through `RunState(...)`), and the JSON, the SSE block and the model must agree.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.sse import format_sse_event
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fastapi_ikstream import EventType, RunState, RunStatus, StreamingRun
from fastapi_ikstream._wire import encode_sse, sse_block

NOW = 1763700000.125

numbers = st.one_of(
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=False),
    st.booleans(),
)
texts = st.text(max_size=40)
lines = st.one_of(
    texts,
    st.fixed_dictionaries(
        {"message": texts},
        optional={"ts": numbers, "level": texts},
    ),
)
progresses = st.one_of(
    st.none(),
    numbers,
    st.tuples(numbers, numbers),
    st.fixed_dictionaries({"current": numbers}, optional={"total": st.one_of(st.none(), numbers)}),
)
updates = st.fixed_dictionaries(
    {},
    optional={
        "state": st.sampled_from(["STARTED", "PENDING", "weird word", "UPLOADING"]),
        "eta": st.tuples(st.integers(0, 10**6), st.one_of(st.none(), st.integers(0, 10**6))),
        "progress": progresses,
        "logs": st.lists(lines, max_size=5),
        "log": lines,
        "partial_output": st.one_of(st.none(), st.dictionaries(texts, numbers, max_size=3)),
    },
)


def _old_line(item: Any) -> Any:
    if isinstance(item, dict):
        return item if "ts" in item else {"ts": NOW, **item}
    return {"ts": NOW, "message": str(item)}


def _old_progress(value: Any) -> Any:
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, tuple | list):
        return {"current": value[0], "total": value[1] if len(value) > 1 else None}
    return {"current": value}


def _emitted(update: dict[str, Any]) -> list[RunState]:
    states: list[RunState] = []
    run = StreamingRun(lambda on_progress: None, run_id="r_0123456789abcdef01234567")
    run._sink = states.append
    run._consumed = True
    run.on_progress(**update)
    return states


@settings(max_examples=300, deadline=None)
@given(update=updates)
def test_trusted_states_encode_as_validated_ones(
    update: dict[str, Any], monkeypatch_time: None
) -> None:
    raw = [*(update.get("logs") or []), *([update["log"]] if update.get("log") else [])]
    try:
        states = _emitted(update)
    except ValidationError:
        with pytest.raises(ValidationError):  # the old path refuses it as well
            RunState(
                type=EventType.PROGRESS,
                run_id="r_x",
                seq=1,
                logs=[_old_line(i) for i in raw] or None,
                progress=_old_progress(update.get("progress")),
            )
        return
    if not states:
        return
    (state,) = states
    fields = state.model_dump(exclude={"logs", "progress"})
    old = RunState(
        **fields,
        logs=[_old_line(i) for i in raw] or None,
        progress=_old_progress(update.get("progress")) if state.type != "log" else None,
    )
    assert state.to_json() == old.to_json()
    assert state == old
    assert encode_sse(state) == encode_sse(old)
    assert encode_sse(state) == format_sse_event(
        data_str=old.to_json(), event=old.type.value, id=old.event_id
    )
    assert sse_block(state.to_json(), None, state.event_id) == format_sse_event(
        data_str=old.to_json(), id=old.event_id
    )


@pytest.fixture(scope="module")
def monkeypatch_time() -> Any:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("fastapi_ikstream._updates.time", SimpleNamespace(time=lambda: NOW))
        yield


def test_the_bench_update_is_trusted_and_exact(monkeypatch_time: None) -> None:
    (state,) = _emitted(
        {
            "state": "STARTED",
            "eta": [800, 2500],
            "progress": {"current": 7.0, "total": 100.0},
            "logs": [{"ts": 1.5, "level": "INFO", "message": f"line {i}"} for i in range(5)],
        }
    )
    assert state.status is RunStatus.RUNNING
    assert state.code == 7
    assert state.to_json() == RunState.model_validate_json(state.to_json()).to_json()
    assert state.to_json() == (
        '{"type":"progress","run_id":"r_0123456789abcdef01234567","seq":1,"status":"running",'
        '"code":7,"state":"STARTED","eta":[800,2500],"progress":{"current":7.0,"total":100.0},'
        '"logs":['
        + ",".join(f'{{"ts":1.5,"level":"INFO","message":"line {i}"}}' for i in range(5))
        + "]}"
    )


def test_values_of_other_types_are_still_validated(monkeypatch_time: None) -> None:
    (state,) = _emitted(
        {"state": "STARTED", "progress": {"current": True}, "logs": [{"message": "m", "ts": 3}]}
    )
    assert state.progress is not None
    assert state.progress.current == 1
    assert state.logs is not None
    assert state.logs[0].ts == 3.0
    with pytest.raises(ValidationError):
        _emitted({"logs": [{"message": "m", "colour": "red"}]})
    with pytest.raises(ValidationError):
        _emitted({"progress": {"current": 1, "extra": 2}})
