"""Run states and requests: what goes on the wire, and what a run-starting request holds.

`RunState` is one event of a run (pydantic v2); `RunStatus`, `EventType`, `Progress`,
`LogLine` and `RunError` are its parts; `status_from_state` maps a deployment's state word
to a `RunStatus`. `RunRequest` is the router's default request body, and
`decode_image_input` the only way an input string becomes image bytes.
"""

from ._models import (
    EventType,
    LogLine,
    Progress,
    RunError,
    RunState,
    RunStatus,
    status_from_state,
)
from ._request import RunRequest, decode_image_input

__all__ = [
    "EventType",
    "LogLine",
    "Progress",
    "RunError",
    "RunRequest",
    "RunState",
    "RunStatus",
    "decode_image_input",
    "status_from_state",
]
