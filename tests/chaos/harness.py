"""Tools the fault campaigns share: the daemon as a process, a recorder of every coil
write at the simulated IO module, an observer reading the journal file while the daemon
writes it, a Mosquitto that can be killed, traffic, and the checks every campaign ends
with (seq contiguous, nothing observed ever lost, one lift per authorisation, no lift
without one, no automatic authorisation while a fault is open)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from gatectl.config import load_config
# The MQTT tests' broker (password file, SIGKILL, SIGHUP reload, back on the same port).
from mqtt.conftest import MOSQUITTO, MOSQUITTO_PASSWD, Broker  # noqa: F401
from simulators.site import FLEET, SCRIPT, LaneSpec, SimLane, SimulatedSite, Vehicle, free_tcp_port

#: The site most campaigns run: one bonded lane in, one out.
TWO_BONDED_LANES = [
    LaneSpec("B1-IN", "保税货物进区1号", "bonded", "in", "K001"),
    LaneSpec("B2-OUT", "保税货物出区2号", "bonded", "out", "K002"),
]

ROOT = Path(__file__).resolve().parents[2]
RELEASED = [v for v in FLEET if SCRIPT[v.card] == "release"]
NOT_RELEASED = [v for v in FLEET if SCRIPT[v.card] != "release"]
#: The config's barrier.pulse_ms (simulators/site.py writes 300).
PULSE_MS = 300


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, step: float = 0.02,
                     what: str = "condition") -> None:
    """Poll until ``predicate()`` holds; fail with ``what`` if it never does."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"{what}: not reached within {timeout:g} s")
        await asyncio.sleep(step)


def pick_vehicle(rng: random.Random, release_share: float = 0.8, busy: Iterable[str] = ()) -> Vehicle:
    """Mostly lorries customs releases, some it holds, inspects or denies; never one of
    ``busy`` (the cards of lorries on other lanes right now: a lorry is in one place)."""
    pool = RELEASED if rng.random() < release_share else NOT_RELEASED
    free = [v for v in pool if v.card not in set(busy)]
    return rng.choice(free or pool)


# ------------------------------------------------------------------------ coils


@dataclass(frozen=True)
class CoilWrite:
    t: float  # time.time(), comparable with the journal's timestamps
    lane: str
    coil: str  # "open" / "close"
    value: bool
    rising: bool
    position: str  # the barrier's position just before this write


class CoilRecorder:
    """Every coil write the IO module simulator acts on, with the barrier's position just
    before it. Open-coil rising edges are classified: ``lift`` (the boom was down),
    ``reverse`` (it was coming down: a safety reversal, S2) or ``redundant`` (it was
    already up or rising)."""

    def __init__(self, sim: SimulatedSite) -> None:
        self.sim = sim
        self.writes: list[CoilWrite] = []
        self._coils: dict[int, tuple[SimLane, str]] = {}
        for lane in sim.lanes:
            self._coils[lane.open_coil] = (lane, "open")
            self._coils[lane.close_coil] = (lane, "close")
        self._state = {addr: sim.io.coil(addr) for addr in self._coils}
        self.on_open_edge: list[Callable[[CoilWrite], None]] = []
        # First in the list: the barrier's own hook has not moved it yet.
        sim.io.on_coil_write.insert(0, self._hook)

    def _hook(self, address: int, value: bool) -> None:
        if address not in self._coils:
            return
        lane, coil = self._coils[address]
        rising = value and not self._state[address]
        self._state[address] = value
        w = CoilWrite(time.time(), lane.id, coil, value, rising, lane.barrier.position)
        self.writes.append(w)
        if rising and coil == "open":
            for cb in list(self.on_open_edge):
                cb(w)

    def edges(self, lane: str | None = None, kind: str | None = None) -> list[CoilWrite]:
        """Open-coil rising edges, optionally of one lane and one kind."""
        out = []
        for w in self.writes:
            if not (w.rising and w.coil == "open") or (lane is not None and w.lane != lane):
                continue
            if kind is None or self.kind(w) == kind:
                out.append(w)
        return out

    @staticmethod
    def kind(w: CoilWrite) -> str:
        if w.position == "down":
            return "lift"
        if w.position == "moving_down":
            return "reverse"
        return "redundant"

    def dump(self, path: Path) -> None:
        """Every coil write, one JSON line each (evidence for a report)."""
        with open(path, "w", encoding="utf-8") as out:
            for w in self.writes:
                out.write(json.dumps({"t": round(w.t, 4), "lane": w.lane, "coil": w.coil, "value": w.value,
                                      "rising": w.rising, "position": w.position}) + "\n")

    def switch_off_leftovers(self) -> list[tuple[str, str]]:
        """Switch off at the module every coil still on (as a fixed daemon would at start);
        returns which. Not an edge, so the barrier does not move."""
        left = []
        for addr, (lane, coil) in self._coils.items():
            if self.sim.io.coil(addr):
                self.sim.io._coil_written(addr, False)  # the simulator's own write path
                left.append((lane.id, coil))
        return left

    def cut_by_kills(self, kills: Iterable[float]) -> list[tuple[CoilWrite, CoilWrite | None]]:
        """Coil switch-ons whose writer a kill ended before the coil's next write: each
        with that next write (None: none yet). A write the daemon sent just before its kill
        may reach the module after it (a slow module: in flight for up to 150 ms); it is
        still the dead daemon's, as no write of the restarted one came between (that one's
        first write to a coil is always "off")."""
        kills = sorted(kills)
        by_coil: dict[tuple[str, str], list[CoilWrite]] = {}
        for w in self.writes:
            by_coil.setdefault((w.lane, w.coil), []).append(w)
        out = []
        for writes in by_coil.values():
            for i, w in enumerate(writes):
                if not w.value or (i and writes[i - 1].value):
                    continue
                before = writes[i - 1].t if i else float("-inf")
                nxt = writes[i + 1] if i + 1 < len(writes) else None
                until = nxt.t if nxt is not None else float("inf")
                if any(before < k < until for k in kills):
                    out.append((w, nxt))
        return out

    def energised_now(self) -> list[tuple[str, str]]:
        return [(lane.id, coil) for addr, (lane, coil) in self._coils.items() if self.sim.io.coil(addr)]

    def hygiene(self, slack_s: float = 1.5) -> dict[str, Any]:
        """Coils left on longer than a pulse (plus ``slack_s``): ``(lane, coil, held_s,
        since)``; moments when both coils of one barrier were on together; ``open_at_end``
        lists coils still on now."""
        long_on, both_on = [], []
        on_since: dict[tuple[str, str], float] = {}
        for w in self.writes:
            key = (w.lane, w.coil)
            if w.value:
                on_since.setdefault(key, w.t)
                other = (w.lane, "close" if w.coil == "open" else "open")
                if other in on_since:
                    both_on.append((w.lane, round(w.t, 3)))
            elif key in on_since:
                on_since_t = on_since.pop(key)
                held = w.t - on_since_t
                if held > PULSE_MS / 1000 + slack_s:
                    long_on.append((w.lane, w.coil, round(held, 2), on_since_t))
        now = time.time()
        for (lane, coil), since in on_since.items():
            if now - since > PULSE_MS / 1000 + slack_s:
                long_on.append((lane, coil, round(now - since, 2), since))
        return {"long_on": long_on, "both_on": both_on, "open_at_end": self.energised_now()}


# ------------------------------------------------------------------------ the journal


def read_events(path: str | Path) -> list[dict]:
    """Every event in the journal file, in (lane, seq) order, from a connection of our own."""
    db = sqlite3.connect(str(path), timeout=10)
    try:
        return [json.loads(b) for (b,) in db.execute("SELECT body FROM events ORDER BY lane_id, seq")]
    finally:
        db.close()


def read_authorisations(path: str | Path) -> list[dict]:
    db = sqlite3.connect(str(path), timeout=10)
    try:
        cur = db.execute("SELECT kind, auth_id, lane_id, passage_id, committed_at FROM authorisations")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur]
    finally:
        db.close()


def events_via_cli(config_path: Path) -> list[dict]:
    """``gatectl events --config F``: what an operator reads."""
    out = subprocess.run([sys.executable, "-m", "gatectl", "events", "--config", str(config_path)],
                         capture_output=True, text=True, check=True, cwd=ROOT, timeout=60)
    return [json.loads(line) for line in out.stdout.splitlines()]


class JournalObserver:
    """Reads the journal file every ``interval`` s while the daemon writes (and dies), and
    remembers every event it ever saw: ``lost(final)`` names those missing or changed."""

    def __init__(self, path: str | Path, interval: float = 0.25) -> None:
        self.path = str(path)
        self.interval = interval
        self.seen: dict[tuple[str, int], str] = {}  # (lane, seq) -> event_id
        self.reads = 0
        self.errors = 0
        self._task: asyncio.Task | None = None
        self._db: sqlite3.Connection | None = None

    def poll(self) -> None:
        if self._db is None:
            if not Path(self.path).exists():
                return
            self._db = sqlite3.connect(self.path, timeout=2, check_same_thread=False)
        try:
            rows = self._db.execute("SELECT lane_id, seq, event_id FROM events").fetchall()
        except sqlite3.Error:
            self.errors += 1  # no table yet, or a lock: try again next time
            return
        self.reads += 1
        for lane, seq, event_id in rows:
            # Kept as first seen: lost() reports an event that changed since.
            self.seen.setdefault((lane, seq), event_id)

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self.poll)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self.poll)
        if self._db is not None:
            self._db.close()
            self._db = None

    def lost(self, final: Iterable[dict]) -> list[str]:
        now = {(e["lane_id"], e["seq"]): e["event_id"] for e in final}
        problems = []
        for key, event_id in sorted(self.seen.items()):
            if key not in now:
                problems.append(f"{key[0]} seq {key[1]} ({event_id}) was journaled, then lost")
            elif now[key] != event_id:
                problems.append(f"{key[0]} seq {key[1]} was {event_id}, now {now[key]}")
        return problems


def seq_problems(events: list[dict]) -> list[str]:
    """Per lane: seq 1..n without gap or repeat; event_id unique across the journal."""
    problems = []
    by_lane: dict[str, list[int]] = {}
    for e in events:
        by_lane.setdefault(e["lane_id"], []).append(e["seq"])
    for lane, seqs in by_lane.items():
        if seqs != list(range(1, len(seqs) + 1)):
            problems.append(f"{lane}: seqs not 1..{len(seqs)} (first bad at index "
                            f"{next(i for i, s in enumerate(seqs) if s != i + 1)})")
    dup = [i for i, n in Counter(e["event_id"] for e in events).items() if n > 1]
    if dup:
        problems.append(f"duplicate event_ids: {dup[:5]}")
    return problems


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def unrecorded_lifts(events: list[dict], kills: Iterable[float]) -> list[dict]:
    """Lifts whose ``barrier.lifted`` a kill may have taken: the lift's record is committed
    after its coil write (the authorisation, committed before it, is what makes the lift
    attributable, S6), so a kill right after the write loses it (and a kill just before
    the write leaves the same journal, with no edge). One counts only where the journal
    itself shows it: the lane's very next event after the ``authorisation.committed`` is
    the restarted daemon's ``lane.recovered`` naming that authorisation (the life that
    committed it journaled nothing more), a kill lies between the two, and no
    ``barrier.lifted`` anywhere names it. Returned as stand-ins for the lost records, ``ts``
    the decision's, valid for one edge before the recovery and none after it."""
    kills = sorted(kills)
    lifted = {(e["authorisation"]["kind"], e["authorisation"]["id"]) for e in events
              if e["type"] == "barrier.lifted" and e.get("reason") == "lift"}
    by_lane: dict[str, list[dict]] = {}
    for e in events:
        by_lane.setdefault(e["lane_id"], []).append(e)
    out = []
    for lane_events in by_lane.values():
        lane_events.sort(key=lambda e: e["seq"])
        for committed, after in zip(lane_events, lane_events[1:]):
            if committed["type"] != "authorisation.committed" or after["type"] != "lane.recovered":
                continue
            auth = committed["authorisation"]
            if (after.get("authorisation") != auth or (auth["kind"], auth["id"]) in lifted
                    or not any(_t(committed["ts"]) <= k <= _t(after["ts"]) for k in kills)):
                continue
            out.append({**committed, "type": "barrier.lifted", "reason": "lift", "unrecorded": True,
                        "until": _t(after["ts"])})
    return out


def lift_problems(recorder: CoilRecorder, authorisations: list[dict], events: list[dict],
                  stats: dict | None = None, kills: Iterable[float] = ()) -> list[str]:
    """S1, S6 from both sides of the wire.

    At the simulator, every open-coil rising edge is the effect of the lane's latest
    ``barrier.lifted`` journaled before it, and no journaled lift gives two edges (a double
    lift), no edge has none (a lift the journal does not know). A ``barrier.lifted`` is
    handed to the journal before its pulse starts (its ``ts`` is taken before it in any
    case), so the latest one before an edge is the one that caused it. A safety reverse's
    is committed before its coil; a lift's follows its coil, so a kill (``kills``) can take
    it: then the lift is known by its authorisation (``unrecorded_lifts``) and counts for
    one edge before the restarted daemon's recovery, as a record would. Lifts with reason
    ``lift`` must each name their own authorisation, committed (the row and its
    ``authorisation.committed`` event) before the edge; ``safety_reverse`` re-raises the
    lift in progress (S2). ``stats`` (if given) gets the edges by reason, the
    authorisations that lifted and the lift records a kill took."""
    problems = []
    by_reason: Counter = Counter()
    lifted_auths: set[tuple[str, str]] = set()
    lifted_by_lane: dict[str, list[dict]] = {}
    for e in events:
        if e["type"] == "barrier.lifted":
            lifted_by_lane.setdefault(e["lane_id"], []).append(e)
    unrecorded_edges = 0
    for e in unrecorded_lifts(events, kills):
        lifted_by_lane.setdefault(e["lane_id"], []).append(e)
    auth_at = {(a["kind"], a["auth_id"]): _t(a["committed_at"]) for a in authorisations}
    for lane in sorted({w.lane for w in recorder.writes} | set(lifted_by_lane)):
        lifted = sorted(lifted_by_lane.get(lane, []), key=lambda e: _t(e["ts"]))
        matched: dict[int, float] = {}
        for edge in recorder.edges(lane):
            before = [i for i, e in enumerate(lifted) if _t(e["ts"]) <= edge.t]
            if not before:
                problems.append(f"{lane}: open edge at {edge.t:.3f} (boom {edge.position}) "
                                "with no barrier.lifted before it")
                continue
            i = before[-1]
            ev = lifted[i]
            if ev.get("unrecorded") and edge.t > ev["until"]:
                problems.append(f"{lane}: open edge at {edge.t:.3f} after the recovery that held "
                                f"{ev['authorisation']} spent, with no barrier.lifted of its own")
                continue
            if i in matched:
                what = ("the unrecorded lift of authorisation.committed" if ev.get("unrecorded")
                        else "barrier.lifted")
                problems.append(f"{lane}: {what} seq {ev['seq']} ({ev['reason']}, "
                                f"{ev['authorisation']}) gave two open edges, at {matched[i]:.3f} and {edge.t:.3f}")
                continue
            matched[i] = edge.t
            by_reason[ev["reason"]] += 1
            unrecorded_edges += bool(ev.get("unrecorded"))
            if ev["reason"] == "lift":
                auth = (ev["authorisation"]["kind"], ev["authorisation"]["id"])
                lifted_auths.add(auth)
                if auth not in auth_at:
                    problems.append(f"{lane}: lift at {edge.t:.3f} under {auth}, never committed")
                elif auth_at[auth] > edge.t:
                    problems.append(f"{lane}: lift at {edge.t:.3f} before {auth} was committed")
    committed_events = {(e["authorisation"]["kind"], e["authorisation"]["id"])
                        for e in events if e["type"] == "authorisation.committed"}
    rows = set(auth_at)
    if rows != committed_events:
        problems.append(f"authorisations table and authorisation.committed events differ: {rows ^ committed_events}")
    lifts = [(e["authorisation"]["kind"], e["authorisation"]["id"]) for e in events
             if e["type"] == "barrier.lifted" and e.get("reason") == "lift"]
    twice = [a for a, n in Counter(lifts).items() if n > 1]
    if twice:
        problems.append(f"barrier.lifted (reason lift) journaled twice for {twice}")
    if stats is not None:
        stats["open_edges_by_reason"] = dict(by_reason)
        stats["distinct_authorisations_lifting"] = len(lifted_auths)
        stats["lift_edges_whose_record_a_kill_took"] = unrecorded_edges
    return problems


AUTOMATIC = frozenset({"release_instruction", "whitelist", "staff_card"})


def fail_closed_problems(events: list[dict]) -> list[str]:
    """S5: no automatic authorisation committed while a fault is open on its lane."""
    problems = []
    open_faults: dict[str, set[str]] = {}
    for e in events:  # in (lane, seq) order
        faults = open_faults.setdefault(e["lane_id"], set())
        if e["type"] == "fault.opened":
            faults.add(e["device"])
        elif e["type"] == "fault.closed":
            faults.discard(e["device"])
        elif e["type"] == "lane.recovered":
            faults.clear()  # a restarted daemon starts without faults and finds them anew
        elif e["type"] == "authorisation.committed" and e["authorisation"]["kind"] in AUTOMATIC and faults:
            problems.append(f"{e['lane_id']} seq {e['seq']}: {e['authorisation']} committed "
                            f"while {sorted(faults)} faulty")
    return problems


def outcomes(events: list[dict], lane: str | None = None) -> Counter:
    return Counter(e["outcome"] for e in events
                   if e["type"] == "passage.closed" and (lane is None or e["lane_id"] == lane))


# ------------------------------------------------------------------------ the daemon


class Daemon:
    """``python -m gatectl run --config F`` in its own process group, killed for real."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.api = f"http://{load_config(config_path).local_api.listen}"
        self.starts = 0
        self.kills = 0
        self.kill_times: list[float] = []

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.alive
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gatectl", "run", "--config", str(self.config_path)],
                stdout=log, stderr=log, cwd=ROOT,
            )
        self.starts += 1

    def kill9(self) -> None:
        """SIGKILL now (callable from an event-loop callback: it does not wait)."""
        if self.alive:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.kills += 1
            self.kill_times.append(time.time())

    async def reap(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        await wait_until(lambda: self.proc.poll() is not None, timeout, what="daemon exit")
        return self.proc.returncode

    async def health(self) -> int | None:
        try:
            timeout = aiohttp.ClientTimeout(total=2)
            async with aiohttp.ClientSession(timeout=timeout) as s, s.get(self.api + "/api/v1/health") as r:
                return r.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def lanes(self) -> list[dict]:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(self.api + "/api/v1/lanes") as r:
            return (await r.json())["lanes"]

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while await self.health() != 200:
            if not self.alive:
                raise AssertionError("daemon exited:\n" + self.tail())
            if loop.time() > end:
                raise AssertionError(f"daemon not healthy within {timeout:g} s:\n" + self.tail())
            await asyncio.sleep(0.05)

    async def terminate(self, timeout: float = 30.0) -> int:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
        return await self.reap(timeout)

    def cleanup(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def log_events(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out


def write_config(sim: SimulatedSite, workdir: Path, *, authority_timeout_ms: int = 3000,
                 mqtt: str | None = None) -> Path:
    path = sim.write_config(workdir / "site.yaml", journal_path=str(workdir / "gatectl.db"),
                            api_listen=f"127.0.0.1:{free_tcp_port()}", mqtt=mqtt)
    if authority_timeout_ms != 3000:
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace("timeout_ms: 3000", f"timeout_ms: {authority_timeout_ms}"), encoding="utf-8")
    return path


# ------------------------------------------------------------------------ traffic


class Traffic:
    """Vehicles through every lane, one after another per lane, until ``stop()`` or each
    lane has sent ``per_lane`` vehicles. A driver whose boom stays down shows the card again
    every ``rewave_s`` (a reader that missed it, a daemon that restarted). A reader that is
    unplugged just misses the card. ``results`` holds (lane, card, outcome, start, end)."""

    def __init__(self, sim: SimulatedSite, rng: random.Random, *, per_lane: int | None = None,
                 wait_for_lift_s: float = 6.0, release_share: float = 0.8, rewave_s: float | None = 1.5,
                 gap_s: tuple[float, float] = (0.0, 0.4), lanes: list[SimLane] | None = None) -> None:
        self.sim = sim
        self.rng = rng
        self.per_lane = per_lane
        self.wait_for_lift_s = wait_for_lift_s
        self.release_share = release_share
        self.rewave_s = rewave_s
        self.gap_s = gap_s
        self.lanes = lanes if lanes is not None else list(sim.lanes)
        self.results: list[tuple[str, str, str, float, float]] = []
        self.missed_reads = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        for lane in self.lanes:
            self._tolerant_reader(lane)

    def _tolerant_reader(self, lane: SimLane) -> None:
        reader = lane.reader
        if getattr(reader, "_chaos_tolerant", False):
            return
        original = reader.present

        def present(card: str, repeat: int = 1) -> None:
            if reader.running:
                original(card, repeat)
            else:
                self.missed_reads += 1

        reader.present = present  # type: ignore[method-assign]
        reader._chaos_tolerant = True  # type: ignore[attr-defined]

    def start(self) -> None:
        for lane in self.lanes:
            self._tasks.append(asyncio.create_task(self._lane(lane), name=f"traffic {lane.id}"))
            if self.rewave_s is not None:
                self._tasks.append(asyncio.create_task(self._rewave(lane), name=f"rewave {lane.id}"))

    @property
    def done(self) -> bool:
        return self.per_lane is not None and all(
            sum(1 for r in self.results if r[0] == lane.id) >= self.per_lane for lane in self.lanes)

    async def _lane(self, lane: SimLane) -> None:
        n = 0
        while not self._stop.is_set() and (self.per_lane is None or n < self.per_lane):
            busy = [other.current.card for other in self.lanes if other is not lane and other.current is not None]
            vehicle = pick_vehicle(self.rng, self.release_share, busy)
            start = time.time()
            try:
                outcome = await lane.drive(vehicle, wait_for_lift_s=self.wait_for_lift_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a device pulled mid-trip: the lane is cleared
                outcome = f"error: {exc!r}"
                lane.clear()
            self.results.append((lane.id, vehicle.card or "", outcome, start, time.time()))
            n += 1
            await asyncio.sleep(self.rng.uniform(*self.gap_s))

    async def _rewave(self, lane: SimLane) -> None:
        last = 0.0
        while True:
            await asyncio.sleep(0.1)
            v = lane.current
            if (v is not None and v.card and lane.loop("arrival") and lane.barrier.position == "down"
                    and time.monotonic() - last > self.rewave_s):
                if last:
                    lane.reader.present(v.card)
                last = time.monotonic()
            elif v is None:
                last = 0.0

    async def stop(self) -> None:
        self._stop.set()
        for t in self._tasks:
            if "rewave" in t.get_name():
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cancel(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for lane in self.lanes:
            lane.clear()

    def count(self, outcome: str | None = None, lane: str | None = None) -> int:
        return sum(1 for r in self.results
                   if (outcome is None or r[2] == outcome) and (lane is None or r[0] == lane))


@dataclass
class Collector:
    """An MQTT subscriber to ``prefix/#`` that keeps every message and reconnects."""

    port: int
    prefix: str
    username: str
    password: str
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task | None = None

    async def start(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.subscribed.wait(), 15)
        return self

    async def _run(self) -> None:
        import aiomqtt

        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, username=self.username,
                                          password=self.password) as client:
                    await client.subscribe(f"{self.prefix}/#", qos=1)
                    self.subscribed.set()
                    async for m in client.messages:
                        payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                        self.messages.append((m.topic.value, payload))
            except aiomqtt.MqttError:
                pass
            self.subscribed.clear()
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    def seqs(self, lane: str) -> list[int]:
        topic = f"{self.prefix}/lanes/{lane}/events"
        return [json.loads(p)["seq"] for t, p in self.messages if t == topic]

    def events(self, lane: str) -> list[dict]:
        topic = f"{self.prefix}/lanes/{lane}/events"
        return [json.loads(p) for t, p in self.messages if t == topic]


def first_copies(seqs: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


# ------------------------------------------------------------------------ in-process daemon


class InProcess:
    """The daemon as ``gatectl run`` assembles it (``gatectl.daemon.assemble``: lanes,
    records, metrics...), running in this event loop, for campaigns that must reach into
    it (the journal's connection) or wire what ``gatectl run`` does not wire yet (MQTT)."""

    def __init__(self, config_path: Path, wire: Callable[[Any], None] | None = None) -> None:
        from gatectl.config import load_config as load
        from gatectl.daemon import assemble

        self.config = load(config_path)
        self.site, _ = assemble(self.config)
        if wire is not None:
            wire(self.site)
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def start(self, timeout: float = 30.0) -> None:
        self.task = asyncio.create_task(self.site.run(self.stop_event))
        await wait_until(lambda: self.site.running or self.task.done(), timeout, what="site running")
        if self.task.done():
            raise AssertionError(f"site stopped at start: {self.task.exception()!r}")

    @property
    def crashed(self) -> BaseException | None:
        if self.task is not None and self.task.done() and not self.task.cancelled():
            return self.task.exception()
        return None

    def lane_faults(self, lane: str) -> dict[str, str]:
        return dict(self.site.lanes[lane].core.faults)

    def events(self, lane: str | None = None) -> list[dict]:
        return self.site.journal.events(lane)

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            await asyncio.wait_for(asyncio.gather(self.task, return_exceptions=True), 30)
