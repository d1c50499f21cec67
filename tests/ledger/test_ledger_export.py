"""R14 checkpoint ledger: what the export writes, from a journal written by ``Journal.write``.

Period bounds and time zones, the CSV layout (BOM, siblings, a directory as ``--out``),
Chinese values beside raw codes, the xlsx sheets, and the CLI's exit codes (CONTRACT 7).
"""

from __future__ import annotations

import argparse
import threading
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gatectl import ledger
from gatectl.config import SiteConfig
from gatectl.journal import Journal
from gatectl.ledger import PARTS, PASSAGE_COLUMNS, LedgerCancelled, LedgerError, Period, export, period_for

from .conftest import csv_header, read_csv, read_xlsx, record, write_passage, xlsx_headers
from .synthetic import TZ

UTC = timezone.utc
DAY = date(2026, 11, 13)
PASSAGE_HEADERS = [c.header for c in PASSAGE_COLUMNS]


def local(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=TZ)


def test_headers_are_chinese_and_name_every_required_field() -> None:
    """R14: time, lane, direction, card, plate, weight, decision, instruction, form, outcome,
    authorisation kind and id, remarks, each under its Chinese header."""
    for header in ["时间", "通道", "通道名称", "方向", "IC卡号", "车牌", "毛重(kg)", "海关指令", "放行指令号",
                   "核放单号", "通行结果", "结果代码", "授权类型", "授权编号", "原因", "备注"]:
        assert header in PASSAGE_HEADERS
    assert PASSAGE_HEADERS[0] == "时间"
    assert len({p.name for p in PARTS}) == len(PARTS)


def test_day_bounds_are_site_local_whatever_offset_the_journal_wrote(config: SiteConfig, journal: Journal,
                                                                     tmp_path: Path) -> None:
    """A passage belongs to the site-local day it opened on: one day's ledger holds exactly
    the passages from 00:00:00 to 23:59:59.999999 Asia/Shanghai, also those stamped in UTC,
    each shown in site time."""
    inside = {
        write_passage(journal, "B1-IN", local(2026, 11, 13, 0, 0, 0)): "2026-11-13 00:00:00",
        write_passage(journal, "B1-OUT", datetime(2026, 11, 12, 16, 0, 0, tzinfo=UTC)): "2026-11-13 00:00:00",
        write_passage(journal, "E1-IN", datetime(2026, 11, 13, 4, 30, 15, 250000, tzinfo=UTC)): "2026-11-13 12:30:15",
        write_passage(journal, "B1-IN", datetime(2026, 11, 13, 15, 59, 59, 999999, tzinfo=UTC)): "2026-11-13 23:59:59",
        write_passage(journal, "A1-IN", local(2026, 11, 13, 23, 59, 59, 999999), card="0100E2850E"):
            "2026-11-13 23:59:59",
    }
    outside = [
        write_passage(journal, "B1-IN", local(2026, 11, 12, 23, 59, 59, 999999)),
        write_passage(journal, "B1-OUT", datetime(2026, 11, 12, 15, 59, 59, tzinfo=UTC)),
        write_passage(journal, "E1-IN", datetime(2026, 11, 13, 16, 0, 0, tzinfo=UTC)),
        write_passage(journal, "B1-IN", local(2026, 11, 14)),
    ]
    result = export(journal, config, DAY, DAY, "csv", tmp_path / "day.csv")
    rows = read_csv(tmp_path / "day.csv")
    assert result.passages == len(rows) == len(inside)
    assert {r["通行编号"]: r["时间"] for r in rows} == inside
    assert not {r["通行编号"] for r in rows} & set(outside)
    # Two days take the earlier ones too; nothing twice.
    export(journal, config, DAY - timedelta(days=1), DAY, "xlsx", tmp_path / "two.xlsx")
    ids = [r["通行编号"] for r in read_xlsx(tmp_path / "two.xlsx")["卡口登记台账"]]
    assert len(ids) == len(set(ids)) == len(inside) + 2


def test_rows_in_time_order_with_chinese_values_beside_raw_codes(config: SiteConfig, journal: Journal,
                                                                 tmp_path: Path) -> None:
    passed = write_passage(journal, "B1-IN", local(2026, 11, 13, 9), instruction="CMD-1", form="HF1")
    held = write_passage(journal, "B1-OUT", local(2026, 11, 13, 10), "held", decision="inspect",
                         hint="请到待检区", reason="inspect")
    admin = write_passage(journal, "A1-IN", local(2026, 11, 13, 11), card="0100E2850E", kg=1700.0,
                          form=None, hint=None, auth=("whitelist", "w-1"))
    backed = write_passage(journal, "E1-IN", local(2026, 11, 13, 8), "backed_out", kg=None, decision=None,
                           reason="left_after_lift")
    export(journal, config, DAY, DAY, "csv", tmp_path / "l.csv")
    rows = read_csv(tmp_path / "l.csv")
    assert csv_header(tmp_path / "l.csv") == PASSAGE_HEADERS
    assert [r["通行编号"] for r in rows] == [backed, passed, held, admin]  # by time
    by = {r["通行编号"]: r for r in rows}
    r = by[passed]
    assert (r["通道"], r["通道名称"], r["通道类型"], r["方向"]) == ("B1-IN", "保税货物进区1号", "保税", "进")
    assert (r["IC卡号"], r["毛重(kg)"], r["海关指令"], r["指令代码"]) == ("0A0B0C0D0E", "31250", "放行", "release")
    assert (r["放行指令号"], r["核放单号"], r["海关提示"]) == ("CMD-1", "HF1", "核放通过")
    assert (r["通行结果"], r["结果代码"], r["授权类型"], r["授权类型代码"], r["授权编号"]) == (
        "已通行", "passed", "海关放行指令", "release_instruction", "CMD-1")
    assert (r["时间"], r["离开时间"]) == ("2026-11-13 09:00:00", "2026-11-13 09:00:20")
    r = by[held]
    assert (r["方向"], r["海关指令"], r["通行结果"], r["结果代码"]) == ("出", "待检", "不予放行", "held")
    assert (r["原因"], r["原因代码"], r["授权编号"]) == ("海关指令待检", "inspect", "")
    r = by[admin]
    # R14: the whitelist's plate is not a read: no camera, no plate.
    assert (r["车牌"], r["授权类型"], r["通道类型"], r["备注"]) == ("", "行政车辆白名单", "行政", "")
    r = by[backed]
    assert (r["通行结果"], r["原因"], r["毛重(kg)"]) == ("倒车离开", "抬杆后车辆离开", "")


def test_emergency_and_manual_lifts_carry_plate_and_account(config: SiteConfig, journal: Journal,
                                                            tmp_path: Path) -> None:
    """R10, R11: a manual lift names its approval (and the plate it was issued for) and who
    requested, verified and approved it; an emergency release the guard's account (vehicle
    type, plate: the plate column, no camera having read one) given afterwards,
    even after the period; one without an account says so."""
    import json

    doc = {"approval_id": "AP-1", "reason": "network_fault", "detail": "专网中断", "plate": "云A99999",
           "requested_by": {"org": "某某物流", "name": "张三"}, "verified_by": {"org": "运维单位", "name": "李四"},
           "approved_by": {"org": "昆明海关", "name": "王五"}, "countersigned_by": None}
    journal.store_approval("AP-1", "B1-IN", "panel", 1, local(2026, 11, 13), local(2026, 11, 14),
                           json.dumps(doc, ensure_ascii=False), local(2026, 11, 13)).result()
    manual = write_passage(journal, "B1-IN", local(2026, 11, 13, 9), "manual", card=None, kg=None, decision=None,
                           auth=("approval", "AP-1#1"), opened_data={"approval_id": "AP-1"})
    fire = write_passage(journal, "B1-OUT", local(2026, 11, 13, 10), "emergency", card=None, kg=None,
                         decision=None, auth=("emergency", "e-1"), opened_data={"emergency": True})
    other = write_passage(journal, "B1-OUT", local(2026, 11, 13, 11), "emergency", card=None, kg=None,
                          decision=None, auth=("emergency", "e-2"), opened_data={"emergency": True})
    record(journal, "B1-OUT", "emergency.account", local(2026, 11, 15, 8), passage_id=fire, vehicle_type="消防车",
           plate="云A119", note="火警", by="王保安")
    export(journal, config, DAY, DAY, "xlsx", tmp_path / "l.xlsx")
    book = read_xlsx(tmp_path / "l.xlsx")
    by = {r["通行编号"]: r for r in book["卡口登记台账"]}
    # The approval's plate is what it was issued for, not a read: a remark, not the plate.
    assert by[manual]["车牌"] is None and by[manual]["通行结果"] == "手动抬杆"
    assert by[manual]["备注"] == ("审批 AP-1（网络故障：专网中断）；审批车牌：云A99999；申请：某某物流 张三；"
                                  "核实：运维单位 李四；批准：昆明海关 王五")
    assert by[fire]["车牌"] == "云A119" and by[fire]["备注"] == "特种车辆：消防车；火警；登记人：王保安"
    assert by[other]["车牌"] is None and by[other]["备注"] == "特种车辆信息未登记"
    assert [r["通行编号"] for r in book["手动抬杆"]] == [manual]
    assert [r["通行编号"] for r in book["紧急放行"]] == [fire, other]
    assert book["不予放行"] == []


def test_records_become_their_own_parts(config: SiteConfig, journal: Journal, tmp_path: Path) -> None:
    """Alarms with their acknowledgement, incidents, approvals and refused manual lifts,
    handovers, shift checks, the daily equipment ledger and fault tickets (R13-R15)."""
    t = local(2026, 11, 13, 10)
    alarm = record(journal, "B1-IN", "alarm.raised", t, alarm="forced_passage", loop="safety_loop", state="idle")
    record(journal, "B1-IN", "alarm.acknowledged", local(2026, 11, 14, 9), alarm_event_id=alarm["event_id"],
           alarm="forced_passage", by="王保安", note="已通知海关")
    record(journal, "B1-IN", "alarm.raised", t + timedelta(minutes=1), alarm="tailgating", vehicles=2)
    # Opened the day before: its later steps still name its kind.
    record(journal, "B1-OUT", "incident.opened", local(2026, 11, 12, 23), incident_id="INC-1", kind="barrier_fault",
           reason="up_timeout")
    record(journal, "B1-OUT", "incident.updated", t, incident_id="INC-1",
           account={"by": "王保安", "what": "电机过热", "plate": None, "photos": [], "notified": ["customs", "park"]})
    record(journal, "B1-OUT", "incident.closed", t + timedelta(hours=1), incident_id="INC-1", by="李运维",
           summary="已更换保险")
    record(journal, "B1-IN", "approval.accepted", t, approval_id="AP-9", trigger="remote", max_lifts=1,
           lifts_used=0, valid_from=datetime(2026, 11, 13, 1, tzinfo=UTC).isoformat(),
           valid_until=datetime(2026, 11, 13, 3, tzinfo=UTC).isoformat(), plate=None)
    record(journal, "_site", "approval.refused", t, approval_id="AP-X", reason="unknown_lane", message="no lane",
           source="mqtt", lane="Z9-IN")
    record(journal, "E1-IN", "manual_lift.refused", t, reason="no_valid_approval")
    record(journal, "_site", "shift.handover", local(2026, 11, 13, 8), outgoing="赵保安", incoming="王保安",
           notes="视频正常", open_alarms=[alarm["event_id"]], open_incidents=["INC-1"], open_tickets=[])
    record(journal, "_site", "shift.check", local(2026, 11, 13, 8), phase="start", guard="王保安", remarks="",
           devices={"B1-IN/card_reader": "ok", "B1-IN/weighbridge": "faulty"})
    record(journal, "_site", "video.note", local(2026, 11, 13, 9), guard="王保安", note="B1-IN 视频正常")
    record(journal, "_site", "equipment.daily", local(2026, 11, 14, 0, 5), date="2026-11-13", lane_id="B1-IN",
           device="weighbridge", availability=0.98, faults=1, faulty_s=600, frames_dropped=3, checks=2)
    record(journal, "_site", "equipment.daily", local(2026, 11, 13, 0, 5), date="2026-11-12", lane_id="B1-IN",
           device="weighbridge", availability=1.0, faults=0, faulty_s=0, frames_dropped=0, checks=2)
    record(journal, "B1-OUT", "ticket.opened", t, ticket_id="T-1", device="barrier", lane_id="B1-OUT",
           reason="up_timeout", source="fault")
    record(journal, "B1-OUT", "ticket.advanced", t + timedelta(minutes=30), ticket_id="T-1", by="王保安", note="",
           parties=["customs", "om"], at=datetime(2026, 11, 13, 2, 20, tzinfo=UTC).isoformat(),
           **{"from": "reported", "to": "notified"})
    record(journal, "B1-OUT", "ticket.advanced", t + timedelta(hours=1), ticket_id="T-1", by="李运维", note="",
           cause="电机过热", solution="更换保险", category="hardware", **{"from": "diagnosing", "to": "fixed"})
    record(journal, "B1-IN", "alarm.raised", local(2026, 11, 14, 1), alarm="tailgating")  # another day

    out = tmp_path / "l.xlsx"
    result = export(journal, config, DAY, DAY, "xlsx", out)
    book = read_xlsx(out)
    assert list(book) == [p.name for p in PARTS] + ["说明"]
    alarms = book["告警"]
    assert [(a["告警"], a["告警代码"]) for a in alarms] == [("闯卡", "forced_passage"), ("跟车", "tailgating")]
    assert (alarms[0]["确认人"], alarms[0]["确认备注"], alarms[0]["确认时间"]) == (
        "王保安", "已通知海关", datetime(2026, 11, 14, 9))
    assert alarms[0]["详情"] == "loop：safety_loop；state：idle" and alarms[1]["确认人"] is None
    incidents = book["事件记录"]
    assert [(i["动作"], i["类型"], i["内容"], i["处理人"]) for i in incidents] == [
        ("处置", "道闸故障", "经过：电机过热；已通知：海关、园区管理方", "王保安"), ("关闭", "道闸故障", "已更换保险", "李运维")]
    approvals = book["审批"]
    assert [(a["事项"], a["通道"], a["原因"]) for a in approvals] == [
        ("审批通过", "B1-IN", None), ("审批被拒", "Z9-IN", "通道不存在"), ("手动抬杆被拒", "E1-IN", "无有效审批")]
    assert approvals[0]["详情"] == "有效期 2026-11-13 09:00:00 至 2026-11-13 11:00:00；可抬杆 1 次"
    assert approvals[0]["触发方式"] == "远程放行"
    (handover,) = book["交接班"]
    assert (handover["交班人"], handover["接班人"], handover["移交未结事件"]) == ("赵保安", "王保安", "1项：INC-1")
    assert handover["移交未结故障单"] == "0项"
    assert [(d["记录"], d["设备情况"], d["内容"]) for d in book["值班记录"]] == [
        ("上岗检查", "B1-IN/card_reader: 正常；B1-IN/weighbridge: 故障", None), ("视频监控记录", None, "B1-IN 视频正常")]
    (equipment,) = book["设备台账"]
    assert (equipment["日期"], equipment["设备"], equipment["可用率(%)"], equipment["故障时长(秒)"]) == (
        "2026-11-13", "地磅", 98.0, 600)
    assert equipment["当日班次检查(次)"] == 2
    tickets = book["故障处理单"]
    assert [(x["动作"], x["状态"], x["设备"], x["处理人"]) for x in tickets] == [
        ("开单", "已上报", "道闸", None), ("流转", "已上报→已通报", "道闸", "王保安"), ("流转", "排查中→已修复", "道闸", "李运维")]
    assert tickets[0]["来源"] == "设备自动报障"
    assert tickets[1]["内容"] == "通报对象：海关、运维单位；通报时间：2026-11-13 10:20:00"
    assert tickets[2]["内容"] == "故障原因：电机过热；解决方案：更换保险；故障类别：硬件故障"
    assert result.rows["告警"] == 2 and result.rows["设备台账"] == 1
    notes = {r["项目"]: r["内容"] for r in book["说明"]}
    assert notes["站点"] == "kmzb-jk" and notes["台账期间"].startswith("2026-11-13 至 2026-11-13")
    assert "Asia/Shanghai" in notes["时区"]


def test_csv_layout_siblings_bom_and_a_directory_as_out(config: SiteConfig, journal: Journal,
                                                       tmp_path: Path) -> None:
    """CSV: ``out`` is the passages file, each other CSV part ``{stem}-{part}.csv`` beside it,
    header-only when empty; a directory gets files named by site and period."""
    write_passage(journal, "B1-IN", local(2026, 11, 13, 9))
    result = export(journal, config, DAY, DAY, "csv", tmp_path / "台账.csv")
    names = sorted(p.name for p in result.files)
    assert names == sorted(["台账.csv"] + [f"台账-{p.name}.csv" for p in PARTS if p.csv and p.name != "卡口登记台账"])
    assert names == sorted(["台账.csv", "台账-告警.csv", "台账-事件记录.csv", "台账-审批.csv", "台账-交接班.csv",
                            "台账-值班记录.csv", "台账-开放时间指令.csv", "台账-演练.csv"])
    for path in result.files:
        assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_csv(tmp_path / "台账-告警.csv") == []
    assert csv_header(tmp_path / "台账-告警.csv")[:4] == ["时间", "通道", "通道名称", "告警"]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left

    outdir = tmp_path / "exports"
    outdir.mkdir()
    result = export(journal, config, DAY, DAY + timedelta(days=14), "csv", outdir)
    assert result.path == outdir / "卡口登记台账_kmzb-jk_20261113-20261127.csv"
    assert (outdir / "卡口登记台账_kmzb-jk_20261113-20261127-交接班.csv").exists()
    result = export(journal, config, DAY, DAY + timedelta(days=14), "xlsx", outdir)
    assert result.path == outdir / "卡口登记台账_kmzb-jk_20261113-20261127.xlsx" and result.files == [result.path]


def test_text_that_looks_like_a_formula_stays_text(config: SiteConfig, journal: Journal, tmp_path: Path) -> None:
    """A guard's note starting with "=" is shown as written, never run by a spreadsheet."""
    record(journal, "_site", "shift.handover", local(2026, 11, 13, 8), outgoing="=1+1", incoming="@王",
           notes="-2", open_alarms=[], open_incidents=[], open_tickets=[])
    export(journal, config, DAY, DAY, "csv", tmp_path / "l.csv")
    (row,) = read_csv(tmp_path / "l-交接班.csv")
    assert (row["交班人"], row["接班人"], row["值班记录"]) == ("'=1+1", "'@王", "'-2")
    export(journal, config, DAY, DAY, "xlsx", tmp_path / "l.xlsx")
    (row,) = read_xlsx(tmp_path / "l.xlsx")["交接班"]
    assert (row["交班人"], row["接班人"]) == ("=1+1", "@王")


def test_xlsx_sheets_have_header_frozen_panes_widths_filters_and_date_cells(config: SiteConfig,
                                                                          journal: Journal,
                                                                          tmp_path: Path) -> None:
    from openpyxl import load_workbook

    for h in range(3):
        write_passage(journal, "B1-IN", local(2026, 11, 13, 9 + h))
    export(journal, config, DAY, DAY, "xlsx", tmp_path / "l.xlsx")
    headers = xlsx_headers(tmp_path / "l.xlsx")
    for part in PARTS:
        assert headers[part.name] == [c.header for c in part.columns]
    wb = load_workbook(tmp_path / "l.xlsx")
    ws = wb["卡口登记台账"]
    assert ws.freeze_panes == "B2" and ws.auto_filter.ref == "A1:W4"
    assert ws["A1"].font.b and ws.column_dimensions["A"].width == 20
    assert ws["A2"].is_date and ws["A2"].value == datetime(2026, 11, 13, 9)
    assert ws["I2"].value == 31250  # a number, not text
    assert wb["设备台账"].freeze_panes == "A2"


def test_a_part_longer_than_a_sheet_continues_on_the_next(config: SiteConfig, journal: Journal, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger, "XLSX_MAX_ROWS", 3)  # header + 2 rows per sheet
    ids = [write_passage(journal, "B1-IN", local(2026, 11, 13, 9, m)) for m in range(5)]
    export(journal, config, DAY, DAY, "xlsx", tmp_path / "l.xlsx")
    book = read_xlsx(tmp_path / "l.xlsx")
    sheets = ["卡口登记台账", "卡口登记台账(2)", "卡口登记台账(3)"]
    assert [r["通行编号"] for s in sheets for r in book[s]] == ids


def test_an_empty_period_writes_every_part_with_its_header(config: SiteConfig, journal: Journal,
                                                          tmp_path: Path) -> None:
    result = export(journal, config, DAY, DAY, "xlsx", tmp_path / "l.xlsx")
    assert result.passages == 0 and set(read_xlsx(tmp_path / "l.xlsx")) == {p.name for p in PARTS} | {"说明"}


def test_a_stopped_export_leaves_nothing(config: SiteConfig, journal: Journal, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger, "STOP_CHECK_ROWS", 1)
    write_passage(journal, "B1-IN", local(2026, 11, 13, 9))
    stop = threading.Event()
    stop.set()
    for fmt in ("csv", "xlsx"):
        with pytest.raises(LedgerCancelled):
            export(journal, config, DAY, DAY, fmt, tmp_path / f"l.{fmt}", stop=stop)
    assert not list(tmp_path.glob("l*")) and not list(tmp_path.glob(".l*"))  # no file, whole or partial


def test_bad_periods_formats_and_places(config: SiteConfig, journal: Journal, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ends"):
        export(journal, config, DAY, DAY - timedelta(days=1), "csv", tmp_path / "l.csv")
    with pytest.raises(ValueError, match="csv or xlsx"):
        export(journal, config, DAY, DAY, "pdf", tmp_path / "l.pdf")
    with pytest.raises(LedgerError, match="no directory"):
        export(journal, config, DAY, DAY, "csv", tmp_path / "nowhere" / "l.csv")
    with pytest.raises(LedgerError, match="no journal"):
        export(tmp_path / "missing.db", config, DAY, DAY, "csv", tmp_path / "l.csv")


def test_exports_from_a_path_a_journal_or_a_connection_agree(config: SiteConfig, journal: Journal,
                                                           tmp_path: Path) -> None:
    for h in range(4):
        write_passage(journal, "B1-IN", local(2026, 11, 13, h))
    outs = []
    for i, source in enumerate([journal, config.journal.path, journal.db]):
        export(source, config, DAY, DAY, "csv", tmp_path / f"{i}.csv")
        outs.append((tmp_path / f"{i}.csv").read_bytes())
    assert outs[0] == outs[1] == outs[2]
    assert not journal.db.in_transaction  # the journal's own connection is left as it was


# --------------------------------------------------------------------------------------
# CLI (CONTRACT 7)


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gatectl")
    ledger.add_subcommands(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return args.func(args)


def test_cli_exports_and_exits_by_the_contract(config: SiteConfig, journal: Journal, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """0 written, 1 runtime failure (no journal, nowhere to write), 2 bad usage or config."""
    cfg = str(tmp_path / "site.yaml")
    pid = write_passage(journal, "B1-IN", local(2026, 11, 13, 9))
    assert cli("ledger", "export", "--config", cfg, "--from", "2026-11-13", "--to", "2026-11-13",
               "--format", "csv", "--out", str(tmp_path / "a.csv")) == 0
    assert [r["通行编号"] for r in read_csv(tmp_path / "a.csv")] == [pid]
    out = capsys.readouterr().out
    assert "2026-11-13..2026-11-13: 1 passages" in out and str(tmp_path / "a-告警.csv") in out
    # --format from the suffix; --from alone: 15 days from it.
    assert cli("ledger", "export", "--config", cfg, "--from", "2026-11-01", "--out", str(tmp_path / "b.xlsx")) == 0
    assert "2026-11-01..2026-11-15: 1 passages" in capsys.readouterr().out
    assert cli("ledger", "export", "--config", cfg, "--out", str(tmp_path)) == 2  # no format
    assert cli("ledger", "export", "--config", cfg, "--from", "2026-13-01", "--out", str(tmp_path / "c.csv")) == 2
    assert cli("ledger", "export", "--config", cfg, "--from", "2026-11-14", "--to", "2026-11-13",
               "--out", str(tmp_path / "c.csv")) == 2
    assert cli("ledger", "export", "--config", cfg, "--format", "pdf", "--out", str(tmp_path / "c.csv")) == 2
    assert cli("ledger", "export", "--out", str(tmp_path / "c.csv")) == 2  # no --config
    (tmp_path / "bad.yaml").write_text("site: {id: X}\n", encoding="utf-8")
    assert cli("ledger", "export", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "c.csv")) == 2
    assert cli("ledger", "export", "--config", cfg, "--out", str(tmp_path / "no" / "c.csv")) == 1
    capsys.readouterr()
    journal.close()
    for f in tmp_path.glob("gatectl.db*"):
        f.unlink()
    assert cli("ledger", "export", "--config", cfg, "--out", str(tmp_path / "c.csv")) == 1
    assert "no journal" in capsys.readouterr().err
    assert not (tmp_path / "gatectl.db").exists()  # an export never creates a journal


def test_cli_default_period_is_the_15_days_ending_today() -> None:
    today = date(2026, 11, 27)
    assert period_for(today, None, None) == Period(date(2026, 11, 13), today)
    assert period_for(today, date(2026, 11, 1), None) == Period(date(2026, 11, 1), date(2026, 11, 15))
    assert period_for(today, None, date(2026, 11, 20)) == Period(date(2026, 11, 6), date(2026, 11, 20))
    assert period_for(today, date(2026, 11, 1), date(2026, 11, 2)) == Period(date(2026, 11, 1), date(2026, 11, 2))


def test_ledger_commands_join_an_existing_ledger_group() -> None:
    """Another module may own ``ledger``; ``export`` joins its group."""
    parser = argparse.ArgumentParser(prog="gatectl")
    group = parser.add_subparsers(dest="command").add_parser("ledger").add_subparsers(dest="ledger_cmd")
    group.add_parser("equipment")
    ledger.add_ledger_commands(group)
    args = parser.parse_args(["ledger", "export", "--config", "x.yaml", "--out", "y.csv"])
    assert args.func is ledger.cmd_export and args.start is None and args.format is None
