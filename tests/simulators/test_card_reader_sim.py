"""The card reader simulator: known state in, the contract's bytes out of a real pty.

The test reads the slave side with plain os.read, no driver involved, so what it checks
is exactly what a driver would receive.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from drivers.codecs.card import card_codec, encode_card
from simulators.card_reader import CardReaderSimulator, corrupt_card_frame
from simulators.pty import SwitchablePort


def open_slave(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)


async def read_exactly(fd: int, n: int, timeout: float = 5.0) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        while len(data) < n:
            try:
                data += os.read(fd, n - len(data))
            except BlockingIOError:
                await asyncio.sleep(0.005)
    return data


@pytest.mark.parametrize(
    ("fmt", "card", "wire"),
    [
        ("stx-hex-xor", "0100E2850E", b"\x020100E2850E68\r\n\x03"),
        ("stx-bin-bcc", "06008E6D5D", bytes.fromhex("020A0206008E6D5DB003")),
        ("ascii-line", "3A00F1229B", b"3A00F1229B\r\n"),
    ],
)
async def test_present_writes_the_contract_frame(fmt: str, card: str, wire: bytes) -> None:
    async with CardReaderSimulator(fmt) as sim:
        fd = open_slave(sim.port)
        try:
            sim.present(card)
            assert await read_exactly(fd, len(wire)) == wire
            assert sim.presented == 1
        finally:
            os.close(fd)


async def test_present_repeat_sends_back_to_back_frames() -> None:
    async with CardReaderSimulator() as sim:
        fd = open_slave(sim.port)
        try:
            sim.present("0100e2850e", repeat=3)
            frame = encode_card("stx-hex-xor", "0100E2850E")
            assert await read_exactly(fd, 3 * len(frame)) == frame * 3
        finally:
            os.close(fd)


async def test_write_raw_passes_every_byte_value_unchanged() -> None:
    """Raw mode: no CR/LF translation, no XON/XOFF, no ^C, no echo."""
    every = bytes(range(256)) * 2
    async with CardReaderSimulator() as sim:
        fd = open_slave(sim.port)
        try:
            sim.write_raw(every)
            assert await read_exactly(fd, len(every)) == every
            await asyncio.sleep(0.05)
            assert bytes(sim.pty.received) == b""  # nothing echoed back
        finally:
            os.close(fd)


async def test_bytes_the_driver_writes_are_collected() -> None:
    async with CardReaderSimulator() as sim:
        fd = open_slave(sim.port)
        try:
            os.write(fd, b"\x05ping")
            async with asyncio.timeout(5):
                while bytes(sim.pty.received) != b"\x05ping":
                    await asyncio.sleep(0.005)
        finally:
            os.close(fd)


async def test_vanish_hangs_up_the_port() -> None:
    """The simulated USB adapter is pulled: the open slave reads EOF/EIO."""
    sim = CardReaderSimulator()
    await sim.start()
    path = sim.port
    fd = open_slave(path)
    try:
        sim.vanish()
        assert not sim.running
        with pytest.raises(OSError):
            if os.read(fd, 1) == b"":
                raise OSError("EOF")
    finally:
        os.close(fd)
    with pytest.raises(RuntimeError, match="vanished"):
        sim.present("0100E2850E")
    await sim.stop()  # idempotent


async def test_use_before_start_is_refused() -> None:
    sim = CardReaderSimulator("ascii-line")
    with pytest.raises(RuntimeError, match="not started"):
        sim.present("1234")
    with pytest.raises(RuntimeError, match="not started"):
        _ = sim.port


def test_unknown_format_refused() -> None:
    with pytest.raises(ValueError):
        CardReaderSimulator("wiegand-26")


async def test_several_simulators_share_one_event_loop() -> None:
    """As in the demo: many readers in one loop, each on its own pty with its own bytes."""
    sims = [CardReaderSimulator(fmt) for fmt in ("stx-hex-xor", "stx-bin-bcc", "ascii-line")]
    for sim in sims:
        await sim.start()
    fds = [open_slave(sim.port) for sim in sims]
    try:
        assert len({sim.port for sim in sims}) == 3
        cards = ["0100E2850E", "06008E6D5D", "3A00F1229B"]
        for sim, card in zip(sims, cards):
            sim.present(card)
        for sim, fd, card in zip(sims, fds, cards):
            wire = encode_card(sim.fmt, card)
            assert await read_exactly(fd, len(wire)) == wire
    finally:
        for fd in fds:
            os.close(fd)
        for sim in sims:
            await sim.stop()


# -- scripted faults ----------------------------------------------------------------------


def decode_all(fmt: str, data: bytes) -> tuple[list[str], dict[str, int]]:
    codec = card_codec(fmt)
    codec.feed(data)
    return list(codec.frames()), dict(codec.dropped)


@pytest.mark.parametrize(
    ("fmt", "reason"),
    [("stx-hex-xor", "checksum"), ("stx-bin-bcc", "checksum"), ("ascii-line", "format")],
)
async def test_present_corrupt_sends_a_frame_the_decoder_drops(fmt: str, reason: str) -> None:
    async with CardReaderSimulator(fmt) as sim:
        fd = open_slave(sim.port)
        try:
            sent = sim.present_corrupt("0100E2850E")
            assert sent == corrupt_card_frame(fmt, "0100E2850E")
            assert len(sent) == len(encode_card(fmt, "0100E2850E"))
            sim.present("0100E2850E")
            wire = await read_exactly(fd, 2 * len(sent))
        finally:
            os.close(fd)
    assert decode_all(fmt, wire) == (["0100E2850E"], {reason: 1})
    assert (sim.presented, sim.corrupted) == (1, 1)


async def test_garbage_sends_n_random_bytes_repeatably() -> None:
    async with CardReaderSimulator(seed=42) as a, CardReaderSimulator(seed=42) as b:
        fd = open_slave(a.port)
        try:
            noise = a.garbage(300)
            assert len(noise) == 300
            assert await read_exactly(fd, 300) == noise
        finally:
            os.close(fd)
        assert b.garbage(300) == noise  # same seed, same noise
        assert a.garbage_bytes == 300
        with pytest.raises(ValueError):
            a.garbage(-1)


async def test_silent_reader_swallows_cards_but_not_line_noise() -> None:
    async with CardReaderSimulator(seed=1) as sim:
        fd = open_slave(sim.port)
        try:
            sim.silent = True
            sim.present("0100E2850E")
            assert sim.present_corrupt("0100E2850E") == b""
            noise = sim.garbage(5)  # picked up by the cable, not sent by the reader
            assert await read_exactly(fd, 5) == noise
            await asyncio.sleep(0.05)
            with pytest.raises(BlockingIOError):
                os.read(fd, 1)
            assert sim.presented == 0
            sim.silent = False
            sim.present("0100E2850E")
            frame = encode_card("stx-hex-xor", "0100E2850E")
            assert await read_exactly(fd, len(frame)) == frame
        finally:
            os.close(fd)


async def test_unplug_and_replug_behind_the_same_link(tmp_path: Path) -> None:
    """USB adapter pulled and plugged back: the link disappears, then points at a new pty."""
    link = tmp_path / "by-id" / "usb-reader0"
    link.parent.mkdir()
    sim = CardReaderSimulator("ascii-line", link=link)
    assert sim.port == str(link)  # known before start: a config can be written first
    await sim.start()
    first = os.readlink(link)
    fd = open_slave(sim.port)
    try:
        sim.present("3A00F1229B")
        assert await read_exactly(fd, 12) == b"3A00F1229B\r\n"
        sim.unplug()
        assert not link.exists() and not link.is_symlink()
        assert not sim.running
        with pytest.raises(OSError):  # the old port is dead
            if os.read(fd, 1) == b"":
                raise OSError("EOF")
        with pytest.raises(RuntimeError, match="vanished"):
            sim.present("3A00F1229B")
    finally:
        os.close(fd)
    await sim.replug()
    assert sim.running and sim.port == str(link)
    second = os.readlink(link)
    fd = open_slave(sim.port)
    try:
        sim.present("0012345678")
        assert await read_exactly(fd, 12) == b"0012345678\r\n"
    finally:
        os.close(fd)
    assert first.startswith("/dev/pts/") and second.startswith("/dev/pts/")
    await sim.replug()  # replug while plugged in: pull and plug in one step
    assert sim.running and os.readlink(link).startswith("/dev/pts/")
    await sim.stop()
    assert not link.is_symlink()


async def test_replug_needs_a_link() -> None:
    async with CardReaderSimulator() as sim:
        with pytest.raises(RuntimeError, match="link"):
            await sim.replug()


async def test_switchable_port_on_its_own(tmp_path: Path) -> None:
    port = SwitchablePort(tmp_path / "ttyUSB0")
    assert not port.plugged
    with pytest.raises(RuntimeError, match="nothing plugged in"):
        _ = port.pty
    pty = await port.plug()
    assert await port.plug() is pty  # plugging a plugged port changes nothing
    assert os.readlink(port.port) == pty.port and port.plugs == 1
    fd = open_slave(port.port)
    try:
        pty.write(b"hello")
        assert await read_exactly(fd, 5) == b"hello"
    finally:
        os.close(fd)
    fresh = await port.replug()
    assert pty.closed and not fresh.closed and port.plugs == 2
    assert os.readlink(port.port) == fresh.port
    port.unplug()
    port.unplug()  # idempotent
    assert not port.plugged and not Path(port.port).is_symlink()
