"""Deployments: the seam between a request and whatever runs the job.

A deployment turns a validated request (``inputs`` and ``parameters``) into a run source
that `StreamingRun` drives: a function of ``on_progress``, or an async iterable of updates.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from ._run import OnProgress, RunSource

__all__ = [
    "CallableDeployment",
    "Deployment",
    "GeneratorDeployment",
    "as_deployment",
]


@runtime_checkable
class Deployment(Protocol):
    """Anything that can start a run.

    ``open_run`` is called once per run, with the request's ``inputs`` (a list of input
    objects for the default request model, or the user's own request model instance) and
    ``parameters`` (a mapping of names to values; empty for a user's own model). It returns
    what `StreamingRun` takes: ``fn(on_progress) -> results`` or an async iterable of updates.
    """

    def open_run(self, inputs: Any, parameters: Mapping[str, Any]) -> RunSource:
        """Start describing one run; the work itself starts when the source is driven."""
        ...


RunFunction = Callable[[Any, Mapping[str, Any], OnProgress], Awaitable[Any]]
GeneratorFunction = Callable[[Any, Mapping[str, Any]], AsyncIterable[Any]]


class CallableDeployment:
    """A deployment from ``async def fn(inputs, parameters, on_progress) -> results``.

    ``on_progress`` takes keyword arguments (``state``, ``status``, ``eta`` as ``[min, max]``
    milliseconds, ``progress`` as ``{"current", "total"}``, ``logs``, ``partial_output``) and
    ``results`` is a list of single-key output objects such as ``{"image": "<base64>"}``.

    Args:
        fn: the run function.
        name: a name for logs and documentation. Default: the function's name.
    """

    def __init__(self, fn: RunFunction, *, name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "deployment")

    def open_run(self, inputs: Any, parameters: Mapping[str, Any]) -> RunSource:
        """See `Deployment.open_run`."""
        fn = self.fn
        return lambda on_progress: fn(inputs, parameters, on_progress)


class GeneratorDeployment:
    """A deployment from ``async def gen(inputs, parameters)`` that yields updates.

    Each yielded item is a dict of update fields (``state``, ``progress``, ``logs``,
    ``partial_output``, ``eta`` …); an item with ``results`` ends the run with a ``result``.

    Args:
        fn: the async generator function.
        name: a name for logs and documentation. Default: the function's name.
    """

    def __init__(self, fn: GeneratorFunction, *, name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "deployment")

    def open_run(self, inputs: Any, parameters: Mapping[str, Any]) -> RunSource:
        """See `Deployment.open_run`."""
        return self.fn(inputs, parameters)


def as_deployment(obj: Any) -> Deployment:
    """Coerce ``obj`` to a `Deployment`.

    Args:
        obj: a `Deployment`, an async generator function ``(inputs, parameters)``, or a
            function ``(inputs, parameters, on_progress)``.

    Raises:
        TypeError: ``obj`` is none of these.
    """
    if isinstance(obj, Deployment):
        return obj
    if inspect.isasyncgenfunction(obj):
        return GeneratorDeployment(obj)
    if callable(obj):
        return CallableDeployment(obj)
    raise TypeError(f"not a deployment: {obj!r}")
