"""Shared parts of the attack suite: routers under attack, raw HTTP, a killable redis-server.

Not a conftest (one ``conftest`` module name is taken by ``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import time
from collections.abc import Iterator

import redis
from redis_server import REDIS_SERVER, RedisServer

SECRET = "s" * 48
AUDIENCE = "attack-suite"


def raw_request(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send raw bytes to 127.0.0.1:port and read the whole answer (the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
    return b"".join(chunks)


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


class Tracebacks(logging.Handler):
    """Collects every log record that carries an exception, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "Traceback" in record.getMessage():
            self.records.append(record)


_LOGGERS = ("", "uvicorn", "uvicorn.error", "asyncio", "fastapi_ikstream")


@contextlib.contextmanager
def collect_tracebacks() -> Iterator[Tracebacks]:
    """Collect tracebacks logged anywhere; enter it after uvicorn configured its logging
    (``uvicorn`` does not propagate to the root logger)."""
    handler = Tracebacks()
    for name in _LOGGERS:
        logging.getLogger(name).addHandler(handler)
    try:
        yield handler
    finally:
        for name in _LOGGERS:
            logging.getLogger(name).removeHandler(handler)


def start_redis_on(port: int, timeout: float = 10.0) -> RedisServer:
    """Start a redis-server on ``port`` (a restart keeps the address) and wait for PING."""
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
            kill_redis(server)
            raise RuntimeError("redis-server did not answer PING")
        time.sleep(0.02)


def kill_redis(server: RedisServer) -> None:
    """``kill -9`` the server by its pid and reap it."""
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait(5)
