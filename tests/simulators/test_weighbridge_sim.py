"""The weighbridge simulator: streams the displayed weight like continuous mode."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.codecs.weight import (
    StabilityTracker,
    WeightCodec,
    WeightFrame,
    encode_weight,
    weight_codec,
)
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


def read_available(fd: int) -> bytes:
    data = b""
    try:
        while chunk := os.read(fd, 4096):
            data += chunk
    except BlockingIOError:
        pass
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


# -- scripted faults ----------------------------------------------------------------------


async def read_frames(
    fd: int, codec: WeightCodec, done: Callable[[list[WeightFrame]], bool]
) -> list[WeightFrame]:
    """Decode what the slave receives until ``done(frames)``; at most 5 s."""
    frames: list[WeightFrame] = []
    async with asyncio.timeout(5):
        while not done(frames):
            try:
                codec.feed(os.read(fd, 4096))
            except BlockingIOError:
                await asyncio.sleep(0.005)
                continue
            frames.extend(codec.frames())
    return frames


@pytest.mark.parametrize("fmt", ["xk3190-tf0", "toledo-continuous"])
async def test_never_settles_wanders_a_few_kg_every_frame(fmt: str) -> None:
    async with WeighbridgeSimulator(fmt, interval_s=0.005, kg=31250, never_settles=True,
                                    seed=5) as sim:
        fd = open_slave(sim.port)
        try:
            codec = weight_codec(fmt)
            frames = await read_frames(fd, codec, lambda got: len(got) >= 30)
        finally:
            os.close(fd)
    weights = [f.kg for f in frames]
    assert all(1 <= abs(kg - 31250) <= 5 for kg in weights)
    assert all(a != b for a, b in zip(weights, weights[1:]))  # never twice in a row
    if fmt == "toledo-continuous":
        assert all(f.motion for f in frames)
    tracker = StabilityTracker(2)
    assert not any(tracker.update(f) for f in frames)
    assert not codec.dropped


async def test_never_settles_can_be_switched_off_and_the_weight_settles() -> None:
    async with WeighbridgeSimulator("xk3190-tf0", interval_s=0.005, kg=800.5,
                                    never_settles=True) as sim:
        fd = open_slave(sim.port)
        try:
            codec = weight_codec("xk3190-tf0")
            moving = await read_frames(fd, codec, lambda got: len(got) >= 5)
            assert all(f.kg != 800.5 for f in moving)
            sim.never_settles = False
            tail = await read_frames(
                fd, codec, lambda got: [f.kg for f in got[-3:]] == [800.5] * 3
            )
        finally:
            os.close(fd)
    assert tail[-1] == WeightFrame(800.5, None)


@pytest.mark.parametrize("fmt", ["xk3190-tf0", "toledo-continuous"])
async def test_noise_damages_that_share_of_frames_each_one_drop(fmt: str) -> None:
    async with WeighbridgeSimulator(fmt, interval_s=0.003, kg=500, noise=0.3, seed=11) as sim:
        fd = open_slave(sim.port)
        try:
            codec = weight_codec(fmt)
            frames = await read_frames(fd, codec, lambda got: sim.bursts_sent >= 30)
            sim.silent = True
            await asyncio.sleep(0.05)  # whatever was written before is readable now
            codec.feed(read_available(fd))
            frames += codec.frames()
        finally:
            os.close(fd)
    # every good frame decodes, every damaged one is exactly one drop
    assert len(frames) == sim.frames_sent
    assert sum(codec.dropped.values()) == sim.bursts_sent
    assert all(f.kg == 500 for f in frames)
    share = sim.bursts_sent / (sim.bursts_sent + sim.frames_sent)
    assert 0.15 < share < 0.45  # seeded: about the 0.3 asked for


async def test_noise_must_be_a_share() -> None:
    with pytest.raises(ValueError):
        WeighbridgeSimulator("xk3190-tf0", noise=1.5)
    sim = WeighbridgeSimulator("xk3190-tf0")
    with pytest.raises(ValueError):
        sim.noise = -0.1


async def test_garbage_goes_between_frames() -> None:
    async with WeighbridgeSimulator("xk3190-tf0", interval_s=0.01, kg=7, seed=3) as sim:
        fd = open_slave(sim.port)
        try:
            sim.silent = True
            await asyncio.sleep(0.05)
            drain(fd)
            noise = sim.garbage(100)
            assert await read_at_least(fd, 100) == noise
            assert sim.garbage_bytes == 100
        finally:
            os.close(fd)


async def test_unplug_and_replug_resumes_streaming_behind_the_link(tmp_path: Path) -> None:
    link = tmp_path / "scale0"
    async with WeighbridgeSimulator("toledo-continuous", interval_s=0.005, kg=900,
                                    link=link) as sim:
        assert sim.port == str(link)
        fd = open_slave(sim.port)
        try:
            await read_frames(fd, weight_codec(sim.fmt), lambda got: len(got) >= 2)
            sim.unplug()
            assert not link.is_symlink() and not sim.running
        finally:
            os.close(fd)
        sent = sim.frames_sent
        await sim.replug()
        sim.set_weight(901)
        fd = open_slave(sim.port)
        try:
            frames = await read_frames(fd, weight_codec(sim.fmt), lambda got: len(got) >= 2)
        finally:
            os.close(fd)
        assert frames[-1] == WeightFrame(901.0, False)
        assert sim.frames_sent > sent
    assert not link.is_symlink()
    with pytest.raises(RuntimeError, match="link"):
        await WeighbridgeSimulator("xk3190-tf0").replug()
