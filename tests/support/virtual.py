"""An asyncio event loop in virtual time, and in-memory ports for a lane runtime.

``VirtualTimeLoop`` is a real selector loop whose clock only moves when the loop has
nothing to do but wait: then it jumps to the next timer at once. Everything scheduled in
it (the runtime, its ports below, ``asyncio.sleep``, ``asyncio.timeout``) runs in the order
and at the times it would in real time, so a test can play minutes of a lane in
milliseconds and assert exact times, never wall-clock durations.

The ports are real implementations kept in memory, not mocks: the journal keeps bodies and
consumed authorisations and answers after a commit delay, the coils keep every write with
its time, the authority answers from a script after a delay.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gatectl import events as ev
from gatectl.journal import AuthorisationReplay, JournalError
from gatectl.lane.commands import RequestRelease
from gatectl.lane.inputs import ReleaseDecided, ReleaseFailed
from gatectl.lane.passage import project
from gatectl.lane.runtime import CoilError


class _Clock:
    now = 0.0


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None):
        ready = super().select(0)  # the loop's own wake-up pipe
        if ready:
            return ready
        if timeout is None:
            raise RuntimeError("virtual time: the loop would wait forever (nothing scheduled)")
        self.clock.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.clock = _Clock()
        super().__init__(selector=_VirtualSelector(self.clock))

    def time(self) -> float:
        return self.clock.now


def run_virtual(main: Callable[[], Any], t0: datetime) -> Any:
    """Run ``main()`` (a coroutine function) in virtual time; ``clock()`` in it is the site
    clock: ``t0`` plus the virtual seconds gone."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        # A failed scenario leaves its runtimes running: stop them before the loop closes.
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()


def site_clock(t0: datetime) -> Callable[[], datetime]:
    def now() -> datetime:
        return t0 + timedelta(seconds=asyncio.get_running_loop().time())

    return now


@dataclass
class MemoryJournal:
    """The journal port: commits after ``commit_s`` of virtual time, in order."""

    lane_id: str
    commit_s: float = 0.004
    broken: bool = False
    bodies: list[dict] = field(default_factory=list)
    consumed: set[tuple[str, str]] = field(default_factory=set)
    #: (virtual time committed, type) of every event, for ordering checks.
    commits: list[tuple[float, str]] = field(default_factory=list)
    _busy_until: float = 0.0
    #: Lingering appends not yet given a commit: (lane, entries, future).
    _held: list = field(default_factory=list)
    #: How many commits carried lingering appends along with another append.
    joined: int = 0

    def append(self, lane_id: str, entries, *, authorisation=None, outbox=(), linger=0.0) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        loop = asyncio.get_running_loop()
        entries = list(entries)
        if linger > 0 and authorisation is None:
            # Held until the next append (committed with it) or ``linger`` at most.
            self._held.append((lane_id, entries, None, future))
            loop.call_at(loop.time() + linger, self._release_held)
            return future
        group, self._held = self._held, []
        self.joined += bool(group)
        self._schedule(group + [(lane_id, entries, authorisation, future)])
        return future

    def _release_held(self) -> None:
        group, self._held = self._held, []
        if group:
            self._schedule(group)

    def _schedule(self, group: list) -> None:
        # One commit after another, each taking commit_s (one fsync per group).
        loop = asyncio.get_running_loop()
        at = max(loop.time(), self._busy_until) + self.commit_s
        self._busy_until = at
        loop.call_at(at, lambda: [self._commit(*item) for item in group])

    def _commit(self, lane_id: str, entries, authorisation, future) -> None:
        now = asyncio.get_running_loop().time()
        if self.broken:
            future.set_exception(JournalError("journal write failed: disk full"))
            return
        written = [self._write(lane_id, e.event, e.ts.isoformat(), now) for e in entries]
        if authorisation is not None:
            key = (authorisation.kind, authorisation.auth_id)
            if key in self.consumed:
                future.set_exception(AuthorisationReplay(f"{key} was already used"))
                return
            self.consumed.add(key)
            written.append(self._write(lane_id, ev.AuthorisationCommitted(
                passage_id=authorisation.passage_id, authorisation=authorisation.authorisation,
                drill=True if authorisation.drill else None), authorisation.ts.isoformat(), now))
        future.set_result(written)

    def _write(self, lane_id: str, event: ev.Event, ts: str, now: float) -> ev.Stamped:
        seq = len(self.bodies) + 1
        st = ev.Stamped(f"ev-{seq}", seq, "virtual-site", lane_id, ts, event)
        self.bodies.append(ev.encode(st))
        self.commits.append((now, st.type))
        return st

    def types(self) -> list[str]:
        return [b["type"] for b in self.bodies]

    def events(self, type_: str) -> list[dict]:
        return [b for b in self.bodies if b["type"] == type_]

    def recovery(self) -> dict:
        recovered, lane = project(self.lane_id, (ev.decode(b) for b in self.bodies))
        return {"recovered": recovered, "lane": lane}


@dataclass
class MemoryCoils:
    """The coils port: a pulse is on (after ``write_s``), ``pulse_s``, off."""

    write_s: float = 0.002
    pulse_s: float = 0.3
    failing: bool = False
    writes: list[tuple[float, str, bool]] = field(default_factory=list)
    on_write: Callable[[str, bool], None] | None = None

    async def pulse(self, coil: str, on_energised: Callable[[], None] | None = None) -> None:
        await asyncio.sleep(self.write_s)
        if self.failing:
            raise CoilError("io1", "no answer")
        self._write(coil, True)
        if on_energised is not None:
            on_energised()
        await asyncio.sleep(self.pulse_s)
        self._write(coil, False)

    def _write(self, coil: str, on: bool) -> None:
        self.writes.append((asyncio.get_running_loop().time(), coil, on))
        if self.on_write is not None:
            self.on_write(coil, on)

    def pulses(self, coil: str) -> list[float]:
        """When each pulse of ``coil`` switched on."""
        return [t for t, c, on in self.writes if c == coil and on]


@dataclass
class ScriptedAuthority:
    """The authority port: answers each request after ``answer_s`` from ``decisions``
    (card -> decision); ``None`` never answers, "fail" answers with a connection error."""

    decisions: dict[str, str | None]
    answer_s: float = 0.05
    asked: list[RequestRelease] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)
    _instructions: int = 0

    async def ask(self, cmd: RequestRelease) -> ReleaseDecided | ReleaseFailed:
        self.asked.append(cmd)
        decision = self.decisions.get(cmd.card, "release")
        if decision is None:
            await asyncio.Event().wait()  # never answers; the core's deadline holds the vehicle
        await asyncio.sleep(self.answer_s)
        self.answered_at.append(asyncio.get_running_loop().time())
        if decision == "fail":
            return ReleaseFailed(cmd.request_id, "connection", "refused")
        self._instructions += 1
        instruction = f"CMD-{self._instructions}" if decision == "release" else None
        return ReleaseDecided(cmd.request_id, decision, instruction, "HF-1", None, None)
