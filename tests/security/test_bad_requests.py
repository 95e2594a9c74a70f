"""The bad-request corpus, sent to a real uvicorn: every answer is a 4xx (or a stream), as
JSON, never a 500, never a hang, never an echo that cannot be encoded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from apps.jobs import slow_job
from attack_kit import AUDIENCE, SECRET, raw_request, status_of
from conftest import ThreadServer, serve
from fastapi import FastAPI
from pydantic import BaseModel, Field

from example_app.main import create_app
from fastapi_ikstream import create_router
from fastapi_ikstream.security import JWTBearer, create_access_token

pytestmark = pytest.mark.timeout(120)

MAX_BODY = 64 * 1024


class PromptIn(BaseModel):
    prompt: str = Field(min_length=1, max_length=200)
    steps: int = Field(default=2, ge=1, le=50)


def make_app() -> FastAPI:
    auth = JWTBearer(secret=SECRET, algorithms=["HS256"], audience=AUDIENCE)
    app = FastAPI()
    typed = create_router(
        slow_job, path="/gen", request_model=PromptIn, auth=auth, max_body_size=MAX_BODY
    )
    app.include_router(typed, prefix="/api")
    app.include_router(create_router(slow_job, path="/ik", auth=auth), prefix="/api")
    return app


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadServer]:
    with serve(make_app()) as running:
        yield running


@pytest.fixture
def token() -> str:
    return create_access_token({"sub": "alice", "aud": AUDIENCE}, secret_or_key=SECRET)


@pytest.fixture
def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ended_done(response: httpx.Response) -> bool:
    """The stream's last event is ``done`` of a completed run."""
    last = response.text.rstrip().rsplit("event:", 1)[-1]
    return '"type":"done"' in last and '"status":"completed"' in last


def assert_json_error(response: httpx.Response, *statuses: int) -> Any:
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json"
    return response.json()


# --- non-finite numbers, malformed and deep JSON ------------------------------------------

NON_FINITE = {
    "NaN in a string field": b'{"prompt": NaN}',
    "Infinity in an int field": b'{"prompt": "x", "steps": Infinity}',
    "-Infinity": b'{"prompt": "x", "steps": -Infinity}',
    "1e999 (overflows to inf)": b'{"prompt": 1e999}',
    "-1e999 nested": b'{"prompt": {"a": [1, -1e999]}}',
    "NaN at the top": b"NaN",
    "NaN in a list": b"[NaN, Infinity]",
    "huge integer": b'{"prompt": "x", "steps": ' + b"9" * 400 + b"}",
}
BODY_ENDPOINTS = ["/api/gen/stream", "/api/gen", "/api/gen/runs"]


@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS)
@pytest.mark.parametrize("body", NON_FINITE.values(), ids=NON_FINITE.keys())
async def test_non_finite_numbers_get_a_422_json(
    server: ThreadServer, headers: dict[str, str], endpoint: str, body: bytes
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.post(
            endpoint, content=body, headers={**headers, "Content-Type": "application/json"}
        )
    detail = assert_json_error(response, 422)["detail"]
    assert isinstance(detail, list)
    assert detail
    assert all({"type", "loc", "msg"} <= set(error) for error in detail)
    assert "NaN" not in response.text
    assert "Infinity" not in response.text


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"prompt":}', b"\xff\xfe\x00", b"", b"[" * 30_000 + b"]" * 30_000],
    ids=["truncated", "missing value", "not UTF-8", "empty", "30k deep"],
)
async def test_malformed_and_deep_json_is_refused(
    server: ThreadServer, headers: dict[str, str], body: bytes
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.post(
            "/api/gen/stream",
            content=body,
            headers={**headers, "Content-Type": "application/json"},
        )
    assert_json_error(response, 400, 422)


async def test_deep_json_that_parses_is_not_echoed(
    server: ThreadServer, headers: dict[str, str]
) -> None:
    deep = "[" * 500 + "]" * 500
    body = f'{{"prompt": {deep}}}'.encode()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.post(
            "/api/gen/stream", content=body, headers={**headers, "Content-Type": "application/json"}
        )
    detail = assert_json_error(response, 422)["detail"]
    assert "input" not in detail[0]  # too deep to echo
    assert len(response.content) < 2000


async def test_the_example_apps_login_answers_non_finite_numbers_with_422() -> None:
    app = create_app()
    with serve(app) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=10) as http:
            for body in (b'{"name": NaN}', b'{"name": 1e999}', b"NaN", b"[Infinity]"):
                response = await http.post(
                    "/api/login", content=body, headers={"Content-Type": "application/json"}
                )
                assert_json_error(response, 422)
            fine = await http.post("/api/login", json={"name": "bob"})
    assert fine.status_code == 200


# --- body sizes ----------------------------------------------------------------------------


async def test_a_huge_declared_body_is_refused_before_it_is_read(
    server: ThreadServer, token: str
) -> None:
    port = server.config.port
    request = (
        b"POST /api/gen/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000000000000\r\n"
        b"Connection: close\r\n\r\n{"
    )
    answer = raw_request(port, request)
    assert status_of(answer) == 413
    assert b'"detail"' in answer


async def test_a_huge_chunked_body_is_cut_at_the_limit(server: ThreadServer, token: str) -> None:
    port = server.config.port
    chunk = b"x" * 8192
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY // 8192 + 4))
    request = (
        b"POST /api/gen/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + body + b"0\r\n\r\n"
    )
    answer = raw_request(port, request)
    assert status_of(answer) == 413
    assert b'"detail"' in answer


@pytest.mark.parametrize("value", [b"-1", b"12abc", b"1e3", b"99999999999999999999999999999"])
async def test_odd_content_lengths_never_give_500(
    server: ThreadServer, token: str, value: bytes
) -> None:
    request = (
        b"POST /api/gen/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + value + b"\r\n"
        b"Connection: close\r\n\r\n{}"
    )
    answer = raw_request(server.config.port, request)
    assert 400 <= status_of(answer) < 500


# --- Accept --------------------------------------------------------------------------------

ACCEPTS = [
    ("text/html", 406),
    ("application/jsonl;q=0", 406),
    ("text/event-stream;q=abc", 406),
    ("text/event-stream;q=NaN", None),
    ("*/*;q=1e999", None),
    (",,,;;;===", 406),
    ("text/event-stream, " * 2000, 200),
    ("\u00e9/\u00e9", 406),
]


@pytest.mark.parametrize(("accept", "expected"), ACCEPTS, ids=[a[:30] for a, _ in ACCEPTS])
async def test_odd_accept_headers(
    server: ThreadServer, headers: dict[str, str], accept: str, expected: int | None
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.post(
            "/api/gen/stream",
            json={"prompt": "x", "steps": 1},
            headers=dict[Any, Any]({**headers, "Accept": accept.strip().encode()}),
        )
    assert response.status_code < 500
    if expected is not None:
        assert response.status_code == expected
    if response.status_code == 200:
        assert ended_done(response)
    else:
        assert response.headers["content-type"] == "application/json"


# --- cursors ---------------------------------------------------------------------------------

BAD_IDS = [
    "",
    ":",
    "x:",
    ":-1",
    "{run}:-1",
    "{run}:1.5",
    "{run}:1e3",
    "{run}:+1",
    "{run}:0x10",
    "{run}:\u0661\u0662",
    "{run}:18446744073709551615",
    "{run}:9223372036854775808",
    "{run}:" + "9" * 5000,
    "a:b:c:1",
    "{run}:1:2",
    "other_run:1",
    "\u00e9\u00e9:1",
]


@pytest.fixture(scope="module")
def finished_run(server: ThreadServer) -> str:
    token = create_access_token({"sub": "alice", "aud": AUDIENCE}, secret_or_key=SECRET)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        created = http.post(
            "/api/gen/runs",
            json={"prompt": "x", "steps": 1},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201
        run_id = str(created.json()["run_id"])
        with http.stream(
            "GET", f"/api/gen/runs/{run_id}/events", headers={"Authorization": f"Bearer {token}"}
        ) as stream:
            assert stream.status_code == 200
            stream.read()
    return run_id


@pytest.mark.parametrize("template", BAD_IDS)
async def test_bad_last_event_ids(
    server: ThreadServer, headers: dict[str, str], finished_run: str, template: str
) -> None:
    value = template.replace("{run}", finished_run)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for name, params in (("header", {}), ("query", {"last_event_id": value})):
            sent: dict[Any, Any] = {**headers, "Last-Event-ID": value.encode()}
            response = await http.get(
                f"/api/gen/runs/{finished_run}/events",
                params=params,
                headers=sent if name == "header" else headers,
            )
            # a malformed cursor is ignored: the whole (finished) run is sent again
            assert response.status_code == 200, (name, response.text[:200])
            assert ended_done(response)


@pytest.mark.parametrize(
    "value", ["-1", "1.5", "abc", str(2**63), str(2**64 - 1), "9" * 5000, "1e3"]
)
async def test_bad_after_seq_is_a_422(
    server: ThreadServer, headers: dict[str, str], finished_run: str, value: str
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.get(
            f"/api/gen/runs/{finished_run}/events", params={"after_seq": value}, headers=headers
        )
    assert_json_error(response, 422)


async def test_a_cursor_past_the_end_of_a_finished_run_gets_a_reset_and_a_huge_one_the_start(
    server: ThreadServer, headers: dict[str, str], finished_run: str
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        # past the end of what the run has: a reset to what is kept, then the kept events
        response = await http.get(
            f"/api/gen/runs/{finished_run}/events",
            headers={**headers, "Last-Event-ID": f"{finished_run}:{10**6}"},
        )
        assert response.status_code == 200
        assert response.text.startswith("event: reset\n")
        assert response.text.count("event: done") == 1
        # beyond any seq this package sends: malformed, read as no cursor at all
        response = await http.get(
            f"/api/gen/runs/{finished_run}/events",
            headers={**headers, "Last-Event-ID": f"{finished_run}:{2**63 - 1}"},
        )
        assert response.status_code == 200
        assert response.text.startswith("event: run\n")
        assert "event: done" in response.text


# --- run ids in paths, query strings -------------------------------------------------------

PATHS = [
    "..%2F..%2Fetc%2Fpasswd",
    "..",
    "%2e%2e",
    "a%00b",
    "a%0Ab",
    "a%0D%0ASet-Cookie:x=1",
    "a" * 5000,
    "%ff",
    "r_" + "%C3%A9",
    "*",
    "a.b",
]


@pytest.mark.parametrize("run_id", PATHS, ids=[p[:20] for p in PATHS])
async def test_run_ids_in_paths_cannot_escape(
    server: ThreadServer, headers: dict[str, str], run_id: str
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/events")):
            response = await http.request(
                method, f"/api/gen/runs/{run_id}{suffix}", headers=headers
            )
            assert response.status_code in (404, 405, 422), (method, suffix, response.text)
            assert "set-cookie" not in response.headers
            assert response.headers["content-type"] == "application/json"


async def test_ten_thousand_query_parameters(server: ThreadServer, headers: dict[str, str]) -> None:
    query = "&".join(f"{i % 100}=1" for i in range(10_000))  # under httpx's 64 KiB URL cap
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        streamed = await http.get(f"/api/ik/stream?{query}", headers=headers)
        created = await http.post(
            f"/api/gen/runs?{query}", json={"prompt": "x", "steps": 1}, headers=headers
        )
    assert streamed.status_code == 200
    assert ended_done(streamed)
    assert created.status_code == 201
    assert json.loads(created.text)["run_id"]
