"""ikstream.js in a real headless Chromium (Debian's), driven by Playwright's Python API."""

import asyncio
import base64
import importlib.resources
import io
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse
from PIL import Image
from playwright.async_api import Browser, Page
from pydantic import BaseModel

from fastapi_ikstream import (
    DeploymentError,
    EventType,
    RunState,
    RunStatus,
    StreamingRun,
    create_router,
)
from fastapi_ikstream.wire import encode_sse

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(60),
]

MODULE = importlib.resources.files("fastapi_ikstream") / "static" / "ikstream.js"


def encode_png(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 160, 90)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


PNG_B64 = encode_png((8, 6))
OUTPUTS: list[dict[str, Any]] = [{"image": PNG_B64}, {"DATA_DICT": {"faces": 2}}]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>ikstream</title></head>
<body><img id="out" alt="result">
<script type="module">
import * as ik from "/ikstream.js";
window.ik = ik;
window.ikReady = true;
</script></body></html>"""


class Job(BaseModel):
    steps: int = 4
    delay: float = 0.05
    fail: bool = False
    silent: float = 0.0


def raw_state(seq: int, kind: str, **fields: Any) -> RunState:
    return RunState(type=EventType(kind), run_id="r_raw", seq=seq, **fields)


def make_app() -> FastAPI:
    app = FastAPI()
    app.state.cancelled = threading.Event()
    app.state.finished = []
    app.state.last_event_ids = []

    async def deployment(job: Job, on_progress: Any) -> list[dict[str, Any]]:
        try:
            for step in range(job.steps):
                on_progress(
                    state="STARTED",
                    eta=[100, 250 * (job.steps - step)],
                    progress={"current": step + 1, "total": job.steps},
                )
                await asyncio.sleep(job.delay)
            await asyncio.sleep(job.silent)
        except asyncio.CancelledError:
            app.state.cancelled.set()
            raise
        if job.fail:
            raise DeploymentError("no face in the image", code="no_faces")
        app.state.finished.append(job.steps)
        return OUTPUTS

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/ikstream.js")
    async def module() -> FileResponse:
        return FileResponse(str(MODULE), media_type="text/javascript")

    @app.post("/stream")
    async def stream(job: Job, request: Request) -> Any:
        run = StreamingRun(lambda on_progress: deployment(job, on_progress), keep_alive=0)
        return run.to_response(accept=request.headers.get("accept"))

    @app.get("/events")
    async def events(steps: int = 3) -> Any:
        run = StreamingRun(lambda on_progress: deployment(Job(steps=steps), on_progress))
        return run.to_response()

    @app.post("/guarded")
    async def guarded() -> Any:
        raise HTTPException(403, detail="This key may not run jobs.")

    @app.post("/raw")
    async def raw() -> Any:
        run_a = b'{"type":"run","run_id":"r_raw",'
        run_b = b'"seq":1,"status":"received"}'
        result = raw_state(2, "result", status=RunStatus.COMPLETED, results=OUTPUTS[1:])
        done = raw_state(3, "done", status=RunStatus.COMPLETED)
        chunks = [
            b"\xef\xbb\xbf: a comment and a blank line dispatch nothing\r\n\r\n",
            b"retry: 1234\rid: r_raw:1\revent: run\rdata: " + run_a + b"\r",
            b"data: " + run_b + b"\r",
            b"\n",  # with the CR before it: one line end, not two
            b"\r\n",
            b"id: r_raw:1\n\n",  # an id without data: nothing
            b"data:\n\n",  # empty data: an event that carries no state
            encode_sse(result),
            b": keep-alive\n",
            encode_sse(done).replace(b"\n", b"\r\n"),
        ]

        async def body() -> Any:
            for chunk in chunks:
                yield chunk
                await asyncio.sleep(0.01)

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.post("/flaky")
    async def flaky(request: Request) -> Any:
        last = request.headers.get("last-event-id")
        app.state.last_event_ids.append(last)
        states = [
            raw_state(1, "run", status=RunStatus.RECEIVED),
            *[raw_state(seq, "progress", progress={"current": seq - 1}) for seq in (2, 3, 4)],
            raw_state(5, "result", status=RunStatus.COMPLETED, results=OUTPUTS),
            raw_state(6, "done", status=RunStatus.COMPLETED),
        ]
        seen = int(last.rpartition(":")[2]) if last else 0
        events = states[:3] if last is None else states[seen - 1 :]

        async def body() -> Any:
            for index, state in enumerate(events):
                yield encode_sse(state, retry=30 if index == 0 else None)
                await asyncio.sleep(0.01)
            if last is None:
                raise RuntimeError("connection broken on purpose")

        return StreamingResponse(body(), media_type="text/event-stream")

    async def routed(inputs: Any, parameters: Any, on_progress: Any) -> Any:
        return await deployment(Job(steps=3, delay=0.02), on_progress)

    app.include_router(create_router(routed, path="/job"), prefix="/api")
    return app


@pytest.fixture
def server(serve_app):
    with serve_app(make_app()) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, server) -> AsyncIterator[Page]:
    context = await browser.new_context()
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    await tab.goto(server.url + "/")
    await tab.wait_for_function("window.ikReady === true", timeout=5000)
    yield tab
    await context.close()
    assert errors == []


async def test_a_page_streams_a_run_shows_progress_and_displays_the_image(page):
    outcome = await page.evaluate(
        """async () => {
          const seen = [];
          const results = await window.ik.streamRun("/stream", {
            body: {steps: 4, delay: 0.05},
            onProgress: state => seen.push({type: state.type, at: performance.now(),
                                            current: state.progress?.current, eta: state.eta}),
          });
          const image = results.getOutput(0);
          const img = document.getElementById("out");
          img.src = image.dataUrl;
          await img.decode();
          const blob = image.toBlob();
          return {
            seen, length: results.length, data: results.getOutput(1), mime: image.mime,
            width: img.naturalWidth, height: img.naturalHeight, blobType: blob.type,
            blobSize: blob.size, bytes: image.toBytes().length, runId: results.runId,
            state: results.state.type, isImage: image instanceof window.ik.ImageOutput,
          };
        }"""
    )
    progress = [item for item in outcome["seen"] if item["type"] == "progress"]
    assert [item["current"] for item in progress] == [1, 2, 3, 4]
    assert progress[0]["eta"] == [100, 1000]
    # progress arrived while the run went on, not all at the end
    assert progress[-1]["at"] - progress[0]["at"] >= 100
    assert [item["type"] for item in outcome["seen"]][-2:] == ["result", "done"]
    assert (outcome["width"], outcome["height"]) == (8, 6)
    assert outcome["mime"] == outcome["blobType"] == "image/png"
    assert outcome["blobSize"] == outcome["bytes"] == len(base64.b64decode(PNG_B64))
    assert outcome["data"] == {"DATA_DICT": {"faces": 2}}
    assert outcome["length"] == 2
    assert outcome["state"] == "result"
    assert outcome["isImage"] is True
    assert outcome["runId"].startswith("r_")


async def test_aborting_rejects_and_cancels_the_run_on_the_server(page, server):
    outcome = await page.evaluate(
        """async () => {
          const controller = new AbortController();
          let progress = 0;
          try {
            await window.ik.streamRun("/stream", {
              body: {steps: 200, delay: 0.05},
              signal: controller.signal,
              onProgress: state => {
                if (state.type === "progress" && ++progress === 2) controller.abort();
              },
            });
            return {resolved: true};
          } catch (error) {
            return {name: error.name, progress};
          }
        }"""
    )
    assert outcome == {"name": "AbortError", "progress": 2}
    app = server.config.app
    assert await asyncio.to_thread(app.state.cancelled.wait, 5)
    assert app.state.finished == []


async def test_a_failed_run_rejects_with_its_state(page):
    outcome = await page.evaluate(
        """async () => {
          try {
            await window.ik.streamRun("/stream", {body: {steps: 1, fail: true}});
            return {resolved: true};
          } catch (error) {
            return {name: error.name, message: error.message, state: error.state,
                    isFailed: error instanceof window.ik.RunFailedError,
                    isRoot: error instanceof window.ik.IKStreamError};
          }
        }"""
    )
    assert outcome["name"] == "RunFailedError"
    assert outcome["isFailed"] is True
    assert outcome["isRoot"] is True
    assert outcome["message"] == "no face in the image"
    assert outcome["state"]["type"] == "failed"
    assert outcome["state"]["error"] == {
        "code": "no_faces",
        "message": "no face in the image",
        "retryable": False,
    }


async def test_a_4xx_rejects_with_status_and_json_body(page):
    outcome = await page.evaluate(
        """async () => {
          const results = [];
          for (const call of [
            () => window.ik.streamRun("/guarded", {body: {}}),
            async () => window.ik.processStreamingResponse(
              await fetch("/guarded", {method: "POST"})),
          ]) {
            try {
              await call();
              results.push({resolved: true});
            } catch (error) {
              results.push({name: error.name, status: error.status, body: error.body,
                            message: error.message});
            }
          }
          return results;
        }"""
    )
    expected = {
        "name": "HTTPError",
        "status": 403,
        "body": {"detail": "This key may not run jobs."},
        "message": "HTTP 403: This key may not run jobs.",
    }
    assert outcome == [expected, expected]


async def test_the_sse_parser_follows_the_standard(page):
    outcome = await page.evaluate(
        """async () => {
          const events = [];
          const states = [];
          const response = await fetch("/raw", {method: "POST"});
          const results = await window.ik.processStreamingResponse(
            response, state => states.push(state), {onEvent: event => events.push(event)});
          // the same text fed in two chunks, split at every position
          const text = "\\ufeff: c\\r\\n\\r\\nretry: 7\\rid: a\\revent: x\\r" +
                       "data: 1\\r\\ndata:2\\r\\n\\nid: b\\n\\ndata\\n\\n" +
                       "id: n\\u0000ul\\ndata: z\\n\\nretry: 1x\\ndata: y\\n\\n";
          const splits = new Set();
          for (let i = 0; i <= text.length; i++) {
            const parsed = [];
            const parser = new window.ik.SSEParser(event => parsed.push(event));
            parser.feed(text.slice(0, i));
            parser.feed(text.slice(i));
            splits.add(JSON.stringify(parsed));
          }
          return {events, states: states.map(s => [s.type, s.seq]), data: results.getOutput(0),
                  splits: [...splits].map(s => JSON.parse(s))};
        }"""
    )
    run_data = '{"type":"run","run_id":"r_raw",\n"seq":1,"status":"received"}'
    assert outcome["events"][0] == {
        "event": "run",
        "data": run_data,
        "id": "r_raw:1",
        "retry": 1234,
    }
    assert [event["event"] for event in outcome["events"]] == ["run", "message", "result", "done"]
    assert outcome["events"][1]["data"] == ""
    assert outcome["states"] == [["run", 1], ["result", 2], ["done", 3]]
    assert outcome["data"] == {"DATA_DICT": {"faces": 2}}
    assert outcome["splits"] == [
        [
            {"event": "x", "data": "1\n2", "id": "a", "retry": 7},
            {"event": "message", "data": "", "id": "b", "retry": 7},
            {"event": "message", "data": "z", "id": "b", "retry": 7},
            {"event": "message", "data": "y", "id": "b", "retry": 7},
        ]
    ]


async def test_a_dropped_stream_reconnects_with_last_event_id(page, server):
    outcome = await page.evaluate(
        """async () => {
          const seqs = [];
          const results = await window.ik.streamRun("/flaky", {
            body: {}, maxRetryDelay: 100, onProgress: state => seqs.push(state.seq)});
          return {seqs, length: results.length};
        }"""
    )
    assert outcome == {"seqs": [1, 2, 3, 4, 5, 6], "length": 2}
    assert server.config.app.state.last_event_ids == [None, "r_raw:3"]


async def test_silence_rejects_with_a_timeout(page):
    outcome = await page.evaluate(
        """async () => {
          const started = performance.now();
          try {
            await window.ik.streamRun("/stream", {body: {steps: 1, silent: 5}, timeout: 300});
            return {resolved: true};
          } catch (error) {
            return {name: error.name, status: error.status, took: performance.now() - started};
          }
        }"""
    )
    assert outcome["name"] == "StreamTimeoutError"
    assert outcome["status"] == 408
    assert 300 <= outcome["took"] < 2000


async def test_json_lines_event_source_and_the_router(page, server):
    outcome = await page.evaluate(
        """async () => {
          const jsonl = await window.ik.processJsonStream(await fetch("/stream", {
            method: "POST", headers: {"Accept": "application/jsonl",
                                      "Content-Type": "application/json"},
            body: JSON.stringify({steps: 2, delay: 0.01})}));
          const viaOption = await window.ik.streamRun("/stream", {body: {steps: 1}, jsonl: true});
          const fromObjects = await window.ik.processJsonStream([
            {type: "run", run_id: "r_o", seq: 1},
            '{"type":"keepalive"}',
            {type: "result", run_id: "r_o", seq: 2, results: [{DATA_DICT: {ok: true}}]},
            {type: "done", run_id: "r_o", seq: 3},
          ]);
          const watched = [];
          const viaEventSource = await window.ik.watchRun("/events?steps=3", {
            onProgress: state => watched.push(state.type)});
          const routed = await window.ik.streamRun("/api/job/stream", {body: {inputs: []}});
          const created = await (await fetch("/api/job/runs", {
            method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"})).json();
          const detached = await window.ik.watchRun(created.events_url);
          return {
            jsonl: jsonl.getOutput(0).mime, viaOption: viaOption.length,
            fromObjects: fromObjects.getOutput(0), watched,
            viaEventSource: viaEventSource.getOutput(1), routed: routed.getOutput(0).mime,
            detached: [detached.runId === created.run_id, detached.getOutput(1)],
          };
        }"""
    )
    assert outcome["jsonl"] == "image/png"
    assert outcome["viaOption"] == 2
    assert outcome["fromObjects"] == {"DATA_DICT": {"ok": True}}
    assert outcome["watched"] == ["run", "progress", "progress", "progress", "result", "done"]
    assert outcome["viaEventSource"] == {"DATA_DICT": {"faces": 2}}
    assert outcome["routed"] == "image/png"
    assert outcome["detached"] == [True, {"DATA_DICT": {"faces": 2}}]


async def test_the_router_serves_the_same_module(server):
    async with httpx.AsyncClient(base_url=server.url) as http:
        served = await http.get("/api/job/ikstream.js")
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("text/javascript")
    assert served.content == MODULE.read_bytes()
