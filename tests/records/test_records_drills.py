"""Drills in the records (R12, R13): an alarm raised during a drill opens no incident and no
ticket and is not handed over as a real open item; a fault that outlasts its drill is a real
one. And the ledger download of the local API (R14)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gatectl import ledger_download
from gatectl.api import make_app
from gatectl.ledger import PARTS

from .conftest import TOKEN, Synthetic

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(synthetic: Synthetic) -> AsyncIterator[TestClient]:
    app = make_app(synthetic.site, synthetic.records.setup_routes, ledger_download.setup_routes)
    async with TestClient(TestServer(app)) as c:
        yield c


def test_r12_drill_alarms_open_no_incident_and_are_not_handed_over(synthetic: Synthetic) -> None:
    """R12/R9: the same alarms, one real and one during a drill: only the real one opens an
    incident; the drill's is listed as drill and not carried into the handover."""
    syn = synthetic
    syn.lane_event("B1-IN", "drill.started", by="园区管理办", note="闯卡演练")
    drill = syn.lane_event("B1-IN", "alarm.raised", alarm="forced_passage", loop="exit_loop", state="occupied",
                           drill=True)
    syn.lane_event("B1-IN", "drill.ended", by="园区管理办")
    real = syn.lane_event("B1-IN", "alarm.raised", alarm="forced_passage", loop="exit_loop", state="occupied")
    store = syn.records.store
    incidents = store.incidents()
    assert [i["alarm_event_id"] for i in incidents] == [real["event_id"]]
    alarms = {a["event_id"]: a for a in store.alarms()}
    assert alarms[drill["event_id"]]["drill"] is True and alarms[real["event_id"]]["drill"] is False
    assert alarms[drill["event_id"]]["incident_id"] is None
    assert store.open_items()["open_alarms"] == [real["event_id"]]
    result = syn.records.perform("shift.handover", {"outgoing": "王保安", "incoming": "李保安"})
    (handover,) = syn.events("shift.handover")
    assert handover["open_alarms"] == [real["event_id"]] and result


def test_r13_a_drill_fault_opens_no_ticket_unless_it_outlasts_the_drill(synthetic: Synthetic) -> None:
    """R15/R13: a device fault during a drill opens no fault ticket; one still open when the
    drill ends is a real fault and gets its ticket then; one closed within the drill none."""
    syn = synthetic
    syn.lane_event("B1-IN", "drill.started", by="园区管理办")
    syn.lane_event("B1-IN", "fault.opened", device="card_reader", reason="no_answer", drill=True)
    syn.lane_event("B1-IN", "fault.closed", device="card_reader", drill=True)
    syn.lane_event("B1-IN", "fault.opened", device="weighbridge", reason="no_answer", drill=True)
    assert syn.records.store.tickets() == []
    assert syn.events("ticket.opened") == []
    syn.lane_event("B1-IN", "drill.ended", by="园区管理办")
    (ticket,) = syn.records.store.tickets()
    assert ticket["device"] == "weighbridge" and ticket["source"] == "fault"


async def test_r14_ledger_download_both_formats_and_refusals(synthetic: Synthetic, client: TestClient) -> None:
    """R14: GET /api/v1/ledger answers the period's ledger exported in the worker process:
    the workbook, or the CSV files zipped; a token is needed; bad or too long periods are 400."""
    syn = synthetic
    syn.lane_event("B1-IN", "drill.started", by="园区管理办", note="演练")
    day = syn.now.date().isoformat()
    url = f"/api/v1/ledger?from={day}&to={day}"
    assert (await client.get(url)).status == 401
    assert (await client.get(url, headers={"Authorization": "Bearer wrong"})).status == 403
    for query in ("from=2026-13-01", "from=20261101xx", f"from={day}&to=2026-01-01", "from=2026-01-01&to=2026-04-03",
                  f"from={day}&format=pdf", f"from={day}&from={day}", "since=1"):
        r = await client.get(f"/api/v1/ledger?{query}", headers=AUTH)
        assert r.status == 400 and (await r.json())["reason"] == "bad_query", query

    r = await client.get(url + "&format=xlsx", headers=AUTH)
    assert r.status == 200 and quote(f"卡口登记台账_rec-site_{day.replace('-', '')}") in r.headers["Content-Disposition"]
    from openpyxl import load_workbook

    book = load_workbook(io.BytesIO(await r.read()), read_only=True)
    assert "演练" in book.sheetnames and "开放时间指令" in book.sheetnames
    drill = list(book["演练"].iter_rows(values_only=True))
    assert drill[1][5] == "drill.started" and drill[1][6] == "园区管理办"
    book.close()

    r = await client.get(url + "&format=csv", headers=AUTH)
    assert r.status == 200 and r.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(await r.read())) as z:
        names = z.namelist()
        assert len(names) == sum(p.csv for p in PARTS) and any(n.endswith("-演练.csv") for n in names)
        (drills,) = [n for n in names if n.endswith("-演练.csv")]
        assert "drill.started" in z.read(drills).decode("utf-8-sig")
