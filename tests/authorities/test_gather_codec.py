"""The ``gather-xml`` frame codec (CONTRACT 3.2): the header byte by byte, drops, resync, fuzzing.

S5: bytes from an authority that are not exactly a frame as the contract draws it never
become an answer: they are counted and dropped, and the decoder finds the next real frame.
The properties check that every frame the decoder yields is literally present in its input.
"""

from __future__ import annotations

import struct
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatectl.authorities.gather_codec import (
    HEAD,
    HEADER_LEN,
    MAX_XML,
    TAIL,
    CommandInfo,
    DropReason,
    GatherDecoder,
    GatherFrame,
    GatherFrameError,
    GatherInfo,
    MessageType,
    decode_message,
    encode,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ORDERS = ["big", "little"]
SEQ = "3f2b9c1e-6a4d-4e8b-9f10-2c5d7e8a9b01"

GATHER = GatherInfo(
    area_id="5301000001",
    chnl_no="K001",
    i_e_type="I",
    seq_no=SEQ,
    chnl_type="bonded",
    dr_ic_no="0100E2850E",
    gross_wt=31250,
    ve_name="云A12345",
)
COMMAND = CommandInfo(
    area_id="5301000001",
    chnl_no="K001",
    i_e_type="I",
    seq_no=SEQ,
    check_result="00000000001002000000",
    op_hint="检查放行",
    form_id="HF530120261127000123",
)


def decode(order: str, *chunks: bytes) -> tuple[list[GatherFrame], GatherDecoder]:
    decoder = GatherDecoder(order)  # type: ignore[arg-type]
    out: list[GatherFrame] = []
    for chunk in chunks:
        decoder.feed(chunk)
        out.extend(decoder.frames())
    return out, decoder


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in zip(points, points[1:])]


def hand_frame(
    xml: bytes,
    *,
    msg_type: int = 0x22,
    area: bytes = b"5301000001",
    chnl: bytes = b"K001      ",
    ie: bytes = b"I",
    reserved: bytes = b"\0\0\0\0",
    total: int | None = None,
    xml_len: int | None = None,
    tail: bytes = b"\xff\xff",
    fmt: str = ">I",
) -> bytes:
    """A frame assembled field by field straight from the contract's table."""
    total = 4 + 4 + 1 + 10 + 10 + 1 + 4 + 4 + len(xml) + 2 if total is None else total
    xml_len = len(xml) if xml_len is None else xml_len
    return (
        b"\xe2\x5c\x4b\x89"
        + struct.pack(fmt, total)
        + bytes([msg_type])
        + area
        + chnl
        + ie
        + reserved
        + struct.pack(fmt, xml_len)
        + xml
        + tail
    )


# -- the contract's layout ---------------------------------------------------------------


@pytest.mark.parametrize(("order", "fmt"), [("big", ">I"), ("little", "<I")])
def test_header_layout_byte_by_byte(order: str, fmt: str) -> None:
    """38 bytes precede the XML; each field sits where CONTRACT 3.2 puts it."""
    frame = COMMAND.to_frame()
    xml = frame.xml.encode("gb18030")
    wire = encode(frame, order)  # type: ignore[arg-type]
    assert wire == hand_frame(xml, fmt=fmt)
    assert HEADER_LEN == 38
    assert wire[0:4] == bytes([0xE2, 0x5C, 0x4B, 0x89])
    assert struct.unpack(fmt, wire[4:8])[0] == len(wire) == 38 + len(xml) + 2
    assert wire[8] == 0x22
    assert wire[9:19] == b"5301000001"
    assert wire[19:29] == b"K001" + b" " * 6
    assert wire[29:30] == b"I"
    assert wire[30:34] == b"\x00" * 4
    assert struct.unpack(fmt, wire[34:38])[0] == len(xml)
    assert wire[38:-2] == xml
    assert wire[-2:] == b"\xff\xff"


def test_big_endian_length_bytes_are_literal() -> None:
    wire = encode(GatherFrame(MessageType.GATHER_INFO, "A", "B", "E", "<x/>"))
    assert wire[4:8] == bytes([0, 0, 0, 44]) and wire[34:38] == bytes([0, 0, 0, 4])
    assert wire[9:19] == b"A" + b" " * 9 and wire[29:30] == b"E" and wire[8] == 0x21
    little = encode(GatherFrame(MessageType.GATHER_INFO, "A", "B", "E", "<x/>"), "little")
    assert little[4:8] == bytes([44, 0, 0, 0]) and little[34:38] == bytes([4, 0, 0, 0])


def test_message_types_are_the_contracts() -> None:
    assert (MessageType.GATHER_INFO, MessageType.COMMAND_INFO) == (0x21, 0x22)
    assert HEAD == b"\xe2\x5c\x4b\x89" and TAIL == b"\xff\xff"


def test_gather_info_xml_has_the_contracts_shape() -> None:
    assert GATHER.to_xml() == (
        '<GATHER_INFO AREA_ID="5301000001" CHNL_NO="K001" I_E_TYPE="I" '
        f'SEQ_NO="{SEQ}" CHNL_TYPE="bonded"><IC><DR_IC_NO>0100E2850E</DR_IC_NO></IC>'
        "<WEIGHT><GROSS_WT>31250</GROSS_WT></WEIGHT><CAR><VE_NAME>云A12345</VE_NAME></CAR></GATHER_INFO>"
    )


def test_command_info_xml_has_the_contracts_shape() -> None:
    assert COMMAND.to_xml() == (
        f'<COMMAND_INFO AREA_ID="5301000001" CHNL_NO="K001" I_E_TYPE="I" SEQ_NO="{SEQ}">'
        "<CHECK_RESULT>00000000001002000000</CHECK_RESULT><OP_HINT>检查放行</OP_HINT>"
        "<FORM_ID>HF530120261127000123</FORM_ID></COMMAND_INFO>"
    )


def test_empty_optional_values_keep_the_shape_and_read_back_as_none() -> None:
    info = GatherInfo("5301000001", "K001", "E", SEQ, "bonded", "0100E2850E", None, "  ")
    assert info.ve_name is None
    assert "<GROSS_WT></GROSS_WT>" in info.to_xml() and "<VE_NAME></VE_NAME>" in info.to_xml()
    assert GatherInfo.from_xml(info.to_xml()) == info
    command = CommandInfo("5301000001", "K001", "E", SEQ, "01", None, "")
    assert command.form_id is None
    assert CommandInfo.from_xml(command.to_xml()) == command


def test_fractional_weight_round_trips() -> None:
    info = GatherInfo("5301000001", "K001", "I", SEQ, "bonded", "0100E2850E", 31250.5)
    assert "<GROSS_WT>31250.5</GROSS_WT>" in info.to_xml()
    assert GatherInfo.from_xml(info.to_xml()).gross_wt == 31250.5


# -- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("message", [GATHER, COMMAND], ids=["GATHER_INFO", "COMMAND_INFO"])
def test_round_trip(order: str, message: GatherInfo | CommandInfo) -> None:
    frame = message.to_frame()
    got, decoder = decode(order, encode(frame, order))  # type: ignore[arg-type]
    assert got == [frame]
    assert got[0].message() == message
    assert not decoder.dropped and decoder.buffered == 0


def test_chinese_hint_travels_as_gb18030() -> None:
    """Text for people is Chinese; on this wire it is GB18030, not UTF-8."""
    hint = "核放单已核放，请通行；车牌云A12345、𠀀€"  # includes a four-byte GB18030 character
    command = CommandInfo("5301000001", "K001", "I", SEQ, "00", hint, "HF1")
    wire = encode(command.to_frame())
    assert hint.encode("gb18030") in wire
    assert hint.encode("utf-8") not in wire
    (frame,), _ = decode("big", wire)
    assert decode_message(frame) == command
    assert frame.message().op_hint == hint  # type: ignore[union-attr]


def test_special_characters_are_escaped_and_round_trip() -> None:
    nasty = 'A&B<C>"D"&amp;<!ENTITY x "y">]]>'  # within the card's 32 characters
    info = GatherInfo("5301000001", "K&<", "I", 'seq"<&>', "bonded", nasty, 1.0, nasty)
    assert "<!ENTITY" not in info.to_xml()
    (frame,), decoder = decode("big", encode(info.to_frame()))
    assert frame.message() == info
    assert not decoder.dropped


def test_xml_declaration_from_a_peer_is_accepted() -> None:
    xml = '<?xml version="1.0" encoding="GB2312"?>\n' + COMMAND.to_xml()
    (frame,), _ = decode("big", hand_frame(xml.encode("gb18030"), chnl=b"K001      "))
    assert frame.message() == COMMAND


def test_unknown_elements_and_attributes_are_ignored() -> None:
    xml = COMMAND.to_xml().replace("<OP_HINT>", '<EXTRA a="1">x</EXTRA><OP_HINT>').replace(
        'SEQ_NO="', 'VERSION="2" SEQ_NO="'
    )
    assert CommandInfo.from_xml(xml) == COMMAND


# -- values the encoder refuses (our caller's fault: ValueError) ---------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chnl_no": "K0010000001"},  # 11 characters
        {"chnl_no": "K 01"},
        {"area_id": ""},
        {"area_id": "区域"},
        {"i_e_type": "X"},
        {"seq_no": ""},
        {"dr_ic_no": "  "},
        {"ve_name": "云A\x00"},
        {"ve_name": "a\rb"},
        {"ve_name": "\ud800"},
        {"gross_wt": -1.0},
        {"gross_wt": float("nan")},
        {"gross_wt": True},
    ],
    ids=repr,
)
def test_gather_info_refuses_what_the_wire_cannot_carry(kwargs: dict[str, object]) -> None:
    values = GATHER.as_dict() | kwargs
    with pytest.raises(ValueError):
        GatherInfo(**values)  # type: ignore[arg-type]


def test_encode_refuses_oversized_xml() -> None:
    with pytest.raises(ValueError):
        encode(GatherFrame(MessageType.COMMAND_INFO, "A", "B", "I", "x" * (MAX_XML + 1)))
    with pytest.raises(ValueError):
        GatherFrame(0x23, "A", "B", "I", "")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        GatherDecoder("middle")  # type: ignore[arg-type]


# -- drops: every reason --------------------------------------------------------------------

XML = COMMAND.to_xml().encode("gb18030")

BAD_FRAMES = [
    (DropReason.LENGTH, hand_frame(XML, total=39)),
    (DropReason.LENGTH, hand_frame(XML, total=10_000_000)),
    (DropReason.LENGTH, hand_frame(XML, xml_len=len(XML) - 1)),
    (DropReason.LENGTH, hand_frame(XML, fmt="<I")),  # little-endian frame, big-endian decoder
    (DropReason.TYPE, hand_frame(XML, msg_type=0x23)),
    (DropReason.FIELD, hand_frame(XML, area=b"5301 00001")),
    (DropReason.FIELD, hand_frame(XML, area=b"          ")),
    (DropReason.FIELD, hand_frame(XML, chnl=b"K001\0\0\0\0\0\0")),
    (DropReason.FIELD, hand_frame(XML, ie=b"X")),
    (DropReason.FIELD, hand_frame(XML, reserved=b"\0\0\0\1")),
    (DropReason.TAIL, hand_frame(XML, tail=b"\xff\xfe")),
    (DropReason.ENCODING, hand_frame(XML.replace("检查放行".encode("gb18030"), b"\x81\x20\xff"))),
    (DropReason.XML, hand_frame(XML[:-1])),  # not well-formed
    (DropReason.XML, hand_frame(XML, msg_type=0x21)),  # a COMMAND_INFO body in a GATHER_INFO frame
    (DropReason.XML, hand_frame(XML, chnl=b"K002      ")),  # header disagrees with the XML
    (DropReason.XML, hand_frame(XML, area=b"5301000002")),
    (DropReason.XML, hand_frame(XML, ie=b"E")),
    (DropReason.XML, hand_frame(XML.replace(b"<CHECK_RESULT>00000000001002000000</CHECK_RESULT>", b""))),
    (DropReason.XML, hand_frame(XML.replace(b"</CHECK_RESULT>", b"</CHECK_RESULT><CHECK_RESULT>01</CHECK_RESULT>"))),
    (DropReason.XML, hand_frame(XML.replace(f'SEQ_NO="{SEQ}"'.encode(), b'SEQ_NO=" "'))),
]


@pytest.mark.parametrize(("reason", "bad"), BAD_FRAMES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD_FRAMES)])
def test_bad_frame_is_counted_and_the_next_frame_read(reason: str, bad: bytes) -> None:
    """S5: one bad frame is one drop under its reason; the good frame after it still arrives."""
    good = encode(COMMAND.to_frame())
    got, decoder = decode("big", bad + good)
    assert got == [COMMAND.to_frame()]
    assert decoder.dropped[reason] == 1
    assert decoder.buffered == 0


def test_billion_laughs_is_refused_before_parsing() -> None:
    """A DTD could expand entities without bound: any DOCTYPE or ENTITY declaration is refused."""
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
        + f']><COMMAND_INFO AREA_ID="5301000001" CHNL_NO="K001" I_E_TYPE="I" SEQ_NO="{SEQ}">'
        "<CHECK_RESULT>00</CHECK_RESULT><OP_HINT>&lol9;</OP_HINT></COMMAND_INFO>"
    )
    got, decoder = decode("big", hand_frame(laughs.encode()))
    assert got == [] and decoder.dropped == Counter({DropReason.XML: 1})
    with pytest.raises(GatherFrameError) as info:
        CommandInfo.from_xml(laughs)
    assert info.value.reason == "xml" and "DTD" in info.value.detail
    external = f'<!DOCTYPE x SYSTEM "file:///etc/passwd"><COMMAND_INFO SEQ_NO="{SEQ}"/>'
    with pytest.raises(GatherFrameError):
        CommandInfo.from_xml(external)


def test_undefined_entity_is_malformed_xml() -> None:
    with pytest.raises(GatherFrameError) as info:
        CommandInfo.from_xml(COMMAND.to_xml().replace("检查放行", "&xxe;"))
    assert info.value.reason == "xml"


@pytest.mark.parametrize("weight", ["heavy", "-5", "nan", "1_000", "inf"])
def test_gross_weight_that_is_not_a_weight_is_malformed(weight: str) -> None:
    xml = GATHER.to_xml().replace(">31250<", f">{weight}<")
    with pytest.raises(GatherFrameError):
        GatherInfo.from_xml(xml)


def test_stray_bytes_are_counted_once_per_run() -> None:
    good = encode(COMMAND.to_frame())
    got, decoder = decode("big", b"noise", b" more noise", good, b"\x00\x01", good)
    assert got == [COMMAND.to_frame()] * 2
    assert decoder.dropped == Counter({DropReason.HEAD: 2})


def test_false_head_inside_noise_does_not_hide_the_real_frame() -> None:
    good = encode(COMMAND.to_frame())
    false_start = HEAD + b"\x00\x00\x01\x00" + b"\x22" + b"garbage!"  # passes the length check, fails later
    got, decoder = decode("big", false_start + good[:20], good[20:])
    assert got == [COMMAND.to_frame()]
    assert decoder.dropped[DropReason.FIELD] == 1


def test_frame_split_inside_the_head_is_kept_across_feeds() -> None:
    good = encode(COMMAND.to_frame())
    got, decoder = decode("big", b"xx" + good[:2])
    assert got == [] and decoder.buffered == 2
    got, _ = decode("big", b"xx" + good[:2], good[2:])
    assert got == [COMMAND.to_frame()]


def test_reset_drops_a_partial_frame_as_truncated() -> None:
    decoder = GatherDecoder()
    decoder.feed(encode(COMMAND.to_frame())[:50])
    assert list(decoder.frames()) == []
    decoder.reset()
    assert decoder.dropped == Counter({DropReason.TRUNCATED: 1}) and decoder.buffered == 0
    decoder.reset()
    assert decoder.dropped[DropReason.TRUNCATED] == 1


def test_noise_without_a_head_does_not_grow_memory() -> None:
    decoder = GatherDecoder()
    for _ in range(100):
        decoder.feed(bytes(range(0x00, 0xE2)) * 10 + b"\xe2\x5c")
        assert list(decoder.frames()) == []
        assert decoder.buffered <= 3
    assert decoder.dropped == Counter({DropReason.HEAD: 1})


def test_feed_without_draining_is_bounded() -> None:
    decoder = GatherDecoder()
    good = encode(COMMAND.to_frame())
    for _ in range(GatherDecoder.MAX_PENDING // len(good) + 10):
        decoder.feed(good)
    assert decoder.buffered <= GatherDecoder.MAX_PENDING
    assert decoder.dropped[DropReason.OVERFLOW] >= 1
    assert all(frame == COMMAND.to_frame() for frame in decoder.frames())
    assert decoder.buffered == 0


def test_a_claimed_length_beyond_the_maximum_is_refused_at_once() -> None:
    """Garbage claiming a huge length is refused after 8 bytes, not after waiting for it."""
    decoder = GatherDecoder()
    decoder.feed(HEAD + b"\x7f\xff\xff\xff")
    assert list(decoder.frames()) == []
    assert decoder.dropped[DropReason.LENGTH] == 1


# -- fuzzing ---------------------------------------------------------------------------------

ASCII_FIELD = st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)], min_size=1, max_size=10)
TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc", "Cn")), max_size=30)
REQUIRED_TEXT = TEXT.map(str.strip).filter(bool)


@st.composite
def messages(draw: st.DrawFn) -> GatherInfo | CommandInfo:
    header = {
        "area_id": draw(ASCII_FIELD),
        "chnl_no": draw(ASCII_FIELD),
        "i_e_type": draw(st.sampled_from("IE")),
        "seq_no": draw(st.one_of(st.uuids().map(str), REQUIRED_TEXT)),
    }
    if draw(st.booleans()):
        return GatherInfo(
            **header,
            chnl_type=draw(st.sampled_from(["bonded", "ecommerce_9610", "non_bonded"])),
            dr_ic_no=draw(REQUIRED_TEXT),
            gross_wt=draw(st.one_of(st.none(), st.integers(0, 200_000), st.floats(0, 2e5, allow_nan=False))),
            ve_name=draw(st.one_of(st.none(), TEXT)),
        )
    return CommandInfo(
        **header,
        check_result=draw(REQUIRED_TEXT),
        op_hint=draw(st.one_of(st.none(), TEXT)),
        form_id=draw(st.one_of(st.none(), TEXT)),
    )


@FUZZ
@given(message=messages(), order=st.sampled_from(ORDERS))
def test_any_message_round_trips(message: GatherInfo | CommandInfo, order: str) -> None:
    frame = message.to_frame()
    got, decoder = decode(order, encode(frame, order))  # type: ignore[arg-type]
    assert got == [frame]
    assert got[0].message() == message
    assert not decoder.dropped


@FUZZ
@given(data=st.data(), order=st.sampled_from(ORDERS))
def test_random_bytes_never_raise_nor_invent_frames(data: st.DataObject, order: str) -> None:
    """S5: noise never raises and every frame yielded is literally present in the input."""
    stream = data.draw(st.one_of(st.binary(max_size=600), st.binary(max_size=200).map(lambda b: HEAD + b)))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    got, _ = decode(order, *split(stream, cuts))
    assert all(encode(frame, order) in stream for frame in got)  # type: ignore[arg-type]


@FUZZ
@given(data=st.data(), order=st.sampled_from(ORDERS))
def test_valid_frames_cut_anywhere_are_all_read(data: st.DataObject, order: str) -> None:
    sent = [m.to_frame() for m in data.draw(st.lists(messages(), max_size=6))]
    stream = b"".join(encode(f, order) for f in sent)  # type: ignore[arg-type]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=25))
    got, decoder = decode(order, *split(stream, cuts))
    assert got == sent
    assert not decoder.dropped and decoder.buffered == 0


@FUZZ
@given(data=st.data(), order=st.sampled_from(ORDERS))
def test_garbage_between_frames_is_skipped_and_counted(data: st.DataObject, order: str) -> None:
    """Each run of noise (without a frame head in it) is one drop; every frame is read."""
    sent = [m.to_frame() for m in data.draw(st.lists(messages(), min_size=1, max_size=5))]
    noise = data.draw(
        st.lists(st.binary(max_size=80).filter(lambda b: HEAD not in b), min_size=len(sent), max_size=len(sent))
    )
    stream = b"".join(n + encode(f, order) for n, f in zip(noise, sent))  # type: ignore[arg-type]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    got, decoder = decode(order, *split(stream, cuts))
    assert got == sent
    assert decoder.dropped == Counter({DropReason.HEAD: sum(1 for n in noise if n)})


@FUZZ
@given(data=st.data(), order=st.sampled_from(ORDERS))
def test_a_flipped_bit_is_dropped_or_still_well_formed(data: st.DataObject, order: str) -> None:
    """One flipped bit costs at most that frame; if it decodes, it is exactly the bytes received.

    gather-xml has no checksum (TCP's own checks are all there is), so a flip inside a text
    value can leave a well-formed frame; everything structural is caught.
    """
    sent = [m.to_frame() for m in data.draw(st.lists(messages(), min_size=1, max_size=4))]
    wires = [bytearray(encode(f, order)) for f in sent]  # type: ignore[arg-type]
    k = data.draw(st.integers(0, len(sent) - 1))
    pos = data.draw(st.integers(0, len(wires[k]) - 1))
    wires[k][pos] ^= 1 << data.draw(st.integers(0, 7))
    got, decoder = decode(order, b"".join(wires))
    others = sent[:k] + sent[k + 1 :]
    if len(got) == len(sent):
        assert got[:k] + got[k + 1 :] == others
        assert encode(got[k], order) == bytes(wires[k])  # type: ignore[arg-type]
        assert got[k] != sent[k]
    else:
        assert got == others
        assert sum(decoder.dropped.values()) >= 1
