"""The records API (token on every POST, clear 4xx refusals that change nothing) and the
CLI (checks first, then hands the order to the daemon through the inbox) (R8, R13, R15)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gatectl.api import make_app
from gatectl.records_cli import add_subcommands

from .conftest import TOKEN, Synthetic, cli, wait_until

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(synthetic: Synthetic) -> AsyncIterator[TestClient]:
    app = make_app(synthetic.site, synthetic.records.setup_routes)
    async with TestClient(TestServer(app)) as c:
        yield c


def forced(syn: Synthetic, lane: str = "B1-IN") -> dict:
    return syn.lane_event(lane, "alarm.raised", alarm="forced_passage", loop="safety_loop", state="idle")


async def test_r12_alarm_ack_api_needs_token_and_refuses_clearly(synthetic: Synthetic, client: TestClient) -> None:
    """R12: every alarm kind is listed; an acknowledgement needs the token, a name and a
    note; acknowledging twice or an unknown alarm is refused; refusals journal nothing."""
    syn = synthetic
    alarm = forced(syn)
    other = syn.lane_event("B1-OUT", "alarm.raised", alarm="authority_unreachable", reason="timeout")
    r = await client.get("/api/v1/alarms?open=1")
    body = await r.json()
    assert r.status == 200 and {a["alarm"] for a in body["alarms"]} == {"forced_passage", "authority_unreachable"}
    r = await client.get("/api/v1/alarms?lane=B1-OUT")
    assert [a["event_id"] for a in (await r.json())["alarms"]] == [other["event_id"]]
    n = len(syn.events())
    url = f"/api/v1/alarms/{alarm['event_id']}/ack"
    assert (await client.post(url, json={"by": "王", "note": "n"})).status == 401
    assert (await client.post(url, json={"by": "王", "note": "n"}, headers={"Authorization": "Bearer x"})).status == 403
    r = await client.post(url, json={"by": "王"}, headers=AUTH)
    assert r.status == 422 and (await r.json())["message_zh"]
    assert (await client.post("/api/v1/alarms/nope/ack", json={"by": "王", "note": "n"}, headers=AUTH)).status == 404
    assert (await client.post(url, data="not json", headers=AUTH)).status == 400
    assert len(syn.events()) == n
    r = await client.post(url, json={"by": "王保安", "note": "已通知海关"}, headers=AUTH)
    body = await r.json()
    assert r.status == 200 and body["alarm"]["open"] is False and body["acknowledged_at"] == syn.now.isoformat()
    r = await client.post(url, json={"by": "李", "note": "again"}, headers=AUTH)
    assert r.status == 409 and (await r.json())["code"] == "already_acknowledged"
    r = await client.get("/api/v1/alarms?open=1")
    assert [a["event_id"] for a in (await r.json())["alarms"]] == [other["event_id"]]


async def test_r8_incident_api_hand_opened_damage_record(synthetic: Synthetic, client: TestClient) -> None:
    """R8, R9: a guard opens a damage incident (a scraped barrier the sensors never saw),
    adds the account and closes it; unknown kinds and closed incidents are refused."""
    r = await client.post("/api/v1/incidents", json={"lane_id": "B1-IN", "kind": "meteor", "reason": "x", "by": "王"},
                          headers=AUTH)
    assert r.status == 422
    r = await client.post("/api/v1/incidents", json={"lane_id": "B1-IN", "kind": "damage",
                                                      "reason": "货车倒车刮蹭道闸立柱", "by": "王保安"}, headers=AUTH)
    assert r.status == 201
    inc = (await r.json())["incident"]
    assert inc["incident_id"].startswith("INC-20261126-") and inc["source"] == "guard" and inc["kind_zh"]
    iid = inc["incident_id"]
    r = await client.post(f"/api/v1/incidents/{iid}/account", headers=AUTH, json={
        "by": "王保安", "what": "云A7K208 倒车时刮蹭立柱，漆面受损", "plate": "云A7K208", "photos": "a.jpg, b.jpg",
        "notified": ["园区管理方"]})
    assert r.status == 200 and (await r.json())["incident"]["accounts"][0]["photos"] == ["a.jpg", "b.jpg"]
    r = await client.post(f"/api/v1/incidents/{iid}/close", json={"by": "王保安", "summary": "企业同意赔偿"}, headers=AUTH)
    assert r.status == 200
    r = await client.post(f"/api/v1/incidents/{iid}/account", json={"by": "王", "what": "late"}, headers=AUTH)
    assert r.status == 409 and (await r.json())["code"] == "incident_closed"
    r = await client.get("/api/v1/incidents?open=1")
    assert (await r.json())["incidents"] == []
    opened = synthetic.events("incident.opened")[0]
    assert (opened["kind"], opened["alarm_event_id"], opened["by"]) == ("damage", None, "王保安")


async def test_r15_ticket_api_open_advance_refuse_and_figures(synthetic: Synthetic, client: TestClient) -> None:
    """R15: an enterprise's fault report opens a ticket (201); an illegal move is 409 with
    the allowed moves, in English and Chinese; figures are their own route."""
    r = await client.post("/api/v1/tickets", json={"device": "weighbridge", "lane_id": "B1-OUT",
                                                   "reason": "地磅显示跳动", "by": "云南某物流"}, headers=AUTH)
    assert r.status == 201
    t = (await r.json())["ticket"]
    assert (t["source"], t["reported_by"], t["device_key"], t["state"]) == ("report", "云南某物流", "B1-OUT/weighbridge",
                                                                           "reported")
    url = f"/api/v1/tickets/{t['ticket_id']}/advance"
    r = await client.post(url, json={"to": "closed", "by": "张工"}, headers=AUTH)
    body = await r.json()
    assert r.status == 409 and body["code"] == "illegal_transition" and "notified" in body["error"]
    assert "已通报" in body["message_zh"]
    r = await client.post(url, json={"to": "notified", "by": "值班协管员", "parties": ["customs", "park", "om"]},
                          headers=AUTH)
    assert r.status == 200 and (await r.json())["ticket"]["state"] == "notified"
    r = await client.get("/api/v1/tickets/figures?from=2026-01-01&to=2026-12-31")
    body = await r.json()
    assert r.status == 200 and body["devices"][0]["device"] == "B1-OUT/weighbridge" and body["total"]["open_now"] == 1
    assert (await client.get("/api/v1/tickets/figures?from=junk")).status == 400
    r = await client.get(f"/api/v1/tickets/{t['ticket_id']}")
    assert [h["to"] for h in (await r.json())["history"]] == ["reported", "notified"]
    assert (await client.get("/api/v1/tickets/FT-NOPE")).status == 404


async def test_r13_duty_api_handover_check_video_note(synthetic: Synthetic, client: TestClient) -> None:
    """R13: handover (site-wide, carrying the open items), equipment check and video note."""
    syn = synthetic
    alarm = forced(syn)
    r = await client.get("/api/v1/shifts/open-items")
    items = await r.json()
    assert items["open_alarms"] == [alarm["event_id"]] and len(items["open_incidents"]) == 1
    r = await client.post("/api/v1/shifts/handover", json={"outgoing": "王", "incoming": "王", "notes": ""}, headers=AUTH)
    assert r.status == 422
    r = await client.post("/api/v1/shifts/handover", json={"outgoing": "王保安", "incoming": "李保安",
                                                           "notes": "B1-IN 闯卡待海关处理"}, headers=AUTH)
    assert r.status == 200
    ev = (await r.json())["event"]
    assert ev["lane_id"] == "_site" and ev["open_alarms"] == [alarm["event_id"]]
    r = await client.post("/api/v1/shifts/checks", json={"phase": "noon", "guard": "李"}, headers=AUTH)
    assert r.status == 422
    r = await client.post("/api/v1/shifts/checks", json={"phase": "start", "guard": "李保安", "remarks": "正常"},
                          headers=AUTH)
    check = (await r.json())["event"]
    assert r.status == 200 and len(check["devices"]) == 8 and check["devices"]["B1-OUT/io1"] == "unknown"
    r = await client.post("/api/v1/shifts/video-notes", json={"guard": "李保安", "note": "02:10 B1-IN 有人徘徊，已驱离"},
                          headers=AUTH)
    assert r.status == 200
    r = await client.get("/api/v1/shifts")
    assert [e["type"] for e in (await r.json())["records"]] == ["video.note", "shift.check", "shift.handover"]
    assert (await client.get("/api/v1/ledger/equipment?date=26-11-2026")).status == 400


def test_cli_queues_for_the_daemon_and_refuses_at_once(synthetic: Synthetic, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI checks an order against the records first (a refusal queues nothing), then
    leaves it for the daemon: with no daemon running it is queued, and journaled by the
    daemon's next pass; the CLI never appends an event itself."""
    syn = synthetic
    alarm = forced(syn)
    cfg = str(syn.config_path)
    n = len(syn.events())
    assert cli(["alarm", "ack", "--config", cfg, alarm["event_id"][:10], "--by", "王保安", "--note", "已处置",
                "--wait", "0"]) == 0
    assert "queued" in capsys.readouterr().out
    assert len(syn.events()) == n  # nothing journaled by the CLI
    assert asyncio.run(syn.site.orders.take_inbox()) == 1  # the daemon's next pass over its inbox
    (acked,) = syn.events("alarm.acknowledged")
    assert acked["alarm_event_id"] == alarm["event_id"] and acked["by"] == "王保安"

    syn.records.perform("ticket.open", {"device": "barrier", "lane_id": "B1-IN", "reason": "落杆慢", "by": "企业"})
    tid = syn.records.store.tickets()[0]["ticket_id"]
    assert cli(["ticket", "advance", "--config", cfg, tid, "--to", "fixed", "--by", "张工", "--cause", "c",
                "--solution", "s", "--category", "hardware"]) == 1
    err = capsys.readouterr().err
    assert "illegal_transition" in err and "已上报" in err
    assert syn.site.journal.inbox_pending() == []
    assert cli(["alarm", "ack", "--config", cfg, "no-such-alarm", "--by", "王", "--note", "x"]) == 1
    assert cli(["alarm", "list", "--config", cfg]) == 0
    assert "闯卡" in capsys.readouterr().out
    assert cli(["alarm", "list", "--config", cfg, "--open"]) == 0
    assert alarm["event_id"] not in capsys.readouterr().out


async def test_cli_answered_by_the_running_daemon(synthetic: Synthetic, capsys: pytest.CaptureFixture[str]) -> None:
    """R13: with the daemon's record jobs running, `gatectl shift note` and `incident
    account` are journaled within a second and the CLI prints the daemon's answer."""
    syn = synthetic
    forced(syn)
    iid = syn.records.store.incidents()[0]["incident_id"]  # projected with the alarm's commit
    task = asyncio.create_task(syn.site.orders.run())
    try:
        cfg = str(syn.config_path)
        rc = await asyncio.to_thread(cli, ["shift", "note", "--config", cfg, "--guard", "王保安",
                                           "--note", "23:40 B1-IN 监控画面正常"])
        assert rc == 0 and "视频监控记录" in capsys.readouterr().out
        rc = await asyncio.to_thread(cli, ["incident", "account", "--config", cfg, iid, "--by", "王保安",
                                           "--what", "无牌小车跟随货车冲卡", "--photo", "cam1.jpg",
                                           "--notified", "海关值班"])
        assert rc == 0 and "cam1.jpg" in capsys.readouterr().out
        await wait_until(lambda: syn.events("incident.updated") != [])
        assert syn.events("video.note", lane="_site")[0]["note"] == "23:40 B1-IN 监控画面正常"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_cli_bad_config_and_missing_journal(tmp_path, synthetic: Synthetic) -> None:
    """Exit 2 for a bad config, 1 when there is no journal yet."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: {id: X}\n", encoding="utf-8")
    assert cli(["alarm", "list", "--config", str(bad)]) == 2
    text = synthetic.config_path.read_text(encoding="utf-8").replace(str(tmp_path / "gatectl.db"),
                                                                       str(tmp_path / "none.db"))
    other = tmp_path / "other.yaml"
    other.write_text(text, encoding="utf-8")
    assert cli(["ticket", "list", "--config", str(other)]) == 1
    assert not (tmp_path / "none.db").exists()


def test_cli_ledger_equipment_joins_an_existing_ledger_group() -> None:
    """`ledger equipment` sits beside `ledger export` whichever module registers first."""
    parser = argparse.ArgumentParser(prog="gatectl")
    sub = parser.add_subparsers(dest="command", required=True)
    ledger = sub.add_parser("ledger").add_subparsers(dest="ledger_command", required=True)
    ledger.add_parser("export")
    add_subcommands(sub)
    assert parser.parse_args(["ledger", "export"]).ledger_command == "export"
    args = parser.parse_args(["ledger", "equipment", "--config", "x.yaml", "--date", "2026-11-26"])
    assert args.ledger_command == "equipment" and callable(args.func)


def test_r8_the_incident_follows_its_alarm_in_the_commit_after_it(synthetic: Synthetic) -> None:
    """R8: the records follow the journal in its writer, right after each commit (the lane
    has its answer by then, tests/journal): the forced passage's incident is there as soon
    as its alarm is, journaled after it."""
    syn = synthetic
    alarm = forced(syn)
    (opened,) = syn.events("incident.opened")
    assert opened["alarm_event_id"] == alarm["event_id"] and opened["seq"] == alarm["seq"] + 1