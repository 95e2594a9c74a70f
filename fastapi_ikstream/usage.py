"""Usage metering: one `UsageRecord` per finished run, for billing and quotas.

A router's ``on_usage`` callback (an async callable taking a `UsageRecord`) receives one
record when a run ends, whether it completed, failed, timed out, was cancelled, swept as an
orphan or ended by a shutdown. Delivery is at least once: use ``run_id`` as the idempotency
key when you store records. With a shared (Redis) store one worker reports each run.
`fastapi_ikstream.testing.RecordingUsage` collects them in tests.

Example::

    async def bill(record: UsageRecord) -> None:
        await db.execute(
            "INSERT INTO usage VALUES ($1, $2, $3) ON CONFLICT (run_id) DO NOTHING",
            record.run_id, record.principal, record.run_seconds,
        )
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeAlias

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from ._models import EventType, RunState, RunStatus

__all__ = ["OnUsage", "UsageMeter", "UsageRecord"]


class UsageRecord(BaseModel):
    """What one run used: who ran it, on which router, for how long, and what was sent.

    ``deployment`` is the deployment's ``name`` attribute if it is a non-empty string, else
    its class's name. ``usage`` holds what the deployment reported: an update (a keyword of
    ``on_progress``, or a key of a yielded update) may carry ``"usage": {"output_tokens":
    512, "gpu_seconds": 3.9}``; values are ints, floats or strings, each key keeps its last
    value, and an invalid entry is left out with a logged warning. Usage is not on the wire:
    readers of the run never see it.

    Example::

        {"run_id": "r_8f2c…", "router": "generate", "deployment": "remote",
         "principal": "jwt:|user-42", "status": "completed", "error_code": null,
         "started_at": "2026-12-01T20:00:00Z", "ended_at": "2026-12-01T20:00:04.2Z",
         "run_seconds": 4.2, "events_sent": 31, "bytes_sent": 48213, "readers": 2,
         "usage": {"gpu_seconds": 3.9, "output_tokens": 512}}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str = Field(description="The run's id: unique, so it is the record's key too.")
    router: str = Field(description="The router's name (``create_router(name=…)``).")
    deployment: str | None = Field(
        default=None,
        description=(
            "The deployment's name: its `name` attribute if that is a non-empty string, else "
            "its class's name (a function deployment is named after the function)."
        ),
    )
    principal: str | None = Field(
        default=None,
        description="The run's owner, '{authority}|{subject}'; None on an open router.",
    )
    status: RunStatus = Field(description="How the run ended: completed, failed or cancelled.")
    error_code: str | None = Field(
        default=None,
        description="The failed or cancelled state's code, e.g. 'timeout', 'cancelled'.",
    )
    started_at: AwareDatetime = Field(description="When the run started (UTC).")
    ended_at: AwareDatetime = Field(description="When the run ended (UTC).")
    run_seconds: float = Field(ge=0, description="Seconds from start to end.")
    events_sent: int = Field(
        default=0,
        ge=0,
        description="Events written to readers, every connection to the run's worker counted.",
    )
    bytes_sent: int = Field(default=0, ge=0, description="Bytes of events written to readers.")
    readers: int = Field(default=0, ge=0, description="Stream connections that read the run.")
    usage: dict[str, int | float | str] = Field(
        default_factory=dict,
        description=(
            "The deployment's own figures (tokens, GPU seconds), from the `usage` mapping of "
            "its updates, each key's last value; never sent to the run's readers."
        ),
    )

    @model_validator(mode="after")
    def _ends_after_start(self) -> UsageRecord:
        if self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        if not self.status.is_terminal:
            raise ValueError(f"a usage record needs a terminal status, not {self.status.value}")
        return self

    @classmethod
    def between(cls, started_at: datetime, ended_at: datetime, **fields: Any) -> UsageRecord:
        """A record whose ``run_seconds`` is the time between ``started_at`` and ``ended_at``.

        Args:
            started_at: when the run started (timezone-aware).
            ended_at: when it ended (timezone-aware).
            **fields: the other fields.

        Raises:
            pydantic.ValidationError: a field is missing or invalid.
        """
        seconds = max(0.0, (ended_at - started_at).total_seconds())
        return cls(started_at=started_at, ended_at=ended_at, run_seconds=seconds, **fields)

    def merged_usage(self, extra: Mapping[str, int | float | str]) -> UsageRecord:
        """A copy with ``extra`` added to ``usage`` (numbers with the same key are summed).

        Example::

            record.merged_usage({"gpu_seconds": 1.5})
        """
        return self.model_copy(update={"usage": _summed(self.usage, extra)})


def _summed(
    usage: Mapping[str, int | float | str], extra: Mapping[str, int | float | str]
) -> dict[str, int | float | str]:
    merged = dict(usage)
    for key, value in extra.items():
        old = merged.get(key)
        numbers = isinstance(old, int | float) and isinstance(value, int | float)
        merged[key] = old + value if numbers else value  # type: ignore[operator]
    return merged


OnUsage: TypeAlias = Callable[[UsageRecord], Awaitable[None]]
"""The router's ``on_usage`` callback: awaited once (at least) per finished run."""


_ENDINGS = {
    EventType.RESULT: RunStatus.COMPLETED,
    EventType.FAILED: RunStatus.FAILED,
    EventType.CANCELLED: RunStatus.CANCELLED,
}


class UsageMeter:
    """Counts one run's usage while it goes, then makes its `UsageRecord`.

    Example::

        meter = UsageMeter("r_1", router="generate", principal="user-42")
        meter.reader_joined()
        meter.event_sent(148)
        meter.add_usage({"gpu_seconds": 1.5})
        record = meter.record(run.terminal_state)

    Args:
        run_id: the run's id.
        router: the router's name.
        deployment: the deployment's name. Default None.
        principal: the caller's subject. Default None.
        started_at: when the run started (timezone-aware). Default now.
        clock: gives the current time, timezone-aware. Default ``datetime.now(UTC)``.
    """

    def __init__(  # noqa: PLR0913 - public constructor: keyword-only fields
        self,
        run_id: str,
        *,
        router: str,
        deployment: str | None = None,
        principal: str | None = None,
        started_at: datetime | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.run_id = run_id
        self.router = router
        self.deployment = deployment
        self.principal = principal
        self.clock = clock
        self.started_at = started_at or clock()
        self.events_sent = 0
        self.bytes_sent = 0
        self.readers = 0
        self.usage: dict[str, int | float | str] = {}

    def reader_joined(self) -> None:
        """A stream connection started reading the run."""
        self.readers += 1

    def event_sent(self, nbytes: int) -> None:
        """An event of ``nbytes`` bytes was written to one reader."""
        self.events_sent += 1
        self.bytes_sent += nbytes

    def add_usage(self, usage: Mapping[str, int | float | str]) -> None:
        """Add the deployment's own figures (numbers with the same key are summed)."""
        self.usage = _summed(self.usage, usage)

    def record(self, terminal: RunState | None, ended_at: datetime | None = None) -> UsageRecord:
        """The run's record, from its terminal state.

        Args:
            terminal: the ``result``, ``failed`` or ``cancelled`` state; None (a run that
                ended without one, e.g. swept as an orphan) is recorded ``failed``.
            ended_at: when the run ended. Default now.

        Raises:
            pydantic.ValidationError: ``ended_at`` is before the start.
        """
        status = RunStatus.FAILED
        code: str | None = "orphaned"
        if terminal is not None and terminal.type in _ENDINGS:
            status = _ENDINGS[terminal.type]
            code = terminal.error.code if terminal.error is not None else None
        return UsageRecord.between(
            self.started_at,
            ended_at or self.clock(),
            run_id=self.run_id,
            router=self.router,
            deployment=self.deployment,
            principal=self.principal,
            status=status,
            error_code=code,
            events_sent=self.events_sent,
            bytes_sent=self.bytes_sent,
            readers=self.readers,
            usage=dict(self.usage),
        )
