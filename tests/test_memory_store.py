"""MemoryRunStore bounds: bytes per run, bounded batches, cursors past the end, per-caller runs."""

from __future__ import annotations

import asyncio

import pytest

from fastapi_ikstream import EventType, MemoryRunStore, RunState, RunStatus, _log
from fastapi_ikstream.errors import QuotaExceededError


def state(
    run_id: str, seq: int, type_: EventType = EventType.PROGRESS, **fields: object
) -> RunState:
    if type_ is EventType.PROGRESS:
        fields.setdefault("status", RunStatus.RUNNING)
    return RunState(type=type_, run_id=run_id, seq=seq, **fields)


def fill(store: MemoryRunStore, run_id: str, n: int, size: int, *, done: bool) -> None:
    log = [{"ts": 1.0, "message": "x" * size}]
    store.append(state(run_id, 1, EventType.RUN, status=RunStatus.RECEIVED))
    for seq in range(2, n + 1):
        store.append(state(run_id, seq, logs=log))
    if done:
        store.append(state(run_id, n + 1, EventType.RESULT, status=RunStatus.COMPLETED, results=[]))
        store.append(state(run_id, n + 2, EventType.DONE, status=RunStatus.COMPLETED))


async def read_all(store: MemoryRunStore, run_id: str, after: int = 0) -> list[list[str]]:
    sub = store.subscribe(run_id, after)
    batches = []
    while (batch := await sub.next_batch(1.0)) is not None:
        batches.append([f"{e.type}:{e.seq}:{len(e.data)}" for e in batch])
    await sub.aclose()
    return batches


async def test_retention_is_bounded_in_bytes_and_the_end_always_stays() -> None:
    store = MemoryRunStore(max_bytes_per_run=20_000)
    await store.create_run("big", principal=None)
    fill(store, "big", 199, 1000, done=True)
    events = [item.split(":") for batch in await read_all(store, "big") for item in batch]
    assert events[0][0] == "reset"
    kept = events[1:]
    assert sum(int(size) for _, _, size in kept) <= 20_000
    assert [kind for kind, _, _ in kept[-2:]] == ["result", "done"]
    seqs = [int(seq) for _, seq, _ in kept]
    assert seqs == list(range(seqs[0], 202))


async def test_a_huge_result_is_kept_even_past_the_byte_bound() -> None:
    store = MemoryRunStore(max_bytes_per_run=1_000)
    await store.create_run("r", principal=None)
    store.append(state("r", 1, EventType.RUN, status=RunStatus.RECEIVED))
    big = [{"DATA_DICT": {"blob": "z" * 5_000}}]
    store.append(state("r", 2, EventType.RESULT, status=RunStatus.COMPLETED, results=big))
    store.append(state("r", 3, EventType.DONE, status=RunStatus.COMPLETED))
    kinds = [item.split(":")[0] for batch in await read_all(store, "r", 1) for item in batch]
    assert kinds == ["result", "done"]


async def test_a_reader_catching_up_gets_bounded_batches() -> None:
    store = MemoryRunStore()
    await store.create_run("wide", principal=None)
    fill(store, "wide", 300, 10_000, done=True)
    batches = await read_all(store, "wide")
    sizes = [sum(int(item.split(":")[2]) for item in batch) for batch in batches]
    assert len(batches) > 10
    assert max(sizes) < 64 * 1024 + 11_000
    assert sum(len(batch) for batch in batches) == 302


async def test_a_cursor_past_the_end_gets_a_reset_then_what_is_kept() -> None:
    store = MemoryRunStore()
    await store.create_run("short", principal=None)
    fill(store, "short", 5, 10, done=False)
    sub = store.subscribe("short", 50)
    batch = await asyncio.wait_for(sub.next_batch(1.0), 2)
    await sub.aclose()
    assert batch is not None
    assert [e.type for e in batch][:2] == ["reset", "run"]
    assert [e.seq for e in batch[1:]] == [1, 2, 3, 4, 5]


async def test_unfinished_runs_are_counted_per_caller_and_given_back_with_done() -> None:
    store = MemoryRunStore()
    for name in ("a", "b"):
        await store.create_run(name, principal=None, quota_key="k", max_active=2)
    with pytest.raises(QuotaExceededError) as refused:
        await store.create_run("c", principal=None, quota_key="k", max_active=2)
    assert refused.value.limit == 2
    await store.create_run("d", principal=None, quota_key="other", max_active=2)
    assert store.active_runs("k") == 2
    fill(store, "a", 2, 1, done=True)
    assert store.active_runs("k") == 1
    await store.create_run("c", principal=None, quota_key="k", max_active=2)
    assert store.active_runs("k") == 2


def progress(run_id: str, seq: int, current: float) -> RunState:
    return state(run_id, seq, state="STARTED", progress={"current": current, "total": 36_000.0})


async def events_of(store: MemoryRunStore, run_id: str, after: int = 0) -> list[tuple[str, int]]:
    sub = store.subscribe(run_id, after)
    out: list[tuple[str, int]] = []
    while (batch := await sub.next_batch(0.01)) is not None and batch:
        out += [(e.type, e.seq) for e in batch]
    await sub.aclose()
    return out


async def test_a_long_progress_only_run_holds_a_bounded_log_and_replays_the_latest() -> None:
    store = MemoryRunStore()  # defaults: superseded progress compacted
    await store.create_run("long", principal=None)
    store.append(state("long", 1, EventType.RUN, status=RunStatus.RECEIVED))
    for seq in range(2, 36_002):  # one hour at 10 states a second
        store.append(progress("long", seq, float(seq)))
    log = store._runs["long"].log
    held = log.read_after(0) or []
    assert len(held) <= 3 * 256 + 1
    assert sum(len(text) for text in held) <= 256 * 1024
    assert held[-1] == progress("long", 36_001, 36_001.0).to_json()  # the latest, exactly
    store.append(state("long", 36_002, EventType.RESULT, status=RunStatus.COMPLETED, results=[]))
    store.append(state("long", 36_003, EventType.DONE, status=RunStatus.COMPLETED))
    events = await events_of(store, "long")
    seqs = [seq for _, seq in events]
    assert events[0] == ("run", 1)
    assert events[-3:] == [("progress", 36_001), ("result", 36_002), ("done", 36_003)]
    assert seqs == sorted(set(seqs))  # in order, each once
    assert "reset" not in {kind for kind, _ in events}


async def test_resume_across_compaction_gets_every_non_superseded_event_once() -> None:
    store = MemoryRunStore(live_progress=4)
    await store.create_run("r", principal=None)
    store.append(state("r", 1, EventType.RUN, status=RunStatus.RECEIVED))
    log_seqs: list[int] = []
    seq = 1
    seen: list[tuple[str, int]] = []
    cursor = 0
    for round_ in range(40):
        for _ in range(7):
            seq += 1
            store.append(progress("r", seq, float(seq)))
        seq += 1
        store.append(state("r", seq, EventType.LOG, logs=[{"ts": 1.0, "message": f"{round_}"}]))
        log_seqs.append(seq)
        if round_ % 3 == 0:  # a reader that comes and goes, resuming from its last id
            got = await events_of(store, "r", cursor)
            seen += got
            cursor = got[-1][1]
    seq += 1
    store.append(progress("r", seq, float(seq)))
    seen += await events_of(store, "r", cursor)
    seqs = [s for _, s in seen]
    assert seqs == sorted(set(seqs))  # exactly once, in order
    assert [s for kind, s in seen if kind == "log"] == log_seqs  # no log line lost
    assert seen[0] == ("run", 1)
    assert seen[-1] == ("progress", seq)  # the latest state
    assert "reset" not in {kind for kind, _ in seen}
    fresh = await events_of(store, "r")  # a reader from the start gets the same history
    assert [s for kind, s in fresh if kind == "log"] == log_seqs
    assert len(fresh) < seq  # superseded states were compacted


async def test_a_cursor_before_the_kept_window_still_gets_a_reset_with_compaction() -> None:
    store = MemoryRunStore(max_events_per_run=10, live_progress=2)
    await store.create_run("r", principal=None)
    store.append(state("r", 1, EventType.RUN, status=RunStatus.RECEIVED))
    for seq in range(2, 60):
        if seq % 2:
            store.append(state("r", seq, EventType.LOG, logs=[{"ts": 1.0, "message": "m"}]))
        else:
            store.append(progress("r", seq, float(seq)))
    events = await events_of(store, "r", 1)
    assert events[0][0] == "reset"
    first = store._runs["r"].log.first_seq
    assert events[0][1] == first - 1
    seqs = [s for _, s in events[1:]]
    assert seqs[0] == first
    assert seqs == sorted(set(seqs))
    assert events[-1] == ("log", 59)


async def test_a_live_reader_meets_compaction_without_duplicates() -> None:
    store = MemoryRunStore(live_progress=2)
    await store.create_run("r", principal=None)
    store.append(state("r", 1, EventType.RUN, status=RunStatus.RECEIVED))
    sub = store.subscribe("r", 0)
    got: list[tuple[str, int]] = []

    async def read() -> None:
        while (batch := await sub.next_batch(1.0)) is not None:
            got.extend((e.type, e.seq) for e in batch)

    reader = asyncio.create_task(read())
    seq = 1
    for burst in range(30):
        for _ in range(burst % 9):  # bursts bigger than the live window, then a turn
            seq += 1
            store.append(progress("r", seq, float(seq)))
        await asyncio.sleep(0)
    seq += 1
    store.append(state("r", seq, EventType.DONE, status=RunStatus.COMPLETED))
    await asyncio.wait_for(reader, 5)
    seqs = [s for _, s in got]
    assert seqs == sorted(set(seqs))
    assert got[-1] == ("done", seq)
    assert got[-2] == ("progress", seq - 1)


async def _wakeups_for_one_event_per_turn(count: int) -> tuple[int, list[int]]:
    """A reader counting its wake-ups while a source appends one event per loop turn."""
    store = MemoryRunStore()
    await store.create_run("r", principal=None)
    store.append(state("r", 1, EventType.RUN, status=RunStatus.RECEIVED))
    sub = store.subscribe("r", 0)
    seqs: list[int] = []
    batches = 0

    async def read() -> None:
        nonlocal batches
        while (batch := await sub.next_batch(10.0)) is not None:
            batches += 1
            seqs.extend(e.seq for e in batch)

    reader = asyncio.create_task(read())
    await asyncio.sleep(0)
    for seq in range(2, count + 2):
        store.append(progress("r", seq, float(seq)))
        await asyncio.sleep(0)
    store.append(state("r", count + 2, EventType.DONE, status=RunStatus.COMPLETED))
    await asyncio.wait_for(reader, 5)
    await sub.aclose()
    return batches, seqs


async def test_a_busy_log_wakes_its_reader_once_per_batch_of_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_log, "BUSY_WITHIN", float("inf"))  # busy from the second wake-up on
    batches, seqs = await _wakeups_for_one_event_per_turn(200)
    assert seqs == list(range(1, 203))  # every event, once, in order
    assert batches <= 200 // _log.COALESCE_TURNS + 3


async def test_a_quiet_log_wakes_its_reader_at_every_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_log, "BUSY_WITHIN", 0.0)  # never busy: no deferred wake-up
    batches, seqs = await _wakeups_for_one_event_per_turn(50)
    assert seqs == list(range(1, 53))
    assert batches >= 50


async def test_a_reader_that_leaves_during_a_deferred_wake_up_is_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_log, "BUSY_WITHIN", float("inf"))
    log: _log.RunLog[str] = _log.RunLog()
    log.append("a", 1, "run")
    first = asyncio.create_task(log.wait(1, None))
    await asyncio.sleep(0)
    log.append("b", 2, "progress")  # wakes at once: the first wake-up of the log
    assert await first
    waiter = asyncio.create_task(log.wait(2, None))
    await asyncio.sleep(0)
    log.append("c", 3, "progress")  # deferred: the log is busy
    await asyncio.sleep(0)
    assert not waiter.done()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    for _ in range(_log.COALESCE_TURNS + 2):
        await asyncio.sleep(0)
    late = asyncio.create_task(log.wait(2, None))  # something new is there already
    assert await late
    log.append("done", 4, "done")
    assert log.finished


async def test_a_reader_joining_during_a_deferred_wake_up_gets_no_empty_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_log, "BUSY_WITHIN", float("inf"))
    store = MemoryRunStore()
    await store.create_run("r", principal=None)
    store.append(state("r", 1, EventType.RUN, status=RunStatus.RECEIVED))
    first = store.subscribe("r", 0)
    assert [e.seq for e in await first.next_batch(10.0) or []] == [1]
    waiting = asyncio.create_task(first.next_batch(10.0))
    await asyncio.sleep(0)
    store.append(progress("r", 2, 2.0))  # the log's first wake-up: at once
    assert [e.seq for e in await waiting or []] == [2]
    waiting = asyncio.create_task(first.next_batch(10.0))
    await asyncio.sleep(0)
    store.append(progress("r", 3, 3.0))  # busy now: the wake-up is deferred
    late = store.subscribe("r", 3)  # joins after seq 3, while the wake-up is pending
    late_batch = asyncio.create_task(late.next_batch(None))
    for _ in range(_log.COALESCE_TURNS + 2):
        await asyncio.sleep(0)
    assert [e.seq for e in await waiting or []] == [3]
    assert not late_batch.done()  # woken with nothing new: it waits on, no empty batch
    store.append(progress("r", 4, 4.0))
    assert [e.seq for e in await asyncio.wait_for(late_batch, 5) or []] == [4]
    await first.aclose()
    await late.aclose()
