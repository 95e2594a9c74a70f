"""Exceptions raised by fastapi-ikstream.

The tree, in the manner of httpx's ``_exceptions.py``::

    IKStreamError
    ├── StreamConsumedError (also RuntimeError)  a StreamingRun iterated twice
    ├── DeploymentError                          a deployment failed; its message is public
    │   ├── DeploymentTimeoutError (also TimeoutError)
    │   └── UpstreamError                        an upstream API failed (``upstream_error``)
    │       ├── UpstreamTimeoutError (also TimeoutError)   silent too long (``upstream_timeout``)
    │       └── UpstreamIncompleteError          stream ended early (``upstream_incomplete``)
    ├── RunFailedError                           a run ended with a ``failed`` state
    ├── RunCancelledError                        a run ended with a ``cancelled`` state
    ├── MissingExtraError (also ImportError)     an optional dependency is not installed
    └── StoreError                               the run store refused an operation
        ├── RunNotFoundError (also KeyError)
        ├── QuotaExceededError                   a caller has too many unfinished runs
        └── StoreUnavailableError                the store's backend cannot be reached

The client module adds its own branch (``StreamError`` and its subclasses).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._models import RunState

__all__ = [
    "DeploymentError",
    "DeploymentTimeoutError",
    "IKStreamError",
    "MissingExtraError",
    "QuotaExceededError",
    "RunCancelledError",
    "RunFailedError",
    "RunNotFoundError",
    "StoreError",
    "StoreUnavailableError",
    "StreamConsumedError",
    "UpstreamError",
    "UpstreamIncompleteError",
    "UpstreamTimeoutError",
]


class IKStreamError(Exception):
    """Root of every exception raised by fastapi-ikstream."""


class StreamConsumedError(IKStreamError, RuntimeError):
    """A `StreamingRun` was iterated a second time; a run is consumed once."""


class DeploymentError(IKStreamError):
    """A deployment failed with a message that is safe to show to the caller.

    Deployments raise it (or the adapters translate upstream errors into it) to end a run
    with a ``failed`` state whose ``error`` carries ``code``, this message and ``retryable``.
    Any other exception is logged on the server and reported with a generic message.

    Args:
        message: public, one-line description of what went wrong (no secret, no trace).
        code: short machine-readable code, e.g. ``"upstream_failed"``.
            Default ``"deployment_error"``.
        retryable: whether the same request may succeed if sent again. Default False.
    """

    def __init__(
        self, message: str, *, code: str = "deployment_error", retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable


class DeploymentTimeoutError(DeploymentError, TimeoutError):
    """A deployment ran past its time limit (``failed`` state with code ``timeout``)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"The deployment did not finish within {seconds:g} s.", code="timeout", retryable=True
        )
        self.seconds = seconds


class UpstreamError(DeploymentError):
    """An upstream streaming API failed: an HTTP error status, no connection, a bad event.

    Raised by `fastapi_ikstream.remote.RemoteDeployment`; the run ends ``failed`` with this
    code (``upstream_error`` by default, ``upstream_unreachable`` when no connection could
    be made).

    Args:
        message: public, one-line description (never the upstream's body or a secret).
        code: the run error's code. Default ``"upstream_error"``.
        status_code: the upstream's HTTP status, when it answered one. Default None.
        retryable: whether sending the request again may work. Default: true for no status,
            429 and 5xx; false for other statuses.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "upstream_error",
        status_code: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        if retryable is None:
            retryable = status_code is None or status_code == 429 or status_code >= 500
        super().__init__(message, code=code, retryable=retryable)
        self.status_code = status_code


class UpstreamTimeoutError(UpstreamError, TimeoutError):
    """The upstream sent nothing (not even a keep-alive) for ``seconds`` (``upstream_timeout``).

    Args:
        seconds: the inactivity timeout that ran out.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"The upstream sent nothing for {seconds:g} s.", code="upstream_timeout", retryable=True
        )
        self.seconds = seconds


class UpstreamIncompleteError(UpstreamError):
    """The upstream stream ended, and could not be resumed, before a terminal event.

    The run ends ``failed`` with code ``upstream_incomplete`` (retryable).

    Args:
        message: public description. Default: the stream ended before the run did.
    """

    def __init__(self, message: str = "The upstream stream ended before the run did.") -> None:
        super().__init__(message, code="upstream_incomplete", retryable=True)


class RunFailedError(IKStreamError):
    """A run ended with a ``failed`` state.

    Raised by `StreamingRun.aiter_states` (when ``raise_on_error`` is true) after it has
    yielded the ``failed`` and ``done`` states, and by the client helpers.

    Attributes:
        state: the ``failed`` `RunState`, whose ``error`` says why.
    """

    def __init__(self, state: RunState) -> None:
        message = state.error.message if state.error is not None else "run failed"
        super().__init__(message)
        self.state = state


class RunCancelledError(IKStreamError):
    """A run ended with a ``cancelled`` state.

    Attributes:
        state: the ``cancelled`` `RunState`.
    """

    def __init__(self, state: RunState) -> None:
        message = state.error.message if state.error is not None else "run cancelled"
        super().__init__(message)
        self.state = state


class MissingExtraError(IKStreamError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"{module} needs the '{extra}' extra: pip install \"fastapi-ikstream[{extra}]\""
        )
        self.extra = extra


class StoreError(IKStreamError):
    """The run store could not carry out an operation."""


class RunNotFoundError(StoreError, KeyError):
    """No run with this id is in the store (never started, expired or evicted)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "run not found"


class QuotaExceededError(StoreError):
    """A caller already has as many unfinished runs as allowed (answered 429).

    Attributes:
        limit: the number of unfinished runs allowed.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} unfinished run{'s' if limit != 1 else ''} at once")
        self.limit = limit


class StoreUnavailableError(StoreError):
    """The run store's backend (Redis, say) cannot be reached or refused to answer.

    Its message is public and fixed: it never names a host, a port or the driver's own
    text, which are logged on the server instead. The router answers it with 503 and a
    ``Retry-After``; an open stream ends so that its client reconnects (see
    ``docs/concepts/security.md``).
    """

    def __init__(self, message: str = "The run store is unavailable; try again shortly.") -> None:
        super().__init__(message)
