"""The daemon under the unit's syscall sandbox: SystemCallFilter=@system-service minus
@privileged and @resources (EPERM), MemoryDenyWriteExecute=yes, RestrictAddressFamilies,
NoNewPrivileges — reproduced from systemd/gatectl.service with libseccomp by
``sandbox_exec.py``, the way systemd 252 loads them, before the interpreter starts.

It shows CPython and every library the daemon loads live with MemoryDenyWriteExecute and
the filter: the daemon starts, tells "systemd" READY, serves /metrics, passes a vehicle and
stops cleanly on SIGTERM. A probe first shows the sandbox does bite.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from e2e.conftest import BONDED, wait_until
from simulators.site import SimulatedSite, Vehicle

from .conftest import FakeSystemd, Scrape, write_config

HERE = Path(__file__).resolve().parent
UNIT = HERE.parents[1] / "systemd" / "gatectl.service"
SYSTEM_PYTHON = "/usr/bin/python3"
TRUCK = Vehicle("0100E2850E", "云A12345", 31250)


def _has_seccomp() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    return subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not _has_seccomp(),
    reason="needs systemd-analyze and libseccomp's Python bindings for /usr/bin/python3 "
    "(Debian: apt-get install systemd python3-seccomp)",
)

PROBE = """
import mmap, os, socket
def attempt(name, fn):
    try:
        fn()
        print(name, "allowed")
    except OSError as exc:
        print(name, "refused", exc.errno)
attempt("mmap_wx", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC))
attempt("mmap_rw", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE))
attempt("netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
attempt("inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
attempt("unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close())
attempt("setuid", lambda: os.setuid(os.getuid()))
attempt("nice", lambda: os.nice(1))
"""


def sandboxed(*command: str) -> list[str]:
    return [SYSTEM_PYTHON, str(HERE / "sandbox_exec.py"), str(UNIT), "--", *command]


def test_probe_sees_the_sandbox_bite() -> None:
    out = subprocess.run(sandboxed(sys.executable, "-c", PROBE), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert seen == {
        "mmap_wx": "refused 1",  # EPERM: MemoryDenyWriteExecute
        "mmap_rw": "allowed",
        "netlink": "refused 97",  # EAFNOSUPPORT: RestrictAddressFamilies
        "inet": "allowed",
        "unix": "allowed",
        "setuid": "refused 1",  # ~@privileged
        "nice": "allowed",  # lowering one's own priority: the ledger worker's (gatectl.worker)
    }, out.stdout


async def test_daemon_runs_and_stops_cleanly_in_the_sandbox(tmp_path: Path, fast_sim: SimulatedSite) -> None:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    log_path = tmp_path / "daemon.log"
    proc: subprocess.Popen | None = None
    try:
        config_path = write_config(fast_sim, tmp_path)
        from gatectl.config import load_config

        api = f"http://{load_config(config_path).local_api.listen}"
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000",
               "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(sandboxed(sys.executable, str(HERE / "wired_daemon.py"), str(config_path)),
                                    stdout=log, stderr=log, env=env)

        def ready() -> bool:
            assert proc is not None and proc.poll() is None, log_path.read_text()
            return fake.count("READY=1") == 1

        await wait_until(ready, timeout=30)
        fast_sim.authority.script(TRUCK.card, "release")
        lane = fast_sim.lane(BONDED.id)
        assert await lane.drive(TRUCK) == "passed"

        async def scrape() -> Scrape:
            async with aiohttp.ClientSession() as s, s.get(api + "/metrics") as r:
                return Scrape(r.headers["Content-Type"], await r.text())

        async def counted() -> bool:
            return (await scrape()).value("gatectl_passages_total", lane=BONDED.id, outcome="passed") == 1

        for _ in range(200):
            if await counted():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("passage never counted:\n" + log_path.read_text())
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
        text = log_path.read_text()
        assert rc == 0, text
        assert "sandbox_exec: MemoryDenyWriteExecute; RestrictAddressFamilies" in text
        assert "PermissionError" not in text and "Operation not permitted" not in text, text
        assert fake.count("STOPPING=1") == 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        fake.close()
