"""Pick a run store from a URI."""

from __future__ import annotations

from ._memory import MemoryRunStore
from ._store import RunStore

__all__ = ["make_store"]


def make_store(store: RunStore | str) -> RunStore:
    """A `RunStore` from an instance or a URI: ``memory://`` or ``redis://host:port/db``.

    Raises:
        ValueError: the URI's scheme is neither.
        MissingExtraError: ``redis://`` without the ``redis`` extra.
    """
    if isinstance(store, RunStore):
        return store
    if store.startswith("memory://"):
        return MemoryRunStore()
    if store.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisRunStore

        return RedisRunStore(store)
    raise ValueError(f"unknown run store URI: {store!r} (use memory:// or redis://…)")
