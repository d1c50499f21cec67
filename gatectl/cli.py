"""The ``gatectl`` command (CONTRACT section 7). Exit codes: 0 ok, 1 runtime failure, 2 bad usage/config."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _load(path: str):
    from gatectl.config import ConfigError, format_problems, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(format_problems(exc.problems), file=sys.stderr)
        return None


def cmd_check_config(args) -> int:
    from gatectl.config import check_config

    return check_config(args.config)


async def run_daemon(config, stop: asyncio.Event | None = None) -> int:
    """The daemon: every lane, the local API; returns once ``stop`` is set (SIGTERM)."""
    from gatectl.api import start_api
    from gatectl.service import Site

    import structlog

    log = structlog.get_logger("gatectl")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    site = Site(config)
    runner = await start_api(site)
    log.info("started", site=config.site.id, lanes=[lane.id for lane in config.lanes], api=config.local_api.listen)
    try:
        await site.run(stop)
    finally:
        await runner.cleanup()
        log.info("stopped")
    return EXIT_OK


def cmd_run(args) -> int:
    from gatectl import logs

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    logs.configure(json=True)
    try:
        return asyncio.run(run_daemon(config))
    except Exception as exc:  # noqa: BLE001 - the daemon's last word before exit 1
        import structlog

        structlog.get_logger("gatectl").exception("failed", error=str(exc))
        return EXIT_FAILURE


def cmd_events(args) -> int:
    from gatectl.journal import Journal, JournalError

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    if not Path(config.journal.path).exists():
        print(f"no journal at {config.journal.path}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        journal = Journal(config.journal.path, config.site.id)
    except JournalError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    try:
        for ev in journal.iter_events(args.lane, args.since_seq):
            sys.stdout.write(json.dumps(ev, ensure_ascii=False) + "\n")
    except BrokenPipeError:
        pass
    finally:
        journal.close()
    return EXIT_OK


def cmd_devices(args) -> int:
    from gatectl.devices import cmd_devices as run

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    return run(args, config)


def cmd_demo(args) -> int:
    from gatectl.demo import main as demo_main

    return demo_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatectl", description="Checkpoint lane gate controller")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a site config")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("events", help="journaled events as JSON lines, in seq order per lane")
    p.add_argument("--config", required=True)
    p.add_argument("--lane")
    p.add_argument("--since-seq", type=int, dest="since_seq")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("devices", help="probe every configured device once and print what it sees")
    p.add_argument("--config", required=True)
    p.add_argument("--seconds", type=float, default=3.0, help="how long to listen to each device")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("demo", help="a whole simulated site with live traffic in the terminal")
    p.add_argument("--lanes", type=int, default=3, help="number of simulated lanes (1-6)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workdir", default=None, help="keep the demo's config and journal here")
    p.add_argument("--plain", action="store_true", help="print events as lines instead of the live view")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
