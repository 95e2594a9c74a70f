"""The example page in a real headless Chromium (Debian's), driven by Playwright's Python API.

The example app runs in uvicorn on 127.0.0.1 with its embedded workflow paced by
``stage_delay_ms``, so that the test can watch the progress bar move and cancel midway. The
screenshots saved in docs/img/ are the ones the README shows.
"""

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, FilePayload, Page

from example_app.main import API_PATH, create_app
from example_app.workflow import SAMPLES

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(90),
]

SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "img"
STAGE_DELAY_MS = 250

READ_VIEW = """() => ({
  state: document.body.dataset.state,
  status: document.getElementById("status").dataset.status,
  value: document.getElementById("progress").value,
  max: document.getElementById("progress").max,
  eta: document.getElementById("eta").textContent,
})"""


@contextlib.asynccontextmanager
async def open_page(
    browser: Browser, url: str, *, console_errors: bool = False, **options: Any
) -> AsyncIterator[Page]:
    """Open the page in a fresh context, wait until it has signed in and loaded the samples."""
    context = await browser.new_context(**options)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    if not console_errors:
        page.on(
            "console",
            lambda message: errors.append(message.text) if message.type == "error" else None,
        )
    try:
        await page.goto(url + "/")
        await page.wait_for_selector("body[data-state=ready]", timeout=10_000)
        yield page
    finally:
        await context.close()
    assert errors == []


async def wait_until_settled(page: Page, timeout: float = 20) -> list[dict[str, Any]]:
    """Poll the run view every 20 ms until the run ends; returns what was seen while running."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        view = await page.evaluate(READ_VIEW)
        while view["state"] == "running":
            seen.append(view)
            await asyncio.sleep(0.02)
            view = await page.evaluate(READ_VIEW)
    seen.append(view)
    return seen


async def image_size(page: Page, selector: str) -> list[int]:
    size: list[int] = await page.eval_on_selector(
        selector, "img => [img.complete ? 1 : 0, img.naturalWidth, img.naturalHeight]"
    )
    return size


async def until(predicate: Any, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        for _ in range(10_000):
            if predicate():
                return
            await asyncio.sleep(0.02)


async def test_a_run_on_a_shipped_photo_streams_progress_then_shows_the_result(browser, serve_app):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    app = create_app(stage_delay_ms=STAGE_DELAY_MS)
    with serve_app(app) as server:
        async with open_page(browser, server.url, viewport={"width": 1280, "height": 900}) as page:
            await page.click("button[data-sample=astronaut]")
            await page.wait_for_function(
                "ikDemo.image?.label === 'Astronaut (a face)'"
                " && !document.getElementById('run').disabled"
            )
            await page.click("#run")

            seen: list[dict[str, Any]] = []
            shot = False
            async with asyncio.timeout(20):
                view = await page.evaluate(READ_VIEW)
                while view["state"] == "running":
                    seen.append(view)
                    if not shot and view["value"] >= 2 and view["eta"]:
                        await page.screenshot(path=SCREENSHOTS / "page-running.png")
                        shot = True
                    await asyncio.sleep(0.02)
                    view = await page.evaluate(READ_VIEW)
            final = view

            assert final["state"] == "completed"
            assert final["status"] == "completed"
            assert final["value"] == final["max"] == 5
            running = [v for v in seen if v["status"] in ("received", "queued", "running")]
            values = [v["value"] for v in running]
            assert values == sorted(values)
            assert len(set(values)) >= 3, values
            assert all(v < 5 for v in values[:-1])
            etas = {v["eta"] for v in running if v["eta"]}
            assert etas
            assert all(re.fullmatch(r"ETA \d+(\.\d)? s", eta) for eta in etas), etas
            assert shot

            updates = await page.evaluate("ikDemo.progressUpdates.map(u => u.current)")
            assert updates[-1] == 5
            assert len(set(updates)) == 6

            for selector in ("#out-boxes", "#out-edges"):
                assert await image_size(page, selector) == [1, 512, 512]
            rows = page.locator("#detections tbody tr[data-label=face]")
            assert await rows.count() >= 1
            cells = await rows.first.locator("td").all_inner_texts()
            assert cells[1] == "face"
            assert 0 < float(cells[2]) <= 1
            assert re.fullmatch(r"\d+, \d+, \d+ \u00d7 \d+", cells[3])
            logs = await page.locator("#log li").all_inner_texts()
            assert len(logs) == 6
            assert any("detect: faces: 1" in line for line in logs)
            assert "1 face(s)" in await page.inner_text("#summary")

            await page.screenshot(path=SCREENSHOTS / "page-result.png", full_page=True)
    assert app.state.deployment.counts == {"started": 1, "completed": 1}
    for name in ("page-running.png", "page-result.png"):
        assert (SCREENSHOTS / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_cancel_midway_stops_the_run_on_the_server(browser, serve_app):
    app = create_app(stage_delay_ms=400)
    with serve_app(app) as server:
        async with open_page(browser, server.url) as page:
            await page.click("#run")
            await page.wait_for_function(
                "document.getElementById('progress').value >= 1 && ikDemo.lastRunId",
                timeout=10_000,
            )
            assert await page.is_enabled("#cancel")
            await page.click("#cancel")
            await page.wait_for_selector("body[data-state=cancelled]", timeout=5_000)

            assert await page.inner_text("#status") == "Cancelled"
            assert "cancelled" in (await page.inner_text("#progress-text")).lower()
            assert await page.evaluate("document.getElementById('progress').value") < 5
            assert await page.locator("#out-boxes").is_hidden()
            assert await page.is_enabled("#run")
            assert await page.is_disabled("#cancel")

            # The server saw it: the deployment's run was cancelled, and the run says so.
            deployment = app.state.deployment
            await until(lambda: deployment.counts["cancelled"] == 1)
            assert deployment.counts == {"started": 1, "cancelled": 1}
            token, run_id = await page.evaluate("[ikDemo.token, ikDemo.lastRunId]")
            async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
                state = await client.get(
                    f"{API_PATH}/runs/{run_id}", headers={"Authorization": f"Bearer {token}"}
                )
            assert state.status_code == 200
            assert state.json()["status"] == "cancelled"
            assert state.json()["finished"] is True


async def test_on_a_phone_an_uploaded_photo_runs_and_the_page_fits(browser, serve_app):
    app = create_app(stage_delay_ms=50)
    phone: dict[str, Any] = {
        "viewport": {"width": 390, "height": 844},
        "device_scale_factor": 2,
        "is_mobile": True,
        "has_touch": True,
    }
    with serve_app(app) as server:
        async with open_page(browser, server.url, **phone) as page:
            await page.set_input_files(
                "#file",
                files=[
                    FilePayload(
                        name="my-cat.png",
                        mimeType="image/png",
                        buffer=SAMPLES["chelsea"].read_bytes(),
                    )
                ],
            )
            await page.wait_for_function("ikDemo.image?.label === 'my-cat.png'")
            assert await page.inner_text("#preview-caption") == "my-cat.png"
            await page.tap("#run")
            final = (await wait_until_settled(page))[-1]
            assert final["state"] == "completed"

            labels = await page.locator("#detections tbody tr").evaluate_all(
                "rows => rows.map(row => row.dataset.label)"
            )
            assert "cat" in labels
            assert (await image_size(page, "#out-boxes"))[1] == 451
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390
            await page.screenshot(path=SCREENSHOTS / "page-phone.png", full_page=True, scale="css")
    assert app.state.deployment.counts == {"started": 1, "completed": 1}


async def test_the_page_explains_401_failed_runs_and_429(browser, serve_app):
    app = create_app(rate_limit="2/minute")
    with serve_app(app) as server:
        async with open_page(browser, server.url, console_errors=True) as page:
            await page.click("button[data-sample=rocket]")
            await page.wait_for_function("ikDemo.image?.label === 'Rocket'")

            # 401: a token the server did not issue.
            await page.evaluate("ikDemo.setToken('not.a.token')")
            await page.click("#run")
            await page.wait_for_selector("body[data-state=refused]")
            message = await page.inner_text("#message-text")
            assert "Log in again" in message
            assert "The token is invalid." in message
            assert await page.is_visible("#relogin")
            await page.click("#relogin")
            await page.wait_for_selector("#message", state="hidden")
            assert (await page.inner_text("#signin")).startswith("Signed in")

            # A failed run: the workflow refuses a parameter, the page shows its message.
            await page.click(".options summary")
            await page.fill("#canny-low", "5000")
            await page.click("#run")
            await page.wait_for_selector("body[data-state=failed]")
            assert await page.inner_text("#message-text") == (
                "The run failed: Parameter 'canny_low' must be between 0 and 1000. "
                "(invalid_parameters)"
            )

            # 429: the second run completes, the third is over the limit of 2 a minute.
            await page.fill("#canny-low", "100")
            await page.click("#run")
            await page.wait_for_selector("body[data-state=completed]")
            await page.click("#run")
            await page.wait_for_selector("body[data-state=refused]")
            message = await page.inner_text("#message-text")
            assert re.fullmatch(
                r"Rate limited \(2 per 1 minute per user\): retry after \d+ s\.", message
            ), message
            assert await page.get_attribute("#message", "data-kind") == "warning"
    assert app.state.deployment.counts == {"started": 2, "failed": 1, "completed": 1}
