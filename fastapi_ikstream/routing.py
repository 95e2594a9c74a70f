"""The router and what it is made of.

`create_router`, the `StreamRouter` it returns, the dependencies a test can override
(`DeploymentProvider`, `RunProvider`), the per-caller `Quotas`, and the `RunManager` that
owns a router's runs.
"""

from ._admission import Quotas
from ._routing import DeploymentProvider, RunProvider, StreamRouter, create_router
from ._runs import RunManager

__all__ = [
    "DeploymentProvider",
    "Quotas",
    "RunManager",
    "RunProvider",
    "StreamRouter",
    "create_router",
]
