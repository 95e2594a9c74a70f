"""OpenTelemetry spans per run, through ``opentelemetry-api`` only (extra ``otel``).

`RunSpans` opens one span per run (``ikstream.run``) and ends it with the run's status. It
uses the tracer provider the application set up (``opentelemetry-sdk`` and an exporter are
the application's choice); with the API alone every span is a no-op, and without the API
installed `RunSpans` does nothing at all.

Span attributes: ``ikstream.router``, ``ikstream.run_id``, ``ikstream.status`` and, for a
failed or cancelled run, ``ikstream.error_code``; a failed run's span has status ERROR.

Example::

    spans = RunSpans()
    spans.start("generate", run_id)
    ...
    spans.end(run_id, "completed")
"""

from __future__ import annotations

from typing import Any

try:
    from opentelemetry import trace
except ImportError:  # pragma: no cover - the API ships with FastAPI's own dependencies here
    trace = None  # type: ignore[assignment]

__all__ = ["RunSpans"]


class RunSpans:
    """One span per run, from `start` to `end`.

    Args:
        tracer: an OpenTelemetry ``Tracer``; default the global provider's
            ``fastapi_ikstream`` tracer. Ignored when the API is not installed.

    Attributes:
        enabled: False when ``opentelemetry-api`` is not installed (every call is a no-op).
    """

    def __init__(self, tracer: Any = None) -> None:
        self.enabled = trace is not None
        self._tracer = tracer
        self._spans: dict[str, Any] = {}

    def _get_tracer(self) -> Any:
        if self._tracer is None and trace is not None:
            self._tracer = trace.get_tracer("fastapi_ikstream")
        return self._tracer

    def start(self, router: str, run_id: str | None) -> None:
        """Open the span of a run that starts now.

        Args:
            router: the router's name.
            run_id: the run's id; None opens no span.
        """
        if not self.enabled or run_id is None:
            return
        self._spans[run_id] = self._get_tracer().start_span(
            "ikstream.run",
            kind=trace.SpanKind.SERVER,
            attributes={"ikstream.router": router, "ikstream.run_id": run_id},
        )

    def end(self, run_id: str | None, status: str, error_code: str | None = None) -> None:
        """End a run's span with its status (``completed``, ``failed``, ``cancelled``).

        Args:
            run_id: the run's id; an unknown id (or None) is ignored.
            status: the run's final status.
            error_code: the failed or cancelled state's code, if any.
        """
        span = self._spans.pop(run_id, None) if run_id is not None else None
        if span is None:
            return
        span.set_attribute("ikstream.status", status)
        if error_code is not None:
            span.set_attribute("ikstream.error_code", error_code)
        if status == "failed":
            span.set_status(trace.Status(trace.StatusCode.ERROR, error_code))
        span.end()

    @property
    def open_spans(self) -> int:
        """Spans started and not yet ended."""
        return len(self._spans)
