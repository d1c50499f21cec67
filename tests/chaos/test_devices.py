"""Campaign 4: devices failing under traffic (S5, R15): a card reader's and a weighing
indicator's USB serial adapters pulled out and plugged back in (the simulators sit behind
``SwitchablePort`` symlinks, as udev names adapters), and the Modbus IO module rebooting
(its TCP server stopped and started again on the same port).

Two bonded lanes, vehicles arriving all the time. Besides faults at random moments, two
are aimed: the reader is pulled, and later the IO module stops, while a release request is
on its way (the authority answers 1.5 s late meanwhile), so the release arrives while the
lane is faulty and must be held (``device_fault``).

Checked: each fault opened (``fault.opened``) and closed again by itself, no restart (no
``lane.recovered``); no automatic authorisation was committed while a fault was open on
its lane; every open edge at the simulator is a journaled lift of its own committed
authorisation; the aimed releases were held; each lane passes vehicles after the last
fault; seq 1..n per lane.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime
from pathlib import Path

import pytest
from fastsite import fast_site

from simulators.site import FORM_IDS, LaneSpec

from .harness import (
    RELEASED,
    CoilRecorder,
    InProcess,
    Traffic,
    fail_closed_problems,
    lift_problems,
    read_authorisations,
    read_events,
    seq_problems,
    wait_until,
    write_config,
)

LANES = [
    LaneSpec("B1-IN", "保税货物进区1号", "bonded", "in", "K001"),
    LaneSpec("B2-OUT", "保税货物出区2号", "bonded", "out", "K002", card_format="ascii-line",
             weigh_format="toledo-continuous"),
]


#: Defects this campaign found and reported (docs/reliability.md, "Defects found") that it
#: does not fail on yet; each stops a lane for good (until a restart) when the IO module
#: drops out while a boom moves or is about to move:
#: ``lowering_stuck_after_reconnect``: the first poll after the module returns reports the
#: up limit off and the down limit on together; the lane core takes the rising edge first,
#: raises a spurious ``both_limits`` barrier fault and never leaves ``lowering``.
#: ``failed_lowering_not_retried``: a close pulse the module never acted on is not tried
#: again; the boom stays up and the lane stays in ``lowering``.
#: ``barrier_fault_latches``: a lift pulse the module never acted on ends in
#: ``never_left_down``, a barrier fault that only a limit-switch edge clears, and no edge
#: comes while the lane holds every vehicle.
#: Until fixed, the module is only stopped while every boom has been down and quiet for a
#: while and no lift is in progress or about to start; empty this set once they are fixed
#: and it stops at any moment.
KNOWN_DEFECTS: set[str] = set()


DEVICES = ("card_reader", "weighbridge", "io1")


def _ts(e: dict) -> float:
    return datetime.fromisoformat(e["ts"]).timestamp()


async def devices_campaign(tmp_path: Path, figures: dict, *, rounds: int, down_s: float, seed: int) -> None:
    rng = random.Random(seed)
    sim = fast_site(tmp_path / "site", LANES)
    await sim.start()
    config = write_config(sim, tmp_path)
    recorder = CoilRecorder(sim)
    daemon = InProcess(config)
    traffic = Traffic(sim, rng, wait_for_lift_s=3.0, release_share=0.9)
    b1, b2 = sim.lane("B1-IN"), sim.lane("B2-OUT")
    injected: list[tuple[str, str, float]] = []  # (lane or "*", device, when)

    def events(type_: str, since: float = 0.0) -> list[dict]:
        return [e for e in daemon.events() if e["type"] == type_ and _ts(e) >= since]

    def seen(type_: str, since: float, lane: str, device: str) -> bool:
        return any(e["device"] == device and e["lane_id"] == lane for e in events(type_, since))

    async def fault_and_recover(lane_id: str, device: str, pull, plug, hold_s: float) -> None:
        lanes = [lane_id] if lane_id != "*" else [s.id for s in LANES]
        t0 = time.time()
        injected.append((lane_id, device, t0))
        if asyncio.iscoroutine(pulled := pull()):
            await pulled
        await wait_until(lambda: all(seen("fault.opened", t0, lane, device) for lane in lanes), timeout=15,
                         what=f"{device} fault on {lanes}")
        await asyncio.sleep(hold_s)
        t1 = time.time()
        await plug()
        await wait_until(lambda: all(seen("fault.closed", t1, lane, device) for lane in lanes), timeout=30,
                         what=f"{device} recovered on {lanes}")

    async def release_arrives_while_faulty(lane_id: str, device: str, pull, plug, ready=lambda: True) -> None:
        """Answer releases 1.5 s late; pull the device just after a request left ``lane_id``."""
        for v in RELEASED:
            sim.authority.script(v.card, "release", delay_s=1.5, form_id=FORM_IDS[v.card])
        try:
            t0 = time.time()

            def just_asked() -> bool:
                recent = time.time() - 0.3
                return ready() and any(e["lane_id"] == lane_id and _ts(e) >= recent
                                       for e in events("release.requested", t0))

            await wait_until(just_asked, timeout=45, step=0.01, what=f"a release request on {lane_id}")
            await fault_and_recover(lane_id, device, pull, plug, 1.5)
        finally:
            sim.script_fleet()

    async def io_reboot() -> None:
        await sim.io.start()

    def booms_at_rest(asking: str | None = None, quiet_s: float = 0.6) -> bool:
        """Every boom down and quiet, no lift in progress and none about to start (no lane
        waiting for an answer but ``asking``, whose answer comes 1.5 s late)."""
        if not KNOWN_DEFECTS:
            return True
        last = max((w.t for w in recorder.writes), default=0.0)
        busy = {"deciding", "authorising", "open", "lowering"}
        return (time.time() - last > quiet_s
                and all(lane.barrier.position == "down" for lane in sim.lanes)
                and all(s.core.state.value not in busy or (s.id == asking and s.core.state.value == "deciding")
                        for s in daemon.site.lanes.values()))

    async def io_stop() -> None:
        await wait_until(booms_at_rest, timeout=30, step=0.01, what="booms at rest")
        await sim.io.stop()

    try:
        await daemon.start()
        traffic.start()
        await wait_until(lambda: len(events("passage.closed")) >= 2, timeout=60, what="warm-up passages")
        faults = [
            ("B1-IN", "card_reader", b1.reader.unplug, b1.reader.replug),
            ("B2-OUT", "weighbridge", b2.scale.unplug, b2.scale.replug),
            ("*", "io1", io_stop, io_reboot),
            ("B2-OUT", "card_reader", b2.reader.unplug, b2.reader.replug),
            ("B1-IN", "weighbridge", b1.scale.unplug, b1.scale.replug),
        ]
        for _ in range(rounds):
            for lane_id, device, pull, plug in faults:
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                await fault_and_recover(lane_id, device, pull, plug, rng.uniform(0.5, down_s))
        await release_arrives_while_faulty("B1-IN", "card_reader", b1.reader.unplug, b1.reader.replug)
        await release_arrives_while_faulty("B2-OUT", "io1", sim.io.stop, io_reboot,
                                           ready=lambda: booms_at_rest(asking="B2-OUT"))

        last = time.time()
        await wait_until(lambda: all(any(e["lane_id"] == s.id and e["outcome"] == "passed"
                                         for e in events("passage.closed", last)) for s in LANES),
                         timeout=60, what="each lane passes a vehicle after the last fault")
        await traffic.stop()
        await wait_until(lambda: all(lane.barrier.position == "down" for lane in sim.lanes), timeout=30,
                         what="booms down")
        assert daemon.crashed is None, repr(daemon.crashed)
        await daemon.stop()

        evs = read_events(tmp_path / "gatectl.db")
        auths = read_authorisations(tmp_path / "gatectl.db")
        opened = [e for e in evs if e["type"] == "fault.opened" and e["device"] in DEVICES]
        closed = [e for e in evs if e["type"] == "fault.closed" and e["device"] in DEVICES]
        held_faulty = [e for e in evs if e["type"] == "passage.held" and e["reason"] == "device_fault"]
        aimed = [e for e in evs if e["type"] == "passage.closed" and e["decision"] == "release"
                 and e.get("reason") == "device_fault"]
        figures.update({
            "seed": seed,
            "faults_injected": len(injected),
            "faults_by_device": {d: sum(1 for _, dev, _ in injected if dev == d) for d in DEVICES},
            "fault_opened_events": len(opened),
            "fault_closed_events": len(closed),
            "restarts": 0,
            "passages_driven": len(traffic.results),
            "held_for_device_fault": len(held_faulty),
            "releases_held_for_device_fault": len(aimed),
            "cards_shown_to_an_unplugged_reader": traffic.missed_reads,
            "lift_edges": len(recorder.edges(kind="lift")),
            "passed": sum(1 for e in evs if e["type"] == "passage.closed" and e["outcome"] == "passed"),
            "events_checked": len(evs),
        })
        assert not [e for e in evs if e["type"] == "lane.recovered"], "a lane restarted"
        per_lane_device = lambda es: sorted((e["lane_id"], e["device"]) for e in es)  # noqa: E731
        assert per_lane_device(opened) == per_lane_device(closed), "a fault never closed"
        assert len(aimed) >= 2, "the releases that arrived while faulty were not held"
        lift_stats: dict = {}
        problems = fail_closed_problems(evs) + seq_problems(evs) + lift_problems(recorder, auths, evs, lift_stats)
        figures.update(lift_stats)
        assert not problems, "\n".join(problems)
    finally:
        await traffic.cancel()
        await daemon.stop()
        await sim.stop()


@pytest.mark.timeout(180)
async def test_devices_vanish_and_return_short(tmp_path: Path, figures: dict) -> None:
    """Each of five faults once (readers, indicators, the IO module), then two aimed ones."""
    await devices_campaign(tmp_path, figures, rounds=1, down_s=1.5, seed=41)


@pytest.mark.soak
@pytest.mark.timeout(1800)
async def test_devices_vanish_and_return_long(tmp_path: Path, figures: dict) -> None:
    """Twenty rounds of the five faults, longer outages (opt-in: --soak)."""
    await devices_campaign(tmp_path, figures, rounds=20, down_s=8.0, seed=42)
