"""30 readers that never read, on a finished 30 MB run, cost the server under 30 MB of RSS.

With the memory store, and with the run kept in a real Redis.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from redis_server import run_redis_server
from test_shutdown import wait_ready

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_never_reading_sockets_on_a_30_mb_run_keep_rss_growth_under_30_mb():
    await never_reading_sockets("tests.apps.big_run_app:app", {})


@pytest.mark.redis
async def test_never_reading_sockets_on_a_30_mb_redis_run_keep_rss_growth_under_30_mb():
    with run_redis_server() as redis:
        env = {"IKSTREAM_TEST_REDIS_URL": redis.url, "IKSTREAM_TEST_REDIS_PREFIX": "big:"}
        await never_reading_sockets("tests.apps.big_run_redis_app:app", env)
        with redis.client() as client:  # the run really was kept in Redis
            assert client.memory_usage(next(client.scan_iter("big:run:*"))) > 25 * MB


async def never_reading_sockets(app: str, env: dict[str, str]) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    sockets: list[socket.socket] = []
    try:
        async with httpx.AsyncClient(timeout=30) as http, asyncio.timeout(50):
            await wait_ready(http, url, process)
            created = await http.post(url + "/big/runs", json={})
            assert created.status_code == 201
            run_id = created.json()["run_id"]
            while not (await http.get(f"{url}/big/runs/{run_id}")).json()["finished"]:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            state = (await http.get(f"{url}/big/runs/{run_id}")).json()
            assert state["last_seq"] >= 3000
            assert state["latest"]["type"] == "result"
            await asyncio.sleep(0.5)
            before = rss(process.pid)
            request = (
                f"GET /big/runs/{run_id}/events HTTP/1.1\r\nHost: t\r\n"
                "Accept: text/event-stream\r\n\r\n"
            ).encode()
            for _ in range(30):
                sock = socket.create_connection(("127.0.0.1", port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(request)
                sockets.append(sock)  # and never recv
            peak = before
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # the writes stall once the buffers fill
                peak = max(peak, rss(process.pid))
                await asyncio.sleep(0.1)
            assert peak - before < 30 * MB, (before / MB, peak / MB)
            for sock in sockets:
                sock.close()
            sockets.clear()
            await asyncio.sleep(1.0)
            after = rss(process.pid)
            assert after - before < 30 * MB, (before / MB, after / MB)
            # the server still answers, and the run is still whole
            again = await http.get(f"{url}/big/runs/{run_id}")
            assert again.status_code == 200
    finally:
        for sock in sockets:
            sock.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
