"""Run a command under the seccomp policy a systemd unit file asks for, as systemd 252 does.

    /usr/bin/python3 sandbox_exec.py systemd/gatectl.service -- COMMAND [ARGS...]

Needs the libseccomp bindings (Debian: ``apt-get install python3-seccomp``, for the system
python3, which is why this runs as a script and not inside pytest) and ``systemd-analyze``
for the syscall groups. Reproduced from the unit, then ``execve`` of COMMAND (filters are
inherited across execve):

- ``SystemCallFilter=`` (allow list, then ``~`` removals; groups expanded with
  ``systemd-analyze syscall-filter``), ``SystemCallErrorNumber=`` (the action for the rest,
  else kill) and ``SystemCallArchitectures=native``;
- ``MemoryDenyWriteExecute=yes``: systemd's own rules — mmap with PROT_WRITE|PROT_EXEC,
  mprotect/pkey_mprotect with PROT_EXEC and shmat with SHM_EXEC refused (EPERM);
- ``RestrictAddressFamilies=``: socket() of any other family refused (EAFNOSUPPORT);
- ``NoNewPrivileges=yes`` (libseccomp sets it).

Not reproduced (they are not seccomp): users, namespaces, mounts, device policy, capabilities.
"""

from __future__ import annotations

import errno
import mmap
import os
import socket
import subprocess
import sys

import seccomp  # type: ignore[import-not-found]


def unit_settings(path: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";", "[")):
                continue
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def syscall_groups() -> dict[str, list[str]]:
    text = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True, text=True,
                          check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        if name.startswith("@"):
            out |= expand(groups[name], groups)
        else:
            out.add(name)
    return out


def allowed_syscalls(entries: list[str], groups: dict[str, list[str]]) -> set[str]:
    allow: set[str] = set()
    for entry in entries:
        deny = entry.startswith("~")
        names = expand(entry.lstrip("~").split(), groups)
        if deny:
            allow -= names
        else:
            allow |= names
    return allow | expand(["@default"], groups)


def load(settings: dict[str, list[str]]) -> list[str]:
    """Load the filters; the allow list last, as it may not allow loading more filters."""
    applied = []
    if (settings.get("MemoryDenyWriteExecute") or ["no"])[-1] == "yes":
        f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        wx = mmap.PROT_WRITE | mmap.PROT_EXEC
        eperm = seccomp.ERRNO(errno.EPERM)
        f.add_rule(eperm, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
        f.add_rule(eperm, "mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC))
        f.add_rule(eperm, "pkey_mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC))
        shm_exec = 0o100000
        f.add_rule(eperm, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, shm_exec, shm_exec))
        f.load()
        applied.append("MemoryDenyWriteExecute")
    families = (settings.get("RestrictAddressFamilies") or [None])[-1]
    if families:
        allowed = {int(getattr(socket, name)) for name in families.split()}
        f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        refuse = seccomp.ERRNO(errno.EAFNOSUPPORT)
        for family in range(64):
            if family not in allowed:
                f.add_rule(refuse, "socket", seccomp.Arg(0, seccomp.EQ, family))
        f.add_rule(refuse, "socket", seccomp.Arg(0, seccomp.GE, 64))
        f.load()
        applied.append(f"RestrictAddressFamilies: {families}")
    entries = settings.get("SystemCallFilter", [])
    if entries:
        if entries[0].startswith("~"):
            raise SystemExit("only allow-list SystemCallFilter= is reproduced here")
        errno_name = (settings.get("SystemCallErrorNumber") or [None])[-1]
        default = seccomp.ERRNO(getattr(errno, errno_name)) if errno_name else seccomp.KILL_PROCESS
        f = seccomp.SyscallFilter(defaction=default)
        known = 0
        for name in sorted(allowed_syscalls(entries, syscall_groups())):
            try:
                f.add_rule(seccomp.ALLOW, name)
                known += 1
            except (RuntimeError, ValueError):
                pass  # a name this architecture does not have (e.g. the *32 variants)
        f.load()
        applied.append(f"SystemCallFilter: {known} syscalls allowed, the rest {errno_name or 'killed'}")
    return applied


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit(__doc__)
    unit, command = argv[0], argv[2:]
    applied = load(unit_settings(unit))
    print(f"sandbox_exec: {'; '.join(applied)}", file=sys.stderr, flush=True)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
