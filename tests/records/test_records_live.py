"""Records from real lane events: the simulated site's devices drive the real lane
services, and alarms, incidents and tickets appear as the daemon runs (R8, R9, R13, R15, R16)."""

from __future__ import annotations

import asyncio

from simulators.site import Vehicle

from .conftest import Live, cli, wait_until

TRUCK = Vehicle("06008E6D5D", "云A12345", 27460)
NO_CARD = Vehicle(None, "云A3X882", 15400)


async def test_r8_forced_passage_alarm_listed_incident_opened_accounted_closed_and_acknowledged(live: Live) -> None:
    """R8, R12: a vehicle forced through the lane: the alarm is in the open alarm list with
    an incident opened for it at once; the guard writes the account and closes the
    incident, acknowledges the alarm, and it leaves the open list."""
    assert await live.sim.lane("B1-IN").force_through(NO_CARD) == "forced"
    await wait_until(lambda: live.events("incident.opened") != [])
    alarm = next(e for e in live.events("alarm.raised") if e["alarm"] == "forced_passage")
    opened = live.events("incident.opened")
    assert len(opened) == 1 and opened[0]["alarm_event_id"] == alarm["event_id"]
    assert opened[0]["kind"] == "forced_passage" and opened[0]["seq"] > alarm["seq"]
    incident_id = opened[0]["incident_id"]

    status, body = await live.get("/api/v1/alarms?open=1")
    assert status == 200
    listed = {a["event_id"]: a for a in body["alarms"]}
    assert listed[alarm["event_id"]]["alarm_zh"] == "闯卡"
    assert listed[alarm["event_id"]]["incident_id"] == incident_id

    status, body = await live.post(f"/api/v1/incidents/{incident_id}/close", {"by": "王保安", "summary": "x"})
    assert status == 409 and body["code"] == "no_account"  # the account comes first
    status, body = await live.post(f"/api/v1/incidents/{incident_id}/account", {
        "by": "王保安", "what": "一辆白色厢货未刷卡冲过道闸，道闸未受损", "plate": "云A3X882",
        "photos": ["IMG_0412.jpg", "IMG_0413.jpg"], "notified": ["海关值班科", "园区管理方"]})
    assert status == 200 and body["incident"]["accounts"][0]["plate"] == "云A3X882"
    status, body = await live.post(f"/api/v1/incidents/{incident_id}/close", {"by": "王保安", "summary": "已报海关处置"})
    assert status == 200 and body["incident"]["open"] is False

    status, body = await live.post(f"/api/v1/alarms/{alarm['event_id']}/ack", {"by": "王保安", "note": "已上报"})
    assert status == 200 and body["alarm"]["acknowledged_by"] == "王保安"
    status, body = await live.get("/api/v1/alarms?open=1")
    assert alarm["event_id"] not in {a["event_id"] for a in body["alarms"]}

    acked = live.events("alarm.acknowledged")[0]
    assert {k: acked[k] for k in ("alarm_event_id", "alarm", "by", "note")} == {
        "alarm_event_id": alarm["event_id"], "alarm": "forced_passage", "by": "王保安", "note": "已上报"}
    updated = live.events("incident.updated")[0]
    assert updated["incident_id"] == incident_id and updated["account"]["photos"] == ["IMG_0412.jpg", "IMG_0413.jpg"]
    closed = live.events("incident.closed")[0]
    assert (closed["incident_id"], closed["by"], closed["summary"]) == (incident_id, "王保安", "已报海关处置")


async def test_r15_io_module_stopped_opens_one_ticket_listed_with_its_alarm(live: Live) -> None:
    """R15: the IO module stops answering: fault.opened, a device_fault alarm in the list
    and a fault ticket (source fault) for io1, one only; the module back, the fault
    closes, the ticket stays open for O&M, and today's equipment figures show the fault."""
    await live.sim.io.stop()
    await wait_until(lambda: live.events("ticket.opened") != [])
    opened = live.events("ticket.opened")
    assert len(opened) == 1
    assert {k: opened[0][k] for k in ("device", "lane_id", "source")} == {
        "device": "io1", "lane_id": "B1-IN", "source": "fault"}
    assert opened[0]["reason"]
    status, body = await live.get("/api/v1/alarms?open=1")
    assert "device_fault" in {a["alarm"] for a in body["alarms"]}
    await live.sim.io.start()
    await wait_until(lambda: live.events("fault.closed") != [], timeout=15)
    status, body = await live.get("/api/v1/tickets?open=1")
    assert status == 200 and [t["device_key"] for t in body["tickets"]] == ["io1"]
    assert body["tickets"][0]["state"] == "reported" and body["tickets"][0]["faults"] == 1
    today = live.site.now().date().isoformat()
    status, body = await live.get(f"/api/v1/ledger/equipment?date={today}")
    assert status == 200 and body["final"] is False
    row = next(r for r in body["rows"] if r["device"] == "io1")
    assert row["faults"] == 1 and row["faulty_s"] > 0 and row["availability"] < 1
    assert len(live.events("ticket.opened")) == 1


async def test_r9_stuck_barrier_core_incident_linked_not_doubled(live: Live) -> None:
    """R9: a barrier fault (limit switch stuck): the core opens its own incident; Records
    links it to the barrier_fault alarm and opens no second one; the barrier gets a ticket."""
    lane = live.sim.lane("B1-IN")
    live.sim.authority.script(TRUCK.card, "release")
    lane.barrier.stuck = True
    lane.set_loop("arrival", True)
    lane.weigh(TRUCK.gross_kg)
    await asyncio.sleep(0.3)
    lane.reader.present(TRUCK.card)
    await wait_until(lambda: any(e["alarm"] == "barrier_fault" for e in live.events("alarm.raised")), timeout=15)
    await wait_until(lambda: any(e["device"] == "barrier" for e in live.events("ticket.opened")))
    alarm = next(e for e in live.events("alarm.raised") if e["alarm"] == "barrier_fault")
    incidents = live.events("incident.opened")
    assert len(incidents) == 1 and "alarm_event_id" not in incidents[0]  # the core's own
    status, body = await live.get(f"/api/v1/incidents/{incidents[0]['incident_id']}")
    assert status == 200 and body["alarm_event_id"] == alarm["event_id"] and body["source"] == "core"


async def test_r16_customs_hold_opens_no_ticket_and_no_report_can_blame_a_device(live: Live) -> None:
    """R16: a vehicle held on the authority's answer (declared data) is no device fault:
    no ticket, no incident; an enterprise's fault report naming that passage is refused."""
    live.sim.authority.script(TRUCK.card, "hold")
    assert await live.sim.lane("B1-IN").drive(TRUCK, wait_for_lift_s=1.0) == "backed_out"
    await wait_until(lambda: any(e["outcome"] == "held" for e in live.events("passage.closed")))
    passage_id = live.events("passage.held")[0]["passage_id"]
    assert live.events("passage.held")[0]["reason"] == "hold"
    await asyncio.sleep(0.2)
    assert live.events("ticket.opened") == [] and live.events("incident.opened") == []
    status, body = await live.post("/api/v1/tickets", {"device": "card_reader", "lane_id": "B1-IN",
                                                       "reason": "企业称刷卡不抬杆", "by": "某物流公司",
                                                       "passage_id": passage_id})
    assert status == 422 and body["code"] == "not_a_fault" and "R16" in body["error"]
    assert live.events("ticket.opened") == [] and live.events("ticket.opened", lane="_site") == []


async def test_r13_cli_handover_carries_open_alarm_over_until_acknowledged(live: Live) -> None:
    """R13: the guard hands over from the CLI while the daemon runs: the open alarm (and
    its incident) are carried over and stay open; a shift-start check snapshots every
    device; after the alarm is acknowledged the next handover no longer carries it."""
    await live.sim.lane("B1-IN").force_through(NO_CARD)
    await wait_until(lambda: live.events("incident.opened") != [])
    alarm_id = next(e["event_id"] for e in live.events("alarm.raised") if e["alarm"] == "forced_passage")
    incident_id = live.events("incident.opened")[0]["incident_id"]
    cfg = str(live.config_path)

    rc = await asyncio.to_thread(cli, ["shift", "handover", "--config", cfg, "--outgoing", "王保安",
                                       "--incoming", "李保安", "--notes", "夜班一起闯卡，已报海关"])
    assert rc == 0
    (handover,) = live.events("shift.handover", lane="_site")
    assert alarm_id in handover["open_alarms"] and incident_id in handover["open_incidents"]
    assert (handover["outgoing"], handover["incoming"], handover["lane_id"]) == ("王保安", "李保安", "_site")
    assert live.records.store.alarm(alarm_id)["open"]  # carried over, still open

    rc = await asyncio.to_thread(cli, ["shift", "check", "--config", cfg, "--phase", "start", "--guard", "李保安",
                                       "--remarks", "道闸、地感、读卡器正常"])
    assert rc == 0
    (check,) = live.events("shift.check", lane="_site")
    assert check["phase"] == "start" and check["devices"]["B1-IN/io1"] == "ok"
    assert set(check["devices"]) == {"B1-IN/card_reader", "B1-IN/weighbridge", "B1-IN/io1", "B1-IN/barrier"}

    rc = await asyncio.to_thread(cli, ["alarm", "ack", "--config", cfg, alarm_id[:8], "--by", "李保安",
                                       "--note", "接班核实，海关已处置"])
    assert rc == 0
    rc = await asyncio.to_thread(cli, ["shift", "handover", "--config", cfg, "--outgoing", "李保安",
                                       "--incoming", "王保安"])
    assert rc == 0
    second = live.events("shift.handover", lane="_site")[1]
    assert alarm_id not in second["open_alarms"] and incident_id in second["open_incidents"]
