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
``timeout`` gets a `StreamTimeoutWarning` (httpx's default is 5 s; see
``docs/concepts/wire-format.md``, rule 8), and its read timeouts are handled as dropped
connections.

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

from .._exceptions import MissingExtraError

try:
    import httpx  # noqa: F401
    import httpx_sse  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise MissingExtraError("client", "fastapi_ikstream.client") from exc

from ._async import AsyncRunStream as AsyncRunStream
from ._async import aconnect_states as aconnect_states
from ._async import process_json_stream as process_json_stream
from ._async import process_streaming_response as process_streaming_response
from ._core import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from ._core import OnProgress as OnProgress
from ._errors import StreamConnectionError as StreamConnectionError
from ._errors import StreamError as StreamError
from ._errors import StreamHTTPError as StreamHTTPError
from ._errors import StreamProtocolError as StreamProtocolError
from ._errors import StreamResumeError as StreamResumeError
from ._errors import StreamTimeoutError as StreamTimeoutError
from ._errors import StreamTimeoutWarning as StreamTimeoutWarning
from ._forms import Listener as Listener
from ._forms import StateStream as StateStream
from ._forms import StreamEvent as StreamEvent
from ._forms import process_readable_stream as process_readable_stream
from ._forms import process_readable_stream_sync as process_readable_stream_sync
from ._forms import stream_states as stream_states
from ._images import ImageOutput as ImageOutput
from ._images import image_input as image_input
from ._results import Output as Output
from ._results import Results as Results
from ._results import StorageObjectOutput as StorageObjectOutput
from ._sync import RunStream as RunStream
from ._sync import connect_states as connect_states
from ._sync import process_json_stream_sync as process_json_stream_sync
from ._sync import process_streaming_response_sync as process_streaming_response_sync

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
