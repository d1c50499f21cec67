"""``gatectl alarm|incident|ticket|shift|ledger equipment``: records from the command line.

Reading commands read the record tables in the journal file. Commands that change a
record check the order here first (a clear refusal at once, nothing queued), then leave
it in the journal file's ``inbox`` for the running daemon, which journals it within a
second and answers; the CLI never appends events itself (the daemon owns each lane's
``seq``). With no daemon running, the order waits for the next start.

Exit codes: 0 ok (or queued), 1 refused or runtime failure, 2 bad usage or bad config.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import unicodedata
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from gatectl.config import ConfigError, format_problems, load_config
from gatectl.journal import Journal, JournalError
from gatectl.records import CATEGORIES, INCIDENT_KINDS, PARTIES, TICKET_STATE_ZH, TICKET_STATES, RecordError, RecordStore
from gatectl.labels import HEALTH as HEALTH_ZH

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
WAIT_S = 5.0


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# ---------------------------------------------------------------------- plumbing


def _context(args):
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(format_problems(exc.problems), file=sys.stderr)
        raise _Exit(EXIT_USAGE) from exc
    if not Path(config.journal.path).exists():
        print(f"no journal at {config.journal.path} (has the daemon ever run?) / 未找到日志文件", file=sys.stderr)
        raise _Exit(EXIT_FAILURE)
    try:
        journal = Journal(config.journal.path, config.site.id)
    except JournalError as exc:
        print(str(exc), file=sys.stderr)
        raise _Exit(EXIT_FAILURE) from exc
    try:
        journal.run(lambda tx: RecordStore(tx.db, config).ensure_schema()).result()
    except Exception:
        journal.close()
        raise
    return config, journal, CliStore(journal, config)


class CliStore(RecordStore):
    """The record tables read here, and the journal whose inbox takes orders."""

    def __init__(self, journal: Journal, config) -> None:
        super().__init__(journal.reader(), config)
        self.journal = journal
        self._ready = True


def _command(fn: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import sqlite3

        try:
            config, journal, store = _context(args)
        except _Exit as exc:
            return exc.code
        try:
            return fn(args, config, store)
        except _Exit as exc:
            return exc.code
        except BrokenPipeError:
            return EXIT_OK
        except sqlite3.Error as exc:
            print(f"journal error: {exc} / 日志读写失败", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            journal.close()

    run.__doc__ = fn.__doc__
    return run


def _refused(result: dict[str, Any]) -> int:
    zh = result.get("message_zh")
    print(f"refused / 拒绝: {result.get('code')}: {result.get('message')}" + (f"（{zh}）" if zh else ""), file=sys.stderr)
    return EXIT_FAILURE


def _order(args, config, store, kind: str, payload: dict[str, Any], show: Callable[[dict[str, Any]], None]) -> int:
    """Check an order here, then hand it to the daemon and print its answer."""
    now = datetime.now(config.site.tz)
    try:
        store.plan(kind, payload, now)
    except RecordError as exc:
        return _refused(exc.to_dict())
    item = store.journal.inbox_put(kind, payload, now)
    end = time.monotonic() + max(0.0, args.wait)
    result = store.journal.inbox_result(item)
    while result is None and time.monotonic() < end:
        time.sleep(0.1)
        result = store.journal.inbox_result(item)
    if result is None:
        print(f"queued for the daemon (not running?) / 已提交，守护进程运行后即记录 (#{item})")
        return EXIT_OK
    if result.get("status") != "ok":
        return _refused(result)
    if getattr(args, "json", False):
        _json(result)
    else:
        show(result)
    return EXIT_OK


def _json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max([_width(h)] + [_width(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "  ".join(v + " " * (w - _width(v)) for v, w in zip(values, widths)).rstrip()

    print(line(headers))
    for r in cells:
        print(line(r))


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def _short(ts: str | None) -> str:
    return "" if not ts else ts[:19].replace("T", " ")


def _common(p: argparse.ArgumentParser, *, write: bool = False, json_out: bool = True) -> None:
    p.add_argument("--config", required=True)
    if json_out:
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    if write:
        p.add_argument("--wait", type=float, default=WAIT_S, help="seconds to wait for the daemon's answer")


# ------------------------------------------------------------------------ alarms


@_command
def cmd_alarm_list(args, config, store) -> int:
    """Alarms of every kind, newest first; --open: not acknowledged yet."""
    alarms = store.alarms(open_only=args.open, lane=args.lane, limit=args.limit)
    if args.json:
        _json(alarms)
        return EXIT_OK
    _table(["时间 time", "通道 lane", "告警 alarm", "状态 state", "事件 incident", "event_id"],
           [[_short(a["ts"]), a["lane_id"], f"{a['alarm_zh']} {a['alarm']}",
             "未确认 open" if a["open"] else f"已确认 {a['acknowledged_by']}", a["incident_id"] or "", a["event_id"]]
            for a in alarms])
    return EXIT_OK


@_command
def cmd_alarm_ack(args, config, store) -> int:
    """Acknowledge an alarm with a note (event id or a unique prefix of it)."""
    event_id = store.resolve("alarm", args.event_id)
    return _order(args, config, store, "alarm.ack", {"event_id": event_id, "by": args.by, "note": args.note},
                  lambda r: print(f"acknowledged / 已确认: {r['alarm']['alarm_zh']} {event_id} by {args.by}"))


# --------------------------------------------------------------------- incidents


def _show_incident(inc: dict[str, Any]) -> None:
    print(f"事件 incident {inc['incident_id']}  [{'处理中 open' if inc['open'] else '已关闭 closed'}]")
    print(f"  通道 lane:     {inc['lane_id']}")
    print(f"  类型 kind:     {inc['kind_zh']} {inc['kind']}")
    print(f"  事由 reason:   {inc['reason'] or ''}")
    print(f"  告警 alarm:    {inc['alarm_event_id'] or '-'}  (source {inc['source']})")
    print(f"  开始 opened:   {_short(inc['opened_at'])}" + (f" by {inc['opened_by']}" if inc["opened_by"] else ""))
    for i, a in enumerate(inc["accounts"], 1):
        print(f"  记录 account {i} ({_short(a.get('ts'))}, {a.get('by')}): {a.get('what')}")
        if a.get("plate"):
            print(f"      车牌 plate: {a['plate']}")
        if a.get("photos"):
            print(f"      照片 photos: {', '.join(a['photos'])}")
        if a.get("notified"):
            print(f"      已通知 notified: {', '.join(a['notified'])}")
    if not inc["open"]:
        print(f"  关闭 closed:   {_short(inc['closed_at'])} by {inc['closed_by']}: {inc['summary']}")


@_command
def cmd_incident_list(args, config, store) -> int:
    """Incident records (R8, R9), newest first; --open: not closed yet."""
    incidents = store.incidents(open_only=args.open, limit=args.limit)
    if args.json:
        _json(incidents)
        return EXIT_OK
    _table(["开始 opened", "通道 lane", "类型 kind", "状态 state", "记录 accounts", "incident_id"],
           [[_short(i["opened_at"]), i["lane_id"], f"{i['kind_zh']} {i['kind']}",
             "处理中 open" if i["open"] else "已关闭 closed", len(i["accounts"]), i["incident_id"]] for i in incidents])
    return EXIT_OK


@_command
def cmd_incident_show(args, config, store) -> int:
    """One incident with every account."""
    inc = store.incident(store.resolve("incident", args.incident_id))
    if inc is None:
        print(f"no incident {args.incident_id} / 没有该事件", file=sys.stderr)
        return EXIT_FAILURE
    _json(inc) if args.json else _show_incident(inc)
    return EXIT_OK


@_command
def cmd_incident_open(args, config, store) -> int:
    """Open an incident by hand (damage, scrapes, a forced passage the loops missed)."""
    payload = {"lane_id": args.lane, "kind": args.kind, "reason": args.reason, "by": args.by}
    return _order(args, config, store, "incident.open", payload, lambda r: _show_incident(r["incident"]))


@_command
def cmd_incident_account(args, config, store) -> int:
    """The guard's account: what happened, plate, photo file names, who was notified."""
    payload = {"incident_id": store.resolve("incident", args.incident_id), "by": args.by, "what": args.what,
               "plate": args.plate, "photos": args.photo or [], "notified": args.notified or []}
    return _order(args, config, store, "incident.account", payload, lambda r: _show_incident(r["incident"]))


@_command
def cmd_incident_close(args, config, store) -> int:
    """Close an incident with a summary (after at least one account)."""
    payload = {"incident_id": store.resolve("incident", args.incident_id), "by": args.by, "summary": args.summary}
    return _order(args, config, store, "incident.close", payload, lambda r: _show_incident(r["incident"]))


# ----------------------------------------------------------------------- tickets


def _show_ticket(t: dict[str, Any]) -> None:

    print(f"故障处理单 ticket {t['ticket_id']}  [{t['state_zh']} {t['state']}]")
    print(f"  设备 device:   {t['device_key']}  (lane {t['lane_id']})")
    print(f"  故障 reason:   {t['reason'] or ''}   来源 source: {t['source']}"
          + (f", 上报人 {t['reported_by']}" if t["reported_by"] else ""))
    print(f"  上报 opened:   {_short(t['opened_at'])}   故障次数 faults: {t['faults']}")
    if t["notified"]:
        told = ", ".join(f"{PARTIES.get(p, p)}({p}) {_short(at)}" for p, at in t["notified"].items())
        print(f"  通报 notified: {told}")
    if t["cause"] or t["solution"]:
        print(f"  类别 category: {CATEGORIES.get(t['category'], t['category'])} {t['category']}")
        print(f"  原因 cause:    {t['cause']}")
        print(f"  方案 solution: {t['solution']}")
    if t["fixed_at"]:
        print(f"  修复 fixed:    {_short(t['fixed_at'])}  修复用时 time to fix: {_dur(t['time_to_fix_s'])}")
    if t["closed_at"]:
        print(f"  关闭 closed:   {_short(t['closed_at'])}")
    print("  流程 history:")
    for h in t["history"]:
        frm = h.get("from")
        step = f"{TICKET_STATE_ZH.get(frm, frm)} -> " if frm else ""
        print(f"    {_short(h.get('ts'))}  {step}{TICKET_STATE_ZH.get(h['to'], h['to'])}"
              + (f"  by {h['by']}" if h.get("by") else "") + (f"  {h['note']}" if h.get("note") else ""))
    if t["next"]:
        print("  下一步 next:   " + ", ".join(f"{n}（{TICKET_STATE_ZH[n]}）" for n in t["next"]))


@_command
def cmd_ticket_list(args, config, store) -> int:
    """Fault tickets (故障处理单, R15), newest first; --open: not closed."""
    tickets = store.tickets(open_only=args.open, device=args.device, limit=args.limit)
    if args.json:
        _json(tickets)
        return EXIT_OK
    _table(["上报 opened", "设备 device", "状态 state", "故障 reason", "修复用时 to fix", "ticket_id"],
           [[_short(t["opened_at"]), t["device_key"], f"{t['state_zh']} {t['state']}", t["reason"],
             _dur(t["time_to_fix_s"]), t["ticket_id"]] for t in tickets])
    return EXIT_OK


@_command
def cmd_ticket_show(args, config, store) -> int:
    """One fault ticket with its whole flow."""
    t = store.ticket(store.resolve("ticket", args.ticket_id))
    if t is None:
        print(f"no ticket {args.ticket_id} / 没有该故障处理单", file=sys.stderr)
        return EXIT_FAILURE
    _json(t) if args.json else _show_ticket(t)
    return EXIT_OK


@_command
def cmd_ticket_open(args, config, store) -> int:
    """Open a ticket for an enterprise's fault report (R15; refused for declaration holds, R16)."""
    payload = {"device": args.device, "lane_id": args.lane, "reason": args.reason, "by": args.by,
               "passage_id": args.passage}
    return _order(args, config, store, "ticket.open", payload, lambda r: _show_ticket(r["ticket"]))


@_command
def cmd_ticket_advance(args, config, store) -> int:
    """Move a ticket one step: notified (--parties), diagnosing, fixed (--cause --solution
    --category), closed; illegal moves are refused and change nothing."""
    payload: dict[str, Any] = {"ticket_id": store.resolve("ticket", args.ticket_id), "to": args.to, "by": args.by,
                               "note": args.note}
    if args.parties is not None:
        payload["parties"] = args.parties
    if args.at is not None:
        payload["at"] = args.at
    for key in ("cause", "solution", "category"):
        if getattr(args, key) is not None:
            payload[key] = getattr(args, key)
    return _order(args, config, store, "ticket.advance", payload, lambda r: _show_ticket(r["ticket"]))


def _period(config, year: int | None, start: str | None, end: str | None) -> tuple[date, date]:
    today = datetime.now(config.site.tz).date()
    if year is not None:
        return date(year, 1, 1), date(year, 12, 31)
    s = date.fromisoformat(start) if start else date(today.year, 1, 1)
    e = date.fromisoformat(end) if end else date(s.year, 12, 31)
    return s, e


@_command
def cmd_ticket_figures(args, config, store) -> int:
    """Ticket figures per device for the yearly O&M review (运维年终考核)."""
    try:
        s, e = _period(config, args.year, args.start, args.end)
    except ValueError as exc:
        print(f"dates must be YYYY-MM-DD: {exc}", file=sys.stderr)
        return EXIT_USAGE
    figures = store.figures(s, e)
    if args.json:
        _json(figures)
        return EXIT_OK
    print(f"故障处理单统计 ticket figures {figures['from']} .. {figures['to']}")
    tot = figures["total"]
    rows = [[d["device"], d["tickets"], d["fixed"], _dur(d["mean_fix_s"]), _dur(d["max_fix_s"]), d["open_now"],
             "/".join(str(d["categories"][c]) for c in ("hardware", "software", "other"))] for d in figures["devices"]]
    rows.append(["合计 total", tot["tickets"], tot["fixed"], _dur(tot["mean_fix_s"]), _dur(tot["max_fix_s"]),
                 tot["open_now"], ""])
    _table(["设备 device", "单数 tickets", "已修复 fixed", "平均修复 mean", "最长修复 max", "未关闭 open",
            "硬/软/其他 hw/sw/other"], rows)
    return EXIT_OK


# ------------------------------------------------------------------------ shifts


def _show_duty(ev: dict[str, Any]) -> None:
    t = ev["type"]
    if t == "shift.handover":
        print(f"{_short(ev['ts'])}  交接班 handover  {ev['outgoing']} -> {ev['incoming']}")
        print(f"    未确认告警 open alarms: {len(ev['open_alarms'])}   处理中事件 open incidents: "
              f"{len(ev['open_incidents'])}   未关闭故障单 open tickets: {len(ev['open_tickets'])}")
        for key in ("open_alarms", "open_incidents", "open_tickets"):
            for ident in ev[key]:
                print(f"      {key[5:-1]} {ident}")
        if ev.get("notes"):
            print(f"    说明 notes: {ev['notes']}")
    elif t == "shift.check":

        phase = "上岗检查 start" if ev["phase"] == "start" else "下岗检查 end"
        bad = {d: h for d, h in ev["devices"].items() if h != "ok"}
        print(f"{_short(ev['ts'])}  {phase}  {ev['guard']}  设备 devices: {len(ev['devices'])}, "
              f"异常 not ok: {len(bad)}")
        for d, h in sorted(bad.items()):
            print(f"      {d}: {HEALTH_ZH.get(h, h)} {h}")
        if ev.get("remarks"):
            print(f"    说明 remarks: {ev['remarks']}")
    elif t == "video.note":
        print(f"{_short(ev['ts'])}  视频监控记录 video note  {ev['guard']}: {ev['note']}")


@_command
def cmd_shift_handover(args, config, store) -> int:
    """Hand the shift over (R13): open alarms, incidents and tickets carry over."""
    payload = {"outgoing": args.outgoing, "incoming": args.incoming, "notes": args.notes or ""}
    return _order(args, config, store, "shift.handover", payload, lambda r: _show_duty(r["event"]))


@_command
def cmd_shift_check(args, config, store) -> int:
    """Shift-start or shift-end equipment check: the daemon snapshots every device's health."""
    payload = {"phase": args.phase, "guard": args.guard, "remarks": args.remarks or ""}
    return _order(args, config, store, "shift.check", payload, lambda r: _show_duty(r["event"]))


@_command
def cmd_shift_note(args, config, store) -> int:
    """A video-monitoring note (视频监控记录)."""
    return _order(args, config, store, "video.note", {"guard": args.guard, "note": args.note},
                  lambda r: _show_duty(r["event"]))


@_command
def cmd_shift_list(args, config, store) -> int:
    """Duty records, newest first: handovers, equipment checks, video notes."""
    records = store.duty(limit=args.limit)
    if args.json:
        _json(records)
        return EXIT_OK
    for ev in records:
        _show_duty(ev)
    return EXIT_OK


# ------------------------------------------------------------------------ ledger


@_command
def cmd_ledger_equipment(args, config, store) -> int:
    """The daily equipment ledger (每日设备管理台账) of one day."""
    today = datetime.now(config.site.tz).date()
    try:
        day = date.fromisoformat(args.date) if args.date else today - timedelta(days=1)
    except ValueError:
        print("--date must be YYYY-MM-DD", file=sys.stderr)
        return EXIT_USAGE
    rows, final = store.equipment(day), True
    if not rows:
        rows, final = store.compute_equipment(day, datetime.now(config.site.tz)), False
    if args.json:
        _json({"date": day.isoformat(), "final": final, "rows": rows})
        return EXIT_OK
    print(f"每日设备管理台账 daily equipment ledger {day.isoformat()}"
          + ("" if final else "  （未入账，临时统计 / not written yet: figures so far）"))
    _table(["通道 lane", "设备 device", "可用率 availability", "故障次数 faults", "故障时长 faulty",
            "丢帧 frames dropped", "点检次数 checks"],
           [[r["lane_id"], r["device"], f"{r['availability'] * 100:.2f}%", r["faults"], _dur(r["faulty_s"]),
             r["frames_dropped"], r["checks"]] for r in rows])
    return EXIT_OK


# ---------------------------------------------------------------------- registry


def ledger_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``ledger`` group's subparsers, made if nobody made it yet (``ledger export``
    lives in another module; both add to the same group)."""
    parser = subparsers.choices.get("ledger")
    if parser is None:
        parser = subparsers.add_parser("ledger", help="ledgers / 台账")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest="ledger_command", required=True)


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``alarm``, ``incident``, ``ticket``, ``shift`` and ``ledger equipment``."""

    def group(name: str, help_: str) -> argparse._SubParsersAction:
        return subparsers.add_parser(name, help=help_).add_subparsers(dest=f"{name}_command", required=True)

    alarm = group("alarm", "alarms / 告警: list, acknowledge")
    p = alarm.add_parser("list", help="alarms of every kind")
    _common(p)
    p.add_argument("--open", action="store_true", help="only alarms not acknowledged")
    p.add_argument("--lane")
    p.add_argument("--limit", type=int, default=200)
    p.set_defaults(func=cmd_alarm_list)
    p = alarm.add_parser("ack", help="acknowledge an alarm with a note")
    _common(p, write=True)
    p.add_argument("event_id", help="the alarm's event_id (or a unique prefix, 6+ characters)")
    p.add_argument("--by", required=True, help="the guard's name")
    p.add_argument("--note", required=True, help="what was done / 处置说明")
    p.set_defaults(func=cmd_alarm_ack)

    incident = group("incident", "incident records / 事故记录 (R8, R9)")
    p = incident.add_parser("list", help="incidents, newest first")
    _common(p)
    p.add_argument("--open", action="store_true")
    p.add_argument("--limit", type=int, default=200)
    p.set_defaults(func=cmd_incident_list)
    p = incident.add_parser("show", help="one incident")
    _common(p)
    p.add_argument("incident_id")
    p.set_defaults(func=cmd_incident_show)
    p = incident.add_parser("open", help="open an incident by hand")
    _common(p, write=True)
    p.add_argument("--lane")
    p.add_argument("--kind", required=True, choices=list(INCIDENT_KINDS))
    p.add_argument("--reason", required=True)
    p.add_argument("--by", required=True)
    p.set_defaults(func=cmd_incident_open)
    p = incident.add_parser("account", help="add the guard's account")
    _common(p, write=True)
    p.add_argument("incident_id")
    p.add_argument("--by", required=True)
    p.add_argument("--what", required=True, help="what happened / 经过")
    p.add_argument("--plate", help="vehicle plate / 车牌")
    p.add_argument("--photo", action="append", help="a photo's file name (repeat)")
    p.add_argument("--notified", action="append", help="who was notified (repeat), e.g. 海关值班, 园区管理方")
    p.set_defaults(func=cmd_incident_account)
    p = incident.add_parser("close", help="close an incident")
    _common(p, write=True)
    p.add_argument("incident_id")
    p.add_argument("--by", required=True)
    p.add_argument("--summary", required=True, help="how it ended / 处理结果")
    p.set_defaults(func=cmd_incident_close)

    ticket = group("ticket", "fault tickets / 故障处理单 (R15)")
    p = ticket.add_parser("list", help="fault tickets, newest first")
    _common(p)
    p.add_argument("--open", action="store_true")
    p.add_argument("--device")
    p.add_argument("--limit", type=int, default=200)
    p.set_defaults(func=cmd_ticket_list)
    p = ticket.add_parser("show", help="one ticket and its flow")
    _common(p)
    p.add_argument("ticket_id")
    p.set_defaults(func=cmd_ticket_show)
    p = ticket.add_parser("open", help="open a ticket for an enterprise's fault report")
    _common(p, write=True)
    p.add_argument("--device", required=True, help="card_reader, weighbridge, barrier, an IO module name, ...")
    p.add_argument("--lane")
    p.add_argument("--reason", required=True, help="the fault as reported / 故障情况")
    p.add_argument("--by", required=True, help="who reported it / 上报人")
    p.add_argument("--passage", help="the passage that could not pass (refused if held for declared data, R16)")
    p.set_defaults(func=cmd_ticket_open)
    p = ticket.add_parser("advance", help="move a ticket to its next state")
    _common(p, write=True)
    p.add_argument("ticket_id")
    p.add_argument("--to", required=True, choices=list(TICKET_STATES))
    p.add_argument("--by", required=True)
    p.add_argument("--note")
    p.add_argument("--parties", help="notified: who was told, comma separated: customs,park,om")
    p.add_argument("--at", help="notified: when (ISO time; default now)")
    p.add_argument("--cause", help="fixed: the cause / 故障原因")
    p.add_argument("--solution", help="fixed: the solution / 解决方案")
    p.add_argument("--category", choices=list(CATEGORIES), help="fixed: hardware, software or other")
    p.set_defaults(func=cmd_ticket_advance)
    p = ticket.add_parser("figures", help="count and time to fix per device (yearly O&M review)")
    _common(p)
    p.add_argument("--year", type=int)
    p.add_argument("--from", dest="start")
    p.add_argument("--to", dest="end")
    p.set_defaults(func=cmd_ticket_figures)

    shift = group("shift", "duty records / 值班记录 (R13)")
    p = shift.add_parser("handover", help="hand the shift over")
    _common(p, write=True)
    p.add_argument("--outgoing", required=True, help="交班人")
    p.add_argument("--incoming", required=True, help="接班人")
    p.add_argument("--notes", default="", help="交接说明")
    p.set_defaults(func=cmd_shift_handover)
    p = shift.add_parser("check", help="shift-start or shift-end equipment check")
    _common(p, write=True)
    p.add_argument("--phase", required=True, choices=["start", "end"])
    p.add_argument("--guard", required=True)
    p.add_argument("--remarks", default="")
    p.set_defaults(func=cmd_shift_check)
    p = shift.add_parser("note", help="a video-monitoring note")
    _common(p, write=True)
    p.add_argument("--guard", required=True)
    p.add_argument("--note", required=True)
    p.set_defaults(func=cmd_shift_note)
    p = shift.add_parser("list", help="duty records, newest first")
    _common(p)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_shift_list)

    ledger = ledger_subparsers(subparsers)
    p = ledger.add_parser("equipment", help="the daily equipment ledger of one day")
    _common(p)
    p.add_argument("--date", help="YYYY-MM-DD (default yesterday)")
    p.set_defaults(func=cmd_ledger_equipment)
