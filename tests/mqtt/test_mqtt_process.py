"""``{prefix}/status`` as customs sees it: ``online`` while the daemon runs, ``offline``
from the broker (the last will) when the daemon's process is killed -9, ``online`` again
when it comes back, and ``offline`` from the daemon itself on a clean stop (SIGTERM)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from fastsite import fast_site

from .conftest import PREFIX, wait_until, write_config

RUNNER = Path(__file__).with_name("runner.py")


async def test_status_offline_on_kill9_online_on_restart_offline_on_clean_stop(
    tmp_path: Path, brokers, collectors
) -> None:
    broker = await brokers()
    col = await collectors(broker.port)
    sim = fast_site(tmp_path / "sim")
    await sim.start()
    config = write_config(sim, tmp_path / "sim", broker.port)
    log_path = tmp_path / "runner.log"
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, str(RUNNER), str(config)], stdout=log, stderr=log,
                                    cwd=Path(__file__).parents[2])
        procs.append(proc)
        return proc

    def status() -> list[bytes]:
        return col.payloads(f"{PREFIX}/status")

    try:
        proc = start()
        await wait_until(lambda: status() == [b"online"] or proc.poll() is not None, timeout=20)
        assert proc.poll() is None, log_path.read_text()
        # Its lane's state comes right after, before anything happens on the lane.
        await wait_until(lambda: col.on(f"{PREFIX}/lanes/B1-IN/state") != [])
        assert col.on(f"{PREFIX}/lanes/B1-IN/state")[-1].json()["lane_id"] == "B1-IN"

        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        await wait_until(lambda: status() == [b"online", b"offline"])  # the broker's last will

        proc = start()
        await wait_until(lambda: status() == [b"online", b"offline", b"online"] or proc.poll() is not None,
                         timeout=20)
        assert proc.poll() is None, log_path.read_text()

        proc.send_signal(signal.SIGTERM)
        assert await _exit_code(proc) == 0, log_path.read_text()
        await wait_until(lambda: status() == [b"online", b"offline", b"online", b"offline"])
        assert "mqtt offline published" in log_path.read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        await sim.stop()


async def _exit_code(proc: subprocess.Popen) -> int:
    await wait_until(lambda: proc.poll() is not None, timeout=20)
    return proc.returncode
