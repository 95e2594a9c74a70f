"""The example app: a web page that streams a real image workflow through fastapi-ikstream.

Run it with ``python -m example_app`` (or ``uvicorn example_app.main:app``) and open
http://127.0.0.1:8000. The page picks a photograph (or takes an upload), runs the workflow
and shows the run's status, progress, ETA, logs, output images and detections as they stream.

Which deployment runs the workflow:

- By default, the embedded one: `example_app.workflow.FaceCannyWorkflow`, in this process
  (decode → resize → face and cat detection → Canny edges → encode, each stage in a worker
  thread so the event loop stays free).
- When both ``ENDPOINT_URL`` and ``IKOMIA_TOKEN`` are set in the environment, an Ikomia
  SCALE deployment instead, through `fastapi_ikstream.ikomia.IkomiaDeployment` and the real
  ``ikomia-client`` (``IKOMIA_URL`` names the token service, as ``ikomia-client`` reads
  it; ``IKOMIA_TASK_NAME`` may name the task to run, else the workflow's final task runs).
  ``python -m example_app.scale_server`` serves the same workflow over that protocol::

      python -m example_app.scale_server --port 8001 &
      IKOMIA_URL=http://127.0.0.1:8001 ENDPOINT_URL=http://127.0.0.1:8001/deployment \\
          IKOMIA_TOKEN=demo python -m example_app

Endpoints:

- ``GET /``: the page; ``GET /static/...``: its script and style sheet.
- ``POST /api/login`` with ``{"name": "..."}``: a demo login. It answers a short-lived
  HS256 JWT (``access_token``), signed with a secret made at random when the app is
  created, so tokens do not survive a restart, and sets the same token as an ``HttpOnly``,
  ``SameSite=Strict`` cookie (``ikstream_token``, path ``/api``) so that a page's
  ``EventSource`` (which cannot send headers) is authenticated too. Limited per client
  address. A real app would authenticate its users here. ``POST /api/logout`` clears the
  cookie.
- ``GET /docs`` and ``GET /redoc``: Swagger UI and ReDoc, served from the assets that the
  ``fastapi-offline`` package ships, so they work without internet access.
- ``GET /api/config``: what the page shows about the deployment and the limits.
- ``GET /api/samples``: the sample photographs; ``GET /api/samples/{name}``: one of them
  (``?thumb=true`` for a small JPEG).
- ``/api/detect/...``: the package router (see `fastapi_ikstream.create_router`): ``POST
  /api/detect/stream`` runs and streams, ``DELETE /api/detect/runs/{id}`` cancels,
  ``GET /api/detect/ikstream.js`` is the browser module. The token from the login is
  required, as ``Authorization: Bearer …`` or as the login's cookie
  (`fastapi_ikstream.security.JWTBearer`); each user may start ``rate_limit`` runs
  (default ``"30/minute"``) with at most ``max_concurrent_runs`` (default 2) at once.
- ``GET /metrics``: the router's Prometheus metrics (`fastapi_ikstream.metrics`): runs
  started and finished, streams, events and bytes sent, resumes, refusals. A real app
  would put it behind its own auth or on an internal port.
"""

import asyncio
import contextlib
import functools
import os
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import cv2
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field

from example_app.workflow import SAMPLES, FaceCannyWorkflow
from fastapi_ikstream import create_router
from fastapi_ikstream.errors import validation_exception_handler
from fastapi_ikstream.metrics import PrometheusMetrics
from fastapi_ikstream.ratelimit import RateLimit
from fastapi_ikstream.security import JWTBearer, create_access_token

__all__ = ["API_PATH", "COOKIE_NAME", "ObservedDeployment", "app", "create_app"]

API_PATH = "/api/detect"
COOKIE_NAME = "ikstream_token"
"""The login's cookie: the token again, for ``EventSource`` requests (``HttpOnly``)."""
AUDIENCE = "fastapi-ikstream-example"
ISSUER = "fastapi-ikstream-example"
STATIC = Path(__file__).parent / "static"

CAPTIONS = {
    "astronaut": "Astronaut (a face)",
    "chelsea": "Chelsea (a cat)",
    "coffee": "Coffee",
    "rocket": "Rocket",
}
_MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_THUMB_SIDE = 160


class ObservedDeployment:
    """Wraps a deployment: adds default parameters and counts runs by how they ended.

    The counts (``started``, ``completed``, ``failed``, ``cancelled``) show what the server
    saw, e.g. that closing the page's connection really cancelled the run.

    Args:
        inner: the deployment that does the work.
        defaults: parameters added to each run unless the request gives them.
    """

    def __init__(self, inner: Any, defaults: Mapping[str, Any] | None = None) -> None:
        self.inner = inner
        self.defaults = dict(defaults or {})
        self.counts: Counter[str] = Counter()

    def open_run(self, inputs: Any, parameters: Mapping[str, Any]) -> Any:
        """Open a run of the inner deployment, observed."""
        source = self.inner.open_run(inputs, {**self.defaults, **parameters})
        if hasattr(source, "__aiter__"):
            return self._iterate(source)
        return lambda on_progress: self._call(source, on_progress)

    async def _iterate(self, source: Any) -> AsyncIterator[Any]:
        async with self._observe():
            try:
                async for update in source:
                    yield update
            finally:
                aclose = getattr(source, "aclose", None)
                if aclose is not None:
                    await aclose()

    async def _call(self, source: Any, on_progress: Any) -> Any:
        async with self._observe():
            return await source(on_progress)

    @contextlib.asynccontextmanager
    async def _observe(self) -> AsyncIterator[None]:
        self.counts["started"] += 1
        try:
            yield
        except (asyncio.CancelledError, GeneratorExit):
            self.counts["cancelled"] += 1
            raise
        except Exception:
            self.counts["failed"] += 1
            raise
        self.counts["completed"] += 1

    async def aclose(self) -> None:
        """Close the inner deployment, if it holds resources (e.g. an HTTP client)."""
        aclose = getattr(self.inner, "aclose", None)
        if aclose is not None:
            await aclose()


class Login(BaseModel):
    """The demo login's body."""

    name: str = Field(default="guest", min_length=1, max_length=40, pattern=r"^[A-Za-z0-9 _.@-]+$")


class Token(BaseModel):
    """The demo login's answer."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int
    subject: str


class Sample(BaseModel):
    """One sample photograph."""

    name: str
    caption: str
    url: str
    thumbnail_url: str
    media_type: str


def _default_deployment(stage_delay_ms: int) -> tuple[Any, str]:
    url, token = os.environ.get("ENDPOINT_URL"), os.environ.get("IKOMIA_TOKEN")
    if url and token:
        from fastapi_ikstream.ikomia import IkomiaDeployment

        task = os.environ.get("IKOMIA_TASK_NAME") or None
        return ObservedDeployment(IkomiaDeployment(url, token=token, task_name=task)), "ikomia"
    defaults = {"stage_delay_ms": stage_delay_ms} if stage_delay_ms else {}
    return ObservedDeployment(FaceCannyWorkflow(), defaults), "embedded"


@functools.lru_cache(maxsize=len(SAMPLES))
def _thumbnail(name: str) -> bytes:
    image = cv2.imdecode(np.fromfile(SAMPLES[name], np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise RuntimeError(f"OpenCV could not decode the sample {name}")
    height, width = image.shape[:2]
    scale = _THUMB_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise RuntimeError("OpenCV could not encode a thumbnail")
    return data.tobytes()


def create_app(
    *,
    deployment: Any = None,
    stage_delay_ms: int = 0,
    rate_limit: str = "30/minute",
    max_concurrent_runs: int = 2,
    login_rate_limit: str = "30/minute",
    token_ttl: int = 900,
    keep_alive: float = 10.0,
    secure_cookie: bool = False,
) -> FastAPI:
    """Build the example app.

    Args:
        deployment: the deployment to run. Default: the embedded workflow, or an
            ``IkomiaDeployment`` when ``ENDPOINT_URL`` and ``IKOMIA_TOKEN`` are set. It is
            wrapped in an `ObservedDeployment`, kept as ``app.state.deployment``.
        stage_delay_ms: a pause before each stage of the embedded workflow, in milliseconds
            (0 to 2000), so that progress can be watched; ignored for other deployments.
            Default 0.
        rate_limit: runs a user may start, e.g. ``"30/minute"``. Default ``"30/minute"``.
        max_concurrent_runs: runs a user may have going at once. Default 2.
        login_rate_limit: demo logins per client address. Default ``"30/minute"``.
        token_ttl: lifetime of a demo token, in seconds. Default 900.
        keep_alive: seconds of silence before the stream sends a keep-alive. Default 10.0.
        secure_cookie: mark the login's cookie ``Secure`` (sent over HTTPS only), for an
            app served over HTTPS. Default False, so that it works on http://127.0.0.1.

    Returns:
        The FastAPI app. ``app.state`` holds ``deployment``, ``router``, ``metrics`` (its
        `PrometheusMetrics`) and ``mode`` (``"embedded"``, ``"ikomia"`` or ``"custom"``).
    """
    if deployment is None:
        observed, mode = _default_deployment(stage_delay_ms)
    else:
        observed, mode = ObservedDeployment(deployment), "custom"
    secret = secrets.token_urlsafe(48)
    auth = JWTBearer(
        secret=secret,
        algorithms=["HS256"],
        audience=AUDIENCE,
        issuer=ISSUER,
        cookie_name=COOKIE_NAME,
    )
    login_limit = RateLimit(login_rate_limit)
    metrics = PrometheusMetrics()
    router = create_router(
        observed,
        path=API_PATH,
        auth=auth,
        rate_limit=rate_limit,
        max_concurrent_runs=max_concurrent_runs,
        keep_alive=keep_alive,
        tags=["detect"],
        name="detect",
        metrics=metrics,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await observed.aclose()
            await login_limit.aclose()

    app = FastAPIOffline(
        title="fastapi-ikstream example",
        summary="Face, cat and edge detection on photographs, streamed as Server-Sent Events.",
        lifespan=lifespan,
    )
    # The app's own routes (the login) answer a body with NaN or 1e999 with a 422, too.
    app.add_exception_handler(RequestValidationError, validation_exception_handler)
    app.state.deployment = observed
    app.state.router = router
    app.state.metrics = metrics
    app.state.mode = mode
    app.include_router(router)
    app.include_router(metrics.router())
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def limit_logins(request: Request) -> None:
        await login_limit.hit(request)

    @app.post("/api/login", dependencies=[Depends(limit_logins)], tags=["demo"])
    async def login(response: Response, body: Login | None = None) -> Token:
        """A demo login: any name gets a short-lived token (a real app checks credentials).

        The token is in the body (for ``Authorization: Bearer``) and in an ``HttpOnly``,
        ``SameSite=Strict`` cookie (for ``EventSource``, which cannot send headers).
        """
        name = (body or Login()).name.strip() or "guest"
        subject = f"demo:{name}:{secrets.token_hex(4)}"
        token = create_access_token(
            {"sub": subject, "aud": AUDIENCE, "iss": ISSUER, "name": name},
            secret_or_key=secret,
            expires_in=token_ttl,
        )
        response.set_cookie(
            COOKIE_NAME,
            token,
            max_age=token_ttl,
            path="/api",
            httponly=True,
            samesite="strict",
            secure=secure_cookie,
        )
        return Token(access_token=token, expires_in=token_ttl, subject=subject)

    @app.post("/api/logout", status_code=204, tags=["demo"])
    async def logout(response: Response) -> None:
        """Clear the login's cookie."""
        response.delete_cookie(
            COOKIE_NAME, path="/api", httponly=True, samesite="strict", secure=secure_cookie
        )

    @app.get("/api/config", tags=["demo"])
    async def config() -> dict[str, Any]:
        """What the page shows: the deployment in use and the limits."""
        inner = observed.inner
        return {
            "api": API_PATH,
            "mode": mode,
            "deployment": getattr(inner, "url", None) or type(inner).__name__,
            "rate_limit": rate_limit,
            "max_concurrent_runs": max_concurrent_runs,
            "stage_delay_ms": stage_delay_ms if mode == "embedded" else 0,
        }

    @app.get("/api/samples", tags=["demo"])
    async def samples() -> list[Sample]:
        """The sample photographs shipped in scikit-image's wheel."""
        return [
            Sample(
                name=name,
                caption=CAPTIONS.get(name, name.capitalize()),
                url=f"/api/samples/{name}",
                thumbnail_url=f"/api/samples/{name}?thumb=true",
                media_type=_MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"),
            )
            for name, path in SAMPLES.items()
        ]

    @app.get(
        "/api/samples/{name}",
        tags=["demo"],
        response_class=Response,
        responses={404: {"description": "No such sample."}},
    )
    async def sample(name: str, thumb: Annotated[bool, Query()] = False) -> Response:
        """One sample photograph (``?thumb=true``: a JPEG at most 160 px on a side)."""
        path = SAMPLES.get(name)
        if path is None:
            raise HTTPException(404, detail="No such sample.")
        headers = {"Cache-Control": "public, max-age=3600"}
        if thumb:
            data = await asyncio.to_thread(_thumbnail, name)
            return Response(data, media_type="image/jpeg", headers=headers)
        media_type = _MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return FileResponse(path, media_type=media_type, headers=headers)

    return app


app = create_app()
"""The app with default settings, for ``uvicorn example_app.main:app``."""
