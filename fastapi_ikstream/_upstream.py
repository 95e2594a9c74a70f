"""One upstream stream as a `RemoteDeployment` run sees it.

Its events (Server-Sent Events parsed by ``httpx-sse``, or JSON lines), and the
`UpstreamCursor` that resumes them, skips what the upstream sends again, and takes each
mapped update in (see `fastapi_ikstream.remote`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._exceptions import DeploymentError, MissingExtraError
from ._remote_formats import UpstreamEvent

try:
    import httpx_sse
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise MissingExtraError("remote", "fastapi_ikstream.remote") from exc

__all__ = ["Dropped", "UpstreamCursor", "upstream_events"]


class Dropped(Exception):
    """The upstream connection ended early; resume it if possible."""


@dataclass
class UpstreamCursor:
    """Where one run stands in its upstream stream."""

    run_id: str | None = None
    last_id: str | None = None
    seen: set[str] = field(default_factory=set)
    replaying: bool = False
    last_event: UpstreamEvent | None = None
    received: int = 0
    connected: bool = False
    ended: bool = False

    def receive(self, event: UpstreamEvent) -> bool:
        """Count ``event`` in; False for one a resumed stream sends again (skip it)."""
        if event.id is not None:
            if self.replaying and event.id in self.seen:
                return False
            self.replaying = False
            self.seen.add(event.id)
            self.last_id = event.id
        self.received += 1
        self.last_event = event
        return True

    def accept(self, mapped: Mapping[str, Any] | None) -> dict[str, Any]:
        """A mapped update, with ``run_id`` and ``error`` taken out; raises on a failure."""
        if mapped is None:
            return {}
        update = dict(mapped)
        run_id = update.pop("run_id", None)
        if run_id is not None and self.run_id is None:
            self.run_id = str(run_id)
        error = update.pop("error", None)
        status = update.get("status")
        if status in ("failed", "cancelled"):
            self.ended = True
            raise _failure(str(status), error)
        if status == "completed" and update.get("results") is None:
            update["results"] = []
        if update.get("results") is not None:
            self.ended = True
        return update


async def upstream_events(response: httpx.Response) -> AsyncIterator[UpstreamEvent]:
    """The events of an upstream answer: SSE for ``text/event-stream``, else JSON lines."""
    content_type = response.headers.get("content-type", "").partition(";")[0].strip()
    if content_type == "text/event-stream":
        async for sse in httpx_sse.EventSource(response).aiter_sse():
            if sse.data:
                yield UpstreamEvent(sse.data, sse.event or "message", sse.id or None)
    else:
        async for line in response.aiter_lines():
            if line.strip():
                yield UpstreamEvent(line)


def _failure(status: str, error: Any) -> DeploymentError:
    if status == "cancelled":
        message = error.get("message") if isinstance(error, Mapping) else error
        return DeploymentError(
            str(message or "The upstream cancelled the run."), code="upstream_cancelled"
        )
    if isinstance(error, Mapping):
        return DeploymentError(
            str(error.get("message") or "The upstream run failed."),
            code=str(error.get("code") or "upstream_failed"),
            retryable=bool(error.get("retryable", False)),
        )
    return DeploymentError(str(error or "The upstream run failed."), code="upstream_failed")
