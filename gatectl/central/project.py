"""Passages of the zone, projected with the lane's own fold.

The lane journal keeps its ``passages`` table with ``gatectl.lane.passage.fold``; the
central applies exactly that function to each lane's events in ``seq`` order, and only to
contiguous ones (never past a gap), so lane and zone ledgers cannot disagree. A fold
record is stored whole (``passages.record``, JSON) and read back into the same frozen
dataclass when a lane's folding resumes in another transaction or instance.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from datetime import datetime
from typing import Any

from gatectl.events import decode
from gatectl.lane.passage import COLUMNS, PassageRecord, fold

__all__ = ["PassageRecord", "fold_events", "record_json", "record_from_json"]


@functools.cache
def _datetime_fields() -> frozenset[str]:
    hints = typing.get_type_hints(PassageRecord)
    out = set()
    for name, hint in hints.items():
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        if datetime in args:
            out.add(name)
    return frozenset(out)


def record_json(record: PassageRecord) -> dict[str, Any]:
    """The record as JSON values (time stamps as ISO text)."""
    out = {}
    for name in COLUMNS:
        value = getattr(record, name)
        out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def record_from_json(data: dict[str, Any]) -> PassageRecord:
    """The record ``record_json`` stored (keys the dataclass does not know are ignored)."""
    stamps = _datetime_fields()
    kwargs = {}
    for f in dataclasses.fields(PassageRecord):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name in stamps and isinstance(value, str):
            value = datetime.fromisoformat(value)
        kwargs[f.name] = value
    return PassageRecord(**kwargs)


def fold_events(record: PassageRecord | None, bodies: list[dict]) -> tuple[PassageRecord | None,
                                                                            dict[str, PassageRecord], list[str]]:
    """Fold one lane's contiguous events (``seq`` order) into its passages.

    Returns the record to resume from, every record the events touched (by passage id;
    the last state of each), and the problems met: an event the typed schema cannot
    decode is skipped and named, never allowed to stop a lane's projection.
    """
    touched: dict[str, PassageRecord] = {}
    problems: list[str] = []
    for body in bodies:
        try:
            stamped = decode(body)
        except Exception as exc:  # noqa: BLE001 - a lane newer than the central: its events stay stored
            problems.append(f"{body.get('type')} seq {body.get('seq')}: {exc}")
            continue
        new = fold(record, stamped)
        if new is not None and new is not record:
            touched[new.passage_id] = new
        record = new
    return record, touched, problems
