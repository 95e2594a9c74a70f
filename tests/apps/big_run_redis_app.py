"""The RSS test's 30 MB run (as in ``big_run_app``), kept in Redis (``IKSTREAM_TEST_REDIS_URL``)."""

import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from fastapi_ikstream import create_router
from fastapi_ikstream.redis import RedisRunStore

PAD = "x" * 10_000


async def big(inputs: Any, parameters: Any) -> AsyncIterator[dict[str, Any]]:
    for index in range(3000):
        yield {"state": "STARTED", "logs": [PAD], "progress": {"current": index, "total": 3000}}
    yield {"results": [{"DATA_DICT": {}}]}


store = RedisRunStore(
    os.environ["IKSTREAM_TEST_REDIS_URL"],
    prefix=os.environ.get("IKSTREAM_TEST_REDIS_PREFIX", "big:"),
    max_bytes_per_run=64 * 1024 * 1024,
)
app = FastAPI()
app.include_router(create_router(big, path="/big", store=store))
