"""Control (cancel, timeout, concurrency) and SessionContext.

A Control is enforced, not stored. On an ``emit``: ``cancel()`` stops the run at its next await
point (provider stream and running tools are cancelled, ``run_cancelled`` is published);
``set_timeout(t)`` is a whole-run deadline ending the run with ``run_failed`` ("timed out");
``set_concurrency_limit(n)`` bounds the tools executing at once. On an ``on`` subscription:
``cancel()`` disposes the subscription (``take_until``), the timeout bounds each handler call and
the concurrency limit bounds the handler calls in flight.

Copies made with :meth:`Control.copy` share one state: cancelling any copy cancels all of them.
``cancel()`` may be called from any thread.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from reactivex import Observable, abc
from reactivex.disposable import Disposable
from reactivex.subject import AsyncSubject

from ._frozen import Frozen, trusted

__all__ = ("Control", "SessionContext")


class SessionContext(Frozen):
    """Which session and run an event (or an emit being built) belongs to."""

    session_id: uuid.UUID | None = None
    run_id: str | None = None
    runtime: str | None = None
    """The name of the runtime running it (``AgentRuntime(name=...)``), if it has one."""


def session_context(session_id: uuid.UUID | None, run_id: str | None, runtime: str | None = None) -> SessionContext:
    """A SessionContext from values rxinvoke checked (no validation: every run and emit)."""
    return trusted(SessionContext, {"session_id": session_id, "run_id": run_id, "runtime": runtime})


class _ControlState:
    __slots__ = (
        "concurrency_limit", "is_cancelled", "listeners", "lock", "subject", "timeout",
        "timeout_listeners",
    )

    def __init__(self, timeout: float | None, concurrency_limit: int | None) -> None:
        self.lock = threading.Lock()
        self.is_cancelled = False
        self.timeout = timeout
        self.concurrency_limit = concurrency_limit
        self.listeners: list[Callable[[], None]] = []
        self.timeout_listeners: list[Callable[[float | None], None]] = []
        self.subject: AsyncSubject[None] | None = None  # made on first use of `cancelled`


class Control:
    """Cancellation, deadline and concurrency limit for one emit or one subscription."""

    __slots__ = ("_state",)

    def __init__(
        self, *, timeout: float | None = None, concurrency_limit: int | None = None
    ) -> None:
        _check_timeout(timeout)
        _check_limit(concurrency_limit)
        self._state = _ControlState(timeout, concurrency_limit)

    def copy(self) -> Control:
        """Another handle on the same state."""
        twin = Control.__new__(Control)
        twin._state = self._state
        return twin

    def cancel(self) -> None:
        """Cancel: idempotent, thread-safe; listeners run once, on the calling thread."""
        state = self._state
        with state.lock:
            if state.is_cancelled:
                return
            state.is_cancelled = True
            listeners, state.listeners = state.listeners, []
        for listener in listeners:
            listener()
        subject = state.subject
        if subject is not None:
            subject.on_next(None)
            subject.on_completed()

    @property
    def is_cancelled(self) -> bool:
        """True once ``cancel()`` was called on this control or any copy."""
        return self._state.is_cancelled

    @property
    def cancelled(self) -> Observable[None]:
        """Emits once when cancelled (immediately for late subscribers); for ``take_until``."""
        state = self._state
        with state.lock:
            if state.subject is None:
                state.subject = AsyncSubject()
                if state.is_cancelled:
                    state.subject.on_next(None)
                    state.subject.on_completed()
            return state.subject

    def set_timeout(self, timeout: float | None) -> None:
        """Seconds allowed: the whole run for an emit, each handler call for a subscription.

        Enforced also when set while the run goes: the run's deadline becomes its start plus
        ``timeout`` (already past: the run times out at once); None removes the deadline.
        """
        _check_timeout(timeout)
        state = self._state
        with state.lock:
            state.timeout = timeout
            listeners = list(state.timeout_listeners)
        for listener in listeners:
            listener(timeout)

    @property
    def timeout(self) -> float | None:
        """The deadline in seconds, or None."""
        return self._state.timeout

    def set_concurrency_limit(self, limit: int | None) -> None:
        """Tools at once (emit) or handler calls in flight (subscription); None for the default."""
        _check_limit(limit)
        self._state.concurrency_limit = limit

    @property
    def concurrency_limit(self) -> int | None:
        """The limit, or None for the default (policy for an emit, 1 for a subscription)."""
        return self._state.concurrency_limit

    def add_cancel_listener(self, listener: Callable[[], None]) -> abc.DisposableBase:
        """Call ``listener`` on cancel (at once if already cancelled); dispose to remove it."""
        state = self._state
        with state.lock:
            if not state.is_cancelled:
                state.listeners.append(listener)
                return _Listener(state, state.listeners, listener)
        listener()
        return Disposable()

    def add_timeout_listener(
        self, listener: Callable[[float | None], None]
    ) -> abc.DisposableBase:
        """Call ``listener(timeout)`` whenever :meth:`set_timeout` changes it (on the calling
        thread); dispose the result to remove it."""
        state = self._state
        with state.lock:
            state.timeout_listeners.append(listener)
        return _Listener(state, state.timeout_listeners, listener)

    def __repr__(self) -> str:
        return (
            f"Control(is_cancelled={self.is_cancelled}, timeout={self.timeout}, "
            f"concurrency_limit={self.concurrency_limit})"
        )


class _Listener(abc.DisposableBase):
    """Removes a cancel or timeout listener (a lean disposable: no lock, no closure)."""

    __slots__ = ("_listener", "_listeners", "_state")

    def __init__(self, state: _ControlState, listeners: list[Any], listener: Callable[..., None]) -> None:
        self._state, self._listeners, self._listener = state, listeners, listener

    def dispose(self) -> None:
        with self._state.lock:
            if self._listener in self._listeners:
                self._listeners.remove(self._listener)


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"concurrency limit must be an integer >= 1 or None, got {limit!r}")
