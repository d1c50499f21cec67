"""Card reader codecs: the contract's examples byte for byte, drops, resync, fuzzing.

The properties compare the codec against small reference scanners written straight from
CONTRACT.md 2.1, so a yielded card must be backed by a valid frame in the input.
"""

from __future__ import annotations

from functools import reduce
from operator import xor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.codecs.card import CardFormat, card_codec, encode_card

FORMATS = [f.value for f in CardFormat]
STX_FORMATS = [CardFormat.STX_HEX_XOR.value, CardFormat.STX_BIN_BCC.value]
HEX = b"0123456789ABCDEFabcdef"
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STREAM_FUZZ = settings(FUZZ, max_examples=120)  # whole-stream properties: costlier per example

CONTRACT_EXAMPLES = [
    ("ascii-line", b"3A00F1229B\r\n", "3A00F1229B"),
    ("stx-hex-xor", b"\x02" + b"0100E2850E" + b"68" + b"\x0d\x0a\x03", "0100E2850E"),
    ("stx-bin-bcc", bytes.fromhex("02 0A 02 06 00 8E 6D 5D B0 03"), "06008E6D5D"),
]


# -- reference scanners (the contract, written as plainly as possible) -------------------


def frame_at(fmt: str, data: bytes, i: int) -> tuple[int, str] | None:
    """(length, card) of a valid frame starting at ``data[i]``, else None."""
    if fmt == "ascii-line":
        end = data.find(b"\n", i)
        if end == -1 or (i and data[i - 1] != 0x0A):
            return None
        body = data[i : end - 1]
        if data[end - 1 : end] == b"\r" and end > i and 1 <= len(body) <= 32 and all(
            c in HEX for c in body
        ):
            return end + 1 - i, body.decode().upper()
        return None
    if data[i] != 0x02:
        return None
    if fmt == "stx-hex-xor":
        w = data[i : i + 16]
        if (
            len(w) == 16
            and all(c in HEX for c in w[1:13])
            and w[13:16] == b"\r\n\x03"
            and reduce(xor, bytes.fromhex(w[1:11].decode()), 0) == int(w[11:13], 16)
        ):
            return 16, w[1:11].decode().upper()
        return None
    w = data[i : i + 10]
    if len(w) == 10 and w[1] == 0x0A and w[9] == 0x03 and reduce(xor, w[1:8], 0) == w[8]:
        return 10, w[3:8].hex().upper()
    return None


def reference_cards(fmt: str, data: bytes) -> set[str]:
    """Every card number that some valid frame anywhere in ``data`` carries."""
    return {hit[1] for i in range(len(data)) if (hit := frame_at(fmt, data, i))}


def greedy_reference(fmt: str, data: bytes) -> list[str]:
    """Exactly what a decoder must yield: scan left to right; at each position where a
    valid frame starts, take it and continue after it; otherwise move on one byte.

    For lines that is "every valid line"; for the STX formats it is "resync on the next
    STX after a bad one", as CONTRACT 2.1 asks.
    """
    out: list[str] = []
    i = 0
    while i < len(data):
        hit = frame_at(fmt, data, i)
        if hit is None:
            i += 1
            continue
        out.append(hit[1])
        i += hit[0]
    return out


def decode(fmt: str, *chunks: bytes) -> tuple[list[str], object]:
    codec = card_codec(fmt)
    out: list[str] = []
    for chunk in chunks:
        codec.feed(chunk)
        out.extend(codec.frames())
    return out, codec


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in zip(points, points[1:])]


def cards(fmt: str) -> st.SearchStrategy[str]:
    if fmt == "ascii-line":
        return st.text(alphabet="0123456789ABCDEFabcdef", min_size=1, max_size=32)
    return st.binary(min_size=5, max_size=5).map(lambda b: b.hex().upper())


def expected(card: str) -> str:
    return card.upper()


# -- the contract's examples ----------------------------------------------------------


@pytest.mark.parametrize(("fmt", "frame", "card"), CONTRACT_EXAMPLES)
def test_contract_example_decodes(fmt: str, frame: bytes, card: str) -> None:
    """CONTRACT 2.1: each format's example frame reads as the card shown."""
    got, codec = decode(fmt, frame)
    assert got == [card]
    assert not codec.dropped
    assert codec.buffered == 0


@pytest.mark.parametrize(("fmt", "frame", "card"), CONTRACT_EXAMPLES)
def test_contract_example_encodes_byte_for_byte(fmt: str, frame: bytes, card: str) -> None:
    assert encode_card(fmt, card) == frame
    assert encode_card(fmt, card.lower()) == frame


def test_stx_hex_xor_accepts_lowercase_hex_and_reports_uppercase() -> None:
    got, _ = decode("stx-hex-xor", b"\x020100e2850e68\r\n\x03")
    assert got == ["0100E2850E"]


def test_ascii_line_decimal_card_numbers() -> None:
    got, _ = decode("ascii-line", b"0012345678\r\n", b"3a00f1229b\r\n")
    assert got == ["0012345678", "3A00F1229B"]


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_checksum_or_format_counted_and_next_frame_read(fmt: str) -> None:
    """Bad input counted and dropped: a corrupted frame is dropped, the next one is read."""
    good = encode_card(fmt, "0100E2850E")
    if fmt == "ascii-line":
        bad, reason = b"0100E2850G\r\n", "format"
    elif fmt == "stx-hex-xor":
        bad, reason = good.replace(b"68", b"69"), "checksum"
    else:
        bad, reason = good[:8] + bytes([good[8] ^ 0xFF]) + good[9:], "checksum"
    got, codec = decode(fmt, bad + good)
    assert got == ["0100E2850E"]
    assert codec.dropped == {reason: 1}


def test_bin_bcc_wrong_length_byte_counted_as_length() -> None:
    """Bad input counted and dropped: LEN other than 0x0A."""
    good = encode_card("stx-bin-bcc", "06008E6D5D")
    bad = good[:1] + b"\x0b" + good[2:]
    got, codec = decode("stx-bin-bcc", bad, good)
    assert got == ["06008E6D5D"]
    assert codec.dropped == {"length": 1}


@pytest.mark.parametrize("fmt", STX_FORMATS)
def test_stray_bytes_counted_once_per_run(fmt: str) -> None:
    """Bad input counted and dropped: noise between frames is one 'stray' drop per run."""
    frame = encode_card(fmt, "0100E2850E")
    got, codec = decode(fmt, b"noise", b"more noise", frame, b"\xff\x00", frame)
    assert got == ["0100E2850E"] * 2
    assert codec.dropped == {"stray": 2}


@pytest.mark.parametrize("fmt", STX_FORMATS)
def test_false_start_inside_noise_does_not_hide_the_real_frame(fmt: str) -> None:
    """Resync on the next STX: an STX in the noise right before a frame costs nothing."""
    frame = encode_card(fmt, "0100E2850E")
    for noise in (b"\x02", b"\x02\x02", b"\x02A", b"\x02\x0a\x02"):
        got, _ = decode(fmt, noise + frame)
        assert got == ["0100E2850E"], noise


def test_ascii_line_overlong_line_dropped_then_next_line_read() -> None:
    codec = card_codec("ascii-line")
    codec.feed(b"A" * 100)
    assert list(codec.frames()) == []
    assert codec.dropped == {"length": 1}
    codec.feed(b"B" * 1000 + b"\r\n3A00F1229B\r\n")
    assert list(codec.frames()) == ["3A00F1229B"]
    assert codec.dropped == {"length": 1}


def test_ascii_line_lf_without_cr_and_empty_line_dropped() -> None:
    got, codec = decode("ascii-line", b"3A00F1229B\n", b"\r\n", b"3A00F1229B\r\n")
    assert got == ["3A00F1229B"]
    assert codec.dropped == {"format": 1, "length": 1}


@pytest.mark.parametrize("fmt", FORMATS)
def test_partial_frame_is_kept_across_feeds(fmt: str) -> None:
    frame = encode_card(fmt, "0100E2850E")
    got, codec = decode(fmt, *[frame[i : i + 1] for i in range(len(frame))])
    assert got == ["0100E2850E"]
    assert not codec.dropped


@pytest.mark.parametrize("fmt", FORMATS)
def test_reset_drops_partial_frame_as_truncated(fmt: str) -> None:
    frame = encode_card(fmt, "0100E2850E")
    codec = card_codec(fmt)
    codec.feed(frame[:4])
    assert list(codec.frames()) == []
    codec.reset()
    assert codec.buffered == 0
    assert codec.dropped == {"truncated": 1}
    codec.feed(frame)
    assert list(codec.frames()) == ["0100E2850E"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_garbage_stream_without_frame_start_does_not_grow_memory(fmt: str) -> None:
    """Bounded buffer: a megabyte of noise with no STX (or no LF) keeps memory flat."""
    noise = bytes(b for b in range(256) if b not in (0x02, 0x0A)) * 4
    codec = card_codec(fmt)
    for _ in range(1024):
        codec.feed(noise)
        assert list(codec.frames()) == []
        assert codec.buffered <= 34
    # a caller that never drains frames() is still bounded
    lazy = card_codec(fmt)
    for _ in range(1024):
        lazy.feed(noise)
    assert lazy.buffered <= lazy.MAX_PENDING
    assert lazy.dropped["overflow"] > 0
    lazy.feed(b"\r\n" + encode_card(fmt, "0100E2850E"))
    assert list(lazy.frames()) == ["0100E2850E"]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown card reader format"):
        card_codec("wiegand-26")
    with pytest.raises(ValueError, match="unknown card reader format"):
        encode_card("wiegand-26", "0100E2850E")


@pytest.mark.parametrize(
    ("fmt", "card"),
    [
        ("stx-hex-xor", "0100E2850"),  # 9 digits
        ("stx-bin-bcc", "0100E2850E00"),
        ("stx-hex-xor", "0100E2850G"),
        ("ascii-line", ""),
        ("ascii-line", "1" * 33),
        ("ascii-line", "12 34"),
        ("ascii-line", "１２３"),
    ],
)
def test_encode_refuses_cards_a_reader_cannot_send(fmt: str, card: str) -> None:
    with pytest.raises(ValueError):
        encode_card(fmt, card)


# -- properties -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_random_bytes_never_raise_nor_invent_cards(fmt: str, data: st.DataObject) -> None:
    """Bad input counted and dropped: noise never raises and never yields an unsent card."""
    stream = data.draw(st.binary(max_size=400))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    got, codec = decode(fmt, *split(stream, cuts))
    assert set(got) <= reference_cards(fmt, stream)
    assert codec.buffered <= 34


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_valid_frames_cut_anywhere_are_all_read(fmt: str, data: st.DataObject) -> None:
    sent = data.draw(st.lists(cards(fmt), max_size=12))
    stream = b"".join(encode_card(fmt, c) for c in sent)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    got, codec = decode(fmt, *split(stream, cuts))
    assert got == [expected(c) for c in sent]
    assert not codec.dropped


def garbage(fmt: str) -> st.SearchStrategy[bytes]:
    """Noise that cannot form or start a frame: no STX; for lines, a line with a non-hex byte."""
    if fmt == "ascii-line":
        no_lf = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b""))
        return st.one_of(st.just(b""), no_lf.map(lambda b: b"?" + b + b"\r\n"))
    return st.binary(max_size=60).map(lambda b: b.replace(b"\x02", b""))


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_valid_frames_between_noise_are_all_read(fmt: str, data: st.DataObject) -> None:
    """Bad input counted and dropped: each run of noise is one drop; every frame is read."""
    sent = data.draw(st.lists(cards(fmt), max_size=10))
    noise = data.draw(st.lists(garbage(fmt), min_size=len(sent) + 1, max_size=len(sent) + 1))
    stream = noise[0] + b"".join(encode_card(fmt, c) + n for c, n in zip(sent, noise[1:]))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    got, codec = decode(fmt, *split(stream, cuts))
    assert got == [expected(c) for c in sent]
    assert sum(codec.dropped.values()) == sum(1 for n in noise if n)


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_frames_mixed_with_arbitrary_noise_yield_only_real_frames(
    fmt: str, data: st.DataObject
) -> None:
    sent = data.draw(st.lists(cards(fmt), max_size=8))
    noise = data.draw(st.lists(st.binary(max_size=30), min_size=len(sent), max_size=len(sent)))
    stream = b"".join(n + encode_card(fmt, c) for c, n in zip(sent, noise))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    got, _ = decode(fmt, *split(stream, cuts))
    assert set(got) <= reference_cards(fmt, stream)


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_a_flipped_bit_is_dropped_or_still_checks(fmt: str, data: st.DataObject) -> None:
    """Bad input counted and dropped: one flipped bit never yields a different card.

    ascii-line has no checksum, so there a flipped digit is a different, well-formed line:
    only the reference scanner can vouch for it.
    """
    card = data.draw(cards(fmt))
    frame = bytearray(encode_card(fmt, card))
    pos = data.draw(st.integers(0, len(frame) - 1))
    frame[pos] ^= 1 << data.draw(st.integers(0, 7))
    got, _ = decode(fmt, bytes(frame))
    if fmt == "ascii-line":
        assert len(got) <= 1
        assert set(got) <= reference_cards(fmt, bytes(frame))
    else:
        assert got in ([], [expected(card)])


def frame_stream(fmt: str) -> st.SearchStrategy[list[bytes]]:
    return st.lists(cards(fmt), min_size=2, max_size=8).map(
        lambda sent: [encode_card(fmt, c) for c in sent]
    )


@pytest.mark.parametrize("fmt", FORMATS)
@STREAM_FUZZ
@given(data=st.data())
def test_valid_frames_cut_and_spliced_hide_no_other_frame(fmt: str, data: st.DataObject) -> None:
    """A frame cut off mid-way (a cable pulled, a reader reset) and the line resuming in
    the middle of another: nothing invented, and every intact frame around it is read,
    unless the splice itself happens to form a valid frame overlapping it. The greedy
    reference scanner states exactly which frames that leaves."""
    frames = data.draw(frame_stream(fmt))
    k = data.draw(st.integers(0, len(frames) - 2))
    cut = data.draw(st.integers(0, len(frames[k])))
    resume = data.draw(st.integers(0, len(frames[k + 1])))
    pieces = [*frames[:k], frames[k][:cut] + frames[k + 1][resume:], *frames[k + 2 :]]
    stream = b"".join(pieces)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    got, codec = decode(fmt, *split(stream, cuts))
    assert got == greedy_reference(fmt, stream)
    assert codec.buffered <= 34


@pytest.mark.parametrize("fmt", FORMATS)
@STREAM_FUZZ
@given(data=st.data())
def test_a_flipped_bit_in_a_stream_costs_at_most_that_frame(fmt: str, data: st.DataObject) -> None:
    """One bit flipped anywhere in a run of frames: exactly what the reference reads (the
    frame hit is lost or still checks; a false STX it creates never hides the next one)."""
    frames = data.draw(frame_stream(fmt))
    stream = bytearray(b"".join(frames))
    pos = data.draw(st.integers(0, len(stream) - 1))
    stream[pos] ^= 1 << data.draw(st.integers(0, 7))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    got, _ = decode(fmt, *split(bytes(stream), cuts))
    assert got == greedy_reference(fmt, bytes(stream))


@pytest.mark.parametrize("fmt", FORMATS)
@STREAM_FUZZ
@given(data=st.data())
def test_decoder_equals_the_greedy_reference_on_any_bytes(fmt: str, data: st.DataObject) -> None:
    """Noise with real frames and fragments mixed in, cut anywhere: exactly the reference."""
    parts = data.draw(
        st.lists(
            st.one_of(
                st.binary(max_size=20),
                cards(fmt).map(lambda c: encode_card(fmt, c)),
                st.tuples(cards(fmt), st.integers(0, 16)).map(
                    lambda t: encode_card(fmt, t[0])[: t[1]]
                ),
            ),
            max_size=12,
        )
    )
    stream = b"".join(parts)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    got, _ = decode(fmt, *split(stream, cuts))
    assert got == greedy_reference(fmt, stream)
