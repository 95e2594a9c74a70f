"""Reading a progress update into the fields of a `RunState`, without validating twice.

A run reports updates many times a second. What the deployment gives (log lines, progress)
is validated once, each kind in one pydantic call (all of an update's log lines at once,
no model built per line in Python); the `RunState` around them is then assembled from values
the package made itself, of their fields' exact types, without validating them a second time
(`trusted_state`). The state's JSON is the same, byte for byte, as a `RunState` validated
from the same update: ``tests/test_updates.py`` checks it.

An update may also carry the deployment's own usage (``"usage": {"output_tokens": 512}``):
`RunUsage` keeps it for the run's usage record, off the wire.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter

from ._ikclient import raw_outputs
from ._models import LogLine, Progress, RunState

__all__ = [
    "RunUsage",
    "deployment_name",
    "eta_of",
    "logs_of",
    "progress_of",
    "results_of",
    "trusted",
    "trusted_state",
]

logger = logging.getLogger("fastapi_ikstream")

M = TypeVar("M", bound=BaseModel)

_setattr = object.__setattr__
_STATE_TEMPLATE: dict[str, Any] = {  # every field, in the model's order (the JSON's order)
    name: None if field.is_required() else field.default
    for name, field in RunState.model_fields.items()
}
# The adapters' own validators, called without TypeAdapter's per-call Python wrapper.
_validate_lines = TypeAdapter(list[LogLine]).validator.validate_python
_validate_progress = TypeAdapter(Progress).validator.validate_python


def trusted(cls: type[M], fields: dict[str, Any]) -> M:
    """A model holding ``fields`` as given, unvalidated.

    ``fields`` holds every field, of its exact type, in the model's field order (the
    serializer writes them in the order they are held).
    """
    model = cls.__new__(cls)
    _setattr(model, "__dict__", fields)
    _setattr(model, "__pydantic_fields_set__", set(fields))
    _setattr(model, "__pydantic_extra__", None)
    _setattr(model, "__pydantic_private__", None)
    return model


def trusted_state(fields: dict[str, Any]) -> RunState:
    """A `RunState` from fields of their exact types (enums, models, ints); ``code`` is set."""
    values = _STATE_TEMPLATE.copy()
    values.update(fields)
    status = values["status"]
    if status is not None and values["code"] is None:
        values["code"] = status.code
    return trusted(RunState, values)


def _raw_line(item: Any, now: float) -> Any:
    if type(item) is dict:  # the common case, without the ABC checks below
        return item if "ts" in item else {"ts": now, **item}
    if isinstance(item, LogLine):
        return item
    if isinstance(item, Mapping):
        return item if "ts" in item else {"ts": now, **item}
    return {"ts": now, "message": str(item)}


def logs_of(update: Mapping[str, Any]) -> list[LogLine] | None:
    """The update's log lines (``logs`` and ``log``) as `LogLine`s, a ``ts`` added if missing.

    All lines are validated in one call (pydantic builds the models), not one model at a time.

    Raises:
        ValidationError: a line is not a log line.
    """
    logs = update.get("logs")
    line = update.get("log")
    if logs and not line and type(logs) is list:
        for item in logs:
            if type(item) is not dict or "ts" not in item:
                break
        else:  # the common case: dicts that carry their time, validated as they are
            return _validate_lines(logs)  # type: ignore[no-any-return]
    raw: list[Any] = []
    if logs:
        raw.extend(logs)
    if line:
        raw.append(line)
    if not raw:
        return None
    now = time.time()
    return _validate_lines([_raw_line(item, now) for item in raw])  # type: ignore[no-any-return]


def eta_of(value: Any) -> tuple[int | None, int | None]:
    """An ETA as ``(low, high)`` integers (milliseconds), either may be None."""
    low, high = value
    return (None if low is None else int(low), None if high is None else int(high))


def progress_of(value: Any) -> Progress | None:
    """A progress value (a `Progress`, a mapping, ``(current, total)`` or a number), validated.

    Raises:
        ValidationError: it is not a progress value.
    """
    if value is None or isinstance(value, Progress):
        return value
    if type(value) is dict:
        return _validate_progress(value)  # type: ignore[no-any-return]
    if isinstance(value, tuple | list):
        value = {"current": value[0], "total": value[1] if len(value) > 1 else None}
    elif not isinstance(value, Mapping):
        value = {"current": value}
    return _validate_progress(value)  # type: ignore[no-any-return]


def results_of(value: Any) -> list[dict[str, Any]] | None:
    """Outputs as SCALE's single-key objects, from a list, a dict or an ``ikclient`` Results."""
    if value is None:
        return None
    if isinstance(value, list):
        return [dict(item) for item in value]
    if isinstance(value, Mapping):
        inner = value.get("results")
        return results_of(inner) if isinstance(inner, list) else [dict(value)]
    outputs = raw_outputs(value)  # an ikclient Results
    if outputs is not None:
        return [dict(item) for item in outputs]
    return [{"DATA_DICT": value}] if isinstance(value, str | int | float | bool) else None


def deployment_name(deployment: Any) -> str:
    """The name a usage record gives ``deployment``: its ``name``, else its class's name.

    A ``name`` attribute counts when it is a non-empty string. A function given as the
    deployment is wrapped in a ``CallableDeployment`` or ``GeneratorDeployment`` named
    after the function.
    """
    name = getattr(deployment, "name", None)
    if isinstance(name, str) and name:
        return name
    return type(deployment).__name__


def _usage_value(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int | str)


class RunUsage:
    """A run's own usage, as its deployment reports it in updates; never sent to readers.

    An update's ``usage`` is a mapping of names to numbers or strings; each key replaces
    the value it had (report running totals). An entry that is not a string key with an
    int, a finite float or a string value is left out with a warning (the run goes on), as
    is a ``usage`` that is not a mapping.

    Attributes:
        deployment: the name of the run's deployment (`deployment_name`), or None.
        values: the usage reported so far.
        listener: called after ``values`` changed, or None.
    """

    __slots__ = ("deployment", "listener", "run_id", "values")

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.deployment: str | None = None
        self.values: dict[str, int | float | str] = {}
        self.listener: Callable[[], None] | None = None

    def take(self, update: Mapping[str, Any]) -> Mapping[str, Any]:
        """Keep ``update``'s ``usage``; returns the update without it."""
        rest = {key: value for key, value in update.items() if key != "usage"}
        self.merge(update["usage"])
        return rest

    def merge(self, usage: Any) -> None:
        """Merge one reported ``usage`` mapping (see the class docstring)."""
        if not isinstance(usage, Mapping):
            logger.warning("run %s: usage %.100r is not a mapping; ignored", self.run_id, usage)
            return
        changed = False
        for key, value in usage.items():
            if not isinstance(key, str) or not _usage_value(value):
                logger.warning(
                    "run %s: usage %.100r: %.100r is not an int, float or str; ignored",
                    self.run_id,
                    key,
                    value,
                )
                continue
            if self.values.get(key, _MISSING) != value:
                self.values[key] = value
                changed = True
        if changed and self.listener is not None:
            self.listener()


_MISSING = object()
