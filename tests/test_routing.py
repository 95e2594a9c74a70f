"""create_router: endpoints, negotiation, validation, dependency overrides, OpenAPI."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from httpx_sse import aconnect_sse
from pydantic import BaseModel, Field

from fastapi_ikstream import RunRequest, RunState, create_router
from fastapi_ikstream.routing import StreamRouter
from fastapi_ikstream.testing import FakeDeployment


class PromptIn(BaseModel):
    prompt: str = Field(min_length=1, max_length=500)
    steps: int = Field(default=4, ge=1, le=50)


async def echo(inputs, parameters, on_progress):
    on_progress(state="STARTED", progress={"current": 1, "total": 2})
    await asyncio.sleep(0)
    return [{"DATA_DICT": {"prompt": inputs.prompt, "steps": inputs.steps}}]


async def ikomia_style(inputs, parameters, on_progress):
    on_progress(state="STARTED")
    return [{"DATA_DICT": {"inputs": len(inputs), "parameters": dict(parameters)}}]


def make_app(**options: Any) -> tuple[FastAPI, StreamRouter]:
    app = FastAPI()
    router = create_router(echo, path="/generate-image", request_model=PromptIn, **options)
    app.include_router(router, prefix="/api")
    app.include_router(create_router(ikomia_style, path="/detect", tags=["vision"]), prefix="/v2")
    return app, router


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def sse_events(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            events.append(json.loads(data[0]))
    return events


async def test_three_endpoints_under_a_prefix_and_two_deployments():
    app, _ = make_app()
    async with client_for(app) as client:
        response = await client.post("/api/generate-image/stream", json={"prompt": "a puppy"})
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        events = sse_events(response.text)
        assert [e["type"] for e in events] == ["run", "progress", "result", "done"]
        assert events[2]["results"] == [{"DATA_DICT": {"prompt": "a puppy", "steps": 4}}]
        assert response.headers["x-run-id"] == events[0]["run_id"]

        response = await client.get(
            "/api/generate-image/stream", params={"prompt": "a kitten", "steps": 7}
        )
        assert sse_events(response.text)[2]["results"][0]["DATA_DICT"] == {
            "prompt": "a kitten",
            "steps": 7,
        }

        response = await client.post("/api/generate-image", json={"prompt": "x"})
        assert response.status_code == 200
        final = RunState.model_validate(response.json())
        assert final.type == "result"
        assert final.results is not None
        assert final.results[0]["DATA_DICT"]["prompt"] == "x"

        response = await client.post(
            "/v2/detect/stream",
            json={"inputs": ["QUJD", "data:image/png;base64,QUJD"], "parameters": {"t": "1"}},
        )
        result = sse_events(response.text)[-2]
        assert result["results"] == [{"DATA_DICT": {"inputs": 2, "parameters": {"t": "1"}}}]


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (None, "text/event-stream"),
        ("*/*", "text/event-stream"),
        ("text/event-stream", "text/event-stream"),
        ("application/jsonl", "application/jsonl"),
        ("application/x-ndjson", "application/x-ndjson"),
        ("text/event-stream;q=0.5, application/jsonl", "application/jsonl"),
    ],
)
async def test_content_negotiation(accept, media_type):
    app, _ = make_app()
    headers = {"accept": accept} if accept else {}
    async with client_for(app) as client:
        response = await client.post(
            "/api/generate-image/stream", json={"prompt": "p"}, headers=headers
        )
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == media_type
    if media_type != "text/event-stream":
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert [line["type"] for line in lines] == ["run", "progress", "result", "done"]


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ({}, {}, 422),
        ({"prompt": ""}, {}, 422),
        ({"prompt": "x", "steps": 0}, {}, 422),
        ({"prompt": "x"}, {"accept": "text/html"}, 406),
        ({"prompt": "x"}, {"accept": "application/json"}, 406),
    ],
)
async def test_bad_requests_get_json_errors_before_any_stream(body, headers, status):
    app, _ = make_app()
    async with client_for(app) as client:
        response = await client.post("/api/generate-image/stream", json=body, headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert "detail" in response.json()


async def test_malformed_json_and_wrong_types_are_422_not_500():
    app, _ = make_app()
    async with client_for(app) as client:
        response = await client.post(
            "/api/generate-image/stream",
            content=b'{"prompt": ',
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 422
        response = await client.post("/v2/detect/stream", json={"inputs": ["not base64!"]})
        assert response.status_code == 422
        assert "base64" in json.dumps(response.json())
        response = await client.post("/v2/detect/stream", json={"inputs": [{"a": 1, "b": 2}]})
        assert response.status_code == 422


async def test_body_over_the_limit_is_413_json():
    app, _ = make_app(max_body_size=1024)
    async with client_for(app) as client:
        response = await client.post("/api/generate-image/stream", json={"prompt": "x" * 2000})
        assert response.status_code == 413
        assert "1024" in response.json()["detail"]

        async def chunks():
            for _ in range(10):
                yield b" " * 200

        response = await client.post(
            "/api/generate-image/stream",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 413
        response = await client.post("/api/generate-image/stream", json={"prompt": "fits"})
        assert response.status_code == 200


async def test_dependency_override_with_fake_deployment():
    app, router = make_app()
    fake = FakeDeployment(
        [
            {"state": "STARTED", "progress": {"current": 1, "total": 2}},
            {"logs": ["hello"]},
            {"results": [{"DATA_DICT": {"fake": True}}]},
        ]
    )
    app.dependency_overrides[router.deployment_provider] = lambda: fake
    async with client_for(app) as client:
        response = await client.post("/api/generate-image/stream", json={"prompt": "p"})
    events = sse_events(response.text)
    assert [e["type"] for e in events] == ["run", "progress", "log", "result", "done"]
    assert events[3]["results"] == [{"DATA_DICT": {"fake": True}}]
    assert fake.calls[0].inputs == PromptIn(prompt="p")
    assert fake.calls[0].finished

    failing = FakeDeployment([{"state": "STARTED"}, {"state": "RUNNING"}], fail_at=1)
    app.dependency_overrides[router.deployment_provider] = lambda: failing
    async with client_for(app) as client:
        response = await client.post("/api/generate-image/stream", json={"prompt": "p"})
        events = sse_events(response.text)
        assert [e["type"] for e in events][-2:] == ["failed", "done"]
        assert events[-2]["error"] == {
            "code": "fake_failure",
            "message": "fake failure",
            "retryable": False,
        }
        response = await client.post("/api/generate-image", json={"prompt": "p"})
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "fake_failure"


async def test_openapi_documents_streams_errors_and_models():
    app, _ = make_app()
    schema = app.openapi()
    paths = schema["paths"]
    for route in (
        "/api/generate-image/stream",
        "/api/generate-image",
        "/api/generate-image/runs",
        "/api/generate-image/runs/{run_id}/events",
        "/api/generate-image/runs/{run_id}",
        "/v2/detect/stream",
    ):
        assert route in paths, route
    post = paths["/api/generate-image/stream"]["post"]
    content = post["responses"]["200"]["content"]
    sse = content["text/event-stream"]["itemSchema"]
    assert sse["properties"]["data"]["contentMediaType"] == "application/json"
    assert sse["properties"]["data"]["contentSchema"] == {"$ref": "#/components/schemas/RunState"}
    assert set(sse["properties"]["event"]["enum"]) >= {
        "run",
        "progress",
        "log",
        "partial",
        "result",
        "failed",
        "done",
    }
    assert content["application/jsonl"]["itemSchema"] == {"$ref": "#/components/schemas/RunState"}
    for status in ("401", "403", "413", "422", "429"):
        assert status in post["responses"], status
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PromptIn"
    }
    get = paths["/api/generate-image/stream"]["get"]
    assert {p["name"] for p in get["parameters"]} >= {"prompt", "steps"}
    components = schema["components"]["schemas"]
    assert {"RunState", "RunStatus", "EventType", "Progress", "LogLine", "RunError"} <= set(
        components
    )
    assert paths["/v2/detect/stream"]["post"]["tags"] == ["vision"]
    assert schema["components"]["schemas"]["RunRequest"]["properties"]["inputs"]["type"] == "array"


async def test_browser_module_is_served():
    app, _ = make_app()
    async with client_for(app) as client:
        response = await client.get("/api/generate-image/ikstream.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")


async def test_incremental_delivery_over_a_real_server(serve_app):
    """Events arrive while the run is still going, for POST and for GET."""
    fake = FakeDeployment(
        [{"progress": {"current": i, "total": 4}} for i in range(4)]
        + [{"results": [{"DATA_DICT": {}}]}],
        delay=0.15,
    )
    app, router = make_app()
    app.dependency_overrides[router.deployment_provider] = lambda: fake
    with serve_app(app) as server:
        async with httpx.AsyncClient(timeout=10) as client:
            for method, kwargs in (
                ("POST", {"json": {"prompt": "p"}}),
                ("GET", {"params": {"prompt": "p"}}),
            ):
                arrivals = []
                started = time.monotonic()
                async with aconnect_sse(
                    client, method, server.url + "/api/generate-image/stream", **kwargs
                ) as source:
                    async for event in source.aiter_sse():
                        arrivals.append((event.event, time.monotonic() - started))
                kinds = [kind for kind, _ in arrivals]
                assert kinds == ["run"] + ["progress"] * 4 + ["result", "done"]
                progress_times = [t for kind, t in arrivals if kind == "progress"]
                # each progress event arrives about one delay after the previous one
                gaps = [b - a for a, b in itertools.pairwise(progress_times)]
                assert all(gap > 0.08 for gap in gaps), gaps
                assert arrivals[1][1] < arrivals[-1][1] - 0.4


async def test_default_request_model_is_run_request():
    app, _ = make_app()
    schema = app.openapi()
    body = schema["paths"]["/v2/detect/stream"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/RunRequest")
    assert RunRequest.model_validate({"inputs": ["https://example.test/a.png"]}).inputs


async def test_get_stream_query_string_for_the_default_model():
    app, _ = make_app()
    async with client_for(app) as client:
        response = await client.get(
            "/v2/detect/stream",
            params=[("inputs", "QUJD"), ("inputs", "https://x.test/a.png"), ("threshold", "100")],
        )
        assert response.status_code == 200
        result = sse_events(response.text)[-2]
        assert result["results"] == [
            {"DATA_DICT": {"inputs": 2, "parameters": {"threshold": "100"}}}
        ]
        response = await client.get("/v2/detect/stream", params={"inputs": "not base64!"})
        assert response.status_code == 422
        # an empty ``inputs=`` is how an empty list looks in a query string
        response = await client.get("/v2/detect/stream?inputs=")
        assert response.status_code == 200
        assert sse_events(response.text)[-2]["results"] == [
            {"DATA_DICT": {"inputs": 0, "parameters": {}}}
        ]


async def test_method_not_allowed_lists_every_method_of_the_path():
    app, _ = make_app()
    async with client_for(app) as client:
        response = await client.put("/api/generate-image/stream")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) >= {"GET", "POST"}


async def test_bytes_that_are_not_json_and_a_bad_length_are_json_errors():
    app, _ = make_app()
    async with client_for(app) as client:
        response = await client.post(
            "/api/generate-image/stream",
            content=b"\xff\xfe\x00garbage",
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 422
        assert response.json()["detail"][0]["type"] == "json_invalid"
        response = await client.post(
            "/api/generate-image/stream",
            content=b'{"prompt": "x"}',
            headers={"content-type": "application/json", "content-length": "abc"},
        )
        assert response.status_code == 400
        assert response.json() == {"detail": "Invalid Content-Length."}
