"""ikstream.js's newer forms in Chromium: RunStream (for await, listeners, done, abort),
processReadableStream, fileToInput, and the inference-shaped client."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page
from test_browser_module import OUTPUTS, PNG_B64, make_app

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(60),
]


@pytest.fixture
def server(serve_app):
    with serve_app(make_app()) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, server: Any) -> AsyncIterator[Page]:
    context = await browser.new_context()
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    await tab.goto(server.url + "/")
    await tab.wait_for_function("window.ikReady === true", timeout=5000)
    yield tab
    await context.close()
    assert errors == []


async def test_for_await_listeners_and_done_see_the_same_states(page):
    outcome = await page.evaluate(
        """async () => {
          const stream = window.ik.streamStates("/stream", {body: {steps: 3, delay: 0.02}});
          const heard = [];
          const late = [];
          stream.on("message", state => heard.push(state.seq));
          const ignored = state => heard.push(-1);
          stream.on("data", ignored).off("data", ignored);
          const looped = [];
          for await (const state of stream) looped.push(state.seq);
          const results = await stream.done();
          stream.on("done", r => late.push(r === results));  // after the end: called at once
          let refused = null;
          try { stream.on("finish", () => {}); } catch (error) { refused = error.name; }
          const again = [];
          for await (const state of stream) again.push(state.type);
          return {heard, looped, late, refused, again, outputs: results.outputs,
                  kept: stream.states.length, etas: stream.states.map(s => s.eta)};
        }"""
    )
    assert outcome["heard"] == outcome["looped"] == list(range(1, 7))
    assert outcome["late"] == [True]
    assert outcome["refused"] == "TypeError"
    assert outcome["again"][0] == "run"  # each loop sees every state
    assert outcome["again"][-1] == "done"
    assert outcome["outputs"] == OUTPUTS
    assert outcome["kept"] == 6
    assert outcome["etas"][0] == [None, None]  # the run event has no ETA yet
    assert outcome["etas"][-1] == [0, 0]  # done keeps the result's


async def test_a_failed_run_throws_after_done_in_the_loop_and_rejects_done(page):
    outcome = await page.evaluate(
        """async () => {
          const stream = window.ik.streamStates("/stream", {input: {steps: 1, fail: true}});
          const errors = [];
          stream.on("error", error => errors.push(error.name));
          const types = [];
          let thrown = null;
          try {
            for await (const state of stream) types.push(state.type);
          } catch (error) { thrown = error.name; }
          let rejected = null;
          try { await stream.done(); } catch (error) { rejected = error.state.error.code; }
          return {types, thrown, rejected, errors};
        }"""
    )
    assert outcome["types"][-2:] == ["failed", "done"]
    assert outcome["thrown"] == "RunFailedError"
    assert outcome["rejected"] == "no_faces"
    assert outcome["errors"] == ["RunFailedError"]


async def test_leaving_the_loop_early_aborts_and_the_server_cancels_the_run(page, server):
    outcome = await page.evaluate(
        """async () => {
          const stream = window.ik.streamStates("/stream", {body: {steps: 200, delay: 0.05}});
          for await (const state of stream) if (state.type === "progress") break;
          try { await stream.done(); return "resolved"; } catch (error) { return error.name; }
        }"""
    )
    assert outcome == "AbortError"
    app = server.config.app
    assert await asyncio.to_thread(app.state.cancelled.wait, 5)
    assert app.state.finished == []


async def test_abort_and_an_aborted_signal(page):
    outcome = await page.evaluate(
        """async () => {
          const stream = window.ik.streamStates("/stream", {body: {steps: 200, delay: 0.05}});
          stream.on("message", state => { if (state.type === "progress") stream.abort(); });
          let first = null;
          try { await stream.done(); } catch (error) { first = error.name; }
          const controller = new AbortController();
          controller.abort(new Error("not now"));
          const early = window.ik.streamStates("/stream", {signal: controller.signal});
          let second = null;
          try { await early.done(); } catch (error) { second = error.message; }
          return {first, second};
        }"""
    )
    assert outcome == {"first": "AbortError", "second": "not now"}


async def test_process_readable_stream_reads_sse_and_json_lines_bytes(page):
    outcome = await page.evaluate(
        """async () => {
          const sse = await fetch("/stream", {method: "POST", body: '{"steps": 2}',
            headers: {"content-type": "application/json"}});
          const seen = [];
          const a = await window.ik.processReadableStream(sse.body, s => seen.push(s.type));
          const lines = await fetch("/stream", {method: "POST", body: '{"steps": 1}',
            headers: {"content-type": "application/json", accept: "application/jsonl"}});
          const b = await window.ik.processReadableStream(lines.body, null, {jsonl: true});
          const cut = new ReadableStream({start(c) {
            c.enqueue(new TextEncoder().encode('data: {"type":"run","run_id":"r","seq":1}\\n\\n'));
            c.close();
          }});
          let ended = null;
          try { await window.ik.processReadableStream(cut); } catch (error) { ended = error.name; }
          return {seen, a: a.getOutput(0).dataUrl.slice(0, 22), b: b.length, ended};
        }"""
    )
    assert outcome["seen"][0] == "run"
    assert outcome["seen"][-2:] == ["result", "done"]
    assert outcome["a"] == "data:image/png;base64,"
    assert outcome["b"] == 2
    assert outcome["ended"] == "StreamConnectionError"


async def test_file_to_input_makes_a_data_url_the_router_accepts(page, server):
    outcome = await page.evaluate(
        """async (b64) => {
          const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
          const file = new File([bytes], "face.png", {type: "image/png"});
          const input = await window.ik.fileToInput(file);
          const untyped = await window.ik.fileToInput(new Blob([new Uint8Array(70000)]));
          const results = await window.ik.streamRun("/api/job/stream", {body: {inputs: [input]}});
          return {input, untyped: untyped.slice(0, 37), untypedLength: untyped.length,
                  outputs: results.length};
        }""",
        PNG_B64,
    )
    assert outcome["input"] == f"data:image/png;base64,{PNG_B64}"
    assert base64.b64decode(outcome["input"].partition(",")[2]) == base64.b64decode(PNG_B64)
    assert outcome["untyped"] == "data:application/octet-stream;base64,"
    assert outcome["untypedLength"] == 37 + 4 * (70000 // 3 + 1)
    assert outcome["outputs"] == 2


async def test_inference_client_without_stream_returns_the_last_update(page):
    outcome = await page.evaluate(
        """async () => {
          const client = window.ik.inference({baseUrl: "/api", headers: {"x-a": "1"}});
          const last = await client.run({app: "job", input: {inputs: []}});
          const failing = window.ik.inference({proxyUrl: "/stream"});
          const failed = await failing.run({steps: 1, fail: true});
          return {last: {type: last.type, status: last.status, output: last.output.length},
                  failed: {status: failed.status, error: failed.error}};
        }"""
    )
    assert outcome["last"] == {"type": "result", "status": "completed", "output": 2}
    assert outcome["failed"] == {"status": "failed", "error": "no face in the image"}
