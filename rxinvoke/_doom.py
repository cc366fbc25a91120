"""Doom-loop detection: a run's tool calls, as fingerprints, checked before they execute.

A fingerprint is the tool name plus its arguments with object keys sorted recursively (arrays
keep their order; arguments that are not JSON count as their raw text). Two shapes trip the
detector (:class:`~rxinvoke.policy.DoomLoopPolicy` holds the numbers):

- **consecutive duplicates**: the ``consecutive_threshold``-th identical call in a row, counted
  across iterations and within one batch;
- **cycles**: for each pattern length ``min_cycle..max_cycle``, the last
  ``length * (repetitions + 1)`` calls are one pattern of at least two different calls
  repeated (``A, B, A, B, A, B`` with the defaults).

The runtime checks a whole batch before any of its calls runs (:meth:`DoomLoopDetector.check`):
the first call that trips the detector condemns the batch.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .messages import ToolCall
from .policy import DoomLoopPolicy

__all__ = ("DoomLoopDetector", "Trip", "fingerprint")


def fingerprint(call: ToolCall) -> tuple[str, str]:
    """The call's identity for loop detection: its name and canonical arguments."""
    try:
        arguments = json.dumps(
            json.loads(call.arguments), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
    except ValueError:
        arguments = call.arguments
    return call.name, arguments


@dataclass(frozen=True)
class Trip:
    """Why the detector tripped: the repeating pattern (tool names, in call order) and how
    many calls form the loop."""

    pattern: tuple[str, ...]
    count: int
    consecutive: bool
    at: int = 0
    """The index, in its batch, of the call that tripped."""

    @property
    def description(self) -> str:
        if self.consecutive:
            return (
                f"{self.pattern[0]} was called {self.count} times in a row with the same "
                "arguments"
            )
        cycle = " → ".join(self.pattern)
        repeats = self.count // len(self.pattern)
        return f"the cycle {cycle} was repeated {repeats} times ({self.count} calls)"

    @property
    def warning(self) -> str:
        """What the model is told when the policy only warns."""
        return (
            f"[rxinvoke] Doom loop warning: {self.description}. Repeating it will not give a "
            "different result: change approach, or answer with what you have."
        )


class DoomLoopDetector:
    """One run's recent tool calls (only as many as the longest check looks at)."""

    __slots__ = ("_calls", "_policy")

    def __init__(self, policy: DoomLoopPolicy) -> None:
        self._policy = policy
        keep = max(policy.consecutive_threshold, policy.max_cycle * (policy.repetitions + 1))
        self._calls: deque[tuple[str, str]] = deque(maxlen=keep)

    def check(self, calls: Sequence[ToolCall]) -> Trip | None:
        """Record the batch ``calls``; the first trip among them, or None.

        After a trip the record starts afresh (a warned run is warned again only when it
        loops again)."""
        if not self._policy.enabled:
            return None
        for at, call in enumerate(calls):
            self._calls.append(fingerprint(call))
            trip = self._tripped()
            if trip is not None:
                self._calls.clear()
                return replace(trip, at=at)
        return None

    def _tripped(self) -> Trip | None:
        policy, calls = self._policy, list(self._calls)
        threshold = policy.consecutive_threshold
        if len(calls) >= threshold and len(set(calls[-threshold:])) == 1:
            return Trip(pattern=(calls[-1][0],), count=threshold, consecutive=True)
        times = policy.repetitions + 1
        for length in range(policy.min_cycle, policy.max_cycle + 1):
            span = length * times
            if len(calls) < span:
                break
            pattern = calls[-length:]
            if len(set(pattern)) > 1 and calls[-span:] == pattern * times:
                return Trip(pattern=tuple(name for name, _ in pattern), count=span, consecutive=False)
        return None
