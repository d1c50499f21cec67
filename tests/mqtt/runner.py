"""A daemon in miniature for the kill -9 test: ``Site`` and ``MqttLink`` from a config,
wired as ``gatectl run`` will wire them, until SIGTERM (then a clean stop, exit 0).

    python tests/mqtt/runner.py site.yaml
"""

from __future__ import annotations

import asyncio
import signal
import sys

from gatectl.config import load_config
from gatectl.mqtt import MqttLink
from gatectl.service import Site


async def main(path: str) -> int:
    site = Site(load_config(path))
    link = MqttLink(site, backoff_initial=0.1, backoff_max=1.0)
    site.subscribe(link.on_events)
    site.add_task(link.run, "mqtt")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await site.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
