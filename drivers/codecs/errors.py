"""Errors raised inside the frame codecs.

Blame has a direction: a `FrameError` means the *device* sent bytes that do not form a
valid frame. Codecs never let it escape to their caller; they count it in `dropped` under
its reason and resynchronise. A caller that misuses a codec (unknown format, a card number
that cannot be encoded) gets a plain `ValueError`.
"""

from __future__ import annotations

__all__ = ["DropReason", "FrameError"]


class DropReason:
    """The reasons under which codecs count dropped frames (keys of ``codec.dropped``)."""

    CHECKSUM = "checksum"
    """The frame is well formed but its checksum / BCC does not match."""
    LENGTH = "length"
    """A length byte is wrong, a field is too long or too short, or a line is over-long."""
    FORMAT = "format"
    """A byte where the format does not allow it (a non-hex digit, a missing CR/LF/ETX)."""
    STRAY = "stray"
    """A run of bytes outside any frame (noise before an STX). Counted once per run."""
    RANGE = "range"
    """The indicator itself flags the reading as invalid (over capacity / under zero)."""
    TRUNCATED = "truncated"
    """A partial frame thrown away by ``reset()`` (the port was closed mid-frame)."""
    OVERFLOW = "overflow"
    """``feed()`` was called with far more bytes than any frame, without draining ``frames()``."""


class FrameError(ValueError):
    """Bytes from a device that do not form a valid frame (the device's fault, not ours)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
