"""Card reader frame formats (CONTRACT.md section 2.1, serial 8N1).

=============  ===========================================================================
format         frame
=============  ===========================================================================
ascii-line     hex digits (decimal digits are hex too), CR LF. ``3A00F1229B\\r\\n``
stx-hex-xor    STX, 10 hex chars, 2 hex chars = XOR of the 5 bytes the 10 chars encode,
               CR LF ETX. ``02 "0100E2850E" "68" 0D 0A 03``
stx-bin-bcc    STX LEN TYPE SNR[5] BCC ETX, LEN = 0x0A, BCC = XOR of LEN..SNR.
               ``02 0A 02 06 00 8E 6D 5D B0 03`` (SNR 06 00 8E 6D 5D)
=============  ===========================================================================

The card number is always uppercase hex text. Hex input is accepted in either case (the
value is the same) but `encode_card` writes uppercase, as the readers do.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from functools import reduce
from operator import xor
from typing import ClassVar

from drivers.codecs import (
    ANY,
    HEX_DIGITS,
    Control,
    Field,
    FrameDecoder,
    LineDecoder,
    StxFrameDecoder,
)
from drivers.codecs.errors import DropReason, FrameError

__all__ = [
    "CardCodec",
    "CardFormat",
    "BinBcc",
    "card_codec",
    "encode_card",
]

CardCodec = FrameDecoder[str]
"""What `card_codec` returns: ``feed(bytes)``, ``frames() -> Iterator[str]``, ``dropped``."""


class CardFormat(StrEnum):
    """Card reader wire formats, named as in the config's ``card_reader.format``."""

    ASCII_LINE = "ascii-line"
    STX_HEX_XOR = "stx-hex-xor"
    STX_BIN_BCC = "stx-bin-bcc"


class BinBcc(IntEnum):
    """Fixed header bytes of the ``stx-bin-bcc`` frame (CONTRACT.md 2.1)."""

    LEN = 0x0A
    """LEN byte: the frame's total length, STX and ETX included (always 10)."""
    TYPE_DEFAULT = 0x02
    """TYPE byte the simulators send (as in the contract's example); any TYPE is accepted."""


def _xor(data: bytes) -> int:
    return reduce(xor, data, 0)


_HEX = Field(HEX_DIGITS)


class _StxHexXor(StxFrameDecoder[str]):
    # STX, 10 hex chars of card number, 2 hex chars of XOR, CR, LF, ETX
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        Field({Control.STX}),
        *([_HEX] * 10),
        _HEX,
        _HEX,
        Field({Control.CR}),
        Field({Control.LF}),
        Field({Control.ETX}),
    )

    def _decode(self, frame: bytes) -> str:
        card = bytes.fromhex(frame[1:11].decode("ascii"))
        check = int(frame[11:13], 16)
        if _xor(card) != check:
            raise FrameError(DropReason.CHECKSUM, f"xor {_xor(card):02X} != {check:02X}")
        return card.hex().upper()


class _StxBinBcc(StxFrameDecoder[str]):
    # STX, LEN, TYPE, SNR[5], BCC, ETX
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        Field({Control.STX}),
        Field({BinBcc.LEN}, DropReason.LENGTH),
        ANY,
        *([ANY] * 5),
        ANY,
        Field({Control.ETX}),
    )

    def _decode(self, frame: bytes) -> str:
        bcc = _xor(frame[1:8])
        if bcc != frame[8]:
            raise FrameError(DropReason.CHECKSUM, f"bcc {bcc:02X} != {frame[8]:02X}")
        return frame[3:8].hex().upper()


_DECODERS: dict[CardFormat, type[FrameDecoder[str]]] = {
    CardFormat.ASCII_LINE: LineDecoder,
    CardFormat.STX_HEX_XOR: _StxHexXor,
    CardFormat.STX_BIN_BCC: _StxBinBcc,
}


def _format(fmt: str) -> CardFormat:
    try:
        return CardFormat(fmt)
    except ValueError:
        known = ", ".join(f.value for f in CardFormat)
        raise ValueError(f"unknown card reader format {fmt!r} (known: {known})") from None


def card_codec(fmt: str) -> CardCodec:
    """A fresh decoder for one card reader speaking ``fmt`` (a `CardFormat` value)."""
    return _DECODERS[_format(fmt)]()


def encode_card(fmt: str, card: str) -> bytes:
    """The frame a reader of format ``fmt`` sends for ``card`` (for simulators and tests).

    ``card`` is hex text: exactly 10 digits for the STX formats (5 bytes on the wire),
    1 to 32 for ascii-line. Raises ValueError for anything a reader could not send.
    """
    f = _format(fmt)
    text = card.upper()
    if not text or not HEX_DIGITS.issuperset(text.encode("ascii", "replace")):
        raise ValueError(f"card number {card!r} is not hex digits")
    if f is CardFormat.ASCII_LINE:
        if len(text) > LineDecoder.MAX_LINE:
            raise ValueError(f"card number {card!r} longer than {LineDecoder.MAX_LINE}")
        return text.encode("ascii") + b"\r\n"
    if len(text) != 10:
        raise ValueError(f"{f.value} carries exactly 10 hex digits, got {card!r}")
    raw = bytes.fromhex(text)
    if f is CardFormat.STX_HEX_XOR:
        return b"\x02" + text.encode("ascii") + f"{_xor(raw):02X}".encode("ascii") + b"\r\n\x03"
    body = bytes([BinBcc.LEN, BinBcc.TYPE_DEFAULT]) + raw
    return b"\x02" + body + bytes([_xor(body)]) + b"\x03"
