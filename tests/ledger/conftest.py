"""Ledger test helpers: a config for the synthetic site, a journal written through the
real ``Journal.write`` (so the passages projection is the daemon's own), and readers for
both export formats."""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gatectl.config import SiteConfig, load_config
from gatectl.journal import Entry, Journal
from gatectl.lane.commands import CommitAuthorisation

from .synthetic import SITE_ID, site_yaml
from journaling import write


def make_config(tmp_path: Path, ledger: str = "") -> SiteConfig:
    path = tmp_path / "site.yaml"
    path.write_text(site_yaml("gatectl.db", ledger), encoding="utf-8")
    return load_config(path)


@pytest.fixture
def config(tmp_path: Path) -> SiteConfig:
    return make_config(tmp_path)


@pytest.fixture
def journal(config: SiteConfig) -> Iterator[Journal]:
    j = Journal(config.journal.path, SITE_ID)
    yield j
    j.close()


def write_passage(
    journal: Journal,
    lane: str,
    opened: datetime,
    outcome: str = "passed",
    *,
    card: str | None = "0A0B0C0D0E",
    kg: float | None = 31250.0,
    decision: str | None = "release",
    instruction: str | None = None,
    form: str | None = "HF5301000001",
    hint: str | None = "核放通过",
    auth: tuple[str, str] | None = None,
    reason: str | None = None,
    opened_data: dict[str, Any] | None = None,
) -> str:
    """One passage the way the lane core journals it; returns its passage_id."""
    pid = str(uuid.uuid4())
    t = opened
    events = [Entry.of("passage.opened", t, {"passage_id": pid, "card": None, **(opened_data or {})})]
    if card is not None:
        events.append(Entry.of("card.read", t, {"passage_id": pid, "card": card}))
    if kg is not None:
        events.append(Entry.of("weight.stable", t, {"passage_id": pid, "gross_weight_kg": kg}))
    if decision is not None:
        if outcome == "passed" and instruction is None:
            instruction = f"CMD-{pid[:8]}"
        events.append(Entry.of("release.decided", t, {
            "source": "authority", "request_id": f"R-{pid[:8]}", "passage_id": pid, "decision": decision,
            "instruction_id": instruction, "form_id": form, "hint": hint,
        }))
    if auth is None and instruction is not None and outcome == "passed":
        auth = ("release_instruction", instruction)
    if auth is not None:
        # Consumed after the decision, before the vehicle moves (S6), as the lane does.
        write(journal, lane, events, authorisation=CommitAuthorisation(auth[0], auth[1], pid, t))
        events = []
    if outcome == "held":
        events.append(Entry.of("passage.held", t, {"passage_id": pid, "reason": reason, "display": "不予放行"}))
    closed = {"passage_id": pid, "outcome": outcome, "card": card, "gross_weight_kg": kg, "decision": decision,
              "authorisation": None if auth is None else {"kind": auth[0], "id": auth[1]}}
    if reason is not None:
        closed["reason"] = reason
    events.append(Entry.of("passage.closed", t + timedelta(seconds=20), closed))
    write(journal, lane, events)
    return pid


def record(journal: Journal, lane_id: str, type_: str, t: datetime, /, **data: Any) -> dict:
    """One record event (what ``Site.record`` journals), at ``t``."""
    return write(journal, lane_id, [Entry.of(type_, t, data)])[0]


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a ledger CSV by header; checks the BOM is there."""
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf", f"{path.name}: no UTF-8 BOM"
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def csv_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return next(csv.reader(f))


def read_xlsx(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every sheet of a ledger workbook as rows by header."""
    from openpyxl import load_workbook

    wb = load_workbook(path, read_only=True)
    out: dict[str, list[dict[str, Any]]] = {}
    for ws in wb.worksheets:
        rows = ws.iter_rows(values_only=True)
        header = list(next(rows))
        # A streamed sheet has no <dimension>: a row ends at its last value.
        out[ws.title] = [dict(zip(header, row + (None,) * (len(header) - len(row)))) for row in rows]
    wb.close()
    return out


def xlsx_headers(path: Path) -> dict[str, list[str]]:
    from openpyxl import load_workbook

    wb = load_workbook(path, read_only=True)
    try:
        return {ws.title: list(next(ws.iter_rows(values_only=True))) for ws in wb.worksheets}
    finally:
        wb.close()
