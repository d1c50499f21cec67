"""Checkpoint ledger export (R14) at volume, against raw baselines in the same run.

    .venv/bin/python bench/ledger_export.py                 # 15 days x 4 lanes x 2,000 = 120k passages
    .venv/bin/python bench/ledger_export.py --per-lane-day 200 --workdir /tmp/ledger-bench

Builds the synthetic journal of ``tests/ledger/synthetic.py`` (straight SQL inserts in the
journal's schema and event shapes), then times, on the same file:

- ``raw csv``: ``SELECT * FROM passages`` of the period by ``opened_at`` into ``csv.writer``,
  nothing else: the floor for reading the journal and writing text;
- ``raw xlsx``: the same raw rows into openpyxl's write-only workbook: the floor for xlsx;
- ``ledger csv`` and ``ledger xlsx``: ``gatectl.ledger.export`` (site time, Chinese values,
  every part: alarms, incidents, approvals, handovers, …).

Prints seconds, passages per second and each time as a ratio to ``raw csv`` (and xlsx to
``raw xlsx``). Nothing is asserted: a benchmark reports, the tests check.
"""

from __future__ import annotations

import argparse
import csv
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from gatectl.config import load_config  # noqa: E402
from gatectl.ledger import export  # noqa: E402
from ledger.synthetic import build_journal, site_yaml  # noqa: E402  (tests/ledger/synthetic.py)

START = date(2026, 11, 13)
DAYS = 15


def raw_rows(journal: Path):
    db = sqlite3.connect(journal)
    try:
        lo, hi = START.isoformat(), (START + timedelta(days=DAYS)).isoformat()
        cur = db.execute("SELECT * FROM passages WHERE opened_at >= ? AND opened_at < ? ORDER BY opened_at", (lo, hi))
        yield [c[0] for c in cur.description]
        yield from cur
    finally:
        db.close()


def raw_csv(journal: Path, out: Path) -> int:
    n = -1
    with open(out, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        for n, row in enumerate(raw_rows(journal)):
            w.writerow(row)
    return n


def raw_xlsx(journal: Path, out: Path) -> int:
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet("passages")
    n = -1
    for n, row in enumerate(raw_rows(journal)):
        ws.append(list(row))
    wb.save(out)
    return n


def timed(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    best, rows = float("inf"), 0
    for _ in range(repeat):
        t = time.perf_counter()
        rows = fn()
        best = min(best, time.perf_counter() - t)
    return best, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-lane-day", type=int, default=2000, help="passages per lane per day (4 lanes, 15 days)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the best is shown")
    ap.add_argument("--workdir", help="keep the journal and the files here (default: a temporary directory)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        journal = work / "gatectl.db"
        for f in work.glob("gatectl.db*"):
            f.unlink()
        t = time.perf_counter()
        built = build_journal(journal, START, DAYS, args.per_lane_day)
        print(f"journal: {built.passages} passages, {built.events} events in the period, "
              f"{journal.stat().st_size / 1e6:.0f} MB, built in {time.perf_counter() - t:.1f} s")
        (work / "site.yaml").write_text(site_yaml("gatectl.db"), encoding="utf-8")
        config = load_config(work / "site.yaml")
        end = START + timedelta(days=DAYS - 1)

        runs = {
            "raw csv": lambda: raw_csv(journal, work / "raw.csv"),
            "raw xlsx": lambda: raw_xlsx(journal, work / "raw.xlsx"),
            "ledger csv": lambda: export(journal, config, START, end, "csv", work / "ledger.csv").passages,
            "ledger xlsx": lambda: export(journal, config, START, end, "xlsx", work / "ledger.xlsx").passages,
        }
        results = {name: timed(fn, args.repeat) for name, fn in runs.items()}
        base = results["raw csv"][0]
        print(f"{'':12} {'seconds':>8} {'rows':>8} {'rows/s':>9} {'x raw csv':>10} {'x raw xlsx':>11}")
        for name, (secs, rows) in results.items():
            vs_xlsx = f"{secs / results['raw xlsx'][0]:.2f}" if "xlsx" in name else ""
            print(f"{name:12} {secs:8.2f} {rows:8d} {rows / secs:9.0f} {secs / base:10.2f} {vs_xlsx:>11}")
        counts = {name: rows for name, (_, rows) in results.items()}
        if len(set(counts.values())) != 1:
            print(f"row counts differ: {counts}", file=sys.stderr)
            return 1
        print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
