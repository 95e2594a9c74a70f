"""MemoryRunStore bounds: bytes per run, bounded batches, cursors past the end, per-caller runs."""

from __future__ import annotations

import asyncio

import pytest

from fastapi_ikstream import EventType, MemoryRunStore, QuotaExceededError, RunState, RunStatus


def state(
    run_id: str, seq: int, type_: EventType = EventType.PROGRESS, **fields: object
) -> RunState:
    if type_ is EventType.PROGRESS:
        fields.setdefault("status", RunStatus.RUNNING)
    return RunState(type=type_, run_id=run_id, seq=seq, **fields)  # type: ignore[arg-type]


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
