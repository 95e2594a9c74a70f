"""A newcomer's first hour, as the README tells it: each shell step runs as written.

The README's "first hour" section has a block that starts the demo (``scripts/demo.sh``)
and blocks that a second terminal runs against it (a token from ``POST /api/login``, a
run streamed with curl, ``watch`` saving an image). The test runs ``scripts/demo.sh`` with
the block's options on a free port, then the other blocks in order, in one ``bash`` with
``set -euo pipefail``, in a temporary folder. Two substitutions make them run here: the
demo's address ``127.0.0.1:8000`` becomes the free port's, and ``.venv/bin/python`` the
repository's ``.venv`` (the one ``scripts/demo.sh`` installs), since the folder differs.

Then ``/docs`` and ``/redoc`` load in Chromium with every request off 127.0.0.1 refused,
and the demo page's ``EventSource`` endpoints authenticate with the login's cookie.
Every other shell block of the docs is either run here too or listed with the reason why
not (`NOT_RUN`).
"""

import contextlib
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import pytest
from conftest import free_port
from playwright.async_api import Browser, Page, Route

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECTION = "Your first hour with the demo"
DEMO_ADDRESS = "127.0.0.1:8000"

pytestmark = pytest.mark.timeout(300)


def readme_shell_blocks(section: str) -> list[str]:
    """The ``bash`` blocks of one README section, in order."""
    text = README.read_text("utf-8")
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## )", text, flags=re.M | re.S)
    assert match, f"README.md has no section {section!r}"
    return re.findall(r"^```bash\n(.*?)^```", match.group(1), flags=re.M | re.S)


@dataclass
class Demo:
    url: str
    output: list[str]


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    """``scripts/demo.sh`` with the README's options, on a free port."""
    command = readme_shell_blocks(SECTION)[0].strip()
    assert command.startswith("./scripts/demo.sh")
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("ENDPOINT_URL", "IKOMIA_TOKEN"):
        env.pop(name, None)
    process = subprocess.Popen(
        ["bash", *shlex.split(command), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    url = f"http://127.0.0.1:{port}"
    output: list[str] = []
    try:
        deadline = time.monotonic() + 280
        for line in process.stdout:  # ends if the script exits
            output.append(line)
            if f"open {url}" in line:
                break
            assert time.monotonic() < deadline, "".join(output)
        assert process.poll() is None, "".join(output)
        for _ in range(100):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/api/config", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield Demo(url, output)
    finally:
        process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=15)
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_demo_script_shows_its_steps_and_takes_the_readme_options(demo: Demo) -> None:
    steps = [line for line in demo.output if line.startswith("== ")]
    assert steps[-1].startswith("== starting the example app")
    assert len(steps) >= 2
    config = httpx.get(demo.url + "/api/config", timeout=5).json()
    assert config["stage_delay_ms"] == 300
    assert config["rate_limit"] == "30/minute"
    assert config["max_concurrent_runs"] == 2


def test_readme_token_curl_stream_and_watch_work_as_written(demo: Demo, tmp_path: Path) -> None:
    port = demo.url.rsplit(":", 1)[1]
    blocks = readme_shell_blocks(SECTION)[1:]
    assert len(blocks) == 2
    script = "\n".join(blocks)
    script = script.replace(DEMO_ADDRESS, f"127.0.0.1:{port}")
    script = script.replace(".venv/bin/python", shlex.quote(str(ROOT / ".venv" / "bin" / "python")))
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    events = re.findall(r"^event: (\w+)$", result.stdout, flags=re.M)
    assert events[0] == "run"
    assert "progress" in events
    assert events[-2:] == ["result", "done"]
    image = cv2.imread(str(tmp_path / "result.png"), cv2.IMREAD_UNCHANGED)
    assert image is not None
    assert image.shape[:2] == (160, 160)  # the thumbnail's size: boxes drawn on the input
    assert (tmp_path / "body.json").stat().st_size > 1000


# --- in Chromium ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def offline_page(browser: Browser) -> AsyncIterator[tuple[Page, list[str]]]:
    """A page that can reach 127.0.0.1 only; yields it and the URLs it was refused."""
    context = await browser.new_context()
    refused: list[str] = []

    async def only_loopback(route: Route) -> None:
        if route.request.url.startswith(("http://127.0.0.1:", "data:", "blob:")):
            await route.continue_()
        else:
            refused.append(route.request.url)
            await route.abort("internetdisconnected")

    await context.route("**/*", only_loopback)
    try:
        yield await context.new_page(), refused
    finally:
        await context.close()


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="module")
async def test_docs_and_redoc_work_without_internet(demo: Demo, browser: Browser) -> None:
    async with offline_page(browser) as (page, refused):
        await page.goto(demo.url + "/docs")
        await page.wait_for_selector(".swagger-ui .opblock", timeout=15_000)
        assert await page.locator(".opblock").count() >= 5
        assert "/api/detect/stream" in await page.content()
        assert refused == []
        await page.goto(demo.url + "/redoc")
        await page.wait_for_selector("h1", timeout=15_000)
        assert "fastapi-ikstream example" in await page.inner_text("h1")
        await page.wait_for_selector('text="/api/detect/stream"', timeout=15_000)
    # ReDoc's bundle links its "API docs by Redocly" logo from its CDN; the page works without.
    assert set(refused) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}


EVENT_SOURCE_RUN = """async loggedIn => {
  // A small image, made on a canvas, so that it fits in a query string.
  const canvas = Object.assign(document.createElement("canvas"), {width: 64, height: 48});
  const context = canvas.getContext("2d");
  context.fillStyle = "#4a7"; context.fillRect(0, 0, 64, 48);
  context.fillStyle = "#222"; context.fillRect(16, 12, 24, 20);
  const image = canvas.toDataURL("image/png").split(",")[1];

  function follow(url) {
    return new Promise((resolve, reject) => {
      const kinds = [], source = new EventSource(url);
      for (const kind of ["run", "progress", "log", "result", "failed", "done"]) {
        source.addEventListener(kind, event => {
          kinds.push(kind);
          if (kind === "done") { source.close(); resolve(kinds); }
        });
      }
      source.onerror = () => { source.close(); reject(new Error(`refused: ${url}`)); };
    });
  }
  const before = loggedIn ? null
    : await follow(`/api/detect/stream?inputs=${encodeURIComponent(image)}`)
      .then(() => "streamed", error => error.message);
  if (loggedIn === false) return {before};
  const login = await fetch("/api/login", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({name: "page"}),
  });
  const {access_token} = await login.json();
  const streamed = await follow(`/api/detect/stream?inputs=${encodeURIComponent(image)}`);
  const started = await fetch("/api/detect/runs", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({inputs: [image]}),
  });
  const {run_id} = await started.json();
  const resumed = await follow(`/api/detect/runs/${run_id}/events`);
  return {streamed, started: started.status, resumed,
          cookieVisible: document.cookie.includes(access_token)};
}"""


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="module")
async def test_event_source_endpoints_authenticate_with_the_login_cookie(
    demo: Demo, browser: Browser
) -> None:
    async with offline_page(browser) as (page, refused):
        await page.goto(demo.url + "/api/config")  # same origin, no script of its own
        before = await page.evaluate(EVENT_SOURCE_RUN, False)
        await page.goto(demo.url + "/")  # the demo page, which signs in when it loads
        await page.wait_for_selector("body[data-state=ready]", timeout=10_000)
        result = await page.evaluate(EVENT_SOURCE_RUN, True)
    assert refused == []
    assert before["before"].startswith("refused: /api/detect/stream?")  # no cookie: a 401
    assert result["streamed"][0] == "run"
    assert result["streamed"][-2:] == ["result", "done"]
    assert result["started"] == 201
    assert result["resumed"][0] == "run"
    assert result["resumed"][-2:] == ["result", "done"]
    assert result["cookieVisible"] is False  # HttpOnly: the page's script cannot read it


# --- the other shell blocks of the docs --------------------------------------------------------


def docs_shell_blocks() -> dict[str, str]:
    """Every ``bash``/``sh`` block of README.md and docs/, by ``file#n`` (n from 1)."""
    blocks = {}
    for path in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        text = path.read_text("utf-8")
        found = re.findall(r"^```(?:bash|sh)\n(.*?)^```", text, flags=re.M | re.S)
        for number, block in enumerate(found, 1):
            blocks[f"{path.relative_to(ROOT)}#{number}"] = block
    return blocks


EXERCISED = {
    "README.md#1": "./scripts/demo.sh and ./scripts/test.sh: the demo fixture; CI runs test.sh",
    "README.md#2": "./scripts/demo.sh with options: the demo fixture",
    "README.md#3": "token, sample, curl: test_readme_token_curl_stream_and_watch_work_as_written",
    "README.md#4": "watch: the same test",
    "docs/getting-started.md#2": "./scripts/demo.sh: the demo fixture (the same script)",
    "docs/recipes/ikomia.md#1": "scale_server: test_scale_server_block_prints_its_urls",
    "docs/recipes/python-client.md#1": "watch: test_python_client_watch_block",
    "docs/performance.md#1": "bench.run: --smoke by tests/test_bench_smoke.py",
}
NOT_RUN = {
    "docs/getting-started.md#1": "pip install into the reader's own environment; "
    "scripts/test.sh installs the same extras from this checkout",
    "docs/concepts/resumability.md#1": "uvicorn app:app --workers 4 needs the reader's app; "
    "several workers are tested by tests/test_redis_workers.py",
    "docs/performance.md#2": "benchmark runs of minutes that rewrite bench/results/",
    "docs/recipes/chain.md#1": "pip install of the remote extra into the reader's own "
    "environment; scripts/test.sh installs the same extras from this checkout",
    "docs/recipes/monitor.md#1": "pip install of the metrics and otel extras into the "
    "reader's own environment; scripts/test.sh installs the same extras from this checkout",
}


def test_every_shell_block_is_exercised_or_says_why_not() -> None:
    assert set(docs_shell_blocks()) == set(EXERCISED) | set(NOT_RUN)


def test_python_client_watch_block(demo: Demo, tmp_path: Path) -> None:
    port = demo.url.rsplit(":", 1)[1]
    token_and_body = readme_shell_blocks(SECTION)[1]
    watch = next(
        block
        for key, block in docs_shell_blocks().items()
        if key == "docs/recipes/python-client.md#1"
    )
    script = (token_and_body + watch).replace(DEMO_ADDRESS, f"127.0.0.1:{port}")
    python = shlex.quote(str(ROOT / ".venv" / "bin" / "python"))
    script = re.sub(r"^python ", python + " ", script, flags=re.M)
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert cv2.imread(str(tmp_path / "result.png")) is not None


def test_scale_server_block_prints_its_urls() -> None:
    block = next(
        block for key, block in docs_shell_blocks().items() if key == "docs/recipes/ikomia.md#1"
    )
    port = free_port()
    command = shlex.split(block.split("#")[0].replace("--port 8001", f"--port {port}"))
    assert command[:3] == ["python", "-m", "example_app.scale_server"]
    python = str(ROOT / ".venv" / "bin" / "python")
    process = subprocess.Popen(
        [python, *command[1:]], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        assert line.split() == [f"IKOMIA_URL={base}", f"ENDPOINT_URL={base}/deployment"]
    finally:
        process.terminate()
        process.communicate(timeout=15)
