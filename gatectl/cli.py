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
    import structlog

    from gatectl.api import start_api
    from gatectl.daemon import assemble

    log = structlog.get_logger("gatectl")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    site, setups = assemble(config, stop)
    runner = await start_api(site, *setups)
    log.info("started", site=config.site.id, lanes=[lane.id for lane in config.lanes], api=config.local_api.listen)
    try:
        await site.run(stop, freeze_heap=True)
    finally:
        await runner.cleanup()
        log.info("stopped")
    return EXIT_OK


def cmd_run(args) -> int:
    from gatectl import logs
    from gatectl.journal import JournalRefused

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    logs.configure(json=True)
    try:
        return asyncio.run(run_daemon(config))
    except JournalRefused as exc:
        # Not a crash: the file where the journal should be is not one to start from.
        import structlog

        structlog.get_logger("gatectl").error("journal refused; not starting", error=str(exc))
        print(f"gatectl: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - the daemon's last word before exit 1
        import structlog

        structlog.get_logger("gatectl").exception("failed", error=str(exc))
        return EXIT_FAILURE


def _seq(text: str) -> int:
    """``--since-seq``: a whole number SQLite can compare (0 .. 2**63-1)."""
    from gatectl.limits import MAX_SEQ

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None
    if not 0 <= value <= MAX_SEQ:
        raise argparse.ArgumentTypeError(f"must be 0 to {MAX_SEQ}")
    return value


def _json_line(event: object) -> str:
    line = json.dumps(event, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escaped in the stored JSON: keep it escaped
        line = json.dumps(event)
    return line + "\n"


def cmd_events(args) -> int:
    """Journaled events as JSON lines, in seq order per lane.

    Reads the journal read-only (it never creates, migrates or repairs one: a 0-byte or
    foreign file is reported, not turned into an empty journal). A damaged row (a body that
    is not JSON) is reported on stderr with the file, lane and seq and skipped; the other
    events are still printed, and the exit status is then 1.
    """
    import sqlite3

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    path = Path(config.journal.path)
    if not path.exists():
        print(f"no journal at {path}", file=sys.stderr)
        return EXIT_FAILURE
    sql = "SELECT lane_id, seq, body FROM events"
    where, params = [], []
    if args.lane is not None:
        where.append("lane_id = ?")
        params.append(args.lane)
    if args.since_seq is not None:
        where.append("seq > ?")
        params.append(args.since_seq)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY lane_id, seq"
    damaged = 0
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        print(f"{path}: cannot open the journal: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    db.text_factory = bytes  # a row that is not UTF-8 is a damaged row, not a failed read
    try:
        db.execute("PRAGMA busy_timeout=5000")
        for raw_lane, seq, body in db.execute(sql, params):
            lane_id = raw_lane.decode("utf-8", "replace") if isinstance(raw_lane, bytes) else raw_lane
            try:
                event = json.loads(body.decode("utf-8") if isinstance(body, bytes) else body)
            except (TypeError, ValueError) as exc:
                damaged += 1
                print(f"{path}: lane {lane_id} seq {seq}: damaged event, its body is not JSON ({exc})",
                      file=sys.stderr)
                continue
            sys.stdout.write(_json_line(event))
    except sqlite3.Error as exc:
        message = str(exc)
        if "no such table" in message:
            message = "not a gatectl journal (it has no events)"
        print(f"{path}: cannot read the journal: {message}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        return EXIT_OK
    finally:
        db.close()
    if damaged:
        print(f"{path}: {damaged} damaged event(s) skipped", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_journal_new(args) -> int:
    """A new, empty journal where none is: the deliberate start after a journal was lost.

    Never overwrites: any file at the journal's path (a 0-byte one included) or a WAL or
    shared-memory file beside it is refused, and the operator moves it away first (keep
    it: it may be the only record of the authorisations already spent). The new journal
    starts every lane at seq 1 and knows no authorisation spent before it.
    """
    from gatectl.journal import Journal, JournalError

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    path = Path(config.journal.path)
    there = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal"))
             if p.exists() or p.is_symlink()]
    if there:
        print(f"refused: {', '.join(str(p) for p in there)} already there; gatectl journal new never overwrites "
              "a journal. Move the damaged file(s) away first (keep them: they may be the only record of the "
              f"authorisations already spent), e.g. mv {path} {path}.damaged, then run this again.",
              file=sys.stderr)
        return EXIT_FAILURE
    if not path.parent.is_dir():
        print(f"refused: the directory {path.parent} does not exist (is its disk mounted?); create it first",
              file=sys.stderr)
        return EXIT_FAILURE
    try:
        Journal(path, config.site.id).close()
    except (JournalError, OSError) as exc:
        print(f"cannot create the journal {path}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"new, empty journal at {path}: every lane starts again at seq 1, and no authorisation spent before "
          "it is known to it (tell the MQTT subscribers: seqs are reused from 1)")
    return EXIT_OK


def cmd_devices(args) -> int:
    from gatectl.devices import cmd_devices as run

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    return run(args, config)


def _queue_for_daemon(config, kind: str, payload: dict, wait_s: float = 5.0) -> dict | None:
    """Leave an order in the journal's inbox; the running daemon applies it within a second.
    Returns the daemon's answer, or None if no daemon took it in ``wait_s``."""
    import time
    from datetime import datetime

    from gatectl.journal import Journal

    journal = Journal(config.journal.path, config.site.id)
    try:
        item = journal.inbox_put(kind, payload, datetime.now(config.site.tz))
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            result = journal.inbox_result(item)
            if result is not None:
                return result
            time.sleep(0.1)
        return None
    finally:
        journal.close()


def cmd_approval_add(args) -> int:
    """R10: check an approval here (for a clear answer at once), then hand it to the daemon."""
    from datetime import datetime

    from gatectl.approvals import ApprovalRefused, lane_kinds, parse_document, read_document, verify
    from gatectl.journal import Journal, JournalError

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    try:
        raw = read_document(args.file)
    except OSError as exc:
        print(f"cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApprovalRefused as exc:
        print(f"refused: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        journal = Journal(config.journal.path, config.site.id)
        try:
            doc = parse_document(raw)
            used = journal.approval_uses(doc["approval_id"]) if isinstance(doc.get("approval_id"), str) else 0
        finally:
            journal.close()
        verify(doc, trust=config.trust, lanes=lane_kinds(config), now=datetime.now(config.site.tz), lifts_used=used)
    except ApprovalRefused as exc:
        print(f"refused: {exc.code}: {exc.message}" + (f" ({exc.message_zh})" if exc.message_zh else ""),
              file=sys.stderr)
        return EXIT_FAILURE
    except JournalError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    # The text exactly as verified (less a BOM): the daemon checks the same bytes again.
    result = _queue_for_daemon(config, "approval", {"document": raw.decode("utf-8-sig")})
    if result is None:
        print(f"valid; queued: {doc['approval_id']} on {doc['lane_id']}; no running daemon took it within "
              "5 s, it is checked again and applied when the daemon runs")
        return EXIT_OK
    if result["status"] != "accepted":
        print(f"refused by the daemon: {result.get('reason')}: {result.get('message')}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"accepted: {result['approval_id']} on {result['lane_id']} ({result['trigger']}, "
          f"{result['max_lifts'] - result['lifts_used']} lift(s) left)")
    return EXIT_OK


def cmd_emergency_account(args) -> int:
    """R11: the guard's account of an emergency release, added after the fact."""
    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    payload = {"passage_id": args.passage, "vehicle_type": args.vehicle_type, "plate": args.plate,
               "note": args.note or "", "by": args.by or ""}
    result = _queue_for_daemon(config, "emergency_account", payload)
    if result is None:
        print("queued for the daemon (not running?)")
        return EXIT_OK
    if result["status"] != "accepted":
        print(f"refused: {result.get('reason')}: {result.get('message')}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"recorded for passage {args.passage} on {result['lane_id']}")
    return EXIT_OK


def cmd_version(args) -> int:
    from gatectl import __version__

    print(f"gatectl {__version__}")
    return EXIT_OK


def cmd_command_sign(args) -> int:
    """Customs sign a command (``spot-check`` or ``lane-hours``) for MQTT or the local API:
    the same canonical bytes and Ed25519 key files as approvals (CONTRACT 8)."""
    import base64
    import binascii
    from datetime import datetime, timezone

    from cryptography.exceptions import InvalidSignature
    from pydantic import ValidationError

    from gatectl.approvals import public_key_b64, signing_bytes
    from gatectl.commands import COMMAND_WINDOW, COMMANDS, MAX_COMMAND_BYTES, HoursCommand, SpotCheckCommand
    from gatectl.keys import KeyFileError, _dump, _write_replace, load_private_key
    from gatectl.limits import JsonRefused, load_json, validation_message

    try:
        key = load_private_key(args.key)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        with open(args.file, "rb") as stream:
            raw = stream.read(MAX_COMMAND_BYTES + 1)
    except OSError as exc:
        print(f"error: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        doc = load_json(raw, max_bytes=MAX_COMMAND_BYTES, allow_bom=True)
    except JsonRefused as exc:
        print(f"error: {args.file}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    models = {"spot-check": SpotCheckCommand, "lane-hours": HoursCommand}
    kind = doc.get("command") if isinstance(doc, dict) else None
    if kind not in models:
        print(f"error: {args.file}: a command is a JSON object whose \"command\" is one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        command = models[kind].model_validate(doc)
    except ValidationError as exc:
        print(f"error: {args.file}: {validation_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    message = signing_bytes(doc)
    public = public_key_b64(key)

    def other_signer(entry: dict) -> bool:
        """An earlier entry by another key stays; this key's own (named or verifying) goes."""
        if entry.get("key") is not None:
            return entry.get("key") != public
        try:
            key.public_key().verify(base64.b64decode(entry.get("sig", ""), validate=True), message)
        except (InvalidSignature, binascii.Error, ValueError, TypeError):
            return True
        return False

    # The model has checked every entry's shape (role, base64 signature and key).
    kept = [e for e in doc.get("signatures", []) if other_signer(e)]
    sig = base64.b64encode(key.sign(message)).decode("ascii")
    doc["signatures"] = kept + [{"role": "customs", "sig": sig, "key": public}]
    out = args.out or args.file
    try:
        _write_replace(Path(out), _dump(doc))
    except OSError as exc:
        print(f"error: {out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"signed {kind} {command.command_id} for {command.lane_id} with key {public} -> {out}", file=sys.stderr)
    age = datetime.now(timezone.utc) - command.issued_at
    if abs(age) > COMMAND_WINDOW:
        print(f"warning: issued_at {command.issued_at.isoformat()} is more than {COMMAND_WINDOW.seconds // 60} "
              "minutes from now: a lane PC refuses it (expired or not yet valid)", file=sys.stderr)
    return EXIT_OK


def cmd_demo(args) -> int:
    if getattr(args, "zone", False):
        from gatectl.central.demo import main as zone_demo

        return zone_demo(args)
    from gatectl.demo import main as demo_main

    return demo_main(args)


def build_parser() -> argparse.ArgumentParser:
    from gatectl import __version__

    parser = argparse.ArgumentParser(prog="gatectl", description="Checkpoint lane gate controller")
    parser.add_argument("--version", action="version", version=f"gatectl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version)

    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a site config")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("events", help="journaled events as JSON lines, in seq order per lane")
    p.add_argument("--config", required=True)
    p.add_argument("--lane")
    p.add_argument("--since-seq", type=_seq, dest="since_seq")
    p.set_defaults(func=cmd_events)

    from gatectl.keys import add_subcommands
    from gatectl.ledger import add_subcommands as add_ledger_commands
    from gatectl.records_cli import add_subcommands as add_record_commands

    add_ledger_commands(sub)  # creates the `ledger` group; records adds `ledger equipment` to it
    add_record_commands(sub)
    approval = add_subcommands(sub)
    p = approval.add_parser("add", help="import a signed approval (R10, R17)")
    p.add_argument("--config", required=True)
    p.add_argument("file")
    p.set_defaults(func=cmd_approval_add)

    command = sub.add_parser("command", help="customs' signed commands (spot checks, lane hours)")
    command_sub = command.add_subparsers(dest="command_cmd", required=True)
    p = command_sub.add_parser("sign", help="sign a spot-check or lane-hours command as customs")
    p.add_argument("--key", required=True, help="customs private key file (from `gatectl keys new`)")
    p.add_argument("--out", default=None, help="write the signed command here (default: in place)")
    p.add_argument("file", help="command JSON file")
    p.set_defaults(func=cmd_command_sign)

    emergency = sub.add_parser("emergency", help="emergency releases (R11)").add_subparsers(dest="emergency_cmd", required=True)
    p = emergency.add_parser("account", help="the guard's account of an emergency release")
    p.add_argument("--config", required=True)
    p.add_argument("--passage", required=True, help="passage_id of the emergency passage")
    p.add_argument("--vehicle-type", required=True, dest="vehicle_type", help="e.g. 消防车, 救护车, 警车")
    p.add_argument("--plate")
    p.add_argument("--note")
    p.add_argument("--by", help="the guard's name")
    p.set_defaults(func=cmd_emergency_account)

    journal = sub.add_parser("journal", help="the journal file").add_subparsers(dest="journal_cmd", required=True)
    p = journal.add_parser("new", help="create a new, empty journal where none is (never overwrites)")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_journal_new)

    p = sub.add_parser("devices", help="probe every configured device once and print what it sees")
    p.add_argument("--config", required=True)
    p.add_argument("--seconds", type=float, default=3.0, help="how long to listen to each device")
    p.set_defaults(func=cmd_devices)

    from gatectl.central.service import add_subcommands as add_central_commands

    add_central_commands(sub)

    p = sub.add_parser("demo", help="a whole simulated site with live traffic in the terminal")
    p.add_argument("--lanes", type=int, default=5, help="number of simulated lanes (1-6; 5 shows every lane kind)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workdir", default=None, help="keep the demo's config and journal here")
    p.add_argument("--plain", action="store_true", help="print events as lines instead of the live view")
    p.add_argument("--faults", action="store_true",
                   help="break a device now and then (reader unplugged, silent scale, stuck limit, IO module down)")
    p.add_argument("--zone", action="store_true",
                   help="a whole zone instead: a broker, several lane PCs, PostgreSQL and the zone central")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_given = sys.argv[1:] if argv is None else argv
    if args_given in (["--version"], ["version"]):
        # Without the parser, which imports every command's module: a quick answer.
        return cmd_version(None)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
