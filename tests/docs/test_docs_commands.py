"""The user docs keep their promises: examples run as written after the README's set-up,
no doc points outside the clone, and `gatectl --version` says the installed version."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import pytest

from gatectl import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_BLOCK = re.compile(r"```(?:sh|bash|shell|console)\n(.*?)```", re.DOTALL)
# A command line that starts with a bare `gatectl` (after a prompt, sudo, env or a pipe).
BARE = re.compile(r"(?:^|[;&|(]\s*|\bsudo\s+|\bexec\s+|\$\s+)gatectl(?:\s|$)")


def _shell_lines():
    for path in DOCS:
        for block in SHELL_BLOCK.findall(path.read_text(encoding="utf-8")):
            for line in block.splitlines():
                if not line.lstrip().startswith("#"):
                    yield path, line


def test_no_shell_example_calls_a_bare_gatectl() -> None:
    """After the README's set-up `gatectl` is in .venv/bin, not on the PATH: shell examples
    name the venv (or the installed path) so they run as written."""
    bare = [f"{p.relative_to(ROOT)}: {line.strip()}" for p, line in _shell_lines() if BARE.search(line.strip())]
    assert not bare, "bare gatectl in shell examples:\n" + "\n".join(bare)


def test_the_scan_sees_a_bare_gatectl() -> None:
    assert BARE.search("gatectl check-config --config site.yaml")
    assert BARE.search("$ gatectl run --config F")
    assert BARE.search("cd x && gatectl events --config F")
    assert not BARE.search(".venv/bin/gatectl check-config --config site.yaml")
    assert not BARE.search("runuser -u gatectl -- /opt/gatectl/venv/bin/gatectl devices")


def test_readme_says_how_to_run_the_commands_of_its_tables() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for section in ("## Configuration", "## Operation"):
        part = text[text.index(section):].split("\n## ", 1)[0]
        assert "source .venv/bin/activate" in part and ".venv/bin/gatectl" in part, section


def test_docs_point_nowhere_outside_the_clone() -> None:
    """README and docs stand alone: nothing points at ../shared or the contract file."""
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        assert "../shared" not in text, path
        assert "CONTRACT.md" not in text, path
    for path in [ROOT / "README.md", *(ROOT / "docs" / "reference").glob("*.md")]:
        assert "CONTRACT" not in path.read_text(encoding="utf-8"), path


def test_readme_links_every_reference_doc() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    docs = sorted(p.name for p in (ROOT / "docs" / "reference").glob("*.md"))
    assert len(docs) == 6
    for name in docs:
        assert f"docs/reference/{name}" in text


def _worked_example(name: str) -> str:
    text = (ROOT / "docs" / "reference" / "approvals.md").read_text(encoding="utf-8")
    (block,) = re.findall(rf"<!-- worked-example: {name} -->\n```sh\n(.*?)```", text, re.DOTALL)
    return block


def _run(block: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATECTL")}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_r10_worked_example_of_approvals_md_runs_as_written(tmp_path: Path) -> None:
    """R10: the doc's keys new → approval sign → approval add, run as written against the
    config it writes; the approval it makes verifies, and so does its signed command."""
    from gatectl.approvals import lane_kinds, verify
    from gatectl.commands import verify_command
    from gatectl.config import load_config

    venv = Path(sys.prefix)
    if not (venv / "bin" / "gatectl").exists():
        pytest.fail(f"{venv}/bin/gatectl is missing: install the package into the venv (pip install -e .)")
    (tmp_path / ".venv").symlink_to(venv)

    done = _run(_worked_example("approval"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "valid; queued: AP-0001 on B1-IN" in done.stdout or "accepted: AP-0001 on B1-IN" in done.stdout
    assert (tmp_path / "customs.key").stat().st_mode & 0o777 == 0o600

    config = load_config(tmp_path / "site.yaml")
    now = datetime.now(timezone.utc)
    approval = verify((tmp_path / "AP-0001.json").read_bytes(), trust=config.trust, lanes=lane_kinds(config), now=now)
    assert approval.approval_id == "AP-0001" and approval.signed_by("customs")

    done = _run(_worked_example("command"), tmp_path)
    assert done.returncode == 0, done.stderr
    command = verify_command((tmp_path / "spot-check.json").read_bytes(), trust_customs=config.trust.customs,
                             lanes=[lane.id for lane in config.lanes], now=now, expect="spot-check")
    assert command.body() == {"hold_next": 2} and command.by == "海关查验科"


def test_version_prints_the_installed_version(capsys) -> None:
    expected = f"gatectl {version('gatectl')}"
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == expected
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.strip() == expected


def _key(tmp_path: Path) -> tuple[Path, str]:
    from gatectl.keys import new_key

    path = tmp_path / "customs.key"
    return path, new_key(path)


def _command(**extra) -> dict:
    return {"command": "lane-hours", "command_id": "C-1", "lane_id": "B1-IN",
            "issued_at": datetime.now(timezone.utc).isoformat(), "open": False, "until": None,
            "reason": "海关要求临时关闭", **extra}


def test_command_sign_signs_once_per_key_and_a_change_after_breaks_it(tmp_path: Path, capsys) -> None:
    from gatectl.commands import CommandRefused, verify_command

    key, public = _key(tmp_path)
    path = tmp_path / "hours.json"
    path.write_text(json.dumps(_command(), ensure_ascii=False), encoding="utf-8")
    now = datetime.now(timezone.utc)
    assert cli.main(["command", "sign", "--key", str(key), str(path)]) == 0
    assert cli.main(["command", "sign", "--key", str(key), str(path)]) == 0  # again: replaces its own entry
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert [s["key"] for s in doc["signatures"]] == [public]
    verified = verify_command(path.read_bytes(), trust_customs=[base64.b64decode(public)], lanes=["B1-IN"], now=now,
                              expect="lane-hours")
    assert verified.body() == {"open": False, "reason": "海关要求临时关闭"}

    doc["lane_id"] = "B2-OUT"
    with pytest.raises(CommandRefused) as refused:
        verify_command(doc, trust_customs=[base64.b64decode(public)], lanes=["B1-IN", "B2-OUT"], now=now)
    assert refused.value.code == "bad_signature"


@pytest.mark.parametrize("body, why", [
    ({"command": "open-barrier", "command_id": "C-1"}, "command"),
    (_command(open=None), "open"),
    (_command(hold_next=2), "hold_next"),
])
def test_command_sign_refuses_what_is_no_command(tmp_path: Path, capsys, body: dict, why: str) -> None:
    key, _ = _key(tmp_path)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(body), encoding="utf-8")
    before = path.read_bytes()
    assert cli.main(["command", "sign", "--key", str(key), str(path)]) == 2
    assert why in capsys.readouterr().err
    assert path.read_bytes() == before


def test_command_sign_warns_of_an_issued_at_a_lane_pc_refuses(tmp_path: Path, capsys) -> None:
    key, _ = _key(tmp_path)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_command(issued_at="2020-01-01T09:00:00+08:00")), encoding="utf-8")
    assert cli.main(["command", "sign", "--key", str(key), str(path)]) == 0
    assert "warning: issued_at" in capsys.readouterr().err
