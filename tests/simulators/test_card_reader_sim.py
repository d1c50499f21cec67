"""The card reader simulator: known state in, the contract's bytes out of a real pty.

The test reads the slave side with plain os.read, no driver involved, so what it checks
is exactly what a driver would receive.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from drivers.codecs.card import encode_card
from simulators.card_reader import CardReaderSimulator


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
