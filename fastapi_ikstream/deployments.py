"""Deployments: what a router runs (``Deployment``), and adapters for plain callables.

A `Deployment` opens one run per request; `CallableDeployment` wraps a function that
reports progress through ``on_progress``, `GeneratorDeployment` an async generator of
updates, and `as_deployment` picks the right one. Ikomia SCALE deployments are in
``fastapi_ikstream.ikomia``, other streaming APIs in ``fastapi_ikstream.remote``.
"""

from ._deployments import CallableDeployment, Deployment, GeneratorDeployment, as_deployment

__all__ = ["CallableDeployment", "Deployment", "GeneratorDeployment", "as_deployment"]
