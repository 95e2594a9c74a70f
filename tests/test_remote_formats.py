"""`RemoteDeployment` against servers speaking other formats, and its failure codes.

The upstreams are small Starlette apps on real uvicorn servers: an inference.sh-style task
stream (seed 002's updates: ``status`` names or codes, ``progress``, ``logs``,
``partial_output``, ``output``, ``error``) with event ids it can resume from, and a fal-style
stream (seed 003: each event's data is the output so far; the stream's close is its end).
"""

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import free_port
from proxy import CuttingProxy
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fastapi_ikstream import RunState, StreamingRun
from fastapi_ikstream.remote import (
    FAL,
    INFERENCE_SH,
    RemoteDeployment,
    UpstreamEvent,
    default_body,
)

pytestmark = pytest.mark.timeout(60)

TASK = "task_7f3a"
UPDATES: list[dict[str, Any]] = [
    {"id": TASK, "status": "received"},
    {"id": TASK, "status": 2},  # queued, as its numeric code
    {"id": TASK, "status": "running", "progress": {"current": 1, "total": 2}, "logs": ["load"]},
    {
        "id": TASK,
        "status": "running",
        "progress": {"current": 2, "total": 2},
        "partial_output": "½",
    },
    {"id": TASK, "status": "uploading"},
    {"id": TASK, "status": "completed", "output": {"video": "https://cdn.example/v.mp4"}},
]
FAILED = [{"id": TASK, "status": "running"}, {"id": TASK, "status": "failed", "error": "OOM"}]


class InferenceStyle:
    """POST /run streams a task's updates as ``id: n`` + ``data:``; resumes after Last-Event-ID.

    Attributes:
        starts: requests without Last-Event-ID (tasks started).
        resumed_from: the Last-Event-ID of each resuming request.
        cancels: task ids cancelled through POST /tasks/{id}/cancel.
    """

    def __init__(self, updates: list[dict[str, Any]], delay: float = 0.01) -> None:
        self.updates = updates
        self.delay = delay
        self.starts = 0
        self.resumed_from: list[str] = []
        self.cancels: list[str] = []
        self.app = Starlette(
            routes=[
                Route("/run", self.run, methods=["POST"]),
                Route("/tasks/{task}/cancel", self.cancel, methods=["POST"]),
            ]
        )

    async def run(self, request: Request) -> Response:
        last = request.headers.get("last-event-id")
        if last is None:
            self.starts += 1
        else:
            self.resumed_from.append(last)
        start = 0 if last is None else int(last)

        async def events() -> AsyncIterator[bytes]:
            for number, update in enumerate(self.updates[start:], start + 1):
                await asyncio.sleep(self.delay)
                yield f"id: {number}\ndata: {json.dumps(update)}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def cancel(self, request: Request) -> Response:
        self.cancels.append(request.path_params["task"])
        return JSONResponse({"ok": True})


async def run_states(deployment: RemoteDeployment, parameters: Any = None) -> list[RunState]:
    run = StreamingRun(deployment.open_run([], parameters or {}), raise_on_error=False)
    async with asyncio.timeout(20):
        return [state async for state in run.aiter_states()]


def inference(url: str, **options: Any) -> RemoteDeployment:
    return RemoteDeployment(
        url + "/run",
        map_event=INFERENCE_SH,
        body=lambda inputs, parameters: {"app": "infsh/flux", "input": dict(parameters)},
        cancel_url=url + "/tasks/{run_id}/cancel",
        cancel_method="POST",
        reconnect_delay=0.01,
        **options,
    )


async def test_inference_sh_style_updates_become_run_states(serve_app):
    upstream = InferenceStyle(UPDATES)
    with serve_app(upstream.app) as server:
        states = await run_states(inference(server.url))
    kinds = ["run", "progress", "progress", "progress", "partial", "progress", "result", "done"]
    assert [state.type.value for state in states] == kinds
    assert [state.status.value for state in states if state.status] == [
        "received",
        "received",
        "queued",
        "running",
        "running",
        "uploading",
        "completed",
        "completed",
    ]
    assert [state.state for state in states[1:6]] == [
        "received",
        "2",
        "running",
        "running",
        "uploading",
    ]
    assert states[3].progress is not None
    assert (states[3].progress.current, states[3].progress.total) == (1, 2)
    assert states[3].logs is not None
    assert [line.message for line in states[3].logs] == ["load"]
    assert states[4].partial_output == "½"
    assert states[6].results == [{"DATA_DICT": {"video": "https://cdn.example/v.mp4"}}]
    assert upstream.cancels == []


async def test_inference_sh_style_failure_keeps_its_message(serve_app):
    with serve_app(InferenceStyle(FAILED).app) as server:
        states = await run_states(inference(server.url))
    assert [state.type.value for state in states] == ["run", "progress", "failed", "done"]
    error = states[2].error
    assert error is not None
    assert (error.code, error.message) == ("upstream_failed", "OOM")


async def test_inference_sh_style_stream_resumes_from_its_own_ids(serve_app):
    upstream = InferenceStyle(UPDATES)
    with serve_app(upstream.app) as server:
        reference = await run_states(inference(server.url))
        async with CuttingProxy(server.config.port, cut_after=2).running() as proxy:
            states = await run_states(inference(proxy.url))
    assert proxy.cuts >= 2  # a third may come after the last event
    assert upstream.starts == 2  # the reference run and the cut one: no task started twice
    assert upstream.resumed_from == ["2", "4"]
    assert [s.model_dump(exclude={"run_id", "logs"}) for s in states] == [
        s.model_dump(exclude={"run_id", "logs"}) for s in reference
    ]


async def test_cancelling_the_run_calls_the_upstream_cancel(serve_app):
    upstream = InferenceStyle([{"id": TASK, "status": "running"}] * 200, delay=0.05)
    with serve_app(upstream.app) as server:
        run = StreamingRun(inference(server.url).open_run([], {}), raise_on_error=False)
        states = []
        async with asyncio.timeout(20):
            async for state in run.aiter_states():
                states.append(state)
                if len(states) == 3:
                    run.cancel("stop")
    assert [state.type.value for state in states[-2:]] == ["cancelled", "done"]
    assert upstream.cancels == [TASK]


def fal_app(events: list[Any], *, silent: bool = False, status: int = 200) -> Starlette:
    async def stream(request: Request) -> Response:
        if status != 200:
            return JSONResponse({"detail": "no"}, status_code=status)

        async def body() -> AsyncIterator[bytes]:
            for item in events:
                await asyncio.sleep(0.01)
                yield f"data: {item if isinstance(item, str) else json.dumps(item)}\n\n".encode()
            if silent:
                await asyncio.Event().wait()  # until the reader goes away

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/stream", stream, methods=["POST"])])


def fal(url: str, **options: Any) -> RemoteDeployment:
    return RemoteDeployment(
        url + "/stream", map_event=FAL, body=lambda inputs, parameters: dict(parameters), **options
    )


async def test_fal_style_partials_then_the_last_one_as_result(serve_app):
    outputs = [{"text": "Hel"}, {"text": "Hello"}, {"text": "Hello world"}]
    with serve_app(fal_app(outputs)) as server:
        states = await run_states(fal(server.url))
    assert [state.type.value for state in states] == [
        "run",
        "partial",
        "partial",
        "partial",
        "result",
        "done",
    ]
    assert [state.partial_output for state in states[1:4]] == outputs
    assert states[4].results == [{"DATA_DICT": {"text": "Hello world"}}]


@pytest.mark.parametrize(
    ("app_options", "deployment_options", "code", "retryable"),
    [
        ({"events": [{"a": 1}], "silent": True}, {"timeout": 0.3}, "upstream_timeout", True),
        ({"events": [], "status": 422}, {}, "upstream_error", False),
        ({"events": [], "status": 503}, {}, "upstream_error", True),
        ({"events": []}, {}, "upstream_incomplete", True),  # closed before any output
        ({"events": ["not json"]}, {}, "upstream_error", False),
    ],
)
async def test_fal_style_failures_have_clear_codes(
    serve_app, app_options, deployment_options, code, retryable
):
    with serve_app(fal_app(**app_options)) as server:
        states = await run_states(fal(server.url, **deployment_options))
    assert [state.type.value for state in states][-2:] == ["failed", "done"]
    error = states[-2].error
    assert error is not None
    assert (error.code, error.retryable) == (code, retryable)


async def test_a_cut_fal_style_stream_cannot_resume(serve_app):
    outputs = [{"n": n} for n in range(5)]
    with serve_app(fal_app(outputs)) as server:
        async with CuttingProxy(server.config.port, cut_after=2).running() as proxy:
            states = await run_states(fal(proxy.url))
    assert proxy.cuts == 1
    assert [state.type.value for state in states] == ["run", "partial", "partial", "failed", "done"]
    assert states[3].error is not None
    assert states[3].error.code == "upstream_incomplete"


async def test_an_unreachable_upstream():
    states = await run_states(fal(f"http://127.0.0.1:{free_port()}"))
    assert states[-2].error is not None
    assert (states[-2].error.code, states[-2].error.retryable) == ("upstream_unreachable", True)


async def test_a_plain_map_event_function_and_a_completed_status(serve_app):
    def map_event(event: UpstreamEvent) -> dict[str, Any] | None:
        payload = event.json()
        if payload.get("skip"):
            return None
        return {"status": "completed"} if payload.get("end") else {"progress": payload["n"]}

    events = [{"n": 1}, {"skip": True}, {"n": 2}, {"end": True}, {"n": 3}]
    with serve_app(fal_app(events)) as server:
        states = await run_states(RemoteDeployment(server.url + "/stream", map_event=map_event))
    assert [state.type.value for state in states] == [
        "run",
        "progress",
        "progress",
        "result",
        "done",
    ]
    assert [state.progress.current for state in states[1:3] if state.progress] == [1, 2]
    assert states[3].results == []


def test_a_plain_map_event_function_is_accepted():
    deployment = RemoteDeployment("http://upstream/x", map_event=lambda event: None)
    assert deployment.mapping.map_event(UpstreamEvent("{}")) is None
    assert deployment.cancel_url is None


def ikstream_like(mode: str) -> tuple[Starlette, list[tuple[str, str | None]]]:
    """Speaks fastapi-ikstream's format; its first stream closes early, then ``mode`` says
    how it answers the resume: ``ok``, ``busy`` (503 once, then ok), ``new_run``, ``reset``
    or ``cancelled``. Notes each request as ``(method, Last-Event-ID)``."""
    seen: list[tuple[str, str | None]] = []

    def event(kind: str, seq: int, run_id: str = "r_up", **fields: Any) -> str:
        data = json.dumps({"type": kind, "run_id": run_id, "seq": seq, **fields})
        return f"id: {run_id}:{seq}\nevent: {kind}\ndata: {data}\n\n"

    async def stream(request: Request) -> Response:
        last = request.headers.get("last-event-id")
        seen.append((request.method, last))
        headers = {"X-Run-Id": "r_up"}
        if last is None:
            text = event("run", 1, status="received") + event("progress", 2, status="running")
        elif mode == "busy" and len(seen) == 2:
            return JSONResponse({"detail": "busy"}, status_code=503)
        elif mode == "new_run":
            headers = {"X-Run-Id": "r_other"}
            text = event("run", 1, "r_other", status="received")
        elif mode == "reset":
            text = event("reset", 0, first_seq=5)
        elif mode == "cancelled":
            text = event("cancelled", 3, status="cancelled", error={"code": "c", "message": "bye"})
        else:  # replays the start, as a careless upstream might: skipped by id
            text = event("progress", 2, status="running")
            text += event("result", 3, status="completed", results=[{"DATA_DICT": 1}])
        return Response(text, media_type="text/event-stream", headers=headers)

    async def cancel(request: Request) -> Response:
        seen.append((request.method, request.path_params["run_id"]))
        return JSONResponse({}, status_code=202)

    routes = [
        Route("/api/x/stream", stream, methods=["POST"]),
        Route("/api/x/runs/{run_id}", cancel, methods=["DELETE"]),
    ]
    return Starlette(routes=routes), seen


@pytest.mark.parametrize(
    ("mode", "kinds", "code", "requests"),
    [
        ("ok", ["run", "progress", "result", "done"], None, [("POST", None), ("POST", "r_up:2")]),
        (
            "busy",
            ["run", "progress", "result", "done"],
            None,
            [("POST", None), ("POST", "r_up:2"), ("POST", "r_up:2")],
        ),
        (
            "new_run",
            ["run", "progress", "failed", "done"],
            "upstream_incomplete",
            [("POST", None), ("POST", "r_up:2"), ("DELETE", "r_other"), ("DELETE", "r_up")],
        ),
        (
            "reset",
            ["run", "progress", "failed", "done"],
            "upstream_incomplete",
            [("POST", None), ("POST", "r_up:2"), ("DELETE", "r_up")],
        ),
        (
            "cancelled",
            ["run", "progress", "failed", "done"],
            "upstream_cancelled",
            [("POST", None), ("POST", "r_up:2")],
        ),
    ],
)
async def test_resuming_an_ikstream_upstream(serve_app, mode, kinds, code, requests):
    app, seen = ikstream_like(mode)
    with serve_app(app) as server:
        remote = RemoteDeployment(server.url + "/api/x/stream", reconnect_delay=0.01)
        states = await run_states(remote)
    assert [state.type.value for state in states] == kinds
    if code is not None:
        assert states[2].error is not None
        assert states[2].error.code == code
    assert seen == requests


def test_default_body_sends_the_request_back_as_it_came():
    class Prompt(BaseModel):
        prompt: str

    assert default_body(Prompt(prompt="a cat"), {}) == {"prompt": "a cat"}
    assert default_body(["x"], {"task_name": "infer", "k": 1}) == {
        "inputs": ["x"],
        "parameters": {"k": 1},
        "task_name": "infer",
    }
    assert default_body(None, {}) == {"inputs": [], "parameters": {}}


@pytest.mark.parametrize(
    ("blocked", "module", "extra"),
    [
        ("httpx_sse", "fastapi_ikstream.remote", "remote"),
        ("prometheus_client", "fastapi_ikstream.metrics", "metrics"),
    ],
)
def test_a_missing_extra_names_the_extra_to_install(blocked, module, extra):
    code = f"import sys; sys.modules[{blocked!r}] = None; import {module}"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    assert "MissingExtraError" in proc.stderr
    assert f'pip install "fastapi-ikstream[{extra}]"' in proc.stderr


def test_without_opentelemetry_spans_do_nothing():
    code = (
        "import sys, fastapi_ikstream\n"  # FastAPI itself imports opentelemetry here
        "sys.modules['opentelemetry'] = None\n"
        "from fastapi_ikstream.tracing import RunSpans\n"
        "spans = RunSpans(); spans.start('gen', 'r_1'); spans.end('r_1', 'failed', 'x')\n"
        "print(spans.enabled, spans.open_spans)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.split() == ["False", "0"]
