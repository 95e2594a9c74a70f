"""Every Python block of README.md and docs/ runs, as written.

pytest-examples finds the blocks; each runs as a module of its own whose code objects carry
the Markdown file's name and line numbers, so a traceback points at the line in the docs.

Each block runs alone, in a fresh module, in a temporary folder (a block that writes a file
writes it there). What a block needs from outside is what a reader would have:

- ``ENDPOINT_URL``, ``IKOMIA_URL`` and ``IKOMIA_TOKEN`` in the environment, pointing at the
  example's SCALE-protocol server (``example_app.scale_server``) on 127.0.0.1;
- the demo (the example app) on 127.0.0.1: blocks talk to ``http://127.0.0.1:8000``, which
  is replaced by the address of the demo served for the test (the one substitution);
- a redis-server on 127.0.0.1 for the blocks that name one (they only build a router).

After a block has run: an ``app`` it made must produce its OpenAPI schema, and each
``test_*`` function it defines is called (an ``async`` one in a fresh event loop). Some
blocks are also exercised further below (a route is called, a hostile input is posted).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import secrets
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ThreadServer, serve
from fastapi import FastAPI
from httpx_sse import connect_sse
from pytest_examples import CodeExample, find_examples

from example_app.main import create_app
from example_app.scale_server import create_scale_app
from example_app.workflow import sample_data_url

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[1]
DEMO_URL = "http://127.0.0.1:8000"
SCALE_TOKEN = "docs-" + secrets.token_hex(8)  # an opaque test token, not a credential

EXAMPLES = list(find_examples(ROOT / "README.md", ROOT / "docs"))


def example_id(example: CodeExample) -> str:
    return f"{example.path.relative_to(ROOT)}:{example.start_line}"


def heading_of(example: CodeExample) -> str:
    """The title of the section a block is in."""
    lines = example.path.read_text("utf-8").splitlines()[: example.start_line]
    titles = [line.lstrip("#").strip() for line in lines if re.match(r"#{1,6} ", line)]
    return titles[-1] if titles else ""


def find_block(path: str, heading: str) -> CodeExample:
    blocks = [e for e in EXAMPLES if e.path == ROOT / path and heading_of(e) == heading]
    assert len(blocks) == 1, f"{path}: {len(blocks)} Python blocks under {heading!r}"
    return blocks[0]


@pytest.fixture(scope="module")
def scale_env() -> Iterator[str]:
    """The SCALE-protocol server, and the environment a reader sets for it."""
    app = create_scale_app(token=SCALE_TOKEN, poll_ms=20, prefix="/deployment")
    with serve(app) as server, pytest.MonkeyPatch.context() as env:
        env.setenv("IKOMIA_URL", server.url)
        env.setenv("IKOMIA_TOKEN", SCALE_TOKEN)
        env.setenv("ENDPOINT_URL", f"{server.url}/deployment")
        yield server.url


@pytest.fixture(scope="module")
def demo() -> Iterator[ThreadServer]:
    """The demo with its embedded workflow (whatever the environment says)."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("ENDPOINT_URL", raising=False)
        app = create_app(
            stage_delay_ms=0,
            rate_limit="1000/minute",
            max_concurrent_runs=8,
            login_rate_limit="1000/minute",
        )
    with serve(app) as server:
        yield server


def run_block(example: CodeExample, demo: ThreadServer) -> dict[str, Any]:
    """Run one block as a fresh module; returns its namespace."""
    source = example.source.replace(DEMO_URL, demo.url)
    code = compile("\n" * example.start_line + source, str(example.path), "exec")
    module = types.ModuleType(f"docs_{example.module_name.replace('-', '_')}")
    sys.modules[module.__name__] = module  # pydantic and dataclasses look their module up
    try:
        exec(code, module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module.__dict__


@pytest.mark.parametrize("example", EXAMPLES, ids=[example_id(e) for e in EXAMPLES])
def test_block_runs_as_written(
    example: CodeExample,
    scale_env: str,
    demo: ThreadServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = run_block(example, demo)
    app = namespace.get("app")
    if app is not None:
        assert isinstance(app, FastAPI)
        assert app.openapi()["paths"]
    for name, value in namespace.items():
        if name.startswith("test_") and callable(value):
            if inspect.iscoroutinefunction(value):
                asyncio.run(asyncio.wait_for(value(), 30))
            else:
                value()


def test_every_python_block_is_found() -> None:
    files = {e.path.relative_to(ROOT).as_posix() for e in EXAMPLES}
    assert {"README.md", "docs/getting-started.md", "docs/recipes/testing.md"} <= files
    fences = 0
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        fences += len(re.findall(r"^```(?:python|py)\b", path.read_text("utf-8"), flags=re.M))
    assert fences == len(EXAMPLES)


# --- blocks exercised further --------------------------------------------------------------


def test_the_any_route_example_streams_and_refuses_server_paths(
    scale_env: str, demo: ThreadServer
) -> None:
    example = find_block("docs/getting-started.md", "Stream a run from any route")
    app = run_block(example, demo)["app"]
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for hostile in ["/etc/passwd", "../../etc/passwd", "photo.png", "./images/cat.jpg"]:
            response = client.post("/api/detect", json={"image": hostile})
            assert response.status_code == 422, hostile
            assert hostile not in response.text
        body = {"image": sample_data_url("chelsea")}
        with connect_sse(client, "POST", "/api/detect", json=body) as source:
            events = [(event.event, event.json()) for event in source.iter_sse()]
    assert [kind for kind, _ in events][-2:] == ["result", "done"]
    assert events[-1][1]["status"] == "completed"
    assert "image" in events[-2][1]["results"][0]


def test_the_router_example_streams_and_answers_422_for_a_bad_body(
    scale_env: str, demo: ThreadServer
) -> None:
    example = find_block("docs/getting-started.md", "Or let the router do it all")
    app = run_block(example, demo)["app"]
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post("/api/generate-image/stream", json={"prompt": "a puppy"})
        assert response.status_code == 200
        assert '"prompt":"a puppy"' in response.text
        assert "event: done" in response.text
        for body in [b"{not json", b'{"nope": 1}']:
            response = client.post(
                "/api/generate-image/stream",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            assert response.status_code == 422
            assert response.headers["content-type"] == "application/json"


def test_the_ikomia_recipe_refuses_server_paths_and_runs_an_image(
    scale_env: str, demo: ThreadServer
) -> None:
    example = find_block("docs/recipes/ikomia.md", "An Ikomia SCALE deployment")
    app = run_block(example, demo)["app"]
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for hostile in ["/etc/passwd", "../secrets.txt", "photo.png", "file:///etc/passwd"]:
            response = client.post("/api/detect/stream", json={"inputs": [hostile]})
            assert response.status_code == 422, hostile
            response = client.get("/api/detect/stream", params={"inputs": hostile})
            assert response.status_code == 422, hostile
        body = {"inputs": [sample_data_url("astronaut")], "parameters": {"max_side": 128}}
        response = client.post("/api/detect/stream", json=body)
        assert response.status_code == 200
        assert "event: result" in response.text
