"""Reading a reader's position in a run: ``Last-Event-ID``, ``?last_event_id=``, ``?after_seq=``.

Event ids are ``{run_id}:{seq}`` (see ``docs/concepts/wire-format.md``), so a reconnect names
both the run and the position. Seqs are bounded (below 2**53, what JavaScript counts exactly):
a larger number is malformed, never handed to a store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_SEQ", "Cursor", "parse_event_id"]

MAX_SEQ = 2**53 - 1
"""The largest seq a cursor may name."""

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


@dataclass(frozen=True, slots=True)
class Cursor:
    """A parsed event id.

    Attributes:
        run_id: the run it names, or None for a bare seq.
        seq: the last seq the reader has (0: nothing yet).
    """

    run_id: str | None
    seq: int


def parse_event_id(value: str | None) -> Cursor | None:
    """Parse ``"{run_id}:{seq}"`` or a bare ``"{seq}"``.

    Args:
        value: the header or query value; None or empty means no cursor.

    Returns:
        The cursor, or None when ``value`` is empty or malformed (a run id outside
        ``[A-Za-z0-9_-]{1,100}``, a seq that is not a decimal number in ``0..MAX_SEQ``).
    """
    if not value:
        return None
    run_id, sep, seq = value.strip().rpartition(":")
    if not (seq.isascii() and seq.isdigit()) or len(seq) > 16:
        return None
    number = int(seq)
    if number > MAX_SEQ:
        return None
    if not sep:
        return Cursor(None, number)
    if not _RUN_ID.match(run_id):
        return None
    return Cursor(run_id, number)
