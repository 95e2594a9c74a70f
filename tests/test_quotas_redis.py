"""The quota checks of `test_quotas` with the Redis store (its own file: each takes ~15 s)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis_server import RedisServer, run_redis_server
from test_quotas import check_rejected_and_dropped_leave_both_slots_free

pytestmark = [pytest.mark.timeout(90), pytest.mark.redis]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with run_redis_server() as server:
        yield server


@pytest.mark.parametrize("mode", ["jwt", "apikey", "anonymous"])
async def test_rejected_requests_and_dropped_streams_leave_both_run_slots_free_redis(
    mode: str, redis_server: RedisServer
) -> None:
    await check_rejected_and_dropped_leave_both_slots_free("redis", mode, redis_server.url)
