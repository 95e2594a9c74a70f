"""IkomiaDeployment: the real ikomia-client against a SCALE-protocol server on 127.0.0.1."""

import asyncio
import base64
import contextlib
import importlib
import json
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from functools import cache
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from httpx_sse import aconnect_sse
from ikclient.core.io import ImageIO, TaskIO

from example_app.scale_server import create_scale_app
from example_app.workflow import FaceCannyWorkflow, sample_base64
from fastapi_ikstream import (
    EventType,
    RunFailedError,
    RunRequest,
    RunState,
    RunStatus,
    StreamingRun,
)
from fastapi_ikstream.errors import MissingExtraError
from fastapi_ikstream.ikomia import IkomiaDeployment, to_results, to_scale_input

pytestmark = pytest.mark.timeout(60)

TOKEN = "ikt-" + secrets.token_hex(12)
PARAMS = {"max_side": "256", "stage_delay_ms": "30"}


@cache
def small_image(name: str = "astronaut", side: int = 256) -> str:
    """A sample photograph scaled down to ``side`` pixels, as raw base64 PNG."""
    image = cv2.imdecode(
        np.frombuffer(base64.b64decode(sample_base64(name)), np.uint8), cv2.IMREAD_COLOR
    )
    assert image is not None
    height, width = image.shape[:2]
    scale = side / max(height, width)
    image = cv2.resize(image, (round(width * scale), round(height * scale)))
    return base64.b64encode(cv2.imencode(".png", image)[1].tobytes()).decode()


def pixels(b64: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def scale(serve_app: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, FastAPI]]:
    """A SCALE-protocol server; IKOMIA_URL and IKOMIA_TOKEN point the client at it."""
    app = create_scale_app(token=TOKEN, poll_ms=20, hold=2.0)
    with serve_app(app) as server:
        monkeypatch.setenv("IKOMIA_URL", server.url)
        monkeypatch.setenv("IKOMIA_TOKEN", TOKEN)
        yield server.url, app


async def collect(run: StreamingRun, into: list[RunState] | None = None) -> list[RunState]:
    states = [] if into is None else into
    async with asyncio.timeout(20):
        async for state in run.aiter_states():
            states.append(state)
    return states


def assert_no_secret(states: list[RunState], app: FastAPI) -> None:
    issued = list(app.state.scale.id_tokens)
    for state in states:
        text = state.to_json()
        assert TOKEN not in text
        for id_token in issued:
            assert id_token not in text


async def test_states_in_order_and_results_equal_the_in_process_run(
    scale: tuple[str, FastAPI],
) -> None:
    url, app = scale
    async with IkomiaDeployment(url) as deployment:
        states = await collect(StreamingRun(deployment.open_run([small_image()], PARAMS)))

    types = [s.type for s in states]
    assert types[0] is EventType.RUN
    assert types[-2:] == [EventType.RESULT, EventType.DONE]
    progress = [s for s in states if s.type is EventType.PROGRESS]
    words = [s.state for s in progress]
    assert words[:3] == ["BLOCKING", "SENDING", "PENDING"]
    assert len(words) >= 4
    assert set(words[3:]) == {"STARTED"}
    statuses = [s.status for s in progress]
    assert statuses[:3] == [RunStatus.QUEUED, RunStatus.SCHEDULED, RunStatus.QUEUED]
    assert set(statuses[3:]) == {RunStatus.RUNNING}
    assert progress[0].eta == (None, None)
    assert progress[2].eta is not None
    assert None not in progress[2].eta
    result = states[-2]
    assert result.state == "SUCCESS"
    assert result.status is RunStatus.COMPLETED
    assert states[-1].status is RunStatus.COMPLETED
    assert_no_secret(states, app)

    # the result carries SCALE's single-key objects, as ikclient's Results reads them
    assert result.results is not None
    wrapped = to_results(result.results)
    assert isinstance(wrapped.get_output(0), ImageIO)
    assert isinstance(wrapped.get_output(3), TaskIO)
    assert wrapped.get_output(0, assert_type=ImageIO).to_numpy().shape == (256, 256, 3)

    # ... and equals the in-process run on the same input, pixel for pixel
    local = await collect(StreamingRun(FaceCannyWorkflow().open_run([small_image()], PARAMS)))
    expected = local[-2].results
    assert expected is not None
    for index in (0, 1):
        assert np.array_equal(
            pixels(result.results[index]["image"]), pixels(expected[index]["image"])
        )
    assert result.results[2] == expected[2]
    assert result.results[2]["OBJECT_DETECTION"]["detections"][0]["label"] == "face"
    remote_data, local_data = result.results[3]["DATA_DICT"], expected[3]["DATA_DICT"]
    for key in ("faces", "cats", "width", "height"):
        assert remote_data[key] == local_data[key]


async def test_task_name_from_parameters_runs_that_task(scale: tuple[str, FastAPI]) -> None:
    url, _ = scale
    async with IkomiaDeployment(url) as deployment:
        params = {**PARAMS, "task_name": "infer_face_canny", "stage_delay_ms": 0}
        states = await collect(StreamingRun(deployment.open_run([small_image()], params)))
        assert states[-2].type is EventType.RESULT
        run = StreamingRun(deployment.open_run([small_image()], {"task_name": "no_such_task"}))
        with pytest.raises(RunFailedError) as caught:
            await collect(run)
    error = caught.value.state.error
    assert error is not None
    assert error.code == "invalid_request"
    assert "no_such_task" in error.message


async def test_failed_workflow_gives_upstream_failed_then_done(
    scale: tuple[str, FastAPI],
) -> None:
    url, app = scale
    not_an_image = base64.b64encode(b"these bytes are no image").decode()
    async with IkomiaDeployment(url) as deployment:
        run = StreamingRun(deployment.open_run([not_an_image], {}))
        states: list[RunState] = []
        with pytest.raises(RunFailedError):
            await collect(run, states)
    assert [s.type for s in states[-2:]] == [EventType.FAILED, EventType.DONE]
    failed = states[-2]
    assert failed.status is RunStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "upstream_failed"
    assert failed.error.message == "The input could not be decoded as an image."
    assert not failed.error.retryable
    assert "Traceback" not in failed.to_json()
    assert_no_secret(states, app)


async def test_unknown_parameter_is_refused_by_the_client(scale: tuple[str, FastAPI]) -> None:
    url, _ = scale
    async with IkomiaDeployment(url) as deployment:
        run = StreamingRun(
            deployment.open_run([small_image()], {"threshold": 3}), raise_on_error=False
        )
        states = await collect(run)
    error = states[-2].error
    assert error is not None
    assert error.code == "invalid_request"
    assert "threshold" in error.message


async def test_unreachable_deployment_is_retryable(scale: tuple[str, FastAPI]) -> None:
    _url, app = scale
    dead = f"http://127.0.0.1:{unused_port()}"
    async with IkomiaDeployment(dead) as deployment:
        run = StreamingRun(deployment.open_run([small_image()], {}), raise_on_error=False)
        states = await collect(run)
    assert [s.type for s in states[-2:]] == [EventType.FAILED, EventType.DONE]
    error = states[-2].error
    assert error is not None
    assert (error.code, error.retryable) == ("upstream_unreachable", True)
    assert error.message == "The deployment could not be reached."
    assert_no_secret(states, app)


async def test_unreachable_token_service_is_retryable(
    scale: tuple[str, FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = scale
    monkeypatch.setenv("IKOMIA_URL", f"http://127.0.0.1:{unused_port()}")
    async with IkomiaDeployment(url) as deployment:
        run = StreamingRun(deployment.open_run([small_image()], {}), raise_on_error=False)
        states = await collect(run)
    error = states[-2].error
    assert error is not None
    assert (error.code, error.retryable) == ("upstream_unreachable", True)
    assert error.message == "The Ikomia SCALE token service could not be reached."


async def test_refused_token_is_not_retryable_and_not_shown(scale: tuple[str, FastAPI]) -> None:
    url, _ = scale
    wrong = "ikt-wrong-" + secrets.token_hex(8)
    async with IkomiaDeployment(url, token=wrong) as deployment:
        run = StreamingRun(deployment.open_run([small_image()], {}), raise_on_error=False)
        states = await collect(run)
    error = states[-2].error
    assert error is not None
    assert (error.code, error.retryable) == ("upstream_error", False)
    assert error.message == "The Ikomia SCALE token service answered HTTP 401."
    for state in states:
        assert wrong not in state.to_json()
        assert TOKEN not in state.to_json()


async def test_outage_status_is_retryable(scale: tuple[str, FastAPI]) -> None:
    url, app = scale
    app.state.scale.fail_next = 503
    async with IkomiaDeployment(url) as deployment:
        run = StreamingRun(deployment.open_run([small_image()], {}), raise_on_error=False)
        states = await collect(run)
        error = states[-2].error
        assert error is not None
        assert (error.code, error.retryable) == ("upstream_error", True)
        assert error.message == "The deployment answered HTTP 503."
        assert states[-3].state == "SENDING"  # the PUT failed: no uuid, no polling
        # the outage was once: the same deployment works again
        again = await collect(StreamingRun(deployment.open_run([small_image()], {})))
    assert again[-2].type is EventType.RESULT


async def test_giving_up_polling_is_upstream_timeout(
    serve_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_scale_app(token=TOKEN, poll_ms=1, long_poll=False)
    with serve_app(app) as server:
        monkeypatch.setenv("IKOMIA_URL", server.url)
        async with IkomiaDeployment(server.url, token=TOKEN) as deployment:
            slow = {"max_side": "64", "stage_delay_ms": "600"}  # 3 s: past 100 short polls
            run = StreamingRun(deployment.open_run([small_image()], slow), raise_on_error=False)
            states = await collect(run)
    error = states[-2].error
    assert error is not None
    assert (error.code, error.retryable) == ("upstream_timeout", True)
    assert sum(1 for s in states if s.state == "STARTED") >= 50


async def test_sse_stream_through_a_fastapi_route(
    serve_app: Any, scale: tuple[str, FastAPI]
) -> None:
    url, _app = scale
    deployment = IkomiaDeployment(url)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await deployment.aclose()

    proxy = FastAPI(lifespan=lifespan)

    @proxy.post("/run")
    async def run(body: RunRequest) -> Any:
        return StreamingRun(deployment.open_run(body.inputs, body.parameters)).to_response()

    with serve_app(proxy) as server:
        body = {"inputs": ["data:image/png;base64," + small_image()], "parameters": PARAMS}
        async with (
            asyncio.timeout(20),
            httpx.AsyncClient(base_url=server.url, timeout=15) as client,
            aconnect_sse(client, "POST", "/run", json=body) as source,
        ):
            assert source.response.headers["content-type"].startswith("text/event-stream")
            events = [sse async for sse in source.aiter_sse()]

    names = [sse.event for sse in events]
    assert names[0] == "run"
    assert names[-2:] == ["result", "done"]
    assert set(names) == {"run", "progress", "result", "done"}
    datas = [json.loads(sse.data) for sse in events]
    run_id = datas[0]["run_id"]
    assert [sse.id for sse in events] == [f"{run_id}:{n}" for n in range(1, len(events) + 1)]
    assert [d["type"] for d in datas] == names
    states = [d["state"] for d in datas if d["type"] == "progress"]
    assert states[:3] == ["BLOCKING", "SENDING", "PENDING"]
    assert "STARTED" in states
    result = datas[-2]
    assert result["state"] == "SUCCESS"
    assert pixels(result["results"][0]["image"]).shape == (256, 256, 3)
    assert result["results"][3]["DATA_DICT"]["faces"] >= 1
    for sse in events:
        assert TOKEN not in sse.data


async def test_scale_protocol_answers(scale: tuple[str, FastAPI]) -> None:
    url, _ = scale
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        assert (await client.get("/workflow")).status_code == 401
        refused = await client.get(
            "/v1/projects/jwt/", params={"endpoint": url}, headers={"Authorization": "Token no"}
        )
        assert refused.status_code == 401
        answer = await client.get(
            "/v1/projects/jwt/",
            params={"endpoint": url, "storage": "true"},
            headers={"Authorization": f"Token {TOKEN}"},
        )
        assert answer.status_code == 200
        tokens = answer.json()
        assert {"access_token", "expires_in", "id_token", "token_type"} <= set(tokens)
        bearer = {"Authorization": f"Bearer {tokens['id_token']}"}
        workflow = (await client.get("/workflow", headers=bearer)).json()
        task = workflow["tasks"][0]["task_data"]
        assert task["name"] == "infer_face_canny"
        assert {p["name"] for p in task["parameters"]} >= {"canny_low", "canny_high", "detect"}
        missing = await client.get("/api/results/nope", params={"advice": "true"}, headers=bearer)
        assert missing.status_code == 404
        payload = {
            "inputs": [{"image": small_image("chelsea", 128)}],
            "outputs": [{"task_name": "infer_face_canny", "task_index": 0}],
            "parameters": [
                {
                    "task_name": "infer_face_canny",
                    "task_index": 0,
                    "parameters": {"stage_delay_ms": "50"},
                }
            ],
        }
        put = await client.put("/api/run", params={"advice": "true"}, json=payload, headers=bearer)
        assert put.status_code == 200
        advice = put.json()
        assert advice["state"] == "PENDING"
        assert len(advice["eta"]) == 2
        assert advice["next_poll_in"] == 20
        assert advice["next_poll_long"] is True
        short = await client.get(
            f"/api/results/{advice['uuid']}", params={"advice": "true"}, headers=bearer
        )
        assert short.status_code == 202
        assert short.json()["state"] in ("PENDING", "STARTED")
        for _ in range(50):
            done = await client.get(
                f"/api/results/{advice['uuid']}",
                params={"advice": "true", "long": "true"},
                headers=bearer,
            )
            if done.status_code != 202:
                break
        assert done.status_code == 200
        assert done.json()["state"] == "SUCCESS"
        assert done.json()["eta"] == [0, 0]
        legacy = await client.put("/api/run", json=payload, headers=bearer)
        assert isinstance(legacy.json(), str)


def test_to_scale_input_forms() -> None:
    raw = small_image("rocket", 64)
    assert to_scale_input(raw) == {"image": raw}
    assert to_scale_input("data:image/png;base64," + raw) == {"image": raw}
    assert to_scale_input({"image": "data:image/png;base64," + raw}) == {"image": raw}
    assert to_scale_input("https://scalefs.example/v1/objects/?uid=1") == {
        "storage_object": {"url": "https://scalefs.example/v1/objects/?uid=1", "data_type": "image"}
    }
    assert to_scale_input({"DATA_DICT": {"a": 1}}) == {"DATA_DICT": {"a": 1}}


def test_a_token_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IKOMIA_TOKEN", raising=False)
    with pytest.raises(ValueError, match="IKOMIA_TOKEN"):
        IkomiaDeployment("http://127.0.0.1:1")
    deployment = IkomiaDeployment("http://127.0.0.1:1", token=TOKEN, task_name="t")
    assert TOKEN not in repr(deployment)


def test_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # ikomia-client cannot be uninstalled for one test: hide it from the import system
    for name in list(sys.modules):
        if name == "ikclient" or name.startswith("ikclient."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "ikclient", None)
    monkeypatch.delitem(sys.modules, "fastapi_ikstream.ikomia")
    with pytest.raises(MissingExtraError) as caught:
        importlib.import_module("fastapi_ikstream.ikomia")
    assert 'pip install "fastapi-ikstream[ikomia]"' in str(caught.value)
    assert isinstance(caught.value, ImportError)


async def test_token_exchange_does_not_block_the_event_loop(
    serve_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_scale_app(token=TOKEN, poll_ms=20, hold=2.0, token_delay=0.4)
    with serve_app(app) as server:
        monkeypatch.setenv("IKOMIA_URL", server.url)
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        async with IkomiaDeployment(server.url, token=TOKEN) as deployment:
            run = StreamingRun(deployment.open_run([small_image()], {"max_side": "64"}))
            states = await collect(run)
        stop.set()
        await task
    assert states[-2].type is EventType.RESULT
    assert sum(gaps) > 0.4  # the run waited for the slow token service ...
    assert max(gaps) < 0.2  # ... while the event loop kept turning


async def test_scale_run_uuid_is_kept_as_upstream_id(scale: tuple[str, FastAPI]) -> None:
    url, app = scale
    async with IkomiaDeployment(url) as deployment:
        states = await collect(StreamingRun(deployment.open_run([small_image()], PARAMS)))
    (job_uuid,) = app.state.scale.jobs
    # SCALE gives the uuid with its answer to the submission: from PENDING on, every state
    # that carries a status names it (before it, ikclient reports uuid=None)
    first = next(i for i, s in enumerate(states) if s.state == "PENDING")
    assert {s.upstream_id for s in states[:first]} == {None}
    assert {s.upstream_id for s in states[first:] if s.status is not None} == {job_uuid}
    assert states[-2].type is EventType.RESULT
    assert states[-2].code == 10
