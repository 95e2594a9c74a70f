"""The Redis fault test's server: a long job on a Redis store (``IKSTREAM_TEST_REDIS_URL``).

Run in its own process, as a deployment would be, so that the test's 200 clients do not
share the server's interpreter.
"""

import logging
import os

from fastapi import FastAPI

from fastapi_ikstream import Quotas, create_router
from fastapi_ikstream.redis import RedisRunStore

from .jobs import slow_job

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

STREAMS = int(os.environ.get("IKSTREAM_TEST_STREAMS", "200"))


store = RedisRunStore(
    os.environ["IKSTREAM_TEST_REDIS_URL"],
    prefix=os.environ.get("IKSTREAM_TEST_REDIS_PREFIX", "fault:"),
)
quotas = Quotas(runs=STREAMS + 10, streams=STREAMS + 10)  # one anonymous caller, many runs
app = FastAPI()
app.include_router(create_router(slow_job, path="/job", store=store, keep_alive=1.0, quotas=quotas))
