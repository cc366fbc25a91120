"""One model call: the provider stream republished as events, with the retry rule.

The numbers live in :class:`~rxinvoke.policy.RuntimePolicy` (``max_retries``,
``retry_backoff``, ``retry_backoff_max``, ``provider_timeout``); the rule lives here, for every
provider: a retryable error (HTTP 408/429/5xx, a connection failure, timeouts included) raised
before the attempt yielded any event is retried after :func:`retry_delay` (a ``model_retried``
event says so); an attempt that already published events is never repeated (its deltas would
be published twice).

Each chat event is published with the run id, followed by its agent twin (``text_delta``,
``tool_call_*``); calls the provider started but never completed are announced complete once
the stream finished. A broken stream (no ``chat_finished``) announces nothing as complete.

Boundary: whatever a provider raises that is not an rxinvoke error (a ``TimeoutError`` of its
own included) becomes a :class:`~rxinvoke.errors.ProviderError` naming the provider and model,
with the original as its cause; only the policy's own deadline says "no complete response
within …". Text is made valid Unicode on the way: a UTF-16 surrogate pair split over two
fragments is joined, a lone surrogate becomes U+FFFD (stores and JSON refuse lone ones).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from reactivex import abc

from ._accumulate import Accumulator
from ._clock import deadline, sleep
from ._compat import DeadlineExceeded
from .errors import ProviderConnectionError, ProviderError, ProviderHTTPError, RxInvokeError
from .events import (
    ChatStreamEvent,
    ChatTextDelta,
    InvocationEvent,
    ModelRetried,
    ToolCallCompleted,
    text_fragment,
    text_twin,
)
from .messages import ChatRequest, TextJoiner
from .policy import RuntimePolicy
from .providers.base import ChatProvider

__all__ = ("RETRYABLE_STATUS", "call_model", "is_retryable", "retry_delay")

_log = logging.getLogger("rxinvoke")

RETRYABLE_STATUS = frozenset({408, 429})
"""Retryable 4xx statuses; every 5xx is retryable too."""


def is_retryable(error: ProviderError) -> bool:
    """True for HTTP 408/429/5xx and connection failures (timeouts included)."""
    if isinstance(error, ProviderHTTPError):
        return error.status_code in RETRYABLE_STATUS or error.status_code >= 500
    return isinstance(error, ProviderConnectionError)


def retry_delay(policy: RuntimePolicy, attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (0-based).

    The server's ``retry_after`` when it sent one, otherwise full jitter over the exponential
    backoff (``[0, retry_backoff * 2**attempt]``); never more than ``retry_backoff_max``.
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), policy.retry_backoff_max)
    ceiling = min(policy.retry_backoff_max, policy.retry_backoff * 2.0 ** min(attempt, 62))
    return random.uniform(0.0, ceiling)


async def call_model(
    provider: ChatProvider,
    chat: ChatRequest,
    *,
    run_id: str,
    policy: RuntimePolicy,
    publish: Callable[[InvocationEvent], None],
    scheduler: abc.SchedulerBase | None = None,
) -> Accumulator:
    """Stream one model call (retrying per the rule above) and return what it accumulated;
    the provider timeout and the backoff are timed on ``scheduler`` (default: the loop)."""
    timeout = policy.provider_timeout
    attempt = 0
    while True:
        accumulator = Accumulator(chat.provider, chat.model)
        try:
            # not asyncio.wait_for: on 3.11 it swallows a cancel that races completion
            async with deadline(scheduler, timeout):
                await _stream(provider, chat, run_id, accumulator, publish)
        except DeadlineExceeded as exc:
            raise ProviderError(
                chat.provider, chat.model, f"no complete response within {timeout:g}s"
            ) from exc
        except ProviderError as exc:
            if accumulator.has_events or attempt >= policy.max_retries or not is_retryable(exc):
                raise
            delay = retry_delay(policy, attempt, getattr(exc, "retry_after", None))
            attempt += 1
            _log.info(
                "run %s: %s; retry %d of %d in %.2fs", run_id, exc, attempt, policy.max_retries, delay
            )
            status = exc.status_code if isinstance(exc, ProviderHTTPError) else None
            publish(
                ModelRetried(
                    run_id=run_id, attempt=attempt, error=exc.message, status=status,
                    delay_ms=delay * 1000.0,
                )
            )
            await sleep(scheduler, delay)
            continue
        return accumulator


async def _stream(
    provider: ChatProvider,
    chat: ChatRequest,
    run_id: str,
    accumulator: Accumulator,
    publish: Callable[[InvocationEvent], None],
) -> None:
    stream = provider.stream(chat)
    text = TextJoiner()
    try:
        async for raw in stream:
            event: ChatStreamEvent
            if isinstance(raw, ChatTextDelta):
                delta = raw.delta
                if text.held or not delta.isascii():  # else it is valid text as it is
                    delta = text.feed(delta)
                    if not delta:
                        continue  # a high surrogate waiting for its pair
                if type(raw) is ChatTextDelta:  # the hot path: every streamed fragment
                    # a provider may stamp the run id itself (ChatRequest.run_id): no copy then
                    if raw.run_id != run_id or delta is not raw.delta:
                        raw = text_fragment(run_id, raw.timestamp, delta)
                    accumulator.add_text(delta)
                    publish(raw)
                    publish(text_twin(run_id, raw.timestamp, delta))
                    continue
                # a provider's own subclass: copied as it is, its fields kept
                event = raw if raw.run_id == run_id else raw.with_run_id(run_id)
                if delta is not raw.delta:
                    event = event.model_copy(update={"delta": delta})
            else:
                rest = text.flush()
                if rest:
                    _publish_chat(ChatTextDelta(delta=rest, run_id=run_id), accumulator, publish)
                event = raw.with_run_id(run_id)
            _publish_chat(event, accumulator, publish)
    except RxInvokeError:
        raise
    except AssertionError:
        raise  # a failed assertion is a bug to see, not a provider's answer
    except Exception as exc:
        raise ProviderError(
            chat.provider, chat.model, f"the provider raised {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    rest = text.flush()
    if rest:  # after chat_finished: the accumulator refuses it as a stream error
        _publish_chat(ChatTextDelta(delta=rest, run_id=run_id), accumulator, publish)
    if accumulator.finish_reason is None:
        return  # a broken stream: announce no call as complete (message() raises)
    for call in accumulator.pending_calls():
        publish(ToolCallCompleted(run_id=run_id, call=call))


def _publish_chat(
    event: ChatStreamEvent, accumulator: Accumulator, publish: Callable[[InvocationEvent], None]
) -> None:
    accumulator.add(event)
    publish(event)
    derived = event.as_agent()
    if derived is not None:
        publish(derived)
