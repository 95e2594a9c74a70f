"""Profile one server under one load, and count what each open stream keeps alive.

    .venv/bin/python -m bench.profile                       # the package, every phase
    .venv/bin/python -m bench.profile --phase streams       # 5,000 open streams only
    .venv/bin/python -m bench.profile --profiler cprofile   # exact call counts instead
    .venv/bin/python -m bench.profile --objects             # GC-tracked objects per stream

Phases (each in a fresh server process, profiled from start to exit):

- ``one``: 1 unpaced stream for ``--seconds``;
- ``fifty``: 50 unpaced streams together for ``--seconds``;
- ``streams``: ``--streams`` open streams at 1 event/s, held for ``--seconds``;
- ``first``: ``--runs`` short runs (one state each), one after another: the per-request cost.

Reports go to ``bench/results/profile-<server>-<phase>.txt``.
"""

import argparse
import asyncio
import gc
import io
import pstats
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from bench import loadgen  # noqa: E402
from bench.run import RESULTS, Server, log  # noqa: E402
from bench.servers import SERVERS, raise_nofile  # noqa: E402

PHASES = ("one", "fifty", "streams", "first")


async def drive(
    server: Server,
    phase: str,
    seconds: float,
    streams: int,
    every: int,
    runs: int,
    lines: int = 1,
) -> None:
    await loadgen.first_events(server.target, 5)
    if phase == "first":
        result = await loadgen.first_events(server.target, runs)
        log(f"  {runs} runs: first event p50 {result['p50_ms']:.2f} ms (profiled)")
        return
    if phase in ("one", "fifty"):
        count = 1 if phase == "one" else 50
        result = await loadgen.throughput(
            server.target, count, warmup=0.2, window=seconds, every=every, lines=lines
        )
        log(f"  {count} stream(s): {result['events_per_s']:,.0f} events/s (profiled)")
        return
    plan = loadgen.Staircase(levels=[streams], window=seconds, rate=2500.0)
    await loadgen.staircase(server.target, server.pid, plan, log=log)


async def profile_phase(name: str, phase: str, profiler: str, args: argparse.Namespace) -> Path:
    suffix = "txt" if profiler == "pyinstrument" else "pstats"
    raw = RESULTS / f"profile-{name}-{phase}.{suffix}"
    server = Server(name, env={"BENCH_PROFILE": f"{profiler}:{raw}"})
    try:
        await server.wait_ready()
        await drive(
            server, phase, args.seconds, args.streams, args.yield_every, args.runs, args.lines
        )
        await asyncio.sleep(0.5)
    finally:
        server.stop(grace=60.0, sig=signal.SIGINT)
    if profiler == "pyinstrument":
        return raw
    text = RESULTS / f"profile-{name}-{phase}.txt"
    out = io.StringIO()
    stats = pstats.Stats(str(raw), stream=out)
    stats.sort_stats("tottime").print_stats(45)
    stats.sort_stats("cumulative").print_stats(45)
    text.write_text(out.getvalue())
    return text


async def count_objects(names: Sequence[str], streams: int) -> dict[str, Any]:
    """GC-tracked objects (by type) each open stream adds, at ``streams`` open streams."""
    out: dict[str, Any] = {}
    for name in names:
        server = Server(name)
        try:
            await server.wait_ready()
            await loadgen.first_events(server.target, 5)
            before = await loadgen.get_json(server.stats_port, "/objects", timeout=60)
            request = server.target.request(10_000_000, 1.0)
            opened, _ = await loadgen.open_many(
                server.port, request, streams, parse=True, rate=2500.0
            )
            await loadgen.wait_all((s.first for s in opened), 20.0)
            await asyncio.sleep(2.0)
            after = await loadgen.get_json(server.stats_port, "/objects", timeout=60)
            loadgen.abort_all(opened)
        finally:
            server.stop(grace=2.0)
        per_type = {
            kind: (count - before["by_type"].get(kind, 0)) / streams
            for kind, count in after["by_type"].items()
        }
        ranked = sorted(per_type.items(), key=lambda item: -item[1])
        out[name] = {
            "per_stream": (after["total"] - before["total"]) / streams,
            "by_type": {k: round(v, 2) for k, v in ranked if v >= 0.5},
        }
        log(f"  {name}: {out[name]['per_stream']:.0f} GC-tracked objects per open stream")
    return out


async def amain(args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.objects:
        names = args.servers.split(",")
        result = await count_objects(names, args.streams)
        for name, counts in result.items():
            print(f"\n{name}: {counts['per_stream']:.1f} GC-tracked objects per open stream")
            for kind, count in counts["by_type"].items():
                print(f"  {count:8.2f}  {kind}")
        return
    phases = PHASES if args.phase == "all" else (args.phase,)
    for phase in phases:
        log(f"{args.server}: profiling phase {phase!r} with {args.profiler}")
        started = time.perf_counter()
        path = await profile_phase(args.server, phase, args.profiler, args)
        log(f"  report: {path} ({time.perf_counter() - started:.0f} s)")


def main(argv: Sequence[str] | None = None) -> None:
    import uvloop

    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--server", default="package", choices=SERVERS)
    parser.add_argument("--phase", default="all", choices=(*PHASES, "all"))
    parser.add_argument("--profiler", default="pyinstrument", choices=("pyinstrument", "cprofile"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--yield-every", type=int, default=256)
    parser.add_argument(
        "--lines", type=int, default=1, help="log lines per state (5: five short ones)"
    )
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument(
        "--objects", action="store_true", help="count GC-tracked objects per stream instead"
    )
    parser.add_argument("--servers", default="floor,sse-starlette,fastapi,package")
    args = parser.parse_args(argv)
    raise_nofile()
    gc.disable()
    uvloop.run(amain(args))


if __name__ == "__main__":
    main()
