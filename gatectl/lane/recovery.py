"""Rebuild a lane's open passage from its journaled events (S7).

Pure: the journal hands over the events of the lane's last ``passage.opened`` onwards,
and the hypothesis tests hand over the events they collected, so both exercise the same
fold.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from gatectl.lane.events import Recovered


def fold(events: Iterable[Mapping[str, Any]]) -> Recovered | None:
    """The open passage described by ``events`` (oldest first), or None if it closed."""
    rec: dict[str, Any] | None = None
    for ev in events:
        t = ev["type"]
        if t == "passage.opened":
            rec = {"passage_id": ev["passage_id"], "opened_at": _ts(ev["ts"])}
            continue
        if rec is None or ev.get("passage_id") != rec["passage_id"]:
            continue
        if t == "card.read":
            rec["card"] = ev["card"]
        elif t == "weight.stable":
            rec["weight_kg"] = ev["gross_weight_kg"]
        elif t == "release.requested":
            rec["request_id"] = ev["request_id"]
            rec.pop("decision", None)
            rec.pop("hint", None)
            rec.pop("hold_reason", None)
            rec.pop("instruction_id", None)
        elif t == "release.decided":
            rec["decision"] = ev["decision"]
            rec["hint"] = ev.get("hint")
            rec["instruction_id"] = ev.get("instruction_id")
        elif t == "authorisation.committed":
            auth = ev["authorisation"]
            rec["authorisation"] = (auth["kind"], auth["id"])
        elif t == "barrier.lifted":
            rec["lifted"] = True
            rec["last_seen_at"] = _ts(ev["ts"])
        elif t == "loop.changed":
            rec["last_seen_at"] = _ts(ev["ts"])
            if rec.get("lifted") and ev.get("occupied") and ev.get("loop") != "arrival_loop":
                rec["entered"] = True
        elif t == "passage.held":
            rec["hold_reason"] = ev["reason"]
        elif t == "passage.closed":
            rec = None
    return None if rec is None else Recovered(**rec)


def _ts(value: Any) -> str:
    return value if isinstance(value, str) else value.isoformat()


def last_lift(events: Iterable[Mapping[str, Any]]) -> tuple[str, str] | None:
    """The authorisation of the last lift in ``events``: what a barrier found up is up for."""
    found = None
    for ev in events:
        if ev["type"] == "barrier.lifted" and ev.get("authorisation"):
            found = (ev["authorisation"]["kind"], ev["authorisation"]["id"])
    return found


def spot_checks(events: Iterable[Mapping[str, Any]]) -> tuple[int, float]:
    """The spot-check orders in force after ``events``: (hold next N, random share)."""
    state = (0, 0.0)
    for ev in events:
        if ev["type"] in ("spot_check.ordered", "spot_check.applied"):
            state = (int(ev["remaining"]), float(ev["fraction"]))
    return state
