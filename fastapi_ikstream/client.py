"""Read a run's stream from Python: typed states, decoded results, reconnects.

Forms: `process_streaming_response` / `process_json_stream` (a request or response),
`process_readable_stream` (bytes from anywhere), `aconnect_states` (``async for``), and
`stream_states` (fal-style listeners and ``await stream.done()``); each has a sync twin
but the last. `image_input` turns a file, bytes or a PIL image into a run input.

Needs the ``client`` extra (``pip install "fastapi-ikstream[client]"``). Server-Sent Events
are parsed by ``httpx-sse``; JSON lines (``application/jsonl``) by httpx. Both give the same
`RunState` objects; keep-alives and events without data are skipped.

Example::

    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=30.0)) as http:
        results = await process_streaming_response(
            http.stream("POST", url, json={"inputs": [image]}), on_progress=print
        )
    results.get_output(0).to_pil().save("out.png")

Timeouts: ``timeout`` (default 15 s, as fal's ``FalStream``) is the longest silence allowed
between two received bytes; a keep-alive counts as activity, so it must be longer than the
server's keep-alive interval (default 10 s). Requests sent by this module get an httpx read
timeout equal to it. For a response you opened yourself, a read timeout shorter than
``timeout`` gets a `StreamTimeoutWarning` (httpx's default is 5 s, WIRE.md rule 9), and its
read timeouts are handled as dropped connections.

Reconnects: when the connection drops (a transport error, or the stream ends before
``done``), the request is sent again with a ``Last-Event-ID`` header naming the last event
seen, after the server's ``retry:`` delay (capped by ``max_retry_delay``), at most
``max_reconnects`` times in a row; events seen already are skipped by ``seq``. A server that
cannot resume the run (it starts another run, answers 4xx, or 204 before the run ended)
ends the stream with `StreamResumeError`.

The exceptions (`RunFailedError` and `RunCancelledError` come from the package root)::

    IKStreamError
    ├── RunFailedError             the run ended ``failed``; ``.state.error`` says why
    ├── RunCancelledError          the run ended ``cancelled``
    └── StreamError                reading the stream went wrong
        ├── StreamHTTPError        a non-2xx answer before the stream (status_code, body)
        ├── StreamTimeoutError (also TimeoutError)        no byte for ``timeout`` seconds
        ├── StreamProtocolError    not an event stream, or an event that is not a run state
        └── StreamConnectionError (also ConnectionError)   dropped, and reconnecting failed
            └── StreamResumeError  the server could not resume the run
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import inspect
import io
import json
import time
import warnings
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import anyio
from pydantic import ValidationError

from ._exceptions import (
    IKStreamError,
    MissingExtraError,
    RunCancelledError,
    RunFailedError,
    StreamConsumedError,
)
from ._models import EventType, RunState

try:
    import httpx
    import httpx_sse
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise MissingExtraError("client", "fastapi_ikstream.client") from exc

if TYPE_CHECKING:
    from ikclient.core.results import Results as IkclientResults
    from PIL.Image import Image

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncRunStream",
    "ImageOutput",
    "Listener",
    "OnProgress",
    "Output",
    "Results",
    "RunStream",
    "StateStream",
    "StorageObjectOutput",
    "StreamConnectionError",
    "StreamError",
    "StreamEvent",
    "StreamHTTPError",
    "StreamProtocolError",
    "StreamResumeError",
    "StreamTimeoutError",
    "StreamTimeoutWarning",
    "aconnect_states",
    "connect_states",
    "image_input",
    "process_json_stream",
    "process_json_stream_sync",
    "process_readable_stream",
    "process_readable_stream_sync",
    "process_streaming_response",
    "process_streaming_response_sync",
    "stream_states",
]

DEFAULT_TIMEOUT = 15.0
"""Seconds of silence (not a byte, keep-alives included) before `StreamTimeoutError`."""

OnProgress: TypeAlias = Callable[[RunState], Any]
"""Called with every `RunState` in order, ``run`` first and ``done`` last; the async
helpers await it when it returns an awaitable."""

_SSE = "text/event-stream"
_JSONL = ("application/jsonl", "application/x-ndjson", "application/json-seq")
_FIRST_RETRY_DELAY = 1.0

# -- exceptions ------------------------------------------------------------------------------


class StreamError(IKStreamError):
    """Reading a run's stream went wrong (see the module docstring for the tree)."""


class StreamHTTPError(StreamError):
    """The server answered with a non-2xx status before the stream began.

    Attributes:
        status_code: the HTTP status, e.g. 401 or 429.
        body: the answer's JSON body (e.g. ``{"detail": "..."}``), or its text if not JSON.
        headers: the answer's headers (e.g. ``Retry-After`` on a 429).
        url: the requested URL.
    """

    def __init__(
        self,
        status_code: int,
        body: Any,
        *,
        headers: Mapping[str, str] | None = None,
        url: str = "",
    ) -> None:
        detail = body.get("detail", body) if isinstance(body, dict) else body
        super().__init__(f"HTTP {status_code} from {url or 'the server'}: {detail}")
        self.status_code = status_code
        self.body = body
        self.headers: dict[str, str] = dict(headers or {})
        self.url = url

    @classmethod
    def from_response(cls, response: httpx.Response) -> StreamHTTPError:
        """Build from a response whose body has been read."""
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        return cls(response.status_code, body, headers=response.headers, url=str(response.url))


class StreamTimeoutError(StreamError, TimeoutError):
    """No byte arrived for ``seconds`` seconds.

    Attributes:
        seconds: the inactivity timeout that passed.
        status: 408 (Request Timeout), as fal's stream reports it.
    """

    status = 408

    def __init__(self, seconds: float | None, message: str | None = None) -> None:
        if message is None:
            message = f"the event stream sent nothing for {seconds or 0:g} s"
        super().__init__(message)
        self.seconds = seconds


class StreamProtocolError(StreamError):
    """The answer is not an event stream, or an event is not a valid run state."""


class StreamConnectionError(StreamError, ConnectionError):
    """The connection could not be made, or it dropped and reconnecting failed.

    Attributes:
        last_event_id: the id of the last event received (``"{run_id}:{seq}"``), or None.
    """

    def __init__(self, message: str, *, last_event_id: str | None = None) -> None:
        super().__init__(message)
        self.last_event_id = last_event_id


class StreamResumeError(StreamConnectionError):
    """The server could not resume the run after a dropped connection.

    When the server answered with an error status, ``__cause__`` is a `StreamHTTPError`.
    """


class StreamTimeoutWarning(UserWarning):
    """A response's httpx read timeout is shorter than the stream's inactivity timeout."""


# -- results ---------------------------------------------------------------------------------

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
)
_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
}


def _b64decode(data: str) -> bytes:
    data = data.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(data + "=" * (-len(data) % 4))


class ImageOutput:
    """An ``{"image": "<base64>"}`` output: bytes, a data URL, a PIL image or an array.

    Args:
        raw: the output object; its ``image`` is base64 (a ``data:`` URL is accepted too).
    """

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = dict(raw)
        value = str(raw["image"])
        self.base64 = value.partition("base64,")[2] if value.startswith("data:") else value
        self._bytes: bytes | None = None

    def to_bytes(self) -> bytes:
        """The encoded image file (PNG, JPEG …), decoded from base64.

        Raises:
            ValueError: the data is not valid base64.
        """
        if self._bytes is None:
            try:
                self._bytes = _b64decode(self.base64)
            except binascii.Error as exc:
                raise ValueError("the image output is not valid base64") from exc
        return self._bytes

    @property
    def mime(self) -> str:
        """The media type sniffed from the file's first bytes (PNG, JPEG, GIF, WebP).

        ``"application/octet-stream"`` for anything else.
        """
        try:
            head = self._bytes[:16] if self._bytes is not None else _b64decode(self.base64[:24])
        except binascii.Error:
            return "application/octet-stream"
        for magic, offset, mime in _MAGIC:
            if head[offset : offset + len(magic)] == magic:
                return mime
        return "application/octet-stream"

    @property
    def extension(self) -> str:
        """A file extension for `mime`, e.g. ``".png"`` (``".bin"`` when unknown)."""
        return _EXTENSIONS.get(self.mime, ".bin")

    @property
    def data_url(self) -> str:
        """``data:{mime};base64,{data}``, ready for an ``<img src>``."""
        return f"data:{self.mime};base64,{self.base64}"

    def to_pil(self) -> Image:
        """Open as a ``PIL.Image.Image`` (needs Pillow).

        Raises:
            MissingExtraError: Pillow is not installed.
        """
        try:
            from PIL import Image
        except ImportError as exc:
            raise MissingExtraError("client", "ImageOutput.to_pil") from exc
        return Image.open(io.BytesIO(self.to_bytes()))

    def to_numpy(self) -> Any:
        """The pixels as a ``numpy.ndarray`` of shape (height, width[, channels]) (needs numpy).

        Raises:
            ImportError: numpy or Pillow is not installed.
        """
        import numpy as np

        return np.asarray(self.to_pil())

    def save(self, path: str | Path) -> Path:
        """Write the image file to ``path`` as it is (no re-encoding); returns the path."""
        target = Path(path)
        target.write_bytes(self.to_bytes())
        return target

    def __repr__(self) -> str:
        return f"ImageOutput({self.mime}, {len(self.base64) * 3 // 4} bytes)"


class StorageObjectOutput:
    """A ``{"storage_object": {"url", "data_type", "metadata"?}}`` output.

    Attributes:
        raw: the output object.
        url: where the object can be fetched.
        data_type: its kind, e.g. ``"image"`` or ``"video"``.
        metadata: extra fields, or None.
    """

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = dict(raw)
        inner = raw["storage_object"]
        self.url: str = inner.get("url", "")
        self.data_type: str | None = inner.get("data_type")
        self.metadata: Any = inner.get("metadata")

    def __repr__(self) -> str:
        return f"StorageObjectOutput({self.data_type}, {self.url!r})"


Output: TypeAlias = ImageOutput | StorageObjectOutput | dict[str, Any]
"""One output: an image, a storage object, or the raw single-key object (``DATA_DICT`` …)."""


class Results:
    """The outputs of a completed run, like ``ikclient``'s ``Results``.

    Example::

        image = results.get_output(0)            # ImageOutput
        faces = results.get_output(1)["DATA_DICT"]["faces"]

    Args:
        state: the run's ``result`` state.
    """

    def __init__(self, state: RunState) -> None:
        self.state = state
        self.outputs: list[dict[str, Any]] = list(state.results or [])

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.state.run_id

    def get_output(self, index: int = 0) -> Output:
        """Output ``index``: `ImageOutput`, `StorageObjectOutput`, or the raw dict.

        Raises:
            IndexError: there is no such output.
        """
        raw = self.outputs[index]
        if "image" in raw and len(raw) == 1:
            return ImageOutput(raw)
        if "storage_object" in raw and len(raw) == 1:
            return StorageObjectOutput(raw)
        return raw

    def get_outputs(self) -> list[Output]:
        """All outputs, decoded as by `get_output`."""
        return [self.get_output(i) for i in range(len(self.outputs))]

    def images(self) -> list[ImageOutput]:
        """The image outputs, in order."""
        return [out for out in self.get_outputs() if isinstance(out, ImageOutput)]

    def __len__(self) -> int:
        return len(self.outputs)

    def __iter__(self) -> Iterator[Output]:
        return iter(self.get_outputs())

    def to_ikclient(self) -> IkclientResults:
        """Convert to ``ikclient.core.results.Results`` (uuid: the run id).

        Raises:
            MissingExtraError: ``ikomia-client`` is not installed.
        """
        try:
            from ikclient.core.results import Results as IkResults
        except ImportError as exc:
            raise MissingExtraError("ikomia", "Results.to_ikclient") from exc
        inputs = self.state.inputs if isinstance(self.state.inputs, list) else []
        return IkResults(self.run_id, inputs, [dict(out) for out in self.outputs])

    def __repr__(self) -> str:
        return f"Results(run_id={self.run_id!r}, outputs={self.get_outputs()!r})"


# -- reading events (no I/O) -----------------------------------------------------------------


class _Tracker:
    """Turns event payloads into run states: skips keep-alives and repeats, spots the end."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.last_seq = 0
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None
        self.terminal: RunState | None = None
        self.done = False

    def accept_sse(self, sse: httpx_sse.ServerSentEvent) -> RunState | None:
        if sse.retry is not None:
            self.retry_ms = sse.retry
        return self.accept_text(sse.data, sse.id or None)

    def accept_text(self, data: str, event_id: str | None = None) -> RunState | None:
        if not data.strip():
            return None
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise StreamProtocolError(f"an event's data is not JSON: {data[:80]!r}") from exc
        return self.accept(payload, event_id)

    def accept(self, item: Any, event_id: str | None = None) -> RunState | None:
        if isinstance(item, str | bytes):
            return self.accept_text(item.decode() if isinstance(item, bytes) else item, event_id)
        if isinstance(item, Mapping) and item.get("type") == "keepalive":
            return None
        try:
            state = item if isinstance(item, RunState) else RunState.model_validate(item)
        except ValidationError as exc:
            raise StreamProtocolError(f"an event is not a run state: {exc}") from exc
        if self.run_id is None:
            self.run_id = state.run_id
        elif state.run_id != self.run_id:
            raise StreamResumeError(
                f"the server sent run {state.run_id} instead of resuming run {self.run_id}",
                last_event_id=self.last_event_id,
            )
        if state.seq <= self.last_seq:
            return None
        self.last_seq = state.seq
        self.last_event_id = event_id or state.event_id
        if state.type in (EventType.RESULT, EventType.FAILED, EventType.CANCELLED):
            self.terminal = state
        elif state.type is EventType.DONE:
            self.done = True
        return state

    def retry_delay(self, cap: float) -> float:
        delay = _FIRST_RETRY_DELAY if self.retry_ms is None else self.retry_ms / 1000
        return max(0.0, min(delay, cap))

    def raise_terminal(self) -> None:
        state = self.terminal
        if state is not None and state.type is EventType.FAILED:
            raise RunFailedError(state)
        if state is not None and state.type is EventType.CANCELLED:
            raise RunCancelledError(state)

    def results(self) -> Results:
        self.raise_terminal()
        if self.terminal is None:
            raise StreamProtocolError("the stream ended without a result")
        return Results(self.terminal)


def _stream_kind(response: httpx.Response, default: Literal["sse", "jsonl"] | None) -> str:
    media = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media == _SSE:
        return "sse"
    if media in _JSONL:
        return "jsonl"
    if default is not None and response.status_code != 204:
        return default
    raise StreamProtocolError(
        f"expected an event stream ({_SSE} or application/jsonl), got HTTP "
        f"{response.status_code} {media or 'without a content type'}"
    )


def _read_timeout_of(response: httpx.Response) -> float | None:
    timeouts = response.request.extensions.get("timeout") or {}
    read = timeouts.get("read")
    return float(read) if read is not None else None


def _http_timeout(base: httpx.Timeout | Mapping[str, Any], read: float | None) -> httpx.Timeout:
    if isinstance(base, Mapping):
        base = httpx.Timeout(**base) if base else httpx.Timeout(10.0)
    return httpx.Timeout(connect=base.connect, read=read, write=base.write, pool=base.pool)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _StreamBase:
    """What the async and sync streams share: options, bookkeeping, reconnect decisions."""

    def __init__(
        self,
        response: httpx.Response,
        *,
        timeout: float | None,
        max_reconnects: int,
        max_retry_delay: float,
        raise_on_error: bool,
        default_kind: Literal["sse", "jsonl"] | None,
    ) -> None:
        self.response = response
        self.timeout = timeout
        self.max_reconnects = max_reconnects
        self.max_retry_delay = max_retry_delay
        self.raise_on_error = raise_on_error
        self.reconnects = 0
        self._tracker = _Tracker()
        self._request = response.request
        self._default_kind = default_kind
        self._attempts = 0
        self._checked = False
        self._consumed = False
        self._warn_short_read(response)

    @property
    def run_id(self) -> str | None:
        """The run's id, once its first event has arrived."""
        return self._tracker.run_id

    @property
    def last_event_id(self) -> str | None:
        """The id of the last event received (``"{run_id}:{seq}"``), sent on a reconnect."""
        return self._tracker.last_event_id

    @property
    def terminal_state(self) -> RunState | None:
        """The ``result``, ``failed`` or ``cancelled`` state, once received."""
        return self._tracker.terminal

    def results(self) -> Results:
        """The results, after the states have been read.

        Raises:
            RunFailedError: the run failed.
            RunCancelledError: the run was cancelled.
            StreamProtocolError: no result was received.
        """
        return self._tracker.results()

    def _warn_short_read(self, response: httpx.Response) -> None:
        read = _read_timeout_of(response)
        if read is not None and self.timeout is not None and read < self.timeout:
            warnings.warn(
                f"the response's read timeout ({read:g} s) is shorter than the stream's "
                f"inactivity timeout ({self.timeout:g} s): silences longer than the server's "
                "keep-alive interval will break the stream; use e.g. "
                "httpx.Timeout(10.0, read=30.0), or aconnect_states / connect_states",
                StreamTimeoutWarning,
                stacklevel=4,
            )

    def _start_iteration(self) -> None:
        if self._consumed:
            raise StreamConsumedError("the stream's states were read already")
        self._consumed = True

    def _accepted(self, state: RunState | None) -> RunState | None:
        if state is not None:
            self._attempts = 0
        return state

    def _timeout_or_drop(self, exc: httpx.TimeoutException, response: httpx.Response) -> str:
        """A read timeout shorter than ours counts as a dropped connection; else raise."""
        read = _read_timeout_of(response)
        if (
            isinstance(exc, httpx.ReadTimeout)
            and read is not None
            and (self.timeout is None or read < self.timeout)
        ):
            return f"{_describe(exc)} after {read:g} s, the response's read timeout"
        raise StreamTimeoutError(read if read is not None else self.timeout) from exc

    def _next_attempt(self, reason: str) -> float:
        self._attempts += 1
        if self._attempts > self.max_reconnects:
            raise StreamConnectionError(
                f"the connection dropped ({reason}); gave up after {self.max_reconnects} "
                "reconnects",
                last_event_id=self.last_event_id,
            )
        return self._tracker.retry_delay(self.max_retry_delay)

    def _resend_request(self) -> httpx.Request:
        old = self._request
        headers = httpx.Headers(old.headers)
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        try:
            content = old.content
        except httpx.RequestNotRead as exc:
            raise StreamResumeError(
                "the request body was streamed and cannot be sent again",
                last_event_id=self.last_event_id,
            ) from exc
        timeouts = _http_timeout(old.extensions.get("timeout") or {}, self.timeout)
        return httpx.Request(
            old.method,
            old.url,
            headers=headers,
            content=content,
            extensions={"timeout": timeouts.as_dict()},
        )

    def _reconnect_verdict(self, response: httpx.Response) -> bool | str:
        """True: stream from it; False: the run is over; a str: retry (why); or raise."""
        status = response.status_code
        if status == 204:
            if self._tracker.terminal is not None:
                return False
            raise StreamResumeError(
                f"the server has no more events for run {self.run_id} (204) before its end",
                last_event_id=self.last_event_id,
            )
        if status >= 500:
            return f"HTTP {status}"
        if not response.is_success:
            raise StreamResumeError(
                f"the server could not resume run {self.run_id} after "
                f"{self.last_event_id}: HTTP {status}",
                last_event_id=self.last_event_id,
            ) from StreamHTTPError.from_response(response)
        _stream_kind(response, self._default_kind)
        self.reconnects += 1
        return True

    def _dropped(self, reason: str) -> str | None:
        """None when the run is over (its terminal state arrived); else ``reason``."""
        tracker = self._tracker
        return None if tracker.done or tracker.terminal is not None else reason

    def _finish(self) -> None:
        if self.raise_on_error:
            self._tracker.raise_terminal()


# -- async -----------------------------------------------------------------------------------


class _ActivityStream(httpx.AsyncByteStream):
    """The decoded body of a response; raises `StreamTimeoutError` after a silence."""

    def __init__(self, response: httpx.Response, timeout: float | None) -> None:
        self._response = response
        self._timeout = timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._response.aiter_bytes().__aiter__()
        while True:
            try:
                with anyio.fail_after(self._timeout):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise StreamTimeoutError(self._timeout) from None
            yield chunk


class AsyncRunStream(_StreamBase):
    """An open run stream (async); made by `aconnect_states` or the `process_*` helpers.

    Attributes:
        response: the current HTTP response (a new one after each reconnect).
        reconnects: how many times the stream was resumed.
    """

    def __init__(
        self,
        response: httpx.Response,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_reconnects: int = 3,
        max_retry_delay: float = 5.0,
        raise_on_error: bool = True,
        default_kind: Literal["sse", "jsonl"] | None = None,
    ) -> None:
        super().__init__(
            response,
            timeout=timeout,
            max_reconnects=max_reconnects,
            max_retry_delay=max_retry_delay,
            raise_on_error=raise_on_error,
            default_kind=default_kind,
        )
        self._client = client
        self._own_client: httpx.AsyncClient | None = None

    async def check(self) -> None:
        """Check the first answer: a 2xx event stream.

        Raises:
            StreamHTTPError: a non-2xx status (the body is read for the error).
            StreamProtocolError: not ``text/event-stream`` nor JSON lines.
        """
        if self._checked:
            return
        if not self.response.is_success:
            await self.response.aread()
            raise StreamHTTPError.from_response(self.response)
        _stream_kind(self.response, self._default_kind)
        self._checked = True

    async def _aiter_connection(self, response: httpx.Response) -> AsyncGenerator[RunState, None]:
        body = httpx.Response(
            response.status_code,
            headers={"content-type": response.headers.get("content-type", "")},
            stream=_ActivityStream(response, self.timeout),
        )
        tracker = self._tracker
        if _stream_kind(response, self._default_kind) == "sse":
            async with contextlib.aclosing(httpx_sse.EventSource(body).aiter_sse()) as events:
                async for sse in events:
                    if (state := self._accepted(tracker.accept_sse(sse))) is not None:
                        yield state
                        if tracker.done:
                            return
        else:
            async for line in body.aiter_lines():
                if (state := self._accepted(tracker.accept_text(line))) is not None:
                    yield state
                    if tracker.done:
                        return

    async def aiter_states(self) -> AsyncGenerator[RunState, None]:
        """Yield every run state, ``run`` first and ``done`` last, across reconnects.

        Raises:
            StreamHTTPError: a non-2xx answer before the stream.
            StreamTimeoutError: nothing arrived for ``timeout`` seconds.
            StreamConnectionError: the connection dropped and could not be resumed.
            RunFailedError: after yielding ``failed`` (and ``done``), when ``raise_on_error``.
            RunCancelledError: likewise after ``cancelled``.
            StreamConsumedError: the states were read already.
        """
        self._start_iteration()
        await self.check()
        while True:
            response = self.response
            try:
                async with contextlib.aclosing(self._aiter_connection(response)) as states:
                    async for state in states:
                        yield state
                reason = self._dropped("the stream ended before the run did")
            except httpx.TimeoutException as exc:
                reason = self._dropped(self._timeout_or_drop(exc, response))
            except httpx.TransportError as exc:
                reason = self._dropped(_describe(exc))
            if reason is None or not await self._reconnect(reason):
                break
        await self.aclose()
        self._finish()

    async def _reconnect(self, reason: str) -> bool:
        await self.response.aclose()
        while True:
            await anyio.sleep(self._next_attempt(reason))
            if self._client is None:
                self._client = self._own_client = httpx.AsyncClient()
            try:
                response = await self._client.send(self._resend_request(), stream=True)
            except httpx.TransportError as exc:
                reason = _describe(exc)
                continue
            try:
                if response.status_code >= 400:
                    await response.aread()
                verdict = self._reconnect_verdict(response)
            except BaseException:
                await response.aclose()
                raise
            if verdict is True:
                self.response = response
                return True
            await response.aclose()
            if verdict is False:
                return False
            reason = str(verdict)

    async def aread_results(self, on_progress: OnProgress | None = None) -> Results:
        """Read the states to the end (calling ``on_progress``) and return the results.

        Raises:
            RunFailedError: the run failed.
            RunCancelledError: the run was cancelled.
            StreamError: as `aiter_states`.
        """
        async with contextlib.aclosing(self.aiter_states()) as states:
            async for state in states:
                if on_progress is not None:
                    outcome = on_progress(state)
                    if inspect.isawaitable(outcome):
                        await outcome
        return self.results()

    async def aclose(self) -> None:
        """Close the response and the client this stream opened for reconnects."""
        await self.response.aclose()
        if self._own_client is not None:
            await self._own_client.aclose()
            self._own_client = None


def _connect_error(exc: httpx.TransportError, url: object = None) -> StreamError:
    if url is None:
        try:
            url = exc.request.url
        except RuntimeError:
            url = "the server"
    if isinstance(exc, httpx.TimeoutException):
        return StreamTimeoutError(None, f"{url} did not answer in time: {_describe(exc)}")
    return StreamConnectionError(f"could not reach {url}: {_describe(exc)}")


def _prepare_headers(kwargs: dict[str, Any], jsonl: bool) -> httpx.Headers:
    headers = httpx.Headers(kwargs.pop("headers", None))
    headers.setdefault("Accept", _JSONL[0] if jsonl else _SSE)
    headers.setdefault("Cache-Control", "no-store")
    return headers


@contextlib.asynccontextmanager
async def aconnect_states(
    client: httpx.AsyncClient,
    method: str,
    url: str | httpx.URL,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_reconnects: int = 3,
    max_retry_delay: float = 5.0,
    jsonl: bool = False,
    raise_on_error: bool = True,
    **kwargs: Any,
) -> AsyncIterator[AsyncRunStream]:
    """Send a request and open its run stream, like ``httpx_sse.aconnect_sse``.

    Example::

        async with aconnect_states(http, "POST", url, json=body) as stream:
            async for state in stream.aiter_states():
                print(state.type, state.progress)
        results = stream.results()

    Args:
        client: the client that sends the request (and the reconnects).
        method: the HTTP method, e.g. ``"POST"``.
        url: the stream endpoint.
        timeout: seconds of silence before `StreamTimeoutError` (also the request's httpx
            read timeout); None waits forever. Default 15.0.
        max_reconnects: reconnects in a row without a new event before giving up. Default 3.
        max_retry_delay: cap, in seconds, on the server's ``retry:`` delay. Default 5.0.
        jsonl: ask for JSON lines instead of SSE (``Accept: application/jsonl``). Default False.
        raise_on_error: `AsyncRunStream.aiter_states` raises on ``failed`` / ``cancelled``.
            Default True.
        **kwargs: passed to ``client.stream`` (``json``, ``headers``, ``params`` …).

    Yields:
        The open `AsyncRunStream`.

    Raises:
        StreamHTTPError: a non-2xx answer (raised on entering).
        StreamConnectionError: the server could not be reached.
        StreamTimeoutError: the server did not answer in time.
    """
    headers = _prepare_headers(kwargs, jsonl)
    http_timeout = _http_timeout(client.timeout, timeout)
    async with contextlib.AsyncExitStack() as stack:
        try:
            response = await stack.enter_async_context(
                client.stream(method, url, headers=headers, timeout=http_timeout, **kwargs)
            )
        except httpx.TransportError as exc:
            raise _connect_error(exc, url) from exc
        stream = AsyncRunStream(
            response,
            client=client,
            timeout=timeout,
            max_reconnects=max_reconnects,
            max_retry_delay=max_retry_delay,
            raise_on_error=raise_on_error,
        )
        stack.push_async_callback(stream.aclose)
        await stream.check()
        yield stream


async def _process_async(
    source: Any,
    on_progress: OnProgress | None,
    kind: Literal["sse", "jsonl"] | None,
    options: dict[str, Any],
) -> Results:
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(source, httpx.Response):
            response = source
        else:
            try:
                response = await stack.enter_async_context(source)
            except httpx.TransportError as exc:
                raise _connect_error(exc) from exc
        stream = AsyncRunStream(response, default_kind=kind, **options)
        stack.push_async_callback(stream.aclose)
        return await stream.aread_results(on_progress)


async def process_streaming_response(
    source: contextlib.AbstractAsyncContextManager[httpx.Response] | httpx.Response,
    on_progress: OnProgress | None = None,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_reconnects: int = 3,
    max_retry_delay: float = 5.0,
    client: httpx.AsyncClient | None = None,
) -> Results:
    """Read a run's stream to its end and return its results (seed 001's helper).

    Example::

        results = await process_streaming_response(
            http.stream("POST", url, json=body), on_progress=lambda s: print(s.eta)
        )

    Args:
        source: ``http.stream(...)`` (not yet entered) or an open streaming ``httpx.Response``
            (SSE or JSON lines, told apart by its content type).
        on_progress: called (and awaited if async) with every state, in order.
        timeout: seconds of silence before `StreamTimeoutError`; None waits forever.
            Default 15.0.
        max_reconnects: reconnects in a row without a new event before giving up. Default 3.
        max_retry_delay: cap, in seconds, on the server's ``retry:`` delay. Default 5.0.
        client: sends the reconnects; default: a new ``httpx.AsyncClient`` when needed
            (the request's headers, e.g. ``Authorization``, are sent again as they were).

    Returns:
        The `Results` of the ``result`` state.

    Raises:
        RunFailedError: the run ended ``failed`` (``.state`` carries the error).
        RunCancelledError: the run ended ``cancelled``.
        StreamHTTPError: a non-2xx answer before the stream (``status_code``, ``body``).
        StreamTimeoutError: nothing arrived for ``timeout`` seconds.
        StreamConnectionError: the connection dropped and could not be resumed.
        StreamProtocolError: the answer is not a run's event stream.
    """
    options = {
        "timeout": timeout,
        "max_reconnects": max_reconnects,
        "max_retry_delay": max_retry_delay,
        "client": client,
    }
    return await _process_async(source, on_progress, None, options)


async def process_json_stream(
    source: contextlib.AbstractAsyncContextManager[httpx.Response]
    | httpx.Response
    | AsyncIterable[Any]
    | Iterable[Any],
    on_progress: OnProgress | None = None,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_reconnects: int = 3,
    max_retry_delay: float = 5.0,
    client: httpx.AsyncClient | None = None,
) -> Results:
    """Read a JSON-lines run stream, or any iterable of states, and return its results.

    Example::

        results = await process_json_stream(
            http.stream("POST", url, json=body, headers={"Accept": "application/jsonl"})
        )

    Args:
        source: ``http.stream(...)`` or an open response sending JSON lines (any content
            type other than ``text/event-stream`` is read as JSON lines); or an (async)
            iterable of states as `RunState`, dicts, or JSON strings or bytes.
        on_progress: called (and awaited if async) with every state, in order.
        timeout: seconds of silence before `StreamTimeoutError` (also between items of an
            async iterable); None waits forever. Default 15.0.
        max_reconnects: as in `process_streaming_response`. Default 3.
        max_retry_delay: as in `process_streaming_response`. Default 5.0.
        client: as in `process_streaming_response`.

    Returns:
        The `Results` of the ``result`` state.

    Raises:
        RunFailedError: the run ended ``failed``.
        RunCancelledError: the run ended ``cancelled``.
        StreamError: as `process_streaming_response`.
    """
    if isinstance(source, httpx.Response) or hasattr(source, "__aenter__"):
        options = {
            "timeout": timeout,
            "max_reconnects": max_reconnects,
            "max_retry_delay": max_retry_delay,
            "client": client,
        }
        return await _process_async(source, on_progress, "jsonl", options)
    tracker = _Tracker()
    if isinstance(source, AsyncIterable):
        items = source.__aiter__()
        while True:
            try:
                with anyio.fail_after(timeout):
                    item = await anext(items)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise StreamTimeoutError(timeout) from None
            await _feed_async(tracker, item, on_progress)
            if tracker.done:
                break
    else:
        for item in source:
            await _feed_async(tracker, item, on_progress)
            if tracker.done:
                break
    return tracker.results()


async def _feed_async(tracker: _Tracker, item: Any, on_progress: OnProgress | None) -> None:
    state = tracker.accept(item)
    if state is not None and on_progress is not None:
        outcome = on_progress(state)
        if inspect.isawaitable(outcome):
            await outcome


# -- sync ------------------------------------------------------------------------------------


class RunStream(_StreamBase):
    """An open run stream (sync); made by `connect_states` or the ``*_sync`` helpers.

    The inactivity timeout is enforced through httpx's read timeout, which requests sent by
    this module set to ``timeout``.

    Attributes:
        response: the current HTTP response (a new one after each reconnect).
        reconnects: how many times the stream was resumed.
    """

    def __init__(
        self,
        response: httpx.Response,
        *,
        client: httpx.Client | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_reconnects: int = 3,
        max_retry_delay: float = 5.0,
        raise_on_error: bool = True,
        default_kind: Literal["sse", "jsonl"] | None = None,
    ) -> None:
        super().__init__(
            response,
            timeout=timeout,
            max_reconnects=max_reconnects,
            max_retry_delay=max_retry_delay,
            raise_on_error=raise_on_error,
            default_kind=default_kind,
        )
        self._client = client
        self._own_client: httpx.Client | None = None

    def check(self) -> None:
        """Check the first answer: a 2xx event stream.

        Raises:
            StreamHTTPError: a non-2xx status (the body is read for the error).
            StreamProtocolError: not ``text/event-stream`` nor JSON lines.
        """
        if self._checked:
            return
        if not self.response.is_success:
            self.response.read()
            raise StreamHTTPError.from_response(self.response)
        _stream_kind(self.response, self._default_kind)
        self._checked = True

    def _iter_connection(self, response: httpx.Response) -> Generator[RunState, None, None]:
        tracker = self._tracker
        if _stream_kind(response, self._default_kind) == "sse":
            for sse in httpx_sse.EventSource(response).iter_sse():
                if (state := self._accepted(tracker.accept_sse(sse))) is not None:
                    yield state
                    if tracker.done:
                        return
        else:
            for line in response.iter_lines():
                if (state := self._accepted(tracker.accept_text(line))) is not None:
                    yield state
                    if tracker.done:
                        return

    def iter_states(self) -> Generator[RunState, None, None]:
        """Yield every run state, ``run`` first and ``done`` last, across reconnects.

        Raises:
            StreamHTTPError: a non-2xx answer before the stream.
            StreamTimeoutError: nothing arrived for ``timeout`` seconds.
            StreamConnectionError: the connection dropped and could not be resumed.
            RunFailedError: after yielding ``failed`` (and ``done``), when ``raise_on_error``.
            RunCancelledError: likewise after ``cancelled``.
            StreamConsumedError: the states were read already.
        """
        self._start_iteration()
        self.check()
        while True:
            response = self.response
            try:
                with contextlib.closing(self._iter_connection(response)) as states:
                    yield from states
                reason = self._dropped("the stream ended before the run did")
            except httpx.TimeoutException as exc:
                reason = self._dropped(self._timeout_or_drop(exc, response))
            except httpx.TransportError as exc:
                reason = self._dropped(_describe(exc))
            if reason is None or not self._reconnect(reason):
                break
        self.close()
        self._finish()

    def _reconnect(self, reason: str) -> bool:
        self.response.close()
        while True:
            time.sleep(self._next_attempt(reason))
            if self._client is None:
                self._client = self._own_client = httpx.Client()
            try:
                response = self._client.send(self._resend_request(), stream=True)
            except httpx.TransportError as exc:
                reason = _describe(exc)
                continue
            try:
                if response.status_code >= 400:
                    response.read()
                verdict = self._reconnect_verdict(response)
            except BaseException:
                response.close()
                raise
            if verdict is True:
                self.response = response
                return True
            response.close()
            if verdict is False:
                return False
            reason = str(verdict)

    def read_results(self, on_progress: OnProgress | None = None) -> Results:
        """Read the states to the end (calling ``on_progress``) and return the results.

        Raises:
            RunFailedError: the run failed.
            RunCancelledError: the run was cancelled.
            StreamError: as `iter_states`.
        """
        with contextlib.closing(self.iter_states()) as states:
            for state in states:
                if on_progress is not None:
                    on_progress(state)
        return self.results()

    def close(self) -> None:
        """Close the response and the client this stream opened for reconnects."""
        self.response.close()
        if self._own_client is not None:
            self._own_client.close()
            self._own_client = None


@contextlib.contextmanager
def connect_states(
    client: httpx.Client,
    method: str,
    url: str | httpx.URL,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_reconnects: int = 3,
    max_retry_delay: float = 5.0,
    jsonl: bool = False,
    raise_on_error: bool = True,
    **kwargs: Any,
) -> Iterator[RunStream]:
    """Send a request and open its run stream (sync twin of `aconnect_states`).

    Example::

        with connect_states(http, "POST", url, json=body) as stream:
            for state in stream.iter_states():
                print(state.type, state.progress)

    Args:
        client: the client that sends the request (and the reconnects).
        method: the HTTP method.
        url: the stream endpoint.
        timeout: seconds of silence before `StreamTimeoutError` (the request's httpx read
            timeout); None waits forever. Default 15.0.
        max_reconnects: reconnects in a row without a new event before giving up. Default 3.
        max_retry_delay: cap, in seconds, on the server's ``retry:`` delay. Default 5.0.
        jsonl: ask for JSON lines instead of SSE. Default False.
        raise_on_error: `RunStream.iter_states` raises on ``failed`` / ``cancelled``.
            Default True.
        **kwargs: passed to ``client.stream``.

    Yields:
        The open `RunStream`.

    Raises:
        StreamHTTPError: a non-2xx answer (raised on entering).
        StreamConnectionError: the server could not be reached.
        StreamTimeoutError: the server did not answer in time.
    """
    headers = _prepare_headers(kwargs, jsonl)
    http_timeout = _http_timeout(client.timeout, timeout)
    with contextlib.ExitStack() as stack:
        try:
            response = stack.enter_context(
                client.stream(method, url, headers=headers, timeout=http_timeout, **kwargs)
            )
        except httpx.TransportError as exc:
            raise _connect_error(exc, url) from exc
        stream = RunStream(
            response,
            client=client,
            timeout=timeout,
            max_reconnects=max_reconnects,
            max_retry_delay=max_retry_delay,
            raise_on_error=raise_on_error,
        )
        stack.callback(stream.close)
        stream.check()
        yield stream


def _process_sync(
    source: Any,
    on_progress: OnProgress | None,
    kind: Literal["sse", "jsonl"] | None,
    options: dict[str, Any],
) -> Results:
    with contextlib.ExitStack() as stack:
        if isinstance(source, httpx.Response):
            response = source
        else:
            try:
                response = stack.enter_context(source)
            except httpx.TransportError as exc:
                raise _connect_error(exc) from exc
        stream = RunStream(response, default_kind=kind, **options)
        stack.callback(stream.close)
        return stream.read_results(on_progress)


def process_streaming_response_sync(
    source: contextlib.AbstractContextManager[httpx.Response] | httpx.Response,
    on_progress: OnProgress | None = None,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_reconnects: int = 3,
    max_retry_delay: float = 5.0,
    client: httpx.Client | None = None,
) -> Results:
    """Sync twin of `process_streaming_response`.

    Args:
        source: ``http.stream(...)`` of an ``httpx.Client`` or an open streaming response.
        on_progress: called with every state, in order.
        timeout: seconds of silence allowed; enforced by httpx's read timeout (set on the
            reconnects this function sends). Default 15.0.
        max_reconnects: reconnects in a row without a new event before giving up. Default 3.
        max_retry_delay: cap, in seconds, on the server's ``retry:`` delay. Default 5.0.
        client: sends the reconnects; default: a new ``httpx.Client`` when needed.

    Returns:
        The `Results` of the ``result`` state.

    Raises:
        RunFailedError: the run ended ``failed``.
        RunCancelledError: the run ended ``cancelled``.
        StreamError: as `process_streaming_response`.
    """
    options = {
        "timeout": timeout,
        "max_reconnects": max_reconnects,
        "max_retry_delay": max_retry_delay,
        "client": client,
    }
    return _process_sync(source, on_progress, None, options)


def process_json_stream_sync(
    source: contextlib.AbstractContextManager[httpx.Response] | httpx.Response | Iterable[Any],
    on_progress: OnProgress | None = None,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_reconnects: int = 3,
    max_retry_delay: float = 5.0,
    client: httpx.Client | None = None,
) -> Results:
    """Sync twin of `process_json_stream`.

    Args:
        source: ``http.stream(...)`` or an open response sending JSON lines, or an iterable
            of states (`RunState`, dicts, JSON strings or bytes).
        on_progress: called with every state, in order.
        timeout: as in `process_streaming_response_sync`. Default 15.0.
        max_reconnects: as in `process_streaming_response_sync`. Default 3.
        max_retry_delay: as in `process_streaming_response_sync`. Default 5.0.
        client: as in `process_streaming_response_sync`.

    Returns:
        The `Results` of the ``result`` state.

    Raises:
        RunFailedError: the run ended ``failed``.
        RunCancelledError: the run ended ``cancelled``.
        StreamError: as `process_streaming_response`.
    """
    if isinstance(source, httpx.Response) or hasattr(source, "__enter__"):
        options = {
            "timeout": timeout,
            "max_reconnects": max_reconnects,
            "max_retry_delay": max_retry_delay,
            "client": client,
        }
        return _process_sync(source, on_progress, "jsonl", options)
    tracker = _Tracker()
    for item in source:
        state = tracker.accept(item)
        if state is not None and on_progress is not None:
            on_progress(state)
        if tracker.done:
            break
    return tracker.results()


# Defined in their own module, which builds on the names above.
from ._client_forms import Listener as Listener  # noqa: E402
from ._client_forms import StateStream as StateStream  # noqa: E402
from ._client_forms import StreamEvent as StreamEvent  # noqa: E402
from ._client_forms import image_input as image_input  # noqa: E402
from ._client_forms import process_readable_stream as process_readable_stream  # noqa: E402
from ._client_forms import (  # noqa: E402
    process_readable_stream_sync as process_readable_stream_sync,
)
from ._client_forms import stream_states as stream_states  # noqa: E402
