"""`PrometheusMetrics`: the methods a router calls, scraped over HTTP; `RunSpans`."""

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from fastapi_ikstream.metrics import PrometheusMetrics
from fastapi_ikstream.tracing import RunSpans

pytestmark = pytest.mark.timeout(30)


async def scrape(app: FastAPI, path: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the text exposition, keyed by name and sorted labels."""
    transport = httpx.ASGITransport(app=app)
    async with (
        asyncio.timeout(10),
        httpx.AsyncClient(transport=transport, base_url="http://test") as http,
    ):
        answer = await http.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def report_some_runs(metrics: PrometheusMetrics) -> None:
    for index in range(5):
        metrics.run_started("gen", f"r_{index}")
        metrics.first_event("gen", 0.02)
        metrics.stream_opened("gen")
    metrics.run_started("other")
    for _ in range(40):
        metrics.event_sent("gen", 100)
    metrics.event_sent("other", 7)
    metrics.resumed("gen")
    metrics.stream_closed("gen")
    metrics.stream_closed("gen")
    metrics.run_finished("gen", "completed", 0.4, "r_0")
    metrics.run_finished("gen", "completed", 3.0, "r_1")
    metrics.run_finished("gen", "failed", 12.0, "r_2", "timeout")
    metrics.rejected("gen", 429, "rate_limited")
    metrics.rejected("gen", 429, "rate_limited")
    metrics.rejected("gen", 401, "unauthorized")
    metrics.store_error("gen")


GEN = (("router", "gen"),)


@pytest.mark.parametrize("mount", ["asgi_app", "router"])
async def test_scraped_counters_match_what_was_reported(mount):
    metrics = PrometheusMetrics()
    app = FastAPI()
    if mount == "asgi_app":
        app.mount("/metrics", metrics.asgi_app())
        path = "/metrics/"
    else:
        app.include_router(metrics.router(path="/ops/metrics"))
        path = "/ops/metrics"
    report_some_runs(metrics)
    samples = await scrape(app, path)
    assert samples["ikstream_runs_started_total", GEN] == 5
    assert samples["ikstream_runs_started_total", (("router", "other"),)] == 1
    assert (
        samples["ikstream_runs_finished_total", (("router", "gen"), ("status", "completed"))] == 2
    )
    assert samples["ikstream_runs_finished_total", (("router", "gen"), ("status", "failed"))] == 1
    assert samples["ikstream_runs_in_progress", GEN] == 2
    assert samples["ikstream_streams_opened_total", GEN] == 5
    assert samples["ikstream_streams_open", GEN] == 3
    assert samples["ikstream_events_sent_total", GEN] == 40
    assert samples["ikstream_sent_bytes_total", GEN] == 4000
    assert samples["ikstream_sent_bytes_total", (("router", "other"),)] == 7
    assert samples["ikstream_resumes_total", GEN] == 1
    rate_limited = (("reason", "rate_limited"), ("router", "gen"), ("status_code", "429"))
    assert samples["ikstream_rejections_total", rate_limited] == 2
    unauthorized = (("reason", "unauthorized"), ("router", "gen"), ("status_code", "401"))
    assert samples["ikstream_rejections_total", unauthorized] == 1
    assert samples["ikstream_store_errors_total", GEN] == 1
    completed = (("router", "gen"), ("status", "completed"))
    assert samples["ikstream_run_duration_seconds_count", completed] == 2
    assert samples["ikstream_run_duration_seconds_sum", completed] == pytest.approx(3.4)
    bucket = (("le", "0.5"), ("router", "gen"), ("status", "completed"))
    assert samples["ikstream_run_duration_seconds_bucket", bucket] == 1
    assert samples["ikstream_time_to_first_event_seconds_count", GEN] == 5
    first = (("le", "0.025"), ("router", "gen"))
    assert samples["ikstream_time_to_first_event_seconds_bucket", first] == 5
    assert metrics.spans is not None
    assert metrics.spans.open_spans == 2  # r_3 and r_4 still going; "other" had no run id


async def test_each_instance_has_its_own_registry_unless_told():
    first, second = PrometheusMetrics(), PrometheusMetrics()
    first.run_started("gen")
    assert first.registry is not second.registry
    assert (
        second.registry.get_sample_value("ikstream_runs_started_total", {"router": "gen"}) is None
    )
    shared = CollectorRegistry()
    PrometheusMetrics(shared)
    with pytest.raises(ValueError, match="Duplicated"):
        PrometheusMetrics(shared)


async def test_the_global_registry_on_request():
    metrics = PrometheusMetrics(use_global_registry=True, spans=False)
    try:
        assert metrics.registry is REGISTRY
        metrics.run_started("global_gen")
        assert (
            REGISTRY.get_sample_value("ikstream_runs_started_total", {"router": "global_gen"}) == 1
        )
        app = FastAPI()
        app.mount("/metrics", metrics.asgi_app())
        samples = await scrape(app, "/metrics/")
        assert samples["ikstream_runs_started_total", (("router", "global_gen"),)] == 1
        assert any(name.startswith("python_gc") for name, _ in samples)  # the default collectors
    finally:
        metrics.unregister()
    assert (
        REGISTRY.get_sample_value("ikstream_runs_started_total", {"router": "global_gen"}) is None
    )
    PrometheusMetrics(use_global_registry=True, spans=False).unregister()  # the name is free again


def test_run_spans_with_an_sdk_tracer():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans = RunSpans(tracer=provider.get_tracer("test"))
    metrics = PrometheusMetrics(spans=spans)
    metrics.run_started("gen", "r_ok")
    metrics.run_started("gen", "r_bad")
    metrics.run_finished("gen", "failed", 1.0, "r_bad", "upstream_timeout")
    metrics.run_finished("gen", "completed", 2.0, "r_ok")
    metrics.run_finished("gen", "completed", 2.0, "r_unknown")  # no span: ignored
    finished: list[Any] = list(exporter.get_finished_spans())
    assert [span.name for span in finished] == ["ikstream.run", "ikstream.run"]
    bad, ok = finished
    assert dict(bad.attributes) == {
        "ikstream.router": "gen",
        "ikstream.run_id": "r_bad",
        "ikstream.status": "failed",
        "ikstream.error_code": "upstream_timeout",
    }
    assert bad.status.status_code is StatusCode.ERROR
    assert ok.attributes["ikstream.status"] == "completed"
    assert ok.status.status_code is StatusCode.UNSET
    assert spans.open_spans == 0


def test_run_spans_without_an_sdk_are_no_ops():
    spans = RunSpans()  # the API's global provider: nothing set up, so non-recording spans
    assert spans.enabled
    spans.start("gen", "r_1")
    spans.start("gen", None)
    assert spans.open_spans == 1
    spans.end("r_1", "cancelled", "cancelled")
    spans.end(None, "completed")
    assert spans.open_spans == 0
