"""Span helpers the components use (only the light OpenTelemetry API).

Components hold a ``tracer`` that is None while tracing is off
(meltica/telemetry/otel.py builds the SDK when it is on): `start_span`
returns None then and `end_span` does nothing, so an untraced path costs one
``is None`` test.  `traceparent_of` / `parse_traceparent` spell W3C trace
context, the form the ``trace`` field of an event and the NATS
``traceparent`` header carry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, Tracer
from opentelemetry.trace.span import Span

__all__ = [
    "HELD_SPANS",
    "context_of",
    "end_span",
    "parse_traceparent",
    "start_span",
    "traceparent_of",
]

# Spans whose end waits for something a callee watches: span id -> the
# callee's task.  Whoever started such a span ends it when that task is done,
# not before (the control request span, which ends at the first event).
HELD_SPANS: dict[int, asyncio.Future[Any]] = {}


def traceparent_of(ctx: SpanContext) -> str:
    """The W3C ``traceparent`` naming a span (always flagged sampled)."""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"


def parse_traceparent(text: str | None) -> SpanContext | None:
    """A remote `SpanContext` from a W3C ``traceparent``; None when malformed."""
    if not text:
        return None
    parts = text.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        version = int(parts[0], 16)
        trace_id = int(parts[1], 16)
        span_id = int(parts[2], 16)
        flags = int(parts[3][:2], 16)
    except ValueError:
        return None
    if version == 0xFF or trace_id == 0 or span_id == 0:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


def context_of(traceparent: str | None) -> Context | None:
    """A context whose parent is the span a ``traceparent`` names (None: no parent)."""
    sc = parse_traceparent(traceparent)
    if sc is None:
        return None
    return trace.set_span_in_context(trace.NonRecordingSpan(sc))


def start_span(
    tracer: Tracer | None,
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    start_time: int | None = None,
    parent: str | None = None,
    links: Sequence[Link] = (),
) -> Span | None:
    """A span when tracing is on (``tracer`` given), else None; ``parent``: a
    ``traceparent`` the span is a child of (else the current context's)."""
    if tracer is None:
        return None
    return tracer.start_span(
        name,
        context=context_of(parent) if parent else None,
        kind=kind,
        attributes=dict(attributes or {}),
        start_time=start_time,
        links=links,
    )


def end_span(span: Span | None, *, error: BaseException | str | None = None, **attrs: Any) -> None:
    """End ``span`` (None: nothing) with attributes and an error status if any."""
    if span is None:
        return
    if attrs:
        span.set_attributes({f"meltica.{k}": v for k, v in attrs.items() if v is not None})
    if error is not None:
        if isinstance(error, BaseException):
            span.record_exception(error)
            error = f"{type(error).__name__}: {error}"
        span.set_status(trace.Status(trace.StatusCode.ERROR, error))
    span.end()
