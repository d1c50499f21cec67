"""``gatectl central --config zone.yaml``: ingest, API and screen, scheduled ledger, until
SIGTERM. Exit 0 after a clean stop, 1 when the database cannot be reached at start,
2 for a bad config."""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog

from gatectl.central.config import ZoneConfig, check_zone_config, load_zone_config
from gatectl.heap import freeze_after_start

log = structlog.get_logger("gatectl.central")


async def run_central(config: ZoneConfig, stop: asyncio.Event | None = None, *, central_kw: dict | None = None,
                      ready: asyncio.Event | None = None, started=None, freeze_heap: bool = False) -> int:
    """The central until ``stop``; ``started(central)`` is called with the running
    ``Central`` (tests, the zone demo). ``freeze_heap``: the process is the central's
    alone (``gatectl central``): start-up's heap leaves the garbage collector's view
    (``gatectl.heap``), so no full collection stops ingest for tens of milliseconds."""
    from gatectl.central.api import start_api
    from gatectl.central.ingest import Central
    from gatectl.central.ledger import ZoneLedgerScheduler

    stop = stop or asyncio.Event()
    central = Central(config, **(central_kw or {}))
    if started is not None:
        started(central)
    await central.start_db()
    runner, pool = await start_api(central)
    scheduler = asyncio.create_task(ZoneLedgerScheduler(config).run(), name="central:ledger")
    log.info("central started", zone=config.zone.id, http=config.http.listen,
             broker=f"{config.mqtt.host}:{config.mqtt.port}", shared_group=config.mqtt.shared_group)
    if ready is not None:
        ready.set()
    if freeze_heap:
        freeze_after_start(asyncio.get_running_loop())
    try:
        await central.run(stop)
    finally:
        scheduler.cancel()
        await runner.cleanup()
        await pool.close()
        log.info("central stopped", stored=central.counters["stored"])
    return 0


def cmd_central(args) -> int:
    from gatectl import logs
    from gatectl.config import ConfigError, format_problems

    if getattr(args, "central_cmd", None) == "check-config":
        return check_zone_config(args.config)
    if getattr(args, "central_cmd", None) == "ledger":
        return args.func_ledger(args)
    if not args.config:
        print("gatectl central: --config is required", file=sys.stderr)
        return 2
    try:
        config = load_zone_config(args.config)
    except ConfigError as exc:
        print(format_problems(exc.problems), file=sys.stderr)
        return 2
    logs.configure(json=True)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run_central(config, stop, freeze_heap=True)

    try:
        return asyncio.run(main())
    except Exception as exc:  # noqa: BLE001 - the central's last word before exit 1
        log.exception("central failed", error=str(exc))
        return 1


def add_subcommands(sub) -> None:
    """``gatectl central [--config F]``, ``central check-config``, ``central ledger export``."""
    from gatectl.central.ledger import cmd_export

    p = sub.add_parser("central", help="the zone central (every lane PC of the zone in PostgreSQL)")
    p.add_argument("--config")
    p.set_defaults(func=cmd_central)
    csub = p.add_subparsers(dest="central_cmd")
    c = csub.add_parser("check-config", help="validate a zone config")
    c.add_argument("--config", required=True)
    ledger = csub.add_parser("ledger", help="the zone ledger").add_subparsers(dest="ledger_cmd", required=True)
    e = ledger.add_parser("export", help="write the zone ledger of a period (default: the last 15 days)")
    e.add_argument("--config", required=True)
    from gatectl.ledger import FORMATS, _day

    e.add_argument("--from", dest="start", type=_day)
    e.add_argument("--to", dest="end", type=_day)
    e.add_argument("--format", choices=FORMATS)
    e.add_argument("--out", required=True)
    e.set_defaults(func_ledger=cmd_export)
