"""Prometheus metrics for routers and their runs (extra ``metrics``: ``prometheus-client``).

`PrometheusMetrics` owns a ``CollectorRegistry`` (its own by default) and has one method per
thing a router does; mount `PrometheusMetrics.asgi_app` (or include `PrometheusMetrics.router`)
where the scraper should find it. Every series has a ``router`` label (the router's name).

| metric                                    | type      | labels                        |
|-------------------------------------------|-----------|-------------------------------|
| ``ikstream_runs_started_total``           | counter   | router                        |
| ``ikstream_runs_finished_total``          | counter   | router, status                |
| ``ikstream_runs_in_progress``             | gauge     | router                        |
| ``ikstream_run_duration_seconds``         | histogram | router, status                |
| ``ikstream_time_to_first_event_seconds``  | histogram | router                        |
| ``ikstream_streams_opened_total``         | counter   | router                        |
| ``ikstream_streams_open``                 | gauge     | router                        |
| ``ikstream_events_sent_total``            | counter   | router                        |
| ``ikstream_sent_bytes_total``             | counter   | router                        |
| ``ikstream_resumes_total``                | counter   | router                        |
| ``ikstream_rejections_total``             | counter   | router, status_code, reason   |
| ``ikstream_store_errors_total``           | counter   | router                        |

`event_sent` is on the hot path (once per write to a reader): it adds to two plain ints, read
by a custom collector at scrape time, instead of taking a client-library counter's lock.

A run ended as ``orphaned`` (its worker stopped; a shared store) counts in
``ikstream_runs_finished_total{status="failed"}`` of the worker whose store swept it.

Metrics are per process: with several workers, scrape each (or use a push gateway).

Example::

    metrics = PrometheusMetrics()
    app.mount("/metrics", metrics.asgi_app())      # scrape /metrics/
    metrics.run_started("generate", run_id)
    metrics.run_finished("generate", "completed", 4.2, run_id)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import APIRouter, Response

from ._exceptions import MissingExtraError
from .tracing import RunSpans

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
        make_asgi_app,
    )
    from prometheus_client.core import CounterMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise MissingExtraError("metrics", "fastapi_ikstream.metrics") from exc

__all__ = ["DURATION_BUCKETS", "FIRST_EVENT_BUCKETS", "PrometheusMetrics"]

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
"""Default buckets of ``ikstream_run_duration_seconds``, in seconds."""

FIRST_EVENT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Default buckets of ``ikstream_time_to_first_event_seconds``, in seconds."""


class _SentCounts(Collector):
    """``ikstream_events_sent_total`` and ``ikstream_sent_bytes_total`` from plain ints."""

    def __init__(self) -> None:
        self.events: dict[str, int] = {}
        self.sent_bytes: dict[str, int] = {}

    def collect(self) -> Iterable[Metric]:
        events = CounterMetricFamily(
            "ikstream_events_sent", "Events written to stream readers.", labels=["router"]
        )
        for router, count in list(self.events.items()):
            events.add_metric([router], count)
        sent = CounterMetricFamily(
            "ikstream_sent_bytes",
            "Bytes of events written to stream readers.",
            labels=["router"],
        )
        for router, count in list(self.sent_bytes.items()):
            sent.add_metric([router], count)
        return [events, sent]


class PrometheusMetrics:
    """The metrics a router reports, in a Prometheus registry.

    Example::

        metrics = PrometheusMetrics()
        app.include_router(metrics.router())            # GET /metrics

    Args:
        registry: where the metrics go; default a new ``CollectorRegistry`` of its own.
        use_global_registry: register in prometheus-client's global ``REGISTRY`` instead
            (with the process and platform collectors). Only one instance may do so at a
            time: call `unregister` first to make another. Default False.
        duration_buckets: buckets of ``ikstream_run_duration_seconds``, in seconds.
            Default `DURATION_BUCKETS`.
        first_event_buckets: buckets of ``ikstream_time_to_first_event_seconds``, in
            seconds. Default `FIRST_EVENT_BUCKETS`.
        spans: OpenTelemetry spans per run: a `RunSpans`, True for a default one (no-op
            without ``opentelemetry-api``, or without an SDK set up), or False. Default True.

    Raises:
        ValueError: a metric of the same name is already in the registry.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        use_global_registry: bool = False,
        duration_buckets: Sequence[float] = DURATION_BUCKETS,
        first_event_buckets: Sequence[float] = FIRST_EVENT_BUCKETS,
        spans: RunSpans | bool = True,
    ) -> None:
        if registry is None:
            registry = REGISTRY if use_global_registry else CollectorRegistry()
        self.registry = registry
        self.spans: RunSpans | None = RunSpans() if spans is True else (spans or None)
        self._collectors: list[Any] = []
        r = ["router"]
        self._started = self._add(
            Counter("ikstream_runs_started", "Runs started.", r, registry=None)
        )
        self._finished = self._add(
            Counter(
                "ikstream_runs_finished",
                "Runs ended, by final status.",
                [*r, "status"],
                registry=None,
            )
        )
        self._in_progress = self._add(
            Gauge("ikstream_runs_in_progress", "Runs going on.", r, registry=None)
        )
        self._duration = self._add(
            Histogram(
                "ikstream_run_duration_seconds",
                "Seconds from a run's start to its end, by final status.",
                [*r, "status"],
                buckets=tuple(duration_buckets),
                registry=None,
            )
        )
        self._first_event = self._add(
            Histogram(
                "ikstream_time_to_first_event_seconds",
                "Seconds from a run's start to its first update from the deployment.",
                r,
                buckets=tuple(first_event_buckets),
                registry=None,
            )
        )
        self._opened = self._add(
            Counter("ikstream_streams_opened", "Streams opened.", r, registry=None)
        )
        self._open = self._add(
            Gauge("ikstream_streams_open", "Streams open now.", r, registry=None)
        )
        self._resumes = self._add(
            Counter(
                "ikstream_resumes",
                "Streams that resumed a run with Last-Event-ID.",
                r,
                registry=None,
            )
        )
        self._rejections = self._add(
            Counter(
                "ikstream_rejections",
                "Requests refused before the stream, by HTTP status and reason.",
                [*r, "status_code", "reason"],
                registry=None,
            )
        )
        self._store_errors = self._add(
            Counter("ikstream_store_errors", "Run store operations that failed.", r, registry=None)
        )
        self._sent = self._add(_SentCounts())

    def _add(self, collector: Any) -> Any:
        self.registry.register(collector)
        self._collectors.append(collector)
        return collector

    def unregister(self) -> None:
        """Take every metric of this instance out of its registry."""
        for collector in self._collectors:
            self.registry.unregister(collector)
        self._collectors.clear()

    # -- what the router reports --------------------------------------------------------

    def run_started(self, router: str, run_id: str | None = None) -> None:
        """A run started (and, with spans, its span opens).

        Args:
            router: the router's name.
            run_id: the run's id, for its span. Default None (no span).
        """
        self._started.labels(router).inc()
        self._in_progress.labels(router).inc()
        if self.spans is not None:
            self.spans.start(router, run_id)

    def run_finished(
        self,
        router: str,
        status: str,
        seconds: float,
        run_id: str | None = None,
        error_code: str | None = None,
    ) -> None:
        """A run ended.

        Args:
            router: the router's name.
            status: its final status: ``completed``, ``failed`` or ``cancelled``.
            seconds: from its start to its end.
            run_id: the run's id, to end its span. Default None.
            error_code: the failed or cancelled state's code, for the span. Default None.
        """
        self._finished.labels(router, status).inc()
        self._in_progress.labels(router).dec()
        self._duration.labels(router, status).observe(seconds)
        if self.spans is not None:
            self.spans.end(run_id, status, error_code)

    def run_orphaned(self, router: str) -> None:
        """A run whose worker stopped was ended ``orphaned`` by this worker's store.

        It counts among the finished runs as ``failed``; not in the duration histogram
        (its end is the sweep's time) nor in the runs in progress (the gauge that counted
        it was its own worker's).
        """
        self._finished.labels(router, "failed").inc()

    def first_event(self, router: str, seconds: float) -> None:
        """A run's first update from its deployment came ``seconds`` after it started."""
        self._first_event.labels(router).observe(seconds)

    def stream_opened(self, router: str) -> None:
        """A reader's stream opened (a new run's, or a resume)."""
        self._opened.labels(router).inc()
        self._open.labels(router).inc()

    def stream_closed(self, router: str) -> None:
        """A reader's stream closed, whoever closed it."""
        self._open.labels(router).dec()

    def event_sent(self, router: str, nbytes: int, count: int = 1) -> None:
        """``count`` events of ``nbytes`` bytes in all were written to a reader.

        Cheap: plain int additions.

        Args:
            router: the router's name.
            nbytes: bytes written.
            count: events in those bytes. Default 1.
        """
        events = self._sent.events
        events[router] = events.get(router, 0) + count
        sent = self._sent.sent_bytes
        sent[router] = sent.get(router, 0) + nbytes

    def resumed(self, router: str) -> None:
        """A stream resumed a run from a ``Last-Event-ID``."""
        self._resumes.labels(router).inc()

    def rejected(self, router: str, status_code: int, reason: str) -> None:
        """A request was refused before its stream.

        Args:
            router: the router's name.
            status_code: the answer's status, e.g. 401, 403, 413, 429, 503.
            reason: a short word, e.g. ``unauthorized``, ``rate_limited``, ``too_large``.
        """
        self._rejections.labels(router, str(status_code), reason).inc()

    def store_error(self, router: str) -> None:
        """A run store operation failed."""
        self._store_errors.labels(router).inc()

    # -- where to scrape ----------------------------------------------------------------

    def asgi_app(self) -> Any:
        """An ASGI app serving the registry (prometheus-client's ``make_asgi_app``).

        Mount it: ``app.mount("/metrics", metrics.asgi_app())``; it answers ``/metrics/``.
        """
        return make_asgi_app(registry=self.registry)

    def router(self, path: str = "/metrics", **options: Any) -> APIRouter:
        """A FastAPI router with ``GET {path}`` serving the registry in the text format.

        Args:
            path: the route's path. Default ``"/metrics"``.
            **options: passed to ``APIRouter`` (e.g. ``dependencies=[Depends(auth)]``).
        """
        router = APIRouter(**options)
        registry = self.registry

        @router.get(path, include_in_schema=False)
        async def scrape() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

        return router
