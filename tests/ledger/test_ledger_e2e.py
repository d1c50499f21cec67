"""R14 end to end: vehicles driven through a real lane (simulated devices over ptys and
Modbus TCP, the customs authority over HTTP, the daemon's lane service), then the ledger
exported while the daemon runs, in both formats, checked row by row against the journal's
passages table."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatectl.approvals import public_key_b64, sign
from gatectl.config import load_config
from gatectl.ledger import PASSAGE_COLUMNS, export
from gatectl.service import SITE_LANE, Site
from simulators.site import SimulatedSite, Vehicle, free_tcp_port

from .conftest import csv_header, read_csv, read_xlsx, xlsx_headers
from journaling import record

TZ = ZoneInfo("Asia/Shanghai")
CUSTOMS = Ed25519PrivateKey.generate()
TRUCK = Vehicle("0100E2850E", "云A12345", 31250)
SECOND = Vehicle("06008E6D5D", "云A67890", 18800)
NO_CARD = Vehicle(None, "云A00000", 9000)
OUTCOME_ZH = {"passed": "已通行", "held": "不予放行", "manual": "手动抬杆", "emergency": "紧急放行", "forced": "闯卡",
              "backed_out": "倒车离开"}


async def wait_until(predicate, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.02)


async def drive_through(lane) -> None:
    for loop, on in [("safety", True), ("arrival", False), ("exit", True), ("safety", False), ("exit", False)]:
        lane.set_loop(loop, on)
        await asyncio.sleep(0.15)


@pytest.fixture
async def daemon(tmp_path: Path, fast_sim: SimulatedSite):
    path = fast_sim.write_config(tmp_path / "site.yaml", journal_path=str(tmp_path / "gatectl.db"),
                                 api_listen=f"127.0.0.1:{free_tcp_port()}",
                                 trust={"customs": [public_key_b64(CUSTOMS)]})
    site = Site(load_config(path))
    stop = asyncio.Event()
    task = asyncio.create_task(site.run(stop))
    try:
        await wait_until(lambda: site.running)
        yield fast_sim, site
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)


def closed(site: Site) -> list[str]:
    return [e["outcome"] for e in site.journal.events("B1-IN") if e["type"] == "passage.closed"]


async def drive_a_day(sim: SimulatedSite, site: Site) -> None:
    """A release, a customs hold, a remote approval, an emergency vehicle, a refused manual
    lift and a forced passage; then the records another module journals around them."""
    lane = sim.lane("B1-IN")
    sim.authority.script(TRUCK.card, "release")
    sim.authority.script(SECOND.card, "hold")
    assert await lane.drive(TRUCK) == "passed"
    assert await lane.drive(SECOND, wait_for_lift_s=1.5) == "backed_out"
    await wait_until(lambda: closed(site) == ["passed", "held"])
    await wait_until(lambda: lane.barrier.position == "down")

    now = datetime.now(TZ)
    doc = {"approval_id": "AP-LEDGER-1", "lane_id": "B1-IN", "trigger": "remote", "reason": "equipment_fault",
           "detail": "地磅通讯中断", "requested_by": {"org": "某某物流有限公司", "name": "张三"},
           "verified_by": {"org": "运维单位", "name": "李四"}, "approved_by": {"org": "昆明海关", "name": "王五"},
           "countersigned_by": None, "plate": "云A99999", "valid_from": (now - timedelta(minutes=1)).isoformat(),
           "valid_until": (now + timedelta(hours=1)).isoformat(), "max_lifts": 1, "signatures": []}
    lane.set_loop("arrival", True)
    result = await site.orders.approval(sign(doc, "customs", CUSTOMS), source="test")
    assert result["status"] == "accepted", result
    await wait_until(lambda: lane.barrier.position == "up")
    await drive_through(lane)
    await wait_until(lambda: closed(site) == ["passed", "held", "manual"])
    await wait_until(lambda: lane.barrier.position == "down")

    lane.set_loop("arrival", True)
    await lane.press("emergency")
    await wait_until(lambda: lane.barrier.position == "up")
    await drive_through(lane)
    await wait_until(lambda: len(closed(site)) == 4)
    await wait_until(lambda: lane.barrier.position == "down")
    emergency = site.journal.passages("B1-IN", limit=1)[0]
    assert emergency["outcome"] == "emergency"
    account = await site.orders.emergency_account({"passage_id": emergency["passage_id"], "vehicle_type": "消防车",
                                                "plate": "云A119", "note": "火警出警", "by": "王保安"})
    assert account["status"] == "accepted"

    await lane.press("manual_lift")
    await wait_until(lambda: any(e["type"] == "manual_lift.refused" for e in site.journal.events("B1-IN")))
    assert await lane.force_through(NO_CARD) == "forced"
    await wait_until(lambda: len(closed(site)) == 5)

    forced = next(e for e in site.journal.events("B1-IN") if e.get("alarm") == "forced_passage")
    record(site, "B1-IN", "alarm.acknowledged", {"alarm_event_id": forced["event_id"], "alarm": "forced_passage",
                                                "by": "王保安", "note": "已报海关"})
    record(site, "B1-IN", "incident.opened", {"incident_id": "INC-1", "kind": "forced_passage", "reason": "闯卡"})
    record(site, "B1-IN", "incident.closed", {"incident_id": "INC-1", "by": "王保安", "summary": "车辆已拦回"})
    record(site, SITE_LANE, "shift.handover", {"outgoing": "赵保安", "incoming": "王保安", "notes": "视频监控正常",
                                              "open_alarms": [], "open_incidents": [], "open_tickets": []})
    record(site, SITE_LANE, "shift.check", {"phase": "start", "guard": "王保安", "remarks": "",
                                           "devices": {"B1-IN/card_reader": "ok"}})
    record(site, SITE_LANE, "video.note", {"guard": "王保安", "note": "监控画面正常"})
    record(site, SITE_LANE, "equipment.daily", {"date": now.date().isoformat(), "lane_id": "B1-IN",
                                               "device": "card_reader", "availability": 1.0, "faults": 0,
                                               "faulty_s": 0, "frames_dropped": 0, "checks": 1})
    record(site, "B1-IN", "ticket.opened", {"ticket_id": "T-1", "device": "weighbridge", "lane_id": "B1-IN",
                                           "reason": "silence", "source": "fault"})


async def test_a_lane_day_in_both_formats_matches_the_journal(daemon, tmp_path: Path) -> None:
    """R14: every passage of the journal exactly once, in both formats, with the Chinese
    headers, site-time times and the passages table's values; holds, manual and emergency
    lifts on their own sheets too; alarms, incidents, approvals, handovers, checks, the
    equipment ledger and tickets beside them. Exported from the running daemon's journal."""
    sim, site = daemon
    await drive_a_day(sim, site)
    today = datetime.now(TZ).date()
    start = today - timedelta(days=14)

    db = sqlite3.connect(site.journal.path)
    db.row_factory = sqlite3.Row
    journal_rows = {r["passage_id"]: dict(r) for r in db.execute("SELECT * FROM passages")}
    db.close()
    assert sorted(p["outcome"] for p in journal_rows.values()) == sorted(
        ["passed", "held", "manual", "emergency", "forced"])

    csv_result = export(site.journal, site.config, start, today, "csv", tmp_path / "台账.csv")
    xlsx_result = export(site.journal, site.config, start, today, "xlsx", tmp_path / "台账.xlsx")
    headers = [c.header for c in PASSAGE_COLUMNS]
    assert csv_header(tmp_path / "台账.csv") == headers
    assert xlsx_headers(tmp_path / "台账.xlsx")["卡口登记台账"] == headers
    book = read_xlsx(tmp_path / "台账.xlsx")
    csv_rows = read_csv(tmp_path / "台账.csv")
    assert csv_result.passages == xlsx_result.passages == len(journal_rows)

    for rows, as_text in [(csv_rows, True), (book["卡口登记台账"], False)]:
        ids = [r["通行编号"] for r in rows]
        assert sorted(ids) == sorted(journal_rows), "a passage missing or doubled"
        for r in rows:
            p = journal_rows[r["通行编号"]]
            when = datetime.fromisoformat(p["opened_at"]).astimezone(TZ).replace(tzinfo=None, microsecond=0)
            assert r["时间"] == (when.strftime("%Y-%m-%d %H:%M:%S") if as_text else when)
            blank = "" if as_text else None
            kg = p["gross_weight_kg"]
            assert r["毛重(kg)"] == (blank if kg is None else (f"{kg:g}" if as_text else kg))
            for header, column in [("IC卡号", "card"), ("放行指令号", "instruction_id"), ("核放单号", "form_id"),
                                   ("结果代码", "outcome"), ("授权类型代码", "auth_kind"), ("授权编号", "auth_id"),
                                   ("原因代码", "reason"), ("指令代码", "decision")]:
                assert r[header] == (blank if p[column] is None else p[column]), header
            assert r["通行结果"] == OUTCOME_ZH[p["outcome"]]
            assert (r["通道"], r["通道名称"], r["方向"]) == ("B1-IN", "保税货物进区1号", "进")
            if p["auth_kind"] != "emergency" or p["plate"]:  # R14: the plate read, nothing else
                assert r["车牌"] == (blank if p["plate"] is None else p["plate"])
        by = {r["结果代码"]: r for r in rows}
        assert by["passed"]["海关指令"] == "放行" and by["passed"]["授权类型"] == "海关放行指令"
        assert by["passed"]["放行指令号"]
        assert by["held"]["海关指令"] == "不予放行" and by["held"]["原因"] == "海关指令不予放行"
        assert "AP-LEDGER-1" in by["manual"]["备注"] and "审批车牌：云A99999" in by["manual"]["备注"]
        assert by["manual"]["授权类型"] == "审批抬杆"
        assert by["emergency"]["车牌"] == "云A119" and "消防车" in by["emergency"]["备注"]
        assert by["forced"]["通行结果"] == "闯卡"

    for sheet, outcome in [("不予放行", "held"), ("手动抬杆", "manual"), ("紧急放行", "emergency")]:
        assert [r["结果代码"] for r in book[sheet]] == [outcome]
    alarms = {r["告警代码"]: r for r in book["告警"]}
    assert {"forced_passage", "emergency_release"} <= set(alarms)
    assert alarms["forced_passage"]["告警"] == "闯卡" and alarms["forced_passage"]["确认人"] == "王保安"
    assert [r["动作"] for r in book["事件记录"]] == ["开启", "关闭"]
    assert [r["事项代码"] for r in book["审批"]] == ["approval.accepted", "manual_lift.refused"]
    assert book["交接班"][0]["接班人"] == "王保安"
    assert [r["记录"] for r in book["值班记录"]] == ["上岗检查", "视频监控记录"]
    assert book["设备台账"][0]["设备"] == "读卡器" and book["故障处理单"][0]["设备"] == "地磅"
    for name in ["告警", "事件记录", "审批", "交接班", "值班记录"]:
        assert len(read_csv(tmp_path / f"台账-{name}.csv")) == len(book[name]), name
