"""Fault tickets (故障处理单, R15, R16) driven with synthetic lane events on a clock the
test moves: the regulation's flow as a transition table, figures for the O&M review."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from hypothesis import given, settings, strategies as st

from gatectl.records import TICKET_STATES, TICKET_TRANSITIONS, RecordError

from .conftest import TZ, Synthetic, cli
from journaling import write


def fault(syn: Synthetic, lane: str, device: str, reason: str = "no answer within 1 s") -> None:
    """What the core journals for a device fault, in one write."""
    from gatectl.journal import Entry

    write(syn.site.journal, lane, [
        Entry.of("fault.opened", syn.now, {"device": device, "reason": reason}),
        Entry.of("alarm.raised", syn.now, {"alarm": "device_fault", "device": device, "reason": reason}),
    ])


def recovered(syn: Synthetic, lane: str, device: str) -> None:
    syn.lane_event(lane, "fault.closed", device=device)


def advance(syn: Synthetic, ticket_id: str, to: str, **fields) -> dict:
    return syn.records.perform("ticket.advance", {"ticket_id": ticket_id, "to": to, "by": "运维张工", **fields})


def test_r15_ticket_walked_through_every_state_and_figures_computed(synthetic: Synthetic) -> None:
    """R15: a card reader fault opens a ticket (reported); it is notified to customs, park
    and O&M, diagnosed, fixed with cause, solution and category, closed. Every step is a
    ticket.advanced event; the figures give count, mean and max time to fix per device."""
    syn = synthetic
    fault(syn, "B1-IN", "card_reader", "port vanished")
    (opened,) = syn.events("ticket.opened")
    tid = opened["ticket_id"]
    assert {k: opened[k] for k in ("device", "lane_id", "reason", "source")} == {
        "device": "card_reader", "lane_id": "B1-IN", "reason": "port vanished", "source": "fault"}
    assert syn.records.store.ticket(tid)["state"] == "reported"

    syn.later(minutes=10)
    t = advance(syn, tid, "notified", parties=["customs", "park", "om"], note="电话通报")["ticket"]
    assert t["state"] == "notified" and set(t["notified"]) == {"customs", "park", "om"}
    syn.later(minutes=20)
    recovered(syn, "B1-IN", "card_reader")
    assert advance(syn, tid, "diagnosing")["ticket"]["state"] == "diagnosing"
    syn.later(minutes=90)
    t = advance(syn, tid, "fixed", cause="USB 转串口线松动", solution="更换串口线并固定", category="hardware")["ticket"]
    assert t["state"] == "fixed" and t["time_to_fix_s"] == 2 * 3600
    syn.later(days=1)
    t = advance(syn, tid, "closed", note="验收通过")["ticket"]
    assert t["state"] == "closed" and t["next"] == []
    assert [h["to"] for h in t["history"]] == ["reported", "notified", "diagnosing", "fixed", "closed"]

    steps = syn.events("ticket.advanced")
    assert [(s["from"], s["to"]) for s in steps] == [
        ("reported", "notified"), ("notified", "diagnosing"), ("diagnosing", "fixed"), ("fixed", "closed")]
    assert all(s["ticket_id"] == tid and s["by"] == "运维张工" and s["lane_id"] == "B1-IN" for s in steps)
    assert steps[0]["parties"] == ["customs", "park", "om"] and steps[0]["at"]
    assert (steps[2]["cause"], steps[2]["solution"], steps[2]["category"]) == (
        "USB 转串口线松动", "更换串口线并固定", "hardware")

    # A second card reader ticket, fixed in 30 min, and an io1 ticket still open.
    fault(syn, "B1-IN", "card_reader", "silent")
    tid2 = syn.events("ticket.opened")[-1]["ticket_id"]
    for to in ("notified", "diagnosing"):
        advance(syn, tid2, to, parties="om")
    syn.later(minutes=30)
    advance(syn, tid2, "fixed", cause="读卡器死机", solution="重启读卡器", category="software")
    fault(syn, "B1-OUT", "io1")

    figures = syn.records.store.figures(datetime(2026, 1, 1).date(), datetime(2026, 12, 31).date())
    by_device = {d["device"]: d for d in figures["devices"]}
    reader = by_device["B1-IN/card_reader"]
    assert (reader["tickets"], reader["fixed"], reader["open_now"]) == (2, 2, 1)
    assert reader["mean_fix_s"] == (2 * 3600 + 30 * 60) / 2 and reader["max_fix_s"] == 2 * 3600
    assert reader["categories"] == {"hardware": 1, "software": 1, "other": 0}
    assert (by_device["io1"]["tickets"], by_device["io1"]["fixed"], by_device["io1"]["open_now"]) == (1, 0, 1)
    assert figures["total"] == {"tickets": 3, "fixed": 2, "mean_fix_s": 4500.0, "max_fix_s": 7200.0, "open_now": 2}
    # Outside the period: nothing opened, but what is open now still shows.
    empty = syn.records.store.figures(datetime(2025, 1, 1).date(), datetime(2025, 12, 31).date())
    assert empty["total"]["tickets"] == 0 and empty["total"]["open_now"] == 2


def test_r15_ticket_figures_from_the_cli(synthetic: Synthetic, capsys: pytest.CaptureFixture[str]) -> None:
    """R15: `gatectl ticket figures` reads the same figures from the journal file."""
    syn = synthetic
    fault(syn, "B1-IN", "weighbridge")
    tid = syn.events("ticket.opened")[0]["ticket_id"]
    advance(syn, tid, "notified", parties=["om"])
    advance(syn, tid, "diagnosing")
    syn.later(hours=3)
    advance(syn, tid, "fixed", cause="称重仪表通讯板损坏", solution="更换通讯板", category="hardware")
    assert cli(["ticket", "figures", "--config", str(syn.config_path), "--year", "2026", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = out["devices"]
    assert row["device"] == "B1-IN/weighbridge" and row["mean_fix_s"] == 3 * 3600 and row["open_now"] == 1
    assert cli(["ticket", "figures", "--config", str(syn.config_path), "--year", "2026"]) == 0
    text = capsys.readouterr().out
    assert "B1-IN/weighbridge" in text and "3h00m00s" in text and "平均修复" in text
    assert cli(["ticket", "show", "--config", str(syn.config_path), tid]) == 0
    assert "已修复" in capsys.readouterr().out


def test_r15_illegal_ticket_moves_refused_and_nothing_changed(synthetic: Synthetic) -> None:
    """R15: from every state, every move the table does not allow is refused with a clear
    error (409 illegal_transition, naming the allowed moves) and journals nothing."""
    syn = synthetic
    fault(syn, "B1-IN", "weighbridge")
    tid = syn.events("ticket.opened")[0]["ticket_id"]
    fields = {"notified": {"parties": ["om"]},
              "fixed": {"cause": "c", "solution": "s", "category": "other"}}
    path = ["notified", "diagnosing", "fixed", "closed"]
    for step in [None, *path]:
        if step is not None:
            advance(syn, tid, step, **fields.get(step, {}))
        before = syn.records.store.ticket(tid)
        n_events = len(syn.events())
        for to in TICKET_STATES:
            if to in TICKET_TRANSITIONS[before["state"]]:
                continue
            with pytest.raises(RecordError) as err:
                advance(syn, tid, to, **fields.get(to, {}))
            assert err.value.status == 409 and err.value.code == "illegal_transition"
            assert f"from {before['state']} to {to}" in err.value.message and err.value.message_zh
            assert syn.records.store.ticket(tid) == before
            assert len(syn.events()) == n_events
    with pytest.raises(RecordError) as err:
        advance(syn, "FT-NOPE", "notified", parties=["om"])
    assert err.value.status == 404


def test_r15_ticket_steps_need_their_fields(synthetic: Synthetic) -> None:
    """R15: notified needs who was told (customs, park, om); fixed needs cause, solution
    and category hardware|software|other; refused steps change nothing."""
    syn = synthetic
    fault(syn, "B1-IN", "io1")
    tid = syn.events("ticket.opened")[0]["ticket_id"]
    for bad in ({}, {"parties": []}, {"parties": ["police"]}):
        with pytest.raises(RecordError) as err:
            advance(syn, tid, "notified", **bad)
        assert err.value.status == 422
    advance(syn, tid, "notified", parties="customs,om", at="2026-11-26T08:05:00")
    assert syn.records.store.ticket(tid)["notified"] == {"customs": "2026-11-26T08:05:00+08:00",
                                                         "om": "2026-11-26T08:05:00+08:00"}
    advance(syn, tid, "diagnosing")
    for bad in ({"solution": "s", "category": "hardware"}, {"cause": "c", "category": "hardware"},
                {"cause": "c", "solution": "s"}, {"cause": "c", "solution": "s", "category": "weather"}):
        with pytest.raises(RecordError) as err:
            advance(syn, tid, "fixed", **bad)
        assert err.value.status == 422
    assert syn.records.store.ticket(tid)["state"] == "diagnosing"
    # The fix did not hold: back to diagnosing; time to fix runs to the next fix.
    advance(syn, tid, "fixed", cause="c", solution="s", category="other")
    syn.later(hours=1)
    advance(syn, tid, "diagnosing", note="复发")
    assert syn.records.store.ticket(tid)["time_to_fix_s"] is None
    syn.later(hours=1)
    assert advance(syn, tid, "fixed", cause="c2", solution="s2", category="hardware")["ticket"]["time_to_fix_s"] == 7200


def test_r15_transition_table_holds_for_any_sequence_of_moves(tmp_path) -> None:
    """R15 (property): whatever moves are tried in whatever order, a ticket is only ever in
    a state the table leads to, and exactly the legal moves are journaled."""
    from .conftest import build_synthetic

    syn = build_synthetic(tmp_path, datetime(2026, 11, 26, 8, 0, tzinfo=TZ))
    fields = {"notified": {"parties": ["park"]}, "fixed": {"cause": "c", "solution": "s", "category": "software"}}
    devices = iter(range(10_000))

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.sampled_from(TICKET_STATES), max_size=12))
    def walk(moves: list[str]) -> None:
        tid = syn.records.perform("ticket.open", {"device": f"gate-{next(devices)}", "reason": "r",
                                                  "by": "企业"})["ticket"]["ticket_id"]
        state, legal = "reported", 0
        steps_before = len(syn.events("ticket.advanced", lane="_site"))
        for to in moves:
            try:
                advance(syn, tid, to, **fields.get(to, {}))
            except RecordError as exc:
                assert to not in TICKET_TRANSITIONS[state] and exc.code == "illegal_transition"
            else:
                assert to in TICKET_TRANSITIONS[state]
                state, legal = to, legal + 1
            assert syn.records.store.ticket(tid)["state"] == state
        assert len(syn.events("ticket.advanced", lane="_site")) - steps_before == legal

    try:
        walk()
    finally:
        syn.site.journal.close()


def test_r15_one_ticket_per_device_outage(synthetic: Synthetic) -> None:
    """R15: a device with an open ticket gets no second one, however often it fails, and
    an IO module shared by two lanes is one device; once its ticket is closed, the next
    outage opens a new ticket."""
    syn = synthetic
    fault(syn, "B1-IN", "io1")
    fault(syn, "B1-OUT", "io1")  # the same module seen from the other lane
    recovered(syn, "B1-IN", "io1")
    recovered(syn, "B1-OUT", "io1")
    syn.later(minutes=5)
    fault(syn, "B1-IN", "io1")  # flaps while the ticket is open
    fault(syn, "B1-IN", "card_reader")
    fault(syn, "B1-OUT", "card_reader")  # another lane's reader is another device
    opened = syn.events("ticket.opened")
    assert sorted((e["lane_id"], e["device"]) for e in opened) == [
        ("B1-IN", "card_reader"), ("B1-IN", "io1"), ("B1-OUT", "card_reader")]
    io_ticket = next(e["ticket_id"] for e in opened if e["device"] == "io1")
    assert syn.records.store.ticket(io_ticket)["faults"] == 3
    with pytest.raises(RecordError) as err:  # an enterprise reporting it again
        syn.records.perform("ticket.open", {"device": "io1", "reason": "抬杆无反应", "by": "某公司"})
    assert err.value.status == 409 and io_ticket in err.value.message
    for to, extra in [("notified", {"parties": ["om"]}), ("diagnosing", {}),
                      ("fixed", {"cause": "交换机断电", "solution": "恢复供电", "category": "hardware"}), ("closed", {})]:
        advance(syn, io_ticket, to, **extra)
    recovered(syn, "B1-IN", "io1")
    syn.later(days=2)
    fault(syn, "B1-IN", "io1")
    assert len([e for e in syn.events("ticket.opened") if e["device"] == "io1"]) == 2


@pytest.mark.parametrize("reason", ["hold", "inspect", "deny", "spot_check", "closed_hours", "not_registered",
                                    "admin_overweight", "no_card", "forced_passage", "instruction_replay"])
def test_r16_holds_never_open_a_ticket(synthetic: Synthetic, reason: str) -> None:
    """R16: a passage held for the declared data or the lane's own rules opens no ticket,
    and an enterprise's report naming it is refused; a hold for a device fault may be reported."""
    syn = synthetic
    from gatectl.journal import Entry

    pid = f"P-{reason}"
    written = write(syn.site.journal, "B1-IN", [
        Entry.of("passage.opened", syn.now, {"passage_id": pid}),
        Entry.of("passage.held", syn.now, {"passage_id": pid, "reason": reason, "display": "不予放行"}),
        Entry.of("passage.closed", syn.now, {"passage_id": pid, "outcome": "held", "reason": reason}),
    ])
    assert syn.events("ticket.opened") == [] and syn.records.store.tickets() == []
    with pytest.raises(RecordError) as err:
        syn.records.perform("ticket.open", {"device": "card_reader", "lane_id": "B1-IN", "reason": "不抬杆",
                                            "by": "某公司", "passage_id": pid})
    assert err.value.code == "not_a_fault" and err.value.status == 422
    assert syn.records.store.tickets() == []

    write(syn.site.journal, "B1-IN", [
        Entry.of("passage.opened", syn.now, {"passage_id": "P-dev"}),
        Entry.of("passage.closed", syn.now, {"passage_id": "P-dev", "outcome": "held", "reason": "device_fault"}),
    ])
    result = syn.records.perform("ticket.open", {"device": "weighbridge", "lane_id": "B1-IN", "reason": "地磅无读数",
                                                 "by": "某公司", "passage_id": "P-dev"})
    assert result["ticket"]["source"] == "report" and result["event"]["passage_id"] == "P-dev"


@pytest.mark.parametrize(("hold", "fault"), [("device_fault", True), ("authority_timeout", True), ("hold", False)])
def test_r16_s7_a_hold_closed_by_a_restart_is_judged_by_its_hold_reason(synthetic: Synthetic, hold: str,
                                                                        fault: bool) -> None:
    """R16, S7: a held passage closed after a restart because another lorry showed its card
    (reason daemon_restart) keeps its hold reason: a report naming it opens a ticket if the
    hold was for a fault, and is refused if it was customs' decision."""
    syn = synthetic
    from gatectl.journal import Entry

    pid = f"P-restart-{hold}"
    write(syn.site.journal, "B1-IN", [
        Entry.of("passage.opened", syn.now, {"passage_id": pid}),
        Entry.of("passage.held", syn.now, {"passage_id": pid, "reason": hold, "display": "暂不放行"}),
        Entry.of("lane.recovered", syn.now, {"passage_id": pid, "card": "0100E2850E"}),
        Entry.of("passage.closed", syn.now, {"passage_id": pid, "outcome": "held", "reason": "daemon_restart",
                                             "card": "0100E2850E"}),
    ])
    report = {"device": "weighbridge", "lane_id": "B1-IN", "reason": "不抬杆", "by": "某公司", "passage_id": pid}
    if fault:
        assert syn.records.perform("ticket.open", report)["event"]["passage_id"] == pid
    else:
        with pytest.raises(RecordError) as err:
            syn.records.perform("ticket.open", report)
        assert err.value.code == "not_a_fault"
        assert syn.records.store.tickets() == []
