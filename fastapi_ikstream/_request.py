"""The default request model, for Ikomia-style runs: inputs, parameters and a task name."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

__all__ = ["RunQuery", "RunRequest", "decode_image_input"]

_B64_BODY = (
    r"(?:[A-Za-z0-9+/_-]{4})*(?:[A-Za-z0-9+/_-]{4}|[A-Za-z0-9+/_-]{3}=|[A-Za-z0-9+/_-]{2}==)"
)
_TOKEN = r"[A-Za-z0-9_.+-]+"
_DATA_PREFIX = rf"data:{_TOKEN}/{_TOKEN}(?:;{_TOKEN}={_TOKEN})*;base64,"
INPUT_PATTERN = rf"^(?:(?:https?|s3|gs)://[!-~]+|(?:{_DATA_PREFIX})?{_B64_BODY})$"
"""What a string input must look like: a storage URL, or base64 with an optional data: prefix."""

_DATA_URL = re.compile(rf"^{_DATA_PREFIX}")

ImageString = Annotated[
    str,
    Field(
        pattern=INPUT_PATTERN,
        description="An image as base64, a data: URL with base64, or a storage URL.",
    ),
]
_IMAGE_VALUE = re.compile(rf"^(?:{_DATA_PREFIX})?{_B64_BODY}$")


def _check_image_object(value: dict[str, Any]) -> dict[str, Any]:
    """An ``{"image": ...}`` object holds base64 (or a data: URL), never a path."""
    image = value.get("image")
    if "image" in value and not (isinstance(image, str) and _IMAGE_VALUE.match(image)):
        raise ValueError("an 'image' value is base64 or a data: URL with base64")
    return value


InputObject = Annotated[
    dict[str, Any],
    Field(
        min_length=1,
        max_length=1,
        description="A raw SCALE input object with one key, e.g. {'image': '<base64>'}.",
    ),
    AfterValidator(_check_image_object),
]
InputItem = ImageString | InputObject


class RunRequest(BaseModel):
    """The default request body: what Ikomia's ``client.run`` takes.

    Example::

        {"inputs": ["data:image/png;base64,iVBOR…"], "parameters": {"threshold": "100"},
         "task_name": "infer_canny"}

    Inputs are images as raw base64, ``data:`` URLs with base64, or storage URLs
    (``http(s)://``, ``s3://``, ``gs://``); or raw SCALE input objects with one key such as
    ``{"image": "<base64>"}``.
    """

    model_config = ConfigDict(extra="forbid")

    inputs: list[InputItem] = Field(default_factory=list, max_length=16)
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)
    task_name: str | None = Field(default=None, max_length=200)


class RunQuery(BaseModel):
    """`RunRequest` as a query string, for ``GET {path}/stream`` (``EventSource`` can only GET).

    ``inputs`` repeats (``?inputs=…&inputs=…``); every other query parameter (but the
    access-token parameter, if any, and ``last_event_id``) becomes a run parameter:
    ``?inputs=…&threshold=100`` runs with ``{"threshold": "100"}``.
    """

    model_config = ConfigDict(extra="ignore")

    inputs: list[ImageString] = Field(default_factory=list, max_length=16)
    task_name: str | None = Field(default=None, max_length=200)

    @field_validator("inputs", mode="before")
    @classmethod
    def _drop_empty_items(cls, value: Any) -> Any:
        """``?inputs=`` is how an empty list looks in a query string: read it as ``[]``."""
        if isinstance(value, list):
            return [item for item in value if item != ""]
        return value


def decode_image_input(value: str | dict[str, Any]) -> bytes | str:
    """Turn one input into image bytes (base64 and data URLs) or leave a URL as it is.

    Raises:
        ValueError: the input is not valid base64.
    """
    if isinstance(value, dict):
        inner = value.get("image")
        if not isinstance(inner, str):
            raise ValueError("not an image input")
        value = inner
    if value.startswith(("http://", "https://", "s3://", "gs://")):
        return value
    match = _DATA_URL.match(value)
    payload = value[match.end() :] if match else value
    try:
        return base64.b64decode(payload.replace("-", "+").replace("_", "/"), validate=True)
    except binascii.Error as exc:
        raise ValueError("invalid base64") from exc
