"""Serial drivers end to end over real ptys, with the simulators as the devices.

No mocked transports: pyserial-asyncio-fast opens the pty slave exactly as it would open
/dev/ttyUSB0. Nothing here measures wall-clock time; every wait polls with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from drivers.health import Health
from drivers.serial_device import CardReader, SerialDevice, Weighbridge
from simulators.card_reader import CardReaderSimulator
from simulators.weighbridge import WeighbridgeSimulator

FAST = {"backoff_initial": 0.02, "backoff_max": 0.1}
QUICK = {**FAST, "settle_s": 0.05}
LOGGER = "drivers.serial_device"


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


class Facts:
    """Everything a driver reported, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, object]] = []
        self.reasons: list[tuple[Health, str]] = []

    def card(self, card: str) -> None:
        self.log.append(("card", card))

    def weight(self, kg: float, stable: bool) -> None:
        self.log.append(("weight", (kg, stable)))

    def health(self, health: Health, reason: str) -> None:
        assert isinstance(reason, str) and reason
        self.log.append(("health", health))
        self.reasons.append((health, reason))

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


def ours(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


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
    async with CardReaderSimulator(link=tmp_path / "reader0") as sim:
        reader = CardReader("r", sim.port, 9600, "stx-hex-xor", facts.card, facts.health, **FAST)
        async with running(reader):
            await wait_until(lambda: reader.is_open)
            sim.present("0100E2850E")
            await wait_until(lambda: facts.of("card"))
            sim.unplug()
            await wait_until(lambda: Health.FAULTY in facts.of("health"))
            assert not reader.is_open
            # it keeps trying to reopen, without reporting the same outage again
            await wait_until(lambda: reader.counters["open_failures"] >= 3)
    assert facts.of("health") == [Health.OK, Health.FAULTY]
    assert reader.health is Health.FAULTY
    assert "cannot open" in (reader.health_reason or "") or "lost" in (reader.health_reason or "")


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

    A pty cannot be recreated at the same path, so the simulator sits behind a symlink
    that points at a fresh pty on replug, as udev does with /dev/serial/by-id links.
    With a settle time longer than the test, only a card can prove the reader is back.
    """
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    facts = Facts()
    async with CardReaderSimulator(link=tmp_path / "reader0") as sim:
        reader = CardReader("B1-IN/reader", sim.port, 9600, "stx-hex-xor", facts.card,
                            facts.health, **FAST, settle_s=3600)
        async with running(reader):
            await wait_until(lambda: reader.is_open)
            sim.present("0100E2850E")
            await wait_until(lambda: len(facts.of("card")) == 1)

            sim.unplug()
            await wait_until(lambda: reader.health is Health.FAULTY)
            await wait_until(lambda: reader.counters["open_failures"] >= 2)

            await sim.replug()
            await wait_until(lambda: reader.is_open)
            assert reader.health is Health.FAULTY  # not settled yet: a frame must decode
            sim.present("06008E6D5D")
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
    records = [r for r in caplog.records if r.name == LOGGER]
    errors = [r for r in records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "02 30 31 30 30 45 32 38 35 30 45 36 38 0d 0a 03" in errors[0].getMessage()
    assert all(r.getMessage().startswith("B1-IN/reader: ") for r in records)
    assert all(getattr(r, "device", None) == "B1-IN/reader" for r in records)
    infos = ours(caplog, logging.INFO)
    assert sum("reopened" in m for m in infos) == 1
    assert sum("recovered" in m for m in infos) == 1


async def test_replugged_reader_is_ok_without_a_card(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """S5 recovery: a card reader speaks only when a card is shown, so once the port is
    open again and has stayed up for settle_s, the reader is OK; the next card is read."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    facts = Facts()
    async with CardReaderSimulator("stx-bin-bcc", link=tmp_path / "reader0") as sim:
        reader = CardReader("r", sim.port, 9600, "stx-bin-bcc", facts.card, facts.health,
                            **QUICK)
        async with running(reader):
            await wait_until(lambda: reader.health is Health.OK)  # no card needed at start
            sim.unplug()
            await wait_until(lambda: reader.health is Health.FAULTY)
            await sim.replug()
            await wait_until(lambda: reader.health is Health.OK)
            assert facts.of("card") == []
            assert "without failing" in (reader.health_reason or "")
            sim.present("06008E6D5D")
            await wait_until(lambda: facts.of("card"))
            # and again: a device can be pulled any number of times
            sim.unplug()
            await wait_until(lambda: reader.health is Health.FAULTY)
            await sim.replug()
            await wait_until(lambda: reader.health is Health.OK)
    assert facts.log == [
        ("health", Health.OK),
        ("health", Health.FAULTY),
        ("health", Health.OK),
        ("card", "06008E6D5D"),
        ("health", Health.FAULTY),
        ("health", Health.OK),
    ]
    assert reader.counters["reconnects"] == 2
    assert len(ours(caplog, logging.ERROR)) == 2  # one per outage
    assert sum("recovered" in m for m in ours(caplog, logging.INFO)) == 2


async def test_port_replugged_before_the_driver_noticed(tmp_path: Path) -> None:
    """An unplug and replug in one step: the driver still sees the old port die, and
    reopens the new one behind the same path."""
    facts = Facts()
    async with CardReaderSimulator(link=tmp_path / "reader0") as sim:
        reader = CardReader("r", sim.port, 9600, "stx-hex-xor", facts.card, facts.health,
                            **QUICK)
        async with running(reader):
            await wait_until(lambda: reader.health is Health.OK)
            await sim.replug()
            await wait_until(lambda: reader.counters["reconnects"] == 1)
            await wait_until(lambda: reader.health is Health.OK)
            sim.present("0100E2850E")
            await wait_until(lambda: facts.of("card"))
    assert facts.of("health") == [Health.OK, Health.FAULTY, Health.OK]


async def test_wrong_format_degrades_and_recovers_when_the_noise_ages_out() -> None:
    """Frames of the wrong format: the port is up but nothing decodes -> DEGRADED.

    A reader sees no traffic between cards, so bad frames age out of the window
    (error_window_s) and it is OK again without a card being shown.
    """
    facts = Facts()
    async with CardReaderSimulator("stx-hex-xor") as sim:
        reader = CardReader("r", sim.port, 9600, "stx-bin-bcc", facts.card, facts.health,
                            **QUICK, error_window_s=0.3)
        async with running(reader):
            await wait_until(lambda: reader.health is Health.OK)
            sim.present("0100E2850E", repeat=3)
            await wait_until(lambda: reader.health is Health.DEGRADED)
            assert "noisy line: 3 of the last 3" in (reader.health_reason or "")
            assert reader.counters["error_rate"] == 1.0
            await wait_until(lambda: reader.health is Health.OK)
            assert reader.counters["window_frames"] == 0
            sim.write_raw(bytes.fromhex("020A0206008E6D5DB003"))
            await wait_until(lambda: facts.of("card"))
    assert facts.log == [
        ("health", Health.OK),
        ("health", Health.DEGRADED),
        ("health", Health.OK),
        ("card", "06008E6D5D"),
    ]
    assert reader.counters["dropped"] == {"length": 3}


async def test_corrupt_cards_and_noise_on_a_reader() -> None:
    """One bad frame is no trend; three bad of four are. Good cards push the share down."""
    facts = Facts()
    async with CardReaderSimulator("stx-hex-xor", seed=7) as sim:
        reader = CardReader("r", sim.port, 9600, "stx-hex-xor", facts.card, facts.health,
                            **QUICK)
        async with running(reader):
            await wait_until(lambda: reader.health is Health.OK)
            sim.present_corrupt("0100E2850E")
            sim.present("0100E2850E")
            await wait_until(lambda: len(facts.of("card")) == 1)
            assert reader.health is Health.OK  # 1 of 2 bad, but fewer than error_min_bad
            sim.present_corrupt("0100E2850E", repeat=2)
            await wait_until(lambda: reader.health is Health.DEGRADED)
            for _ in range(30):  # the window holds 20 frames: good ones push the bad out
                sim.present("06008E6D5D")
            await wait_until(lambda: reader.health is Health.OK)
    assert reader.counters["dropped"] == {"checksum": 3}
    assert "line clean again" in (reader.health_reason or "")


async def test_card_reader_silence_check_is_off_by_default_and_can_be_turned_on() -> None:
    facts = Facts()
    async with CardReaderSimulator() as sim:
        quiet = CardReader("quiet", sim.port, 9600, "stx-hex-xor", facts.card, facts.health,
                           **QUICK)
        assert quiet.silence_s is None
        async with running(quiet):
            await wait_until(lambda: quiet.health is Health.OK)
            await asyncio.sleep(0.3)
            assert quiet.health is Health.OK  # no card for a while is normal
        watched_facts = Facts()
        watched = CardReader("watched", sim.port, 9600, "stx-hex-xor", watched_facts.card,
                             watched_facts.health, **QUICK, silence_s=0.2)
        async with running(watched):
            await wait_until(lambda: watched.health is Health.FAULTY)
            assert watched.health_reason == "no frames for 0.2 s"
            sim.present("0100E2850E")
            await wait_until(lambda: watched.health is Health.OK)
    # silence_s on: an open port alone never counts as OK, a frame must come
    assert watched_facts.log == [("health", Health.FAULTY), ("health", Health.OK),
                                 ("card", "0100E2850E")]
    assert watched.counters["silence_faults"] == 1


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


async def stop_and_list_what_is_left(device: SerialDevice, every_turn: bool) -> set[asyncio.Task]:
    """Run ``device`` until its port is open, cancel it (``every_turn``: again at every
    turn of the loop, as a stop that repeats its cancellations can) and, once ``run()``
    has returned, the tasks on the loop that were not there while it ran."""
    task = asyncio.create_task(device.run())
    await wait_until(lambda: device.is_open)
    before = asyncio.all_tasks()
    task.cancel()
    while every_turn and not task.done():
        await asyncio.sleep(0)
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return {t for t in asyncio.all_tasks() if not t.done()} - before


@pytest.mark.parametrize("every_turn", [False, True], ids=["cancelled-once", "cancelled-every-turn"])
async def test_cancelled_run_returns_once_the_transport_closed_the_port(every_turn: bool) -> None:
    """A stopping daemon closes its control loop right after its drivers' ``run()`` return:
    the transport's close (a task of its own, the port closed in a thread) has finished by
    then, however often the stop cancels, or the loop would destroy it half done."""
    async with CardReaderSimulator() as sim:
        reader = CardReader("r", sim.port, 9600, "stx-hex-xor", lambda c: None, lambda h, r: None)
        reader.CLOSE_WAIT_S = 30.0  # (so that a loaded machine cannot end the wait; the bound is tested below)
        assert await stop_and_list_what_is_left(reader, every_turn) == set()
        assert not reader.is_open


async def test_a_port_that_does_not_close_in_time_is_logged_and_left(caplog: pytest.LogCaptureFixture) -> None:
    """The wait for the transport's close is bounded: a stop never hangs on a port."""
    async with CardReaderSimulator() as sim:
        reader = CardReader("r", sim.port, 9600, "stx-hex-xor", lambda c: None, lambda h, r: None)
        reader.CLOSE_WAIT_S = 0.0  # the transport cannot have closed the port in no time
        left = await stop_and_list_what_is_left(reader, every_turn=False)
        assert left  # the transport's close, still under way
        assert ours(caplog, logging.ERROR) == [
            f"r: the transport did not finish closing {sim.port} within 0 s; going on without it"]
        assert not reader.is_open
        await asyncio.wait(left)  # the transport's close still ends (not to leave it to this test's loop)


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
    sim = WeighbridgeSimulator("xk3190-tf0", interval_s=0.005, kg=31250, link=tmp_path / "scale0")
    async with sim:
        bridge = Weighbridge("w", sim.port, 9600, "xk3190-tf0", 3, facts.weight, facts.health,
                             **FAST)
        async with running(bridge):
            await wait_until(lambda: (31250.0, True) in facts.of("weight"))
            sim.unplug()
            await wait_until(lambda: bridge.health is Health.FAULTY)
            before = len(facts.of("weight"))
            await sim.replug()
            await wait_until(lambda: len(facts.of("weight")) >= before + 3)
    after = facts.of("weight")[before:]
    assert after[:3] == [(31250.0, False), (31250.0, False), (31250.0, True)]
    assert facts.of("health") == [Health.OK, Health.FAULTY, Health.OK]
    assert bridge.counters["reconnects"] == 1


async def test_silent_weighbridge_is_faulty_once_and_ok_on_the_next_frame(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """S5: an indicator in continuous mode that stops talking is a fault; frames end it."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    facts = Facts()
    async with WeighbridgeSimulator("toledo-continuous", interval_s=0.005, kg=20) as sim:
        bridge = Weighbridge("B1-IN/scale", sim.port, 9600, "toledo-continuous", 3,
                             facts.weight, facts.health, **FAST, silence_s=0.2)
        async with running(bridge):
            await wait_until(lambda: bridge.health is Health.OK)
            sim.silent = True
            await wait_until(lambda: bridge.health is Health.FAULTY)
            assert bridge.health_reason == "no frames for 0.2 s"
            assert bridge.is_open  # the port is fine; the device is not
            await asyncio.sleep(0.45)  # two more silence periods: still one report
            assert facts.of("health") == [Health.OK, Health.FAULTY]
            age = bridge.counters["last_frame_age_s"]
            assert age is not None and age >= 0.2
            sim.silent = False
            await wait_until(lambda: bridge.health is Health.OK)
            # a second silent spell is a second outage
            sim.silent = True
            await wait_until(lambda: bridge.counters["silence_faults"] == 2)
            sim.silent = False
            await wait_until(lambda: bridge.health is Health.OK)
    assert facts.of("health") == [
        Health.OK, Health.FAULTY, Health.OK, Health.FAULTY, Health.OK
    ]
    assert bridge.counters["reconnects"] == 0
    assert len(ours(caplog, logging.ERROR)) == 2
    assert all("no frames for 0.2 s" in m for m in ours(caplog, logging.ERROR))
    assert sum("recovered" in m for m in ours(caplog, logging.INFO)) == 2


async def test_silence_clock_starts_when_the_port_opens() -> None:
    """An indicator that is silent from the start is faulty without ever being OK, and
    an open port alone never makes a streaming device OK."""
    facts = Facts()
    async with WeighbridgeSimulator("xk3190-tf0", interval_s=0.005) as sim:
        sim.silent = True
        bridge = Weighbridge("w", sim.port, 9600, "xk3190-tf0", 3, facts.weight, facts.health,
                             **QUICK, silence_s=0.2)
        async with running(bridge):
            await wait_until(lambda: bridge.health is Health.FAULTY)
            assert bridge.counters["last_frame_age_s"] is None
            sim.silent = False
            await wait_until(lambda: bridge.health is Health.OK)
    assert facts.of("health") == [Health.FAULTY, Health.OK]


async def test_weighbridge_silence_check_is_on_by_default() -> None:
    bridge = Weighbridge("w", "/dev/null", 9600, "xk3190-tf0", 3, lambda k, s: None,
                         lambda h, r: None)
    assert bridge.silence_s == 3.0
    off = Weighbridge("w", "/dev/null", 9600, "xk3190-tf0", 3, lambda k, s: None,
                      lambda h, r: None, silence_s=None)
    assert off.silence_s is None


async def test_noisy_line_degrades_and_a_clean_line_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Half the frames damaged on the way: the port works, the data is doubtful -> DEGRADED
    (never FAULTY: good frames still arrive). Clean again -> OK."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    facts = Facts()
    async with WeighbridgeSimulator("xk3190-tf0", interval_s=0.005, kg=500, noise=0.5,
                                    seed=1) as sim:
        bridge = Weighbridge("w", sim.port, 9600, "xk3190-tf0", 3, facts.weight, facts.health,
                             **FAST, silence_s=1.0)
        async with running(bridge):
            await wait_until(lambda: bridge.health is Health.DEGRADED)
            assert (bridge.health_reason or "").startswith("noisy line: ")
            assert bridge.counters["error_rate"] > 0.2
            sim.noise = 0.0
            await wait_until(lambda: bridge.health is Health.OK)
            assert bridge.counters["error_rate"] <= 0.1
    healths = facts.of("health")
    assert Health.FAULTY not in healths
    assert healths[-2:] == [Health.DEGRADED, Health.OK]
    assert len(ours(caplog, logging.WARNING)) <= 2  # one about drops, one about noise


async def test_light_noise_is_no_fault() -> None:
    """One frame in twenty damaged: counted and dropped, but the device stays OK."""
    facts = Facts()
    async with WeighbridgeSimulator("xk3190-tf0", interval_s=0.002, kg=500, noise=0.05,
                                    seed=3) as sim:
        bridge = Weighbridge("w", sim.port, 9600, "xk3190-tf0", 3, facts.weight, facts.health,
                             **FAST)
        async with running(bridge):
            await wait_until(lambda: sim.bursts_sent >= 5 and bridge.counters["frames"] >= 150)
    assert facts.of("health") == [Health.OK]
    assert sum(bridge.counters["dropped"].values()) >= 5


async def test_nothing_but_noise_degrades_then_goes_silent() -> None:
    """Only damaged frames: DEGRADED at once, FAULTY when silence_s passes without a valid
    frame (the reason says bad frames did arrive). When clean frames come back the window
    is still full of bad ones: DEGRADED until they are pushed out, then OK."""
    facts = Facts()
    async with WeighbridgeSimulator("toledo-continuous", interval_s=0.005, kg=500,
                                    seed=2) as sim:
        bridge = Weighbridge("w", sim.port, 9600, "toledo-continuous", 3, facts.weight,
                             facts.health, **FAST, silence_s=0.3)
        async with running(bridge):
            await wait_until(lambda: bridge.health is Health.OK)
            sim.noise = 1.0
            await wait_until(lambda: bridge.health is Health.FAULTY)
            assert re.fullmatch(r"no frames for 0\.3 s \(\d+ bad frame\(s\) meanwhile\)",
                                bridge.health_reason or "")
            sim.noise = 0.0
            await wait_until(lambda: bridge.health is Health.OK)
    assert facts.of("health") == [
        Health.OK, Health.DEGRADED, Health.FAULTY, Health.DEGRADED, Health.OK
    ]


@pytest.mark.parametrize("fmt", ["xk3190-tf0", "toledo-continuous"])
async def test_never_settling_weight_is_never_stable(fmt: str) -> None:
    """Frames keep coming (the device is OK) but the weight is never stable."""
    facts = Facts()
    async with WeighbridgeSimulator(fmt, interval_s=0.003, kg=31250, never_settles=True) as sim:
        bridge = Weighbridge("w", sim.port, 9600, fmt, 2, facts.weight, facts.health)
        async with running(bridge):
            await wait_until(lambda: len(facts.of("weight")) >= 40)
    readings = facts.of("weight")
    assert all(not stable for _, stable in readings)  # type: ignore[misc]
    assert all(abs(kg - 31250) <= 5 for kg, _ in readings)  # type: ignore[misc]
    assert facts.of("health") == [Health.OK]


async def test_counters_report_everything_json_ready(tmp_path: Path) -> None:
    facts = Facts()
    async with WeighbridgeSimulator("xk3190-tf0", interval_s=0.005, kg=100,
                                    link=tmp_path / "scale0") as sim:
        bridge = Weighbridge("w", sim.port, 9600, "xk3190-tf0", 3, facts.weight, facts.health,
                             **FAST)
        fresh = bridge.counters
        assert fresh["health"] is None and fresh["last_frame_age_s"] is None
        async with running(bridge):
            await wait_until(lambda: bridge.counters["frames"] >= 3)
            sim.silent = True
            await asyncio.sleep(0.05)  # let a frame already on its way land
            received = bridge.counters["bytes"]
            sim.write_raw(b"\x02+00")
            await wait_until(lambda: bridge.counters["bytes"] == received + 4)
            sim.unplug()
            sim.silent = False
            await wait_until(lambda: bridge.health is Health.FAULTY)
            await sim.replug()
            await wait_until(lambda: bridge.health is Health.OK)
            counters = bridge.counters
    assert json.loads(json.dumps(counters)) == counters
    assert set(counters) == {
        "frames", "bytes", "dropped", "reconnects", "open_failures", "silence_faults",
        "health", "health_reason", "last_frame_age_s", "error_rate", "window_frames",
    }
    assert counters["health"] == "ok"
    assert counters["reconnects"] == 1
    assert counters["silence_faults"] == 0
    assert 0 <= counters["last_frame_age_s"] < 5
    # the half frame cut off by the unplug is counted, but not held against the line
    assert counters["dropped"] == {"truncated": 1}
    assert counters["error_rate"] == 0.0


def test_health_options_are_checked() -> None:
    def reader(**options: object) -> CardReader:
        return CardReader("r", "/dev/null", 9600, "ascii-line", lambda c: None,
                          lambda h, r: None, **options)

    for bad in ({"silence_s": 0}, {"settle_s": -1}, {"error_window": 0},
                {"error_window_s": 0}, {"error_rate": 1.0}, {"error_min_bad": 0},
                {"error_min_bad": 21}):
        with pytest.raises(ValueError):
            reader(**bad)
    r = reader()
    assert (r.silence_s, r.settle_s, r.error_window, r.error_window_s, r.error_rate,
            r.error_min_bad) == (None, 1.0, 20, 10.0, 0.2, 3)


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
    warnings = ours(caplog, logging.WARNING)
    assert sum("dropped" in m for m in warnings) == 1
    assert sum("degraded" in m for m in warnings) <= 1  # a third of the frames were bad
