"""A router whose runs are 3,000 events of 10 KB each (about 30 MB), for the RSS test."""

from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from fastapi_ikstream import MemoryRunStore, create_router

PAD = "x" * 10_000


async def big(inputs: Any, parameters: Any) -> AsyncIterator[dict[str, Any]]:
    for index in range(3000):
        yield {"state": "STARTED", "logs": [PAD], "progress": {"current": index, "total": 3000}}
    yield {"results": [{"DATA_DICT": {}}]}


app = FastAPI()
app.include_router(
    create_router(big, path="/big", store=MemoryRunStore(max_bytes_per_run=64 * 1024 * 1024))
)
