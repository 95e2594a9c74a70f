"""Chromium reconnects by itself and gets every event exactly once.

Debian's Chromium, driven by Playwright, reads a run through a TCP proxy that cuts every
event-stream connection after a couple of events. Chromium's own ``EventSource`` (and the
package's browser module, ``watchRun`` and ``streamRun``) must reconnect with
``Last-Event-ID`` and end up with seqs 1..N, none missing and none twice.
"""

import asyncio
import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from proxy import CuttingProxy

from fastapi_ikstream import create_router
from fastapi_ikstream.testing import FakeDeployment

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(60),
    pytest.mark.asyncio(loop_scope="module"),
]

PROGRESS = 12
TOTAL = PROGRESS + 3  # run, progress…, result, done
KINDS = ["run", "progress", "log", "partial", "result", "failed", "cancelled", "done", "reset"]


def make_app(deployment: FakeDeployment) -> FastAPI:
    app = FastAPI()
    app.include_router(create_router(deployment, path="/gen", retry=100), prefix="/api")

    @app.get("/page", response_class=HTMLResponse)
    async def page() -> str:
        return "<!doctype html><title>ikstream</title>"

    return app


def paced() -> FakeDeployment:
    updates: list[dict[str, Any]] = [
        {"state": "STARTED", "progress": {"current": i + 1, "total": PROGRESS}}
        for i in range(PROGRESS)
    ]
    updates.append({"results": [{"DATA_DICT": {"ok": True}}]})
    return FakeDeployment(updates, delay=0.05)


def check_events(got: list[dict[str, Any]], run_id: str | None = None) -> list[int]:
    """Each event's id, name and data agree; returns the seqs in the order received."""
    seqs = []
    for item in got:
        data = json.loads(item["data"])
        assert item["id"] == f"{data['run_id']}:{data['seq']}"
        assert item["kind"] == data["type"]
        if run_id is not None:
            assert data["run_id"] == run_id
        seqs.append(data["seq"])
    return seqs


EVENT_SOURCE = """
async ([url, kinds, closeOnDone]) => new Promise((resolve, reject) => {
  const got = [];
  let errors = 0;
  const source = new EventSource(url);
  const finish = () => { source.close(); resolve({got, errors}); };
  for (const kind of [...kinds, "message"]) {
    source.addEventListener(kind, event => {
      got.push({kind, id: event.lastEventId, data: event.data});
      if (kind === "done" && closeOnDone) finish();
    });
  }
  source.addEventListener("error", () => {
    errors += 1;
    if (source.readyState === EventSource.CLOSED) {
      if (closeOnDone) reject(new Error("the EventSource gave up"));
      else finish();
    }
  });
})
"""


async def start_run(page: Any, base: str) -> dict[str, Any]:
    created = await page.evaluate(
        """async base => {
          const response = await fetch(base + "/api/gen/runs", {
            method: "POST", headers: {"content-type": "application/json"}, body: "{}"});
          return {status: response.status, body: await response.json()};
        }""",
        base,
    )
    assert created["status"] == 201
    return dict(created["body"])


async def test_chromium_eventsource_resumes_through_dropped_connections(serve_app, browser):
    deployment = paced()
    with serve_app(make_app(deployment)) as server:
        async with CuttingProxy(server.config.port, pause=0.05).running() as proxy:
            page = await browser.new_page()
            try:
                await page.goto(proxy.url + "/page")
                run = await start_run(page, proxy.url)
                events_url = f"{proxy.url}/api/gen/runs/{run['run_id']}/events"
                async with asyncio.timeout(15):
                    result = await page.evaluate(EVENT_SOURCE, [events_url, KINDS, True])
            finally:
                await page.close()
    got = result["got"]
    assert check_events(got, run["run_id"]) == list(range(1, TOTAL + 1))
    assert [item["kind"] for item in got] == ["run"] + ["progress"] * PROGRESS + [
        "result",
        "done",
    ]
    assert proxy.streams > 1
    assert proxy.cuts >= 1
    # one connection error per cut, then a reconnect (unless the cut came after ``done``)
    assert proxy.cuts - 1 <= result["errors"] <= proxy.cuts
    resumed = [head for head in proxy.requests if "last-event-id:" in head]
    assert len(resumed) == proxy.streams - 1 == result["errors"]
    assert all(head.startswith("get /api/gen/runs/") for head in resumed)
    assert len(deployment.calls) == 1


async def test_chromium_eventsource_stops_on_the_204_after_done(serve_app, browser):
    deployment = FakeDeployment([{"state": "STARTED"}, {"results": []}])
    with serve_app(make_app(deployment)) as server:
        async with CuttingProxy(server.config.port, cut_after=100, pause=0.05).running() as proxy:
            page = await browser.new_page()
            try:
                await page.goto(proxy.url + "/page")
                run = await start_run(page, proxy.url)
                events_url = f"{proxy.url}/api/gen/runs/{run['run_id']}/events"
                async with asyncio.timeout(15):
                    result = await page.evaluate(EVENT_SOURCE, [events_url, KINDS, False])
            finally:
                await page.close()
    seqs = check_events(result["got"], run["run_id"])
    assert seqs == [1, 2, 3, 4]
    # after ``done`` the stream closed; Chromium came back once with the final id and stopped
    event_requests = [head for head in proxy.requests if "/events" in head.split("\r\n")[0]]
    assert len(event_requests) == 2
    assert f"last-event-id: {run['run_id']}:4".lower() in event_requests[1]
    assert result["errors"] == 2  # the reconnect after the end, then the 204 that stops it


WATCH_RUN = """
async ([moduleUrl, eventsUrl]) => {
  const {watchRun} = await import(moduleUrl);
  const raw = [];
  const results = await watchRun(eventsUrl, {
    onEvent: event => raw.push({kind: event.event, id: event.id, data: event.data}),
  });
  return {raw, results: results.toJSON ? results.toJSON() : null};
}
"""

STREAM_RUN = """
async ([moduleUrl, streamUrl]) => {
  const {streamRun} = await import(moduleUrl);
  const raw = [];
  const states = [];
  await streamRun(streamUrl, {
    body: {inputs: [], parameters: {}},
    onEvent: event => raw.push({kind: event.event, id: event.id, data: event.data}),
    onProgress: state => states.push(state.seq),
  });
  return {raw, states};
}
"""


async def test_browser_module_watch_run_resumes_through_dropped_connections(serve_app, browser):
    deployment = paced()
    with serve_app(make_app(deployment)) as server:
        async with CuttingProxy(server.config.port, pause=0.05).running() as proxy:
            page = await browser.new_page()
            try:
                await page.goto(proxy.url + "/page")
                run = await start_run(page, proxy.url)
                events_url = f"{proxy.url}/api/gen/runs/{run['run_id']}/events"
                module_url = proxy.url + "/api/gen/ikstream.js"
                async with asyncio.timeout(15):
                    result = await page.evaluate(WATCH_RUN, [module_url, events_url])
            finally:
                await page.close()
    assert check_events(result["raw"], run["run_id"]) == list(range(1, TOTAL + 1))
    assert proxy.cuts >= 1
    assert proxy.cuts <= proxy.streams <= proxy.cuts + 1  # the last may be cut after ``done``
    assert len(deployment.calls) == 1


async def test_browser_module_stream_run_re_posts_with_last_event_id(serve_app, browser):
    deployment = paced()
    with serve_app(make_app(deployment)) as server:
        async with CuttingProxy(server.config.port, pause=0.05).running() as proxy:
            page = await browser.new_page()
            try:
                await page.goto(proxy.url + "/page")
                module_url = proxy.url + "/api/gen/ikstream.js"
                async with asyncio.timeout(15):
                    result = await page.evaluate(
                        STREAM_RUN, [module_url, proxy.url + "/api/gen/stream"]
                    )
            finally:
                await page.close()
    seqs = check_events(result["raw"])
    # streamRun stops reading once the run has ended: the raw stream may stop before ``done``
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) >= TOTAL - 1
    assert result["states"] == seqs
    posts = [head for head in proxy.requests if head.startswith("post /api/gen/stream")]
    assert len(posts) == proxy.streams > 1
    assert all("last-event-id:" in head for head in posts[1:])
    assert len(deployment.calls) == 1, "a re-POST resumes the run instead of starting one"
