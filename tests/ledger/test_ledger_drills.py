"""R14: the plate read and each passage's own kind on the passages sheets, drills on a sheet
of their own (kept off every other), customs' hours orders, in csv and xlsx; a journal from
before those columns still exports."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import date, datetime, timedelta
from pathlib import Path

from gatectl.config import SiteConfig
from gatectl.journal import Entry, Journal
from gatectl.lane.commands import CommitAuthorisation
from gatectl.ledger import DRILLS, HOURS, export

from .conftest import read_csv, read_xlsx, record
from .synthetic import TZ
from journaling import write

DAY = date(2026, 11, 13)


def at(h: int, mi: int = 0) -> datetime:
    return datetime(2026, 11, 13, h, mi, tzinfo=TZ)


def passage(journal: Journal, lane: str, t: datetime, *, card: str | None, plate: str | None = None,
            lane_kind: str | None = None, drill: bool = False, auth: tuple[str, str] | None = None,
            outcome: str = "passed") -> str:
    """One passage as the lane core journals it, every lane event marked during a drill."""
    pid = str(uuid.uuid4())
    mark = {"drill": True} if drill else {}
    events = [Entry.of("passage.opened", t, {"passage_id": pid, "card": None, **mark})]
    if card:
        events.append(Entry.of("card.read", t, {"passage_id": pid, "card": card, **mark}))
    if plate:
        events.append(Entry.of("plate.read", t, {"passage_id": pid, "plate": plate, **mark}))
    if auth is None:
        instruction = f"CMD-{pid[:8]}"
        events.append(Entry.of("release.decided", t, {
            "source": "authority", "request_id": f"R-{pid[:8]}", "passage_id": pid, "decision": "release",
            "instruction_id": instruction, "form_id": "HF1", "hint": None, **mark,
            **({"lane_kind": lane_kind} if lane_kind else {})}))
        auth = ("release_instruction", instruction)
    write(journal, lane, events, authorisation=CommitAuthorisation(auth[0], auth[1], pid, t))
    write(journal, lane, [
        Entry.of("barrier.lifted", t, {"passage_id": pid, "reason": "lift",
                                       "authorisation": {"kind": auth[0], "id": auth[1]}, **mark}),
        Entry.of("passage.closed", t + timedelta(seconds=20), {
            "passage_id": pid, "outcome": outcome, "card": card, "gross_weight_kg": None, "decision": None,
            "authorisation": {"kind": auth[0], "id": auth[1]}, **mark,
            **({"plate": plate} if plate else {}), **({"lane_kind": lane_kind} if lane_kind else {})}),
    ])
    return pid


def a_day_with_a_drill(journal: Journal) -> dict[str, str]:
    ids = {
        "read": passage(journal, "B1-IN", at(8), card="0A0B0C0D0E", plate="云A12345"),
        "non_bonded": passage(journal, "B1-IN", at(8, 30), card="0A0B0C0D0F", plate="云A55555",
                              lane_kind="non_bonded"),
        "whitelisted": passage(journal, "A1-IN", at(8, 45), card="0100E2850E", auth=("whitelist", "w-1")),
    }
    record(journal, "B1-IN", "hours.ordered", at(9), open=False, until=at(18).isoformat(), reason="海关要求关闭",
           source="local_api", by="海关监控中心")
    record(journal, "B1-OUT", "drill.started", at(10), by="园区管理办", note="闯卡处置演练")
    ids["drill"] = passage(journal, "B1-OUT", at(10, 5), card="0A0B0C0D11", plate="云A00001", drill=True,
                           auth=("emergency", "e-drill"), outcome="emergency")
    ids["drill_alarm"] = record(journal, "B1-OUT", "alarm.raised", at(10, 6), alarm="forced_passage",
                                loop="exit_loop", state="occupied", drill=True)["event_id"]
    ids["real_alarm"] = record(journal, "B1-IN", "alarm.raised", at(10, 7), alarm="tailgating",
                               vehicles=2)["event_id"]
    record(journal, "B1-OUT", "drill.ended", at(10, 30), by="园区管理办", note="演练结束，设备复位")
    record(journal, "B1-IN", "hours.ordered", at(11), clear=True, source="mqtt", by="海关监控中心")
    return ids


def test_r14_plate_read_kind_per_passage_drills_and_hours_in_both_formats(
        config: SiteConfig, journal: Journal, tmp_path: Path) -> None:
    """R14: 车牌 is the plate read (a whitelist's plate is not a read: empty); 通道类型 is the
    passage's own kind; the drill's passage, alarm and lift are on 演练 alone, between its
    start and end rows (who, note), each naming the drill's start; customs' hours orders on
    开放时间指令; csv and xlsx agree."""
    ids = a_day_with_a_drill(journal)
    export(journal, config, DAY, DAY, "xlsx", tmp_path / "l.xlsx")
    export(journal, config, DAY, DAY, "csv", tmp_path / "l.csv")
    book = read_xlsx(tmp_path / "l.xlsx")

    by = {r["通行编号"]: r for r in book["卡口登记台账"]}
    assert set(by) == {ids["read"], ids["non_bonded"], ids["whitelisted"]}  # no drill passage
    assert (by[ids["read"]]["车牌"], by[ids["read"]]["通道类型"]) == ("云A12345", "保税")
    assert (by[ids["non_bonded"]]["车牌"], by[ids["non_bonded"]]["通道类型"]) == ("云A55555", "非保税")
    assert by[ids["whitelisted"]]["车牌"] is None and by[ids["whitelisted"]]["备注"] is None
    assert book["紧急放行"] == []  # the drill's emergency lift is no real one
    assert [r["告警代码"] for r in book["告警"]] == ["tailgating"]

    drill = book[DRILLS]
    assert [(r["记录代码"], r["通道"]) for r in drill] == [
        ("drill.started", "B1-OUT"), ("passage", "B1-OUT"), ("barrier.lifted", "B1-OUT"),
        ("alarm.raised", "B1-OUT"), ("drill.ended", "B1-OUT")]
    assert {r["演练开始"] for r in drill} == {datetime(2026, 11, 13, 10, 0)}
    assert (drill[0]["记录"], drill[0]["人员"], drill[0]["内容"]) == ("演练开始", "园区管理办", "闯卡处置演练")
    assert (drill[-1]["记录"], drill[-1]["内容"]) == ("演练结束", "演练结束，设备复位")
    assert drill[1]["通行编号"] == ids["drill"] and "车牌 云A00001" in drill[1]["内容"]
    assert "紧急放行" in drill[1]["内容"]
    assert drill[3]["事件编号"] == ids["drill_alarm"] and drill[3]["内容"].startswith("闯卡")

    hours = book[HOURS]
    assert [(r["指令代码"], r["通道"], r["下达人"]) for r in hours] == [
        ("close", "B1-IN", "海关监控中心"), ("clear", "B1-IN", "海关监控中心")]
    assert (hours[0]["指令"], hours[0]["截止时间"], hours[0]["原因"]) == ("关闭通道", "2026-11-13 18:00:00", "海关要求关闭")

    # CSV: the same rows, as text.
    assert [r["通行编号"] for r in read_csv(tmp_path / "l.csv")] == [r["通行编号"] for r in book["卡口登记台账"]]
    assert [r["车牌"] for r in read_csv(tmp_path / "l.csv")] == ["云A12345", "云A55555", ""]
    csv_drill = read_csv(tmp_path / f"l-{DRILLS}.csv")
    assert [r["记录代码"] for r in csv_drill] == [r["记录代码"] for r in drill]
    assert csv_drill[1]["演练开始"] == "2026-11-13 10:00:00"
    assert [r["指令代码"] for r in read_csv(tmp_path / f"l-{HOURS}.csv")] == ["close", "clear"]
    assert [r["告警代码"] for r in read_csv(tmp_path / "l-告警.csv")] == ["tailgating"]


def test_r14_a_drill_running_when_the_period_starts_still_names_its_start(
        config: SiteConfig, journal: Journal, tmp_path: Path) -> None:
    """R14: a drill begun the day before the period: what happens during it in the period is
    listed with that start."""
    record(journal, "B1-OUT", "drill.started", at(0) - timedelta(hours=1), by="园区管理办", note="夜间演练")
    pid = passage(journal, "B1-OUT", at(0, 10), card="0A0B0C0D11", drill=True)
    record(journal, "B1-OUT", "drill.ended", at(0, 40), by="园区管理办")
    export(journal, config, DAY, DAY, "xlsx", tmp_path / "l.xlsx")
    drill = read_xlsx(tmp_path / "l.xlsx")[DRILLS]
    assert [r["记录代码"] for r in drill] == ["passage", "barrier.lifted", "drill.ended"]
    assert drill[0]["通行编号"] == pid
    assert {r["演练开始"] for r in drill} == {datetime(2026, 11, 12, 23, 0)}


def test_r14_a_journal_without_plate_kind_and_drill_columns_still_exports(
        config: SiteConfig, journal: Journal, tmp_path: Path) -> None:
    """R14: a journal written before the passages table had plate, lane_kind and drill
    (schema 1) exports: those columns empty, no drill sheet rows."""
    pid = passage(journal, "B1-IN", at(8), card="0A0B0C0D0E", plate="云A12345")
    journal.close()
    db = sqlite3.connect(config.journal.path)
    for column in ("plate", "lane_kind", "drill"):
        db.execute(f"ALTER TABLE passages DROP COLUMN {column}")
    db.commit()
    db.close()
    for fmt in ("xlsx", "csv"):
        result = export(config.journal.path, config, DAY, DAY, fmt, tmp_path / f"old.{fmt}")
        assert result.passages == 1 and result.rows[DRILLS] == 0
    book = read_xlsx(tmp_path / "old.xlsx")
    (row,) = book["卡口登记台账"]
    assert (row["通行编号"], row["车牌"], row["通道类型"]) == (pid, None, "保税")
    assert book[DRILLS] == []
