"""A run's trace context across the queue: ``submit`` sends the W3C trace context current
where it is called (OpenTelemetry's global propagator: ``traceparent``, ``tracestate``,
``baggage``) with the job, and the worker runs the run in it, so the run's spans
(``rxinvoke.otel``) are children of the submitter's span. Nothing is imported, sent or
entered when the application does not use OpenTelemetry."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping

__all__ = ("current", "entered")


def current() -> dict[str, str] | None:
    """The trace context current here as propagation fields, or None (OpenTelemetry not in
    use by this process, or nothing to propagate: no span current, no baggage)."""
    if "opentelemetry.trace" not in sys.modules:  # the application never started a span
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


@contextlib.contextmanager
def entered(carrier: Mapping[str, str] | None) -> Iterator[None]:
    """Run the block in the trace context ``carrier`` propagates (as is without one, or
    without OpenTelemetry installed here)."""
    if not carrier:
        yield
        return
    try:
        from opentelemetry import context, propagate
    except ImportError:  # the worker does not trace: nothing to continue
        yield
        return
    token = context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        context.detach(token)
