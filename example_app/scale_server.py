"""A server that speaks Ikomia SCALE's deployment protocol, running the example workflow.

It lets the example app (and the tests) drive the real ``ikomia-client`` end to end without
an Ikomia account: one FastAPI app serves both SCALE's token endpoint and the deployment.

- ``GET /v1/projects/jwt/?endpoint=...&storage=true`` with ``Authorization: Token <token>``
  answers ``{"access_token", "expires_in", "token_type", "scope", "refresh_token",
  "id_token"}``. The ``id_token`` is an opaque random string that the deployment routes
  accept as ``Authorization: Bearer <id_token>`` until it expires.
- ``GET {prefix}/workflow``: one task (the workflow's ``task_name``) with its parameters.
- ``PUT {prefix}/api/run?advice=true``: starts a run in a background task; answers
  ``{"uuid", "state": "PENDING", "eta", "next_poll_in", "next_poll_long"}``.
- ``GET {prefix}/api/results/{uuid}?advice=true&long=...``: **202** with ``{"uuid", "state",
  "eta", "next_poll_in", "next_poll_long"}`` while it runs (a long poll is held until the run
  changes or ``hold`` seconds pass), **200** with ``{"state": "SUCCESS", "eta": [0, 0],
  "results": [...]}`` when done, **520** with ``{"message"}`` when the workflow failed.

Run it with ``python -m example_app.scale_server --port 8001``; then point the client at it
with ``IKOMIA_URL=http://127.0.0.1:8001`` and the deployment URL
``http://127.0.0.1:8001/deployment`` (any ``IKOMIA_TOKEN`` unless ``--token`` is given).
"""

import argparse
import asyncio
import contextlib
import os
import secrets
import time
import uuid as uuid_lib
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from example_app.workflow import FaceCannyWorkflow
from fastapi_ikstream import Deployment, EventType, StreamingRun

__all__ = ["ScaleJob", "ScaleState", "create_scale_app", "main"]

TOKEN_LIFETIME_S = 36000
MAX_HOLD_S = 20.0

Auth = Annotated[str | None, Header()]


class TaskParameters(BaseModel):
    """One ``parameters`` entry of a run request."""

    task_name: str
    task_index: int = 0
    parameters: dict[str, str] = Field(default_factory=dict)


class RunPayload(BaseModel):
    """The body of ``PUT /api/run``, as ``ikomia-client`` sends it."""

    inputs: list[dict[str, Any]] = Field(default_factory=list)
    outputs: list[dict[str, Any]] = Field(default_factory=list)
    parameters: list[TaskParameters] = Field(default_factory=list)


class ScaleJob:
    """One run: its state word, ETA, and finally its results or failure message."""

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.state = "PENDING"
        self.eta: list[int | None] = [None, None]
        self.results: list[dict[str, Any]] | None = None
        self.message: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    @property
    def done(self) -> bool:
        """True once the run succeeded or failed."""
        return self.results is not None or self.message is not None

    def touch(self) -> None:
        """Wake every request waiting for this run to change."""
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_change(self, timeout: float) -> None:
        """Wait until the run changes, or ``timeout`` seconds."""
        if self.done or timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.changed.wait()


class ScaleState:
    """The server's settings and runs; ``app.state.scale``.

    Attributes:
        fail_next: an HTTP status (e.g. 503) that the next ``PUT /api/run`` answers with,
            once, to stand for an outage; None for normal service.
        token_delay: seconds the token endpoint waits before answering.
    """

    def __init__(
        self,
        workflow: Deployment,
        *,
        token: str | None,
        task_name: str,
        parameters: Mapping[str, str],
        poll_ms: int,
        long_poll: bool,
        hold: float,
        max_jobs: int,
        fail_next: int | None,
        token_delay: float,
    ) -> None:
        self.workflow = workflow
        self.token = token
        self.task_name = task_name
        self.parameters = dict(parameters)
        self.poll_ms = poll_ms
        self.long_poll = long_poll
        self.hold = min(max(hold, 0.0), MAX_HOLD_S)
        self.max_jobs = max_jobs
        self.fail_next = fail_next
        self.token_delay = token_delay
        self.jobs: OrderedDict[str, ScaleJob] = OrderedDict()
        self.id_tokens: dict[str, float] = {}

    def issue_id_token(self) -> str:
        """A new opaque id token, valid for ``TOKEN_LIFETIME_S`` seconds."""
        now = time.time()
        self.id_tokens = {tok: exp for tok, exp in self.id_tokens.items() if exp > now}
        token = secrets.token_urlsafe(32)
        self.id_tokens[token] = now + TOKEN_LIFETIME_S
        return token

    def bearer_ok(self, authorization: str | None) -> bool:
        """Whether ``authorization`` is ``Bearer <an id token this server issued>``."""
        scheme, _, value = (authorization or "").partition(" ")
        expires = self.id_tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        return expires is not None and expires > time.time()

    def advice(self, job: ScaleJob) -> dict[str, Any]:
        """The 202 body: state, ETA and polling advice."""
        return {
            "uuid": job.uuid,
            "state": job.state,
            "eta": job.eta,
            "next_poll_in": self.poll_ms,
            "next_poll_long": self.long_poll,
        }

    def add_job(self, job: ScaleJob) -> None:
        """Keep ``job``; forget the oldest finished runs beyond ``max_jobs``."""
        self.jobs[job.uuid] = job
        for key in [key for key, old in self.jobs.items() if old.done]:
            if len(self.jobs) <= self.max_jobs:
                break
            del self.jobs[key]


async def _drive(
    state: ScaleState, job: ScaleJob, inputs: list[Any], params: dict[str, str]
) -> None:
    """Run the workflow through `StreamingRun` and mirror its states into ``job``."""
    try:
        source = state.workflow.open_run(inputs, params)
        run = StreamingRun(source, raise_on_error=False, keep_alive=0)
        async for event in run.aiter_states():
            if event.type is EventType.RESULT:
                job.state, job.eta, job.results = "SUCCESS", [0, 0], event.results or []
            elif event.type in (EventType.FAILED, EventType.CANCELLED):
                job.state, job.eta = "FAILURE", [0, 0]
                job.message = event.error.message if event.error else "Workflow run failed"
            elif event.type is EventType.PROGRESS:
                job.state = event.state or "STARTED"
                if event.eta is not None:
                    job.eta = list(event.eta)
            else:
                continue
            job.touch()
    except Exception:
        job.state, job.eta, job.message = "FAILURE", [0, 0], "Workflow run failed"
        job.touch()


def _message(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


def create_scale_app(
    workflow: Deployment | None = None,
    *,
    token: str | None = None,
    task_name: str | None = None,
    prefix: str = "",
    poll_ms: int = 50,
    long_poll: bool = True,
    hold: float = 10.0,
    max_jobs: int = 1000,
    fail_next: int | None = None,
    token_delay: float = 0.0,
) -> FastAPI:
    """A FastAPI app serving ``workflow`` over Ikomia SCALE's HTTP protocol.

    Args:
        workflow: any `fastapi_ikstream.Deployment`. Default: a new `FaceCannyWorkflow`.
        token: the API token the JWT endpoint accepts (``Authorization: Token <token>``);
            None accepts any non-empty token. Default None.
        task_name: the task's name in ``GET /workflow``. Default: the workflow's
            ``task_name`` attribute, else ``"infer"``.
        prefix: path of the deployment routes, e.g. ``"/deployment"``; the JWT endpoint is
            always at ``/v1/projects/jwt/``. Default ``""`` (the root).
        poll_ms: ``next_poll_in`` advice, in milliseconds. Default 50.
        long_poll: advise long polling (``next_poll_long``). Default True.
        hold: seconds a long poll is held at most while the run does not change; capped at
            20 (the client gives up after 30). Default 10.0.
        max_jobs: finished runs kept for polling; the oldest are forgotten first. Default 1000.
        fail_next: an HTTP status the next ``PUT /api/run`` answers with, once (also settable
            later as ``app.state.scale.fail_next``). Default None.
        token_delay: seconds the token endpoint waits before answering, to stand for a slow
            SCALE service. Default 0.0.

    Returns:
        The app; its settings and runs are on ``app.state.scale`` (a `ScaleState`).
    """
    deployment: Deployment = workflow if workflow is not None else FaceCannyWorkflow()
    name = task_name or getattr(deployment, "task_name", None) or "infer"
    state = ScaleState(
        deployment,
        token=token,
        task_name=name,
        parameters=getattr(deployment, "default_parameters", {}),
        poll_ms=poll_ms,
        long_poll=long_poll,
        hold=hold,
        max_jobs=max_jobs,
        fail_next=fail_next,
        token_delay=token_delay,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        tasks = [job.task for job in state.jobs.values() if job.task and not job.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    app = FastAPI(title="Ikomia SCALE protocol server", lifespan=lifespan)
    app.state.scale = state

    @app.get("/v1/projects/jwt/")
    async def jwt(
        endpoint: Annotated[str, Query(min_length=1)],
        storage: bool = False,
        authorization: Auth = None,
    ) -> JSONResponse:
        scheme, _, value = (authorization or "").partition(" ")
        value = value.strip()
        accepted = scheme.lower() == "token" and bool(value)
        if accepted and state.token is not None:
            accepted = secrets.compare_digest(value.encode(), state.token.encode())
        if state.token_delay > 0:
            await asyncio.sleep(state.token_delay)
        if not accepted:
            return _message(401, "Invalid token.")
        return JSONResponse(
            {
                "access_token": secrets.token_urlsafe(24),
                "expires_in": TOKEN_LIFETIME_S,
                "token_type": "Bearer",
                "scope": "openid consume" + (" storage" if storage else ""),
                "refresh_token": secrets.token_urlsafe(24),
                "id_token": state.issue_id_token(),
            }
        )

    router = APIRouter(prefix=prefix.rstrip("/"))

    @router.get("/workflow")
    async def get_workflow(authorization: Auth = None) -> JSONResponse:
        if not state.bearer_ok(authorization):
            return _message(401, "Authentication required.")
        parameters = [{"name": key, "value": value} for key, value in state.parameters.items()]
        return JSONResponse(
            {
                "api": {"version": "0.15.0"},
                "metadata": {"name": state.task_name, "description": "", "keywords": ""},
                "tasks": [
                    {
                        "task_id": 0,
                        "task_data": {
                            "name": state.task_name,
                            "parameters": parameters,
                            "inputs": [{"name": "IODataType.IMAGE"}],
                            "outputs": [
                                {"name": "IODataType.IMAGE"},
                                {"name": "IODataType.IMAGE"},
                                {"name": "IODataType.OBJECT_DETECTION"},
                                {"name": "IODataType.DATA_DICT"},
                            ],
                        },
                    }
                ],
                "connections": [
                    {"source_id": -1, "source_index": 0, "target_id": 0, "target_index": 0}
                ],
            }
        )

    @router.put("/api/run")
    async def put_run(
        payload: RunPayload,
        advice: bool = False,
        authorization: Auth = None,
    ) -> JSONResponse:
        if not state.bearer_ok(authorization):
            return _message(401, "Authentication required.")
        if state.fail_next is not None:
            status, state.fail_next = state.fail_next, None
            return _message(status, "The deployment is not available.")
        params: dict[str, str] = {}
        for entry in payload.parameters:
            if entry.task_name != state.task_name:
                return _message(400, f"Unknown task {entry.task_name[:80]!r}.")
            params.update(entry.parameters)
        for output in payload.outputs:
            if output.get("task_name") != state.task_name:
                return _message(400, "Unknown output task.")
        job = ScaleJob(uuid_lib.uuid4().hex)
        state.add_job(job)
        job.task = asyncio.get_running_loop().create_task(
            _drive(state, job, payload.inputs, params)
        )
        await job.wait_change(0.25)  # the workflow's first update carries its ETA
        if not advice:
            return JSONResponse(job.uuid)
        return JSONResponse({**state.advice(job), "state": "PENDING"})

    @router.get("/api/results/{uuid}")
    async def get_results(
        uuid: str,
        advice: bool = False,
        long: bool = False,
        authorization: Auth = None,
    ) -> JSONResponse:
        if not state.bearer_ok(authorization):
            return _message(401, "Authentication required.")
        job = state.jobs.get(uuid)
        if job is None:
            return _message(404, "Unknown run.")
        if long:
            await job.wait_change(state.hold)
        if job.message is not None:
            return _message(520, job.message)
        if job.results is not None:
            return JSONResponse({"state": "SUCCESS", "eta": [0, 0], "results": job.results})
        body = state.advice(job)
        if not advice:
            body = {"uuid": job.uuid, "state": job.state, "eta": job.eta}
        return JSONResponse(body, status_code=202)

    app.include_router(router)
    return app


def main(argv: list[str] | None = None) -> None:
    """Serve the example workflow over SCALE's protocol: ``python -m example_app.scale_server``."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--prefix", default="/deployment", help="path of the deployment routes")
    parser.add_argument(
        "--token",
        default=os.environ.get("SCALE_SERVER_TOKEN"),
        help="the only API token accepted (default: $SCALE_SERVER_TOKEN, else any)",
    )
    parser.add_argument("--poll-ms", type=int, default=200, help="next_poll_in advice (ms)")
    args = parser.parse_args(argv)
    base = f"http://{args.host}:{args.port}"
    print(f"IKOMIA_URL={base}  ENDPOINT_URL={base}{args.prefix.rstrip('/')}", flush=True)
    app = create_scale_app(token=args.token, prefix=args.prefix, poll_ms=args.poll_ms)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
