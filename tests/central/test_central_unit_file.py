"""systemd/gatectl-central.service: ``systemd-analyze verify`` finds nothing to say and
``systemd-analyze security`` rates it as hardened as the lane's unit (2.0 or better)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "gatectl-central.service"
ANALYZE = shutil.which("systemd-analyze")
INSTALLED = "ExecStart=/opt/gatectl/venv/bin/gatectl "


def _copy(tmp_path: Path) -> Path:
    assert ANALYZE is not None, "systemd-analyze is missing: apt-get install systemd"
    exe = Path(sys.executable).parent / "gatectl"
    text = UNIT.read_text(encoding="utf-8")
    assert INSTALLED in text
    path = tmp_path / "gatectl-central.service"
    path.write_text(text.replace(INSTALLED, f"ExecStart={exe if exe.exists() else sys.executable} "))
    return path


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, env=env, timeout=60)


def test_central_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    result = _analyze("verify", "--man=no", str(path))
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    result = _analyze("security", "--offline=true", "--no-pager", str(path))
    m = re.search(r"Overall exposure level for gatectl-central\.service:\s*([0-9.]+)", result.stdout)
    assert m and float(m.group(1)) <= 2.0, result.stdout
