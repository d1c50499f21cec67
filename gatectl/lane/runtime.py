"""The lane runtime: the only thing that feeds a lane core and carries out its commands.

One runtime per lane, all of them on the control loop (``gatectl.service``), which runs
nothing else: no API, no MQTT, no ledger, no disk. The runtime talks to the world through
small ports, so tests plug in-memory ones in and run it in virtual time:

- ``journal``: ``append(lane, entries, authorisation=, outbox=)`` returning a
  ``concurrent.futures.Future`` (``gatectl.journal.Journal``);
- ``coils``: ``await pulse("open" | "close")``, raising ``CoilError`` when the IO module
  did not take it;
- ``authority``: ``await ask(RequestRelease) -> ReleaseDecided | ReleaseFailed``;
- ``cards``: the site's card registry (S8 across lanes);
- ``now``: the site clock.

The path of one input, with no step going back up:

1. ``feed``/``submit`` put it on the lane's queue (polls as single edges, ``poll_edges``);
2. ``run`` takes the next one (or a ``Tick`` at the core's deadline) and stamps it ``now``;
3. ``core.handle`` decides and returns commands;
4. ``_carry_out`` hands the step's events (and pass confirmations) to the journal without
   waiting, except for an authorisation: it awaits that commit (S6) and hands its answer to
   the core next, before any other input; the core's commands for it are carried out the
   same way (a loop, not a recursion);
5. pulses and release requests start as tasks; their outcome (a failed pulse, the
   authority's answer) comes back as an input through step 1. An open pulse that is not
   the lift of a just-committed authorisation (a safety reverse) first waits, bounded, for
   the step's events to be committed: its ``barrier.lifted`` is the only record of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

import structlog

from drivers.stopping import wait_through
from gatectl import events as ev
from gatectl.journal import AuthorisationReplay, JournalError, OutboxItem
from gatectl.lane.commands import (
    CommitAuthorisation,
    Command,
    ConfirmPassage,
    Display,
    Emit,
    Pulse,
    RequestRelease,
)
from gatectl.lane.core import LaneCore
from gatectl.lane.inputs import (
    AuthorisationCommitted,
    AuthorisationRefused,
    CardRead,
    CoilWriteFailed,
    Input,
    InputsSnapshot,
    ReleaseDecided,
    ReleaseFailed,
    Tick,
    poll_edges,
)

log = structlog.get_logger("gatectl.runtime")

#: Authorisations that are the lane's own list decisions (their latency is "local").
LIST_DECISIONS = frozenset({"whitelist", "staff_card"})


#: How long a stopping lane lets a pulse under way finish before it cancels it (which
#: switches the coil off), and then waits at most for the cancelled tasks.
PULSE_FINISH_S = 2.0
#: How long an open pulse that must be recorded first waits for that commit at most.
RECORD_FIRST_WAIT_S = 0.1
#: How long a release request's events may wait in the journal for the answer, so that
#: a quick release commits them with its authorisation in one fsync instead of waiting
#: for theirs first. Also how late they can reach the screen and MQTT at most.
REQUEST_LINGER_S = 0.05


def _record_first(cmd: Pulse) -> bool:
    """S1 after a crash: every energising of the open coil must be attributable from the
    journal. A lift's is: its authorisation was committed before the coil (S6), and
    recovery holds it spent. Any other open pulse (a safety reverse, S2) has nothing
    durable before it but its own ``barrier.lifted``, so that record is committed before
    the coil; a kill between the coil write and a later commit would leave an edge the
    journal cannot explain."""
    return cmd.coil == "open" and cmd.reason != "lift"


def _retrieved(f: asyncio.Future) -> None:
    if not f.cancelled():
        f.exception()  # a failed commit is the step's to report, not this wait's


class CoilError(Exception):
    """The IO module did not take a coil write; ``device`` names the module."""

    def __init__(self, device: str, detail: str = "") -> None:
        super().__init__(detail or device)
        self.device = device


class JournalPort(Protocol):
    def append(self, lane_id: str, entries: Any, *, authorisation: Any = None,
               outbox: Any = (), linger: float = 0.0) -> concurrent.futures.Future: ...


class CoilsPort(Protocol):
    async def pulse(self, coil: str, on_energised: Callable[[], None] | None = None) -> None: ...


class AuthorityPort(Protocol):
    async def ask(self, request: RequestRelease) -> ReleaseDecided | ReleaseFailed: ...


class CardRegistry:
    """S8 across the lanes of one process: which lane's open passage holds a card.

    Fed from the events the lanes journal (``card.read`` puts a card on its lane,
    ``passage.closed`` takes it off), as they are handed to the journal, so a card taken
    on one lane is refused on the next at once. No lane reads another lane's core.
    """

    def __init__(self) -> None:
        self._lane_of: dict[str, str] = {}
        self._cards_of: dict[str, set[str]] = {}

    def observe(self, lane_id: str, event: ev.Event) -> None:
        if isinstance(event, ev.CardRead):
            self._lane_of[event.card] = lane_id
            self._cards_of.setdefault(lane_id, set()).add(event.card)
        elif isinstance(event, (ev.PassageClosed, ev.LaneRecovered)):
            for card in self._cards_of.pop(lane_id, ()):
                if self._lane_of.get(card) == lane_id:
                    del self._lane_of[card]
            if isinstance(event, ev.LaneRecovered) and event.card is not None:
                self.observe(lane_id, ev.CardRead(card=event.card))

    def open_elsewhere(self, card: str, lane_id: str) -> str | None:
        other = self._lane_of.get(card)
        return other if other is not None and other != lane_id else None


class LaneRuntime:
    """Feeds one ``LaneCore`` and carries out its commands. See the module docstring."""

    def __init__(
        self,
        core: LaneCore,
        *,
        journal: JournalPort,
        coils: CoilsPort,
        authority: AuthorityPort | None,
        cards: CardRegistry,
        now: Callable[[], datetime],
        confirm_targets: Mapping[str | None, str] | None = None,
        on_step: Callable[[LaneRuntime], None] | None = None,
        on_decision: Callable[[str, float], None] | None = None,
    ) -> None:
        self.core = core
        self.lane_id = core.rules.lane_id
        self.journal = journal
        self.coils = coils
        self.authority = authority
        self.cards = cards
        self.now = now
        #: Where pass confirmations go: the authority of the kind that released (None: the lane's).
        self.confirm_targets = dict(confirm_targets or {})
        self.on_step = on_step
        self.on_decision = on_decision
        self.queue: asyncio.Queue[tuple[Input, asyncio.Future | None]] = asyncio.Queue()
        self._pulse_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        # When each release answer came in (the loop's clock), for the decision latency: the
        # authority's answer in -> the open coil on.
        self._answered: dict[str, float] = {}
        self._recorded: concurrent.futures.Future | None = None
        #: Display texts of a step that ended in an authorisation, shown after its answer.
        self._held_texts: list[str] = []
        self.steps = 0

    # ------------------------------------------------------------------ inputs

    def feed(self, event: Input) -> None:
        """An input from a driver or a task of this lane (the control loop's thread)."""
        self.queue.put_nowait((event, None))

    def feed_poll(self, values: Mapping[str, bool]) -> None:
        """One poll's inputs: the first reading starts the lane, later ones arrive as
        single edges in the order they must have happened."""
        if not self.core.running and not self._started:
            self._started = True
            self.queue.put_nowait((InputsSnapshot(dict(values)), None))
            return
        for edge in poll_edges(values):
            self.queue.put_nowait((edge, None))

    _started = False

    async def submit(self, event: Input) -> None:
        """Hand the core an order and wait until it was handled (same loop)."""
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((event, done))
        await done

    def fail_pending(self, exc: BaseException) -> None:
        """This runtime is done for (a bug): orders still queued hear so."""
        while not self.queue.empty():
            _, done = self.queue.get_nowait()
            if done is not None and not done.done():
                done.set_exception(exc)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        try:
            while True:
                event, done = await self._next()
                try:
                    recorded = await self.step(event)
                except Exception as exc:
                    if done is not None and not done.done():
                        done.set_exception(exc)
                    raise
                if done is not None:
                    self._answer_when_recorded(done, recorded)
        finally:
            await self._stop_tasks()

    async def _stop_tasks(self) -> None:
        """Before the lane lets go: every pulse under way finishes, and release requests are
        dropped. None is left pending for the loop to destroy: a pulse dropped in its wait
        would leave its coil on (S1, S3) with nothing left to switch it off.

        A pulse gets ``PULSE_FINISH_S`` to finish as the core ordered (the lift of a spent
        authorisation still lifts); one still running then is cancelled once, which
        switches its coil off, and gets as long again for that. (Cancelled again, it
        could give up its off write.) A cancellation of this wait (a shutdown repeats
        them, as libraries may lose one) does not cut it short: it is raised at the end.
        """
        pulses = {t for t in self._tasks if not t.done() and t.get_name() == "pulse"}
        others = {t for t in self._tasks if not t.done() and t.get_name() != "pulse"}
        for t in others:
            t.cancel()
        # Requests are cancelled again while we wait (``wait_through``: a library may
        # have lost the cancellation); a pulse only once.
        cancelled = await wait_through(pulses, PULSE_FINISH_S, recancel=others)
        for t in pulses:
            t.cancel()
        cancelled = await wait_through(pulses | others, PULSE_FINISH_S, recancel=others) or cancelled
        left = [t for t in pulses | others if not t.done()]
        if left:
            log.error("lane tasks did not stop", lane=self.lane_id, tasks=[t.get_name() for t in left])
        if cancelled:
            raise asyncio.CancelledError

    async def _next(self) -> tuple[Input, asyncio.Future | None]:
        deadline = self.core.next_deadline
        if deadline is None:
            return await self.queue.get()
        wait = (deadline - self.now()).total_seconds()
        if wait <= 0 and self.queue.empty():
            return Tick(), None
        if not self.queue.empty():
            return self.queue.get_nowait()
        try:
            # (asyncio.timeout, not wait_for: no task per wait on the decision's path)
            async with asyncio.timeout(wait):
                return await self.queue.get()
        except TimeoutError:
            return Tick(), None

    @staticmethod
    def _answer_when_recorded(done: asyncio.Future, recorded: concurrent.futures.Future | None) -> None:
        """An order is answered once what it made the lane journal is durable (or failed
        to be: then the order's caller hears the journal's error); the lane goes on."""
        if recorded is None:
            if not done.done():
                done.set_result(None)
            return

        def answer(f: asyncio.Future) -> None:
            if done.done():
                return
            if f.exception() is not None:
                done.set_exception(f.exception())
            else:
                done.set_result(None)

        asyncio.wrap_future(recorded).add_done_callback(answer)

    async def step(self, event: Input) -> concurrent.futures.Future | None:
        """Handle one input and everything the core says to do about it; the future of the
        step's last journal append (None if it journaled nothing)."""
        if isinstance(event, CardRead) and event.open_elsewhere is None:
            event = CardRead(event.card, self.cards.open_elsewhere(event.card, self.lane_id))
        decided: tuple[float, str] | None = None
        if isinstance(event, ReleaseDecided):
            at = self._answered.pop(event.request_id, None)
            if event.decision == "release":
                decided = (at if at is not None else self._clock(), "authority")
        else:
            decided = (self._clock(), "local")  # kept only if a list decision lifts
        commands = self.core.handle(event, self.now())
        if decided is not None and decided[1] == "local" and not any(
                isinstance(c, CommitAuthorisation) and c.kind in LIST_DECISIONS for c in commands):
            decided = None
        lifting: tuple[float, str] | None = None
        self._recorded = None
        while True:
            answer = await self._carry_out(commands, decided, lifting)
            if answer is None:
                break
            # The lift that follows a committed authorisation is timed from the decision.
            lifting = decided if isinstance(answer, AuthorisationCommitted) else None
            commands = self.core.handle(answer, self.now())
        self.steps += 1
        if self.on_step is not None:
            self.on_step(self)
        return self._recorded

    async def _carry_out(self, commands: list[Command], decided: tuple[float, str] | None,
                         lifting: tuple[float, str] | None) -> Input | None:
        """Carry out one step's commands; the journal's answer to an authorisation if the
        step ended with one (for the core, before anything else). ``lifting``: when the
        decision these commands lift for was taken (for the decision latency)."""
        entries: list[Emit] = []
        outbox: list[OutboxItem] = []
        actions: list[Command] = []
        shown: list[str] = []
        answer: Input | None = None
        for cmd in commands:
            if isinstance(cmd, Emit):
                entries.append(cmd)
                self.cards.observe(self.lane_id, cmd.event)
            elif isinstance(cmd, ConfirmPassage):
                target = self.confirm_targets.get(cmd.lane_kind)
                if target is not None:
                    outbox.append(self._confirmation(cmd, target))
            elif isinstance(cmd, CommitAuthorisation):
                answer = await self._commit(cmd, entries, outbox, shown)
                entries, outbox = [], []
            elif isinstance(cmd, Display):
                shown.append(cmd.text)
            else:
                actions.append(cmd)
        pulses = [cmd for cmd in actions if isinstance(cmd, Pulse)]
        for cmd in pulses:
            if not _record_first(cmd):
                timing = lifting if cmd.coil == "open" and cmd.reason == "lift" else None
                self._spawn(self._pulse(cmd, timing), "pulse")
        if entries or outbox:
            # Handed over before the pulse task runs (``barrier.lifted`` before its coil
            # edge); the journal wakes its writer when the loop next turns, after the pulse
            # task has put its frame on the wire. The lift waits for nothing but its
            # authorisation (S6). A release request's events linger for its answer, unless
            # a pulse of this step waits for them.
            linger = REQUEST_LINGER_S if any(isinstance(c, RequestRelease) for c in actions) and not any(
                _record_first(c) for c in pulses) else 0.0
            self._recorded = self.journal.append(self.lane_id, entries, outbox=outbox, linger=linger)
        for cmd in pulses:
            if _record_first(cmd):
                self._spawn(self._pulse(cmd, None, after=self._recorded), "pulse")
        if pulses:
            # The coil write goes on the wire before the rest of the step (the display, the
            # lane's view): one turn of the loop lets the pulse task run to its first real
            # wait, the IO module's answer.
            await asyncio.sleep(0)
        if self._held_texts and answer is None:
            shown[:0], self._held_texts = self._held_texts, []
        self._show(shown)
        for cmd in actions:
            if isinstance(cmd, RequestRelease):
                self._spawn(self._ask(cmd), "ask")
        return answer

    def _show(self, texts: list[str]) -> None:
        for text in texts:
            log.info("display", lane=self.lane_id, text=text)
        texts.clear()

    async def _commit(self, cmd: CommitAuthorisation, entries: list[Emit], outbox: list[OutboxItem],
                      shown: list[str]) -> Input:
        """S6: the authorisation is durable before any coil moves, or nothing moves."""
        future = self.journal.append(self.lane_id, entries, authorisation=cmd, outbox=outbox)
        self._recorded = None  # answered below; what follows is the step's to record
        # Shown after the coil write of the step that follows (``_carry_out``): logging
        # them now would hold the interpreter while the journal writer needs it for the
        # commit, and logging them after the commit would hold up the coil.
        self._held_texts += shown
        shown.clear()
        try:
            await asyncio.wrap_future(future)
        except AuthorisationReplay as exc:
            log.error("authorisation replay", lane=self.lane_id, kind=cmd.kind, id=cmd.auth_id)
            return AuthorisationRefused(cmd.kind, cmd.auth_id, "replay", str(exc))
        except JournalError as exc:
            log.error("authorisation not recorded", lane=self.lane_id, kind=cmd.kind, id=cmd.auth_id, error=str(exc))
            return AuthorisationRefused(cmd.kind, cmd.auth_id, "journal_error", str(exc))
        return AuthorisationCommitted(cmd.kind, cmd.auth_id)

    def _confirmation(self, cmd: ConfirmPassage, target: str) -> OutboxItem:
        return OutboxItem(
            target,
            "pass_confirmation",
            {
                "request_id": cmd.request_id,
                "instruction_id": cmd.instruction_id,
                "lane_id": self.lane_id,
                "result": cmd.result,
                "passed_at": cmd.passed_at.isoformat(),
                "gross_weight_kg": cmd.gross_weight_kg,
            },
            cmd.passed_at,
        )

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("lane task failed", lane=self.lane_id, error=repr(task.exception()))

    @staticmethod
    def _clock() -> float:
        """The loop's monotonic clock (virtual in tests)."""
        return asyncio.get_running_loop().time()

    async def _pulse(self, cmd: Pulse, decided: tuple[float, str] | None,
                     after: concurrent.futures.Future | None = None) -> None:
        on_energised = None
        if decided is not None and self.on_decision is not None:
            on_decision = self.on_decision

            def on_energised() -> None:
                on_decision(decided[1], self._clock() - decided[0])

        # One coil at a time per barrier: open and close must never be energised together.
        async with self._pulse_lock:
            if after is not None:
                # Its record first (``_record_first``): committing since the step handed it
                # over, also while a close pulse held the lock. Bounded, so a failing or
                # stalled journal never keeps a safety reverse from the coil (S2 comes
                # first; the record then follows when the journal can).
                record = asyncio.wrap_future(after)
                record.add_done_callback(_retrieved)
                await asyncio.wait((record,), timeout=RECORD_FIRST_WAIT_S)
            try:
                await self.coils.pulse(cmd.coil, on_energised=on_energised)
            except CoilError as exc:
                log.error("coil pulse failed", lane=self.lane_id, coil=cmd.coil, error=str(exc))
                self.feed(CoilWriteFailed(exc.device, cmd.coil))

    async def _ask(self, cmd: RequestRelease) -> None:
        assert self.authority is not None, "the core asks only lanes with an authority"
        answer = await self.authority.ask(cmd)
        if isinstance(answer, ReleaseDecided):
            self._answered[answer.request_id] = self._clock()
        self.feed(answer)


__all__ = ["LaneRuntime", "CardRegistry", "CoilError", "JournalPort", "CoilsPort", "AuthorityPort"]
