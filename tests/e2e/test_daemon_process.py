"""The daemon as an operator runs it: ``gatectl run`` in its own process, killed for real."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from gatectl.config import load_config
from simulators.site import SimLane, SimulatedSite

from .conftest import wait_until, write_site_config

TRUCK_CARD = "0100E2850E"


class Daemon:
    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.api = f"http://{load_config(config_path).local_api.listen}"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gatectl", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=log,
        )
        log.close()

    async def health(self) -> int | None:
        try:
            async with aiohttp.ClientSession() as s, s.get(self.api + "/api/v1/health") as r:
                return r.status
        except aiohttp.ClientError:
            return None

    async def wait_healthy(self) -> None:
        for _ in range(300):
            if await self.health() == 200:
                return
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()
            await asyncio.sleep(0.05)
        raise AssertionError("daemon never became healthy:\n" + self.log_path.read_text())

    async def lane(self, lane_id: str) -> dict:
        """The lane as the local API shows it."""
        async with aiohttp.ClientSession() as s, s.get(self.api + "/api/v1/lanes") as r:
            return next(lane for lane in (await r.json())["lanes"] if lane["lane_id"] == lane_id)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def events(self) -> list[dict]:
        out = subprocess.run(
            [sys.executable, "-m", "gatectl", "events", "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            check=True,
        )
        return [json.loads(line) for line in out.stdout.splitlines()]


def journaled(db: Path) -> list[str]:
    """The types of the events in the journal file now, read as another process would."""
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
        return [json.loads(body)["type"] for (body,) in conn.execute("SELECT body FROM events ORDER BY seq")]


async def pull_up_and_show_the_card(lane: SimLane) -> None:
    """The truck drives onto the arrival loop and the weighbridge, and shows its card
    once the weight has settled."""
    lane.set_loop("arrival", True)
    lane.weigh(31250)
    await asyncio.sleep(0.3)
    lane.reader.present(TRUCK_CARD)


async def another_lorry_pulls_up(lane: SimLane) -> None:
    """While the daemon is down: the lorry on the loop reverses away and another, heavier
    one, pulls up in its place."""
    lane.set_loop("arrival", False)
    lane.weigh(0)
    await asyncio.sleep(0.2)
    lane.set_loop("arrival", True)
    lane.weigh(42680)


async def show_until_asked(sim: SimulatedSite, lane: SimLane, card: str) -> None:
    """The driver shows ``card`` until the lane has asked customs a second time."""
    for _ in range(40):
        lane.reader.present(card)
        await asyncio.sleep(0.25)
        if len(sim.authority.requests) > 1:
            break


@pytest.fixture
def sim(fast_sim: SimulatedSite) -> SimulatedSite:
    return fast_sim


@pytest.fixture
def daemon(sim: SimulatedSite, tmp_path: Path):
    d = Daemon(write_site_config(sim, tmp_path), tmp_path / "daemon.log")
    try:
        yield d
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


async def test_kill9_right_after_lift_then_restart_never_lifts_again(sim: SimulatedSite, daemon: Daemon) -> None:
    """S7, S1: kill -9 right after the lift; the restarted daemon rebuilds the passage from
    the journal and the live inputs, never lifts that authorisation again, lowers once the
    vehicle has cleared, and never reuses a seq."""
    sim.authority.script(TRUCK_CARD, "release")
    lane = sim.lane("B1-IN")
    daemon.start()
    await daemon.wait_healthy()
    await pull_up_and_show_the_card(lane)
    await wait_until(lambda: lane.opens == 1)
    daemon.kill9()
    await wait_until(lambda: lane.barrier.position == "up")

    daemon.start()
    await daemon.wait_healthy()
    lane.reader.present(TRUCK_CARD)  # still in the reader's field: changes nothing
    for loop, on in [("safety", True), ("arrival", False), ("exit", True), ("safety", False), ("exit", False)]:
        if loop == "arrival":
            lane.weigh(0)
        lane.set_loop(loop, on)
        await asyncio.sleep(0.15)
    await wait_until(lambda: lane.barrier.position == "down")
    assert (lane.opens, lane.closes) == (1, 1)
    assert len(sim.authority.requests) == 1
    assert daemon.terminate() == 0

    events = daemon.events()
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "seq contiguous, never reused"
    assert len({e["event_id"] for e in events}) == len(events)
    committed = [e for e in events if e["type"] == "authorisation.committed"]
    assert len(committed) == 1
    # S6 makes the authorisation durable before the coil; the lift's own record follows the
    # coil write, so a kill within a commit of the coil may take it (it is never doubled).
    lifts = [e for e in events if e["type"] == "barrier.lifted" and e["reason"] == "lift"]
    assert len(lifts) <= 1 and all(e["authorisation"] == committed[0]["authorisation"] for e in lifts)
    assert [e["type"] for e in events].count("lane.recovered") == 1
    closed = [e for e in events if e["type"] == "passage.closed"]
    assert [c["outcome"] for c in closed] == ["passed"]
    assert closed[0]["authorisation"] == committed[0]["authorisation"]


async def test_r3_s7_a_lorry_that_pulled_up_while_the_daemon_was_down_is_asked_about_its_own_card(
    sim: SimulatedSite, daemon: Daemon
) -> None:
    """R3, R4, S7: card read and asked about, then kill -9 before the answer; while the
    daemon is down that lorry reverses away and another pulls up onto the loop. The
    restarted daemon does not ask about the first card for it: the second lorry shows its
    own card, gets a passage of its own, and customs' answer is about that card."""
    other = "06008E6D5D"
    sim.authority.script(TRUCK_CARD, "release", delay_s=30)  # no answer before the kill
    sim.authority.script(other, "hold")
    lane = sim.lane("B1-IN")
    daemon.start()
    await daemon.wait_healthy()
    await pull_up_and_show_the_card(lane)
    await sim.authority.wait_for_requests(1)
    await wait_until(lambda: "release.requested" in journaled(daemon.config_path.parent / "gatectl.db"))
    daemon.kill9()
    await another_lorry_pulls_up(lane)

    daemon.start()
    await daemon.wait_healthy()
    await show_until_asked(sim, lane, other)
    assert [r["card_no"] for r in sim.authority.requests] == [TRUCK_CARD, other]
    assert sim.authority.requests[1]["gross_weight_kg"] == 42680
    assert lane.opens == 0
    assert daemon.terminate() == 0

    events = daemon.events()
    closed = [e for e in events if e["type"] == "passage.closed"]
    assert [(c["card"], c["outcome"], c["reason"]) for c in closed] == [(TRUCK_CARD, "backed_out", "daemon_restart")]
    requested = [e for e in events if e["type"] == "release.requested"]
    assert [e["card"] for e in requested] == [TRUCK_CARD, other]
    assert requested[1]["passage_id"] != closed[0]["passage_id"]


async def test_r4_r6_s7_a_lorry_that_pulled_up_while_the_daemon_was_down_is_not_held_for_another(
    sim: SimulatedSite, daemon: Daemon
) -> None:
    """R4, R6, S7: customs holds a lorry for inspection, then kill -9; while the daemon is
    down that lorry reverses away and another pulls up. The restarted daemon does not send
    the second lorry to the inspection area: it asks for the card, the second lorry's card
    closes the held passage (held, daemon_restart) and customs releases it on its own card."""
    other = "06008E6D5D"
    sim.authority.script(TRUCK_CARD, "inspect")
    sim.authority.script(other, "release")
    lane = sim.lane("B1-IN")
    daemon.start()
    await daemon.wait_healthy()
    await pull_up_and_show_the_card(lane)
    await wait_until(lambda: "passage.held" in journaled(daemon.config_path.parent / "gatectl.db"))
    daemon.kill9()
    await another_lorry_pulls_up(lane)

    daemon.start()
    await daemon.wait_healthy()
    shown = await daemon.lane("B1-IN")
    assert (shown["state"], shown["display"]) == ("held", "请刷IC卡")
    await show_until_asked(sim, lane, other)
    assert [r["card_no"] for r in sim.authority.requests] == [TRUCK_CARD, other]
    assert sim.authority.requests[1]["gross_weight_kg"] == 42680
    await wait_until(lambda: lane.opens == 1)
    assert daemon.terminate() == 0

    events = daemon.events()
    held = [e for e in events if e["type"] == "passage.held"]
    assert [(e["reason"], "待检区" in e["display"]) for e in held] == [("inspect", True)]
    closed = [e for e in events if e["type"] == "passage.closed"]
    assert [(c["passage_id"], c["card"], c["outcome"], c["reason"]) for c in closed] == [
        (held[0]["passage_id"], TRUCK_CARD, "held", "daemon_restart")]
    committed = [e for e in events if e["type"] == "authorisation.committed"]
    assert len(committed) == 1 and committed[0]["passage_id"] != held[0]["passage_id"]


async def test_health_503_until_every_lane_runs_and_sigterm_exits_0(sim: SimulatedSite, daemon: Daemon) -> None:
    """CONTRACT 6 and 7: health answers 503 while a lane cannot read its inputs, 200 once
    every lane runs; SIGTERM stops the daemon cleanly with exit code 0."""
    await sim.io.stop()
    daemon.start()
    for _ in range(300):
        if await daemon.health() == 503:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("no 503 while the IO module is away")
    await sim.io.start()
    await daemon.wait_healthy()
    async with aiohttp.ClientSession() as s, s.get(daemon.api + "/metrics") as r:
        metrics = await r.text()
    # The start-up heap is out of the collector's view: no full collection walks it (#12).
    frozen = [line for line in metrics.splitlines() if line.startswith("gatectl_gc_frozen_objects ")]
    assert frozen and float(frozen[0].split()[1]) > 10_000, frozen
    assert daemon.terminate() == 0
    log = daemon.log_path.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(line.get("event") == "stopped" for line in lines), "structured JSON log with a clean stop"


def test_check_config_lists_every_problem_with_path_and_line(tmp_path: Path) -> None:
    """CONTRACT 1, 7: a broken config exits 2 and names each problem's YAML path and line."""
    example = Path(__file__).resolve().parents[2] / "config" / "site.example.yaml"
    text = example.read_text(encoding="utf-8")
    text = text.replace("pulse_ms: 300", "pulse_ms: -5", 1)
    text = text.replace("poll_ms: 50", "poll_msec: 50", 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "gatectl", "check-config", "--config", str(bad)], capture_output=True, text=True
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert any("bad.yaml:" in line and "barrier.pulse_ms" in line for line in lines), out.stderr
    assert any("bad.yaml:" in line and "poll_msec" in line for line in lines), out.stderr
    for line in lines:
        location = line.split(" ", 1)[0]
        assert location.startswith(f"{bad}:") and location.rsplit(":", 1)[1].isdigit(), line
    ok = subprocess.run(
        [sys.executable, "-m", "gatectl", "check-config", "--config", str(example)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr


def test_demo_runs_a_whole_site(tmp_path: Path) -> None:
    """The demo a newcomer runs: simulators and the daemon, vehicles released and lifted."""
    out = subprocess.run(
        [sys.executable, "-m", "gatectl", "demo", "--plain", "--duration", "30", "--lanes", "2", "--seed", "7",
         "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert "抬杆" in out.stdout and "通行结束: 已通行" in out.stdout, out.stdout[-2000:]
