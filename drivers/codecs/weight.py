"""Weighing indicator frame formats (CONTRACT.md section 2.2) and the stability rule.

``xk3190-tf0`` — Yaohua XK3190 continuous output, mode tf=0, 12 bytes::

    02 | sign | 6 digits, high first | decimals digit | XOR hi | XOR lo | 03
    02   2B     30 30 32 30 30 30      32               31       42       03   = +20.00 kg

  The check is the XOR of the sign, the six digits and the decimals digit. "bytes 1..8"
  in the contract counts from 0 = STX (the vendor manual says "bytes 2..9" counting from
  1), and the high nibble is sent first, each nibble as ``n + 0x30`` if ``n <= 9`` else
  ``n + 0x37`` (so uppercase ``A``-``F``). The contract's example proves this reading:
  2B ^ 30 ^ 30 ^ 32 ^ 30 ^ 30 ^ 30 ^ 32 = 1B -> "1" "B" = 31 42. Counting from 1
  instead (STX..last weight digit) would give 2B -> "2B", which the example does not
  show. No motion flag: ``WeightFrame.motion`` is None.

``toledo-continuous`` — Mettler Toledo continuous output, 18 bytes::

    02 | SWA | SWB | SWC | 6 digits displayed weight | 6 digits tare | 0D | CHK

  CHK is the two's complement of the low 7 bits of the sum of every byte before it,
  STX and CR included. SWA bits 0-2: decimal position (000 = x100, 001 = x10, 010 = no
  decimals, 011 = 1 place, 100 = 2 places ... 111 = 5 places). SWB bit 0: net (the
  displayed weight is gross minus tare; we add the tare back so ``kg`` is always the
  gross weight on the bridge), bit 1: negative, bit 2: out of range (over capacity /
  under zero: the frame is dropped as "range"), bit 3: motion. Other status bits differ
  between Toledo models and clones and are ignored. Leading spaces in the digit fields
  (leading-zero suppression) are accepted.

Both formats are 7-bit ASCII. Indicators are often wired 7E1 while readers here run 8N1,
which puts the parity bit in bit 7 of every received byte (STX arrives as 0x82). The
weight decoders therefore drop bit 7 of every byte before framing; the checksums catch
what parity would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum, IntFlag, StrEnum
from functools import reduce
from operator import xor
from typing import ClassVar

from drivers.codecs import ANY, Control, Field, FrameDecoder, StxFrameDecoder
from drivers.codecs.errors import DropReason, FrameError

__all__ = [
    "StabilityTracker",
    "ToledoStatusB",
    "WeightCodec",
    "WeightFormat",
    "WeightFrame",
    "XK3190",
    "encode_weight",
    "weight_codec",
]


class WeightFormat(StrEnum):
    """Weighing indicator wire formats, named as in the config's ``weighbridge.format``."""

    XK3190_TF0 = "xk3190-tf0"
    TOLEDO_CONTINUOUS = "toledo-continuous"


@dataclass(frozen=True, slots=True)
class WeightFrame:
    """One reading: gross kilograms, and the indicator's motion flag (None if it has none)."""

    kg: float
    motion: bool | None

    def __post_init__(self) -> None:
        if not isinstance(self.kg, (int, float)) or not math.isfinite(self.kg):
            raise ValueError(f"weight must be a finite number, got {self.kg!r}")
        if self.motion is not None and not isinstance(self.motion, bool):
            raise ValueError(f"motion must be bool or None, got {self.motion!r}")


WeightCodec = FrameDecoder[WeightFrame]
"""What `weight_codec` returns: ``feed(bytes)``, ``frames() -> Iterator[WeightFrame]``."""


class XK3190(IntEnum):
    """Bytes of the Yaohua XK3190 tf=0 frame (XK3190-A9 manual, "continuous output")."""

    PLUS = 0x2B
    """Sign byte ``+``."""
    MINUS = 0x2D
    """Sign byte ``-``."""
    CHECK_DIGIT_OFFSET = 0x30
    """A check nibble 0..9 is sent as ``n + 0x30`` (``0``..``9``)."""
    CHECK_LETTER_OFFSET = 0x37
    """A check nibble 10..15 is sent as ``n + 0x37`` (``A``..``F``)."""


class ToledoStatusB(IntFlag):
    """Status word B bits of the Toledo continuous format (e.g. Wildcat manual table 6-10)."""

    NET = 0x01
    """Displayed weight is net (gross minus tare)."""
    NEGATIVE = 0x02
    """Displayed weight is negative."""
    OUT_OF_RANGE = 0x04
    """Over capacity or under zero: the digits are not a weight."""
    MOTION = 0x08
    """Scale in motion (dynamic)."""
    KG = 0x10
    """Units are kilograms (the simulators set it; the decoder does not require it)."""
    ALWAYS_ONE = 0x20
    """Bit 5, set in every status word on genuine Toledo terminals."""


_TOLEDO_SWA_INCREMENT_1 = 0x08  # SWA bits 3-4 = 01: display increment x1
_TOLEDO_NO_DECIMALS = 0b010  # SWA bits 0-2 code for "XXXXXX"

_DIGITS = Field(b"0123456789")
_DIGIT_OR_SPACE = Field(b"0123456789 ")
_MASK7 = bytes(b & 0x7F for b in range(256))


def _xk_check(body: bytes) -> bytes:
    x = reduce(xor, body, 0)
    return bytes(
        n + (XK3190.CHECK_DIGIT_OFFSET if n <= 9 else XK3190.CHECK_LETTER_OFFSET)
        for n in (x >> 4, x & 0x0F)
    )


def _toledo_check(prior: bytes) -> int:
    return -sum(prior) & 0x7F


def _scaled(value: int, decimals: int) -> float:
    kg = value * 10 ** (-decimals) if decimals < 0 else value / 10**decimals
    return float(kg) + 0.0  # + 0.0 turns -0.0 into 0.0


class _SevenBit(StxFrameDecoder[WeightFrame]):
    def _prepare(self, data: bytes) -> bytes:
        return data.translate(_MASK7)


class _Xk3190Tf0(_SevenBit):
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        Field({Control.STX}),
        Field({XK3190.PLUS, XK3190.MINUS}),
        *([_DIGITS] * 6),
        _DIGITS,
        Field(b"0123456789ABCDEF"),
        Field(b"0123456789ABCDEF"),
        Field({Control.ETX}),
    )

    def _decode(self, frame: bytes) -> WeightFrame:
        expected = _xk_check(frame[1:9])
        if frame[9:11] != expected:
            raise FrameError(
                DropReason.CHECKSUM, f"check {frame[9:11]!r} != {expected!r}"
            )
        value = int(frame[2:8])
        if frame[1] == XK3190.MINUS:
            value = -value
        return WeightFrame(_scaled(value, frame[8] - 0x30), None)


def _toledo_digits(field: bytes) -> int:
    digits = field.lstrip(b" ")
    if not digits or not digits.isdigit():
        raise FrameError(DropReason.FORMAT, f"digits {field!r}")
    return int(digits)


class _ToledoContinuous(_SevenBit):
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        Field({Control.STX}),
        ANY,  # SWA
        ANY,  # SWB
        ANY,  # SWC
        *([_DIGIT_OR_SPACE] * 6),
        *([_DIGIT_OR_SPACE] * 6),
        Field({Control.CR}),
        ANY,  # checksum
    )

    def _decode(self, frame: bytes) -> WeightFrame:
        check = _toledo_check(frame[:17])
        if frame[17] != check:
            raise FrameError(DropReason.CHECKSUM, f"check {frame[17]:02X} != {check:02X}")
        swa, swb = frame[1], ToledoStatusB(frame[2])
        if ToledoStatusB.OUT_OF_RANGE in swb:
            raise FrameError(DropReason.RANGE, "indicator reports out of range")
        shown = _toledo_digits(frame[4:10])
        tare = _toledo_digits(frame[10:16])
        if ToledoStatusB.NEGATIVE in swb:
            shown = -shown
        gross = shown + tare if ToledoStatusB.NET in swb else shown
        decimals = (swa & 0x07) - _TOLEDO_NO_DECIMALS
        return WeightFrame(_scaled(gross, decimals), ToledoStatusB.MOTION in swb)


_DECODERS: dict[WeightFormat, type[FrameDecoder[WeightFrame]]] = {
    WeightFormat.XK3190_TF0: _Xk3190Tf0,
    WeightFormat.TOLEDO_CONTINUOUS: _ToledoContinuous,
}


def _format(fmt: str) -> WeightFormat:
    try:
        return WeightFormat(fmt)
    except ValueError:
        known = ", ".join(f.value for f in WeightFormat)
        raise ValueError(f"unknown weighing indicator format {fmt!r} (known: {known})") from None


def weight_codec(fmt: str) -> WeightCodec:
    """A fresh decoder for one weighing indicator speaking ``fmt`` (a `WeightFormat` value)."""
    return _DECODERS[_format(fmt)]()


def _digits_for(kg: float, decimals: int | None, max_decimals: int) -> tuple[int, int]:
    """(integer shown on the display, decimals) for ``kg``; fewest decimals if not given."""
    if not math.isfinite(kg):
        raise ValueError(f"weight must be finite, got {kg!r}")
    if decimals is None:
        for d in range(max_decimals + 1):
            n = round(kg * 10**d)
            if n / 10**d == kg:
                break
        else:
            raise ValueError(f"{kg!r} kg needs more than {max_decimals} decimals")
    else:
        if not 0 <= decimals <= max_decimals:
            raise ValueError(f"decimals must be 0..{max_decimals}, got {decimals}")
        d, n = decimals, round(kg * 10**decimals)
    if abs(n) > 999_999:
        raise ValueError(f"{kg!r} kg does not fit six digits with {d} decimals")
    return n, d


def encode_weight(
    fmt: str, kg: float, motion: bool = False, *, decimals: int | None = None
) -> bytes:
    """The frame an indicator of format ``fmt`` sends while showing ``kg`` (simulators, tests).

    ``decimals`` fixes the decimal places shown; by default the fewest that show ``kg``
    exactly. ``motion`` is only representable in toledo-continuous (xk3190 has no flag).
    """
    f = _format(fmt)
    if f is WeightFormat.XK3190_TF0:
        n, d = _digits_for(kg, decimals, 9)
        body = bytes([XK3190.MINUS if n < 0 else XK3190.PLUS]) + b"%06d%d" % (abs(n), d)
        return bytes([Control.STX]) + body + _xk_check(body) + bytes([Control.ETX])
    n, d = _digits_for(kg, decimals, 5)
    swa = ToledoStatusB.ALWAYS_ONE | _TOLEDO_SWA_INCREMENT_1 | (d + _TOLEDO_NO_DECIMALS)
    swb = ToledoStatusB.ALWAYS_ONE | ToledoStatusB.KG
    if n < 0:
        swb |= ToledoStatusB.NEGATIVE
    if motion:
        swb |= ToledoStatusB.MOTION
    prior = (
        bytes([Control.STX, swa, swb, ToledoStatusB.ALWAYS_ONE])
        + b"%06d%06d" % (abs(n), 0)
        + bytes([Control.CR])
    )
    return prior + bytes([_toledo_check(prior)])


class StabilityTracker:
    """Decides when a weight counts as stable (CONTRACT.md 2.2).

    With a motion flag (Toledo) a reading is stable when the flag is clear. Without one
    (XK3190) it is stable once ``stable_samples`` identical readings arrived in a row,
    this one included. Sans-IO: feed it frames, in order, from one indicator.
    """

    def __init__(self, stable_samples: int) -> None:
        if isinstance(stable_samples, bool) or not isinstance(stable_samples, int):
            raise TypeError("stable_samples must be an int")
        if stable_samples < 1:
            raise ValueError(f"stable_samples must be at least 1, got {stable_samples}")
        self.stable_samples = stable_samples
        self._last: float | None = None
        self._run = 0

    def update(self, frame: WeightFrame) -> bool:
        """Take the next reading; True if the weight is now stable."""
        if frame.kg == self._last:
            self._run = min(self._run + 1, self.stable_samples)
        else:
            self._last, self._run = frame.kg, 1
        if frame.motion is not None:
            return not frame.motion
        return self._run >= self.stable_samples

    def reset(self) -> None:
        """Forget the run of readings (after the indicator was lost and found again)."""
        self._last, self._run = None, 0
