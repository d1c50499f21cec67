"""Hostile bytes from devices (#13; S5, CONTRACT 2.1-2.3): junk with no start byte, a
start byte over and over, a frame that never ends, a peer streaming nonsense at a Modbus
client. Every codec and driver keeps its buffer bounded, counts what it drops, never
raises, and reads the next good frame; a Modbus module fed junk is faulty, not swollen,
and recovers when a real module answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import tracemalloc
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.codecs import FrameDecoder, LineDecoder, StxFrameDecoder
from drivers.codecs.card import card_codec, encode_card
from drivers.codecs.weight import encode_weight, weight_codec
from drivers.health import Health
from drivers.modbus_io import IoModule
from drivers.serial_device import CardReader, SerialDevice, Weighbridge
from simulators.io_module import IoModuleSimulator
from simulators.pty import PtyPort

CARDS = ["ascii-line", "stx-hex-xor", "stx-bin-bcc"]
WEIGHTS = ["xk3190-tf0", "toledo-continuous"]


def codec_for(fmt: str) -> FrameDecoder:
    return card_codec(fmt) if fmt in CARDS else weight_codec(fmt)


def good_frame(fmt: str) -> bytes:
    return encode_card(fmt, "0100E2850E") if fmt in CARDS else encode_weight(fmt, 20000)


def most_buffered(codec: FrameDecoder) -> int:
    """What a drained codec may hold: one partial frame or line, never more."""
    if isinstance(codec, LineDecoder):
        return LineDecoder.MAX_LINE + 1
    assert isinstance(codec, StxFrameDecoder)
    return codec.frame_len - 1


CHUNKS = st.lists(st.binary(max_size=512) | st.sampled_from([b"\x02" * 300, b"A" * 300, b"\x02" + b"0" * 300,
                                                           b"\r\n" * 50, b"\x82" * 100]), max_size=20)


def _stays_within_one_frame(fmt: str, chunks: list[bytes]) -> None:
    codec = codec_for(fmt)
    fed = 0
    for chunk in chunks:
        codec.feed(chunk)
        fed += len(chunk)
        list(codec.frames())
        assert codec.buffered <= most_buffered(codec)
    assert sum(codec.dropped.values()) <= fed
    codec.feed(b"\r\n" + good_frame(fmt))
    got = list(codec.frames())  # a leftover "0" before the CR LF is card 0 on ascii-line
    assert got and (got[-1] == "0100E2850E" if fmt in CARDS else got[-1].kg == 20000)


@pytest.mark.parametrize("fmt", CARDS + WEIGHTS)
@settings(max_examples=150, deadline=None)
@given(chunks=CHUNKS)
def test_any_bytes_keep_a_drained_codec_within_one_frame(fmt: str, chunks: list[bytes]) -> None:
    """Whatever arrives, after draining the codec holds at most one partial frame, and
    counts drops by the frame, not by the byte: never more drops than bytes."""
    _stays_within_one_frame(fmt, chunks)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("fmt", CARDS + WEIGHTS)
@settings(max_examples=20_000, deadline=None)
@given(chunks=CHUNKS)
def test_any_bytes_keep_a_drained_codec_within_one_frame_long(fmt: str, chunks: list[bytes]) -> None:
    _stays_within_one_frame(fmt, chunks)


def junk(fmt: str, kind: str, size: int) -> bytes:
    if kind == "no-start":  # noise with no STX and no LF, also once bit 7 is masked (7E1 indicators)
        pattern = bytes(b for b in range(256) if b & 0x7F not in (0x02, 0x0A))
    elif kind == "all-start":
        pattern = b"\x02"
    elif kind == "endless-frame":  # a start that fits the layout as far as it goes, forever
        pattern = {"ascii-line": b"A", "stx-hex-xor": b"\x02" + b"A" * 255, "stx-bin-bcc": b"\x02\x0a" * 128,
                   "xk3190-tf0": b"\x02+" + b"0" * 254, "toledo-continuous": b"\x02" + b" " * 255}[fmt]
    else:  # "bad-lines": short damaged lines, each a drop of its own
        pattern = b"ZZ\r\n"
    return (pattern * (size // len(pattern) + 1))[:size]


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def on_a_pty(fmt: str, seen: list) -> AsyncIterator[tuple[PtyPort, SerialDevice]]:
    pty = PtyPort.open()
    health = lambda h, reason: None  # noqa: E731 - health is not what these tests look at
    if fmt in CARDS:
        device: SerialDevice = CardReader("r", pty.port, 9600, fmt, seen.append, health, settle_s=0.01)
    else:
        device = Weighbridge("w", pty.port, 9600, fmt, 2, lambda kg, stable: seen.append(kg), health,
                             silence_s=None, settle_s=0.01)
    task = asyncio.create_task(device.run())
    try:
        await until(lambda: device.is_open)
        yield pty, device
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        pty.close()


async def send(pty: PtyPort, data: bytes, chunk: int = 4096) -> None:
    """Write at the pace the reader takes it, so no byte is lost in the pty."""
    for i in range(0, len(data), chunk):
        pty.write(data[i : i + chunk])
        await until(lambda: pty.idle)


JUNK_KINDS = ["no-start", "all-start", "endless-frame", "bad-lines"]


@pytest.mark.parametrize("fmt", CARDS + WEIGHTS)
async def test_a_serial_device_streamed_junk_stays_bounded_and_reads_the_next_frame(fmt: str) -> None:
    """S5: 16 KB of each kind of junk over a real pty: every byte is taken, drops are
    counted, memory stays flat, nothing is invented, and the next good frame is read."""
    seen: list = []
    async with on_a_pty(fmt, seen) as (pty, device):
        tracemalloc.start()
        try:
            for kind in JUNK_KINDS:
                await send(pty, junk(fmt, kind, 16 * 1024))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await until(lambda: device.counters["bytes"] >= 4 * 16 * 1024)
        assert seen == []
        dropped = device.counters["dropped"]
        assert sum(dropped.values()) > 0 and dropped.get("overflow", 0) == 0, dropped
        assert peak < 4 * 1024 * 1024, peak
        frame = good_frame(fmt)
        await send(pty, b"\r\n" + frame * 2)  # weights: two identical readings are stable
        await until(lambda: len(seen) >= 1)
        assert seen[0] in ("0100E2850E", 20000.0)


# -- Modbus ---------------------------------------------------------------------------------


MODBUS_JUNK = {
    "random": lambda n: (bytes(range(256)) * (n // 256 + 1))[:n],
    "mbap-claims-65535": lambda n: (b"\x00\x01\x00\x00\xff\xff\x07" + b"\x00" * 1017) * (n // 1024),
    "zeros": lambda n: b"\x00" * n,
}


@pytest.mark.parametrize("kind", sorted(MODBUS_JUNK))
async def test_a_modbus_peer_streaming_junk_is_a_fault_then_a_real_module_recovers(kind: str) -> None:
    """S5, CONTRACT 2.3: a peer on the module's port answering every request with 16 MB of
    junk (random bytes, a header claiming 65 535 bytes, zeros) gives no answer: the module
    is faulty and pymodbus's buffers stay flat. A real module on that port brings it back."""
    streamed = 0
    data = memoryview(MODBUS_JUNK[kind](16 * 1024 * 1024))  # made before memory is traced

    async def junk_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal streamed
        try:
            await reader.read(260)
            for i in range(0, len(data), 65536):
                writer.write(data[i : i + 65536])
                await writer.drain()
                streamed += 65536
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(junk_peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    health: list[Health] = []
    module = IoModule("io1", "127.0.0.1", port, 7, 20, 8, lambda changed, snapshot: None,
                      lambda h, reason: health.append(h), request_timeout_s=0.3)
    task = asyncio.create_task(module.run())
    try:
        tracemalloc.start()
        try:
            await until(lambda: Health.FAULTY in health and streamed >= len(data) - 65536)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < len(data) // 2, peak  # flat: a fraction of what streamed, whatever the volume
        assert module.counters["timeouts"] >= 1
        server.close()
        await server.wait_closed()
        sim = IoModuleSimulator(unit=7, inputs=8, coils=8, port=port)
        await sim.start()
        try:
            await until(lambda: health[-1] is Health.OK, timeout=20)
        finally:
            await sim.stop()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        server.close()
