"""Chromium's own ``EventSource`` resumes 20-s runs through cuts, with the router's defaults.

The router keeps its default ``retry`` (3000 ms) and ``reconnect_grace`` (30 s). Each page
opens ``new EventSource("/api/gen/stream?…")`` (an attached run) through its own TCP proxy,
which cuts every event-stream connection after a seeded random number of events. Chromium
waits the ``retry:`` delay and reconnects by itself to the same URL with ``Last-Event-ID``;
each run must end with every event exactly once, and no run may be cancelled meanwhile.
"""

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from fastapi_ikstream import create_router
from fastapi_ikstream.testing import FakeDeployment

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(60),
    pytest.mark.asyncio(loop_scope="module"),
]

UPDATES = 40
DELAY = 0.5  # a run takes 20 s
TOTAL = UPDATES + 3
PAGES = 4
KINDS = ["run", "progress", "log", "partial", "result", "failed", "cancelled", "done", "reset"]


def make_app(deployment: FakeDeployment) -> FastAPI:
    app = FastAPI()
    app.include_router(create_router(deployment, path="/gen"), prefix="/api")  # the defaults

    @app.get("/page", response_class=HTMLResponse)
    async def page() -> str:
        return "<!doctype html><title>ikstream</title>"

    return app


class SeededCuttingProxy:
    """Forwards HTTP/1.1 to the server; cuts each event stream after a random event count.

    Each event-stream response draws its cut point from ``rng`` (``low..high`` events) and
    is cut between chunks (the server writes whole events per chunk), after ``pause``
    seconds; a chunk carrying ``done`` is never cut.

    Attributes:
        requests: the head of every request, lower-cased, in order.
        cuts: how many streams it cut.
    """

    def __init__(
        self, upstream_port: int, rng: random.Random, low: int, high: int, pause: float = 0.05
    ) -> None:
        self.upstream_port = upstream_port
        self.rng = rng
        self.low, self.high = low, high
        self.pause = pause
        self.requests: list[str] = []
        self.cuts = 0
        self.url = ""
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator["SeededCuttingProxy"]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            yield self
        finally:
            server.close()
            for writer in list(self._writers):
                writer.close()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(client_w)
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
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
                length = 0
                for line in text.split("\r\n"):
                    if line.startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                writer.write(head + (await reader.readexactly(length) if length else b""))
                await writer.drain()

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
                cut_after = self.rng.randint(self.low, self.high)
                events = 0
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";")[0], 16)
                    payload = await reader.readexactly(size + 2)
                    writer.write(size_line + payload)
                    await writer.drain()
                    if size == 0:
                        break
                    events += payload.count(b"\ndata: ")
                    if stream and events >= cut_after and b"event: done\n" not in payload:
                        self.cuts += 1
                        await asyncio.sleep(self.pause)
                        return


EVENT_SOURCE = """
async ([url, kinds]) => new Promise((resolve, reject) => {
  const got = [];
  let errors = 0;
  const source = new EventSource(url);
  for (const kind of [...kinds, "message"]) {
    source.addEventListener(kind, event => {
      got.push({kind, id: event.lastEventId, data: event.data});
      if (kind === "done") { source.close(); resolve({got, errors}); }
    });
  }
  source.addEventListener("error", () => {
    errors += 1;
    if (source.readyState === EventSource.CLOSED) reject(new Error("the EventSource gave up"));
  });
})
"""


def slow_deployment() -> FakeDeployment:
    updates: list[dict[str, Any]] = [
        {"state": "STARTED", "progress": {"current": i + 1, "total": UPDATES}}
        for i in range(UPDATES)
    ]
    updates.append({"results": [{"DATA_DICT": {"ok": True}}]})
    return FakeDeployment(updates, delay=DELAY)


async def read_in_page(browser: Any, proxy: SeededCuttingProxy) -> dict[str, Any]:
    page = await browser.new_page()
    try:
        await page.goto(proxy.url + "/page")
        url = f"{proxy.url}/api/gen/stream?prompt=a+cat"
        result: dict[str, Any] = await page.evaluate(EVENT_SOURCE, [url, KINDS])
        return result
    finally:
        await page.close()


async def test_chromium_eventsource_resumes_20s_runs_with_the_default_retry_and_grace(
    serve_app, browser
):
    deployment = slow_deployment()
    proxies = []
    with serve_app(make_app(deployment)) as server:
        async with contextlib.AsyncExitStack() as stack:
            for index in range(PAGES):
                proxy = SeededCuttingProxy(server.config.port, random.Random(1100 + index), 4, 14)
                proxies.append(await stack.enter_async_context(proxy.running()))
            async with asyncio.timeout(45):
                results = await asyncio.gather(*(read_in_page(browser, p) for p in proxies))
    for proxy, result in zip(proxies, results, strict=True):
        got = result["got"]
        data = [json.loads(item["data"]) for item in got]
        run_id = data[0]["run_id"]
        assert [item["seq"] for item in data] == list(range(1, TOTAL + 1))
        assert [item["id"] for item in got] == [f"{run_id}:{d['seq']}" for d in data]
        assert [item["kind"] for item in got] == ["run"] + ["progress"] * UPDATES + [
            "result",
            "done",
        ]
        assert data[-1]["status"] == "completed"
        assert proxy.cuts >= 2
        assert result["errors"] == proxy.cuts  # each cut: one error, then a reconnect
        streams = [head for head in proxy.requests if head.startswith("get /api/gen/stream")]
        assert len(streams) == proxy.cuts + 1
        assert "last-event-id:" not in streams[0]
        assert all(f"last-event-id: {run_id}:".lower() in head for head in streams[1:])
    assert len(deployment.calls) == PAGES  # the reconnects resumed, none started a run
    assert [call.cancelled for call in deployment.calls] == [False] * PAGES
    assert [call.finished for call in deployment.calls] == [True] * PAGES
