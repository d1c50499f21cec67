"""Sans-IO frame codecs for the lane's serial devices (card readers, weighing indicators).

Push bytes in, pull frames out (the wsproto habit): ``feed(data)`` only buffers,
``frames()`` yields whatever can be decoded and stops when the input runs dry, keeping a
partial frame for the next ``feed``. Bad frames never escape as exceptions: they are
counted in ``dropped`` by reason (see `DropReason`) and the decoder resynchronises on the
next start byte. Nothing here imports asyncio or touches a port; the drivers in
``drivers/serial_device.py`` own the I/O.

Formats live in `drivers.codecs.card` and `drivers.codecs.weight`; this module holds what
they share: the control bytes and the two framing strategies (STX-led fixed-length frames
and CR LF terminated lines).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from enum import IntEnum
from typing import ClassVar, Generic, TypeVar

from drivers.codecs.errors import DropReason, FrameError

__all__ = [
    "ANY",
    "HEX_DIGITS",
    "Control",
    "DropReason",
    "Field",
    "FrameDecoder",
    "FrameError",
    "LineDecoder",
    "StxFrameDecoder",
]

T = TypeVar("T")


class Control(IntEnum):
    """ASCII control characters that frame the device protocols (ISO/IEC 646, ECMA-6 table 1).

    Used by every format in CONTRACT.md section 2.1 (card readers) and 2.2 (weighing
    indicators; Yaohua XK3190 manual "continuous output tf=0", Mettler Toledo
    "continuous output format" appendix).
    """

    STX = 0x02
    """Start of text: the first byte of every STX-led frame; decoders resync on it."""
    ETX = 0x03
    """End of text: last byte of stx-hex-xor, stx-bin-bcc and xk3190-tf0 frames."""
    LF = 0x0A
    """Line feed: ends an ascii-line frame; also inside stx-hex-xor before ETX."""
    CR = 0x0D
    """Carriage return: precedes LF in line formats; ends the Toledo weight/tare block."""


class FrameDecoder(Generic[T]):
    """Common buffering and drop accounting; subclasses implement `_next_frame`.

    ``_next_frame()`` returns one decoded item, returns ``None`` when more bytes are needed,
    or raises `FrameError` after consuming the offending bytes (so the loop always makes
    progress). Memory stays bounded: after ``frames()`` is exhausted the buffer holds at
    most one partial frame; and ``feed`` itself never lets the buffer exceed
    `MAX_PENDING` bytes even if a caller never drains ``frames()``.
    """

    MAX_PENDING: ClassVar[int] = 64 * 1024

    def __init__(self) -> None:
        self._buf = bytearray()
        self.dropped: Counter[str] = Counter()

    def feed(self, data: bytes) -> None:
        """Buffer bytes received from the device. Never raises on any content."""
        self._buf += self._prepare(data)
        excess = len(self._buf) - self.MAX_PENDING
        if excess > 0:
            del self._buf[:excess]
            self.dropped[DropReason.OVERFLOW] += 1
            self._after_overflow()

    def frames(self) -> Iterator[T]:
        """Yield every frame that can be decoded from the buffered bytes, in order."""
        while True:
            try:
                item = self._next_frame()
            except FrameError as err:
                self.dropped[err.reason] += 1
                continue
            if item is None:
                return
            yield item

    def reset(self) -> None:
        """Forget buffered bytes (the port was closed); a partial frame counts as truncated.

        ``dropped`` is kept: it is the device's lifetime tally, not the connection's.
        """
        if self._has_partial():
            self.dropped[DropReason.TRUNCATED] += 1
        self._buf.clear()
        self._reset_state()

    @property
    def buffered(self) -> int:
        """How many bytes are waiting for the rest of their frame."""
        return len(self._buf)

    # -- hooks -------------------------------------------------------------------------

    def _prepare(self, data: bytes) -> bytes:
        return data

    def _next_frame(self) -> T | None:
        raise NotImplementedError

    def _has_partial(self) -> bool:
        return bool(self._buf)

    def _after_overflow(self) -> None:
        pass

    def _reset_state(self) -> None:
        pass


class Field:
    """One position of a fixed-length frame: the bytes allowed there, and why not others."""

    __slots__ = ("allowed", "reason")

    def __init__(self, allowed: bytes | frozenset[int] | None, reason: str = DropReason.FORMAT):
        self.allowed: frozenset[int] | None = None if allowed is None else frozenset(allowed)
        self.reason = reason


ANY = Field(None)


class StxFrameDecoder(FrameDecoder[T]):
    """Fixed-length frames that start with STX.

    `LAYOUT` gives the allowed bytes of each position; it is checked on every byte that
    has arrived, so a false start (an STX inside noise) is rejected as soon as a byte does
    not fit, not only once a whole frame's worth has arrived. On a bad frame the decoder
    skips that STX only and searches again from the next byte: a genuine frame that begins
    inside the rejected bytes is still found. One bad frame counts as one drop: false
    starts inside it and the bytes after it up to the next STX are not counted again.
    Other bytes before an STX are "stray", counted once per run between two good frames.
    """

    LAYOUT: ClassVar[tuple[Field, ...]]

    def __init__(self) -> None:
        super().__init__()
        self._noise_counted = False
        self._shadow = 0  # bytes still to come of the last frame counted as bad

    @property
    def frame_len(self) -> int:
        return len(self.LAYOUT)

    def _decode(self, frame: bytes) -> T:
        """Turn one complete frame that fits `LAYOUT` into a value, or raise FrameError."""
        raise NotImplementedError

    def _next_frame(self) -> T | None:
        buf = self._buf
        while True:
            start = buf.find(Control.STX)
            if start != 0:
                skipped = len(buf) if start == -1 else start
                if skipped:
                    if not self._noise_counted:
                        self._noise_counted = True
                        self.dropped[DropReason.STRAY] += 1
                    self._consume(skipped)
                if start == -1:
                    return None
            candidate = bytes(buf[: self.frame_len])
            try:
                for pos, byte in enumerate(candidate):
                    field = self.LAYOUT[pos]
                    if field.allowed is not None and byte not in field.allowed:
                        raise FrameError(field.reason, f"byte {pos} is {byte:#04x}")
                if len(candidate) < self.frame_len:
                    return None
                item = self._decode(candidate)
            except FrameError:
                # A false start inside a frame already rejected is part of that one drop.
                counted = self._shadow == 0
                self._consume(1)
                self._noise_counted = True
                if not counted:
                    continue
                self._shadow = len(candidate) - 1
                raise
            self._consume(self.frame_len)
            self._noise_counted = False
            return item

    def _consume(self, n: int) -> None:
        del self._buf[:n]
        self._shadow = max(0, self._shadow - n)

    def _has_partial(self) -> bool:
        return bool(self._buf) and self._buf[0] == Control.STX

    def _reset_state(self) -> None:
        self._noise_counted = False
        self._shadow = 0


HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")


class LineDecoder(FrameDecoder[str]):
    """Lines ended by CR LF, holding 1..`MAX_LINE` hex digits (no start byte to sync on).

    Resynchronisation is on the line end: a line that is not entirely valid is dropped as a
    whole. A line longer than `MAX_LINE` is dropped as soon as that is known, and the rest
    of it is skipped up to the next LF, so noise without any LF cannot fill memory.
    """

    MAX_LINE: ClassVar[int] = 32

    def __init__(self) -> None:
        super().__init__()
        self._skipping = False

    def _next_frame(self) -> str | None:
        buf = self._buf
        while True:
            end = buf.find(Control.LF)
            if end == -1:
                if self._skipping:
                    buf.clear()
                elif len(buf) > self.MAX_LINE + 1:  # content + CR already too long
                    buf.clear()
                    self._skipping = True
                    raise FrameError(DropReason.LENGTH, "line longer than any card number")
                return None
            line = bytes(buf[:end])
            del buf[: end + 1]
            if self._skipping:  # tail of an over-long line, already counted
                self._skipping = False
                continue
            return self._decode_line(line)

    def _decode_line(self, line: bytes) -> str:
        if not line.endswith(b"\r"):
            raise FrameError(DropReason.FORMAT, "LF without CR")
        content = line[:-1]
        if not 1 <= len(content) <= self.MAX_LINE:
            raise FrameError(DropReason.LENGTH, f"{len(content)} characters")
        if not HEX_DIGITS.issuperset(content):
            raise FrameError(DropReason.FORMAT, "not hex digits")
        return content.decode("ascii").upper()

    def _has_partial(self) -> bool:
        return bool(self._buf) and not self._skipping

    def _after_overflow(self) -> None:
        self._skipping = True  # the buffer now starts mid-line

    def _reset_state(self) -> None:
        self._skipping = False
