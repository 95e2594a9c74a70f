"""The example app: login, auth, a real run on a sample photo, limits, samples, the command."""

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from conftest import free_port
from httpx_sse import aconnect_sse
from jose import jwt
from metrics_support import scrape_when_settled, value

from example_app.main import API_PATH, create_app
from example_app.scale_server import create_scale_app
from example_app.workflow import SAMPLES, sample_data_url
from fastapi_ikstream.ikomia import IkomiaDeployment

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
STREAM = f"{API_PATH}/stream"


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://example")


def small_png() -> str:
    """A real 48x32 photo-like PNG, cheap to run (a gradient with a dark square)."""
    image = np.zeros((32, 48, 3), np.uint8)
    image[:, :, 1] = np.linspace(0, 255, 48, dtype=np.uint8)
    image[8:24, 16:32] = 20
    ok, data = cv2.imencode(".png", image)
    assert ok
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode()


def decode_image(b64: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


async def login(client: httpx.AsyncClient, name: str = "tester") -> dict[str, str]:
    response = await client.post("/api/login", json={"name": name})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def stream_events(
    client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]
) -> list[tuple[str, Any]]:
    events = []
    async with (
        asyncio.timeout(20),
        aconnect_sse(client, "POST", STREAM, json=body, headers=headers) as source,
    ):
        assert source.response.status_code == 200
        async for event in source.aiter_sse():
            events.append((event.event, event.json()))
    return events


async def until_finished(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> dict[str, Any]:
    """Poll a run's state URL until the run has finished (at most 5 s)."""
    async with asyncio.timeout(5):
        for _ in range(1000):
            state: dict[str, Any] = (await client.get(url, headers=headers)).json()
            if state["finished"]:
                return state
            await asyncio.sleep(0.02)
    raise AssertionError(f"the run at {url} did not finish")


async def test_login_gives_a_short_lived_token_for_the_router():
    app = create_app(token_ttl=120)
    async with client_for(app) as client:
        response = await client.post("/api/login", json={"name": "ada"})
        assert response.status_code == 200
        body = response.json()
        claims = jwt.get_unverified_claims(body["access_token"])
        assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"
        assert claims["sub"] == body["subject"]
        assert claims["sub"].startswith("demo:ada:")
        assert claims["exp"] - claims["iat"] == 120 == body["expires_in"]
        assert body["token_type"] == "bearer"

        # Another app instance has another secret: its tokens are refused here.
        async with client_for(create_app()) as other:
            foreign = await login(other)
        response = await client.post(STREAM, json={"inputs": [small_png()]}, headers=foreign)
        assert response.status_code == 401
        assert response.json() == {"detail": "The token is invalid."}

        refused = await client.post("/api/login", json={"name": "<script>"})
        assert refused.status_code == 422


async def test_the_stream_without_a_token_is_a_401_json_answer():
    app = create_app()
    async with client_for(app) as client:
        response = await client.post(STREAM, json={"inputs": [small_png()]})
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/json"
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json() == {"detail": "Not authenticated: send a bearer token."}
        response = await client.post(
            STREAM, json={"inputs": [small_png()]}, headers={"Authorization": "Bearer nope"}
        )
        assert response.status_code == 401
        assert "invalid_token" in response.headers["www-authenticate"]
    assert app.state.deployment.counts == {}


async def test_a_run_on_the_astronaut_streams_progress_and_finds_a_face(serve_app):
    app = create_app()
    with serve_app(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            headers = await login(client)
            body = {"inputs": [sample_data_url("astronaut")], "parameters": {"max_side": 512}}
            events = await stream_events(client, headers, body)

    kinds = [kind for kind, _ in events]
    assert kinds[0] == "run"
    assert kinds[-2:] == ["result", "done"]
    steps = [data["progress"]["current"] for _, data in events if data.get("progress")]
    assert steps == sorted(steps)
    assert len(set(steps)) >= 3
    assert steps[-1] == 5
    etas = [data["eta"] for kind, data in events if kind == "progress" and data.get("eta")]
    assert etas
    assert all(low <= high for low, high in etas)
    logs = [line["message"] for _, data in events for line in data.get("logs") or []]
    assert any(message.startswith("detect: faces: 1") for message in logs)

    result = events[-2][1]
    boxes, edges, detection, data = result["results"]
    annotated = decode_image(boxes["image"])
    edge_map = decode_image(edges["image"])
    assert annotated.shape == (512, 512, 3)
    assert edge_map.shape == (512, 512)
    assert 0 < np.count_nonzero(edge_map) < edge_map.size
    faces = [d for d in detection["OBJECT_DETECTION"]["detections"] if d["label"] == "face"]
    assert len(faces) >= 1
    assert data["DATA_DICT"]["faces"] == len(faces)
    box = faces[0]["box"]
    assert 0 <= box["x"] < 512
    assert 0 < box["width"] <= 512 - box["x"]
    assert app.state.deployment.counts == {"started": 1, "completed": 1}


async def test_a_failed_run_carries_the_workflows_message():
    app = create_app()
    async with client_for(app) as client:
        headers = await login(client)
        body = {"inputs": [small_png()], "parameters": {"canny_low": "5000"}}
        events = await stream_events(client, headers, body)
    assert [kind for kind, _ in events][-2:] == ["failed", "done"]
    error = events[-2][1]["error"]
    assert error["code"] == "invalid_parameters"
    assert error["message"] == "Parameter 'canny_low' must be between 0 and 1000."
    assert app.state.deployment.counts == {"started": 1, "failed": 1}


async def test_runs_past_the_rate_limit_get_a_429_with_retry_after():
    app = create_app(rate_limit="2/minute")
    async with client_for(app) as client:
        headers = await login(client)
        body = {"inputs": [small_png()], "parameters": {"detect": "none"}}
        for _ in range(2):
            assert (await client.post(API_PATH, json=body, headers=headers)).status_code == 200
        refused = await client.post(STREAM, json=body, headers=headers)
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/json"
        assert 0 < int(refused.headers["retry-after"]) <= 60
        assert refused.json()["detail"]["error"] == "rate_limited"
        # The budget is per user: someone else may still run.
        other = await login(client, "grace")
        assert (await client.post(API_PATH, json=body, headers=other)).status_code == 200
    assert app.state.deployment.counts["completed"] == 3


async def test_a_third_concurrent_run_is_refused_and_delete_cancels(serve_app):
    app = create_app(stage_delay_ms=300)
    body = {"inputs": [small_png()], "parameters": {"detect": "none"}}
    with serve_app(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            headers = await login(client)
            started = [
                (await client.post(f"{API_PATH}/runs", json=body, headers=headers))
                for _ in range(2)
            ]
            assert [response.status_code for response in started] == [201, 201]
            third = await client.post(f"{API_PATH}/runs", json=body, headers=headers)
            assert third.status_code == 429
            assert third.json()["detail"]["error"] == "too_many_runs"

            for response in started:
                cancel = await client.delete(response.json()["cancel_url"], headers=headers)
                assert cancel.status_code == 202
            for response in started:
                state = await until_finished(client, response.json()["state_url"], headers)
                assert state["status"] == "cancelled"
            assert app.state.deployment.counts == {"started": 2, "cancelled": 2}
            # The slots are free again.
            again = await client.post(f"{API_PATH}/runs", json=body, headers=headers)
            assert again.status_code == 201
            await client.delete(again.json()["cancel_url"], headers=headers)


async def test_the_page_its_module_and_the_sample_photos_are_served():
    async with client_for(create_app()) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/static/app.js">' in page.text
        script = await client.get("/static/app.js")
        assert f'from "{API_PATH}/ikstream.js"' in script.text
        module = await client.get(f"{API_PATH}/ikstream.js")
        assert module.status_code == 200
        assert "export async function streamRun" in module.text
        assert (await client.get("/static/app.css")).status_code == 200

        listed = (await client.get("/api/samples")).json()
        assert [sample["name"] for sample in listed] == list(SAMPLES)
        for sample in listed:
            full = await client.get(sample["url"])
            assert full.headers["content-type"] == sample["media_type"]
            assert full.content == SAMPLES[sample["name"]].read_bytes()
            thumb = await client.get(sample["thumbnail_url"])
            pixels = cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR)
            assert thumb.headers["content-type"] == "image/jpeg"
            assert pixels is not None
            assert max(pixels.shape[:2]) == 160
        assert (await client.get("/api/samples/nothing")).status_code == 404

        config = (await client.get("/api/config")).json()
        assert config["mode"] == "embedded"
        assert config["deployment"] == "FaceCannyWorkflow"


async def test_endpoint_url_and_token_select_the_ikomia_deployment(serve_app, monkeypatch):
    with serve_app(create_scale_app(token="demo-token", poll_ms=20, hold=2.0)) as scale:
        monkeypatch.setenv("IKOMIA_URL", scale.url)
        monkeypatch.setenv("ENDPOINT_URL", scale.url + "/")
        monkeypatch.setenv("IKOMIA_TOKEN", "demo-token")
        app = create_app()
        assert isinstance(app.state.deployment.inner, IkomiaDeployment)
        with serve_app(app) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                assert (await client.get("/api/config")).json()["mode"] == "ikomia"
                headers = await login(client)
                body = {"inputs": [sample_data_url("astronaut")]}
                events = await stream_events(client, headers, body)
    assert [kind for kind, _ in events][-2:] == ["result", "done"]
    outputs = events[-2][1]["results"]
    images = [decode_image(output["image"]) for output in outputs if "image" in output]
    assert [image.shape for image in images] == [(512, 512, 3), (512, 512)]
    data = next(output["DATA_DICT"] for output in outputs if "DATA_DICT" in output)
    assert data["faces"] >= 1
    assert app.state.deployment.counts == {"started": 1, "completed": 1}


def test_python_dash_m_example_app_serves_the_page():
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("ENDPOINT_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "example_app", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                response = httpx.get(url + "/", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the example app did not answer"
                time.sleep(0.1)
        assert response.status_code == 200
        assert "Faces, cats and edges" in response.text
        token = httpx.post(url + "/api/login", json={"name": "cli"}, timeout=5)
        assert token.status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert f"open {url}" in out


async def test_the_metrics_endpoint_shows_the_apps_runs(serve_app):
    app = create_app()
    with serve_app(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            headers = await login(client)
            events = await stream_events(client, headers, {"inputs": [small_png()]})
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as anonymous:
                refused = await anonymous.post(STREAM, json={"inputs": [small_png()]})
            assert refused.status_code == 401
            samples = await scrape_when_settled(client)
    assert [kind for kind, _ in events][-2:] == ["result", "done"]
    assert value(samples, "ikstream_runs_started_total") == 1
    assert value(samples, "ikstream_runs_finished_total", status="completed") == 1
    assert value(samples, "ikstream_runs_in_progress") == 0
    assert value(samples, "ikstream_streams_opened_total") == 1
    assert value(samples, "ikstream_events_sent_total") == len(events)
    assert value(samples, "ikstream_run_duration_seconds_count", status="completed") == 1
    refusals = value(samples, "ikstream_rejections_total", status_code="401", reason="unauthorized")
    assert refusals == 1
