"""Lane kinds, schedules, spot checks and pass confirmations through the real drivers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from fastsite import fast_site

from gatectl.api import start_api
from gatectl.config import load_config
from gatectl.service import Site
from simulators.site import ADMIN_TRAFFIC, PERSONNEL_TRAFFIC, LaneSpec, SimulatedSite, Vehicle

from .conftest import Running, wait_until, write_site_config

ADMIN = LaneSpec("A1-IN", "行政通道进区", "administrative", "in", "K010", weigh_format="xk3190-tf0")
PEOPLE = LaneSpec("P1-IN", "人员通道", "personnel", "in", "K020", weigh_format=None, exit_loop=False)
TRUCK = Vehicle("0100E2850E", "云A12345", 31250)
SECOND = Vehicle("06008E6D5D", "云A67890", 18800)


def outcomes(r: Running, lane: str) -> list[str]:
    return [e["outcome"] for e in r.events(lane, "passage.closed")]


def held_reasons(r: Running, lane: str) -> list[str]:
    return [e["reason"] for e in r.events(lane, "passage.held")]


@pytest.mark.parametrize("lane_specs", [[ADMIN]])
async def test_administrative_lane_whitelist_and_curb_weight(running: Running) -> None:
    """R7, R1: a registered empty vehicle passes on the whitelist alone; one heavier than its
    curb weight plus tolerance is held (no goods in admin vehicles); an unknown card is held."""
    lane = running.sim.lane("A1-IN")
    empty, _, loaded, unknown = ADMIN_TRAFFIC
    assert await lane.drive(empty) == "passed"
    assert await lane.drive(loaded, wait_for_lift_s=1.5) == "backed_out"
    assert await lane.drive(unknown, wait_for_lift_s=1.5) == "backed_out"
    await wait_until(lambda: len(outcomes(running, "A1-IN")) == 3)
    assert outcomes(running, "A1-IN") == ["passed", "held", "held"]
    assert held_reasons(running, "A1-IN") == ["admin_overweight", "not_registered"]
    assert lane.opens == 1
    lifted = running.events("A1-IN", "barrier.lifted")[0]
    assert lifted["authorisation"]["kind"] == "whitelist"
    assert running.sim.authority.requests == []  # the lane decides from its own list
    held = running.events("A1-IN", "passage.held")[0]
    assert "严禁夹带货物" in held["display"]


@pytest.mark.parametrize("lane_specs", [[PEOPLE]])
async def test_personnel_lane_passes_staff_cards_only(running: Running) -> None:
    """R1: the personnel lane lifts once per staff card and holds any other card."""
    lane = running.sim.lane("P1-IN")
    staff, _, _, visitor = PERSONNEL_TRAFFIC
    assert await lane.drive(staff) == "passed"
    assert await lane.drive(visitor, wait_for_lift_s=1.5) == "backed_out"
    await wait_until(lambda: len(outcomes(running, "P1-IN")) == 2)
    assert outcomes(running, "P1-IN") == ["passed", "held"]
    assert lane.opens == 1
    assert running.events("P1-IN", "barrier.lifted")[0]["authorisation"]["kind"] == "staff_card"


async def test_spot_check_holds_exactly_n_released_vehicles(running: Running) -> None:
    """R7: customs orders "hold the next N" through the local API: exactly N released
    vehicles are held whatever the authority said, then release resumes; the POST needs
    the token."""
    running.sim.authority.script(TRUCK.card, "release")
    async with aiohttp.ClientSession() as s:
        url = running.api + "/api/v1/lanes/B1-IN/spot-checks"
        async with s.post(url, json={"hold_next": 2}) as r:
            assert r.status == 401
        async with s.post(url, json={"hold_next": 2}, headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 403
        auth = {"Authorization": "Bearer demo-token"}
        async with s.post(url, json={"hold_next": -1}, headers=auth) as r:
            assert r.status == 422
        async with s.post(url, json={"hold_next": 2}, headers=auth) as r:
            assert r.status == 200 and (await r.json())["hold_next"] == 2
    lane = running.sim.lane("B1-IN")
    for _ in range(2):
        assert await lane.drive(TRUCK, wait_for_lift_s=1.5) == "backed_out"
    assert await lane.drive(TRUCK) == "passed"
    await wait_until(lambda: len(outcomes(running, "B1-IN")) == 3)
    assert outcomes(running, "B1-IN") == ["held", "held", "passed"]
    assert held_reasons(running, "B1-IN") == ["spot_check", "spot_check"]
    assert lane.opens == 1
    # Spot-check holds are customs orders, not faults (R16).
    assert running.alarms("B1-IN") == []


async def test_pass_confirmations_delivered_once_the_authority_returns_even_after_restart(
    tmp_path: Path, fast_sim: SimulatedSite,
) -> None:
    """CONTRACT 3.1: the daemon confirms each release (passed / not_passed) through the
    journal's outbox, retrying until the authority acknowledges, across a daemon restart,
    in order."""
    config = load_config(write_site_config(fast_sim, tmp_path))
    fast_sim.authority.script(TRUCK.card, "release")
    fast_sim.authority.script(SECOND.card, "release")
    fast_sim.authority.fail_confirmations = True

    async def run_daemon(stop: asyncio.Event) -> tuple[Site, asyncio.Task, object]:
        site = Site(config)
        runner = await start_api(site)
        task = asyncio.create_task(site.run(stop))
        await wait_until(lambda: site.running)
        return site, task, runner

    stop = asyncio.Event()
    site, task, runner = await run_daemon(stop)
    lane = fast_sim.lane("B1-IN")
    assert await lane.drive(TRUCK) == "passed"
    assert await lane.drive(SECOND) == "passed"
    await wait_until(lambda: site.journal.outbox_depth() == 2)
    await wait_until(lambda: len(fast_sim.authority.confirmation_attempts) >= 1)
    assert fast_sim.authority.confirmations == []
    stop.set()
    await task
    await runner.cleanup()

    fast_sim.authority.fail_confirmations = False
    stop = asyncio.Event()
    site, task, runner = await run_daemon(stop)
    await wait_until(lambda: len(fast_sim.authority.confirmations) == 2)
    await wait_until(lambda: site.journal.outbox_depth() == 0)
    got = fast_sim.authority.confirmations
    requests = fast_sim.authority.requests
    assert [c["request_id"] for c in got] == [r["request_id"] for r in requests]
    assert all(c["result"] == "passed" and c["lane_id"] == "B1-IN" for c in got)
    assert got[0]["gross_weight_kg"] == TRUCK.gross_kg
    stop.set()
    await task
    await runner.cleanup()


async def test_lane_outside_open_hours_lifts_nothing(tmp_path: Path) -> None:
    """R2: outside its open hours a lane releases nothing automatically and says so,
    without asking the authority."""
    sim = fast_site(tmp_path, [LaneSpec("E1-IN", "跨境电商9610进区", "ecommerce_9610", "in", "K005")])
    await sim.start()
    try:
        path = write_site_config(sim, tmp_path)
        text = path.read_text(encoding="utf-8")
        # A window that is certainly closed now: the hour twelve hours away, one minute long.
        from datetime import datetime
        from zoneinfo import ZoneInfo

        now = datetime.now(ZoneInfo("Asia/Shanghai"))
        h = (now.hour + 12) % 24
        path.write_text(text.replace("open_hours: always", f'open_hours: ["{h:02d}:00-{h:02d}:01"]'), encoding="utf-8")
        config = load_config(path)
        site = Site(config)
        runner = await start_api(site)
        stop = asyncio.Event()
        task = asyncio.create_task(site.run(stop))
        try:
            await wait_until(lambda: site.running)
            assert "非开放时间" in site.lanes["E1-IN"].core.display
            sim.authority.script(TRUCK.card, "release")
            lane = sim.lane("E1-IN")
            assert await lane.drive(TRUCK, wait_for_lift_s=1.5) == "backed_out"
            await wait_until(lambda: site.journal.events("E1-IN") and any(
                e["type"] == "passage.closed" for e in site.journal.events("E1-IN")))
            assert lane.opens == 0
            held = [e for e in site.journal.events("E1-IN") if e["type"] == "passage.held"]
            assert [h["reason"] for h in held] == ["closed_hours"]
            assert sim.authority.requests == []
        finally:
            stop.set()
            await task
            await runner.cleanup()
    finally:
        await sim.stop()
