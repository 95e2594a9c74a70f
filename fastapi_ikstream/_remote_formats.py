"""How an upstream's events become run updates: the mappings `RemoteDeployment` uses.

A mapping turns one `UpstreamEvent` into an update for `StreamingRun` (the fields that
``on_progress`` takes: ``state``, ``status``, ``eta``, ``progress``, ``logs``,
``partial_output``, ``results``), or into None to skip it. Two more keys are read and removed
before the update goes on: ``run_id`` (the upstream's id for the run, used to cancel it) and
``error`` (with ``status`` ``"failed"`` or ``"cancelled"``: a ``{"code", "message",
"retryable"}`` mapping or a message).

An update ends the run when it has ``results`` or a ``status`` of ``"completed"`` (the
result, its results empty if none came), ``"failed"`` or ``"cancelled"``; an upstream cancel
the run did not ask for ends it ``failed`` with code ``upstream_cancelled``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from ._exceptions import UpstreamError, UpstreamIncompleteError
from ._models import RunStatus

__all__ = [
    "FAL",
    "IKSTREAM",
    "INFERENCE_SH",
    "EventMapping",
    "MapEvent",
    "OnClose",
    "UpstreamEvent",
    "fal_close",
    "fal_event",
    "ikstream_event",
    "inference_sh_event",
]


@dataclass(frozen=True, slots=True)
class UpstreamEvent:
    """One event read from an upstream stream.

    Attributes:
        data: the event's data (an SSE event's ``data:`` lines, or one JSON line).
        event: the SSE event name; ``"message"`` when none was sent and for JSON lines.
        id: the SSE event id (the last one sent, as SSE defines it); None for JSON lines.
    """

    data: str
    event: str = "message"
    id: str | None = None

    def json(self) -> Any:
        """The data parsed as JSON.

        Raises:
            UpstreamError: the data is not JSON (code ``upstream_error``).
        """
        try:
            return json.loads(self.data)
        except ValueError:
            raise UpstreamError(
                "The upstream sent an event that is not JSON.", retryable=False
            ) from None


MapEvent: TypeAlias = Callable[[UpstreamEvent], Mapping[str, Any] | None]
"""Turns one upstream event into an update (see the module docstring), or None to skip it."""

OnClose: TypeAlias = Callable[[UpstreamEvent | None], Mapping[str, Any] | None]
"""Called when the upstream closes its stream cleanly before a terminal update, with the last
event read (None if there was none); returns the final update, or None if the close means the
stream was cut."""


@dataclass(frozen=True, slots=True)
class EventMapping:
    """An upstream format: how its events map to updates, and what a clean close means.

    Example::

        mapping = EventMapping(lambda event: {"partial_output": event.json()})

    Args:
        map_event: the event mapping.
        on_close: what a clean close before a terminal update means; None (the default) treats
            it as a dropped connection (resumed if the upstream sent event ids).
        resume_id: the ``Last-Event-ID`` to send when the connection dropped before any event
            carried an id, given the upstream's run id; None: no resume then. Default None.
        accept: the request's ``Accept`` header. Default ``"text/event-stream"``.
    """

    map_event: MapEvent
    on_close: OnClose | None = None
    resume_id: Callable[[str], str] | None = None
    accept: str = "text/event-stream"


def _present(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def _object_of(event: UpstreamEvent) -> Mapping[str, Any]:
    payload = event.json()
    if not isinstance(payload, Mapping):
        raise UpstreamError(
            "The upstream sent an event that is not a JSON object.", retryable=False
        )
    return payload


def ikstream_event(event: UpstreamEvent) -> Mapping[str, Any] | None:
    """Map an event of another fastapi-ikstream server: its run states, kind for kind.

    The upstream's ``run`` and ``done`` events are left out (the downstream run sends its
    own), so the downstream stream has the upstream's events at the same seqs.

    Raises:
        UpstreamIncompleteError: a ``reset``: the upstream no longer keeps the events missed.
        UpstreamError: the event is not a JSON object.
    """
    payload = _object_of(event)
    kind = payload.get("type")
    run_id = payload.get("run_id")
    if kind == "reset":
        raise UpstreamIncompleteError("The upstream no longer keeps the events this run missed.")
    if kind in ("run", "done", "keepalive", None):
        return _present(run_id=run_id)
    if kind == "log":
        return _present(run_id=run_id, logs=payload.get("logs"))
    if kind == "result":
        return _present(
            run_id=run_id, results=payload.get("results") or [], state=payload.get("state")
        )
    if kind in ("failed", "cancelled"):
        return _present(run_id=run_id, status=kind, error=payload.get("error"))
    return _present(
        run_id=run_id,
        status=payload.get("status"),
        state=payload.get("state"),
        eta=payload.get("eta"),
        progress=payload.get("progress"),
        logs=payload.get("logs"),
        partial_output=payload.get("partial_output"),
    )


_BY_CODE = {status.code: status for status in RunStatus}


def _inference_status(value: Any) -> RunStatus | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return _BY_CODE.get(value)
    if isinstance(value, str):
        try:
            return RunStatus(value.lower())
        except ValueError:
            return None
    return None


def inference_sh_event(event: UpstreamEvent) -> Mapping[str, Any] | None:
    """Map an inference.sh-style task update to an update.

    The update's ``status`` (a name such as ``"running"`` or its numeric code, 1 … 12) gives
    the run status and is kept as the ``state`` word; ``progress``, ``logs`` (strings, new
    since the last update) and ``partial_output`` pass through; ``completed`` gives
    ``results`` ``[{"DATA_DICT": output}]``; ``failed`` carries ``error`` (a message). The
    task id is read from ``id`` or ``task_id``.

    Raises:
        UpstreamError: the event is not a JSON object.
    """
    update = _object_of(event)
    raw = update.get("status")
    status = _inference_status(raw)
    run_id = update.get("id") or update.get("task_id")
    run_id = None if run_id is None else str(run_id)
    if status is RunStatus.COMPLETED:
        return _present(run_id=run_id, results=[{"DATA_DICT": update.get("output")}])
    if status in (RunStatus.FAILED, RunStatus.CANCELLED):
        assert status is not None
        return _present(run_id=run_id, status=status.value, error=update.get("error"))
    return _present(
        run_id=run_id,
        status=None if status is None else status.value,
        state=None if raw is None else str(raw),
        progress=update.get("progress"),
        logs=update.get("logs") or None,
        partial_output=update.get("partial_output"),
    )


def fal_event(event: UpstreamEvent) -> Mapping[str, Any] | None:
    """Map a fal-style stream event: its data is the output so far.

    Each event becomes a ``partial`` (status ``running``); `fal_close` makes the last one
    the result when the stream ends, as ``FalStream.done()`` does.

    Raises:
        UpstreamError: the data is not JSON.
    """
    return {"status": RunStatus.RUNNING.value, "partial_output": event.json()}


def fal_close(last: UpstreamEvent | None) -> Mapping[str, Any] | None:
    """A fal-style stream's clean close: the last event's data is the result.

    Returns:
        ``{"results": [{"DATA_DICT": data}]}``; None (the stream was cut) if no event came.
    """
    if last is None:
        return None
    return {"results": [{"DATA_DICT": last.json()}]}


IKSTREAM = EventMapping(ikstream_event, resume_id=lambda run_id: f"{run_id}:0")
"""Another fastapi-ikstream server (the default): resumed with its ``{run_id}:{seq}`` ids."""

INFERENCE_SH = EventMapping(inference_sh_event)
"""An inference.sh-style task stream; resumed when the upstream sends event ids."""

FAL = EventMapping(fal_event, on_close=fal_close)
"""A fal-style stream: partial outputs, the last one the result when the stream closes."""
