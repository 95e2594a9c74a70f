"""A cursor that names no known run never starts work; one past a run's end gets ``reset``.

"After a restart": each client reads a run from server A through a proxy that cuts the
stream after three events and, at that moment, points itself at server B, which has never
seen the run. The client reconnects by itself with ``Last-Event-ID: {run_id}:3``; B answers
404 JSON ``run_not_found``, and the client must stop there: one request reaches B, no
reconnect loop, and B's deployment is never called. Five clients: Chromium's
``EventSource``, the npm ``eventsource`` package, ``eventsource-parser`` over ``fetch``,
``@microsoft/fetch-event-source`` (its README's ``onopen``/``onerror`` idiom) and the
package's Python client (``fastapi_ikstream.client``, over ``httpx-sse``).

A cursor past the end of a known, running run gets a ``reset`` event first, then the kept
events from the start, on every endpoint that takes a cursor.
"""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from httpx_sse import aconnect_sse
from test_npm_clients import run_node

from fastapi_ikstream import create_router
from fastapi_ikstream.client import StreamResumeError, aconnect_states
from fastapi_ikstream.testing import FakeDeployment

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="module")]

RETRY = 200  # ms: a client that looped on the 404 would come back several times a second
CUT_AFTER = 3
UPDATES = 8
BODY = {"inputs": [], "parameters": {"prompt": "a cat"}}
KINDS = ["run", "progress", "log", "partial", "result", "failed", "cancelled", "done", "reset"]
QUIET = 1.5  # seconds B is watched after the client stopped: several retry delays


def deployment() -> FakeDeployment:
    updates: list[dict[str, Any]] = [
        {"state": "STARTED", "progress": {"current": i + 1, "total": UPDATES}}
        for i in range(UPDATES)
    ]
    updates.append({"results": [{"DATA_DICT": {"ok": True}}]})
    return FakeDeployment(updates, delay=0.15)


def make_app(fake: FakeDeployment) -> FastAPI:
    app = FastAPI()
    app.include_router(create_router(fake, path="/gen", retry=RETRY), prefix="/api")

    @app.get("/page", response_class=HTMLResponse)
    async def page() -> str:
        return "<!doctype html><title>ikstream</title>"

    return app


class Recorder:
    """ASGI wrapper that records each HTTP request and the status it was answered."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        entry: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "last_event_id": headers.get(b"last-event-id", b"").decode() or None,
            "status": None,
        }
        self.requests.append(entry)

        async def recording_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        await self.app(scope, receive, recording_send)

    def streams(self) -> list[dict[str, Any]]:
        """The requests to the router (not the test page, nor a browser's favicon)."""
        return [entry for entry in self.requests if entry["path"].startswith("/api/")]


class RestartingProxy:
    """Forwards to server A until it cuts the first event stream, then to server B.

    Attributes:
        cuts: streams it cut (one).
    """

    def __init__(self, first_port: int, second_port: int) -> None:
        self.upstream_port = first_port
        self.second_port = second_port
        self.cuts = 0
        self.url = ""
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator["RestartingProxy"]:
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
                length = 0
                for line in head.decode("latin-1").lower().split("\r\n"):
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
                    if stream and events >= CUT_AFTER and self.cuts == 0:
                        self.cuts += 1
                        self.upstream_port = self.second_port  # "the server restarted"
                        await asyncio.sleep(0.05)
                        self._drop_every_connection()
                        return

    def _drop_every_connection(self) -> None:
        """Close every open connection, as a restarting server does.

        A client that kept an idle keep-alive connection to A (a browser keeps the one that
        loaded the page) must not send its reconnect over it: A is gone.
        """
        for writer in list(self._writers):
            writer.close()


class Restart:
    """Servers A and B behind a `RestartingProxy`, each with its own deployment."""

    def __init__(self, serve_app: Any) -> None:
        self.serve_app = serve_app
        self.first, self.second = deployment(), deployment()
        self.recorder = Recorder(make_app(self.second))
        self.proxy: RestartingProxy

    @contextlib.contextmanager
    def servers(self) -> Iterator[tuple[Any, Any]]:
        with (
            self.serve_app(make_app(self.first)) as a,
            self.serve_app(self.recorder) as b,
        ):
            yield a, b

    def check(self, received: list[str]) -> str:
        """The client got A's events from seq 1 on and asked B for that run exactly once.

        Args:
            received: the ids of the events the client got, in order (at least three: the
                proxy cut after the chunk that carried the third).

        Returns:
            The run id.
        """
        assert self.proxy.cuts == 1
        assert len(received) >= CUT_AFTER
        run_id = received[0].rsplit(":", 1)[0]
        assert received == [f"{run_id}:{seq}" for seq in range(1, len(received) + 1)]
        streams = self.recorder.streams()
        assert [(entry["last_event_id"], entry["status"]) for entry in streams] == [
            (received[-1], 404)
        ]
        assert self.second.calls == []  # B never ran anything
        assert len(self.first.calls) == 1
        return run_id


@contextlib.asynccontextmanager
async def restarted(serve_app: Any) -> AsyncIterator[Restart]:
    restart = Restart(serve_app)
    with restart.servers() as (a, b):
        async with RestartingProxy(a.config.port, b.config.port).running() as proxy:
            restart.proxy = proxy
            yield restart
            await asyncio.sleep(QUIET)  # a client that kept reconnecting would show up here


# --- Chromium's EventSource -----------------------------------------------------------------

EVENT_SOURCE = """
async ([url, kinds]) => new Promise(resolve => {
  const got = [];
  const states = [];
  const source = new EventSource(url);
  for (const kind of [...kinds, "message"]) {
    source.addEventListener(kind, event => got.push({kind, id: event.lastEventId}));
  }
  source.addEventListener("error", () => {
    states.push(source.readyState);
    if (source.readyState === EventSource.CLOSED) resolve({got, states});
  });
})
"""


async def test_chromium_eventsource_stops_on_a_cursor_for_an_unknown_run(serve_app, browser):
    async with restarted(serve_app) as restart:
        page = await browser.new_page()
        try:
            await page.goto(restart.proxy.url + "/page")
            url = f"{restart.proxy.url}/api/gen/stream?prompt=a+cat"
            async with asyncio.timeout(15):
                result = await page.evaluate(EVENT_SOURCE, [url, KINDS])
            await asyncio.sleep(QUIET)  # the page stays open: Chromium could still retry
        finally:
            await page.close()
    restart.check([item["id"] for item in result["got"]])
    # the cut: CONNECTING (0), then the 404: CLOSED (2), and no event from B
    assert result["states"] == [0, 2]
    kinds = [item["kind"] for item in result["got"]]
    assert kinds == ["run"] + ["progress"] * (len(kinds) - 1)
    assert restart.recorder.streams()[0]["path"] == "/api/gen/stream"


# --- npm clients -----------------------------------------------------------------------------


async def test_npm_eventsource_stops_on_a_cursor_for_an_unknown_run(serve_app, node):
    async with restarted(serve_app) as restart:
        url = f"{restart.proxy.url}/api/gen/stream?prompt=a+cat"
        seen = await run_node(node, "eventsource.mjs", {"url": url, "kinds": KINDS})
    assert seen["endedBy"] == "closed"  # it gave up by itself, it did not time out
    restart.check([event["id"] for event in seen["events"]])
    assert [(error["code"], error["readyState"]) for error in seen["errors"]] == [
        (None, 0),
        (404, 2),
    ]


async def test_eventsource_parser_stops_on_a_cursor_for_an_unknown_run(serve_app, node):
    async with restarted(serve_app) as restart:
        config = {"client": "parser", "url": f"{restart.proxy.url}/api/gen/stream", "body": BODY}
        seen = await run_node(node, "resume_clients.mjs", config)
    assert seen["endedBy"] == "fatal"
    restart.check([event["id"] for event in seen["events"]])
    assert [(r["lastEventId"], r["status"]) for r in seen["requests"]] == [
        (None, 200),
        (seen["events"][-1]["id"], 404),
    ]
    assert json.loads(seen["requests"][1]["body"])["detail"]["error"] == "run_not_found"
    assert restart.recorder.streams()[0]["method"] == "POST"


async def test_fetch_event_source_stops_on_a_cursor_for_an_unknown_run(serve_app, node):
    async with restarted(serve_app) as restart:
        config = {"client": "fes", "url": f"{restart.proxy.url}/api/gen/stream", "body": BODY}
        seen = await run_node(node, "resume_clients.mjs", config)
    assert seen["endedBy"] == "fatal"
    restart.check([event["id"] for event in seen["events"]])
    assert [(r["lastEventId"], r["status"]) for r in seen["requests"]] == [
        (None, 200),
        (seen["events"][-1]["id"], 404),
    ]
    assert json.loads(seen["requests"][1]["body"])["detail"]["error"] == "run_not_found"
    assert seen["errors"][-1] == "HTTP 404"  # the fatal error, rethrown by onerror


# --- the package's Python client (httpx-sse) ------------------------------------------------


async def read_states(stream: Any, ids: list[str]) -> None:
    async with asyncio.timeout(15):
        async for state in stream.aiter_states():
            ids.append(f"{state.run_id}:{state.seq}")


async def test_python_client_stops_on_a_cursor_for_an_unknown_run(serve_app):
    ids: list[str] = []
    async with (
        restarted(serve_app) as restart,
        httpx.AsyncClient(timeout=10) as http,
        aconnect_states(http, "POST", f"{restart.proxy.url}/api/gen/stream", json=BODY) as stream,
    ):
        with pytest.raises(StreamResumeError, match="HTTP 404") as raised:
            await read_states(stream, ids)
    restart.check(ids)
    assert raised.value.last_event_id == ids[-1]
    assert stream.reconnects == 0


async def test_unknown_run_cursor_gets_404_json_on_every_endpoint_and_starts_nothing(serve_app):
    fake = deployment()
    cursor = "r_0123456789abcdef01234567:5"
    headers = {"Accept": "text/event-stream", "Last-Event-ID": cursor}
    with serve_app(make_app(fake)) as server:
        base = f"{server.url}/api/gen"
        async with httpx.AsyncClient(timeout=10) as http:
            requests: list[tuple[str, str, dict[str, Any]]] = [
                ("POST", f"{base}/stream", {"json": BODY}),
                ("GET", f"{base}/stream", {"params": {"prompt": "a cat"}}),
                ("GET", f"{base}/runs/r_0123456789abcdef01234567/events", {}),
            ]
            for method, url, kwargs in requests:
                async with aconnect_sse(http, method, url, headers=headers, **kwargs) as source:
                    response = source.response
                    assert response.status_code == 404, (method, url)
                    assert response.headers["content-type"] == "application/json"
                    await response.aread()
                    assert response.json()["detail"]["error"] == "run_not_found"
    assert fake.calls == []


# --- a cursor past the end of a known run ----------------------------------------------------


async def read_sse(
    http: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> list[dict[str, Any]]:
    got = []
    async with aconnect_sse(http, method, url, **kwargs) as source:
        assert source.response.status_code == 200
        async for sse in source.aiter_sse():
            data = json.loads(sse.data)
            assert sse.event == data["type"]
            assert sse.id == f"{data['run_id']}:{data['seq']}"
            got.append(data)
    return got


async def test_cursor_past_the_end_of_a_running_run_gets_reset_then_the_events(serve_app):
    fake = deployment()
    total = UPDATES + 3
    with serve_app(make_app(fake)) as server:
        base = f"{server.url}/api/gen"
        async with httpx.AsyncClient(timeout=10) as http, asyncio.timeout(20):
            created = await http.post(f"{base}/runs", json=BODY)
            assert created.status_code == 201
            run_id = created.json()["run_id"]
            state = await http.get(f"{base}/runs/{run_id}")
            assert not state.json()["finished"]  # the run has 1.35 s to go
            past = {"Accept": "text/event-stream", "Last-Event-ID": f"{run_id}:{total + 50}"}
            reads = await asyncio.gather(
                read_sse(http, "GET", f"{base}/runs/{run_id}/events", headers=past),
                read_sse(http, "POST", f"{base}/stream", headers=past, json=BODY),
                read_sse(http, "GET", f"{base}/stream", headers=past, params={"prompt": "x"}),
            )
    for got in reads:
        assert got[0]["type"] == "reset"
        assert got[0]["first_seq"] == 1
        assert [event["seq"] for event in got[1:]] == list(range(1, total + 1))
        assert [event["type"] for event in got[-2:]] == ["result", "done"]
        assert {event["run_id"] for event in got} == {run_id}
    assert len(fake.calls) == 1  # the cursors resumed the run; none started another
