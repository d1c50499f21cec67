"""PrivateUsers=yes and the serial ports: the unit maps only root and gatectl into the
service's user namespace, so ``dialout`` (SupplementaryGroups=) is unmapped there. This
shows, the way systemd 252 sets it up, that the service still opens root:dialout 0660 device
nodes: the kernel checks the host group, whatever the namespace calls it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest


USERNS_PROBE = r"""
import ctypes, grp, os, sys
path, with_dialout = sys.argv[1], sys.argv[2] == "1"
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
dialout = grp.getgrnam("dialout").gr_gid
uid = gid = 4242
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:
    # As systemd 252 does for the service: groups first (on the host), then the user
    # namespace mapping only root and the service's own user and group, then the user.
    os.setgroups([dialout] if with_dialout else [])
    os.setgid(gid)
    if libc.unshare(CLONE_NEWUSER) != 0:
        print("unshare failed", ctypes.get_errno())
        os._exit(3)
    os.write(ready_w, b"1")
    os.read(go_r, 1)
    os.setuid(uid)
    try:
        open(path).close()
        print("open ok", os.getgroups())
    except OSError as exc:
        print("open refused", exc.errno)
    os._exit(0)
os.read(ready_r, 1)
with open(f"/proc/{pid}/uid_map", "w") as f:
    f.write(f"0 0 1\n{uid} {uid} 1\n")
with open(f"/proc/{pid}/setgroups", "w") as f:
    f.write("deny")
with open(f"/proc/{pid}/gid_map", "w") as f:
    f.write(f"0 0 1\n{gid} {gid} 1\n")
os.write(go_w, b"1")
os.waitpid(pid, 0)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="sets up a user namespace mapping as systemd does: needs root")
def test_private_users_keeps_access_through_the_unmapped_dialout_group() -> None:
    """PrivateUsers=yes maps only root and gatectl: dialout shows as nobody (65534) inside,
    yet a root:dialout 0660 device still opens, since the kernel checks the host group.
    Without dialout it does not: the group is what grants the access."""
    import grp

    try:
        dialout = grp.getgrnam("dialout").gr_gid
    except KeyError:
        pytest.skip("no dialout group on this machine")
    # A directory the probe's user 4242 can reach (pytest's own tmp dirs are root's 0700).
    with tempfile.TemporaryDirectory(prefix="gatectl-userns-") as where:
        os.chmod(where, 0o755)
        device = Path(where) / "ttyUSB-standin"
        device.write_bytes(b"")
        os.chown(device, 0, dialout)
        device.chmod(0o660)
        with_group, without = probe(device, True), probe(device, False)
    assert with_group == "open ok [65534]"
    assert without == "open refused 13"


def probe(device: Path, with_dialout: bool) -> str:
    out = subprocess.run([sys.executable, "-c", USERNS_PROBE, str(device), "1" if with_dialout else "0"],
                         capture_output=True, text=True, timeout=30)
    if "unshare failed" in out.stdout:
        pytest.skip(f"user namespaces unavailable here: {out.stdout.strip()}")
    return out.stdout.strip()
