"""A real redis-server on a free 127.0.0.1 port, for tests.

Use it from a fixture::

    @pytest.fixture(scope="module")
    def redis_url():
        with run_redis_server() as server:
            yield server.url
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis

REDIS_SERVER = "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """A running redis-server process."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A synchronous client (decoded responses); close it after use."""
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def connected_clients(self) -> int:
        """``connected_clients`` from ``INFO clients``, this query's own connection left out."""
        with self.client() as client:
            return int(client.info("clients")["connected_clients"]) - 1


def start_redis_server(timeout: float = 10.0) -> RedisServer:
    """Start ``redis-server`` without persistence on a free port and wait for its PING.

    Raises:
        RuntimeError: it did not answer within ``timeout`` seconds.
    """
    port = _free_port()
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(port, process)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {process.returncode}")
        try:
            with server.client() as client:
                if client.ping():
                    return server
        except redis.ConnectionError:
            pass
        if time.monotonic() > deadline:
            stop_redis_server(server)
            raise RuntimeError("redis-server did not answer PING")
        time.sleep(0.02)


def stop_redis_server(server: RedisServer) -> None:
    """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
    process = server.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def run_redis_server() -> Iterator[RedisServer]:
    """Run a redis-server for the duration of the ``with`` block."""
    server = start_redis_server()
    try:
        yield server
    finally:
        stop_redis_server(server)
