"""The seeds' client snippets (tests/seeds/, verbatim but their imports) run against us.

The browser snippets are bundled with esbuild (React where they need it, the browser module
left as the router serves it) and run in Debian's Chromium; the Python tests below read the
same endpoints in each seed's idiom with ``fastapi_ikstream.client``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from httpx_sse import aconnect_sse
from PIL import Image
from playwright.async_api import Browser, ConsoleMessage, Page
from pydantic import BaseModel

from fastapi_ikstream import DeploymentError, RunFailedError, StreamingRun, create_router
from fastapi_ikstream.client import (
    ImageOutput,
    StreamHTTPError,
    StreamTimeoutError,
    process_json_stream,
    process_readable_stream,
    process_streaming_response,
    stream_states,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(60),
]

SEEDS = Path(__file__).parent / "seeds"
NODE_DIR = Path(__file__).parent / "node"
ENTRIES = ["image_generator.tsx", "generator.tsx", "scripts.ts"]


def encode_png(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 120, 40)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


PNG_B64 = encode_png((8, 6))


class Prompt(BaseModel):
    prompt: str
    steps: int = 3


class ProxyConfig(BaseModel):
    app: str
    input: Prompt


def make_app(bundle_dir: Path) -> FastAPI:
    app = FastAPI()
    app.state.cancelled = []
    app.state.finished = []
    app.state.authorization = []
    app.state.parameters = []

    async def work(prompt: str, steps: int, on_progress: Any) -> list[dict[str, Any]]:
        try:
            for step in range(steps):
                on_progress(
                    state="STARTED",
                    eta=[100, 250 * (steps - step)],
                    progress={"current": step + 1, "total": steps},
                    uuid=f"scale-{prompt}",
                )
                on_progress(log=f"step {step + 1} of {steps}")
                await asyncio.sleep(0.03)
        except asyncio.CancelledError:
            app.state.cancelled.append(prompt)
            raise
        if prompt == "fail":
            raise DeploymentError("the prompt was refused", code="refused")
        if prompt == "silent":
            await asyncio.sleep(30)
        app.state.finished.append(prompt)
        return [{"image": PNG_B64}, {"DATA_DICT": {"prompt": prompt}}]

    async def job(inputs: Any, parameters: Any, on_progress: Any) -> Any:
        app.state.parameters.append(dict(parameters))
        prompt = str(parameters.get("prompt") or parameters.get("taskId") or "job")
        return await work(prompt, int(parameters.get("steps", 3)), on_progress)

    async def prompted(inputs: Any, parameters: Any, on_progress: Any) -> Any:
        return await work(inputs.prompt, inputs.steps, on_progress)

    async def record_authorization(request: Request) -> None:
        app.state.authorization.append(request.headers.get("authorization"))

    from fastapi import Depends

    app.include_router(create_router(job, path="/api/job", keep_alive=0))
    app.include_router(create_router(job, path="/api/inference", named_events=False))
    for name in ("google/veo-3-1-fast", "infsh/flux-schnell"):
        app.include_router(
            create_router(
                prompted,
                path=f"/{name}",
                request_model=Prompt,
                dependencies=[Depends(record_authorization)],
                browser_module=False,
                reconnect_grace=4.0,  # a run without readers is cancelled 4 s after
            )
        )

    @app.get("/api/generate-image")
    async def generate_image(request: Request, prompt: str | None = None) -> Any:
        # Add your own logic here (e.g. authentication, rate limiting, billing, etc.)
        if not prompt:
            raise HTTPException(400, detail="Missing prompt")
        run = StreamingRun(lambda on_progress: work(prompt, 4, on_progress))
        return run.to_response(accept=request.headers.get("accept"))

    @app.post("/api/inference/proxy")
    async def inference_proxy(config: ProxyConfig, request: Request) -> Any:
        prompt = config.input
        run = StreamingRun(lambda on_progress: work(prompt.prompt, prompt.steps, on_progress))
        return run.to_response(accept=request.headers.get("accept"))

    @app.post("/silent/stream")
    async def silent(request: Request) -> Any:
        run = StreamingRun(lambda on_progress: work("silent", 1, on_progress), keep_alive=0)
        return run.to_response()

    @app.get("/page/{entry}")
    async def page(entry: str) -> HTMLResponse:
        return HTMLResponse(
            '<!doctype html><html><head><meta charset="utf-8"><title>seed</title></head>'
            f'<body><div id="root"></div><script type="module" src="/bundle/{entry}.js">'
            "</script></body></html>"
        )

    app.mount("/bundle", StaticFiles(directory=bundle_dir), name="bundle")
    return app


@pytest.fixture(scope="module")
def bundle_dir(node: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The harness entry points and the seed snippets, bundled by esbuild."""
    out = tmp_path_factory.mktemp("bundle")
    result = subprocess.run(
        [
            str(NODE_DIR / "node_modules" / ".bin" / "esbuild"),
            *[str(SEEDS / "harness" / entry) for entry in ENTRIES],
            "--bundle",
            "--splitting",
            "--format=esm",
            f"--outdir={out}",
            "--external:/api/*",
            "--jsx=automatic",
            '--define:process.env.NODE_ENV="production"',
            "--target=es2022",
            "--log-level=error",
        ],
        env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def server(bundle_dir: Path) -> Iterator[Any]:
    from conftest import serve

    with serve(make_app(bundle_dir)) as running:
        yield running


async def wait_until(check: Any, seconds: float = 10.0) -> None:
    """Poll ``check`` (sync or async) until it is true; fail after ``seconds``."""
    with anyio.fail_after(seconds):
        while True:
            outcome = check()
            if asyncio.iscoroutine(outcome):
                outcome = await outcome
            if outcome:
                return
            await asyncio.sleep(0.05)


class Console:
    """What a page logged: each ``console.log`` call's arguments, as JSON values."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self._pending: set[asyncio.Task[None]] = set()

    def on_message(self, message: ConsoleMessage) -> None:
        task = asyncio.get_running_loop().create_task(self._record(message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _record(self, message: ConsoleMessage) -> None:
        self.calls.append([await arg.json_value() for arg in message.args])

    async def settled(self) -> list[list[Any]]:
        while self._pending:
            await asyncio.gather(*self._pending)
        return self.calls

    async def texts(self) -> list[str]:
        return [" ".join(str(arg) for arg in call) for call in await self.settled()]


@pytest_asyncio.fixture(loop_scope="module")
async def open_page(browser: Browser, server: Any) -> AsyncIterator[Any]:
    contexts = []
    errors: list[str] = []

    async def opener(entry: str) -> tuple[Page, Console]:
        context = await browser.new_context()
        contexts.append(context)
        tab = await context.new_page()
        console = Console()
        tab.on("console", console.on_message)
        tab.on("pageerror", lambda error: errors.append(str(error)))
        await tab.goto(f"{server.url}/page/{entry}")
        await tab.wait_for_function("window.harnessReady === true", timeout=5000)
        return tab, console

    yield opener
    for context in contexts:
        await context.close()
    assert errors == []


# -- seed 001 ---------------------------------------------------------------------------------


async def test_seed001_react_image_generator_shows_the_eta_then_the_image(open_page, server):
    page, _ = await open_page("image_generator")
    await page.evaluate(
        """() => {
          window.buttonTexts = [];
          const button = document.querySelector('button');
          new MutationObserver(() => window.buttonTexts.push(button.textContent))
            .observe(button, {subtree: true, childList: true, characterData: true});
        }"""
    )
    await page.fill("input[name=prompt]", "A puppy playing in the snow")
    await page.click("button[type=submit]")
    image = page.locator("img[alt='Generated image']")
    await image.wait_for(timeout=10_000)
    size = await image.evaluate(
        "img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])"
    )
    assert size == [8, 6]
    src = await image.get_attribute("src")
    assert src == f"data:image/png;base64,{PNG_B64}"
    texts = await page.evaluate("window.buttonTexts")
    # 4 steps: the longest ETA is 1000 ms at the first step, then 750, 500, 250
    assert "Generating... (ETA: 1s)" in texts
    assert texts[-1] == "Generate"
    assert "A puppy playing in the snow" in server.config.app.state.finished


async def test_seed001_react_image_generator_shows_a_failed_run(open_page):
    page, _ = await open_page("image_generator")
    await page.fill("input[name=prompt]", "fail")
    await page.click("button[type=submit]")
    error = page.locator("p", has_text="Error:")
    await error.wait_for(timeout=10_000)
    assert await error.text_content() == "Error: the prompt was refused"
    assert await page.locator("img").count() == 0


async def test_seed001_trpc_consumer_reads_a_readable_stream_of_states(open_page):
    page, console = await open_page("scripts")
    await page.evaluate("window.harness.trpcConsumer()")
    texts = await console.texts()
    # 3 steps, each a progress (longest ETA 750, 500, 250 ms) and a log that keeps its ETA
    assert texts == [
        *["ETA: 1s"] * 4,  # Math.round(0.5) is 1
        *["ETA: 0s"] * 2,
        f"Image: data:image/png;base64,{PNG_B64}",
    ]


# -- seed 002 ---------------------------------------------------------------------------------


async def test_seed002_eventsource_onmessage_gets_every_update_of_unnamed_events(open_page, server):
    page, console = await open_page("scripts")
    await page.evaluate("window.harness.browserSSE('task-7')")

    async def completed() -> bool:
        calls = await console.settled()
        return any(isinstance(c[-1], dict) and c[-1].get("status") == "completed" for c in calls)

    await wait_until(completed)
    updates = [call[1] for call in await console.settled() if call[0] == "Update:"]
    kinds = [update["type"] for update in updates]
    assert kinds[0] == "run"
    assert kinds.count("progress") == 3
    assert kinds.count("log") == 3
    assert kinds[-1] == "result"  # the snippet closed the source at `completed`
    assert updates[-1]["code"] == 10
    assert all("code" in update for update in updates if "status" in update)
    assert {"taskId": "task-7"} in server.config.app.state.parameters


async def test_seed002_for_await_loops_run_as_written(open_page, server):
    page, console = await open_page("scripts")
    outcome = await page.evaluate(
        """async () => {
          const m = await window.harness.forAwait();
          const config = {app: 'infsh/flux-schnell', input: {prompt: 'A lake'}};
          return {
            timeout: await m.streamWithTimeout(config, 60000),
            parallel: await m.parallelStreams(),
            logs: await m.collectLogs({app: 'infsh/flux-schnell', input: {prompt: 'Logs'}}),
          };
        }"""
    )
    texts = await console.texts()
    basic = texts[: texts.index("Status: completed") + 1]
    assert basic[0] == "Status: received"
    assert "Status: running" in basic
    assert outcome["timeout"]["status"] == "completed"
    assert outcome["timeout"]["code"] == 10
    assert outcome["timeout"]["upstream_id"] == "scale-A lake"
    assert [out[1]["DATA_DICT"]["prompt"] for out in outcome["parallel"]] == [
        "A mountain",
        "An ocean",
        "A forest",
    ]
    assert {f"[{i}] completed" for i in range(3)} <= set(texts)
    final = texts.index("Final logs:")
    assert texts[final + 1 : final + 4] == ["  step 1 of 3", "  step 2 of 3", "  step 3 of 3"]
    assert outcome["logs"][1] == {"DATA_DICT": {"prompt": "Logs"}}
    assert set(server.config.app.state.authorization) == {"Bearer inf_..."}


async def test_seed002_cancelling_a_stream_after_ten_seconds(open_page, server):
    page, console = await open_page("scripts")
    await page.evaluate(
        """async () => {
          const m = await window.harness.forAwait();
          await m.cancellableStream(
            {app: 'infsh/flux-schnell', input: {prompt: 'long', steps: 2000}});
        }"""
    )
    texts = await console.texts()
    assert texts[-1] == "Stream cancelled"
    assert "running" in texts
    app = server.config.app
    await wait_until(lambda: "long" in app.state.cancelled)  # after the router's grace, 4 s
    assert "long" not in app.state.finished


async def test_seed002_react_hook_shows_status_logs_and_output(open_page, server):
    page, _ = await open_page("generator")
    await page.click("#run")
    await page.locator("#status", has_text="Status: completed").wait_for(timeout=10_000)
    assert await page.locator("#logs li").all_text_contents() == [
        "step 1 of 3",
        "step 2 of 3",
        "step 3 of 3",
    ]
    assert '"prompt":"A fox"' in (await page.locator("#output").text_content() or "")
    await page.click("#fail")
    await page.locator("#status", has_text="Status: failed").wait_for(timeout=10_000)
    await page.click("#slow")
    await page.locator("#logs li", has_text="step 2 of 500").wait_for(timeout=10_000)
    await page.click("#cancel")
    app = server.config.app
    await wait_until(lambda: "slow" in app.state.cancelled)
    assert await page.locator("#status").text_content() == "Status: running"  # no error shown


# -- seed 003 ---------------------------------------------------------------------------------


async def test_seed003_listeners_and_done(open_page):
    page, _ = await open_page("scripts")
    outcome = await page.evaluate(
        """async () => {
          const ok = await window.harness.withListeners({parameters: {prompt: 'cat'}});
          const bad = await window.harness.withListeners({parameters: {prompt: 'fail'}});
          return {
            types: ok.messages.map(m => m.type),
            outputs: ok.result.outputs,
            sameDone: ok.doneWith === ok.result,
            errorWith: ok.errorWith ?? null,
            failed: {name: bad.error.name, same: bad.error === bad.errorWith,
                     code: bad.error.state.error.code, types: bad.messages.map(m => m.type)},
          };
        }"""
    )
    assert outcome["types"][0] == "run"
    assert outcome["types"][-2:] == ["result", "done"]
    assert outcome["outputs"][1] == {"DATA_DICT": {"prompt": "cat"}}
    assert outcome["sameDone"] is True
    assert outcome["errorWith"] is None
    assert outcome["failed"]["name"] == "RunFailedError"
    assert outcome["failed"]["same"] is True
    assert outcome["failed"]["code"] == "refused"
    assert outcome["failed"]["types"][-2:] == ["failed", "done"]


async def test_seed003_async_iterator_then_done(open_page):
    page, _ = await open_page("scripts")
    outcome = await page.evaluate(
        """async () => {
          const {partials, result} = await window.harness.withAsyncIterator(
            {parameters: {prompt: 'dog', steps: 2}});
          return {types: partials.map(p => p.type), seqs: partials.map(p => p.seq),
                  codes: partials.map(p => p.code ?? null), runId: result.runId};
        }"""
    )
    assert outcome["types"] == [
        "run",
        "progress",
        "log",
        "progress",
        "log",
        "result",
        "done",
    ]
    assert outcome["seqs"] == list(range(1, 8))
    assert outcome["codes"] == [1, 7, None, 7, None, 10, 10]
    assert outcome["runId"].startswith("r_")


# -- the Python equivalents -------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def http(server: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(10, read=30)) as c:
        yield c


async def test_python_seed001_streaming_response_and_eta(http):
    etas: list[int | None] = []
    results = await process_streaming_response(
        http.stream("GET", "/api/generate-image", params={"prompt": "A puppy"}),
        on_progress=lambda progress: etas.append(progress.eta[1] if progress.eta else None),
    )
    image = results.get_output(0)
    assert isinstance(image, ImageOutput)
    assert image.data_url == f"data:image/png;base64,{PNG_B64}"
    assert 1000 in etas
    with pytest.raises(StreamHTTPError) as caught:
        await process_streaming_response(http.stream("GET", "/api/generate-image"))
    assert caught.value.status_code == 400


async def test_python_seed001_readable_stream_and_json_stream(http):
    async with http.stream("POST", "/api/job/stream", json={"parameters": {"prompt": "a"}}) as r:
        results = await process_readable_stream(r.aiter_bytes())
    assert results.get_output(1) == {"DATA_DICT": {"prompt": "a"}}
    headers = {"Accept": "application/jsonl"}
    async with http.stream(
        "POST", "/api/job/stream", json={"parameters": {"prompt": "b"}}, headers=headers
    ) as r:
        states = [line async for line in r.aiter_lines()]

    async def items() -> AsyncIterator[str]:
        for line in states:
            yield line

    maxima: list[int] = []
    results = await process_json_stream(
        items(), on_progress=lambda p: maxima.append(p.eta[1]) if p.eta and p.eta[1] else None
    )
    assert maxima[:3] == [750, 500, 250]
    assert results.get_output(1) == {"DATA_DICT": {"prompt": "b"}}


async def test_python_seed002_onmessage_equivalent_sees_only_unnamed_events(http):
    updates = []
    async with aconnect_sse(http, "GET", "/api/inference/stream", params={"taskId": "t"}) as src:
        async for sse in src.aiter_sse():
            assert sse.event == "message"
            update = sse.json()
            updates.append(update)
            if update.get("status") in ("completed", "failed"):
                break
    assert updates[0]["code"] == 1
    assert updates[-1]["type"] == "result"


async def test_python_seed002_for_await_and_status_codes(http):
    seen = []
    url = "/google/veo-3-1-fast/stream"
    async for update in stream_states(http, "POST", url, json={"prompt": "A sunset timelapse"}):
        seen.append((update.status, update.code, update.upstream_id))
    assert seen[0] == ("received", 1, None)
    assert ("running", 7, "scale-A sunset timelapse") in seen
    assert seen[-1] == ("completed", 10, "scale-A sunset timelapse")


async def test_python_seed003_listeners_done_and_timeout_status(http):
    stream = stream_states(http, "POST", "/api/job/stream", json={"parameters": {"prompt": "c"}})
    kinds: list[str] = []
    ended: list[Any] = []
    stream.on("message", lambda state: kinds.append(state.type)).on("done", ended.append)
    results = await stream.done()
    assert kinds[0] == "run"
    assert kinds[-2:] == ["result", "done"]
    assert ended == [results]
    failing = stream_states(
        http, "POST", "/api/job/stream", json={"parameters": {"prompt": "fail"}}
    )
    errors: list[BaseException] = []
    failing.on("error", errors.append)
    with pytest.raises(RunFailedError):
        await failing.done()
    assert isinstance(errors[0], RunFailedError)
    silent = stream_states(http, "POST", "/silent/stream", timeout=0.5)
    with pytest.raises(StreamTimeoutError) as caught:
        await silent.done()
    assert caught.value.status == 408
