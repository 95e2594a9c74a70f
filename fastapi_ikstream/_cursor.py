"""Stream cursors: the ``{run_id}:{seq}`` event ids that a reconnect sends back.

A seq is a non-negative integer below 2**63 (a signed 64-bit integer: what Redis stream
ids, SQL ``BIGINT`` columns and JavaScript's ``BigInt64Array`` all hold). Anything else
is not a cursor this package ever sent: it is read as malformed, so the stream is sent
from the start as for a request without ``Last-Event-ID``.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_SEQ", "parse_event_id", "parse_seq"]

MAX_SEQ: Final = 2**63 - 1
"""The largest seq a cursor may name."""

_MAX_DIGITS: Final = len(str(MAX_SEQ))


def parse_seq(text: str) -> int | None:
    """A seq from its decimal text (ASCII digits only), or None if it is not one."""
    if not text or len(text) > _MAX_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if number <= MAX_SEQ else None


def parse_event_id(value: str | None) -> tuple[str | None, int] | None:
    """``"{run_id}:{seq}"`` (or a bare seq) into ``(run_id, seq)``; None if malformed."""
    if not value:
        return None
    run_id, sep, seq = value.strip().rpartition(":")
    number = parse_seq(seq)
    if number is None:
        return None
    return (run_id if sep else None), number
