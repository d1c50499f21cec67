"""Assemble the whole daemon: the lanes (Site) and the modules around them.

``gatectl run`` and ``gatectl demo`` both build the daemon here, so the demo shows
exactly what a lane PC runs: lanes, records (alarms, incidents, tickets, duty, the daily
equipment ledger), the guard's screen, metrics, the central MQTT link and the scheduled
checkpoint ledger, each only where configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gatectl import ledger_download, screen
from gatectl.config import SiteConfig
from gatectl.ledger import LedgerScheduler
from gatectl.metrics import Metrics
from gatectl.mqtt import MqttLink
from gatectl.records import Records
from gatectl.service import Site
from gatectl.systemd import run_notifier


def assemble(config: SiteConfig, stop=None) -> tuple[Site, list[Callable[[Any], None]]]:
    """The site and the route setups its local API needs. ``stop`` (an asyncio.Event set
    on SIGTERM) lets the systemd notifier say STOPPING."""
    site = Site(config)
    setups: list[Callable[[Any], None]] = []

    records = Records(site)  # projects every commit in the journal's writer from now on
    site.add_task(records.run, "records")
    setups.append(records.setup_routes)

    setups.append(screen.setup_routes)
    setups.append(ledger_download.setup_routes)  # GET /api/v1/ledger (R14)

    metrics = Metrics(site)  # subscribes itself
    setups.append(metrics.setup_routes)

    if config.mqtt is not None:
        link = MqttLink(site)
        site.subscribe(link.on_events)
        site.add_task(link.run, "mqtt")
        site.mqtt_depth = link.depth  # outbox depth in /metrics

    site.add_task(LedgerScheduler(site).run, "ledger")  # waits forever without ledger.dir

    if stop is not None:
        site.add_task(lambda: run_notifier(site, stop), "systemd-notify")
    return site, setups
