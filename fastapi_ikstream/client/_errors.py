"""The client's exceptions and warning (the tree is drawn in `fastapi_ikstream.client`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from .._exceptions import IKStreamError

__all__ = [
    "StreamConnectionError",
    "StreamError",
    "StreamHTTPError",
    "StreamProtocolError",
    "StreamResumeError",
    "StreamTimeoutError",
    "StreamTimeoutWarning",
]


class StreamError(IKStreamError):
    """Reading a run's stream went wrong (see the module docstring for the tree)."""


class StreamHTTPError(StreamError):
    """The server answered with a non-2xx status before the stream began.

    Attributes:
        status_code: the HTTP status, e.g. 401 or 429.
        body: the answer's JSON body (e.g. ``{"detail": "..."}``), or its text if not JSON.
        headers: the answer's headers (e.g. ``Retry-After`` on a 429).
        url: the requested URL.
    """

    def __init__(
        self,
        status_code: int,
        body: Any,
        *,
        headers: Mapping[str, str] | None = None,
        url: str = "",
    ) -> None:
        detail = body.get("detail", body) if isinstance(body, dict) else body
        super().__init__(f"HTTP {status_code} from {url or 'the server'}: {detail}")
        self.status_code = status_code
        self.body = body
        self.headers: dict[str, str] = dict(headers or {})
        self.url = url

    @classmethod
    def from_response(cls, response: httpx.Response) -> StreamHTTPError:
        """Build from a response whose body has been read."""
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        return cls(response.status_code, body, headers=response.headers, url=str(response.url))


class StreamTimeoutError(StreamError, TimeoutError):
    """No byte arrived for ``seconds`` seconds.

    Attributes:
        seconds: the inactivity timeout that passed.
        status: 408 (Request Timeout), as fal's stream reports it.
    """

    status = 408

    def __init__(self, seconds: float | None, message: str | None = None) -> None:
        if message is None:
            message = f"the event stream sent nothing for {seconds or 0:g} s"
        super().__init__(message)
        self.seconds = seconds


class StreamProtocolError(StreamError):
    """The answer is not an event stream, or an event is not a valid run state."""


class StreamConnectionError(StreamError, ConnectionError):
    """The connection could not be made, or it dropped and reconnecting failed.

    Attributes:
        last_event_id: the id of the last event received (``"{run_id}:{seq}"``), or None.
    """

    def __init__(self, message: str, *, last_event_id: str | None = None) -> None:
        super().__init__(message)
        self.last_event_id = last_event_id


class StreamResumeError(StreamConnectionError):
    """The server could not resume the run after a dropped connection.

    When the server answered with an error status, ``__cause__`` is a `StreamHTTPError`.
    """


class StreamTimeoutWarning(UserWarning):
    """A response's httpx read timeout is shorter than the stream's inactivity timeout."""
