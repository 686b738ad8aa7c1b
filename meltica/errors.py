"""Every error Meltica raises, under one root.

Leaves also inherit the builtin category they resemble (``ValueError`` for bad
input, ``OSError`` for unreadable files), so callers that only know the builtin
still catch them.  ``_core`` raises these classes; it never defines its own.
Each class has a short, stable ``reason`` used as a counter label.
"""

from __future__ import annotations


class MelticaError(Exception):
    """Root of every error raised by Meltica."""

    reason = "error"


class ConfigError(MelticaError, ValueError):
    """Configuration is invalid; the message names the offending key path."""

    reason = "config"


class ParseError(MelticaError, ValueError):
    """A frame or payload could not be turned into canonical events."""

    reason = "parse"


class MalformedFrame(ParseError):
    """Not valid JSON, truncated, or not the shape Binance sends."""

    reason = "malformed"


class FrameTooLarge(ParseError):
    """The frame exceeds the configured maximum size."""

    reason = "oversized"


class MissingField(ParseError):
    """A field the event kind requires is absent."""

    reason = "missing_field"


class FieldTypeError(ParseError, TypeError):
    """A field has the wrong JSON type (e.g. a number where a string belongs)."""

    reason = "field_type"


class NumberError(ParseError):
    """A price, quantity or id is not a plain decimal, or does not fit int64."""

    reason = "number"


class ValueRangeError(ParseError):
    """A value is well formed but impossible: a trade price <= 0, a negative
    quantity, a negative trade or update id (docs/wire-format.md, "Rules")."""

    reason = "value_range"


class WireError(ParseError):
    """A wire-format event could not be decoded."""

    reason = "wire"


class MessageDecodeError(WireError):
    """A broker message on a Meltica subject is not a wire-format event
    (``meltica.client``); names its subject and stream sequence."""

    reason = "message_decode"

    def __init__(self, message: str, *, subject: str = "", stream_seq: int = 0) -> None:
        super().__init__(message)
        self.subject = subject
        self.stream_seq = stream_seq


class AnalyticsError(MelticaError, ValueError):
    """An analytics hook made an invalid ``Derived`` event or returned
    something other than an iterable of them."""

    reason = "analytics"


class CaptureError(MelticaError, OSError):
    """A capture file cannot be read (missing, unknown format, corrupt)."""

    reason = "capture"
