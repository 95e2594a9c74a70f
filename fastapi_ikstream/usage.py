"""Usage metering: one `UsageRecord` per finished run, for billing and quotas.

A router's ``on_usage`` callback (an async callable taking a `UsageRecord`) receives one
record when a run ends, whether it completed, failed, timed out, was cancelled, swept as an
orphan or ended by a shutdown. Delivery is at least once: use ``run_id`` as the idempotency
key when you store records. `fastapi_ikstream.testing.RecordingUsage` collects them in tests.

Example::

    async def bill(record: UsageRecord) -> None:
        await db.execute(
            "INSERT INTO usage VALUES ($1, $2, $3) ON CONFLICT (run_id) DO NOTHING",
            record.run_id, record.principal, record.run_seconds,
        )
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, TypeAlias

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from ._models import RunStatus

__all__ = ["OnUsage", "UsageRecord"]


class UsageRecord(BaseModel):
    """What one run used: who ran it, on which router, for how long, and what was sent.

    Example::

        {"run_id": "r_8f2c…", "router": "generate", "deployment": "remote",
         "principal": "user-42", "status": "completed", "error_code": null,
         "started_at": "2026-12-01T20:00:00Z", "ended_at": "2026-12-01T20:00:04.2Z",
         "run_seconds": 4.2, "events_sent": 31, "bytes_sent": 48213, "readers": 2,
         "usage": {"gpu_seconds": 3.9, "output_tokens": 512}}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str = Field(description="The run's id: unique, so it is the record's key too.")
    router: str = Field(description="The router's name (``create_router(name=…)``).")
    deployment: str | None = Field(default=None, description="The deployment's name.")
    principal: str | None = Field(
        default=None, description="The caller's subject; None on an open router."
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
        default=0, ge=0, description="Events written to readers, all connections counted."
    )
    bytes_sent: int = Field(default=0, ge=0, description="Bytes of events written to readers.")
    readers: int = Field(default=0, ge=0, description="Stream connections that read the run.")
    usage: dict[str, int | float | str] = Field(
        default_factory=dict,
        description="The deployment's own figures, if it reports any (tokens, GPU seconds).",
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
        usage = dict(self.usage)
        for key, value in extra.items():
            old = usage.get(key)
            numbers = isinstance(old, int | float) and isinstance(value, int | float)
            usage[key] = old + value if numbers else value  # type: ignore[operator]
        return self.model_copy(update={"usage": usage})


OnUsage: TypeAlias = Callable[[UsageRecord], Awaitable[None]]
"""The router's ``on_usage`` callback: awaited once (at least) per finished run."""
