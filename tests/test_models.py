"""Run-state models, the status table, and the public namespace."""

from __future__ import annotations

import importlib
import json

import pytest
from pydantic import ValidationError

import fastapi_ikstream
from fastapi_ikstream import EventType, RunState, RunStatus
from fastapi_ikstream.models import status_from_state


def test_public_names_match_all():
    """Like httpx's test_exported_members: everything public is in __all__, and only that."""
    public = {
        name
        for name in dir(fastapi_ikstream)
        if not name.startswith("_")
        and getattr(getattr(fastapi_ikstream, name), "__module__", "").startswith(
            "fastapi_ikstream."
        )
    }
    assert public == set(fastapi_ikstream.__all__)
    assert fastapi_ikstream.__all__ == sorted(fastapi_ikstream.__all__)
    for name in fastapi_ikstream.__all__:
        assert getattr(fastapi_ikstream, name).__doc__, f"{name} has no docstring"


@pytest.mark.parametrize(
    "module", ["security", "ratelimit", "client", "testing", "ikomia", "redis"]
)
def test_integration_submodules_import(module):
    assert importlib.import_module(f"fastapi_ikstream.{module}").__doc__


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("received", 1),
        ("queued", 2),
        ("scheduled", 3),
        ("preparing", 4),
        ("serving", 5),
        ("setting_up", 6),
        ("running", 7),
        ("uploading", 8),
        ("completed", 10),
        ("failed", 11),
        ("cancelled", 12),
    ],
)
def test_status_codes_follow_inference_sh(status, code):
    assert RunStatus(status).code == code
    assert RunStatus(status).is_terminal == (code >= 10)


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("BLOCKING", "queued"),
        ("SENDING", "scheduled"),
        ("PENDING", "queued"),
        ("STARTED", "running"),
        ("SUCCESS", "completed"),
        ("COMPLETED", "completed"),
        ("FAILURE", "failed"),
        ("REVOKED", "cancelled"),
        ("started", "running"),
        ("SOMETHING_NEW", None),
        (None, None),
    ],
)
def test_ikomia_states_map_to_statuses(state, status):
    assert status_from_state(state) == (RunStatus(status) if status else None)


def test_state_json_is_compact_and_leaves_out_nulls():
    state = RunState(
        type=EventType.PROGRESS,
        run_id="r_1",
        seq=2,
        status=RunStatus.RUNNING,
        state="STARTED",
        eta=(800, None),
        progress={"current": 3, "total": 10},
    )
    text = state.to_json()
    assert " " not in text
    assert json.loads(text) == {
        "type": "progress",
        "run_id": "r_1",
        "seq": 2,
        "status": "running",
        "code": 7,
        "state": "STARTED",
        "eta": [800, None],
        "progress": {"current": 3, "total": 10},
    }
    assert state.event_id == "r_1:2"
    assert RunState.model_validate_json(text) == state


def test_invalid_states_are_refused():
    with pytest.raises(ValidationError):
        RunState(type="error", run_id="r", seq=1)
    with pytest.raises(ValidationError):
        RunState(type="run", run_id="r", seq=-1)
    with pytest.raises(ValidationError):
        RunState(type="run", run_id="r", seq=1, unknown=True)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        RunState(type="failed", run_id="r", seq=1, error={"code": "x"})
