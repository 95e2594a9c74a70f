"""Deployments shared by the test apps and the tests that drive them."""

import asyncio
from typing import Any


async def slow_job(inputs: Any, parameters: Any, on_progress: Any) -> list[dict[str, Any]]:
    """A deployment that reports progress every 50 ms for ``parameters["steps"]`` steps."""
    steps = int(parameters.get("steps", 2))
    for step in range(steps):
        on_progress(state="STARTED", progress={"current": step, "total": steps})
        await asyncio.sleep(0.05)
    return [{"DATA_DICT": {"steps": steps}}]
