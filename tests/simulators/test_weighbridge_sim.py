"""The weighbridge simulator: streams the displayed weight like continuous mode."""

from __future__ import annotations

import asyncio
import os

import pytest

from drivers.codecs.weight import encode_weight
from simulators.weighbridge import WeighbridgeSimulator


def open_slave(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)


async def read_at_least(fd: int, n: int, timeout: float = 5.0) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        while len(data) < n:
            try:
                data += os.read(fd, 4096)
            except BlockingIOError:
                await asyncio.sleep(0.005)
    return data


def drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


@pytest.mark.parametrize("fmt", ["xk3190-tf0", "toledo-continuous"])
async def test_streams_the_current_weight_continuously(fmt: str) -> None:
    async with WeighbridgeSimulator(fmt, interval_s=0.01, kg=31250) as sim:
        fd = open_slave(sim.port)
        try:
            frame = encode_weight(fmt, 31250)
            data = await read_at_least(fd, 3 * len(frame))
            whole = len(data) // len(frame)
            assert data[: whole * len(frame)] == frame * whole
            assert sim.frames_sent >= 3
        finally:
            os.close(fd)


async def test_set_weight_changes_the_following_frames() -> None:
    async with WeighbridgeSimulator("toledo-continuous", interval_s=0.01) as sim:
        fd = open_slave(sim.port)
        try:
            sim.set_weight(20.05, motion=True)
            moving = encode_weight("toledo-continuous", 20.05, motion=True)
            data = await read_at_least(fd, 1)
            async with asyncio.timeout(5):
                while moving * 2 not in data:
                    data += await read_at_least(fd, 1)
            assert (sim.kg, sim.motion) == (20.05, True)
        finally:
            os.close(fd)


async def test_unshowable_weight_is_refused_at_once() -> None:
    sim = WeighbridgeSimulator("xk3190-tf0")
    with pytest.raises(ValueError):
        sim.set_weight(10_000_000)
    with pytest.raises(ValueError):
        WeighbridgeSimulator("xk3190-tf0", interval_s=0)


async def test_silent_indicator_sends_nothing_and_write_raw_still_works() -> None:
    async with WeighbridgeSimulator("xk3190-tf0", interval_s=0.01) as sim:
        fd = open_slave(sim.port)
        try:
            sim.silent = True
            await asyncio.sleep(0.05)  # let a frame already queued arrive
            drain(fd)
            sent = sim.frames_sent
            await asyncio.sleep(0.1)
            assert sim.frames_sent == sent
            sim.write_raw(b"\x02+00")  # half a frame, a real quirk
            assert await read_at_least(fd, 4) == b"\x02+00"
        finally:
            os.close(fd)


async def test_vanish_stops_streaming_and_hangs_up() -> None:
    sim = WeighbridgeSimulator("xk3190-tf0", interval_s=0.01)
    await sim.start()
    path = sim.port
    fd = open_slave(path)
    try:
        await read_at_least(fd, 12)
        sim.vanish()
        with pytest.raises(OSError):  # buffered frames first, then EIO (or EOF)
            async with asyncio.timeout(5):
                while True:
                    try:
                        if os.read(fd, 4096) == b"":
                            raise OSError("EOF")
                    except BlockingIOError:
                        await asyncio.sleep(0.005)
    finally:
        os.close(fd)
    assert not sim.running
    with pytest.raises(RuntimeError, match="vanished"):
        sim.write_raw(b"x")
    await sim.stop()  # idempotent


async def test_streams_in_one_loop_with_other_simulators() -> None:
    """As in the demo: several indicators in one loop, each its own pty and weight."""
    sims = [
        WeighbridgeSimulator("xk3190-tf0", interval_s=0.01, kg=100),
        WeighbridgeSimulator("toledo-continuous", interval_s=0.01, kg=200),
    ]
    for sim in sims:
        await sim.start()
    fds = [open_slave(sim.port) for sim in sims]
    try:
        for sim, fd in zip(sims, fds):
            frame = encode_weight(sim.fmt, sim.kg)
            data = await read_at_least(fd, 2 * len(frame))
            assert frame in data
    finally:
        for fd in fds:
            os.close(fd)
        for sim in sims:
            await sim.stop()
