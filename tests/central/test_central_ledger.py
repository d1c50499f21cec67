"""R14 for the zone: the zone ledger, read from a real PostgreSQL, has the lane ledger's sheets
and rows (plus the site), 车牌 and 演练 included: the same journal gives the same rows."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from gatectl.central.config import load_zone_config
from gatectl.central.ledger import export_zone
from gatectl.central.store import Incoming, Store
from gatectl.journal import Journal
from gatectl.ledger import DRILLS, HOURS, PASSAGES, Period, export
from ledger.conftest import make_config, read_xlsx
from ledger.synthetic import SITE_ID
from ledger.test_ledger_drills import DAY, a_day_with_a_drill


def test_r14_zone_ledger_has_the_lane_ledgers_plates_and_drills(tmp_path: Path, pg_url: str) -> None:
    """R14: a lane journal ingested into the central's PostgreSQL: the zone ledger's passages,
    演练 and 开放时间指令 rows are the lane ledger's, each with the site in front."""
    config = make_config(tmp_path)
    journal = Journal(config.journal.path, SITE_ID)
    try:
        a_day_with_a_drill(journal)
        export(journal, config, DAY, DAY, "xlsx", tmp_path / "lane.xlsx")
        bodies = [e for lane in [*(lane.id for lane in config.lanes), "_site"] for e in journal.events(lane)]
    finally:
        journal.close()
    import json

    store = Store(pg_url)
    store.connect()
    try:
        store.ingest([Incoming(e["event_id"], datetime.fromisoformat(e["ts"]), e["site_id"], e["lane_id"], e["seq"],
                               e["type"], json.dumps(e, ensure_ascii=False), f"gatectl/{SITE_ID}") for e in bodies])
        # The lanes' retained states: names, kinds and directions, as each lane PC publishes them.
        store.save_states([(f"gatectl/{SITE_ID}", SITE_ID, lane.id,
                            {"name": lane.name, "kind": lane.kind, "direction": lane.direction}, None)
                           for lane in config.lanes])
    finally:
        store.close()
    zone_yaml = tmp_path / "zone.yaml"
    zone_yaml.write_text("\n".join([
        "zone: {id: kmzb, name: 昆明综合保税区经开片区, timezone: Asia/Shanghai}",
        f"database: {{url: '{pg_url}'}}",
        "mqtt: {host: 127.0.0.1, port: 1883, client_id: c1, prefixes: ['gatectl/+']}",
        "http: {listen: '127.0.0.1:8490'}",
    ]) + "\n", encoding="utf-8")
    result = export_zone(load_zone_config(zone_yaml), Period(DAY, DAY), "xlsx", tmp_path / "zone.xlsx")
    lane, zone = read_xlsx(tmp_path / "lane.xlsx"), read_xlsx(tmp_path / "zone.xlsx")
    assert result.sites == [SITE_ID]
    for sheet, columns in [(PASSAGES, ("通行编号", "通道名称", "通道类型", "车牌", "通行结果", "授权编号")),
                           (DRILLS, ("时间", "通道", "演练开始", "记录代码", "人员", "内容", "通行编号", "事件编号")),
                           (HOURS, ("时间", "通道", "指令代码", "截止时间", "下达人"))]:
        assert [r["站点"] for r in zone[sheet]] == [SITE_ID] * len(lane[sheet]), sheet
        assert [tuple(r[c] for c in columns) for r in zone[sheet]] == [
            tuple(r[c] for c in columns) for r in lane[sheet]], sheet
    assert len(zone[DRILLS]) == 5 and any(r["车牌"] == "云A55555" for r in zone[PASSAGES])
