"""A decision on a call of a run paused on the workers, and the workers' answer (wire forms).

A submitter decides a call of a run paused on the workers (``RuntimeInvocation.approve`` /
``deny`` with ``remote``: :meth:`~rxinvoke.transports.remote.RemoteRuns.decide`) by queueing
a :class:`Decision` as a job of its own. The job's run is the *continuation* — the run that
goes on with the paused one once its every call is decided — under an id the submitter chose,
so that it follows the continuation as it follows a run it submitted. The worker that takes
the job records the decision on its store and answers under that id (:class:`Answer`, by the
transport's replies): refused (and why), recorded while other calls still wait, or continued;
then it runs the continuation as any job (lease, cancel, recovery).
"""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

__all__ = ("Answer", "Decision", "decision_of")

_MARK = b'{"decide":'


class Decision(BaseModel):
    """Decide call ``call_id`` of the paused run ``decide``; a continuation runs as ``run_id``
    (with the submitter's ``timeout``, ``concurrency_limit`` and trace context)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    decide: str
    """The paused run (the first field: a job's payload that starts with it is a decision)."""
    call_id: str
    approved: bool
    reason: str | None = None
    run_id: str
    """The continuation's id."""
    timeout: float | None = Field(default=None, gt=0)
    concurrency_limit: int | None = Field(default=None, ge=1)
    trace_context: dict[str, str] | None = None

    def wire(self) -> bytes:
        return self.model_dump_json().encode()


class Answer(BaseModel):
    """A worker's answer to a :class:`Decision`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    outcome: Literal["refused", "waiting", "continues"]
    """``refused``: nothing was recorded (``error`` says why); ``waiting``: recorded, other
    calls of the batch still wait; ``continues``: recorded, and the continuation runs."""
    error: str | None = None
    session_id: str | None = None
    """The run's session (``continues``)."""

    def wire(self) -> bytes:
        return self.model_dump_json().encode()


def decision_of(payload: bytes) -> Decision | None:
    """The job's decision, or None if the job is not one (a run request, or a payload that
    reads as neither: its run then fails as an invalid request)."""
    if not payload.startswith(_MARK):
        return None
    try:
        return Decision.model_validate_json(payload)
    except pydantic.ValidationError:
        return None
