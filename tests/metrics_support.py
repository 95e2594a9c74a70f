"""Scrape a Prometheus endpoint over HTTP and read its samples."""

from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient, url: str) -> Samples:
    """Every sample of ``url``, keyed by name and labels (the ``router`` label left out)."""
    answer = await client.get(url)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "router"}
            samples[sample.name, frozenset(labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape_when_settled(client: httpx.AsyncClient, path: str = "/metrics") -> Samples:
    """Scrape until no run is in progress and no stream is open.

    A run's task and its streams end just after the client has read its ``done``.
    """
    deadline = time.monotonic() + 5
    while True:
        samples = await scrape(client, path)
        in_progress = value(samples, "ikstream_runs_in_progress")
        if in_progress == 0 and value(samples, "ikstream_streams_open") == 0:
            return samples
        assert time.monotonic() < deadline, samples
        await asyncio.sleep(0.02)
