"""Serial drivers end to end over real ptys, with the simulators as the devices.

No mocked transports: pyserial-asyncio-fast opens the pty slave exactly as it would open
/dev/ttyUSB0. Nothing here measures wall-clock time; every wait polls with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from drivers.health import Health
from drivers.serial_device import CardReader, SerialDevice, Weighbridge
from simulators.card_reader import CardReaderSimulator
from simulators.weighbridge import WeighbridgeSimulator

FAST = {"backoff_initial": 0.02, "backoff_max": 0.1}
LOGGER = "drivers.serial_device"


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


class Facts:
    """Everything a driver reported, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, object]] = []

    def card(self, card: str) -> None:
        self.log.append(("card", card))

    def weight(self, kg: float, stable: bool) -> None:
        self.log.append(("weight", (kg, stable)))

    def health(self, health: Health, reason: str) -> None:
        assert isinstance(reason, str) and reason
        self.log.append(("health", health))

    def of(self, kind: str) -> list[object]:
        return [value for k, value in self.log if k == kind]


@contextlib.asynccontextmanager
async def running(device: SerialDevice) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(device.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def unplug(sim: CardReaderSimulator | WeighbridgeSimulator, link: Path) -> None:
    """Pull the device: close its pty and point the link nowhere, in one loop step.

    Pointing the link away before the driver can retry keeps it from opening a pty that
    another test (or another test process) created meanwhile under the freed pts number.
    """
    sim.vanish()
    relink(link, str(link.with_name("nothing-plugged-in")))


def relink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically."""
    tmp = link.with_suffix(".new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


# -- card readers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "card"),
    [("stx-hex-xor", "0100E2850E"), ("stx-bin-bcc", "06008E6D5D"), ("ascii-line", "3A00F1229B")],
)
async def test_card_read_end_to_end(fmt: str, card: str) -> None:
    facts = Facts()
    async with CardReaderSimulator(fmt) as sim:
        reader = CardReader("B1-IN/reader", sim.port, 9600, fmt, facts.card, facts.health)
        async with running(reader):
            await wait_until(lambda: reader.is_open)
            sim.present(card)
            await wait_until(lambda: facts.of("card"))
    assert facts.log == [("health", Health.OK), ("card", card)]  # OK comes before the card
    assert reader.counters["frames"] == 1
    assert reader.counters["reconnects"] == 0


async def test_repeated_frames_each_reported() -> None:
    facts = Facts()
    async with CardReaderSimulator() as sim:
        reader = CardReader("r", sim.port, 9600, "stx-hex-xor", facts.card, facts.health)
        async with running(reader):
            await wait_until(lambda: reader.is_open)
            sim.present("0100E2850E", repeat=3)
            await wait_until(lambda: len(facts.of("card")) == 3)


async def test_garbage_counted_and_next_frame_read() -> None:
    """Bad input counted and dropped: noise and a bad frame are counted, the next card read."""
    facts = Facts()
    async with CardReaderSimulator() as sim:
        reader = CardReader("r", sim.port, 9600, "stx-hex-xor", facts.card, facts.health)
        async with running(reader):
            await wait_until(lambda: reader.is_open)
            sim.write_raw(b"\xff\x00noise" + b"\x020100E2850E69\r\n\x03")  # XOR should be 68
            sim.present("0100E2850E")
            await wait_until(lambda: facts.of("card"))
            assert facts.of("card") == ["0100E2850E"]
            assert reader.counters["dropped"] == {"stray": 1, "checksum": 1}
            assert reader.counters["bytes"] == 7 + 16 + 16


async def test_callback_error_does_not_stop_the_reader(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def on_card(card: str) -> None:
        seen.append(card)
        if len(seen) == 1:
            raise RuntimeError("lane bug")

    async with CardReaderSimulator() as sim:
        reader = CardReader("r", sim.port, 9600, "stx-hex-xor", on_card, lambda h, r: None)
        async with running(reader):
            await wait_until(lambda: reader.is_open)
            sim.present("0100E2850E")
            await wait_until(lambda: len(seen) == 1)
            sim.present("06008E6D5D")
            await wait_until(lambda: len(seen) == 2)
    assert "callback failed" in caplog.text


async def test_port_vanishing_reports_faulty_once(tmp_path: Path) -> None:
    """S5 fail closed on device fault: the reader's port vanishes -> FAULTY, once per outage."""
    facts = Facts()
    link = tmp_path / "reader0"
    sim = CardReaderSimulator()
    await sim.start()
    relink(link, sim.port)
    reader = CardReader("r", str(link), 9600, "stx-hex-xor", facts.card, facts.health, **FAST)
    async with running(reader):
        await wait_until(lambda: reader.is_open)
        sim.present("0100E2850E")
        await wait_until(lambda: facts.of("card"))
        unplug(sim, link)
        await wait_until(lambda: Health.FAULTY in facts.of("health"))
        assert not reader.is_open
        # it keeps trying to reopen, without reporting the same outage again
        await wait_until(lambda: reader.counters["open_failures"] >= 3)
    assert facts.of("health") == [Health.OK, Health.FAULTY]
    assert reader.health is Health.FAULTY


async def test_missing_port_at_start_reports_faulty(tmp_path: Path) -> None:
    """S5 fail closed on device fault: a port that is not there is a fault from the start."""
    facts = Facts()
    reader = CardReader(
        "r", str(tmp_path / "ttyUSB9"), 9600, "stx-hex-xor", facts.card, facts.health, **FAST
    )
    async with running(reader):
        await wait_until(lambda: reader.counters["open_failures"] >= 3)
    assert facts.log == [("health", Health.FAULTY)]


async def test_reconnect_after_the_port_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """S5 fail closed on device fault, then recovery: the driver reopens and reads again.

    A pty cannot be recreated at the same path, so the driver opens a symlink that the
    test points at the new pty, as udev does with /dev/serial/by-id links.
    """
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    facts = Facts()
    link = tmp_path / "reader0"
    first = CardReaderSimulator()
    await first.start()
    relink(link, first.port)
    reader = CardReader("B1-IN/reader", str(link), 9600, "stx-hex-xor", facts.card,
                        facts.health, **FAST)
    async with running(reader):
        await wait_until(lambda: reader.is_open)
        first.present("0100E2850E")
        await wait_until(lambda: len(facts.of("card")) == 1)

        unplug(first, link)
        await wait_until(lambda: reader.health is Health.FAULTY)
        await wait_until(lambda: reader.counters["open_failures"] >= 2)

        async with CardReaderSimulator() as second:
            relink(link, second.port)
            await wait_until(lambda: reader.is_open)
            assert reader.health is Health.FAULTY  # open is not enough: a frame must decode
            second.present("06008E6D5D")
            await wait_until(lambda: len(facts.of("card")) == 2)

    assert facts.log == [
        ("health", Health.OK),
        ("card", "0100E2850E"),
        ("health", Health.FAULTY),
        ("health", Health.OK),
        ("card", "06008E6D5D"),
    ]
    assert reader.counters["reconnects"] == 1
    # one ERROR for the whole outage, with the flight recorder; INFO on the way back
    ours = [r for r in caplog.records if r.name == LOGGER]
    errors = [r for r in ours if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "02 30 31 30 30 45 32 38 35 30 45 36 38 0d 0a 03" in errors[0].getMessage()
    assert all(r.getMessage().startswith("B1-IN/reader: ") for r in ours)
    assert all(getattr(r, "device", None) == "B1-IN/reader" for r in ours)
    infos = [r.getMessage() for r in ours if r.levelno == logging.INFO]
    assert any("reopened" in m for m in infos)
    assert any("recovered" in m for m in infos)


async def test_persistent_garbage_reports_degraded() -> None:
    """Frames of the wrong format: the port is up but nothing decodes -> DEGRADED, then OK."""
    facts = Facts()
    async with CardReaderSimulator("stx-hex-xor") as sim:
        reader = CardReader("r", sim.port, 9600, "stx-bin-bcc", facts.card, facts.health,
                            degraded_after=3)
        async with running(reader):
            await wait_until(lambda: reader.is_open)
            sim.present("0100E2850E", repeat=3)
            await wait_until(lambda: reader.health is Health.DEGRADED)
            sim.write_raw(bytes.fromhex("020A0206008E6D5DB003"))
            await wait_until(lambda: reader.health is Health.OK)
    assert facts.log == [
        ("health", Health.DEGRADED),
        ("health", Health.OK),
        ("card", "06008E6D5D"),
    ]
    assert reader.counters["dropped"] == {"length": 3}


async def test_cancel_closes_and_releases_the_port() -> None:
    facts = Facts()
    async with CardReaderSimulator() as sim:
        first = CardReader("a", sim.port, 9600, "stx-hex-xor", facts.card, facts.health)
        async with running(first):
            await wait_until(lambda: first.is_open)
        assert not first.is_open
        # ports are opened exclusively: a second driver only gets it if the first let go
        second = CardReader("b", sim.port, 9600, "stx-hex-xor", facts.card, facts.health)
        async with running(second):
            await wait_until(lambda: second.is_open)
            sim.present("0100E2850E")
            await wait_until(lambda: facts.of("card"))
    assert Health.FAULTY not in facts.of("health")


async def test_run_twice_is_refused() -> None:
    async with CardReaderSimulator() as sim:
        reader = CardReader("r", sim.port, 9600, "stx-hex-xor", lambda c: None, lambda h, r: None)
        async with running(reader):
            await wait_until(lambda: reader.is_open)
            with pytest.raises(RuntimeError, match="already running"):
                await reader.run()


def test_bad_parameters_refused() -> None:
    with pytest.raises(ValueError, match="unknown card reader format"):
        CardReader("r", "/dev/null", 9600, "wiegand", lambda c: None, lambda h, r: None)
    with pytest.raises(ValueError, match="baud"):
        CardReader("r", "/dev/null", 0, "ascii-line", lambda c: None, lambda h, r: None)
    with pytest.raises(ValueError):
        Weighbridge("w", "/dev/null", 9600, "xk3190-tf0", 0, lambda k, s: None, lambda h, r: None)


# -- weighbridges -----------------------------------------------------------------------


def check_stability(readings: list[tuple[float, bool]], n: int) -> None:
    """Every report's ``stable`` equals 'the last n readings were identical'."""
    for i, (kg, stable) in enumerate(readings):
        run = 1
        while run <= i and readings[i - run][0] == kg:
            run += 1
        assert stable == (run >= n), (i, readings[max(0, i - n) : i + 1])


async def test_weight_stable_after_n_samples() -> None:
    """CONTRACT 2.2 xk3190-tf0: stable = stable_samples identical readings in a row."""
    facts = Facts()
    async with WeighbridgeSimulator("xk3190-tf0", interval_s=0.005) as sim:
        bridge = Weighbridge("B1-IN/scale", sim.port, 9600, "xk3190-tf0", 5, facts.weight,
                             facts.health)
        async with running(bridge):
            await wait_until(lambda: len(facts.of("weight")) >= 2)
            sim.set_weight(31250)
            await wait_until(lambda: (31250.0, True) in facts.of("weight"))
    readings = facts.of("weight")
    check_stability(readings, 5)  # type: ignore[arg-type]
    first_heavy = readings.index((31250.0, False))
    assert readings[first_heavy : first_heavy + 5] == [(31250.0, False)] * 4 + [(31250.0, True)]
    assert facts.of("health")[0] is Health.OK
    assert bridge.counters["frames"] == len(readings)


async def test_toledo_stable_when_motion_clears() -> None:
    """CONTRACT 2.2 toledo-continuous: stable = motion bit clear."""
    facts = Facts()
    async with WeighbridgeSimulator("toledo-continuous", interval_s=0.005) as sim:
        sim.set_weight(18000, motion=True)
        bridge = Weighbridge("w", sim.port, 9600, "toledo-continuous", 5, facts.weight,
                             facts.health)
        async with running(bridge):
            await wait_until(lambda: (18000.0, False) in facts.of("weight"))
            sim.set_weight(18020, motion=False)
            await wait_until(lambda: (18020.0, True) in facts.of("weight"))
    readings = facts.of("weight")
    assert (18000.0, True) not in readings
    assert (18020.0, False) not in readings  # no counting with a motion flag


async def test_weighbridge_recovers_and_stability_starts_over(tmp_path: Path) -> None:
    """S5 fail closed on device fault: readings from before an outage never count after it."""
    facts = Facts()
    link = tmp_path / "scale0"
    first = WeighbridgeSimulator("xk3190-tf0", interval_s=0.005, kg=31250)
    await first.start()
    relink(link, first.port)
    bridge = Weighbridge("w", str(link), 9600, "xk3190-tf0", 3, facts.weight, facts.health, **FAST)
    async with running(bridge):
        await wait_until(lambda: (31250.0, True) in facts.of("weight"))
        unplug(first, link)
        await wait_until(lambda: bridge.health is Health.FAULTY)
        before = len(facts.of("weight"))
        async with WeighbridgeSimulator("xk3190-tf0", interval_s=0.005, kg=31250) as second:
            relink(link, second.port)
            await wait_until(lambda: len(facts.of("weight")) >= before + 3)
    after = facts.of("weight")[before:]
    assert after[:3] == [(31250.0, False), (31250.0, False), (31250.0, True)]
    assert facts.of("health") == [Health.OK, Health.FAULTY, Health.OK]
    assert bridge.counters["reconnects"] == 1


async def test_drop_warnings_do_not_flood(caplog: pytest.LogCaptureFixture) -> None:
    """One WARNING about dropped frames per minute at most, however noisy the line."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    facts = Facts()
    async with WeighbridgeSimulator("xk3190-tf0", interval_s=0.005) as sim:
        bridge = Weighbridge("w", sim.port, 9600, "xk3190-tf0", 3, facts.weight, facts.health)
        async with running(bridge):
            await wait_until(lambda: bridge.is_open)
            for _ in range(20):
                sim.write_raw(b"\x02+99")  # half frames
                await asyncio.sleep(0.01)
            await wait_until(lambda: sum(bridge.counters["dropped"].values()) >= 10)
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1
