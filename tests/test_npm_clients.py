"""The stream read by the npm SSE clients that WIRE.md's rules come from.

Node runs small scripts (``tests/node/*.mjs``) against a real uvicorn server, each printing
what its client saw as JSON: ``eventsource-parser`` fed from Node's ``fetch``, the
``eventsource`` package's ``EventSource``, and ``@microsoft/fetch-event-source``. The run
sends keep-alives between its events (``keep_alive`` shorter than the pause between
updates), unicode, ``\\n``/``\\r`` inside JSON strings and a 200,000-character base64 image.
A TCP proxy that cuts each event stream after two events makes the clients reconnect with
``Last-Event-ID``. The npm packages (exact versions in ``tests/node/package.json``) are
installed by a session fixture when ``tests/node/node_modules`` is missing or stale.
"""

import asyncio
import base64
import json
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from proxy import CuttingProxy

from fastapi_ikstream import GeneratorDeployment, create_router
from fastapi_ikstream.testing import FakeDeployment

pytestmark = pytest.mark.timeout(60)

NODE_DIR = Path(__file__).parent / "node"
KEEP_ALIVE = 0.05
DELAY = 0.12  # between updates: longer than KEEP_ALIVE, so keep-alives come in between
RETRY = 50

IMAGE = base64.b64encode(random.Random(7).randbytes(150_000)).decode()  # 200,000 characters
LOG_LINES = ["héllo wörld — 世界 🎉", "line one\nline two\r\nline three\r", "tab\there"]
PARTIAL = {"caption": 'naïve café\r\n✓ "quoted" \\ back\u2028slash', "tokens": ["猫", "🐈", "\x00"]}
DATA = {"label": "猫", "text": "a\nb\rc\r\n", "score": 0.5}
UPDATES: list[dict[str, Any]] = [
    {"state": "STARTED", "progress": {"current": 1, "total": 2}},
    {"logs": LOG_LINES},
    {"partial_output": PARTIAL},
    {"state": "STARTED", "progress": {"current": 2, "total": 2}},
    {"results": [{"image": IMAGE}, {"DATA_DICT": DATA}]},
]
FIELDS = ("event", "data", "id", "retry")
KINDS = ["run", "progress", "log", "partial", "progress", "result", "done"]
ALL_KINDS = ["run", "progress", "log", "partial", "result", "failed", "cancelled", "done", "reset"]
BODY = {"inputs": [], "parameters": {"prompt": "un chat 🐈"}}


# --- npm packages -------------------------------------------------------------------------


async def run_node(node: str, script: str, config: dict[str, Any]) -> dict[str, Any]:
    """Run ``tests/node/{script}`` with ``config`` as JSON; return what it prints (JSON)."""
    process = await asyncio.create_subprocess_exec(
        node,
        script,
        json.dumps({"timeoutMs": 15_000, **config}),
        cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 20)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


# --- server and proxy ---------------------------------------------------------------------


def make_app(deployment: FakeDeployment) -> FastAPI:
    app = FastAPI()
    router = create_router(deployment, path="/gen", keep_alive=KEEP_ALIVE, retry=RETRY)
    app.include_router(router, prefix="/api")
    return app


# --- checks -------------------------------------------------------------------------------


def check_events(items: list[tuple[str, str, str]], run_id: str | None = None) -> list[Any]:
    """``(event name, id, data)`` triples: data is JSON, names and ids agree with it.

    Returns:
        The parsed data of each event, in the order received.
    """
    parsed = []
    for name, event_id, data in items:
        assert data, f"an empty event: {name!r} {event_id!r}"
        payload = json.loads(data)
        assert name == payload["type"]
        assert event_id == f"{payload['run_id']}:{payload['seq']}"
        assert run_id is None or payload["run_id"] == run_id
        parsed.append(payload)
    assert len({payload["run_id"] for payload in parsed}) == 1
    return parsed


def check_complete_run(events: list[Any]) -> None:
    """Seqs 1..N once each, in order; the kinds and payloads of ``UPDATES``, unchanged."""
    assert [event["seq"] for event in events] == list(range(1, len(KINDS) + 1))
    assert [event["type"] for event in events] == KINDS
    by_kind = {event["type"]: event for event in events}
    assert [line["message"] for line in by_kind["log"]["logs"]] == LOG_LINES
    assert by_kind["partial"]["partial_output"] == PARTIAL
    assert by_kind["result"]["results"] == [{"image": IMAGE}, {"DATA_DICT": DATA}]
    assert by_kind["done"]["status"] == "completed"


def check_raw(raw: str) -> int:
    """The stream's text keeps WIRE.md rules 1 and 2; returns its keep-alive count."""
    assert not raw.startswith("\ufeff")
    assert "\r" not in raw
    assert raw.endswith("\n\n")
    for block in raw[:-2].split("\n\n"):
        lines = block.split("\n")
        assert sum(line.startswith("data: ") for line in lines) == 1, block[:200]
        for line in lines:
            assert line == ": keep-alive" or line.split(": ", 1)[0] in FIELDS, line[:200]
    return raw.count(": keep-alive\n")


def check_reconnects(requests: list[dict[str, Any]], run_id: str) -> list[int]:
    """Each reconnect's ``Last-Event-ID`` names the last event received before it.

    Args:
        requests: ``{"lastEventId", "received"}`` per request, as the scripts record them.
        run_id: the run.

    Returns:
        How many events had arrived before each request.
    """
    received = [request["received"] for request in requests]
    assert received[0] == 0
    assert requests[0]["lastEventId"] is None
    assert received == sorted(set(received))  # each connection brought new events
    for request in requests[1:]:  # seqs arrive in order 1..N, so event k has seq k
        assert request["lastEventId"] == f"{run_id}:{request['received']}"
    return received


# --- eventsource-parser ---------------------------------------------------------------------


async def test_eventsource_parser_reads_every_event_between_keep_alives(serve_app, node):
    deployment = FakeDeployment(UPDATES, delay=DELAY)
    with serve_app(make_app(deployment)) as server:
        seen = await run_node(
            node, "parser.mjs", {"url": f"{server.url}/api/gen/stream", "body": BODY}
        )
    assert seen["status"] == 200
    assert seen["contentType"].startswith("text/event-stream")
    assert seen["parseErrors"] == []
    events = check_events([(e["event"], e["id"], e["data"]) for e in seen["events"]])
    check_complete_run(events)
    assert seen["retries"] == [{"ms": RETRY, "before": 0}]  # once, on the first event
    keep_alives = check_raw(seen["raw"])
    assert keep_alives >= 1
    assert seen["comments"] == ["keep-alive"] * keep_alives
    # the keep-alives came between events, not after the last one
    assert seen["raw"].index(": keep-alive\n") < seen["raw"].index("event: done\n")
    assert len(deployment.calls) == 1
    assert deployment.calls[0].parameters == BODY["parameters"]


async def test_eventsource_parser_reads_a_failed_run(serve_app, node):
    deployment = FakeDeployment(UPDATES, fail_at=2, delay=DELAY)
    with serve_app(make_app(deployment)) as server:
        seen = await run_node(
            node, "parser.mjs", {"url": f"{server.url}/api/gen/stream", "body": BODY}
        )
    assert seen["status"] == 200
    events = check_events([(e["event"], e["id"], e["data"]) for e in seen["events"]])
    assert [event["type"] for event in events] == ["run", "progress", "log", "failed", "done"]
    assert [event["seq"] for event in events] == [1, 2, 3, 4, 5]
    assert events[3]["error"]["code"] == "fake_failure"
    assert events[-1]["status"] == "failed"
    assert check_raw(seen["raw"]) >= 1


# --- eventsource (EventSource for Node) -----------------------------------------------------


async def start_detached(base: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{base}/api/gen/runs", json=BODY)
    assert response.status_code == 201
    run_id: str = response.json()["run_id"]
    return run_id


async def test_eventsource_gets_every_event_of_a_detached_run(serve_app, node):
    deployment = FakeDeployment(UPDATES, delay=DELAY)
    with serve_app(make_app(deployment)) as server:
        run_id = await start_detached(server.url)
        url = f"{server.url}/api/gen/runs/{run_id}/events"
        seen = await run_node(node, "eventsource.mjs", {"url": url, "kinds": ALL_KINDS})
    assert seen["endedBy"] == "done"
    assert seen["errors"] == []
    assert seen["requests"] == [{"lastEventId": None, "received": 0}]
    events = check_events([(e["kind"], e["id"], e["data"]) for e in seen["events"]], run_id)
    check_complete_run(events)


class GatedUpdates:
    """The updates of `UPDATES`, each sent once the reader is on a given connection.

    The proxy cuts each stream after two events; gating the updates on the proxy's count of
    streams makes the cuts fall where the test says, whatever the machine's speed: updates
    0 on the 1st connection, 1-2 on the 2nd, 3-4 on the 3rd.
    """

    CONNECTION = (1, 2, 2, 3, 3)

    def __init__(self) -> None:
        self.proxy: CuttingProxy | None = None
        self.calls = 0

    async def __call__(self, inputs: Any, parameters: Any) -> Any:
        self.calls += 1
        for update, connection in zip(UPDATES, self.CONNECTION, strict=True):
            # the proxy runs on the test's loop, the deployment on the server's: poll
            while self.proxy is None or self.proxy.streams < connection:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            await asyncio.sleep(DELAY)
            yield update


async def test_eventsource_resumes_with_last_event_id_after_cuts(serve_app, node):
    gated = GatedUpdates()
    app = FastAPI()
    router = create_router(
        GeneratorDeployment(gated), path="/gen", keep_alive=KEEP_ALIVE, retry=RETRY
    )
    app.include_router(router, prefix="/api")
    with serve_app(app) as server:
        run_id = await start_detached(server.url)
        async with CuttingProxy(server.config.port, spare_done=True).running() as proxy:
            gated.proxy = proxy
            url = f"{proxy.url}/api/gen/runs/{run_id}/events"
            seen = await run_node(node, "eventsource.mjs", {"url": url, "kinds": ALL_KINDS})
    assert seen["endedBy"] == "done"
    events = check_events([(e["kind"], e["id"], e["data"]) for e in seen["events"]], run_id)
    check_complete_run(events)  # every seq exactly once, across the reconnects
    assert proxy.cuts >= 2
    # one `error` per cut, each followed by a reconnect (readyState CONNECTING)
    assert [error["readyState"] for error in seen["errors"]] == [0] * proxy.cuts
    assert len(check_reconnects(seen["requests"], run_id)) == proxy.cuts + 1
    assert proxy.last_event_ids == [request["lastEventId"] for request in seen["requests"]]
    assert gated.calls == 1


async def test_eventsource_reconnecting_after_done_gets_204_and_stops(serve_app, node):
    deployment = FakeDeployment(UPDATES, delay=DELAY)
    with serve_app(make_app(deployment)) as server:
        run_id = await start_detached(server.url)
        url = f"{server.url}/api/gen/runs/{run_id}/events"
        config = {"url": url, "kinds": ALL_KINDS, "closeOnDone": False}
        seen = await run_node(node, "eventsource.mjs", config)
    assert seen["endedBy"] == "closed"
    events = check_events([(e["kind"], e["id"], e["data"]) for e in seen["events"]], run_id)
    check_complete_run(events)
    # the stream closed after `done`; the source reconnected with its id and got 204
    assert check_reconnects(seen["requests"], run_id) == [0, len(KINDS)]
    assert [(error["code"], error["readyState"]) for error in seen["errors"]] == [
        (None, 0),
        (204, 2),
    ]


# --- @microsoft/fetch-event-source ----------------------------------------------------------


def message_items(seen: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(m["event"], m["id"], m["data"]) for m in seen["messages"]]


async def test_fetch_event_source_sees_no_empty_event(serve_app, node):
    deployment = FakeDeployment(UPDATES, delay=DELAY)
    with serve_app(make_app(deployment)) as server:
        config = {"url": f"{server.url}/api/gen/stream", "body": BODY}
        seen = await run_node(node, "fetch_event_source.mjs", config)
    assert seen["errors"] == []
    check_complete_run(check_events(message_items(seen)))
    assert [m["retry"] for m in seen["messages"]] == [RETRY] + [None] * (len(KINDS) - 1)
    assert [(r["method"], r["lastEventId"]) for r in seen["requests"]] == [("POST", None)]
    assert json.loads(seen["requests"][0]["body"]) == BODY
    assert len(deployment.calls) == 1


async def test_fetch_event_source_re_posts_and_resumes_the_same_run(serve_app, node):
    deployment = FakeDeployment(UPDATES, delay=DELAY)
    with serve_app(make_app(deployment)) as server:
        async with CuttingProxy(server.config.port, spare_done=True).running() as proxy:
            config = {"url": f"{proxy.url}/api/gen/stream", "body": BODY}
            seen = await run_node(node, "fetch_event_source.mjs", config)
    events = check_events(message_items(seen))
    check_complete_run(events)  # no duplicate, no gap
    assert proxy.cuts >= 2
    assert len(seen["errors"]) == proxy.cuts  # each cut is an error, then a retry
    requests = seen["requests"]
    # each retry re-sent the original POST, with the last event's id
    assert [request["method"] for request in requests] == ["POST"] * (proxy.cuts + 1)
    assert all(json.loads(request["body"]) == BODY for request in requests)
    received = check_reconnects(requests, events[0]["run_id"])
    assert proxy.last_event_ids == [request["lastEventId"] for request in requests]
    # `retry:` rides on each connection's first event, on no other
    assert [i for i, m in enumerate(seen["messages"]) if m["retry"] is not None] == received
    assert {m["retry"] for m in seen["messages"]} == {RETRY, None}
    assert len(deployment.calls) == 1  # the re-POSTs started no new run
    assert deployment.calls[0].finished
