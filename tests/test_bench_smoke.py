"""The benchmark harness in smoke mode: every server row is measured and streams arrive.

Speed is never asserted here (the benchmark checks its own targets); this only keeps the
harness from rotting: it starts each server process, drives it, and writes its report.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROWS = ("floor", "sse-starlette", "fastapi", "package")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.timeout(180)
def test_report_has_every_row(smoke):
    report, stdout = smoke
    assert report["mode"] == "smoke"
    assert list(report["figures"]) == list(ROWS)
    assert report["targets_for"] == "package"
    header = stdout.splitlines()[0]
    for label in report["labels"].values():
        assert label in header


@pytest.mark.timeout(180)
def test_every_row_delivers_events(smoke):
    report, _ = smoke
    for name, figures in report["figures"].items():
        assert figures["errors"] == [], name
        assert figures["events_per_s_1"] > 0, name
        assert figures["events_per_s_50"] > 0, name
        assert figures["events_per_s_1_turn"] > 0, name
        assert figures["events_per_s_50_turn"] > 0, name
        assert figures["events_per_s_1_turn5"] > 0, name
        assert figures["events_per_s_50_turn5"] > 0, name
        assert figures["expected"] > 0, name
        assert figures["delivered"] == figures["expected"], name
        assert figures["first_event_p50_ms"] is not None, name
        steps = [step for rep in report["raw"][name]["stairs"] for step in rep]
        assert [step["streams"] for step in steps] == list(report["config"]["levels"]), name
        assert all(step["latency_p99_ms"] is not None for step in steps), name


@pytest.mark.timeout(180)
def test_staircase_and_targets_are_reported(smoke):
    report, stdout = smoke
    staircase = report["staircase"]
    assert staircase["server"] == "package"
    assert [step["streams"] for step in staircase["levels"]] == report["config"]["big_levels"]
    assert all(step["delivered"] == step["expected"] > 0 for step in staircase["levels"])
    names = [target["target"] for target in report["targets"]]
    assert len(names) == 11
    assert "1-stream events/s vs floor, 5-line state per turn" in names
    for target in report["targets"]:
        assert ("PASS" if target["pass"] else "FAIL") + "  " + target["target"] in stdout
