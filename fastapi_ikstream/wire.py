"""The stream on the wire: Server-Sent Events or JSON lines (``docs/concepts/wire-format.md``).

`EventStreamResponse` streams a run's states as either; `encode_sse` and `encode_jsonl`
encode one state (the SSE bytes equal ``fastapi.sse.format_sse_event``'s).
"""

from ._response import EventStreamResponse
from ._wire import encode_jsonl, encode_sse

__all__ = ["EventStreamResponse", "encode_jsonl", "encode_sse"]
