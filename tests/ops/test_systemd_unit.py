"""systemd/gatectl.service: it says what the ops docs say, ``systemd-analyze verify`` finds
nothing to warn about, and ``systemd-analyze security`` rates its exposure 2.0 or better.

``verify`` checks that ExecStart= names an executable; the installed path
(/opt/gatectl/venv/bin/gatectl) does not exist on a test machine, so the unit is checked as
a copy in a temporary directory whose ExecStart= names this venv's ``gatectl`` instead
(nothing else changes). User=gatectl need not exist: verify does not resolve users.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "gatectl.service"
INSTALLED_EXEC = "/opt/gatectl/venv/bin/gatectl"
MAX_EXPOSURE = 2.0

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian: apt-get install systemd)"
)


def settings(text: str) -> dict[str, list[str]]:
    """Key → values in file order (systemd allows a key more than once)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def local_exec() -> str:
    """An executable that exists here, standing in for the installed gatectl."""
    candidate = Path(sys.executable).parent / "gatectl"
    return str(candidate) if os.access(candidate, os.X_OK) else sys.executable


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    text = UNIT.read_text(encoding="utf-8")
    assert f"ExecStart={INSTALLED_EXEC} " in text
    path = tmp_path / "gatectl.service"
    path.write_text(text.replace(f"ExecStart={INSTALLED_EXEC} ", f"ExecStart={local_exec()} "), encoding="utf-8")
    return path


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_LOG_COLOR": "0"}
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, env=env, timeout=60)


def test_unit_declares_what_the_docs_promise() -> None:
    s = settings(UNIT.read_text(encoding="utf-8"))
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["ExecStart"] == f"{INSTALLED_EXEC} run --config /etc/gatectl/site.yaml"
    assert (one["User"], one["Group"], one["SupplementaryGroups"]) == ("gatectl", "gatectl", "dialout")
    assert one["WatchdogSec"] == "30" and one["Restart"] == "always" and one["RestartSec"] == "2"
    assert one["StateDirectory"] == "gatectl" and one["ConfigurationDirectory"] == "gatectl"
    assert one["DevicePolicy"] == "closed"
    assert s["DeviceAllow"] == ["char-ttyUSB rw", "char-ttyS rw", "char-ttyACM rw"]
    assert one["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX"
    assert s["SystemCallFilter"] == ["@system-service", "~@privileged @resources", "setpriority"]
    # The lanes are given a processor first; the ledger worker lowers itself back to the
    # other programs' priority, never below the lanes' (gatectl.worker).
    from gatectl.worker import NICE

    assert int(one["Nice"]) < 0 and int(one["Nice"]) + NICE == 0
    assert one["ProtectSystem"] == "strict"
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges", "PrivateUsers", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
                "ProtectHostname", "RestrictNamespaces", "LockPersonality", "MemoryDenyWriteExecute",
                "RestrictRealtime", "RestrictSUIDSGID"):
        assert one[key] == "yes", key
    assert one["CapabilityBoundingSet"] == "" and one["AmbientCapabilities"] == ""
    assert one["UMask"] == "0077" and one["SystemCallArchitectures"] == "native"
    # #13: a flood of API connections must not take the descriptors the lanes need.
    assert one["LimitNOFILE"] == "4096"
    # The READY grace in gatectl/systemd.py stays inside the start timeout.
    from gatectl.systemd import READY_GRACE_S

    assert READY_GRACE_S < float(one["TimeoutStartSec"])
    # The install guide uses the same paths.
    guide = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    for path in ("/opt/gatectl/venv", "/etc/gatectl/site.yaml", "/var/lib/gatectl", "systemd/gatectl.service"):
        assert path in guide, path


@needs_analyze
def test_systemd_analyze_verify_has_nothing_to_say(unit_copy: Path) -> None:
    result = analyze("verify", "--man=no", str(unit_copy))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


@needs_analyze
def test_systemd_analyze_verify_catches_a_broken_copy(tmp_path: Path, unit_copy: Path) -> None:
    """The check above can fail: a misspelt setting is reported."""
    broken = tmp_path / "broken" / "gatectl.service"
    broken.parent.mkdir()
    broken.write_text(unit_copy.read_text(encoding="utf-8").replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomes=yes"))
    result = analyze("verify", "--man=no", str(broken))
    assert "ProtectHomes" in result.stdout + result.stderr


@needs_analyze
def test_security_exposure_is_2_or_better(unit_copy: Path) -> None:
    # systemd 252: --offline=true reads the unit file itself (no running manager needed).
    result = analyze("security", "--offline=true", "--no-pager", str(unit_copy))
    assert result.returncode == 0, result.stdout + result.stderr
    m = re.search(r"Overall exposure level for gatectl\.service:\s*([0-9]+(?:\.[0-9]+)?)", result.stdout)
    assert m, result.stdout + result.stderr
    score = float(m.group(1))
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}:\n{result.stdout}"
    # --threshold counts in tenths: the same bar, enforced by systemd-analyze's exit code.
    strict = analyze("security", "--offline=true", "--no-pager", f"--threshold={int(MAX_EXPOSURE * 10)}",
                     str(unit_copy))
    assert strict.returncode == 0, strict.stdout
