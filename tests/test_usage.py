"""`UsageRecord` and the `RecordingUsage` test double."""

import asyncio
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from fastapi_ikstream import RunState, RunStatus, as_deployment
from fastapi_ikstream._updates import RunUsage, deployment_name
from fastapi_ikstream.remote import RemoteDeployment
from fastapi_ikstream.testing import RecordingUsage
from fastapi_ikstream.usage import UsageMeter, UsageRecord

START = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)


def record(run_id: str = "r_1", **fields) -> UsageRecord:
    values = {"router": "generate", "status": RunStatus.COMPLETED, **fields}
    return UsageRecord.between(START, START + timedelta(seconds=4.25), run_id=run_id, **values)


def test_a_record_round_trips_as_json():
    original = record(
        principal="user-42",
        deployment="remote",
        events_sent=31,
        bytes_sent=48213,
        readers=2,
        usage={"gpu_seconds": 3.9, "output_tokens": 512},
    )
    assert original.run_seconds == 4.25
    again = UsageRecord.model_validate_json(original.model_dump_json())
    assert again == original
    assert again.started_at.utcoffset() == timedelta(0)


def test_times_must_be_aware_and_in_order():
    with pytest.raises(ValidationError, match="ended_at is before started_at"):
        UsageRecord.between(
            START, START - timedelta(seconds=1), run_id="r", router="g", status="failed"
        )
    with pytest.raises(ValidationError, match="timezone"):
        UsageRecord.between(
            START.replace(tzinfo=None),
            START.replace(tzinfo=None),
            run_id="r",
            router="g",
            status="failed",
        )
    other_zone = START.astimezone(timezone(timedelta(hours=2)))
    assert record().model_copy(update={"started_at": other_zone}).started_at == START


def test_only_a_terminal_status_makes_a_record():
    with pytest.raises(ValidationError, match="terminal status"):
        record(status="running")
    with pytest.raises(ValidationError):
        record(events_sent=-1)
    with pytest.raises(ValidationError):
        record(extra_field=1)
    assert record(status="cancelled", error_code="cancelled").error_code == "cancelled"


def test_merged_usage_sums_numbers_and_replaces_the_rest():
    merged = record(usage={"gpu_seconds": 1.5, "model": "a"}).merged_usage(
        {"gpu_seconds": 2, "model": "b", "tokens": 7}
    )
    assert merged.usage == {"gpu_seconds": 3.5, "model": "b", "tokens": 7}


async def test_recording_usage_collects_from_other_threads():
    usage = RecordingUsage()

    def report_in_another_loop() -> None:
        asyncio.run(usage(record("r_2")))
        asyncio.run(usage(record("r_3")))
        asyncio.run(usage(record("r_2")))

    async with asyncio.timeout(10):
        waiting = asyncio.create_task(usage.wait_for(3))
        await usage(record("r_1"))
        thread = threading.Thread(target=report_in_another_loop)
        thread.start()
        assert await waiting
        thread.join(5)
        assert not await usage.wait_for(5, timeout=0.01)
    assert [item.run_id for item in usage.records] == ["r_1", "r_2", "r_3", "r_2"]
    assert len(usage.for_run("r_2")) == 2
    assert usage.duplicates() == ["r_2"]


def state(kind: str, **fields) -> RunState:
    return RunState(type=kind, run_id="r_9", seq=7, **fields)


@pytest.mark.parametrize(
    ("terminal", "status", "code"),
    [
        (state("result", results=[]), "completed", None),
        (state("failed", error={"code": "timeout", "message": "late"}), "failed", "timeout"),
        (
            state("cancelled", error={"code": "cancelled", "message": "gone"}),
            "cancelled",
            "cancelled",
        ),
        (None, "failed", "orphaned"),
    ],
)
def test_a_meter_counts_a_run_and_makes_its_record(terminal, status, code):
    times = iter([START, START + timedelta(seconds=2.5)])
    meter = UsageMeter(
        "r_9", router="gen", deployment="remote", principal="bob", clock=lambda: next(times)
    )
    meter.reader_joined()
    meter.reader_joined()
    for _ in range(3):
        meter.event_sent(100)
    meter.add_usage({"gpu_seconds": 1.25, "model": "a"})
    meter.add_usage({"gpu_seconds": 1, "model": "b"})
    made = meter.record(terminal)
    assert made.model_dump(mode="json") == {
        "run_id": "r_9",
        "router": "gen",
        "deployment": "remote",
        "principal": "bob",
        "status": status,
        "error_code": code,
        "started_at": "2026-12-01T20:00:00Z",
        "ended_at": "2026-12-01T20:00:02.500000Z",
        "run_seconds": 2.5,
        "events_sent": 3,
        "bytes_sent": 300,
        "readers": 2,
        "usage": {"gpu_seconds": 2.25, "model": "b"},
    }


def test_a_meter_refuses_an_end_before_its_start():
    meter = UsageMeter("r_1", router="gen", started_at=START)
    with pytest.raises(ValidationError):
        meter.record(None, ended_at=START - timedelta(seconds=1))
    assert meter.record(None, ended_at=START).run_seconds == 0


def test_reported_usage_keeps_each_keys_last_valid_value(caplog):
    usage = RunUsage("r_1")
    changes: list[dict[str, int | float | str]] = []
    usage.listener = lambda: changes.append(dict(usage.values))
    rest = usage.take({"state": "STARTED", "usage": {"output_tokens": 10, "model": "m"}})
    assert rest == {"state": "STARTED"}
    usage.merge({"output_tokens": 512, "gpu_seconds": 3.9})
    usage.merge({"output_tokens": 512})  # nothing new: no change reported
    bad = {"a": True, "b": float("nan"), "c": [1], 7: 1, "d": None, "e": float("inf")}
    usage.merge(bad)
    usage.merge(["not", "a", "mapping"])
    assert usage.values == {"output_tokens": 512, "model": "m", "gpu_seconds": 3.9}
    assert changes == [{"output_tokens": 10, "model": "m"}, usage.values]
    assert len([r for r in caplog.records if "ignored" in r.getMessage()]) == len(bad) + 1


def test_a_deployment_is_named_by_its_name_else_its_class():
    class Named:
        name = "gpu-a"

    class Blank:
        name = ""

    async def generate(inputs, parameters, on_progress):
        return []

    assert deployment_name(Named()) == "gpu-a"
    assert deployment_name(Blank()) == "Blank"
    assert deployment_name(object()) == "object"
    assert deployment_name(as_deployment(generate)) == "generate"
    assert deployment_name(RemoteDeployment("http://upstream/api/x/stream")) == "remote"
