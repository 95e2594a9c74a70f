"""A cutting proxy on 127.0.0.1, shared by the tests that break event streams on purpose."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable


class CuttingProxy:
    """Forwards HTTP/1.1 to a server on 127.0.0.1 and cuts its event-stream responses.

    Two ways to cut, both only in ``text/event-stream`` responses with a chunked body:

    - ``cut_after``: right after the event (the block with a ``data:`` line) that brings the
      count in the response to this number, a chunk holding more events being shortened to
      end there: the reader gets exactly that many complete events, then a body that ends
      early, however the server batched them. With ``spare_done``, a stream is not cut where
      that would leave out nothing but ``done`` (the stream ends there anyway).
    - ``cut_at``: called once per event-stream response; gives the number of body bytes
      (chunk framing included) to relay before the cut, mid-event or mid-chunk alike, or
      None not to cut that response. A seeded ``random.Random`` makes the cuts repeatable.

    ``pause`` seconds are waited before each cut (Chromium's ``fetch`` drops bytes that arrive
    together with an aborted connection's end). ``max_cuts`` caps the cuts in all.

    Attributes:
        requests: the head of every request, in order, lower-cased.
        last_event_ids: the ``Last-Event-ID`` header of every request (None when absent).
        streams: how many event-stream responses it carried.
        cuts: how many of them it cut.
        url: ``http://127.0.0.1:{port}`` once running.
    """

    def __init__(
        self,
        upstream_port: int,
        cut_after: int | None = 2,
        *,
        cut_at: Callable[[], int | None] | None = None,
        spare_done: bool = False,
        pause: float = 0.0,
        max_cuts: int | None = None,
    ) -> None:
        self.upstream_port = upstream_port
        self.cut_after = None if cut_at is not None else cut_after
        self.cut_at = cut_at
        self.spare_done = spare_done
        self.pause = pause
        self.max_cuts = max_cuts
        self.requests: list[str] = []
        self.last_event_ids: list[str | None] = []
        self.streams = 0
        self.cuts = 0
        self.port = 0
        self.url = ""
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CuttingProxy]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            yield self
        finally:
            server.close()
            for writer in list(self._writers):  # ends the handlers still relaying
                writer.close()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(client_w)
        try:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            self._writers.discard(client_w)
            self._handlers.discard(task)
            return
        self._writers.add(upstream_w)
        pipes = [
            asyncio.create_task(self._requests(client_r, upstream_w)),
            asyncio.create_task(self._responses(upstream_r, client_w)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for writer in (client_w, upstream_w):
                self._writers.discard(writer)
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            self._handlers.discard(task)

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                text = head.decode("latin-1").lower()
                self.requests.append(text)
                fields = dict(line.split(":", 1) for line in text.split("\r\n")[1:] if ":" in line)
                last_event_id = fields.get("last-event-id")
                self.last_event_ids.append(None if last_event_id is None else last_event_id.strip())
                length = int(fields.get("content-length", 0))
                writer.write(head + (await reader.readexactly(length) if length else b""))
                await writer.drain()

    def _may_cut(self) -> bool:
        return self.max_cuts is None or self.cuts < self.max_cuts

    async def _cut(self) -> None:
        self.cuts += 1
        if self.pause:
            await asyncio.sleep(self.pause)

    async def _responses(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(head)
                text = head.decode("latin-1").lower()
                if "transfer-encoding: chunked" not in text:
                    for line in text.split("\r\n"):
                        if line.startswith("content-length:"):
                            writer.write(await reader.readexactly(int(line.split(":", 1)[1])))
                    await writer.drain()
                    continue
                stream = "content-type: text/event-stream" in text
                self.streams += stream
                if not await self._relay_chunks(reader, writer, stream):
                    return

    async def _relay_chunks(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream: bool
    ) -> bool:
        """Relay one chunked body; False if it was cut (the connection is to be closed).

        Events are counted when complete (their blank line relayed): an event split over
        several chunks, as a large one is, counts once, in the chunk that ends it.
        """
        limit = self.cut_at() if stream and self.cut_at is not None else None
        relayed = events = 0
        tail = b""  # the start of an event whose end has not come yet
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            piece = size_line + await reader.readexactly(size + 2)
            if limit is not None and relayed + len(piece) > limit and self._may_cut():
                writer.write(piece[: limit - relayed])
                await writer.drain()
                await self._cut()
                return False
            body = tail + piece[len(size_line) : -2]
            wanted = None if self.cut_after is None else self.cut_after - events
            if stream and wanted is not None and wanted > 0 and size and self._may_cut():
                end = _end_of_events(body, wanted)
                if end is not None and not (self.spare_done and b"event: done\n" in body[:end]):
                    kept = body[len(tail) : end]
                    writer.write(b"%x\r\n%s\r\n" % (len(kept), kept))
                    await writer.drain()
                    await self._cut()
                    return False
            writer.write(piece)
            await writer.drain()
            relayed += len(piece)
            if size == 0:
                return True
            last = body.rfind(b"\n\n")
            complete = 0 if last < 0 else last + 2
            events += _data_blocks(body[:complete])
            tail = body[complete:]


def _data_blocks(text: bytes) -> int:
    """How many events (blocks with a ``data:`` line) the complete blocks of ``text`` hold."""
    blocks = text.split(b"\n\n")[:-1]
    return sum(1 for block in blocks if (b"\n" + block).count(b"\ndata:"))


def _end_of_events(payload: bytes, wanted: int) -> int | None:
    """The offset in ``payload`` of the end of its ``wanted``-th complete event (the block
    with its ``data:`` line), or None if it holds fewer complete events than that."""
    end = 0
    while wanted > 0:
        block_end = payload.find(b"\n\n", end)
        if block_end < 0:
            return None
        if (b"\n" + payload[end:block_end]).count(b"\ndata:"):
            wanted -= 1
        end = block_end + 2
    return end
