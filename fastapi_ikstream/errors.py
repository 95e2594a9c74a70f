"""The package's exceptions, and the handler that turns validation errors into JSON.

The tree (``IKStreamError`` at its root) is drawn in the docstring of each class's module;
the client module adds its own branch (``fastapi_ikstream.client.StreamError``).
"""

from ._errors import validation_exception_handler
from ._exceptions import (
    DeploymentError,
    DeploymentTimeoutError,
    IKStreamError,
    MissingExtraError,
    QuotaExceededError,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
    StoreError,
    StoreUnavailableError,
    StreamConsumedError,
    UpstreamError,
    UpstreamIncompleteError,
    UpstreamTimeoutError,
)

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
    "validation_exception_handler",
]
