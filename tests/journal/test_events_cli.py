"""``gatectl events`` on a damaged journal (#13, item 8): a row whose body is not JSON is
reported with the file, the lane and the seq, the other events are still printed, the exit
status is 1, and there is no traceback. A 0-byte or foreign file is reported and left as
it was (reading never creates a journal), and a seq SQLite cannot hold is a usage error.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from gatectl.cli import main
from gatectl.journal import Entry, Journal

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A config whose journal holds B1-IN seq 1-3 and A1-IN seq 1."""
    config = tmp_path / "site.yaml"
    config.write_text("""\
site: {id: s, name: S}
journal: {path: gatectl.db}
io_modules: {io1: {protocol: modbus-tcp, host: 127.0.0.1}}
staff: [{card: "AA", name: x}]
lanes:
  - {id: B1-IN, name: b, kind: personnel, direction: in, channel_no: "1",
     card_reader: {port: /dev/null, format: ascii-line},
     points: {arrival_loop: io1:di:0, safety_loop: io1:di:1, barrier_up: io1:di:2, barrier_down: io1:di:3,
              barrier_open: io1:coil:0, barrier_close: io1:coil:1}}
""", encoding="utf-8")
    journal = Journal(tmp_path / "gatectl.db", "s")
    for n in range(3):
        journal.write("B1-IN", [Entry.of("test.event", NOW, {"n": n})])
    journal.write("A1-IN", [Entry.of("test.event", NOW, {"n": 9})])
    journal.close()
    return config


def damage(db: Path, lane: str, seq: int, body_sql: str) -> None:
    con = sqlite3.connect(db)
    with con:
        con.execute(f"UPDATE events SET body = {body_sql} WHERE lane_id = ? AND seq = ?", (lane, seq))
    con.close()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], list[str]]:
    code = main(["events", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


@pytest.mark.parametrize(
    "body_sql",
    ["'{\"event_id\": \"x\", \"seq\": 2, '", "'not json at all'", "CAST(X'7B22A0FF22' AS TEXT)", "X'00FF'", "''"],
    ids=["truncated", "text", "not-utf8-text", "blob", "empty"],
)
def test_issue_damaged_row_named_with_file_lane_and_seq(site: Path, capsys, body_sql: str) -> None:
    db = site.parent / "gatectl.db"
    damage(db, "B1-IN", 2, body_sql)
    code, out, err = run(capsys, "--config", str(site))
    assert code == 1
    assert [line[:60] for line in err] and err[0].startswith(f"{db}: lane B1-IN seq 2: damaged event"), err
    assert err[-1] == f"{db}: 1 damaged event(s) skipped"
    assert len(out) == 3 and '"seq": 2' not in "".join(out)  # the others are all there


def test_damaged_row_from_the_command_line_has_no_traceback(site: Path) -> None:
    damage(site.parent / "gatectl.db", "A1-IN", 1, "'{'")
    proc = subprocess.run([sys.executable, "-m", "gatectl", "events", "--config", str(site), "--lane", "A1-IN"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "lane A1-IN seq 1: damaged event" in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("content", [b"", b"site: not a journal\n", b"SQLite format 3\x00" + b"\xff" * 200],
                         ids=["zero-bytes", "text", "bad-header"])
def test_an_empty_or_foreign_file_is_reported_and_left_alone(tmp_path: Path, site: Path, capsys, content: bytes) -> None:
    db = site.parent / "gatectl.db"
    db.unlink()
    db.write_bytes(content)
    code, out, err = run(capsys, "--config", str(site))
    assert code == 1 and out == [] and len(err) == 1 and err[0].startswith(f"{db}: cannot")
    assert db.read_bytes() == content  # not turned into a new, empty journal


@pytest.mark.parametrize("since", ["99999999999999999999999", "-1", "1e3", "9223372036854775808"])
def test_a_since_seq_sqlite_cannot_hold_is_a_usage_error(site: Path, capsys, since: str) -> None:
    code, out, err = run(capsys, "--config", str(site), "--since-seq", since)
    assert code == 2 and out == [] and any("--since-seq" in line for line in err)


def test_since_seq_at_the_top_of_the_range_prints_nothing(site: Path, capsys) -> None:
    assert run(capsys, "--config", str(site), "--since-seq", str(2**63 - 1)) == (0, [], [])
    code, out, _ = run(capsys, "--config", str(site), "--lane", "B1-IN", "--since-seq", "1")
    assert code == 0 and len(out) == 2
