"""Campaign 3: the release authority goes away under traffic (S5, CONTRACT 3.1).

Two bonded lanes, vehicles arriving all the time (mostly scripted to release). The outage
starts at a moment when a lift is in progress, so that lorry passes during it. First half:
the authority's socket is closed (connection refused); second half: it accepts and never
answers (the client's timeout), and refuses pass confirmations with 503 throughout. Then it
comes back.

Checked: every vehicle that asked during the outage was held with ``authority_*`` and an
``authority_unreachable`` alarm (fail closed), no release was authorised and nothing
lifted during the outage (at the simulator and in the journal), the pass confirmations of
passages that ended during it were queued and reached the authority after it returned, each
lane passes vehicles again without a restart, and the journal is whole (seq 1..n, every
open edge a journaled lift of its own committed authorisation).
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime
from pathlib import Path

import pytest
from fastsite import fast_site

from .harness import (
    TWO_BONDED_LANES,
    CoilRecorder,
    InProcess,
    Traffic,
    lift_problems,
    read_authorisations,
    read_events,
    seq_problems,
    wait_until,
    write_config,
)

LANES = TWO_BONDED_LANES
TIMEOUT_MS = 1000


def _ts(e: dict) -> float:
    return datetime.fromisoformat(e["ts"]).timestamp()


async def authority_campaign(tmp_path: Path, figures: dict, *, outage_s: float, seed: int) -> None:
    rng = random.Random(seed)
    sim = fast_site(tmp_path / "site", LANES)
    await sim.start()
    config = write_config(sim, tmp_path, authority_timeout_ms=TIMEOUT_MS)
    recorder = CoilRecorder(sim)
    daemon = InProcess(config)
    traffic = Traffic(sim, rng, wait_for_lift_s=3.0, release_share=0.9)
    authority = sim.authority
    try:
        await daemon.start()
        traffic.start()

        def passed_since(t0: float, lane: str | None = None) -> int:
            return sum(1 for e in daemon.events(lane) if e["type"] == "passage.closed"
                       and e["outcome"] == "passed" and _ts(e) > t0)

        await wait_until(lambda: passed_since(0) >= 2, timeout=60, what="warm-up passages")
        # Begin while a released lorry still waits before its raised boom: it passes during
        # the outage, and its pass confirmation must wait for the authority.
        def lift_for_a_waiting_lorry() -> bool:
            return any(daemon.site.lanes[lane.id].core.state.value == "open"
                       and daemon.site.lanes[lane.id].core.passage is not None and lane.loop("arrival")
                       for lane in sim.lanes)

        await wait_until(lift_for_a_waiting_lorry, timeout=30, step=0.01, what="a lift in progress")
        outage_start = time.time()
        edges_before = len(recorder.edges())
        await authority.stop()  # connection refused
        await asyncio.sleep(outage_s / 2)
        authority.silent = True  # accepts, never answers: the client times out
        authority.fail_confirmations = True
        await authority.start()
        await asyncio.sleep(outage_s / 2)
        confirmed_during = {c["instruction_id"] for c in authority.confirmations}
        authority.silent = False
        authority.fail_confirmations = False
        outage_end = time.time()
        edges_during = recorder.edges()[edges_before:]

        # Back: each lane passes vehicles again by itself, and every confirmation arrives.
        await wait_until(lambda: all(passed_since(outage_end, lane.id) >= 1 for lane in sim.lanes), timeout=60,
                         what="each lane passes a vehicle after the outage")
        await wait_until(lambda: daemon.site.journal.outbox_depth() == 0, timeout=90,
                         what="pass confirmations delivered")
        await traffic.stop()
        await wait_until(lambda: all(lane.barrier.position == "down" for lane in sim.lanes), timeout=30,
                         what="booms down")
        await wait_until(lambda: daemon.site.journal.outbox_depth() == 0, timeout=90,
                         what="last pass confirmations delivered")
        assert daemon.crashed is None, repr(daemon.crashed)
        passages = {p["passage_id"]: p for p in daemon.site.journal.passages(limit=100000)}
        await daemon.stop()

        events = read_events(tmp_path / "gatectl.db")
        auths = read_authorisations(tmp_path / "gatectl.db")
        in_outage = [e for e in events if outage_start < _ts(e) < outage_end]
        asked = {e["request_id"] for e in in_outage if e["type"] == "release.requested"}
        failed = [e for e in events if e["type"] == "release.failed" and e["request_id"] in asked]
        decided = [e for e in events if e["type"] == "release.decided" and e.get("request_id") in asked]
        held_ids = {e["passage_id"] for e in events if e["type"] == "release.requested" and e["request_id"] in asked}
        held = [e for e in events if e["type"] == "passage.held" and e["passage_id"] in held_ids]
        unreachable = [e for e in events if e["type"] == "alarm.raised" and e["alarm"] == "authority_unreachable"
                       and e["passage_id"] in held_ids]
        released_in_outage = [e for e in in_outage if e["type"] == "authorisation.committed"]
        lifts_in_outage = [e for e in edges_during if recorder.kind(e) == "lift" and e.t > outage_start + 0.5]
        closed_in_outage = [e for e in in_outage if e["type"] == "passage.closed" and e["decision"] == "release"]
        ended_in_outage = {passages[e["passage_id"]]["instruction_id"] for e in closed_in_outage}
        released_closed = {p["instruction_id"] for p in passages.values()
                           if p["decision"] == "release" and p["closed_at"] and p["instruction_id"]}
        delivered = {c["instruction_id"] for c in authority.confirmations}
        figures.update({
            "seed": seed,
            "outage_s": outage_s,
            "passages_driven": len(traffic.results),
            "asked_during_outage": len(asked),
            "failure_reasons": sorted({e["reason"] for e in failed}),
            "held_during_outage": sorted({e["reason"] for e in held}),
            "authority_unreachable_alarms": len(unreachable),
            "authorisations_during_outage": len(released_in_outage),
            "lift_edges_during_outage": len(lifts_in_outage),
            "confirmations_queued_by_the_outage": len(ended_in_outage),
            "confirmations_delivered": len(delivered),
            "confirmation_attempts": len(authority.confirmation_attempts),
            "passed_after_outage": sum(1 for e in events if e["type"] == "passage.closed"
                                       and e["outcome"] == "passed" and _ts(e) > outage_end),
            "events_checked": len(events),
        })
        assert asked, "nobody asked during the outage"
        assert not decided, f"answers during the outage: {decided}"
        assert len(failed) == len(asked) == len(unreachable) == len(held), (len(asked), len(failed), len(held))
        assert {e["reason"] for e in failed} >= {"connection", "timeout"}, figures["failure_reasons"]
        assert all(e["reason"].startswith("authority_") for e in held), figures["held_during_outage"]
        assert not released_in_outage, released_in_outage
        assert not lifts_in_outage, lifts_in_outage
        assert ended_in_outage, "no passage ended during the outage (its confirmation is the point)"
        assert not ended_in_outage & confirmed_during, "a confirmation went through during the outage"
        assert released_closed <= delivered, f"confirmations never delivered: {released_closed - delivered}"
        lift_stats: dict = {}
        problems = seq_problems(events) + lift_problems(recorder, auths, events, lift_stats)
        figures.update(lift_stats)
        assert not problems, "\n".join(problems)
    finally:
        await traffic.cancel()
        await daemon.stop()
        await sim.stop()


@pytest.mark.timeout(180)
async def test_authority_outage_short(tmp_path: Path, figures: dict) -> None:
    """A 12 s outage (6 s refused, 6 s silent) under traffic on two lanes."""
    await authority_campaign(tmp_path, figures, outage_s=12, seed=31)


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_authority_outage_long(tmp_path: Path, figures: dict) -> None:
    """A 60 s outage (30 s refused, 30 s silent) under traffic (opt-in: --soak)."""
    await authority_campaign(tmp_path, figures, outage_s=60, seed=32)
