"""Sans-IO codec of the ``gather-xml`` customs front-end protocol (CONTRACT 3.2).

One frame on the wire (offsets in bytes, integers big-endian unless ``byte_order="little"``,
which switches both uint32s)::

    0   4  head            E2 5C 4B 89
    4   4  uint32          total frame length, head to tail inclusive
    8   1  uint8           message type (MessageType)
    9  10  AREA_ID         ASCII, space-padded on the right
   19  10  CHNL_NO         ASCII, space-padded on the right
   29   1  I/E             b"I" (in) or b"E" (out)
   30   4  reserved        zero
   34   4  uint32          XML length n (= total - 40)
   38   n  XML             GB18030
 38+n   2  tail            FF FF

Push bytes in, pull frames out (STYLE 2, the wsproto habit): :meth:`GatherDecoder.feed`
only buffers, :meth:`GatherDecoder.frames` yields every complete valid frame and keeps a
partial one for the next ``feed``. Bad bytes never escape as exceptions: they are counted
in :attr:`GatherDecoder.dropped` under a :class:`DropReason` and the decoder
resynchronises on the next head. Nothing here imports asyncio or touches a socket; the
client (:mod:`gatectl.authorities.gather_xml`) and the simulator
(:mod:`simulators.authority_gather`) own the I/O.

A frame is only yielded when all of it holds together: the header fields are well formed,
both lengths agree, the tail is there, the XML is canonical GB18030, and the XML is a
well-formed message of the frame's type whose AREA_ID, CHNL_NO and I_E_TYPE attributes
repeat the header's. So a frame the decoder yields is always one that was sent as such
(S5: nonsense never becomes an answer).

The XML bodies are built with :mod:`xml.etree.ElementTree` and parsed by expat directly
into an ElementTree, under limits (``docs/reliability.md``): the frame at most
:data:`MAX_XML` bytes, elements nested at most :data:`MAX_XML_DEPTH` deep, at most
:data:`MAX_XML_ELEMENTS` elements, and no DTD at all. Entity expansion needs entity
declarations, which live in a DTD: the parser refuses a document type declaration, an
entity declaration or an external entity reference as soon as expat reports it, so
nothing is ever expanded or fetched (the text is also refused up front if it contains
``<!DOCTYPE`` or ``<!ENTITY``). Every text value has a length: SEQ_NO 128 characters,
CHECK_RESULT and FORM_ID 64, OP_HINT 256 (it goes on the lane display), card and plate 32.
"""

from __future__ import annotations

import math
import re
import struct
import xml.etree.ElementTree as ET
from xml.parsers import expat
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any, ClassVar, Final, Literal

__all__ = [
    "FIXED_FIELD_LEN",
    "HEAD",
    "HEADER_LEN",
    "MAX_FRAME",
    "MAX_XML",
    "MAX_XML_DEPTH",
    "MAX_XML_ELEMENTS",
    "MIN_FRAME",
    "TAIL",
    "ByteOrder",
    "CommandInfo",
    "DropReason",
    "GatherDecoder",
    "GatherFrame",
    "GatherFrameError",
    "GatherInfo",
    "MessageType",
    "check_fixed_field",
    "decode_message",
    "encode",
]

ByteOrder = Literal["big", "little"]

HEAD: Final = b"\xe2\x5c\x4b\x89"
"""First four bytes of every frame; the decoder resynchronises on it."""
TAIL: Final = b"\xff\xff"
"""Last two bytes of every frame."""
HEADER_LEN: Final = 38
"""Bytes before the XML: head 4, length 4, type 1, AREA_ID 10, CHNL_NO 10, I/E 1, reserved 4, XML length 4."""
MIN_FRAME: Final = HEADER_LEN + len(TAIL)
"""A frame with an empty XML (never valid as a message, but a valid length)."""
MAX_XML: Final = 64 * 1024
"""XML bodies larger than this are not gate messages; refused rather than buffered."""
MAX_FRAME: Final = MIN_FRAME + MAX_XML
MAX_XML_DEPTH: Final = 8
"""Elements nested deeper than this are refused; the messages are three deep."""
MAX_XML_ELEMENTS: Final = 256
"""More elements than this are refused; a message has seven."""
MAX_ATTRIBUTES: Final = 16
"""Attributes of one element; GATHER_INFO has five."""
FIXED_FIELD_LEN: Final = 10
"""AREA_ID and CHNL_NO are 10 ASCII bytes, space-padded."""

_OFF_LEN, _OFF_TYPE, _OFF_AREA, _OFF_CHNL, _OFF_IE, _OFF_RES, _OFF_XML_LEN = 4, 8, 9, 19, 29, 30, 34
_RESERVED: Final = b"\x00\x00\x00\x00"
_UINT32: Final[dict[str, struct.Struct]] = {"big": struct.Struct(">I"), "little": struct.Struct("<I")}
_FIXED_VALUE = re.compile(r"[\x21-\x7e]{1,10}")
_IE_VALUES: Final = frozenset({"I", "E"})
# Characters XML 1.0 cannot carry, plus CR (a parser turns CR in text into LF, so it would
# not survive the round trip).
_NOT_XML_CHAR = re.compile("[^\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_WEIGHT_TEXT = re.compile(r"[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")


class MessageType(IntEnum):
    """The message type byte at offset 8 (CONTRACT 3.2)."""

    GATHER_INFO = 0x21
    """Daemon → authority: the vehicle at the lane (card, weight, plate). CONTRACT 3.2."""
    COMMAND_INFO = 0x22
    """Authority → daemon: the check result for one GATHER_INFO, same SEQ_NO. CONTRACT 3.2."""


_MESSAGE_TYPES: Final = frozenset(int(t) for t in MessageType)


class DropReason:
    """Keys of :attr:`GatherDecoder.dropped`: why bytes from the peer were thrown away."""

    HEAD = "head"
    """A run of bytes outside any frame (before a head). Counted once per run."""
    LENGTH = "length"
    """Total length outside ``MIN_FRAME..MAX_FRAME``, or the XML length disagrees with it."""
    TYPE = "type"
    """A message type byte that is not a :class:`MessageType`."""
    FIELD = "field"
    """AREA_ID or CHNL_NO not 1-10 printable ASCII + spaces, I/E not I or E, reserved not zero."""
    TAIL = "tail"
    """The bytes where the length puts the tail are not ``FF FF``."""
    ENCODING = "encoding"
    """The XML bytes are not (canonical) GB18030."""
    XML = "xml"
    """Not well-formed XML, a DTD, not a message of the frame's type, or disagreeing with the header."""
    OVERFLOW = "overflow"
    """``feed()`` was given far more than any frame without ``frames()`` being drained."""
    TRUNCATED = "truncated"
    """A partial frame thrown away by ``reset()``."""


class GatherFrameError(ValueError):
    """Bytes from the peer that are not a valid frame or message (the peer's fault, not ours)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _check_byte_order(byte_order: str) -> ByteOrder:
    if byte_order not in _UINT32:
        raise ValueError(f"byte_order must be 'big' or 'little', not {byte_order!r}")
    return byte_order  # type: ignore[return-value]


def check_fixed_field(name: str, value: str) -> str:
    """``value`` if it fits a 10-byte header field (1-10 printable ASCII, no spaces), else ValueError."""
    if not isinstance(value, str) or not _FIXED_VALUE.fullmatch(value):
        raise ValueError(f"{name} must be 1-10 printable ASCII characters without spaces, not {value!r}")
    return value


def _check_ie(value: str) -> str:
    if value not in _IE_VALUES:
        raise ValueError(f"I/E must be 'I' or 'E', not {value!r}")
    return value


# -- frames ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatherFrame:
    """One frame: its header fields and its XML text (not yet GB18030 bytes).

    ``area_id`` and ``chnl_no`` are the header values without their padding. Construction
    checks every header rule, so a ``GatherFrame`` can always be encoded unless its XML is
    larger than :data:`MAX_XML` once in GB18030.
    """

    msg_type: MessageType
    area_id: str
    chnl_no: str
    i_e: str
    xml: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "msg_type", MessageType(self.msg_type))
        check_fixed_field("AREA_ID", self.area_id)
        check_fixed_field("CHNL_NO", self.chnl_no)
        _check_ie(self.i_e)
        if not isinstance(self.xml, str):
            raise ValueError("GatherFrame.xml must be text (it is encoded as GB18030)")

    def message(self) -> GatherInfo | CommandInfo:
        """The parsed body; see :func:`decode_message`."""
        return decode_message(self)


def encode(frame: GatherFrame, byte_order: ByteOrder = "big") -> bytes:
    """The bytes of ``frame`` on the wire. ValueError if its XML cannot be framed."""
    u32 = _UINT32[_check_byte_order(byte_order)]
    try:
        xml = frame.xml.encode("gb18030")
    except UnicodeEncodeError as exc:
        raise ValueError(f"XML cannot be encoded as GB18030: {exc}") from None
    if len(xml) > MAX_XML:
        raise ValueError(f"XML is {len(xml)} bytes, more than {MAX_XML}")
    return b"".join(
        (
            HEAD,
            u32.pack(MIN_FRAME + len(xml)),
            bytes([frame.msg_type]),
            frame.area_id.encode("ascii").ljust(FIXED_FIELD_LEN, b" "),
            frame.chnl_no.encode("ascii").ljust(FIXED_FIELD_LEN, b" "),
            frame.i_e.encode("ascii"),
            _RESERVED,
            u32.pack(len(xml)),
            xml,
            TAIL,
        )
    )


def _fixed_field(name: str, raw: bytes) -> str:
    """A 10-byte space-padded ASCII field; GatherFrameError("field") if it is not one."""
    value = raw.rstrip(b" ")
    if not value or not all(0x21 <= b <= 0x7E for b in value):
        raise GatherFrameError(DropReason.FIELD, f"{name} is {raw!r}")
    return value.decode("ascii")


class GatherDecoder:
    """Decodes the frames a peer sends; never raises on any input.

    Header fields are checked as soon as their bytes arrive, so garbage after a chance head
    is refused without waiting for the length it claims. A rejected candidate is skipped by
    one byte only and the search starts again, so a genuine frame that begins inside the
    rejected bytes is still found. One rejected candidate counts once, under its reason;
    bytes outside frames count once per run as ``head``. Memory is bounded: the buffer never
    exceeds :attr:`MAX_PENDING` bytes, and with no head in sight at most three bytes (a
    possible head prefix) are kept.
    """

    MAX_PENDING: ClassVar[int] = 2 * MAX_FRAME

    def __init__(self, byte_order: ByteOrder = "big") -> None:
        self.byte_order: ByteOrder = _check_byte_order(byte_order)
        self._u32 = _UINT32[byte_order]
        self._buf = bytearray()
        self._noise_counted = False
        self.dropped: Counter[str] = Counter()

    def feed(self, data: bytes) -> None:
        """Buffer bytes received from the peer."""
        self._buf += data
        excess = len(self._buf) - self.MAX_PENDING
        if excess > 0:
            del self._buf[:excess]
            self.dropped[DropReason.OVERFLOW] += 1
            self._noise_counted = True  # the buffer now starts mid-stream: part of this loss

    def frames(self) -> Iterator[GatherFrame]:
        """Yield every valid frame in the buffered bytes, in order."""
        while True:
            try:
                frame = self._next_frame()
            except GatherFrameError as err:
                self.dropped[err.reason] += 1
                continue
            if frame is None:
                return
            yield frame

    def encode(self, frame: GatherFrame) -> bytes:
        """``encode(frame)`` in this decoder's byte order."""
        return encode(frame, self.byte_order)

    def reset(self) -> None:
        """Forget buffered bytes (the connection ended); a partial frame counts as truncated."""
        if self._buf and HEAD.startswith(bytes(self._buf[: len(HEAD)])):
            self.dropped[DropReason.TRUNCATED] += 1
        self._buf.clear()
        self._noise_counted = False

    @property
    def buffered(self) -> int:
        """How many bytes are waiting for the rest of their frame."""
        return len(self._buf)

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    # -- internals ---------------------------------------------------------------------

    def _skip(self, n: int) -> None:
        if n <= 0:
            return
        if not self._noise_counted:
            self._noise_counted = True
            self.dropped[DropReason.HEAD] += 1
        del self._buf[:n]

    def _next_frame(self) -> GatherFrame | None:
        buf = self._buf
        start = buf.find(HEAD)
        if start == -1:
            keep = next((k for k in range(len(HEAD) - 1, 0, -1) if buf.endswith(HEAD[:k])), 0)
            self._skip(len(buf) - keep)
            return None
        self._skip(start)
        try:
            total = self._check_header()
            if total is None or len(buf) < total:
                return None
            frame = self._decode(bytes(buf[:total]))
        except GatherFrameError:
            del buf[:1]  # search again from the byte after this head
            self._noise_counted = True  # what follows up to the next head is this frame's loss
            raise
        del buf[:total]
        self._noise_counted = False
        return frame

    def _check_header(self) -> int | None:
        """Check the header fields that have arrived; the total length once all 38 have."""
        buf, n = self._buf, len(self._buf)
        if n < _OFF_TYPE:
            return None
        (total,) = self._u32.unpack_from(buf, _OFF_LEN)
        if not MIN_FRAME <= total <= MAX_FRAME:
            raise GatherFrameError(DropReason.LENGTH, f"total length {total}")
        if n > _OFF_TYPE and buf[_OFF_TYPE] not in _MESSAGE_TYPES:
            raise GatherFrameError(DropReason.TYPE, f"message type {buf[_OFF_TYPE]:#04x}")
        if n >= _OFF_CHNL:
            _fixed_field("AREA_ID", bytes(buf[_OFF_AREA:_OFF_CHNL]))
        if n >= _OFF_IE:
            _fixed_field("CHNL_NO", bytes(buf[_OFF_CHNL:_OFF_IE]))
        if n > _OFF_IE and buf[_OFF_IE] not in b"IE":
            raise GatherFrameError(DropReason.FIELD, f"I/E byte {buf[_OFF_IE]:#04x}")
        if n >= _OFF_XML_LEN and buf[_OFF_RES:_OFF_XML_LEN] != _RESERVED:
            raise GatherFrameError(DropReason.FIELD, f"reserved bytes {bytes(buf[_OFF_RES:_OFF_XML_LEN]).hex()}")
        if n < HEADER_LEN:
            return None
        (xml_len,) = self._u32.unpack_from(buf, _OFF_XML_LEN)
        if xml_len != total - MIN_FRAME:
            raise GatherFrameError(DropReason.LENGTH, f"XML length {xml_len} in a frame of {total}")
        return total

    def _decode(self, raw: bytes) -> GatherFrame:
        if raw[-len(TAIL) :] != TAIL:
            raise GatherFrameError(DropReason.TAIL, f"tail {raw[-len(TAIL):].hex()}")
        xml_bytes = raw[HEADER_LEN : -len(TAIL)]
        try:
            xml = xml_bytes.decode("gb18030")
        except UnicodeDecodeError as exc:
            raise GatherFrameError(DropReason.ENCODING, f"XML is not GB18030: {exc.reason}") from None
        if xml.encode("gb18030") != xml_bytes:
            raise GatherFrameError(DropReason.ENCODING, "XML is not canonical GB18030")
        frame = GatherFrame(
            msg_type=MessageType(raw[_OFF_TYPE]),
            area_id=_fixed_field("AREA_ID", raw[_OFF_AREA:_OFF_CHNL]),
            chnl_no=_fixed_field("CHNL_NO", raw[_OFF_CHNL:_OFF_IE]),
            i_e=chr(raw[_OFF_IE]),
            xml=xml,
        )
        decode_message(frame)  # a frame is only yielded with a valid body
        return frame


# -- XML bodies --------------------------------------------------------------------------


_TEXT_LIMITS: Final[dict[str, int]] = {
    "SEQ_NO": 128,
    "CHNL_TYPE": 32,
    "DR_IC_NO": 32,
    "VE_NAME": 32,
    "CHECK_RESULT": 64,
    "OP_HINT": 256,
    "FORM_ID": 64,
}


def _clean(name: str, value: Any, *, required: bool) -> str | None:
    """Strip a text value; None for empty optional values; ValueError for what XML can't carry
    or what is longer than the field's limit."""
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, not {type(value).__name__}")
    value = value.strip()
    if not value:
        if required:
            raise ValueError(f"{name} must not be empty")
        return None
    limit = _TEXT_LIMITS.get(name)
    if limit is not None and len(value) > limit:
        raise ValueError(f"{name} is {len(value)} characters, at most {limit}")
    bad = _NOT_XML_CHAR.search(value)
    if bad:
        raise ValueError(f"{name} contains {bad.group()!r}, which XML cannot carry")
    return value


def _format_weight(kg: float) -> str:
    return str(int(kg)) if float(kg).is_integer() else repr(float(kg))


class _Refused(Exception):
    """Raised from an expat handler to stop the parse at once."""


def _refuse(what: str):
    def handler(*_args: Any) -> Any:
        raise _Refused(what)

    return handler


def _parse_xml(xml: str) -> ET.Element:
    """Parse ``xml`` with expat into an ElementTree, refusing what a gate message never has.

    Stops at the first element beyond :data:`MAX_XML_DEPTH` or :data:`MAX_XML_ELEMENTS`,
    and at any DTD, entity declaration or external entity: nothing is ever expanded or
    fetched, and the work is linear in the text.
    """
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    builder = ET.TreeBuilder()
    depth = elements = 0

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal depth, elements
        depth += 1
        elements += 1
        if depth > MAX_XML_DEPTH:
            raise _Refused(f"elements nested more than {MAX_XML_DEPTH} deep")
        if elements > MAX_XML_ELEMENTS:
            raise _Refused(f"more than {MAX_XML_ELEMENTS} elements")
        if len(attrs) > MAX_ATTRIBUTES:
            raise _Refused(f"<{tag}> has more than {MAX_ATTRIBUTES} attributes")
        builder.start(tag, attrs)

    def end(tag: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(tag)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = _refuse("a DTD (document type declaration)")
    parser.EntityDeclHandler = _refuse("an entity declaration")
    parser.UnparsedEntityDeclHandler = _refuse("an entity declaration")
    parser.ExternalEntityRefHandler = _refuse("an external entity")
    try:
        parser.Parse(xml, True)
    except _Refused as exc:
        raise GatherFrameError(DropReason.XML, f"refused: {exc}") from None
    except (expat.ExpatError, ValueError) as exc:
        raise GatherFrameError(DropReason.XML, f"not well-formed XML: {exc}") from None
    return builder.close()


def _parse_root(xml: str, tag: str) -> ET.Element:
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        raise GatherFrameError(DropReason.XML, "DTD or entity declaration refused")
    root = _parse_xml(xml)
    if root.tag != tag:
        raise GatherFrameError(DropReason.XML, f"root element <{root.tag[:40]}>, expected <{tag}>")
    return root


def _attr(root: ET.Element, name: str) -> str:
    value = (root.get(name) or "").strip()
    if not value:
        raise GatherFrameError(DropReason.XML, f"<{root.tag}> has no {name}")
    return value


def _leaf(root: ET.Element, path: str, *, required: bool = False) -> str | None:
    found = root.findall(path)
    if len(found) > 1:
        raise GatherFrameError(DropReason.XML, f"{len(found)} <{path}> elements")
    if found and len(found[0]):
        raise GatherFrameError(DropReason.XML, f"<{path}> has child elements")
    value = (found[0].text or "").strip() if found else ""
    if not value and required:
        raise GatherFrameError(DropReason.XML, f"<{path}> is missing or empty")
    return value or None


def _build(cls: Any, **values: Any) -> Any:
    try:
        return cls(**values)
    except ValueError as exc:
        raise GatherFrameError(DropReason.XML, str(exc)) from None


def _to_text(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode", short_empty_elements=False)


@dataclass(frozen=True, slots=True)
class GatherInfo:
    """The GATHER_INFO body (type 0x21, daemon → authority; CONTRACT 3.2).

    Field names follow the XML names. Text values are stripped; an empty optional value is
    None and is sent as an empty element, so the message always has the contract's shape.
    ``gross_wt`` is kilograms, sent as an integer when it is whole (``31250``).
    """

    area_id: str
    chnl_no: str
    i_e_type: str
    seq_no: str
    chnl_type: str
    dr_ic_no: str
    gross_wt: float | None = None
    ve_name: str | None = None

    def __post_init__(self) -> None:
        check_fixed_field("AREA_ID", self.area_id)
        check_fixed_field("CHNL_NO", self.chnl_no)
        _check_ie(self.i_e_type)
        for name, required in (("seq_no", True), ("chnl_type", True), ("dr_ic_no", True), ("ve_name", False)):
            object.__setattr__(self, name, _clean(name.upper(), getattr(self, name), required=required))
        wt = self.gross_wt
        if wt is not None:
            if isinstance(wt, bool) or not isinstance(wt, (int, float)) or not math.isfinite(wt) or wt < 0:
                raise ValueError(f"GROSS_WT must be a finite number of kilograms >= 0, not {wt!r}")
            object.__setattr__(self, "gross_wt", float(wt))

    def to_xml(self) -> str:
        root = ET.Element(
            "GATHER_INFO",
            {
                "AREA_ID": self.area_id,
                "CHNL_NO": self.chnl_no,
                "I_E_TYPE": self.i_e_type,
                "SEQ_NO": self.seq_no,
                "CHNL_TYPE": self.chnl_type,
            },
        )
        ET.SubElement(ET.SubElement(root, "IC"), "DR_IC_NO").text = self.dr_ic_no
        weight = ET.SubElement(ET.SubElement(root, "WEIGHT"), "GROSS_WT")
        weight.text = None if self.gross_wt is None else _format_weight(self.gross_wt)
        ET.SubElement(ET.SubElement(root, "CAR"), "VE_NAME").text = self.ve_name
        return _to_text(root)

    def to_frame(self) -> GatherFrame:
        return GatherFrame(MessageType.GATHER_INFO, self.area_id, self.chnl_no, self.i_e_type, self.to_xml())

    @classmethod
    def from_xml(cls, xml: str) -> GatherInfo:
        """Parse a GATHER_INFO body; GatherFrameError("xml") if it is not one."""
        root = _parse_root(xml, "GATHER_INFO")
        weight_text = _leaf(root, "WEIGHT/GROSS_WT")
        gross_wt: float | None = None
        if weight_text is not None:
            if not _WEIGHT_TEXT.fullmatch(weight_text):
                raise GatherFrameError(DropReason.XML, f"GROSS_WT {weight_text!r} is not a weight")
            gross_wt = float(weight_text)
        return _build(
            cls,
            area_id=_attr(root, "AREA_ID"),
            chnl_no=_attr(root, "CHNL_NO"),
            i_e_type=_attr(root, "I_E_TYPE"),
            seq_no=_attr(root, "SEQ_NO"),
            chnl_type=_attr(root, "CHNL_TYPE"),
            dr_ic_no=_leaf(root, "IC/DR_IC_NO", required=True),
            gross_wt=gross_wt,
            ve_name=_leaf(root, "CAR/VE_NAME"),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CommandInfo:
    """The COMMAND_INFO body (type 0x22, authority → daemon, same SEQ_NO; CONTRACT 3.2).

    ``check_result`` is the authority's code (release when it matches ``release_codes``);
    ``op_hint`` is shown on the lane display; ``form_id`` names the release form (核放单).
    """

    area_id: str
    chnl_no: str
    i_e_type: str
    seq_no: str
    check_result: str
    op_hint: str | None = None
    form_id: str | None = None

    def __post_init__(self) -> None:
        check_fixed_field("AREA_ID", self.area_id)
        check_fixed_field("CHNL_NO", self.chnl_no)
        _check_ie(self.i_e_type)
        for name, required in (("seq_no", True), ("check_result", True), ("op_hint", False), ("form_id", False)):
            object.__setattr__(self, name, _clean(name.upper(), getattr(self, name), required=required))

    def to_xml(self) -> str:
        root = ET.Element(
            "COMMAND_INFO",
            {"AREA_ID": self.area_id, "CHNL_NO": self.chnl_no, "I_E_TYPE": self.i_e_type, "SEQ_NO": self.seq_no},
        )
        ET.SubElement(root, "CHECK_RESULT").text = self.check_result
        ET.SubElement(root, "OP_HINT").text = self.op_hint
        ET.SubElement(root, "FORM_ID").text = self.form_id
        return _to_text(root)

    def to_frame(self) -> GatherFrame:
        return GatherFrame(MessageType.COMMAND_INFO, self.area_id, self.chnl_no, self.i_e_type, self.to_xml())

    @classmethod
    def from_xml(cls, xml: str) -> CommandInfo:
        """Parse a COMMAND_INFO body; GatherFrameError("xml") if it is not one."""
        root = _parse_root(xml, "COMMAND_INFO")
        return _build(
            cls,
            area_id=_attr(root, "AREA_ID"),
            chnl_no=_attr(root, "CHNL_NO"),
            i_e_type=_attr(root, "I_E_TYPE"),
            seq_no=_attr(root, "SEQ_NO"),
            check_result=_leaf(root, "CHECK_RESULT", required=True),
            op_hint=_leaf(root, "OP_HINT"),
            form_id=_leaf(root, "FORM_ID"),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_MESSAGES: Final[dict[MessageType, Any]] = {
    MessageType.GATHER_INFO: GatherInfo,
    MessageType.COMMAND_INFO: CommandInfo,
}


def decode_message(frame: GatherFrame) -> GatherInfo | CommandInfo:
    """Parse ``frame.xml`` as the message its type names and check it against the header.

    GatherFrameError("xml") when the XML is not that message, or when its AREA_ID, CHNL_NO
    or I_E_TYPE attribute disagrees with the header's field.
    """
    message = _MESSAGES[frame.msg_type].from_xml(frame.xml)
    for attr, header in (("area_id", frame.area_id), ("chnl_no", frame.chnl_no), ("i_e_type", frame.i_e)):
        if getattr(message, attr) != header:
            raise GatherFrameError(
                DropReason.XML, f"{attr.upper()} {getattr(message, attr)!r} disagrees with the header's {header!r}"
            )
    return message
