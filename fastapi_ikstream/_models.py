"""Run-state models: what travels on the wire, as JSON, for every event of a run.

One `RunState` per event. Its ``type`` is the event kind (the SSE ``event:`` name as well),
``status`` the canonical lifecycle step, and ``state`` the deployment's own word, verbatim.

Status mapping (Ikomia SCALE states, and inference.sh's task status codes):

| `RunStatus`  | code | Ikomia ``state`` words mapped to it       |
|--------------|------|-------------------------------------------|
| received     | 1    | (the ``run`` event, before any update)    |
| queued       | 2    | ``BLOCKING``, ``PENDING``, ``QUEUED``      |
| scheduled    | 3    | ``SENDING``, ``SCHEDULED``, ``DISPATCHED`` |
| preparing    | 4    | ``PREPARING``                              |
| serving      | 5    | ``SERVING``                                |
| setting_up   | 6    | ``SETTING_UP``                             |
| running      | 7    | ``STARTED``, ``RUNNING``, ``PROGRESS``     |
| uploading    | 8    | ``UPLOADING``                              |
| completed    | 10   | ``SUCCESS``, ``COMPLETED``                 |
| failed       | 11   | ``FAILURE``, ``FAILED``                    |
| cancelled    | 12   | ``REVOKED``, ``CANCELLED``, ``CANCELED``   |

A word not in the table keeps the previous status (the state itself is still sent).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ETA",
    "EventType",
    "LogLine",
    "Progress",
    "RunError",
    "RunState",
    "RunStatus",
    "status_from_state",
    "upstream_id_of",
]

ETA = tuple[int | None, int | None]
"""An estimated time to completion as ``[min, max]`` in milliseconds; either may be null."""


class RunStatus(StrEnum):
    """Canonical lifecycle of a run, following inference.sh's task status flow.

    ``code`` gives inference.sh's numeric code; ``is_terminal`` is true for
    ``completed``, ``failed`` and ``cancelled``.
    """

    RECEIVED = "received"
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    PREPARING = "preparing"
    SERVING = "serving"
    SETTING_UP = "setting_up"
    RUNNING = "running"
    UPLOADING = "uploading"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def code(self) -> int:
        """inference.sh's numeric code for this status (1 … 8, 10, 11, 12)."""
        return _CODES[self]

    @property
    def is_terminal(self) -> bool:
        """True for ``completed``, ``failed`` and ``cancelled``."""
        return self in _TERMINAL


_CODES = {
    RunStatus.RECEIVED: 1,
    RunStatus.QUEUED: 2,
    RunStatus.SCHEDULED: 3,
    RunStatus.PREPARING: 4,
    RunStatus.SERVING: 5,
    RunStatus.SETTING_UP: 6,
    RunStatus.RUNNING: 7,
    RunStatus.UPLOADING: 8,
    RunStatus.COMPLETED: 10,
    RunStatus.FAILED: 11,
    RunStatus.CANCELLED: 12,
}
_TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})

_STATE_TO_STATUS: dict[str, RunStatus] = {
    "BLOCKING": RunStatus.QUEUED,
    "PENDING": RunStatus.QUEUED,
    "QUEUED": RunStatus.QUEUED,
    "RECEIVED": RunStatus.RECEIVED,
    "SENDING": RunStatus.SCHEDULED,
    "SCHEDULED": RunStatus.SCHEDULED,
    "DISPATCHED": RunStatus.SCHEDULED,
    "PREPARING": RunStatus.PREPARING,
    "SERVING": RunStatus.SERVING,
    "SETTING_UP": RunStatus.SETTING_UP,
    "STARTED": RunStatus.RUNNING,
    "RUNNING": RunStatus.RUNNING,
    "PROGRESS": RunStatus.RUNNING,
    "UPLOADING": RunStatus.UPLOADING,
    "SUCCESS": RunStatus.COMPLETED,
    "COMPLETED": RunStatus.COMPLETED,
    "FAILURE": RunStatus.FAILED,
    "FAILED": RunStatus.FAILED,
    "REVOKED": RunStatus.CANCELLED,
    "CANCELLED": RunStatus.CANCELLED,
    "CANCELED": RunStatus.CANCELLED,
}


def status_from_state(state: str | None) -> RunStatus | None:
    """Map a deployment's own state word to a `RunStatus` (see the module table).

    Args:
        state: e.g. Ikomia's ``"STARTED"``; case-insensitive. None gives None.

    Returns:
        The status, or None for a word the table does not know.
    """
    if state is None:
        return None
    return _STATE_TO_STATUS.get(state.upper())


def upstream_id_of(update: Mapping[str, Any]) -> str | None:
    """The deployment's own run id in a progress update.

    It is ``upstream_id``, or else ``ikclient``'s ``uuid`` keyword (SCALE's run uuid).

    Args:
        update: the keyword arguments (or dict) a run function passed to ``on_progress``.

    Returns:
        The id as a string, or None when the update carries none (or an empty one).
    """
    value = update.get("upstream_id") or update.get("uuid")
    return str(value) if value else None


class EventType(StrEnum):
    """The kind of an event: its SSE ``event:`` name and its JSON ``type``.

    ``run`` comes first, ``done`` always last. ``failed`` (never ``error``: that name collides
    with ``EventSource``'s own connection-error event) and ``cancelled`` are terminal states,
    each followed by ``done``. ``reset`` tells a resuming reader that the events it asked for
    are no longer kept (its ``first_seq`` says where the kept log starts).
    """

    RUN = "run"
    PROGRESS = "progress"
    LOG = "log"
    PARTIAL = "partial"
    RESULT = "result"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DONE = "done"
    RESET = "reset"


class Progress(BaseModel):
    """Work done so far, e.g. ``{"current": 3, "total": 10}``; ``total`` may be unknown."""

    model_config = ConfigDict(extra="forbid")

    current: int | float = Field(description="Units of work done so far.")
    total: int | float | None = Field(default=None, description="Units of work in all, if known.")


class LogLine(BaseModel):
    """One log line of a run: ``{"ts": 1763700000.1, "level": "INFO", "message": "faces: 2"}``."""

    model_config = ConfigDict(extra="forbid")

    ts: float = Field(description="Unix time in seconds.")
    level: str = Field(default="INFO", description="Log level name, e.g. INFO or WARNING.")
    message: str


class RunError(BaseModel):
    """Why a run failed or was cancelled: a code, a public message, and whether to retry.

    Never carries a stack trace or a secret: details go to the server log.
    """

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Machine-readable code, e.g. 'timeout' or 'upstream_failed'.")
    message: str = Field(description="Human-readable, public description.")
    retryable: bool = Field(
        default=False, description="Whether sending the request again may work."
    )


class RunState(BaseModel):
    """One event of a run, as sent on the wire (compact JSON, null fields left out).

    Example::

        {"type": "progress", "run_id": "r_8f2c…", "seq": 2, "status": "running", "code": 7,
         "state": "STARTED", "eta": [800, 2500], "progress": {"current": 3, "total": 10}}
    """

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    type: EventType = Field(description="Event kind; also the SSE `event:` name.")
    run_id: str = Field(description="Unguessable id of the run.")
    seq: int = Field(ge=0, description="Position of the event in its run: 1, 2, 3 …")
    status: RunStatus | None = Field(default=None, description="Canonical lifecycle step.")
    code: int | None = Field(
        default=None,
        description="inference.sh's numeric code of `status` (1 … 8, 10, 11, 12); set with it.",
    )
    state: str | None = Field(default=None, description="The deployment's own state word.")
    eta: ETA | None = Field(
        default=None, description="[min, max] milliseconds to completion; nulls when unknown."
    )
    progress: Progress | None = None
    logs: list[LogLine] | None = Field(
        default=None, description="Log lines new since the previous event."
    )
    partial_output: Any | None = Field(default=None, description="An intermediate output.")
    results: list[dict[str, Any]] | None = Field(
        default=None,
        description="The outputs, as SCALE's single-key objects, e.g. {'image': '<base64>'}.",
    )
    inputs: Any | None = Field(default=None, description="The run's inputs (include_inputs).")
    error: RunError | None = None
    first_seq: int | None = Field(
        default=None, description="On `reset` only: the first seq the store still keeps."
    )
    upstream_id: str | None = Field(
        default=None,
        description="The deployment's own id of the run (Ikomia SCALE's run uuid), once known.",
    )

    @model_validator(mode="after")
    def _status_code(self) -> RunState:
        """Every state that carries a status carries its numeric code as well."""
        if self.status is not None and self.code is None:
            self.code = _CODES[self.status]
        return self

    @property
    def event_id(self) -> str:
        """The SSE ``id``: ``"{run_id}:{seq}"``."""
        return f"{self.run_id}:{self.seq}"

    @property
    def is_terminal(self) -> bool:
        """True for ``result``, ``failed``, ``cancelled`` and ``done`` events."""
        return self.type in _TERMINAL_TYPES

    def to_json(self) -> str:
        """Compact JSON with null fields left out, as sent in ``data:`` and JSON lines."""
        # The serializer itself: model_dump_json's wrapper costs a tenth of the call.
        return self.__pydantic_serializer__.to_json(self, exclude_none=True).decode()


_TERMINAL_TYPES = frozenset(
    {EventType.RESULT, EventType.FAILED, EventType.CANCELLED, EventType.DONE}
)
