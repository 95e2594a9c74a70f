"""How a request's input reaches the router's endpoints: from the JSON body or the query.

``POST`` endpoints read the request model from the body; ``GET {path}/stream`` (for
``EventSource``, which can only ``GET``) reads it from the query string. Either way the
endpoint receives the validated model as a parameter.
"""

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError, model_validator

from ._request import RunQuery, RunRequest

__all__ = ["query_model_for", "run_request_from_query"]


def _drop_empty_items(cls: type[BaseModel], data: Any) -> Any:
    """``?inputs=`` is how an empty list looks in a query string: read it as ``[]``."""
    if isinstance(data, dict):
        return {
            key: [item for item in value if item != ""] if isinstance(value, list) else value
            for key, value in data.items()
        }
    return data


def query_model_for(model: type[BaseModel]) -> type[BaseModel]:
    """The model ``GET {path}/stream`` validates its query string with.

    Query strings carry other things too (an access token, a cache buster): a user's model
    is copied with ``extra="ignore"``; `RunRequest` is read through `RunQuery`.
    """
    if model is RunRequest:
        return RunQuery
    return type(
        model.__name__ + "Query",
        (model,),
        {
            "model_config": {**model.model_config, "extra": "ignore"},
            "__module__": model.__module__,
            "_drop_empty_items": model_validator(mode="before")(_drop_empty_items),
        },
    )


def run_request_from_query(request: Request, payload: Any, reserved: set[Any]) -> Any:
    """Turn a validated `RunQuery` into a `RunRequest`; other query fields are parameters.

    Args:
        request: the request (its query string gives the parameters).
        payload: the validated query model.
        reserved: query keys that are not parameters (``inputs``, the token's name ...).

    Raises:
        RequestValidationError: the parameters do not validate (answered 422).
    """
    if not isinstance(payload, RunQuery):
        return payload
    parameters = {key: value for key, value in request.query_params.items() if key not in reserved}
    try:
        return RunRequest(inputs=payload.inputs, task_name=payload.task_name, parameters=parameters)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc
