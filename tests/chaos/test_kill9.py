"""Campaign 1: ``kill -9`` at random moments under traffic.

The daemon runs as an operator runs it (``python -m gatectl run --config F``) against a
simulated site of three lanes in this process. Vehicles keep coming (mostly released, some
held, inspected or denied). A seeded RNG picks how each daemon life ends:

- ``random``: SIGKILL at a random moment;
- ``after_open``: SIGKILL 0-20 ms after the next open-coil rising edge at the simulator,
  i.e. inside the 300 ms pulse, before the coil's off write;
- ``after_answer``: SIGKILL 0-12 ms after the authority sent a release (between the
  answer, the authorisation's commit and the pulse), half the time with the IO module
  answering 20-150 ms late, so the coil write is still in flight;
- ``startup``: SIGKILL while the daemon is still starting and recovering from the last kill.

It is restarted after each kill, while vehicles keep arriving. At the end every lane must
pass a released lorry, the daemon is stopped cleanly (exit 0) and the campaign checks, from
``gatectl events`` and the simulator: every event ever seen in the journal file during the
run is still there, unchanged (none lost); seq 1..n per lane, event ids unique; every open
edge at the simulator is the effect of one journaled lift, each lift of its own
authorisation committed before the edge (none lifted twice, none without).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from fastsite import fast_site

from simulators.site import LaneSpec

from .harness import (
    TWO_BONDED_LANES,
    RELEASED,
    CoilRecorder,
    Daemon,
    JournalObserver,
    Traffic,
    events_via_cli,
    lift_problems,
    outcomes,
    read_authorisations,
    seq_problems,
    wait_until,
    write_config,
)

LANES = [*TWO_BONDED_LANES, LaneSpec("E3-IN", "跨境电商进区3号", "ecommerce_9610", "in", "K003")]
MODES = {"random": 0.35, "after_open": 0.3, "after_answer": 0.2, "startup": 0.15}
MIN_KILLS = 5

#: Defects this campaign found that it steers around instead of failing on; empty since
#: ``coil_left_on`` (a SIGKILL inside a pulse left the coil energised for good) was fixed:
#: the restarted daemon now switches every barrier coil off before its first poll.
KNOWN_DEFECTS: set[str] = set()


def _passed_without_own_lift(results: list, recorder: CoilRecorder, kills: list[float]) -> int:
    """Driven through (the driver saw the boom up) with no open edge on that lane since the
    vehicle before it left, and a kill during its drive."""
    count = 0
    last_end: dict[str, float] = {}
    for lane_id, _card, outcome, start, end in sorted(results, key=lambda r: r[4]):
        since = last_end.get(lane_id, 0.0)
        last_end[lane_id] = end
        if outcome.startswith("passed") and not any(since < e.t <= end for e in recorder.edges(lane=lane_id)):
            count += any(start <= k <= end for k in kills)
    return count


async def kill_campaign(tmp_path: Path, figures: dict, *, passages: int, seed: int) -> None:
    rng = random.Random(seed)
    sim = fast_site(tmp_path / "site", LANES)
    await sim.start()
    config = write_config(sim, tmp_path)
    recorder = CoilRecorder(sim)
    daemon = Daemon(config, tmp_path / "daemon.log")
    observer = JournalObserver(tmp_path / "gatectl.db")
    # Vehicles keep coming until ``passages`` went through and the daemon was killed
    # MIN_KILLS times: on a loaded machine a restart takes longer, more drivers back out
    # while it is down, and a fixed number of passages could end with too few kills.
    traffic = Traffic(sim, rng, wait_for_lift_s=4.0)

    def enough() -> bool:
        return len(traffic.results) >= passages and daemon.kills >= MIN_KILLS
    loop = asyncio.get_running_loop()
    # Armed by the scheduler below, fired from the simulators' own callbacks.
    armed: dict[str, tuple[float, float] | None] = {"open": None, "answer": None}

    def on_open_edge(_edge) -> None:
        window, armed["open"] = armed["open"], None
        if window is not None:
            loop.call_later(rng.uniform(*window), daemon.kill9)

    recorder.on_open_edge.append(on_open_edge)
    answer_for = sim.authority._answer_for

    def answer_then_kill(body, script):
        answer = answer_for(body, script)
        if armed["answer"] is not None and answer["decision"] == "release":
            window, armed["answer"] = armed["answer"], None
            loop.call_later(rng.uniform(*window), daemon.kill9)
        return answer

    sim.authority._answer_for = answer_then_kill  # type: ignore[method-assign]
    kills_by_mode = dict.fromkeys(MODES, 0)
    fallbacks = 0
    slow_module_kills = 0
    coils_left_on: list[tuple[str, str, float]] = []  # (lane, coil, when killed)
    try:
        observer.start()
        daemon.start()
        await daemon.wait_healthy()
        traffic.start()
        while not enough():
            mode = rng.choices(list(MODES), weights=list(MODES.values()))[0]
            if mode == "startup":
                await asyncio.sleep(rng.uniform(0.2, 1.5))  # it was (re)started just now
                assert daemon.alive, "daemon died by itself while starting:\n" + daemon.tail()
                daemon.kill9()
            else:
                await daemon.wait_healthy()
                await asyncio.sleep(rng.uniform(0.5, 3.0))  # some clean running
                if mode == "random":
                    await asyncio.sleep(rng.uniform(0.0, 2.0))
                    daemon.kill9()
                else:
                    if mode == "after_answer" and rng.random() < 0.5:
                        # A slow module: the coil write is still in flight when the kill lands.
                        sim.io.latency_s = rng.uniform(0.02, 0.15)
                        slow_module_kills += 1
                    armed["open" if mode == "after_open" else "answer"] = (
                        (0.0, 0.02) if mode == "after_open" else (0.0, 0.012))
                    with contextlib.suppress(AssertionError):
                        await wait_until(lambda: not daemon.alive or enough(), timeout=15)
                    armed["open"] = armed["answer"] = None
                    sim.io.latency_s = 0.0
                    if daemon.alive:  # no lift or release came in time, or the traffic ended
                        fallbacks += 1
                        daemon.kill9()
            assert await daemon.reap() == -9, daemon.tail()
            kills_by_mode[mode] += 1
            if "coil_left_on" in KNOWN_DEFECTS:
                coils_left_on += [(*c, time.time()) for c in recorder.switch_off_leftovers()]
            await asyncio.sleep(rng.uniform(0.0, 0.5))  # dead a while; vehicles keep coming
            daemon.start()

        await traffic.stop()
        await daemon.wait_healthy()
        # Every lane recovered from the last kill by itself: idle, boom down, and a released
        # lorry passes each.
        await wait_until(lambda: all(lane.barrier.position == "down" for lane in sim.lanes), timeout=30,
                         what="booms down after the traffic")
        await wait_lanes_idle(daemon)
        finals = await asyncio.gather(*(lane.drive(RELEASED[i], wait_for_lift_s=8) for i, lane in enumerate(sim.lanes)))
        assert finals == ["passed"] * len(sim.lanes), f"a lane did not recover: {finals}\n{daemon.tail()}"
        await wait_until(lambda: all(lane.barrier.position == "down" for lane in sim.lanes), timeout=15,
                         what="booms down after the final lorries")
        await wait_lanes_idle(daemon)
        assert await daemon.terminate() == 0, daemon.tail()
        await observer.stop()

        events = events_via_cli(config)
        auths = read_authorisations(tmp_path / "gatectl.db")
        hygiene = recorder.hygiene()
        journal_outcomes = outcomes(events)
        figures.update({
            "seed": seed,
            "lanes": len(LANES),
            "passages_driven": len(traffic.results) + len(finals),
            "driver_outcomes": dict(sorted(Counter(r[2] for r in traffic.results).items())),
            "journal_outcomes": dict(sorted(journal_outcomes.items())),
            "kills": daemon.kills,
            "kills_by_mode": kills_by_mode,
            "armed_kills_fired_immediately_instead": fallbacks,
            "after_answer_kills_with_a_slow_module": slow_module_kills,
            "daemon_starts": daemon.starts,
            "lane_recoveries_journaled": sum(1 for e in events if e["type"] == "lane.recovered"),
            "lifts_interrupted_by_a_kill": sum(1 for e in events
                                              if e["type"] == "passage.held" and e["reason"] == "lift_interrupted"),
            "open_edges": len(recorder.edges()),
            "authorisations": len(auths),
            "events_checked": len(events),
            "events_seen_during_run": len(observer.seen),
            "journal_reads_during_run": observer.reads,
            # A pulse cut by a kill: on until the restarted daemon switches it off.
            "coils_a_kill_left_on": (len(coils_left_on) if "coil_left_on" in KNOWN_DEFECTS
                                     else len(recorder.cut_by_kills(daemon.kill_times))),
            # Not checked, reported (docs/reliability.md): vehicles that drove under a boom
            # raised for the vehicle before, while a kill had the daemon down.
            "passed_under_a_boom_left_up_by_a_kill": _passed_without_own_lift(traffic.results, recorder,
                                                                              daemon.kill_times),
        })
        lift_stats: dict = {}
        problems = (observer.lost(events) + seq_problems(events)
                    + lift_problems(recorder, auths, events, lift_stats, kills=daemon.kill_times))
        figures.update(lift_stats)
        if "coil_left_on" not in KNOWN_DEFECTS:
            # A coil a kill left on: the next write to it is the restarted daemon's "off"
            # (before it pulses anything); every other coil is on for one pulse only.
            cut = recorder.cut_by_kills(daemon.kill_times)
            for on, nxt in cut:
                if nxt is None or nxt.value:
                    problems.append(f"{on.lane} {on.coil} coil switched on at {on.t:.3f} and left on by a kill "
                                    f"was not switched off first: {nxt}")
            cut_on = {(on.lane, on.coil, on.t) for on, _ in cut}

            def cut_by_a_kill(entry: tuple) -> bool:
                lane_id, coil, _held, since = entry
                return (lane_id, coil, since) in cut_on

            long_on = [e for e in hygiene["long_on"] if not cut_by_a_kill(e)]
            if long_on or hygiene["both_on"]:
                problems.append(f"coils on longer than a pulse: {long_on}, both coils on: {hygiene['both_on']}")
        if hygiene["open_at_end"]:
            problems.append(f"coils still on after a clean stop: {hygiene['open_at_end']}")
        assert not problems, "\n".join(problems)
        assert journal_outcomes["passed"] >= len(sim.lanes)
        assert daemon.kills >= MIN_KILLS, "too few kills to mean anything"
    finally:
        with contextlib.suppress(Exception):
            recorder.dump(tmp_path / "coil_writes.jsonl")
            (tmp_path / "kills.json").write_text(json.dumps(daemon.kill_times))
            (tmp_path / "traffic.json").write_text(json.dumps(traffic.results))
        await traffic.cancel()
        daemon.cleanup()
        await observer.stop()
        await sim.stop()


async def wait_lanes_idle(daemon: Daemon, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        lanes = await daemon.lanes()
        if all(lane["state"] == "idle" and not lane["faults"] for lane in lanes):
            return
        if loop.time() > end:
            states = [(lane["lane_id"], lane["state"], lane["faults"]) for lane in lanes]
            raise AssertionError(f"lanes not idle: {states}"
                                 f"\n{daemon.tail()}")
        await asyncio.sleep(0.2)


@pytest.mark.timeout(300)
async def test_kill9_at_random_moments_short(tmp_path: Path, figures: dict) -> None:
    """~30 passages on three lanes, the daemon SIGKILLed and restarted again and again."""
    await kill_campaign(tmp_path, figures, passages=30, seed=20251127)


@pytest.mark.soak
@pytest.mark.timeout(3600)
async def test_kill9_at_random_moments_long(tmp_path: Path, figures: dict) -> None:
    """200 passages on three lanes under the same kills (opt-in: --soak)."""
    await kill_campaign(tmp_path, figures, passages=200, seed=7)
