"""fastapi-ikstream: put any ML deployment behind a FastAPI endpoint and stream its runs.

The root exports what an app writes (``__all__``, 20 names). The rest is in public
submodules: ``models`` (run states, requests), ``deployments``, ``routing`` (the router's
parts), ``stores`` (and ``redis``), ``wire`` (encoders, the response), ``errors``, and the
integrations ``security``, ``ratelimit``, ``client``, ``testing``, ``ikomia``, ``remote``,
``usage``, ``metrics``, ``tracing``. Names of those submodules that earlier versions
exported here still import from the root, but are not part of its API.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._admission import Quotas as Quotas
from ._deployments import CallableDeployment as CallableDeployment
from ._deployments import Deployment as Deployment
from ._deployments import GeneratorDeployment as GeneratorDeployment
from ._deployments import as_deployment as as_deployment
from ._exceptions import DeploymentError as DeploymentError
from ._exceptions import IKStreamError as IKStreamError
from ._exceptions import RunFailedError as RunFailedError
from ._exceptions import StoreError as StoreError
from ._exceptions import StoreUnavailableError as StoreUnavailableError
from ._memory import MemoryRunStore as MemoryRunStore
from ._models import EventType as EventType
from ._models import RunError as RunError
from ._models import RunState as RunState
from ._models import RunStatus as RunStatus
from ._request import RunRequest as RunRequest
from ._response import EventStreamResponse as EventStreamResponse
from ._routing import create_router as create_router
from ._run import StreamingRun as StreamingRun
from ._store import RunStore as RunStore

__version__ = "0.1.0"

__all__ = [
    "CallableDeployment",
    "Deployment",
    "DeploymentError",
    "EventStreamResponse",
    "EventType",
    "GeneratorDeployment",
    "IKStreamError",
    "MemoryRunStore",
    "Quotas",
    "RunError",
    "RunFailedError",
    "RunRequest",
    "RunState",
    "RunStatus",
    "RunStore",
    "StoreError",
    "StoreUnavailableError",
    "StreamingRun",
    "as_deployment",
    "create_router",
]

_MOVED = {
    "errors": (
        "DeploymentTimeoutError",
        "MissingExtraError",
        "QuotaExceededError",
        "RunCancelledError",
        "RunNotFoundError",
        "StreamConsumedError",
        "UpstreamError",
        "UpstreamIncompleteError",
        "UpstreamTimeoutError",
        "validation_exception_handler",
    ),
    "models": ("LogLine", "Progress", "decode_image_input", "status_from_state"),
    "routing": ("DeploymentProvider", "RunManager", "RunProvider", "StreamRouter"),
    "stores": ("RunInfo", "StoredEvent", "Subscription"),
    "wire": ("encode_jsonl", "encode_sse"),
}
_MODULE_OF = {name: module for module, names in _MOVED.items() for name in names}


def __getattr__(name: str) -> Any:
    """The names earlier versions exported here, from their public submodules (PEP 562)."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
