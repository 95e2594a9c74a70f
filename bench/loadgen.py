"""The load generator: raw asyncio protocols on 127.0.0.1, no HTTP client library.

A `Stream` writes one HTTP/1.1 request and reads the response as it comes. It never decodes
the chunked body or parses SSE fields: an event ends at ``\\n\\n`` (no event this benchmark
streams has a blank line inside, and every server writes whole events per chunk), and the
few figures it needs are read straight from the bytes (``"type":"progress"``, ``"seq":``,
``"ts":``). In count mode (throughput) it only counts ``"type":"progress"`` occurrences.

Every phase is bounded in streams and in time.
"""

import asyncio
import json
import os
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"
PROGRESS = b'"type":"progress"'
_TAIL = len(PROGRESS) - 1
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class Recorder:
    """Latency samples (seconds) of the events inside the current window, and arrival times."""

    def __init__(self) -> None:
        self.latencies = array("d")
        self.arrivals = array("d")

    def clear(self) -> None:
        self.latencies = array("d")
        self.arrivals = array("d")


class Stream(asyncio.Protocol):
    """One streaming request; counts events, checks seq order, measures latency."""

    def __init__(self, request: bytes, *, parse: bool, recorder: Recorder | None = None) -> None:
        self.request = request
        self.parse = parse
        self.recorder = recorder
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.error: str | None = None
        self.head = b""
        self.buf = b""
        self.tail = b""
        self.nbytes = 0
        self.events = 0  # progress events
        self.blocks = 0  # every event, progress or not (parse mode)
        self.last_seq = -1
        self.gaps = 0
        self.resets = 0
        self.failed = 0
        self.lo = 0
        self.hi = -1
        self.in_window = 0
        self.caught_up: asyncio.Future[None] | None = None
        self.t_connect = 0.0
        self.t_first: float | None = None
        loop = asyncio.get_running_loop()
        self.first: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # uvloop's is no asyncio.Transport
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        if not self.status:
            data = self._head(data)
            if not data:
                return
        if self.parse:
            self._parse(data)
            return
        chunk = self.tail + data
        found = chunk.count(PROGRESS)
        if found:
            self.events += found
            if self.t_first is None:
                self._first()
        self.tail = chunk[-_TAIL:]

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.first, self.closed, self.caught_up):
            if future is not None and not future.done():
                future.set_result(None)

    def open_window(self, lo: int, hi: int) -> asyncio.Future[None]:
        """Count the progress events with ``lo < seq <= hi``; the future is done at ``hi``."""
        self.lo, self.hi, self.in_window = lo, hi, 0
        self.caught_up = asyncio.get_running_loop().create_future()
        if self.last_seq >= hi or self.closed.done():
            self.caught_up.set_result(None)
        return self.caught_up

    # -- parsing -------------------------------------------------------------------------------

    def _first(self) -> None:
        self.t_first = time.perf_counter()
        if not self.first.done():
            self.first.set_result(None)

    def _head(self, data: bytes) -> bytes:
        head = self.head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > 65536:
                self._fail("response head too long")
            self.head = head
            return b""
        self.head = b""
        line = head[: head.find(b"\r\n")].split(b" ", 2)
        self.status = int(line[1])
        body = head[end + 4 :]
        if self.status != 200:
            self._fail(f"HTTP {self.status}: {body[:300]!r}")
            return b""
        return body

    def _fail(self, message: str) -> None:
        self.error = self.error or message
        if self.transport is not None:
            self.transport.abort()

    def _parse(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        start = 0
        now = 0.0
        while (end := buf.find(b"\n\n", start)) >= 0:
            self.blocks += 1
            if self.t_first is None:
                self._first()
            s = buf.find(b'"seq":', start, end)
            if s >= 0:
                s += 6
                seq = int(buf[s : buf.find(b",", s)])
                if self.last_seq >= 0 and seq != self.last_seq + 1:
                    self.gaps += 1
                self.last_seq = seq
                if seq == self.hi and self.caught_up is not None and not self.caught_up.done():
                    self.caught_up.set_result(None)
                if buf.find(PROGRESS, start, end) >= 0:
                    self.events += 1
                    if self.lo < seq <= self.hi:
                        self.in_window += 1
                        if self.recorder is not None:
                            t = buf.find(b'"ts":', start, end) + 5
                            if not now:
                                now = time.time()
                            recorder = self.recorder
                            recorder.latencies.append(now - float(buf[t : buf.find(b",", t)]))
                            recorder.arrivals.append(now)
                elif buf.find(b'"type":"reset"', start, end) >= 0:
                    self.resets += 1
                elif buf.find(b'"type":"failed"', start, end) >= 0:
                    self.failed += 1
            start = end + 2
        self.buf = buf[start:]

    def abort(self) -> None:
        if self.transport is not None and not self.closed.done():
            self.transport.abort()


# -- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """How to ask one server for a stream of ``n`` states, ``interval`` seconds apart.

    Attributes:
        port: the server's port on 127.0.0.1.
        stats_port: the port of the server process's GC statistics.
        method: ``GET`` (peers: query string) or ``POST`` (package: JSON body).
        path: the stream's path.
        token: a bearer token, or None.
        first_progress_seq: seq of the first progress state (the package sends ``run`` first).
    """

    port: int
    stats_port: int
    method: str = "GET"
    path: str = "/stream"
    token: str | None = None
    first_progress_seq: int = 1

    def request(
        self,
        n: int,
        interval: float,
        *,
        start: float = 0.0,
        every: int = 256,
        close: bool = False,
        lines: int = 1,
    ) -> bytes:
        """The request: ``n`` states, ``interval`` s apart, the first at ``start``.

        ``every``: without pacing, the source gives the loop a turn once per this many states.
        ``lines``: log lines per state (1: one long line; 5: five short ones, ~512 bytes).
        """
        head_lines = [f"Host: {HOST}:{self.port}", "Accept: text/event-stream", "User-Agent: bench"]
        if self.token:
            head_lines.append(f"Authorization: Bearer {self.token}")
        if close:
            head_lines.append("Connection: close")
        if self.method == "GET":
            query = f"n={n}&interval={interval}&start={start}&every={every}&lines={lines}"
            target, body = f"{self.path}?{query}", b""
        else:
            target = self.path
            params = {"n": n, "interval": interval, "start": start, "every": every, "lines": lines}
            body = json.dumps({"parameters": params}).encode()
            head_lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        head = f"{self.method} {target} HTTP/1.1\r\n" + "\r\n".join(head_lines) + "\r\n\r\n"
        return head.encode() + body


# -- opening streams ---------------------------------------------------------------------------


async def open_stream(
    port: int, request: bytes, *, parse: bool, recorder: Recorder | None, timeout: float
) -> Stream:
    """Connect and send ``request``; the stream reads in the background."""
    loop = asyncio.get_running_loop()
    stream = Stream(request, parse=parse, recorder=recorder)
    stream.t_connect = time.perf_counter()
    await asyncio.wait_for(loop.create_connection(lambda: stream, HOST, port), timeout)
    return stream


async def open_many(
    port: int,
    request: bytes,
    count: int,
    *,
    parse: bool,
    recorder: Recorder | None = None,
    rate: float = 2000.0,
    inflight: int = 256,
    timeout: float = 10.0,
) -> tuple[list[Stream], list[str]]:
    """Open ``count`` streams at ``rate`` per second at most, ``inflight`` connects at a time.

    Returns:
        The streams connected, and the errors of those that were not.
    """
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(inflight)
    streams: list[Stream] = []
    errors: list[str] = []

    async def one() -> None:
        try:
            streams.append(
                await open_stream(port, request, parse=parse, recorder=recorder, timeout=timeout)
            )
        except (OSError, TimeoutError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            sem.release()

    tasks = []
    start = loop.time()
    tick = 0.02
    per_tick = max(1, int(rate * tick))
    for i in range(count):
        if i and i % per_tick == 0:
            delay = start + (i // per_tick) * tick - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await sem.acquire()
        tasks.append(loop.create_task(one()))
    if tasks:
        await asyncio.wait(tasks, timeout=timeout + 1)
    return streams, errors


async def wait_all(futures: Iterable[asyncio.Future[None]], timeout: float) -> None:
    """Wait until every future is done, or ``timeout`` seconds."""
    pending = [f for f in futures if not f.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)


def abort_all(streams: Iterable[Stream]) -> None:
    for stream in streams:
        stream.abort()


def errors_of(streams: Iterable[Stream]) -> list[str]:
    return [s.error for s in streams if s.error]


# -- the server process, seen from outside ----------------------------------------------------


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has used, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_rss_kb(pid: int) -> int:
    """Resident set size in KiB, from ``/proc/<pid>/status``."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def get_json(port: int, path: str, timeout: float = 10.0) -> Any:
    """``GET path`` on the server, as JSON (one request, ``Connection: close``)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"GET {path}: {head[:200]!r}")
    return json.loads(body)


async def settle(pid: int, *, window: float = 0.3, timeout: float = 8.0) -> float:
    """Wait until the server used at most one clock tick of CPU over ``window`` seconds.

    Returns:
        Seconds waited (at most ``timeout``).
    """
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        before = proc_cpu(pid)
        await asyncio.sleep(window)
        if proc_cpu(pid) - before <= 1.5 / _CLK_TCK:
            break
    return time.perf_counter() - start


# -- phases ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0 … 100), nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


async def throughput(
    target: Target,
    streams: int,
    *,
    warmup: float,
    window: float,
    every: int = 256,
    n: int = 10_000_000,
    lines: int = 1,
) -> dict[str, Any]:
    """Events per second over ``window`` seconds, ``streams`` unpaced streams at once.

    The streams are opened first and all begin at the same moment (``start``), ``warmup``
    seconds before the window: unpaced streams leave a server's loop few turns to accept
    new connections, so streams opened while others already run would start late.
    """
    begin = time.time() + 0.2 + streams * 0.002
    request = target.request(n, 0.0, start=begin, every=every, lines=lines)
    opened, errors = await open_many(target.port, request, streams, parse=False, rate=10_000)
    await asyncio.sleep(max(0.0, begin - time.time()))
    waited = time.perf_counter()
    await wait_all((s.first for s in opened), 5.0)
    waited = time.perf_counter() - waited
    await asyncio.sleep(warmup)
    c0, b0, t0 = sum(s.events for s in opened), sum(s.nbytes for s in opened), time.perf_counter()
    own0 = time.process_time()
    await asyncio.sleep(window)
    c1, b1, t1 = sum(s.events for s in opened), sum(s.nbytes for s in opened), time.perf_counter()
    own = time.process_time() - own0
    early = sum(1 for s in opened if s.closed.done())
    abort_all(opened)
    errors += errors_of(opened)
    return {
        "streams": streams,
        "events_per_s": (c1 - c0) / (t1 - t0),
        "bytes_per_event": (b1 - b0) / (c1 - c0) if c1 > c0 else None,
        "streams_ended_early": early,
        "first_events_after_s": waited,
        "client_cpu_percent": 100 * own / (t1 - t0),
        "errors": errors[:5],
    }


async def first_events(target: Target, runs: int, *, timeout: float = 5.0) -> dict[str, Any]:
    """Time from connect to the first event of a new run, one short run after another."""
    request = target.request(1, 0.0, close=True)
    samples: list[float] = []
    errors: list[str] = []
    for _ in range(runs):
        try:
            stream = await open_stream(
                target.port, request, parse=True, recorder=None, timeout=timeout
            )
        except (OSError, TimeoutError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        await wait_all([stream.first], timeout)
        if stream.t_first is not None:
            samples.append(stream.t_first - stream.t_connect)
        elif stream.error:
            errors.append(stream.error)
        await wait_all([stream.closed], timeout)
        stream.abort()
    return {
        "runs": runs,
        "ok": len(samples),
        "p50_ms": _ms(percentile(samples, 50)),
        "p99_ms": _ms(percentile(samples, 99)),
        "errors": errors[:5],
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


@dataclass
class Staircase:
    """Open streams at 1 event per ``interval`` in steps; measure each step over a window.

    Attributes:
        levels: open streams at each step, increasing.
        window: seconds of each step's measurement window (a whole number of intervals).
        interval: seconds between a stream's events.
        rate: new streams per second while ramping.
        first_timeout: seconds a new stream may wait for its first event.
        steady: seconds between the end of a ramp and the window.
        grace: seconds after the window for its last events to arrive.
    """

    levels: Sequence[int]
    window: float
    interval: float = 1.0
    rate: float = 2000.0
    first_timeout: float = 20.0
    steady: float = 1.0
    grace: float = 3.0


async def staircase(
    target: Target,
    pid: int,
    plan: Staircase,
    *,
    log: Callable[[str], None] = lambda _: None,
    recorder: Recorder | None = None,
) -> list[dict[str, Any]]:
    """Run ``plan`` against the server; returns one result per level.

    Per level: new streams opened (and how fast each got its first event); then over the
    window: server CPU % (from ``/proc``), RSS growth per open stream since the start, GC
    time (from the stats thread), delivery latency p50/p99 of the events made in the window, and
    events delivered against expected (each open stream owes ``window / interval`` events:
    the next ones after its last seq at the window's start, arriving by the window's end
    plus ``grace``).
    """
    recorder = recorder or Recorder()
    request = target.request(10_000_000, plan.interval)
    per_stream = round(plan.window / plan.interval)
    base_rss = proc_rss_kb(pid)
    open_streams: list[Stream] = []
    results: list[dict[str, Any]] = []
    try:
        for level in plan.levels:
            t_ramp = time.perf_counter()
            new, errors = await open_many(
                target.port,
                request,
                level - len(open_streams),
                parse=True,
                recorder=recorder,
                rate=plan.rate,
                timeout=plan.first_timeout,
            )
            open_streams += new
            await wait_all((s.first for s in new), plan.first_timeout)
            ramp_s = time.perf_counter() - t_ramp
            firsts = [s.t_first - s.t_connect for s in new if s.t_first is not None]
            no_first = sum(1 for s in new if s.t_first is None)
            await asyncio.sleep(plan.steady)
            caught_up = []
            for s in open_streams:
                lo = max(s.last_seq, target.first_progress_seq - 1)
                caught_up.append(s.open_window(lo, lo + per_stream))
            recorder.clear()
            gc0 = await gc_stats(target.stats_port)
            cpu0, t0 = proc_cpu(pid), time.perf_counter()
            await asyncio.sleep(plan.window)
            cpu1, t1 = proc_cpu(pid), time.perf_counter()
            rss = proc_rss_kb(pid)
            gc1 = await gc_stats(target.stats_port)
            await wait_all(caught_up, plan.grace)
            lat = recorder.latencies
            gc = _gc_delta(gc0, gc1, t1 - t0)
            result = {
                "streams": len(open_streams),
                "asked": level,
                "connect_errors": len(errors),
                "ramp_s": ramp_s,
                "no_first_event": no_first,
                "first_event_p50_ms": _ms(percentile(firsts, 50)),
                "first_event_p99_ms": _ms(percentile(firsts, 99)),
                "cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
                "rss_kb": rss,
                "kb_per_stream": (rss - base_rss) / max(1, len(open_streams)),
                "latency_p50_ms": _ms(percentile(lat, 50)),
                "latency_p99_ms": _ms(percentile(lat, 99)),
                "latency_max_ms": _ms(max(lat) if lat else None),
                "delivered": sum(s.in_window for s in open_streams),
                "expected": per_stream * len(open_streams),
                "gaps": sum(s.gaps for s in open_streams),
                "resets": sum(s.resets for s in open_streams),
                "failed_events": sum(s.failed for s in open_streams),
                "closed_early": sum(1 for s in open_streams if s.closed.done()),
                **gc,
                "errors": (errors + errors_of(open_streams))[:5],
            }
            results.append(result)
            log(
                f"    {len(open_streams):>6} streams: cpu {result['cpu_percent']:5.1f} %, "
                f"{result['kb_per_stream']:5.1f} KB/stream, "
                f"p99 {_fmt(result['latency_p99_ms'])} ms, "
                f"delivered {result['delivered']}/{result['expected']}, "
                f"no first event {no_first}, gc {_fmt(result['gc_percent'])} %"
            )
    finally:
        abort_all(open_streams)
    return results


async def gc_stats(port: int) -> dict[str, Any] | None:
    """The server's GC totals, or None if its stats thread did not answer within 10 s.

    The thread needs the interpreter lock, which a saturated event loop rarely lets go of:
    the benchmark does not ask during the unpaced throughput phases.
    """
    try:
        result: dict[str, Any] = await get_json(port, "/", timeout=10.0)
    except (OSError, TimeoutError, RuntimeError, ValueError):
        return None
    return result


def _gc_delta(
    before: dict[str, Any] | None, after: dict[str, Any] | None, wall: float
) -> dict[str, Any]:
    if before is None or after is None:
        return {
            "gc_time_s": None,
            "gc_count": None,
            "gc_percent": None,
            "gc_share_of_cpu_percent": None,
            "gc_max_pause_ms": None,
        }
    gc_time = [b - a for a, b in zip(before["gc_time_s"], after["gc_time_s"], strict=True)]
    server_cpu = after["cpu_s"] - before["cpu_s"]
    return {
        "gc_time_s": gc_time,
        "gc_count": [b - a for a, b in zip(before["gc_count"], after["gc_count"], strict=True)],
        "gc_percent": 100 * sum(gc_time) / wall,
        "gc_share_of_cpu_percent": 100 * sum(gc_time) / server_cpu if server_cpu > 0 else None,
        "gc_max_pause_ms": after["gc_max_pause_s"] * 1000,
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
