"""The default request model, for Ikomia-style runs: inputs, parameters and a task name."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = ["RunRequest", "decode_image_input"]

_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[\w.-]+)*;base64,(?P<b64>.*)$", re.S
)
_B64 = re.compile(r"^[A-Za-z0-9+/_-]*={0,2}$")


def _check_input(value: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(value, dict):
        if len(value) != 1:
            raise ValueError("an input object has exactly one key, e.g. {'image': '<base64>'}")
        return value
    if value.startswith(("http://", "https://", "s3://", "gs://")):
        return value
    match = _DATA_URL.match(value)
    payload = match.group("b64") if match else value
    if not payload or len(payload) % 4 or not _B64.match(payload):
        raise ValueError("expected base64 image data, a data: URL with base64, or a storage URL")
    return value


InputItem = Annotated[str | dict[str, Any], AfterValidator(_check_input)]


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
    payload = match.group("b64") if match else value
    try:
        return base64.b64decode(payload.replace("-", "+").replace("_", "/"), validate=True)
    except binascii.Error as exc:
        raise ValueError("invalid base64") from exc
