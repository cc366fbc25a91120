"""A run's claim (``Store.begin_run``), with a lost reply told from a failed claim.

A store shared over a network commits the claim and then answers; when the connection drops
between the two (the server restarted, a proxy cut it), the store raises although the run is
stored, ``running``, under this process — and nothing would ever end it while the process
lives: its session taken, a submitter waiting on its stream. :func:`claim` looks the run up
after such an error: if what is stored is this very claim (the run's id, its session, its
start to the microsecond, this store's owner, nothing logged yet), the claim landed and the run
goes on from it; anything else (nothing stored, the store still unreachable) raises the
claim's error, as before. The store's refusals (``SessionBusy``, ``SessionAwaitingApproval``,
``RunAlreadyStored``) wrote nothing and are raised as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import RunAlreadyStored, SessionAwaitingApproval, SessionBusy, StoreError
from .messages import Message
from .stores.base import RunRecord, Store

__all__ = ("claim",)

_REFUSALS = (SessionBusy, SessionAwaitingApproval, RunAlreadyStored)


async def claim(
    store: Store, record: RunRecord, opening: Sequence[Message], preamble: Sequence[Message]
) -> tuple[RunRecord, list[Message]]:
    """``store.begin_run(record, opening, preamble=preamble)``; after a store error, the run
    and its session's history if the claim was committed nonetheless (see the module)."""
    try:
        return await store.begin_run(record, opening, preamble=preamble)
    except _REFUSALS:
        raise
    except StoreError:
        landed = await _landed(store, record)
        if landed is None:
            raise
        return landed, await store.load_history(record.session_id)


async def _landed(store: Store, record: RunRecord) -> RunRecord | None:
    """The stored run if it is ``record``'s claim, committed and not begun; else None (also
    when the store cannot tell now)."""
    try:
        stored = await store.get_run(record.run_id)
        if stored is None or (
            stored.status != "running"
            or stored.session_id != record.session_id
            or stored.started_at != record.started_at
            or stored.owner != getattr(store, "owner", None)
        ):
            return None
        if await store.read_events(record.run_id):
            return None  # numbered events: a run that began (not this claim's)
    except StoreError:
        return None
    return stored
