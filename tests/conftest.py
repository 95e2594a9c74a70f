"""Shared fixtures: a real uvicorn server on 127.0.0.1, run in a thread (httpx's pattern)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
from playwright.async_api import Browser, async_playwright


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThreadServer(uvicorn.Server):
    """A uvicorn server that runs in a background thread and stops when asked."""

    def install_signal_handlers(self) -> None:  # the main thread keeps its handlers
        pass

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[ThreadServer]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not self.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        try:
            yield self
        finally:
            self.should_exit = True
            thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"


@contextlib.contextmanager
def serve(app: Any, **config: Any) -> Iterator[ThreadServer]:
    """Serve ``app`` on 127.0.0.1 with uvicorn in a thread; yields the server (``.url``)."""
    cfg = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=2,
        **config,
    )
    server = ThreadServer(cfg)
    with server.run_in_thread():
        yield server


@pytest.fixture
def serve_app() -> Callable[..., contextlib.AbstractContextManager[ThreadServer]]:
    """``with serve_app(app) as server: server.url`` starts a real uvicorn server."""
    return serve


CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium (Playwright cannot download a browser of its own here)."""

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium driven by Playwright, one per test module."""
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


NODE_DIR = Path(__file__).parent / "node"
"""The npm packages the tests use (``package.json`` and its lock file)."""


def _installed() -> bool:
    """Every package in the lock file is in node_modules at the locked version."""
    lock = NODE_DIR / "package-lock.json"
    if not lock.is_file() or not (NODE_DIR / "node_modules").is_dir():
        return False
    for key, meta in json.loads(lock.read_text())["packages"].items():
        manifest = NODE_DIR / key / "package.json"
        if not key or (meta.get("optional") and not manifest.is_file()):
            continue  # optional packages for other platforms are not installed
        if not (
            manifest.is_file() and json.loads(manifest.read_text())["version"] == meta["version"]
        ):
            return False
    return True


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` binary, with the npm clients installed in ``tests/node``."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed (Node.js 20 or later)")
    if not _installed():
        verb = "ci" if (NODE_DIR / "package-lock.json").is_file() else "install"
        result = subprocess.run(
            [npm, verb, "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=45,  # within the test's timeout, so a stuck install fails with a message
            check=False,
        )
        assert result.returncode == 0, f"npm {verb} failed:\n{result.stderr}"
        assert _installed()
    return node
