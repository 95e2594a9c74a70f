"""Ikomia SCALE deployments through the real ``ikomia-client`` (extra ``ikomia``).

`IkomiaDeployment` runs each request with ``ikclient.core.client.AsyncClient`` and hands the
client's ``on_progress`` calls (``BLOCKING`` → ``SENDING`` → ``PENDING`` → ``STARTED`` … →
``SUCCESS``) straight to `StreamingRun`. Upstream failures become `DeploymentError` with a
public message and one of these codes:

| upstream failure                                   | code                     | retryable |
|----------------------------------------------------|--------------------------|-----------|
| the workflow failed (HTTP 520, ``{"message"}``)    | ``upstream_failed``      | no        |
| another HTTP error status (token service or run)   | ``upstream_error``       | 5xx, 429  |
| no connection (refused, DNS, connect timeout)      | ``upstream_unreachable`` | yes       |
| read or write timeout; gave up polling for results | ``upstream_timeout``     | yes       |
| unknown task or parameter name for this workflow   | ``invalid_request``      | no        |
| an input not base64, a data URL or an allowed URL  | ``invalid_input``        | no        |
| an answer the client could not read                | ``upstream_error``       | yes       |

Messages never carry the API token, the exchanged JWT, or a stack trace; details go to the
``fastapi_ikstream`` logger.

Configuration is ``ikomia-client``'s: ``IKOMIA_URL`` (the SCALE service that exchanges the
API token for a JWT; default ``https://scale.ikomia.ai``) is read when the client is
created, and ``IKOMIA_TOKEN`` is the default token.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx

from ._exceptions import DeploymentError, MissingExtraError
from ._ikclient import auth_of, auth_session, jwt_expiry, jwt_of
from ._request import decode_image_input
from ._run import OnProgress, RunSource

try:
    from ikclient.core.client import AsyncClient
    from ikclient.core.results import Results
    from ikclient.exceptions import (
        IkClientBaseException,
        MultipleTaskFoundException,
        NoResultsException,
        TaskNotFoundException,
        TaskParameterNotFoundException,
    )
    from ikclient.http.exceptions import WorkflowFailedException
except ImportError as exc:
    raise MissingExtraError("ikomia", "fastapi_ikstream.ikomia") from exc

__all__ = ["STORAGE_URL_PREFIXES", "IkomiaDeployment", "to_results", "to_scale_input"]

logger = logging.getLogger("fastapi_ikstream")

_URL_PREFIXES = ("http://", "https://", "s3://", "gs://")
STORAGE_URL_PREFIXES: tuple[str, ...] = _URL_PREFIXES
"""The storage URLs `to_scale_input` lets through by default: any ``http(s)``, S3 or GCS URL."""
_REFRESH_MARGIN_S = 120.0
_MAX_MESSAGE = 500


def to_scale_input(
    item: str | Mapping[str, Any],
    data_type: str = "image",
    *,
    allowed_urls: Sequence[str] = STORAGE_URL_PREFIXES,
) -> dict[str, Any]:
    """Turn one request input into a SCALE input object, by explicit decoding only.

    A string is never passed on as it is: ``ikomia-client`` reads a plain string as a path
    on this server. It becomes an image only when it is base64 or a ``data:`` URL (decoded
    here) or a storage URL that starts with one of ``allowed_urls`` (fetched by the
    deployment, never by this server). ``/etc/passwd``, ``photo.png`` or ``file://…`` are
    refused.

    Args:
        item: raw base64 or a ``data:`` URL (→ ``{"image": "<base64>"}``), a storage URL
            (→ ``{"storage_object": {"url", "data_type"}}``), or a single-key SCALE object
            such as ``{"image": "..."}`` (kept; an ``image`` value is decoded the same way).
        data_type: the ``data_type`` of a storage object. Default ``"image"``.
        allowed_urls: the prefixes a storage URL may start with, e.g.
            ``("https://storage.example.com/",)``; empty refuses every URL. Default
            ``STORAGE_URL_PREFIXES`` (``http://``, ``https://``, ``s3://``, ``gs://``).

    Returns:
        A single-key dict, as ``ikomia-client`` sends it.

    Raises:
        DeploymentError: code ``invalid_input``, the input is none of these.

    Example::

        to_scale_input("data:image/png;base64,iVBORw0KGgo=")  # {"image": "iVBORw0KGgo="}
        to_scale_input("/etc/passwd")  # raises DeploymentError (invalid_input)
    """
    if isinstance(item, Mapping):
        if len(item) != 1:
            raise DeploymentError("An input object has exactly one key.", code="invalid_input")
        if "image" not in item:
            return dict(item)
        value = item["image"]
        if not isinstance(value, str):
            raise DeploymentError("An 'image' input holds base64 text.", code="invalid_input")
        item = value
    if not isinstance(item, str):
        raise DeploymentError(
            "An input is a string or an object with one key.", code="invalid_input"
        )
    if item.startswith(_URL_PREFIXES):
        if not item.startswith(tuple(allowed_urls)):
            raise DeploymentError("This storage URL is not allowed.", code="invalid_input")
        return {"storage_object": {"url": item, "data_type": data_type}}
    try:
        data = decode_image_input(item)
    except ValueError:
        raise DeploymentError(
            "An input is not base64, a data: URL with base64, or a storage URL.",
            code="invalid_input",
        ) from None
    assert isinstance(data, bytes)  # URLs were handled above
    return {"image": base64.b64encode(data).decode("ascii")}


def to_results(
    results: Iterable[Mapping[str, Any]],
    *,
    uuid: str = "",
    inputs: Iterable[Mapping[str, Any]] = (),
) -> Results:
    """Wrap a run's results (SCALE's single-key objects) in ``ikclient``'s ``Results``.

    Handy on the consumer side: ``to_results(state.results).get_output(0).to_pil()``.

    Args:
        results: the ``results`` of a ``result`` state, e.g. ``[{"image": "<base64>"}]``.
        uuid: the SCALE run uuid, if known. Default ``""``.
        inputs: the raw inputs, if known. Default none.

    Returns:
        An ``ikclient.core.results.Results``.
    """
    return Results(uuid, [dict(item) for item in inputs], [dict(item) for item in results])


def _public(message: str, secrets: Iterable[str]) -> str:
    """One line, bounded, with every secret removed."""
    text = " ".join(message.split())
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:_MAX_MESSAGE]


def _where(exc: httpx.HTTPError) -> str:
    """Which service a failed request went to, for the public message."""
    try:
        path = exc.request.url.path
    except RuntimeError:  # an error raised without its request
        return "The deployment"
    return (
        "The Ikomia SCALE token service" if path.rstrip("/").endswith("/jwt") else "The deployment"
    )


def _translate(exc: Exception, secrets: Iterable[str]) -> DeploymentError | None:
    """The `DeploymentError` for an upstream failure, or None for an unexpected one."""
    if isinstance(exc, WorkflowFailedException):
        message = _public(str(exc), secrets) or "The deployment's workflow failed."
        return DeploymentError(message, code="upstream_failed")
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        return DeploymentError(
            f"{_where(exc)} answered HTTP {status}.",
            code="upstream_error",
            retryable=status >= 500 or status == 429,
        )
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return DeploymentError(
            f"{_where(exc)} did not answer in time.", code="upstream_timeout", retryable=True
        )
    if isinstance(exc, httpx.TransportError):
        return DeploymentError(
            f"{_where(exc)} could not be reached.", code="upstream_unreachable", retryable=True
        )
    if isinstance(exc, NoResultsException):
        return DeploymentError(
            "The deployment did not return results in time.",
            code="upstream_timeout",
            retryable=True,
        )
    if isinstance(exc, TaskNotFoundException):
        name = _public(str(exc.task_name), secrets)[:100]
        return DeploymentError(f"The deployment has no task {name!r}.", code="invalid_request")
    if isinstance(exc, MultipleTaskFoundException):
        name = _public(str(exc.task_name), secrets)[:100]
        return DeploymentError(
            f"The deployment has several tasks named {name!r}; name one by id.",
            code="invalid_request",
        )
    if isinstance(exc, TaskParameterNotFoundException):
        name = _public(str(exc.parameter_name), secrets)[:100]
        known = ", ".join(exc.parameter_names)
        return DeploymentError(
            _public(f"Task {exc.task_name!r} has no parameter {name!r}; known: {known}.", secrets),
            code="invalid_request",
        )
    if isinstance(exc, IkClientBaseException | ValueError | KeyError | TypeError):
        # e.g. an answer without the expected fields; its text may quote tokens: never shown
        return DeploymentError(
            "The deployment sent an answer that could not be read.",
            code="upstream_error",
            retryable=True,
        )
    return None


class IkomiaDeployment:
    """An Ikomia SCALE deployment, run through the real ``ikomia-client`` ``AsyncClient``.

    Example::

        deployment = IkomiaDeployment(os.environ["ENDPOINT_URL"])   # IKOMIA_TOKEN from env
        run = StreamingRun(deployment.open_run(["data:image/png;base64,iVBOR…"], {}))
        return run.to_response()

    One ``AsyncClient`` is made per event loop, on first use, and reused across runs (its
    workflow description and JWT are cached). The token exchange, which ``ikomia-client``
    does synchronously, is done in a worker thread before a run (and again shortly before
    the JWT expires), so it never blocks the event loop and other streams.

    Args:
        url: the deployment's endpoint URL.
        token: the Ikomia API token. Default: ``IKOMIA_TOKEN`` from the environment.
        task_name: the task to run; None runs the workflow's final task. A run's
            ``parameters`` may name another under the key ``task_name``. Default None.
        client: an ``AsyncClient`` to use instead of making one (then ``url`` only names
            the deployment in logs, and `aclose` leaves the client open). Default None.
        name: a name for logs and documentation. Default ``"ikomia"``.
        allowed_urls: the prefixes a storage URL input may start with (see
            `to_scale_input`); ``()`` accepts only base64 and ``data:`` URLs. Default
            ``STORAGE_URL_PREFIXES``.

    Raises:
        ValueError: no ``client``, no ``token`` and no ``IKOMIA_TOKEN`` in the environment.
    """

    def __init__(  # noqa: PLR0913 - public constructor: keyword-only options
        self,
        url: str,
        *,
        token: str | None = None,
        task_name: str | None = None,
        client: AsyncClient | None = None,
        name: str = "ikomia",
        allowed_urls: Sequence[str] = STORAGE_URL_PREFIXES,
    ) -> None:
        self.url = url
        self.allowed_urls = tuple(allowed_urls)
        self.task_name = task_name
        self.name = name
        self._token = token if token is not None else os.environ.get("IKOMIA_TOKEN")
        if client is None and not self._token:
            raise ValueError("IkomiaDeployment needs a token: pass token=... or set IKOMIA_TOKEN")
        self._given = client
        self._client: AsyncClient | None = client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._auth_lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"IkomiaDeployment(url={self.url!r}, task_name={self.task_name!r})"

    def open_run(self, inputs: Any, parameters: Mapping[str, Any]) -> RunSource:
        """Describe one run; the request starts when `StreamingRun` calls the returned function.

        Args:
            inputs: a list of inputs (see `to_scale_input`), e.g. ``RunRequest.inputs``.
            parameters: the task's parameters (values sent as strings); the key
                ``task_name`` picks the task to run instead of the default.

        Returns:
            ``fn(on_progress)`` returning a coroutine that resolves to ``ikclient``'s
            ``Results``. Failures raise `DeploymentError` (see the module's table).
        """
        params = dict(parameters)
        task_name = str(params.pop("task_name", None) or self.task_name or "") or None
        items = [inputs] if isinstance(inputs, str | Mapping) else list(inputs or [])
        return lambda on_progress: self._run(items, params, task_name, on_progress)

    def _client_for_loop(self) -> tuple[AsyncClient, asyncio.Lock]:
        loop = asyncio.get_running_loop()
        client, lock = self._client, self._auth_lock
        if self._loop is not loop or client is None or lock is None:
            client = (
                self._given if self._given is not None else AsyncClient(self.url, token=self._token)
            )
            lock = asyncio.Lock()
            self._client, self._auth_lock, self._loop = client, lock, loop
        return client, lock

    async def _ensure_jwt(self, client: AsyncClient, lock: asyncio.Lock) -> None:
        auth = auth_of(client)
        if auth is None:
            return
        async with lock:
            expires = jwt_expiry(auth)
            fresh = jwt_of(auth) is not None and expires is not None
            if expires is not None and fresh and expires - time.time() > _REFRESH_MARGIN_S:
                return
            await asyncio.to_thread(auth.jwt, force=fresh)

    def _secrets(self, client: AsyncClient) -> list[str]:
        return [value for value in (self._token, jwt_of(auth_of(client))) if value]

    async def _run(
        self,
        items: list[Any],
        params: dict[str, Any],
        task_name: str | None,
        on_progress: OnProgress,
    ) -> Results:
        raw_inputs = [to_scale_input(item, allowed_urls=self.allowed_urls) for item in items]
        client, lock = self._client_for_loop()
        try:
            await self._ensure_jwt(client, lock)
            if task_name:
                return await client.run_task(
                    task_name, *raw_inputs, parameters=params or None, on_progress=on_progress
                )
            return await client.run(*raw_inputs, parameters=params or None, on_progress=on_progress)
        except Exception as exc:
            error = _translate(exc, self._secrets(client))
            if error is None:
                raise
            status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
            logger.warning(
                "ikomia run on %s failed: %s%s -> %s",
                self.url,
                type(exc).__name__,
                f" (HTTP {status})" if status else "",
                error.code,
            )
            raise error from None

    async def aclose(self) -> None:
        """Close the client this deployment made (a client passed in is left open)."""
        client, self._client = self._client, self._given
        self._loop = None
        if client is None or client is self._given:
            return
        await client.aclose()  # type: ignore[no-untyped-call]
        auth_client = auth_session(client)
        if isinstance(auth_client, httpx.Client):
            await asyncio.to_thread(auth_client.close)

    async def __aenter__(self) -> IkomiaDeployment:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
