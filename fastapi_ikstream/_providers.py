"""The dependencies a router's endpoints get their deployment and runs from.

Both are callable classes, as ``fastapi.security.HTTPBearer`` is: a test swaps either with
``app.dependency_overrides`` (see `StreamRouter`).
"""

import inspect
from collections.abc import Callable
from typing import Any

from fastapi import Depends, HTTPException

from ._deployments import Deployment, as_deployment
from ._exceptions import DeploymentError
from ._request import RunRequest
from ._run import DEFAULT_TIMEOUT, StreamingRun, new_run_id
from ._updates import deployment_name

__all__ = ["DeploymentProvider", "RunProvider"]

_KW = inspect.Parameter.POSITIONAL_OR_KEYWORD


class DeploymentProvider:
    """Dependency that gives the router's deployment; override it in tests.

    Example::

        app.dependency_overrides[router.deployment_provider] = lambda: FakeDeployment(states)
    """

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment

    async def __call__(self) -> Deployment:
        """The deployment."""
        return self.deployment


class RunProvider:
    """Dependency giving the function that builds a request's `StreamingRun`; override it.

    The function takes the validated input (a `RunRequest`, or the router's own
    ``request_model``) and returns a run, not started. It is called only when a request
    starts a run: never for a resume, nor for a request refused by a limit.

    Args:
        deployment_provider: the dependency giving the deployment.
        include_inputs: send the inputs on the ``result`` event.
        timeout: seconds a deployment may run (``failed`` with code ``timeout`` after).
        keep_alive: seconds of silence before a keep-alive is sent; 0 disables.
        retry: SSE ``retry:`` in milliseconds, on each connection's first event.
    """

    def __init__(
        self,
        deployment_provider: DeploymentProvider,
        *,
        include_inputs: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        keep_alive: float = 10.0,
        retry: int | None = 3000,
    ) -> None:
        self.deployment_provider = deployment_provider
        self.include_inputs = include_inputs
        self.timeout = timeout
        self.keep_alive = keep_alive
        self.retry = retry
        # FastAPI reads the dependency's parameters from this signature.
        self.__signature__ = inspect.Signature(
            [
                inspect.Parameter(
                    "deployment", _KW, annotation=Any, default=Depends(deployment_provider)
                )
            ]
        )

    async def __call__(self, deployment: Any) -> Callable[[Any], StreamingRun]:
        """The run builder for this request's deployment."""
        return lambda payload: self.build(deployment, payload)

    def build(self, deployment: Any, payload: Any) -> StreamingRun:
        """A new run of ``deployment`` for the validated input ``payload``.

        The run's usage record names the deployment (`deployment_name`): its ``name``
        attribute, else its class's name.
        """
        if isinstance(payload, RunRequest):
            inputs: Any = payload.inputs
            parameters: dict[str, Any] = dict(payload.parameters)
            if payload.task_name:
                parameters["task_name"] = payload.task_name
        else:
            inputs, parameters = payload, {}
        keep = self.include_inputs and isinstance(payload, RunRequest)
        deployment = as_deployment(deployment)
        try:
            source = deployment.open_run(inputs, parameters)
        except DeploymentError as exc:  # refused before any run exists: nothing is held
            raise HTTPException(
                422 if exc.code == "invalid_input" else 502,
                detail={"error": exc.code, "message": exc.message, "retryable": exc.retryable},
            ) from exc
        run = StreamingRun(
            source,
            run_id=new_run_id(),
            inputs=inputs if keep else None,
            include_inputs=self.include_inputs,
            keep_alive=self.keep_alive,
            timeout=self.timeout,
            retry=self.retry,
        )
        run.usage.deployment = deployment_name(deployment)
        return run
