"""Test helpers for users of fastapi-ikstream: a fake deployment, a usage recorder.

`FakeDeployment` goes behind a router; `RecordingUsage` is an ``on_usage`` callback that
keeps the usage records it is given.

Example::

    from fastapi_ikstream.testing import FakeDeployment, RecordingUsage

    fake = FakeDeployment([{"state": "STARTED", "progress": {"current": 1, "total": 2}},
                           {"results": [{"DATA_DICT": {"ok": True}}]}])
    app.dependency_overrides[router.deployment_provider] = lambda: fake
    usage = RecordingUsage()   # create_router(..., on_usage=usage), then usage.records
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._exceptions import DeploymentError
from ._run import RunSource
from .usage import UsageRecord

__all__ = ["FakeCall", "FakeDeployment", "RecordingUsage"]


@dataclass
class FakeCall:
    """One run of a `FakeDeployment`: what it was given and how it ended.

    Attributes:
        inputs: the run's inputs.
        parameters: the run's parameters.
        sent: how many updates it produced.
        cancelled: true if the run was cancelled (client gone, ``DELETE``, shutdown).
        finished: true if it produced all its updates.
        ended: set once the run has ended, however it ended. A `threading.Event`, so a test
            can wait on it from any thread or event loop (a server in a thread runs its own):
            ``await asyncio.to_thread(call.ended.wait, 2)`` or `wait_ended`.
    """

    inputs: Any
    parameters: Mapping[str, Any]
    sent: int = 0
    cancelled: bool = False
    finished: bool = False
    ended: threading.Event = field(default_factory=threading.Event)

    async def wait_ended(self, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` seconds for the run to end; True if it has."""
        return await asyncio.to_thread(self.ended.wait, timeout)


class FakeDeployment:
    """A deployment that replays a fixed list of updates; for tests.

    Args:
        states: updates to produce, in order: dicts of update fields (``state``, ``status``,
            ``progress``, ``eta``, ``logs``, ``partial_output``, ``results``, and ``usage``
            for the run's usage record). Without a ``results`` item the run ends with empty
            results.
        fail_at: index of the update at which the run fails instead (a `DeploymentError` with
            code ``fake_failure``); None never fails. Default None.
        delay: seconds to wait before each update. Default 0.
        message: the failure's public message. Default ``"fake failure"``.

    Attributes:
        calls: one `FakeCall` per run, in order.
    """

    def __init__(
        self,
        states: Sequence[Mapping[str, Any]],
        *,
        fail_at: int | None = None,
        delay: float = 0,
        message: str = "fake failure",
    ) -> None:
        self.states = [dict(state) for state in states]
        self.fail_at = fail_at
        self.delay = delay
        self.message = message
        self.calls: list[FakeCall] = []

    def open_run(self, inputs: Any, parameters: Mapping[str, Any]) -> RunSource:
        """See `fastapi_ikstream.Deployment.open_run`."""
        call = FakeCall(inputs=inputs, parameters=dict(parameters))
        self.calls.append(call)
        return self._replay(call)

    async def _replay(self, call: FakeCall) -> AsyncIterator[dict[str, Any]]:
        try:
            for index, state in enumerate(self.states):
                if self.delay:
                    await asyncio.sleep(self.delay)
                if index == self.fail_at:
                    raise DeploymentError(self.message, code="fake_failure")
                call.sent += 1
                yield state
            if self.fail_at is not None and self.fail_at >= len(self.states):
                raise DeploymentError(self.message, code="fake_failure")
            call.finished = True
        except (asyncio.CancelledError, GeneratorExit):
            call.cancelled = True
            raise
        finally:
            call.ended.set()


class RecordingUsage:
    """An ``on_usage`` callback that keeps every `UsageRecord` it is given; for tests.

    Safe to call from any thread or event loop (a server in a thread runs its own), and to
    wait on from another.

    Example::

        usage = RecordingUsage()
        router = create_router(deployment, on_usage=usage)
        ...
        assert await usage.wait_for(3)
        assert usage.duplicates() == []

    Attributes:
        records: every record, in the order received.
    """

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []
        self._changed = threading.Condition()

    async def __call__(self, record: UsageRecord) -> None:
        """Keep ``record``."""
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def for_run(self, run_id: str) -> list[UsageRecord]:
        """The records of one run (one, when each run was reported once)."""
        with self._changed:
            return [record for record in self.records if record.run_id == run_id]

    def duplicates(self) -> list[str]:
        """Run ids reported more than once, sorted."""
        with self._changed:
            seen: dict[str, int] = {}
            for record in self.records:
                seen[record.run_id] = seen.get(record.run_id, 0) + 1
        return sorted(run_id for run_id, count in seen.items() if count > 1)

    def _wait(self, count: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.records) >= count, timeout)

    async def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` seconds until ``count`` records have come; True if they have.

        Args:
            count: the number of records to wait for.
            timeout: seconds to wait at most. Default 5.0.
        """
        return await asyncio.to_thread(self._wait, count, timeout)
