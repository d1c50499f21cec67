"""The campaigns' own S1 checks on a written journal and coil log (no daemon): a lift whose
``barrier.lifted`` a kill took is known by its authorisation, and only that way; a
repeated lift is still caught; a coil the dead daemon switched on is told from the writes,
even when the module acted on the write after the kill."""

from __future__ import annotations

from datetime import datetime, timezone

from .harness import CoilRecorder, CoilWrite, lift_problems

T0 = 1_800_000_000.0
LANE = "B1-IN"
A1 = {"kind": "release_instruction", "id": "CMD-1"}
A2 = {"kind": "release_instruction", "id": "CMD-2"}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(T0 + t, timezone.utc).isoformat()


def _journal(*rows: tuple[float, str, dict]) -> list[dict]:
    return [{"lane_id": LANE, "seq": n, "ts": _iso(t), "type": type_, **body}
            for n, (t, type_, body) in enumerate(rows, start=1)]


def _recorder(*writes: tuple[float, str, bool, str]) -> CoilRecorder:
    rec = CoilRecorder.__new__(CoilRecorder)  # the log of a run, without a simulator
    rec.writes, on = [], {}
    for t, coil, value, position in writes:
        rec.writes.append(CoilWrite(T0 + t, LANE, coil, value, value and not on.get(coil, False), position))
        on[coil] = value
    return rec


#: First lorry lifted under A1; the second's A2 is committed at 10.0, the coil written at
#: 10.02, the daemon killed at 10.03 before barrier.lifted of A2 was committed, and the
#: restarted daemon recovers at 14.0 holding A2 spent.
EVENTS = _journal(
    (1.0, "authorisation.committed", {"authorisation": A1}),
    (1.001, "barrier.lifted", {"authorisation": A1, "reason": "lift"}),
    (10.0, "authorisation.committed", {"authorisation": A2}),
    (14.0, "lane.recovered", {"authorisation": A2}),
)
AUTHS = [{"kind": a["kind"], "auth_id": a["id"], "committed_at": _iso(t)} for a, t in ((A1, 1.0), (A2, 10.0))]
KILL = [T0 + 10.03]
LIFTS = [(0.0, "open", False, "down"), (1.01, "open", True, "down"), (1.31, "open", False, "up"),
         (10.02, "open", True, "down")]


def test_s1_a_lift_whose_record_a_kill_took_is_its_authorisations() -> None:
    rec = _recorder(*LIFTS, (13.9, "open", False, "up"))
    stats: dict = {}
    assert lift_problems(rec, AUTHS, EVENTS, stats, kills=KILL) == []
    assert stats["lift_edges_whose_record_a_kill_took"] == 1
    # Without the kill nothing explains the lost record: the edge is the first lift's twice.
    assert "gave two open edges" in lift_problems(rec, AUTHS, EVENTS, kills=[])[0]


def test_s1_s7_a_lift_repeated_without_a_record_is_still_caught() -> None:
    twice = _recorder(*LIFTS, (10.05, "open", False, "down"), (10.06, "open", True, "down"),
                      (13.9, "open", False, "up"))
    assert "gave two open edges" in lift_problems(twice, AUTHS, EVENTS, kills=KILL)[0]
    after_recovery = _recorder(*LIFTS, (13.9, "open", False, "up"), (15.0, "open", True, "down"),
                               (15.3, "open", False, "up"))
    assert "after the recovery" in lift_problems(after_recovery, AUTHS, EVENTS, kills=KILL)[0]


def test_s1_a_coil_the_dead_daemon_switched_on_after_its_kill_is_cut_by_it() -> None:
    """A slow module acted on the write 40 ms after the kill; the restarted daemon's first
    write switched it off. A switch-on after that first write is the new daemon's own."""
    rec = _recorder((0.0, "open", False, "down"), (10.07, "open", True, "down"), (13.9, "open", False, "up"),
                    (20.0, "open", True, "down"), (20.3, "open", False, "up"))
    cut = rec.cut_by_kills(KILL)
    assert [(round(on.t - T0, 2), nxt is not None and nxt.value) for on, nxt in cut] == [(10.07, False)]
