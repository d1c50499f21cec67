"""Weighing indicator codecs and the stability rule (CONTRACT.md 2.2).

Reference decoders below are written from the contract independently of the codec, so
the fuzzing properties can say "this weight was in a valid frame".
"""

from __future__ import annotations

import re
from functools import reduce
from operator import xor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.codecs.weight import (
    StabilityTracker,
    WeightFormat,
    WeightFrame,
    encode_weight,
    weight_codec,
)

FORMATS = [f.value for f in WeightFormat]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STREAM_FUZZ = settings(FUZZ, max_examples=120)  # whole-stream properties: costlier per example
XK_EXAMPLE = bytes.fromhex("02 2B 30 30 32 30 30 30 32 31 42 03")
DIGITS6 = re.compile(rb" *[0-9]+")


# -- reference decoders -----------------------------------------------------------------


def weight_at(fmt: str, data: bytes, i: int) -> tuple[int, tuple[float, bool | None]] | None:
    """(length, (kg, motion)) of a valid frame at ``data[i]`` (``data`` already 7-bit)."""
    if data[i] != 0x02:
        return None
    if fmt == "xk3190-tf0":
        w = data[i : i + 12]
        if (
            len(w) == 12
            and w[1:2] in (b"+", b"-")
            and w[2:9].isdigit()
            and w[9:11] == f"{reduce(xor, w[1:9], 0):02X}".encode()
            and w[11] == 0x03
        ):
            kg = int(w[2:8]) / 10 ** int(w[8:9]) * (-1 if w[1:2] == b"-" else 1)
            return 12, (kg + 0.0, None)
        return None
    w = data[i : i + 18]
    if (
        len(w) == 18
        and w[16] == 0x0D
        and sum(w) % 128 == 0
        and DIGITS6.fullmatch(w[4:10])
        and DIGITS6.fullmatch(w[10:16])
        and not w[2] & 0x04
    ):
        shown = int(w[4:10]) * (-1 if w[2] & 0x02 else 1)
        gross = shown + int(w[10:16]) if w[2] & 0x01 else shown
        places = (w[1] & 0x07) - 2
        kg = gross / 10**places if places >= 0 else gross * 10 ** (-places)
        return 18, (float(kg) + 0.0, bool(w[2] & 0x08))
    return None


def reference_weights(fmt: str, raw: bytes) -> set[tuple[float, bool | None]]:
    """(kg, motion) of every valid frame anywhere in ``raw`` (bit 7 ignored: 7E1 at 8N1)."""
    data = bytes(b & 0x7F for b in raw)
    return {hit[1] for i in range(len(data)) if (hit := weight_at(fmt, data, i))}


def greedy_reference(fmt: str, raw: bytes) -> list[tuple[float, bool | None]]:
    """Exactly what a decoder must yield: left to right, take each valid frame and go on
    after it, else move on one byte (resync on the next STX, CONTRACT 2.1/2.2)."""
    data = bytes(b & 0x7F for b in raw)
    out: list[tuple[float, bool | None]] = []
    i = 0
    while i < len(data):
        hit = weight_at(fmt, data, i)
        if hit is None:
            i += 1
            continue
        out.append(hit[1])
        i += hit[0]
    return out


def decode(fmt: str, *chunks: bytes) -> tuple[list[WeightFrame], object]:
    codec = weight_codec(fmt)
    out: list[WeightFrame] = []
    for chunk in chunks:
        codec.feed(chunk)
        out.extend(codec.frames())
    return out, codec


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in zip(points, points[1:])]


def even_parity(frame: bytes) -> bytes:
    """What a 7E1 indicator's bytes look like to a port set to 8N1."""
    return bytes(b | 0x80 if bin(b).count("1") % 2 else b for b in frame)


def toledo(swa: int, swb: int, shown: bytes, tare: bytes = b"000000") -> bytes:
    prior = bytes([0x02, swa, swb, 0x20]) + shown + tare + b"\r"
    return prior + bytes([-sum(prior) & 0x7F])


readings = st.tuples(st.integers(-999_999, 999_999), st.integers(0, 4), st.booleans()).map(
    lambda t: (t[0] / 10 ** t[1], t[2])
)


def as_frame(fmt: str, kg: float, motion: bool) -> WeightFrame:
    return WeightFrame(kg + 0.0, None if fmt == "xk3190-tf0" else motion)


# -- xk3190-tf0 -----------------------------------------------------------------------


def test_xk3190_contract_example_reads_plus_20_00() -> None:
    """CONTRACT 2.2: 02 2B 30 30 32 30 30 30 32 31 42 03 = +20.00."""
    got, codec = decode("xk3190-tf0", XK_EXAMPLE)
    assert got == [WeightFrame(20.0, None)]
    assert not codec.dropped


def test_xk3190_contract_example_encodes_byte_for_byte() -> None:
    assert encode_weight("xk3190-tf0", 20.0, decimals=2) == XK_EXAMPLE


def test_xk3190_checksum_reading_that_matches_the_example() -> None:
    """'bytes 1..8' counts from STX = 0 (sign .. decimals digit), high nibble first.

    Counting from 1 (STX .. last weight digit) would give 0x2B, not the example's "1B".
    """
    assert reduce(xor, XK_EXAMPLE[1:9], 0) == 0x1B
    assert XK_EXAMPLE[9:11] == b"1B"
    assert reduce(xor, XK_EXAMPLE[0:8], 0) == 0x2B  # the other reading: not what is sent


def test_xk3190_negative_and_decimals() -> None:
    frames = [encode_weight("xk3190-tf0", kg) for kg in (-150.0, 0.5, 31250.0, 0.0)]
    got, _ = decode("xk3190-tf0", *frames)
    assert [f.kg for f in got] == [-150.0, 0.5, 31250.0, 0.0]
    assert encode_weight("xk3190-tf0", 31250.0)[1:9] == b"+0312500"


def test_xk3190_negative_zero_reads_as_zero() -> None:
    body = b"-0000002"
    frame = b"\x02" + body + f"{reduce(xor, body, 0):02X}".encode() + b"\x03"
    got, _ = decode("xk3190-tf0", frame)
    assert got == [WeightFrame(0.0, None)]
    assert str(got[0].kg) == "0.0"


def test_xk3190_bad_checksum_counted_and_next_frame_read() -> None:
    """Bad input counted and dropped."""
    bad = XK_EXAMPLE[:9] + b"1C" + XK_EXAMPLE[11:]
    lower = XK_EXAMPLE[:9] + b"1b" + XK_EXAMPLE[11:]  # the rule says +0x37: uppercase only
    got, codec = decode("xk3190-tf0", bad, lower, XK_EXAMPLE)
    assert got == [WeightFrame(20.0, None)]
    assert codec.dropped == {"checksum": 1, "format": 1}


@pytest.mark.parametrize("fmt", FORMATS)
def test_seven_bit_indicator_with_even_parity_read_at_8n1(fmt: str) -> None:
    frame = encode_weight(fmt, 31250.0)
    wire = even_parity(frame)
    assert wire != frame  # STX itself arrives as 0x82
    got, _ = decode(fmt, wire)
    assert [f.kg for f in got] == [31250.0]


# -- toledo-continuous ----------------------------------------------------------------


def test_toledo_frame_layout_and_checksum() -> None:
    frame = encode_weight("toledo-continuous", 31250.0)
    assert len(frame) == 18
    assert frame[0] == 0x02 and frame[16] == 0x0D
    assert frame[4:16] == b"031250000000"
    assert frame[1] & 0x07 == 0b010  # no decimals
    assert sum(frame) % 128 == 0  # two's complement of the 7-bit sum


@pytest.mark.parametrize(
    ("code", "kg"),
    [(0b000, 1_234_500.0), (0b001, 123_450.0), (0b010, 12_345.0), (0b011, 1234.5), (0b100, 123.45)],
)
def test_toledo_decimal_position(code: int, kg: float) -> None:
    got, _ = decode("toledo-continuous", toledo(0x20 | code, 0x20, b"012345"))
    assert got == [WeightFrame(kg, False)]


def test_toledo_sign_and_motion_bits() -> None:
    frames = [
        toledo(0x22, 0x20 | 0x02, b"000150"),  # negative
        toledo(0x22, 0x20 | 0x08, b"031250"),  # motion
        toledo(0x02, 0x00, b"031250"),  # contract bits only, no "always one" bits
    ]
    got, _ = decode("toledo-continuous", *frames)
    assert got == [WeightFrame(-150.0, False), WeightFrame(31250.0, True), WeightFrame(31250.0, False)]


def test_toledo_net_weight_is_reported_as_gross() -> None:
    got, _ = decode("toledo-continuous", toledo(0x22, 0x21, b"020000", b"011250"))
    assert got == [WeightFrame(31250.0, False)]


def test_toledo_leading_spaces_accepted() -> None:
    got, _ = decode("toledo-continuous", toledo(0x22, 0x20, b"   150", b"     0"))
    assert got == [WeightFrame(150.0, False)]


def test_toledo_out_of_range_and_bad_checksum_counted_and_dropped() -> None:
    """Bad input counted and dropped: over capacity is no weight; a bad sum is no frame."""
    over = toledo(0x22, 0x20 | 0x04, b"999999")
    good = toledo(0x22, 0x20, b"031250")
    bad = good[:17] + bytes([(good[17] + 1) & 0x7F])
    spaces = toledo(0x22, 0x20, b"  1 50")
    got, codec = decode("toledo-continuous", over, bad, spaces, good)
    assert got == [WeightFrame(31250.0, False)]
    assert codec.dropped == {"range": 1, "checksum": 1, "format": 1}


def test_toledo_encode_motion_round_trip() -> None:
    for motion in (False, True):
        got, _ = decode("toledo-continuous", encode_weight("toledo-continuous", 20.05, motion))
        assert got == [WeightFrame(20.05, motion)]


# -- shared --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_garbage_without_stx_does_not_grow_memory(fmt: str) -> None:
    """Bounded buffer: a megabyte of noise with no STX keeps memory flat."""
    noise = bytes(b for b in range(256) if b & 0x7F != 0x02) * 4
    codec = weight_codec(fmt)
    for _ in range(1024):
        codec.feed(noise)
        assert list(codec.frames()) == []
        assert codec.buffered < 18
    assert codec.dropped == {"stray": 1}


@pytest.mark.parametrize("fmt", FORMATS)
def test_reset_counts_partial_frame_as_truncated(fmt: str) -> None:
    codec = weight_codec(fmt)
    codec.feed(encode_weight(fmt, 100.0)[:5])
    assert list(codec.frames()) == []
    codec.reset()
    assert codec.dropped == {"truncated": 1}
    assert codec.buffered == 0


def test_unknown_format_and_unshowable_weights_refused() -> None:
    with pytest.raises(ValueError, match="unknown weighing indicator format"):
        weight_codec("a12e")
    with pytest.raises(ValueError):
        encode_weight("xk3190-tf0", 1_000_000.0)
    with pytest.raises(ValueError):
        encode_weight("toledo-continuous", float("nan"))
    with pytest.raises(ValueError):
        encode_weight("toledo-continuous", 0.1234567)
    with pytest.raises(ValueError):
        WeightFrame(float("inf"), None)


# -- stability ------------------------------------------------------------------------


def test_stable_after_n_identical_readings_without_motion_flag() -> None:
    tracker = StabilityTracker(3)
    seq = [100.0, 200.0, 200.0, 200.0, 200.0, 210.0, 210.0, 210.0]
    assert [tracker.update(WeightFrame(kg, None)) for kg in seq] == [
        False, False, False, True, True, False, False, True,
    ]


def test_motion_flag_decides_when_present() -> None:
    tracker = StabilityTracker(5)
    assert tracker.update(WeightFrame(100.0, False)) is True
    assert tracker.update(WeightFrame(100.0, True)) is False
    assert tracker.update(WeightFrame(120.0, False)) is True


def test_stability_reset_forgets_the_run() -> None:
    tracker = StabilityTracker(2)
    tracker.update(WeightFrame(5.0, None))
    assert tracker.update(WeightFrame(5.0, None))
    tracker.reset()
    assert not tracker.update(WeightFrame(5.0, None))


def test_stable_samples_must_be_positive_int() -> None:
    with pytest.raises(ValueError):
        StabilityTracker(0)
    with pytest.raises(TypeError):
        StabilityTracker(2.5)  # type: ignore[arg-type]


@FUZZ
@given(n=st.integers(1, 6), seq=st.lists(st.sampled_from([0.0, 500.0, 31250.0]), max_size=40))
def test_stability_equals_trailing_run_length(n: int, seq: list[float]) -> None:
    tracker = StabilityTracker(n)
    for i, kg in enumerate(seq):
        run = 1
        while run <= i and seq[i - run] == kg:
            run += 1
        assert tracker.update(WeightFrame(kg, None)) == (run >= n)


# -- properties -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(reading=readings)
def test_encode_decode_round_trip(fmt: str, reading: tuple[float, bool]) -> None:
    kg, motion = reading
    got, codec = decode(fmt, encode_weight(fmt, kg, motion))
    assert got == [as_frame(fmt, kg, motion)]
    assert not codec.dropped


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_random_bytes_never_raise_nor_invent_weights(fmt: str, data: st.DataObject) -> None:
    """Bad input counted and dropped: noise never raises and never yields an unsent weight."""
    stream = data.draw(st.binary(max_size=400))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    got, codec = decode(fmt, *split(stream, cuts))
    assert {(f.kg, f.motion) for f in got} <= reference_weights(fmt, stream)
    assert codec.buffered < 18


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_valid_frames_cut_anywhere_are_all_read(fmt: str, data: st.DataObject) -> None:
    sent = data.draw(st.lists(readings, max_size=12))
    stream = b"".join(encode_weight(fmt, kg, m) for kg, m in sent)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    got, codec = decode(fmt, *split(stream, cuts))
    assert got == [as_frame(fmt, kg, m) for kg, m in sent]
    assert not codec.dropped


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_valid_frames_between_noise_are_all_read(fmt: str, data: st.DataObject) -> None:
    """Bad input counted and dropped: each run of noise is one 'stray'; every frame is read."""
    no_stx = st.binary(max_size=60).map(lambda b: bytes(c for c in b if c & 0x7F != 0x02))
    sent = data.draw(st.lists(readings, max_size=10))
    noise = data.draw(st.lists(no_stx, min_size=len(sent) + 1, max_size=len(sent) + 1))
    stream = noise[0] + b"".join(encode_weight(fmt, kg, m) + n for (kg, m), n in zip(sent, noise[1:]))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    got, codec = decode(fmt, *split(stream, cuts))
    assert got == [as_frame(fmt, kg, m) for kg, m in sent]
    assert codec.dropped == ({"stray": sum(1 for n in noise if n)} if any(noise) else {})


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_frames_mixed_with_arbitrary_noise_yield_only_real_frames(
    fmt: str, data: st.DataObject
) -> None:
    sent = data.draw(st.lists(readings, max_size=8))
    noise = data.draw(st.lists(st.binary(max_size=30), min_size=len(sent), max_size=len(sent)))
    stream = b"".join(n + encode_weight(fmt, kg, m) for (kg, m), n in zip(sent, noise))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    got, _ = decode(fmt, *split(stream, cuts))
    assert {(f.kg, f.motion) for f in got} <= reference_weights(fmt, stream)


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_a_flipped_bit_is_dropped_or_still_checks(fmt: str, data: st.DataObject) -> None:
    """Bad input counted and dropped: a flipped bit never yields a different weight.

    Bit 7 is the parity position of a 7-bit indicator and is ignored, so flipping it
    leaves the same frame; every other single flip breaks the checksum or the layout.
    """
    kg, motion = data.draw(readings)
    frame = bytearray(encode_weight(fmt, kg, motion))
    pos = data.draw(st.integers(0, len(frame) - 1))
    bit = data.draw(st.integers(0, 7))
    frame[pos] ^= 1 << bit
    got, _ = decode(fmt, bytes(frame))
    if bit == 7:
        assert got == [as_frame(fmt, kg, motion)]
    else:
        assert got == []


def weight_frames(fmt: str) -> st.SearchStrategy[list[bytes]]:
    return st.lists(readings, min_size=2, max_size=8).map(
        lambda sent: [encode_weight(fmt, kg, m) for kg, m in sent]
    )


def pairs(frames: list[WeightFrame]) -> list[tuple[float, bool | None]]:
    return [(f.kg, f.motion) for f in frames]


@pytest.mark.parametrize("fmt", FORMATS)
@STREAM_FUZZ
@given(data=st.data())
def test_valid_frames_cut_and_spliced_hide_no_other_frame(fmt: str, data: st.DataObject) -> None:
    """A frame cut off mid-way and the line resuming inside another: nothing invented,
    every intact frame read unless the splice forms a valid frame overlapping it; the
    greedy reference says exactly which."""
    frames = data.draw(weight_frames(fmt))
    k = data.draw(st.integers(0, len(frames) - 2))
    cut = data.draw(st.integers(0, len(frames[k])))
    resume = data.draw(st.integers(0, len(frames[k + 1])))
    stream = b"".join([*frames[:k], frames[k][:cut] + frames[k + 1][resume:], *frames[k + 2 :]])
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    got, codec = decode(fmt, *split(stream, cuts))
    assert pairs(got) == greedy_reference(fmt, stream)
    assert codec.buffered < 18


@pytest.mark.parametrize("fmt", FORMATS)
@STREAM_FUZZ
@given(data=st.data())
def test_a_flipped_bit_in_a_stream_costs_at_most_that_frame(fmt: str, data: st.DataObject) -> None:
    """One bit flipped anywhere in a run of frames: exactly what the reference reads."""
    frames = data.draw(weight_frames(fmt))
    stream = bytearray(b"".join(frames))
    pos = data.draw(st.integers(0, len(stream) - 1))
    stream[pos] ^= 1 << data.draw(st.integers(0, 7))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    got, _ = decode(fmt, *split(bytes(stream), cuts))
    expected = greedy_reference(fmt, bytes(stream))
    assert pairs(got) == expected
    # At worst the frame hit and the next one (a false STX in the hit frame forming a
    # valid frame that ends inside the next): frames are of one length, so never more.
    assert len(expected) >= len(frames) - 2


@pytest.mark.parametrize("fmt", FORMATS)
@STREAM_FUZZ
@given(data=st.data())
def test_decoder_equals_the_greedy_reference_on_any_bytes(fmt: str, data: st.DataObject) -> None:
    """Noise, real frames and fragments mixed, cut anywhere: exactly the reference."""
    parts = data.draw(
        st.lists(
            st.one_of(
                st.binary(max_size=20),
                readings.map(lambda r: encode_weight(fmt, *r)),
                st.tuples(readings, st.integers(0, 18)).map(
                    lambda t: encode_weight(fmt, *t[0])[: t[1]]
                ),
            ),
            max_size=12,
        )
    )
    stream = b"".join(parts)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    got, _ = decode(fmt, *split(stream, cuts))
    assert pairs(got) == greedy_reference(fmt, stream)
