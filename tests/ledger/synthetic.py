"""A synthetic journal of a busy site, written straight into SQLite (the journal's own
schema, the journal's event shapes), for the ledger tests and ``bench/ledger_export.py``.

``build_journal(path, start, days, per_lane_day)`` writes ``days`` site-local days of
traffic on four lanes, ``per_lane_day`` passages per lane per day, beginning on ``start``
(plus one day of traffic before and after, which a ledger of those days must leave out),
with the records around them: alarms (some acknowledged), incidents, approvals,
emergency accounts, handovers, shift checks, daily equipment rows and fault tickets.
Lane B1-IN's first passage of each day opens at exactly 00:00:00 and its last at
23:59:59.999999 site time, so the day bounds are tested at volume too.
"""

from __future__ import annotations

import json
import random
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from gatectl.journal import SCHEMA

TZ = ZoneInfo("Asia/Shanghai")
SITE_ID = "kmzb-jk"
#: (id, name, kind, direction): the lanes of :data:`SITE_YAML`.
LANES = [
    ("B1-IN", "保税货物进区1号", "bonded", "in"),
    ("B1-OUT", "保税货物出区1号", "bonded", "out"),
    ("E1-IN", "跨境电商进区", "ecommerce_9610", "in"),
    ("A1-IN", "行政进区", "administrative", "in"),
]
ADMIN_CARD, ADMIN_PLATE = "0100E2850E", "云A12345"

SITE_YAML = """\
site:
  id: kmzb-jk
  name: 昆明综合保税区经开片区
  timezone: Asia/Shanghai
journal:
  path: {journal}
authorities:
  jg2:
    protocol: http-json
    url: http://127.0.0.1:9/
io_modules:
  io1:
    protocol: modbus-tcp
    host: 127.0.0.1
    port: 9
administrative_vehicles:
  - {{card: "0100E2850E", plate: 云A12345, curb_weight_kg: 1800}}
lanes:
{lanes}{ledger}"""

_LANE_YAML = """\
  - id: {id}
    name: {name}
    kind: {kind}
    direction: {direction}
    channel_no: "K00{n}"
{authority}    card_reader:
      port: /dev/null-card{n}
      format: stx-hex-xor
    weighbridge:
      port: /dev/null-scale{n}
      format: xk3190-tf0
    points:
      arrival_loop: io1:di:{d0}
      safety_loop: io1:di:{d1}
      exit_loop: io1:di:{d2}
      barrier_up: io1:di:{d3}
      barrier_down: io1:di:{d4}
      barrier_open: io1:coil:{c0}
      barrier_close: io1:coil:{c1}
"""


def site_yaml(journal: str | Path, ledger: str = "") -> str:
    """A valid config for the synthetic site (nothing in it is ever opened)."""
    lanes = "".join(
        _LANE_YAML.format(
            id=lane_id, name=name, kind=kind, direction=direction, n=n,
            authority="    authority: jg2\n" if kind != "administrative" else "",
            d0=8 * n, d1=8 * n + 1, d2=8 * n + 2, d3=8 * n + 3, d4=8 * n + 4, c0=2 * n, c1=2 * n + 1,
        )
        for n, (lane_id, name, kind, direction) in enumerate(LANES)
    )
    return SITE_YAML.format(journal=journal, lanes=lanes, ledger=ledger)


@dataclass
class Built:
    """What was written inside the requested days (the extra days before and after excluded)."""

    passages: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    events: int = 0


class _Writer:
    def __init__(self, db: sqlite3.Connection, seed: int) -> None:
        self.db = db
        self.seq: dict[str, int] = {}
        self.n = 0
        self.seed = seed
        self.events: list[tuple] = []
        self.passages: list[tuple] = []
        self.approvals: list[tuple] = []

    def id(self) -> str:
        self.n += 1
        return str(uuid.UUID(int=(self.seed << 96) | self.n))

    def ev(self, lane: str, type_: str, t: datetime, **data) -> dict:
        seq = self.seq.get(lane, 0) + 1
        self.seq[lane] = seq
        body = {"event_id": self.id(), "seq": seq, "site_id": SITE_ID, "lane_id": lane, "type": type_,
                "ts": t.isoformat(), **data}
        self.events.append((lane, seq, body["event_id"], type_, body["ts"], json.dumps(body, ensure_ascii=False)))
        return body

    def flush(self) -> None:
        db = self.db
        db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", self.events)
        db.executemany("INSERT INTO passages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self.passages)
        db.executemany("INSERT INTO approvals VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self.approvals)
        self.events, self.passages, self.approvals = [], [], []


def _passage(w: _Writer, rng: random.Random, lane: str, kind: str, i: int, t0: datetime) -> str:
    """One passage's events and its passages row; returns its outcome."""
    pid = w.id()
    auth = decision = instruction = form = hint = reason = request = None
    card = f"{rng.getrandbits(40):010X}" if kind != "administrative" else ADMIN_CARD
    kg = float(rng.randrange(9000, 49000, 10))
    roll = i % 100
    if roll < 5:
        outcome = "held"
    elif roll < 7:
        outcome = "backed_out"
    elif roll == 7:
        outcome = "forced"
    elif roll == 8:
        outcome = "emergency"
    elif roll == 9:
        outcome = "manual"
    else:
        outcome = "passed"
    opened_seq = w.seq.get(lane, 0) + 1
    t = t0
    step = timedelta(seconds=3)
    if outcome == "emergency":
        w.ev(lane, "passage.opened", t, passage_id=pid, card=None, emergency=True)
        card = kg = None
        auth = {"kind": "emergency", "id": w.id()}
        w.ev(lane, "alarm.raised", t, passage_id=pid, alarm="emergency_release", authorisation=auth,
             account_pending=True)
    elif outcome == "manual":
        approval_id = f"AP-{t0:%Y%m%d}-{lane}-{i:04d}"
        card = kg = None
        doc = {"approval_id": approval_id, "lane_id": lane, "trigger": "panel", "reason": "equipment_fault",
               "detail": "地磅通讯中断", "requested_by": {"org": "某某物流有限公司", "name": "张三"},
               "verified_by": {"org": "运维单位", "name": "李四"}, "approved_by": {"org": "昆明海关", "name": "王五"},
               "countersigned_by": None, "plate": "云A7" + f"{i:04d}", "max_lifts": 1}
        w.approvals.append((approval_id, lane, "panel", 1, (t0 - timedelta(minutes=30)).isoformat(),
                            (t0 + timedelta(minutes=30)).isoformat(), json.dumps(doc, ensure_ascii=False),
                            (t0 - timedelta(minutes=20)).isoformat()))
        w.ev(lane, "approval.accepted", t - timedelta(minutes=20), approval_id=approval_id, trigger="panel",
             max_lifts=1, lifts_used=0, valid_from=(t0 - timedelta(minutes=30)).isoformat(),
             valid_until=(t0 + timedelta(minutes=30)).isoformat(), plate=doc["plate"])
        w.ev(lane, "passage.opened", t, passage_id=pid, card=None, approval_id=approval_id)
        w.ev(lane, "approval.used", t, passage_id=pid, approval_id=approval_id, use=1, max_lifts=1, trigger="panel")
        auth = {"kind": "approval", "id": f"{approval_id}#1", "approval_id": approval_id}
    else:
        w.ev(lane, "passage.opened", t, passage_id=pid, card=None)
        t += step
        w.ev(lane, "card.read", t, passage_id=pid, card=card)
        if outcome == "forced":
            w.ev(lane, "alarm.raised", t, passage_id=pid, alarm="forced_passage", loop="safety_loop", state="present")
            w.ev(lane, "incident.opened", t, passage_id=pid, incident_id=w.id(), kind="forced_passage",
                 reason="闯卡")
        elif outcome == "backed_out":
            kg = None
        else:
            t += step
            w.ev(lane, "weight.stable", t, passage_id=pid, gross_weight_kg=kg)
            if kind == "administrative":
                decision = "release" if outcome != "held" else "hold"
                w.ev(lane, "release.decided", t, passage_id=pid, decision=decision, source="local",
                     basis="whitelist" if decision == "release" else "admin_overweight")
                if decision == "release":
                    auth = {"kind": "whitelist", "id": pid}
                else:
                    reason = "admin_overweight"
            else:
                request = w.id()
                w.ev(lane, "release.requested", t, passage_id=pid, request_id=request, card=card, gross_weight_kg=kg)
                t += step
                form = f"HF{rng.getrandbits(48):014d}"
                if outcome == "held":
                    decision = "hold" if i % 2 else "inspect"
                    hint = "请到待检区" if decision == "inspect" else "申报数据不符"
                    reason = decision
                else:
                    decision, instruction, hint = "release", f"CMD-{w.id()}", "核放通过"
                    auth = {"kind": "release_instruction", "id": instruction}
                w.ev(lane, "release.decided", t, passage_id=pid, request_id=request, decision=decision,
                     instruction_id=instruction, form_id=form, hint=hint)
            if outcome == "held":
                w.ev(lane, "passage.held", t, passage_id=pid, reason=reason, display="不予放行；请驶入待检区")
    if auth is not None:
        t += step
        w.ev(lane, "authorisation.committed", t, passage_id=pid, authorisation=auth)
        w.ev(lane, "barrier.lifted", t, passage_id=pid, authorisation=auth, reason="lift")
    t += step
    closed = dict(outcome=outcome, card=card, gross_weight_kg=kg, decision=decision, authorisation=auth)
    if reason:
        closed["reason"] = reason
    w.ev(lane, "passage.closed", t, passage_id=pid, **closed)
    if auth is not None:
        w.ev(lane, "barrier.lowered", t, authorisation=auth)
    if outcome == "emergency" and i % 2:
        w.ev(lane, "emergency.account", t + timedelta(minutes=5), passage_id=pid, vehicle_type="消防车",
             plate=f"云A119{i % 100:02d}", note="火警出警", by="王保安")
    w.passages.append((
        pid, lane, opened_seq, t0.isoformat(), t.isoformat(), card, kg, request, decision, instruction, form, hint,
        auth["kind"] if auth else None, auth["id"] if auth else None, outcome, reason,
    ))
    return outcome


def _records(w: _Writer, day: date, lanes: list[str]) -> None:
    """A day's duty and O&M records (R13, R15)."""
    at = lambda h, m=0: datetime.combine(day, time(h, m), TZ)  # noqa: E731
    w.ev("_site", "shift.check", at(8, 0), phase="start", guard="王保安", remarks="设备正常",
         devices={"B1-IN/card_reader": "ok"})
    w.ev("_site", "video.note", at(9, 0), guard="王保安", note="各通道监控画面正常")
    w.ev("_site", "shift.handover", at(8, 5), outgoing="赵保安", incoming="王保安", notes="视频监控正常；无异常",
         open_alarms=[], open_incidents=[], open_tickets=[])
    alarm = w.ev(lanes[0], "alarm.raised", at(10, 0), alarm="tailgating", authorisation=None, vehicles=2)
    w.ev(lanes[0], "alarm.acknowledged", at(10, 2), alarm_event_id=alarm["event_id"], alarm="tailgating",
         by="王保安", note="已核实")
    incident = w.id()
    w.ev(lanes[0], "incident.opened", at(11, 0), incident_id=incident, kind="barrier_fault", reason="up_timeout")
    w.ev(lanes[0], "incident.updated", at(11, 30), incident_id=incident,
         account={"by": "王保安", "what": "道闸电机过热，已断电冷却", "plate": None, "photos": [], "notified": ["om"]})
    w.ev(lanes[0], "incident.closed", at(12, 0), incident_id=incident, by="李运维", summary="更换电机保险")
    ticket = w.id()
    w.ev(lanes[0], "ticket.opened", at(11, 1), ticket_id=ticket, device="barrier", reason="up_timeout",
         source="fault")
    steps = {"notified": {"parties": ["customs", "park", "om"], "at": at(11, 5).isoformat()},
             "fixed": {"cause": "电机过热", "solution": "更换保险", "category": "hardware"}}
    for frm, to in [("reported", "notified"), ("notified", "diagnosing"), ("diagnosing", "fixed"), ("fixed", "closed")]:
        w.ev(lanes[0], "ticket.advanced", at(11, 40), ticket_id=ticket, **{"from": frm, "to": to}, by="李运维", note="",
             **steps.get(to, {}))
    w.ev(lanes[1], "manual_lift.refused", at(13, 0), reason="no_valid_approval")
    w.ev("_site", "shift.check", at(20, 0), phase="end", guard="王保安", remarks="", devices={"B1-IN": "ok"})
    for lane in lanes:
        for device in ("card_reader", "weighbridge", "io1"):
            w.ev(lane, "equipment.daily", datetime.combine(day + timedelta(days=1), time(0, 5), TZ),
                 date=day.isoformat(), lane_id=lane, device=device, availability=0.999, faults=0, faulty_s=86.4,
                 frames_dropped=1, checks=2)


def build_journal(path: str | Path, start: date, days: int, per_lane_day: int, *, seed: int = 1) -> Built:
    """Write the synthetic journal (a new file); see the module docstring."""
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.executescript(SCHEMA)
    rng = random.Random(seed)
    w = _Writer(db, seed)
    built = Built()
    lanes = [lane[0] for lane in LANES]
    spacing = 86400 / per_lane_day
    db.execute("BEGIN")
    for d in range(-1, days + 1):
        day = start + timedelta(days=d)
        midnight = datetime.combine(day, time(0), TZ)
        inside = 0 <= d < days
        for lane_id, _, kind, _ in LANES:
            for i in range(per_lane_day):
                t0 = midnight + timedelta(seconds=i * spacing + (0 if lane_id == "B1-IN" else rng.uniform(0, spacing)))
                if lane_id == "B1-IN" and i == per_lane_day - 1:
                    t0 = midnight + timedelta(days=1, microseconds=-1)
                before = len(w.events)
                outcome = _passage(w, rng, lane_id, kind, i, t0)
                if inside:
                    built.passages += 1
                    built.outcomes[outcome] = built.outcomes.get(outcome, 0) + 1
                    built.events += len(w.events) - before
        _records(w, day, lanes)
        w.flush()
    db.execute("COMMIT")
    db.close()
    return built
