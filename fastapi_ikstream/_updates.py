"""Reading a progress update into the fields of a `RunState`, without validating twice.

A run reports updates many times a second; validating each through pydantic (a `RunState`
and a `LogLine` per log line) cost most of an event's time. Values whose exact types are
already those of the model (a ``str`` message, a ``float`` time, ``int``/``float`` counts) are
put into the models as they are (`trusted`); anything else (a ``bool`` count, an unknown key,
a subclass) is left to pydantic, which validates (and refuses) it as before. Either way the
state's JSON is the same, byte for byte: ``tests/test_updates.py`` checks it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

from ._models import LogLine, Progress, RunState

__all__ = ["eta_of", "logs_of", "progress_of", "results_of", "trusted", "trusted_state"]

M = TypeVar("M", bound=BaseModel)

_setattr = object.__setattr__
_STATE_TEMPLATE: dict[str, Any] = {  # every field, in the model's order (the JSON's order)
    name: None if field.is_required() else field.default
    for name, field in RunState.model_fields.items()
}
_LINE_KEYS = frozenset({"ts", "level", "message"})
_NUMBERS = (int, float)


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


def _line_of(item: Any, now: float) -> LogLine | Mapping[str, Any] | None:
    """A log line: a trusted `LogLine` when its values have their exact types, else a dict."""
    if type(item) is LogLine:
        return item
    if type(item) is str:
        return trusted(LogLine, {"ts": now, "level": "INFO", "message": item})
    if isinstance(item, Mapping):
        ts = item.get("ts", now)
        level = item.get("level", "INFO")
        message = item.get("message")
        if (
            type(message) is str
            and type(level) is str
            and type(ts) in _NUMBERS
            and _LINE_KEYS.issuperset(item)
            and (type(ts) is float or abs(ts) < 2**53)
        ):
            return trusted(LogLine, {"ts": float(ts), "level": level, "message": message})
        return item if "ts" in item else {"ts": now, **item}
    if isinstance(item, LogLine):
        return item
    return None


def logs_of(update: Mapping[str, Any]) -> tuple[list[Any] | None, bool]:
    """The update's log lines (``logs`` and ``log``), and whether all of them are trusted.

    Lines that are not trusted are dicts (a ``ts`` added if missing) for pydantic to validate.
    """
    raw: list[Any] = []
    if update.get("logs"):
        raw.extend(update["logs"])
    if update.get("log"):
        raw.append(update["log"])
    if not raw:
        return None, True
    now = time.time()
    lines: list[Any] = []
    exact = True
    for item in raw:
        line = _line_of(item, now)
        if line is None:
            line = trusted(LogLine, {"ts": now, "level": "INFO", "message": str(item)})
        elif type(line) is not LogLine:
            exact = False
        lines.append(line)
    return lines, exact


def eta_of(value: Any) -> tuple[int | None, int | None]:
    """An ETA as ``(low, high)`` integers (milliseconds), either may be None."""
    low, high = value
    return (None if low is None else int(low), None if high is None else int(high))


def _number(value: Any) -> bool:
    return type(value) in _NUMBERS


def progress_of(value: Any) -> tuple[Progress | Mapping[str, Any] | None, bool]:
    """A progress value, and whether it is trusted (else a mapping for pydantic to validate)."""
    if value is None or type(value) is Progress:
        return value, True
    if isinstance(value, Progress):
        return value, True
    if isinstance(value, Mapping):
        fields: Mapping[str, Any] = value
    elif isinstance(value, tuple | list):
        fields = {"current": value[0], "total": value[1] if len(value) > 1 else None}
    else:
        fields = {"current": value}
    current = fields.get("current")
    total = fields.get("total")
    if (
        _number(current)
        and (total is None or _number(total))
        and len(fields) == 1 + ("total" in fields)
    ):
        return trusted(Progress, {"current": current, "total": total}), True
    return fields, False


def results_of(value: Any) -> list[dict[str, Any]] | None:
    """Outputs as SCALE's single-key objects, from a list, a dict or an ``ikclient`` Results."""
    if value is None:
        return None
    if isinstance(value, list):
        return [dict(item) for item in value]
    if isinstance(value, Mapping):
        inner = value.get("results")
        return results_of(inner) if isinstance(inner, list) else [dict(value)]
    outputs = getattr(value, "_outputs", None)  # ikclient.core.results.Results
    if isinstance(outputs, list):
        return [dict(item) for item in outputs]
    return [{"DATA_DICT": value}] if isinstance(value, str | int | float | bool) else None
