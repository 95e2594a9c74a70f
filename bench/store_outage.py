"""Redis killed for 10 s under 200 open streams: what clients see, measured.

Each run reports progress twice a second (a client reading 200 faster streams falls
behind them, and would time its own backlog). The server runs in its own process
(``uvicorn``, one worker, the Redis run store); this process opens the streams,
``kill -9``s redis-server by pid, probes the endpoints while it is away, starts it again
on the same port after 10 s, and times the first new run. The server's stderr is scanned
for tracebacks. Run it with ``python -m bench.store_outage``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "security"))

from attack_kit import kill_redis, start_redis_on  # noqa: E402

APP = """
import asyncio
from fastapi import FastAPI
from fastapi_ikstream import create_router

async def job(inputs, parameters, on_progress):
    steps = int(parameters.get("steps", 2))
    for step in range(steps):
        on_progress(state="STARTED", progress={"current": step, "total": steps})
        await asyncio.sleep(float(parameters.get("delay", 0.05)))
    return [{"DATA_DICT": {"steps": steps}}]

app = FastAPI()
app.include_router(create_router(job, path="/job", store="__URL__", keep_alive=1.0))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def stream(http: httpx.AsyncClient, ready: list[int]) -> tuple[bytes, float]:
    body = bytearray()
    counted = False
    run = {"parameters": {"steps": 2000, "delay": 0.5}}  # 2 progress events a second
    async with http.stream("POST", "/job/stream", json=run) as resp:
        async for chunk in resp.aiter_raw():
            body.extend(chunk)
            if not counted and b"event: progress" in body:
                counted = True
                ready[0] += 1
    return bytes(body), time.monotonic()


async def measure(base: str, redis_port: int, server: object, streams: int, outage: float) -> dict:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        run_id = (await http.post("/job/runs", json={"parameters": {"steps": 2000}})).json()[
            "run_id"
        ]
        ready = [0]
        tasks = [asyncio.create_task(stream(http, ready)) for _ in range(streams)]
        while ready[0] < streams:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        kill_redis(server)  # type: ignore[arg-type]
        killed = time.monotonic()
        statuses: collections.Counter[int] = collections.Counter()
        probes = [
            ("GET", f"/job/runs/{run_id}"),
            ("DELETE", f"/job/runs/{run_id}"),
            ("GET", f"/job/runs/{run_id}/events"),
            ("POST", "/job/runs"),
        ]
        while time.monotonic() - killed < outage:
            for method, path in probes:
                kwargs = {"json": {}} if method == "POST" else {}
                statuses[(await http.request(method, path, **kwargs)).status_code] += 1
            await asyncio.sleep(0.2)
        results = await asyncio.gather(*tasks)
        restarted = start_redis_on(redis_port)
        back = time.monotonic()
        while (await http.post("/job", json={"parameters": {"steps": 1}})).status_code != 200:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        recovered = time.monotonic() - back
    kill_redis(restarted)
    ends = sorted(end - killed for _, end in results)
    return {
        "streams": streams,
        "outage_s": outage,
        "stream_end_after_kill_s": [round(ends[0], 2), round(ends[-1], 2)],
        "streams_with_retry_hint": sum(
            b"retry: 3000\n" in b.rsplit(b"\n\n", 1)[-1] for b, _ in results
        ),
        "streams_with_done": sum(b"event: done" in b for b, _ in results),
        "probe_statuses": dict(statuses),
        "new_run_after_return_s": round(recovered, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--outage", type=float, default=10.0)
    args = parser.parse_args()
    redis_port, port = free_port(), free_port()
    server = start_redis_on(redis_port)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "outage_app.py").write_text(
            APP.replace("__URL__", f"redis://127.0.0.1:{redis_port}/0")
        )
        log = Path(tmp, "server.log")
        with log.open("w") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "outage_app:app",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ],
                cwd=tmp,
                stderr=err,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            try:
                base = f"http://127.0.0.1:{port}"
                for _ in range(200):
                    try:
                        httpx.get(f"{base}/openapi.json", timeout=1)
                        break
                    except httpx.TransportError:
                        time.sleep(0.05)
                report = asyncio.run(measure(base, redis_port, server, args.streams, args.outage))
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        text = log.read_text()
        report["server_tracebacks"] = text.count("Traceback")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
