"""An in-memory journal of one lane, for tests that drive the lane core by hand.

It keeps what the real journal keeps, in the same shape: every emitted event as its JSON
body (envelope included, ``seq`` counting up), the authorisations consumed (a second
commit of one is a replay), and it rebuilds a restarted lane from those bodies with the
same fold the journal uses (``gatectl.lane.passage.project``). A list of bodies, so a test
can cut its tail to play a crash that lost the last writes.
"""

from __future__ import annotations

from gatectl import events as ev
from gatectl.lane.commands import CommitAuthorisation, Emit
from gatectl.lane.inputs import AuthorisationCommitted, AuthorisationRefused, Input
from gatectl.lane.passage import project


class LaneLog:
    def __init__(self, lane_id: str, site_id: str = "test-site") -> None:
        self.lane_id = lane_id
        self.site_id = site_id
        self.bodies: list[dict] = []
        self.consumed: set[tuple[str, str]] = set()
        self.broken = False

    def _append(self, event: ev.Event, ts: str) -> dict:
        seq = self.bodies[-1]["seq"] + 1 if self.bodies else 1
        body = ev.encode(ev.Stamped(f"{self.lane_id}-ev-{seq}", seq, self.site_id, self.lane_id, ts, event))
        self.bodies.append(body)
        return body

    def emit(self, cmd: Emit) -> dict:
        return self._append(cmd.event, cmd.ts.isoformat())

    def commit(self, cmd: CommitAuthorisation) -> Input:
        """The journal's answer to a commit, recorded as the journal would (S1, S6)."""
        key = (cmd.kind, cmd.auth_id)
        if self.broken:
            return AuthorisationRefused(cmd.kind, cmd.auth_id, "journal_error", "disk full")
        if key in self.consumed:
            return AuthorisationRefused(cmd.kind, cmd.auth_id, "replay", "consumed before")
        self.consumed.add(key)
        self._append(ev.AuthorisationCommitted(passage_id=cmd.passage_id, authorisation=cmd.authorisation,
                                               drill=True if cmd.drill else None), cmd.ts.isoformat())
        return AuthorisationCommitted(cmd.kind, cmd.auth_id)

    def events(self, type_: str | None = None) -> list[dict]:
        return [b for b in self.bodies if type_ is None or b["type"] == type_]

    def recovery(self) -> dict:
        """``LaneCore`` keyword arguments of a restart from this journal (S7)."""
        recovered, lane = project(self.lane_id, (ev.decode(b) for b in self.bodies))
        return {"recovered": recovered, "lane": lane}
