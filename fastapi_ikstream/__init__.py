"""fastapi-ikstream: put any ML deployment behind a FastAPI endpoint and stream its runs.

Public names are re-exported here; optional integrations live in submodules
(``security``, ``ratelimit``, ``client``, ``testing``, ``ikomia``, ``redis``).
"""

from ._admission import Quotas as Quotas
from ._deployments import CallableDeployment as CallableDeployment
from ._deployments import Deployment as Deployment
from ._deployments import GeneratorDeployment as GeneratorDeployment
from ._deployments import as_deployment as as_deployment
from ._errors import validation_exception_handler as validation_exception_handler
from ._exceptions import DeploymentError as DeploymentError
from ._exceptions import DeploymentTimeoutError as DeploymentTimeoutError
from ._exceptions import IKStreamError as IKStreamError
from ._exceptions import MissingExtraError as MissingExtraError
from ._exceptions import QuotaExceededError as QuotaExceededError
from ._exceptions import RunCancelledError as RunCancelledError
from ._exceptions import RunFailedError as RunFailedError
from ._exceptions import RunNotFoundError as RunNotFoundError
from ._exceptions import StoreError as StoreError
from ._exceptions import StoreUnavailableError as StoreUnavailableError
from ._exceptions import StreamConsumedError as StreamConsumedError
from ._exceptions import UpstreamError as UpstreamError
from ._exceptions import UpstreamIncompleteError as UpstreamIncompleteError
from ._exceptions import UpstreamTimeoutError as UpstreamTimeoutError
from ._memory import MemoryRunStore as MemoryRunStore
from ._models import EventType as EventType
from ._models import LogLine as LogLine
from ._models import Progress as Progress
from ._models import RunError as RunError
from ._models import RunState as RunState
from ._models import RunStatus as RunStatus
from ._models import status_from_state as status_from_state
from ._request import RunRequest as RunRequest
from ._request import decode_image_input as decode_image_input
from ._response import EventStreamResponse as EventStreamResponse
from ._routing import DeploymentProvider as DeploymentProvider
from ._routing import RunProvider as RunProvider
from ._routing import StreamRouter as StreamRouter
from ._routing import create_router as create_router
from ._run import StreamingRun as StreamingRun
from ._runs import RunManager as RunManager
from ._store import RunInfo as RunInfo
from ._store import RunStore as RunStore
from ._store import StoredEvent as StoredEvent
from ._store import Subscription as Subscription
from ._wire import encode_jsonl as encode_jsonl
from ._wire import encode_sse as encode_sse

__version__ = "0.1.0"

__all__ = [
    "CallableDeployment",
    "Deployment",
    "DeploymentError",
    "DeploymentProvider",
    "DeploymentTimeoutError",
    "EventStreamResponse",
    "EventType",
    "GeneratorDeployment",
    "IKStreamError",
    "LogLine",
    "MemoryRunStore",
    "MissingExtraError",
    "Progress",
    "QuotaExceededError",
    "Quotas",
    "RunCancelledError",
    "RunError",
    "RunFailedError",
    "RunInfo",
    "RunManager",
    "RunNotFoundError",
    "RunProvider",
    "RunRequest",
    "RunState",
    "RunStatus",
    "RunStore",
    "StoreError",
    "StoreUnavailableError",
    "StoredEvent",
    "StreamConsumedError",
    "StreamRouter",
    "StreamingRun",
    "Subscription",
    "UpstreamError",
    "UpstreamIncompleteError",
    "UpstreamTimeoutError",
    "as_deployment",
    "create_router",
    "decode_image_input",
    "encode_jsonl",
    "encode_sse",
    "status_from_state",
    "validation_exception_handler",
]
