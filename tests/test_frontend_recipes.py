"""The front-end recipes of docs/recipes/frontend.md, run in Chromium as written.

The blocks are taken from the Markdown file: the plain-JavaScript page and the
``EventSource`` script go into pages as they are; the React (``tsx``), Vue (``vue``) and
Svelte (``svelte``) components are bundled by esbuild (``tests/frontend/build.mjs``, npm
packages pinned in ``tests/frontend/package-lock.json``) with a three-line entry that mounts
them. The server is a router like the one of "getting started" (``POST
/api/generate-image/stream`` with ``{"prompt": …}``) whose deployment reports a first
progress with an ETA, then waits for the test to open a gate: so the test sees the ETA on
the page before the run goes on, without relying on timing.
"""

import asyncio
import base64
import contextlib
import json
import re
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import ThreadServer, serve
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from playwright.async_api import Browser, Page
from pydantic import BaseModel

from fastapi_ikstream import create_router

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(120),
]

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "docs" / "recipes" / "frontend.md"
FRONTEND = ROOT / "tests" / "frontend"


def fences(language: str) -> list[str]:
    text = RECIPES.read_text("utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def one_fence(language: str) -> str:
    found = fences(language)
    assert len(found) == 1, f"{RECIPES.name}: {len(found)} {language} blocks"
    return found[0]


# --- npm and esbuild -----------------------------------------------------------------------


def _installed() -> bool:
    """Every package in the lock file is in node_modules at the locked version."""
    lock = FRONTEND / "package-lock.json"
    if not (FRONTEND / "node_modules").is_dir():
        return False
    for key, meta in json.loads(lock.read_text())["packages"].items():
        manifest = FRONTEND / key / "package.json"
        if key and not meta.get("optional") and not manifest.is_file():
            return False
        if (
            key
            and manifest.is_file()
            and json.loads(manifest.read_text())["version"] != meta["version"]
        ):
            return False
    return True


@pytest.fixture(scope="module")
def bundles() -> Path:
    """The recipes bundled into ``tests/frontend/build/out``."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node is not None, "node is needed (Node.js 20 or later)"
    assert npm is not None, "npm is needed"
    if not _installed():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=FRONTEND, check=True, timeout=100
        )
    recipes = FRONTEND / "build" / "recipes"
    recipes.mkdir(parents=True, exist_ok=True)
    (recipes / "ImageGenerator.tsx").write_text(one_fence("tsx"))
    (recipes / "ImageGenerator.vue").write_text(one_fence("vue"))
    (recipes / "ImageGenerator.svelte").write_text(one_fence("svelte"))
    result = subprocess.run(
        [node, "build.mjs"], cwd=FRONTEND, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"errors": 0, "warnings": 0}
    return FRONTEND / "build" / "out"


# --- the server ----------------------------------------------------------------------------


def tiny_png() -> str:
    image = np.full((6, 8, 3), (40, 160, 90), np.uint8)
    return base64.b64encode(cv2.imencode(".png", image)[1].tobytes()).decode()


class PromptIn(BaseModel):
    prompt: str


class Gated:
    """A deployment that stops after its first progress until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.ended: list[str] = []
        self.over = threading.Event()

    async def __call__(self, inputs: PromptIn, parameters: Any, on_progress: Any) -> Any:
        on_progress(state="STARTED", progress={"current": 1, "total": 2}, eta=[500, 2000])
        try:
            # the gate is opened from the test's thread: a threading.Event, polled
            while not self.gate.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.ended.append("cancelled")
            self.over.set()
            raise
        on_progress(state="STARTED", progress={"current": 2, "total": 2}, eta=[0, 200])
        self.ended.append("completed")
        self.over.set()
        return [{"image": tiny_png()}, {"DATA_DICT": {"prompt": inputs.prompt}}]


def page(body: str) -> HTMLResponse:
    head = '<meta charset="utf-8"><link rel="icon" href="data:,">'  # no favicon request
    return HTMLResponse(f"<!doctype html><html><head>{head}</head><body>{body}")


def recipes_app(deployment: Gated, bundles: Path) -> FastAPI:
    app = FastAPI()
    # A short reconnect grace: a closed connection cancels its run 0.5 s later (30 s by default).
    router = create_router(
        deployment,
        path="/generate-image",
        request_model=PromptIn,
        reconnect_grace=0.5,
        retry=200,
    )
    app.include_router(router, prefix="/api")
    app.mount("/bundles", StaticFiles(directory=bundles), name="bundles")
    html, event_source = one_fence("html"), one_fence("js")

    @app.get("/plain")
    async def plain() -> HTMLResponse:
        return page(html)

    @app.get("/eventsource")
    async def eventsource() -> HTMLResponse:
        return page(f'<pre id="log"></pre><script type="module">{event_source}</script>')

    @app.get("/framework/{name}")
    async def framework(name: str) -> HTMLResponse:
        return page(
            f'<div id="root"></div><script type="module" src="/bundles/{name}.js"></script>'
        )

    return app


@pytest.fixture(scope="module")
def deployment() -> Gated:
    return Gated()


@pytest.fixture(scope="module")
def server(deployment: Gated, bundles: Path) -> Iterator[ThreadServer]:
    with serve(recipes_app(deployment, bundles)) as running:
        yield running


@pytest.fixture
def gated(deployment: Gated) -> Gated:
    deployment.gate.clear()
    deployment.ended.clear()
    deployment.over.clear()
    return deployment


@contextlib.asynccontextmanager
async def open_page(browser: Browser, url: str) -> AsyncIterator[Page]:
    context = await browser.new_context()
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        await tab.goto(url)
        yield tab
    finally:
        await context.close()
    assert errors == []


# --- the recipes ---------------------------------------------------------------------------


async def test_plain_javascript_shows_progress_eta_and_the_image(
    browser: Browser, server: ThreadServer, gated: Gated
) -> None:
    async with open_page(browser, server.url + "/plain") as tab:
        await tab.wait_for_function("document.getElementById('eta').textContent === '2 s'")
        assert await tab.eval_on_selector("#bar", "bar => [bar.value, bar.max]") == [1, 2]
        gated.gate.set()
        await tab.wait_for_selector("img#result[src^='data:image/png;base64,']")
        assert await tab.inner_text("#eta") == "done"
        assert await tab.eval_on_selector("#bar", "bar => [bar.value, bar.max]") == [2, 2]
        size = await tab.eval_on_selector("#result", "img => [img.naturalWidth, img.height]")
        assert size[0] == 8
    assert gated.ended == ["completed"]


async def test_plain_javascript_cancel_button_cancels_the_run_on_the_server(
    browser: Browser, server: ThreadServer, gated: Gated
) -> None:
    async with open_page(browser, server.url + "/plain") as tab:
        await tab.wait_for_function("document.getElementById('eta').textContent === '2 s'")
        await tab.click("#cancel")
        await tab.wait_for_function(
            "document.getElementById('eta').textContent.startsWith('Error:')"
        )
        assert await asyncio.to_thread(gated.over.wait, 10)
    assert gated.ended == ["cancelled"]


@pytest.mark.parametrize("framework", ["react", "vue", "svelte"])
async def test_component_shows_the_eta_while_running_then_the_image(
    framework: str, browser: Browser, server: ThreadServer, gated: Gated
) -> None:
    async with open_page(browser, f"{server.url}/framework/{framework}") as tab:
        await tab.fill("input", "a kitten")
        await tab.click("button")
        eta = await tab.wait_for_selector(".eta")
        assert eta is not None
        assert await eta.inner_text() == "ETA: 2 s"
        assert await tab.is_disabled("button")
        gated.gate.set()
        await tab.wait_for_selector("img[src^='data:image/png;base64,']")
        assert await tab.get_attribute("img", "alt") == "a kitten"
        assert await tab.locator(".eta").count() == 0  # the run is over: no stale ETA
        assert await tab.locator("[role=alert]").count() == 0
        assert await tab.is_enabled("button")
    assert gated.ended == ["completed"]


async def test_event_source_follows_the_run_to_done_and_closes(
    browser: Browser, server: ThreadServer, gated: Gated
) -> None:
    async with open_page(browser, server.url + "/eventsource") as tab:
        await tab.wait_for_function(
            "document.getElementById('log').textContent.includes('running 1')"
        )
        gated.gate.set()
        await tab.wait_for_function(
            "document.getElementById('log').textContent.endsWith('done\\n')"
        )
        lines = (await tab.inner_text("#log")).split("\n")
    kinds = [line.split(" ")[0] for line in lines if line]
    assert kinds[0] == "run"
    assert "progress" in kinds
    assert kinds[-2:] == ["result", "done"]
    assert gated.ended == ["completed"]
