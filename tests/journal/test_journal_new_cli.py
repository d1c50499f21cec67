"""The journal file's own edge (#13, item 8): ``gatectl run`` refuses a 0-byte or
foreign file where the journal should be, with a message and exit 1 (no traceback), and
``gatectl journal new`` starts a new, empty journal only where none is: never over a
file, a WAL or a shared-memory file, and never in a directory that is not there."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gatectl.cli import main
from gatectl.journal import Journal

CONFIG = """\
site: {id: s, name: S}
journal: {path: gatectl.db}
io_modules: {io1: {protocol: modbus-tcp, host: 127.0.0.1}}
staff: [{card: "AA", name: x}]
lanes:
  - {id: B1-IN, name: b, kind: personnel, direction: in, channel_no: "1",
     card_reader: {port: /dev/null, format: ascii-line},
     points: {arrival_loop: io1:di:0, safety_loop: io1:di:1, barrier_up: io1:di:2, barrier_down: io1:di:3,
              barrier_open: io1:coil:0, barrier_close: io1:coil:1}}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def new(capsys, config: Path) -> tuple[int, str, str]:
    code = main(["journal", "new", "--config", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("content", [b"", b"not a database at all", b"SQLite format 3\x00" + b"\x00" * 100])
def test_issue13_journal_new_never_overwrites_a_file_and_says_to_move_it(capsys, config: Path, content: bytes) -> None:
    journal = config.parent / "gatectl.db"
    journal.write_bytes(content)
    code, out, err = new(capsys, config)
    assert code == 1 and out == ""
    assert "already there" in err and "Move the damaged file" in err and f"mv {journal}" in err
    assert journal.read_bytes() == content  # left exactly as it was


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_issue13_journal_new_refuses_a_stale_wal_or_shm_beside_the_journal(capsys, config: Path, suffix: str) -> None:
    stale = config.parent / f"gatectl.db{suffix}"
    stale.write_bytes(b"x" * 32)
    code, _, err = new(capsys, config)
    assert code == 1 and str(stale) in err
    assert not (config.parent / "gatectl.db").exists()


def test_issue13_journal_new_refuses_a_missing_directory(capsys, tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(CONFIG.replace("path: gatectl.db", f"path: {tmp_path / 'not-mounted' / 'gatectl.db'}"),
                    encoding="utf-8")
    code, _, err = new(capsys, path)
    assert code == 1 and "does not exist" in err
    assert not (tmp_path / "not-mounted").exists()


def test_issue13_run_refuses_an_empty_journal_then_journal_new_makes_one_it_starts_from(
    capsys, config: Path
) -> None:
    """The operator's path: the daemon refuses the 0-byte file and names the command; the
    file is moved away; ``journal new`` makes an empty journal the daemon accepts."""
    journal = config.parent / "gatectl.db"
    journal.write_bytes(b"")
    out = subprocess.run([sys.executable, "-m", "gatectl", "run", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out
    assert "empty file (0 bytes)" in out.stderr and "gatectl journal new --config" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert journal.read_bytes() == b""

    journal.rename(config.parent / "gatectl.db.damaged")
    code, text, err = new(capsys, config)
    assert code == 0 and err == "" and "new, empty journal" in text
    j = Journal(journal, "s")  # opens without refusal: a gatectl journal, empty
    try:
        assert j.lanes() == [] and j.last_seq("B1-IN") == 0
    finally:
        j.close()
    db = sqlite3.connect(journal)
    assert db.execute("PRAGMA application_id").fetchone()[0] != 0
    db.close()
