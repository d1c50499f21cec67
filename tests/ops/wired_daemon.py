"""``gatectl run`` with the metrics and the systemd notifier wired in, as ``cli.run_daemon``
is to wire them (see gatectl/metrics.py and gatectl/systemd.py). Run by test_sandbox.py in
its own process, under the unit's seccomp policy:

    python tests/ops/wired_daemon.py site.yaml
"""

from __future__ import annotations

import asyncio
import signal
import sys


async def main(config_path: str) -> int:
    from gatectl import logs
    from gatectl.api import start_api
    from gatectl.config import load_config
    from gatectl.metrics import Metrics
    from gatectl.service import Site
    from gatectl.systemd import run_notifier

    logs.configure(json=True)
    config = load_config(config_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    site = Site(config)
    metrics = Metrics(site)
    site.add_task(lambda: run_notifier(site, stop), "systemd-notify")
    runner = await start_api(site, metrics.setup_routes)
    try:
        await site.run(stop)
    finally:
        await runner.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
