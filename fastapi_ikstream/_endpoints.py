"""The work behind the router's endpoints, one method per endpoint.

The FastAPI functions in `_register` only declare parameters (what OpenAPI shows and what
FastAPI validates) and call these methods with what they received: the caller, the
validated input, the negotiated media type. Nothing here runs for a request that failed
auth or validation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse

from ._admission import Admission, quota_refused
from ._cursor import Cursor, parse_event_id
from ._errors import store_http_error
from ._exceptions import (
    QuotaExceededError,
    RunNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from ._identity import owner_of
from ._models import EventType, RunState
from ._openapi import RunCreated, RunSnapshot
from ._response import EventStreamResponse
from ._run import StreamingRun
from ._runs import RunManager
from ._store import RunInfo, RunStore

__all__ = ["EventsQuery", "RouterCore", "not_found"]

MakeRun = Callable[[Any], StreamingRun]


@dataclass(frozen=True, slots=True)
class EventsQuery:
    """Where a reader of ``GET {path}/runs/{run_id}/events`` asks to start.

    Attributes:
        last_event_id: its ``Last-Event-ID`` (header, or query for clients that cannot set it).
        after_seq: its ``after_seq`` query; it wins over ``last_event_id``.
    """

    last_event_id: str | None
    after_seq: int | None

    def seq_for(self, run_id: str) -> int:
        """The seq to stream after: 0 unless an id of this run (or a bare seq) says more."""
        if self.after_seq is not None:
            return self.after_seq
        parsed = parse_event_id(self.last_event_id)
        if parsed is not None and parsed.run_id in (None, run_id):
            return parsed.seq
        return 0


def not_found() -> HTTPException:
    """The 404 for a run that is unknown, expired, or not the caller's."""
    return HTTPException(404, detail={"error": "run_not_found", "message": "No such run."})


def _shutting_down() -> HTTPException:
    return HTTPException(
        503,
        detail={"error": "shutting_down", "message": "The server is shutting down; try again."},
        headers={"Retry-After": "1"},
    )


class RouterCore:
    """One router's endpoints, over its manager, store and admission.

    Args:
        manager: drives the runs.
        admission: the router's limits.
        keep_alive: seconds of silence before a keep-alive; 0 disables.
        retry: SSE ``retry:`` in milliseconds, or None.
        named_events: write the SSE ``event:`` line (False: unnamed events).
    """

    def __init__(
        self,
        manager: RunManager,
        admission: Admission,
        *,
        keep_alive: float,
        retry: int | None,
        named_events: bool = True,
    ) -> None:
        self.manager = manager
        self.store: RunStore = manager.store
        self.admission = admission
        self.keep_alive = keep_alive
        self.retry = retry
        self.named_events = named_events

    # -- shared steps ----------------------------------------------------------------------

    async def owned_info(self, run_id: str, principal: Any) -> RunInfo:
        """The run's info if the caller may see it.

        Raises:
            HTTPException: 404 (unknown, expired or someone else's); 503 (store down).
        """
        try:
            info = await self.store.get_info(run_id)
        except StoreError as exc:
            raise store_http_error(exc) from exc
        if info is None or (info.principal is not None and info.principal != owner_of(principal)):
            raise not_found()
        return info

    async def create(
        self, request: Request, principal: Any, run: StreamingRun, *, attached: bool
    ) -> None:
        """Create and start ``run`` for the caller; its source is closed if it cannot start.

        Raises:
            HTTPException: 429 (the caller's unfinished runs are at the bound), 503 (store).
        """
        try:
            await self.manager.create(
                run,
                owner=owner_of(principal),
                quota_key=self.admission.key(request, principal),
                max_active=self.admission.max_active,
                attached=attached,
            )
        except QuotaExceededError as exc:
            await _close_source(run)
            n = exc.limit
            raise quota_refused(
                "too_many_runs",
                f"At most {n} run{'s' if n != 1 else ''} at once: wait for one to finish.",
            ) from exc
        except StoreUnavailableError as exc:
            await _close_source(run)
            raise store_http_error(exc) from exc
        except StoreError as exc:
            await _close_source(run)
            raise HTTPException(
                503,
                detail={"error": "store_full", "message": "Too many runs in progress."},
                headers={"Retry-After": "5"},
            ) from exc

    async def open_stream(
        self,
        key: str,
        at: Cursor,
        media_type: str,
        headers: dict[str, str],
        *,
        counted: bool = False,
    ) -> EventStreamResponse:
        """Stream the run ``at`` names after its seq, as one of the open streams of ``key``.

        ``key``: the caller's (`Admission.key`). ``counted``: the caller's stream was counted
        in already (`stream` does it before it creates the run); from here on this method
        gives it back.
        """
        run_id, after_seq = at.run_id, at.seq
        assert run_id is not None
        if not counted:
            self.admission.open_stream(key)
        try:
            subscription = self.store.subscribe(run_id, after_seq)
            await self.manager.reader_joined(run_id)
        except RunNotFoundError as exc:
            self.admission.close_stream(key)
            raise not_found() from exc
        except BaseException:
            self.admission.close_stream(key)
            raise

        observer = self.manager.observer
        on_sent = None
        if observer is not None:
            observer.stream_opened(run_id, resumed=after_seq > 0)

            def on_sent(events: int, nbytes: int) -> None:
                observer.sent(run_id, events, nbytes)

        async def on_close() -> None:
            self.admission.close_stream(key)
            if observer is not None:
                observer.stream_closed(run_id)
            await self.manager.reader_left(run_id)

        return EventStreamResponse(
            subscription,
            media_type=media_type,
            keep_alive=self.keep_alive,
            retry=self.retry,
            headers={**headers, "X-Run-Id": run_id},
            on_close=on_close,
            registry=self.manager.streams,
            named_events=self.named_events,
            on_sent=on_sent,
        )

    def check_accepting(self) -> None:
        """Raises a 503 while the server shuts down."""
        if not self.manager.accepting:
            raise _shutting_down()

    # -- endpoints -------------------------------------------------------------------------

    async def stream(
        self, request: Request, payload: Any, principal: Any, make_run: MakeRun, media_type: str
    ) -> Response:
        """``POST``/``GET {path}/stream``: resume the run ``Last-Event-ID`` names, or start one."""
        self.check_accepting()
        cursor = parse_event_id(request.headers.get("last-event-id"))
        if cursor is not None and cursor.run_id is not None:
            return await self.resume(request, principal, cursor, media_type)
        headers = await self.admission.admit_run(request, principal)
        # The stream quota before the run: a stream refused after its run was created would
        # leave an attached run that no reader ever joins, holding its slot to the timeout.
        key = self.admission.key(request, principal)
        self.admission.open_stream(key)
        try:
            run = make_run(payload)
            await self.create(request, principal, run, attached=True)
        except BaseException:
            self.admission.close_stream(key)
            raise
        try:
            return await self.open_stream(
                key, Cursor(run.run_id, 0), media_type, headers, counted=True
            )
        except BaseException:
            run.cancel("the stream could not be opened")
            raise

    async def resume(
        self, request: Request, principal: Any, cursor: Cursor, media_type: str
    ) -> Response:
        """Continue the run ``cursor`` names: 404 if unknown, 204 once it has ended."""
        assert cursor.run_id is not None
        info = await self.owned_info(cursor.run_id, principal)
        await self.admission.admit_resume(request, principal)
        if info.finished and cursor.seq == info.last_seq:
            return Response(status_code=204)
        return await self.open_stream(
            self.admission.key(request, principal), cursor, media_type, {}
        )

    async def run_to_end(
        self, request: Request, payload: Any, principal: Any, make_run: MakeRun
    ) -> Response:
        """``POST {path}``: run, wait for the end, answer the final state as JSON.

        The run is cancelled at once if the client goes away (nothing could resume it).
        The answer is sent once the run's end is stored: its slot is free by then.
        """
        self.check_accepting()
        headers = await self.admission.admit_run(request, principal)
        run = make_run(payload)
        await self.create(request, principal, run, attached=True)
        task = run.task
        assert task is not None
        watcher = asyncio.get_running_loop().create_task(_wait_disconnect(request))
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                run.cancel("the client went away")
                await asyncio.wait({task})
        finally:
            watcher.cancel()
        # The answer comes once the store has the run's end too, so the caller's slot is
        # free for the next request it sends on reading it.
        with contextlib.suppress(StoreError):  # the store logged it; the answer still holds
            await self.manager.store.flush(run.run_id)
        final = run.terminal_state
        return Response(
            final.to_json() if final is not None else "{}",
            status_code=_final_status(final),
            media_type="application/json",
            headers=headers,
        )

    async def start_detached(
        self, request: Request, payload: Any, principal: Any, make_run: MakeRun
    ) -> JSONResponse:
        """``POST {path}/runs``: start a run that no reader's departure cancels (201)."""
        self.check_accepting()
        headers = await self.admission.admit_run(request, principal)
        run = make_run(payload)
        await self.create(request, principal, run, attached=False)
        base = request.url.path.rstrip("/")  # a path: no Host header in what we answer
        body = RunCreated(
            run_id=run.run_id,
            events_url=f"{base}/{run.run_id}/events",
            state_url=f"{base}/{run.run_id}",
            cancel_url=f"{base}/{run.run_id}",
        )
        return JSONResponse(body.model_dump(), status_code=201, headers=headers)

    async def events(
        self, request: Request, run_id: str, query: EventsQuery, principal: Any, media_type: str
    ) -> Response:
        """``GET {path}/runs/{run_id}/events``: stream a run from the start or a cursor."""
        info = await self.owned_info(run_id, principal)
        cursor = query.seq_for(run_id)
        if cursor > 0:
            await self.admission.admit_resume(request, principal)
        if info.finished and cursor == info.last_seq:
            return Response(status_code=204)
        self.check_accepting()  # a stream opened now would hold the shutdown up
        key = self.admission.key(request, principal)
        return await self.open_stream(key, Cursor(run_id, cursor), media_type, {})

    async def state(self, run_id: str, principal: Any) -> RunSnapshot:
        """``GET {path}/runs/{run_id}``: the run's latest state."""
        info = await self.owned_info(run_id, principal)
        return RunSnapshot(
            run_id=run_id,
            status=info.status,
            last_seq=info.last_seq,
            finished=info.finished,
            latest=RunState.model_validate_json(info.latest) if info.latest else None,
        )

    async def cancel(self, run_id: str, principal: Any) -> JSONResponse:
        """``DELETE {path}/runs/{run_id}``: 202 when a cancel was asked, 200 if it had ended."""
        info = await self.owned_info(run_id, principal)
        try:
            accepted = await self.manager.cancel(run_id, "cancelled by the client")
        except StoreError as exc:
            raise store_http_error(exc) from exc
        if accepted:
            await asyncio.sleep(0)
        snapshot = RunSnapshot(
            run_id=run_id, status=info.status, last_seq=info.last_seq, finished=not accepted
        )
        return JSONResponse(
            snapshot.model_dump(exclude_none=True), status_code=202 if accepted else 200
        )


def _final_status(final: RunState | None) -> int:
    if final is None or final.type is EventType.RESULT:
        return 200
    if final.type is EventType.CANCELLED:
        return 409
    code = final.error.code if final.error is not None else None
    return 504 if code == "timeout" else 502


async def _wait_disconnect(request: Request) -> None:
    """Return once the client has gone away (the body has been read by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _close_source(run: StreamingRun) -> None:
    """Close the source of a run that will never start (an async generator, say)."""
    aclose = getattr(run.source, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
