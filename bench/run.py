"""Run the whole benchmark in one command and print one side-by-side table.

    .venv/bin/python -m bench.run            # full run, medians of 3 (~8 minutes)
    .venv/bin/python -m bench.run --quick    # one repetition, shorter windows
    .venv/bin/python -m bench.run --smoke    # tiny counts, a few seconds: checks the harness

Each server runs alone in its own process (``bench.servers``: uvicorn, uvloop, httptools,
one worker, 127.0.0.1); this process is the load generator (``bench.loadgen``). The table
goes to stdout, progress to stderr, and everything measured to ``bench/results/latest.json``
(``--out`` to change it).
"""

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as ``python bench/run.py``
    sys.path.insert(0, str(ROOT))

from bench import loadgen  # noqa: E402
from bench.loadgen import Staircase, Target  # noqa: E402
from bench.servers import (  # noqa: E402
    PACKAGE_PATH,
    STREAM_PATH,
    YIELD_EVERY,
    bench_token,
    raise_nofile,
)

RESULTS = ROOT / "bench" / "results"
SERVER_ENV: dict[str, str] = {}
"""Extra environment for the server processes (``--server-env``; experiments only)."""


@dataclass(frozen=True)
class Mode:
    """Counts and durations of one kind of run.

    ``levels`` are the open-stream steps of the main staircase: latency is read at
    ``levels[0]`` and ``levels[2]``, KB per stream and CPU at ``levels[1]`` and ``levels[2]``.
    """

    reps: int
    tp_warmup: float
    tp_window: float
    first_event_runs: int
    levels: tuple[int, int, int]
    window: float
    interval: float
    rate: float
    first_timeout: float
    grace: float
    big_levels: tuple[int, ...]
    big_window: float
    fresh_per_rep: bool
    settle_timeout: float = 8.0
    stop_grace: float = 2.0


MODES = {
    "smoke": Mode(
        reps=1,
        tp_warmup=0.1,
        tp_window=0.3,
        first_event_runs=5,
        levels=(10, 20, 40),
        window=0.4,
        interval=0.2,
        rate=1000.0,
        first_timeout=5.0,
        grace=2.0,
        big_levels=(30, 60),
        big_window=0.4,
        fresh_per_rep=False,
        settle_timeout=4.0,
        stop_grace=0.2,
    ),
    "quick": Mode(
        reps=1,
        tp_warmup=0.3,
        tp_window=1.0,
        first_event_runs=50,
        levels=(500, 1000, 5000),
        window=3.0,
        interval=1.0,
        rate=1000.0,
        first_timeout=20.0,
        grace=3.0,
        big_levels=(2500, 5000, 7500, 10000),
        big_window=3.0,
        fresh_per_rep=True,
    ),
    "full": Mode(
        reps=3,
        tp_warmup=0.3,
        tp_window=1.0,
        first_event_runs=100,
        levels=(500, 1000, 5000),
        window=4.0,
        interval=1.0,
        rate=1000.0,
        first_timeout=20.0,
        grace=3.0,
        big_levels=(2500, 5000, 7500, 10000),
        big_window=4.0,
        fresh_per_rep=True,
    ),
}

DEFAULT_SERVERS = ("floor", "sse-starlette", "fastapi", "package")
THROUGHPUT = (
    ("tp1", 1, False, 1),
    ("tp50", 50, False, 1),
    ("tp1_turn", 1, True, 1),
    ("tp50_turn", 50, True, 1),
    ("tp1_turn5", 1, True, 5),
    ("tp50_turn5", 50, True, 5),
)
"""(key, streams, one state per loop turn, log lines per state) of each unpaced measurement."""
GC_LIMIT_PERCENT = 10.0
"""A staircase step "holds" only if GC took under this share of the window's wall time."""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


LABELS = {
    "floor": "raw StreamingResponse + json.dumps (floor)",
    "sse-starlette": f"sse-starlette {_version('sse-starlette')}",
    "fastapi": f"FastAPI {_version('fastapi')} native SSE",
    "package": "fastapi-ikstream router (JWT, run store)",
    "package-run": "fastapi-ikstream StreamingRun.to_response()",
}


_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f} s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def target_for(name: str, port: int, stats_port: int) -> Target:
    if name == "package":
        return Target(
            port, stats_port, "POST", PACKAGE_PATH + "/stream", bench_token(), first_progress_seq=2
        )
    if name == "package-run":
        return Target(port, stats_port, "GET", STREAM_PATH, first_progress_seq=2)
    return Target(port, stats_port, "GET", STREAM_PATH)


class Server:
    """One server process (``python -m bench.servers NAME PORT``), its output in a log file."""

    def __init__(self, name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.stats_port = free_port()
        logs = RESULTS / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.servers", name, str(self.port), str(self.stats_port)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.target = target_for(name, self.port, self.stats_port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
            try:
                await loadgen.get_json(self.stats_port, "/", timeout=1.0)
                _, writer = await asyncio.open_connection(loadgen.HOST, self.port)
                writer.close()
                return
            except (OSError, RuntimeError, TimeoutError, ValueError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start: {self.log_tail()}") from None
                await asyncio.sleep(0.05)

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self, grace: float = 2.0, sig: int = signal.SIGTERM) -> None:
        """Send ``sig``, then SIGKILL after ``grace`` s: nothing is measured once the client left.

        uvicorn re-raises the signal after its shutdown: SIGINT ends the process with a
        ``KeyboardInterrupt`` that ``finally`` blocks see (a profiler writes its report then).
        """
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@contextlib.asynccontextmanager
async def running(name: str, mode: Mode) -> AsyncIterator[Server]:
    """A fresh server process, warmed up (a few short runs) and idle."""
    server = Server(name, env=SERVER_ENV)
    try:
        await server.wait_ready()
        await loadgen.first_events(server.target, 5)
        await loadgen.settle(server.pid, timeout=mode.settle_timeout)
        yield server
    finally:
        server.stop(mode.stop_grace)


# -- phases ----------------------------------------------------------------------------------


async def speed_phase(name: str, server: Server, mode: Mode, every: int) -> dict[str, Any]:
    """Throughput (1 and 50 unpaced streams, ``reps`` times) and time to first event."""
    out: dict[str, Any] = {key: [] for key, *_ in THROUGHPUT}
    for rep in range(mode.reps):
        for key, streams, turn, lines in THROUGHPUT:
            result = await loadgen.throughput(
                server.target,
                streams,
                warmup=mode.tp_warmup,
                window=mode.tp_window,
                every=1 if turn else every,
                lines=lines,
            )
            out[key].append(result)
            log(
                f"  {name} rep {rep + 1}: {streams:>2} stream(s), "
                f"{'one state per loop turn' if turn else f'{every} states per turn'}, "
                f"{lines} log line(s): "
                f"{result['events_per_s']:>9,.0f} events/s"
            )
            await loadgen.settle(server.pid, timeout=mode.settle_timeout)
    out["first_event"] = await loadgen.first_events(server.target, mode.first_event_runs)
    log(
        f"  {name}: first event p50 {loadgen._fmt(out['first_event']['p50_ms'])} ms, "
        f"p99 {loadgen._fmt(out['first_event']['p99_ms'])} ms"
    )
    return out


async def stair_phase(server: Server, plan: Staircase, mode: Mode) -> list[dict[str, Any]]:
    result = await loadgen.staircase(server.target, server.pid, plan, log=log)
    await loadgen.settle(server.pid, timeout=min(3.0, mode.settle_timeout))
    return result


def plans(mode: Mode) -> tuple[Staircase, Staircase]:
    def plan(levels: Sequence[int], window: float) -> Staircase:
        return Staircase(
            levels=levels,
            window=window,
            interval=mode.interval,
            steady=mode.interval,
            rate=mode.rate,
            first_timeout=mode.first_timeout,
            grace=mode.grace,
        )

    return plan(mode.levels, mode.window), plan(mode.big_levels, mode.big_window)


async def run_all(
    servers: Sequence[str], mode: Mode, big: str | None, every: int, stairs: bool = True
) -> dict[str, Any]:
    """Every phase for every server (without ``stairs``: throughput and first event only).

    With ``fresh_per_rep``, each staircase repetition gets a new server process (so RSS
    growth is measured from a clean start) and the repetitions of all servers interleave;
    otherwise (smoke) one process per server runs everything.
    """
    plan, big_plan = plans(mode)
    raw: dict[str, dict[str, Any]] = {name: {"stairs": []} for name in servers}
    big_result = None
    for name in servers:
        async with running(name, mode) as server:
            log(f"{name}: throughput and first event")
            raw[name].update(await speed_phase(name, server, mode, every))
            if stairs and not mode.fresh_per_rep:
                for rep in range(mode.reps):
                    log(f"{name}: open streams, repetition {rep + 1} of {mode.reps}")
                    raw[name]["stairs"].append(await stair_phase(server, plan, mode))
                if name == big:
                    log(f"{big}: staircase to {mode.big_levels[-1]:,} open streams")
                    big_result = {
                        "server": big,
                        "levels": await stair_phase(server, big_plan, mode),
                    }
        gc.collect()
    if stairs and mode.fresh_per_rep:
        for rep in range(mode.reps):
            for name in servers:
                log(f"{name}: open streams, repetition {rep + 1} of {mode.reps}")
                async with running(name, mode) as server:
                    raw[name]["stairs"].append(await stair_phase(server, plan, mode))
                gc.collect()
        if big is not None:
            log(f"{big}: staircase to {mode.big_levels[-1]:,} open streams")
            async with running(big, mode) as server:
                big_result = {"server": big, "levels": await stair_phase(server, big_plan, mode)}
    return {"raw": raw, "staircase": big_result}


# -- figures -----------------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def figures_of(raw: dict[str, Any], mode: Mode) -> dict[str, Any]:
    small, mid, large = range(3)
    stairs: list[list[dict[str, Any]]] = raw["stairs"]

    def level(index: int, key: str) -> float | None:
        return _median([rep[index][key] for rep in stairs if len(rep) > index])

    delivered = sum(step["delivered"] for rep in stairs for step in rep)
    expected = sum(step["expected"] for rep in stairs for step in rep)
    return {
        "events_per_s_1": _median([r["events_per_s"] for r in raw["tp1"]]),
        "events_per_s_50": _median([r["events_per_s"] for r in raw["tp50"]]),
        "events_per_s_1_turn": _median([r["events_per_s"] for r in raw["tp1_turn"]]),
        "events_per_s_50_turn": _median([r["events_per_s"] for r in raw["tp50_turn"]]),
        "events_per_s_1_turn5": _median([r["events_per_s"] for r in raw["tp1_turn5"]]),
        "events_per_s_50_turn5": _median([r["events_per_s"] for r in raw["tp50_turn5"]]),
        "bytes_per_event": _median([r["bytes_per_event"] for r in raw["tp1"]]),
        f"kb_per_stream_{mode.levels[mid]}": level(mid, "kb_per_stream"),
        f"kb_per_stream_{mode.levels[large]}": level(large, "kb_per_stream"),
        f"cpu_percent_{mode.levels[mid]}": level(mid, "cpu_percent"),
        f"cpu_percent_{mode.levels[large]}": level(large, "cpu_percent"),
        f"latency_p50_ms_{mode.levels[small]}": level(small, "latency_p50_ms"),
        f"latency_p99_ms_{mode.levels[small]}": level(small, "latency_p99_ms"),
        f"latency_p50_ms_{mode.levels[large]}": level(large, "latency_p50_ms"),
        f"latency_p99_ms_{mode.levels[large]}": level(large, "latency_p99_ms"),
        "delivered": delivered,
        "expected": expected,
        "delivered_percent": 100 * delivered / expected if expected else None,
        "first_event_p50_ms": raw["first_event"]["p50_ms"],
        "first_event_p99_ms": raw["first_event"]["p99_ms"],
        f"ramp_first_event_p99_ms_{mode.levels[large]}": level(large, "first_event_p99_ms"),
        f"no_first_event_{mode.levels[large]}": sum(
            rep[large]["no_first_event"] for rep in stairs if len(rep) > large
        ),
        f"gc_percent_{mode.levels[large]}": level(large, "gc_percent"),
        "gc_max_pause_ms": max(
            (
                step["gc_max_pause_ms"]
                for rep in stairs
                for step in rep
                if step["gc_max_pause_ms"] is not None
            ),
            default=None,
        ),
        "errors": sorted(
            {e for rep in stairs for step in rep for e in step["errors"]}
            | {e for key, *_ in THROUGHPUT for r in raw[key] for e in r["errors"]}
            | set(raw["first_event"]["errors"])
        )[:10],
    }


Row = tuple[str, str, Callable[[float], str], bool]


def rows_for(mode: Mode, every: int) -> list[Row]:
    """(label, figure key, format, show ratio to the floor)."""
    s, m, big = mode.levels
    n = "{:,.0f}".format
    f1 = "{:,.1f}".format
    f2 = "{:,.2f}".format
    return [
        (
            f"events/s, 1 stream, no pacing ({every} states per loop turn)",
            "events_per_s_1",
            n,
            True,
        ),
        (f"events/s, 50 streams together ({every} per turn)", "events_per_s_50", n, True),
        ("events/s, 1 stream, one state per loop turn", "events_per_s_1_turn", n, True),
        ("events/s, 50 streams, one state per loop turn", "events_per_s_50_turn", n, True),
        (
            "events/s, 1 stream, one ~512-byte state (5 log lines) per turn",
            "events_per_s_1_turn5",
            n,
            True,
        ),
        (
            "events/s, 50 streams, one ~512-byte state (5 log lines) per turn",
            "events_per_s_50_turn5",
            n,
            True,
        ),
        (f"server KB per open stream at {m:,} streams", f"kb_per_stream_{m}", f1, True),
        (f"server KB per open stream at {big:,} streams", f"kb_per_stream_{big}", f1, True),
        (f"server CPU % at {m:,} streams x 1 event/s", f"cpu_percent_{m}", f1, True),
        (f"server CPU % at {big:,} streams x 1 event/s", f"cpu_percent_{big}", f1, True),
        (f"latency p50 ms at {s:,} streams", f"latency_p50_ms_{s}", f2, True),
        (f"latency p99 ms at {s:,} streams", f"latency_p99_ms_{s}", f2, True),
        (f"latency p50 ms at {big:,} streams", f"latency_p50_ms_{big}", f2, True),
        (f"latency p99 ms at {big:,} streams", f"latency_p99_ms_{big}", f2, True),
        ("events delivered, % of expected", "delivered_percent", "{:.2f}".format, False),
        ("first event of a new run, p50 ms", "first_event_p50_ms", f2, True),
        ("first event of a new run, p99 ms", "first_event_p99_ms", f2, True),
        (
            f"first event p99 ms while ramping to {big:,}",
            f"ramp_first_event_p99_ms_{big}",
            f1,
            True,
        ),
        (f"streams without a first event at {big:,}", f"no_first_event_{big}", n, False),
        (f"GC % of wall time at {big:,} streams", f"gc_percent_{big}", f1, False),
        ("longest GC pause ms (whole staircase)", "gc_max_pause_ms", f1, False),
    ]


def table(figures: dict[str, dict[str, Any]], mode: Mode, every: int) -> str:
    names = list(figures)
    floor = figures.get("floor")
    columns = " | ".join(LABELS[n] for n in names)
    header = f"| figure (median of {mode.reps}) | {columns} |"
    lines = [header, "|" + " --- |" * (len(names) + 1)]
    for label, key, fmt, ratio in rows_for(mode, every):
        cells = []
        for name in names:
            value = figures[name].get(key)
            if value is None:
                cells.append("-")
                continue
            cell = fmt(value)
            base = floor.get(key) if floor is not None else None
            if ratio and name != "floor" and base:
                cell += f" ({value / base:.2f}x)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    delivered = [f"{figures[n]['delivered']:,}/{figures[n]['expected']:,}" for n in names]
    lines.append("| events delivered / expected | " + " | ".join(delivered) + " |")
    return "\n".join(lines)


def staircase_table(big: dict[str, Any]) -> str:
    lines = [
        "| open streams | first event p99 ms (ramp) | no first event | delivered / expected "
        "| latency p50 / p99 ms | CPU % | KB per stream | GC % | GC collections (gen 0/1/2) |",
        "|" + " --- |" * 9,
    ]
    for step in big["levels"]:
        lines.append(
            f"| {step['streams']:,} | {loadgen._fmt(step['first_event_p99_ms'])} "
            f"| {step['no_first_event']} | {step['delivered']:,}/{step['expected']:,} "
            f"| {loadgen._fmt(step['latency_p50_ms'])} / {loadgen._fmt(step['latency_p99_ms'])} "
            f"| {step['cpu_percent']:.1f} | {step['kb_per_stream']:.1f} "
            f"| {loadgen._fmt(step['gc_percent'])} "
            f"| {'/'.join(str(c) for c in step['gc_count'] or ['-'])} |"
        )
    return "\n".join(lines)


def staircase_holds(big: dict[str, Any] | None) -> bool | None:
    if big is None:
        return None
    return all(
        step["no_first_event"] == 0
        and step["connect_errors"] == 0
        and step["streams"] == step["asked"]
        and step["delivered"] == step["expected"]
        and step["gc_percent"] is not None
        and step["gc_percent"] < GC_LIMIT_PERCENT
        for step in big["levels"]
    )


def check_targets(
    figures: dict[str, dict[str, Any]],
    subject: str,
    mode: Mode,
    big: dict[str, Any] | None,
    stairs: bool = True,
) -> list[dict[str, Any]]:
    """The issue's targets for ``subject`` (the package's row), as ratios in this run.

    Without ``stairs`` (nothing measured at open streams), the throughput targets only.
    """
    pkg, floor = figures[subject], figures.get("floor", {})
    large = mode.levels[2]

    def ratio(key: str) -> float | None:
        a, b = pkg.get(key), floor.get(key)
        return a / b if a is not None and b else None

    checks: list[tuple[str, float | None, str, Callable[[float], bool]]] = [
        ("1-stream events/s vs floor", ratio("events_per_s_1"), ">= 0.7x", lambda v: v >= 0.7),
        ("50-stream events/s vs floor", ratio("events_per_s_50"), ">= 0.7x", lambda v: v >= 0.7),
        (
            "1-stream events/s vs floor, one state per turn",
            ratio("events_per_s_1_turn"),
            ">= 0.7x",
            lambda v: v >= 0.7,
        ),
        (
            "50-stream events/s vs floor, one state per turn",
            ratio("events_per_s_50_turn"),
            ">= 0.7x",
            lambda v: v >= 0.7,
        ),
        (
            "1-stream events/s vs floor, 5-line state per turn",
            ratio("events_per_s_1_turn5"),
            ">= 0.7x",
            lambda v: v >= 0.7,
        ),
        (
            "50-stream events/s vs floor, 5-line state per turn",
            ratio("events_per_s_50_turn5"),
            ">= 0.7x",
            lambda v: v >= 0.7,
        ),
        (
            f"KB per stream at {large:,}",
            pkg.get(f"kb_per_stream_{large}"),
            "<= 45",
            lambda v: v <= 45,
        ),
        (
            f"CPU at {large:,} vs floor",
            ratio(f"cpu_percent_{large}"),
            "<= 1.5x",
            lambda v: v <= 1.5,
        ),
        (
            f"p99 latency ms at {large:,}",
            pkg.get(f"latency_p99_ms_{large}"),
            "<= 5",
            lambda v: v <= 5,
        ),
        ("events delivered %", pkg.get("delivered_percent"), "== 100", lambda v: v == 100),
    ]
    if not stairs:
        checks = [check for check in checks if "events/s" in check[0]]
    out = [
        {"target": t, "value": v, "limit": lim, "pass": v is not None and ok(v)}
        for t, v, lim, ok in checks
    ]
    if big is not None:
        top = big["levels"][-1]["streams"]
        out.append(
            {
                "target": f"staircase to {top:,} streams holds (first events, 100 % delivered, "
                f"GC < {GC_LIMIT_PERCENT:.0f} %)",
                "value": staircase_holds(big),
                "limit": "true",
                "pass": bool(staircase_holds(big)),
            }
        )
    return out


def machine() -> dict[str, Any]:
    mem = ""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    versions = {
        dist: _version(dist)
        for dist in (
            "fastapi",
            "starlette",
            "uvicorn",
            "uvloop",
            "httptools",
            "sse-starlette",
            "pydantic",
        )
    }
    return {
        "load_average_1_5_15": list(os.getloadavg()),
        "nproc": os.cpu_count(),
        "memory": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true", help="tiny counts, a few seconds")
    group.add_argument("--quick", action="store_true", help="one repetition, shorter windows")
    parser.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help="comma-separated, from: floor, sse-starlette, fastapi, package, package-run",
    )
    parser.add_argument(
        "--no-staircase", action="store_true", help="skip the 10,000-stream staircase"
    )
    parser.add_argument(
        "--yield-every",
        type=int,
        default=YIELD_EVERY,
        help="without pacing, sources give the loop a turn once per this many states "
        f"(default {YIELD_EVERY}; 1: every state on its own turn)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the server processes, for experiments (e.g. BENCH_GC=freeze)",
    )
    parser.add_argument(
        "--throughput-only",
        action="store_true",
        help="measure throughput and time to first event only (no open-stream staircase)",
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions (default: the mode's own)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="JSON output")
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = MODES[mode_name]
    if args.reps is not None:
        if args.reps < 1:
            raise SystemExit("--reps must be at least 1")
        mode = replace(mode, reps=args.reps)
    stairs = not args.throughput_only
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(servers) - set(LABELS)
    if unknown:
        raise SystemExit(f"unknown servers: {', '.join(sorted(unknown))}")
    subject = next((s for s in ("package", "package-run") if s in servers), None)
    started = time.perf_counter()
    log(f"bench ({mode_name}): {', '.join(servers)}; open-file limit {raise_nofile()}")
    load = os.getloadavg()[0]
    if load > 0.5:
        log(f"warning: load average {load:.2f}: other work on this machine skews the figures")
    machine_before = machine()
    for item in args.server_env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--server-env wants KEY=VALUE, got {item!r}")
        SERVER_ENV[key] = value
    if args.yield_every < 1:
        raise SystemExit("--yield-every must be at least 1")
    big_subject = None if args.no_staircase or not stairs else subject
    results = await run_all(servers, mode, big_subject, args.yield_every, stairs)
    figures = {name: figures_of(results["raw"][name], mode) for name in servers}
    big = results["staircase"]
    targets = check_targets(figures, subject, mode, big, stairs) if subject else []
    report = {
        "command": " ".join(["python -m bench.run", *(sys.argv[1:])]),
        "mode": mode_name,
        "config": {**asdict(mode), "yield_every": args.yield_every, "server_env": SERVER_ENV},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": time.perf_counter() - started,
        "machine": machine_before,
        "load_average_after": list(os.getloadavg()),
        "labels": {name: LABELS[name] for name in servers},
        "figures": figures,
        "staircase": big,
        "targets_for": subject,
        "targets": targets,
        "raw": results["raw"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(table(figures, mode, args.yield_every))
    if big is not None:
        print(f"\nStaircase, {LABELS[big['server']]}, one worker:\n")
        print(staircase_table(big))
    if subject is not None and targets:
        print(f"\nTargets for {LABELS[subject]}:\n")
        for t in targets:
            value = t["value"]
            shown = f"{value:.2f}" if isinstance(value, float) else str(value)
            print(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']}: {shown} ({t['limit']})")
    print(f"\n{mode_name} run took {report['duration_s']:.0f} s; JSON in {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import uvloop

    args = parse_args(argv)
    raise_nofile()
    gc.disable()  # the load generator's own pauses must not show up as server latency
    return uvloop.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
