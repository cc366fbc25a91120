"""Runs whose owner died, and who settles them: the owner tag of a worker's runs and the grace
a dead owner's run is left to be settled (or resumed) elsewhere.

A worker (``rxinvoke.transports.worker``) holds a job for every run it executes; when it dies,
the reaper of another worker claims the job and settles the run — salvaging first what the
run's stream showed beyond the stored log, events the dead process published but never
committed. A store's own recovery (when it opens, ``recover_interrupted``, a ``begin_run``
finding the session held) cannot salvage: it knows nothing of streams. So a worker's store
tags the runs it owns (``owner`` ending with :data:`WORKER_MARK`), and the stores leave a dead
worker's run to the workers for a grace period from when they first find it orphaned; only
after that (no worker took its job: the queue was lost, say) do they settle it themselves.
"""

from __future__ import annotations

import time

WORKER_MARK = "/worker"
"""The end of the owner of a run a worker executes (``host:pid:…/worker``)."""


def with_mark(owner: str, worker: bool) -> str:
    """``owner`` tagged as a worker's when ``worker``."""
    return owner + WORKER_MARK if worker else owner


def without_mark(owner: str) -> str:
    """The process part of ``owner`` (its worker tag removed)."""
    return owner.removesuffix(WORKER_MARK)


def is_workers(owner: str | None) -> bool:
    """True if ``owner`` is a worker's (its dead runs are settled by the workers' reapers)."""
    return owner is not None and owner.endswith(WORKER_MARK)


class Grace:
    """When this store first found each dead owner's run left to be settled elsewhere: a
    run waits ``seconds`` from then (kept per process; a fresh store starts it anew)."""

    __slots__ = ("_found",)

    def __init__(self) -> None:
        self._found: dict[str, float] = {}

    def waiting(self, run_id: str, seconds: float) -> bool:
        """True while the run ``run_id`` is within ``seconds`` of when it was first asked
        about; the first call after that forgets it and returns False."""
        now = time.monotonic()
        found = self._found
        if len(found) > 10_000:  # runs settled elsewhere meanwhile
            found.clear()
        if now - found.setdefault(run_id, now) < seconds:
            return True
        del found[run_id]
        return False

    def left_to_workers(self, run_id: str, owner: str | None, seconds: float) -> bool:
        """True while the dead owner's run ``run_id`` is a worker's still within the grace:
        the stores' own recoveries pass it over, the workers' reapers settle it."""
        return is_workers(owner) and self.waiting(run_id, seconds)
