"""Every Chinese word gatectl shows people, one translation per term.

The guard's screen, the demo, the records, the checkpoint ledger, the CLI and the zone
central all take their words from here, so a passage ``passed`` is 已通行 everywhere and a
``degraded`` device 异常 everywhere. Codes stay codes in the data (and in the ledger's code
columns); these tables only say them in Chinese. ``zh(table, code)`` gives the code itself
for a code a table does not know (a newer gatectl), never a blank.

What the lane display says to a driver is not here: that is a rule of the lane
(``gatectl.lane.display``).
"""

from __future__ import annotations

from typing import Any, Mapping

from gatectl import events as ev
from gatectl.events import Stamped

KINDS = {
    "bonded": "保税",
    "ecommerce_9610": "9610",
    "non_bonded": "非保税",
    "administrative": "行政",
    "personnel": "人员",
    "shared": "保税/非保税共用",
}
DIRECTIONS = {"in": "进", "out": "出"}
STATES = {
    "starting": "启动中",
    "idle": "空闲",
    "present": "车辆到达",
    "weighing": "称重中",
    "deciding": "核验中",
    "authorising": "授权中",
    "open": "已抬杆",
    "lowering": "落杆中",
    "held": "不予放行",
}
DECISIONS = {"release": "放行", "hold": "不予放行", "inspect": "待检", "deny": "禁止通行"}
OUTCOMES = {
    "passed": "已通行",
    "held": "不予放行",
    "backed_out": "倒车离开",
    "forced": "闯卡",
    "emergency": "紧急放行",
    "manual": "手动抬杆",
}
OPEN_PASSAGE = "未结束"
AUTH_KINDS = {
    "release_instruction": "海关放行指令",
    "whitelist": "行政车辆白名单",
    "staff_card": "人员卡",
    "approval": "审批抬杆",
    "emergency": "紧急放行",
}
#: Why a passage was held or closed as it was (``passage.held`` and ``passage.closed`` reasons).
REASONS = {
    "hold": "海关指令不予放行",
    "inspect": "海关指令待检",
    "deny": "海关指令禁止通行",
    "no_authority": "通道未配置放行系统",
    "device_fault": "设备故障",
    "journal_error": "日志写入失败",
    "instruction_replay": "放行指令重复使用",
    "no_card": "未读到IC卡",
    "no_stable_weight": "未能稳定称重",
    "lift_interrupted": "抬杆中断",
    "forced_passage": "闯卡",
    "closed_hours": "非开放时间",
    "not_registered": "未登记车辆",
    "admin_overweight": "行政车辆超重（疑似夹带货物）",
    "not_staff": "非登记人员卡",
    "spot_check": "海关抽查",
    "authority_timeout": "海关系统超时无应答",
    "authority_connection": "海关系统连接失败",
    "authority_http_status": "海关系统返回错误",
    "authority_malformed": "海关系统应答格式错误",
    "authority_mismatch": "海关系统应答不匹配",
    "recovered_unobserved": "重启后未见车辆",
    "daemon_restart": "系统重启",
    "left_after_lift": "抬杆后车辆离开",
    "whitelist": "行政车辆白名单",
    "staff_card": "人员卡",
    "plate_mismatch": "车牌与登记不符",
    "plate_unread": "未识别到车牌",
    "kind_conflict": "两个系统均有申报，无法判定",
}
ALARMS = {
    "forced_passage": "闯卡",
    "tailgating": "跟车",
    "barrier_fault": "道闸故障",
    "instruction_replay": "指令重复",
    "emergency_release": "紧急放行",
    "device_fault": "设备故障",
    "authority_unreachable": "海关系统无应答",
    "journal_fault": "日志故障",
}
BARRIER_FAULTS = {
    "travel_timeout_up": "抬杆超时",
    "travel_timeout_down": "落杆超时",
    "never_left_down": "抬杆指令后未离开下限位",
    "both_limits": "上下限位同时有信号",
    "up_lost": "道闸未经指令离开上限位",
    "down_lost": "道闸未经指令离开下限位",
    "up_without_lift": "启动时道闸抬起且无授权",
}
HEALTH = {"ok": "正常", "degraded": "异常", "faulty": "故障", "unknown": "未知"}
DEVICES = {"card_reader": "读卡器", "weighbridge": "地磅", "barrier": "道闸", "journal": "日志"}
BARRIER_POSITIONS = {"up": "抬起", "down": "落下", "moving": "运动中", "conflict": "限位矛盾"}
TRIGGERS = {"panel": "现场按钮抬杆", "remote": "远程放行"}
#: Why an approval was asked for (its ``reason``).
APPROVAL_REASONS = {"equipment_fault": "设备故障", "network_fault": "网络故障", "other": "其他"}
#: Why an approval or a manual lift was refused.
REFUSALS = {
    "malformed": "审批单格式错误",
    "unsigned": "无海关签名",
    "unknown_key": "签名密钥不受信任",
    "bad_signature": "签名校验失败",
    "missing_chain": "审批链不完整",
    "missing_countersignature": "缺少园区管理方会签",
    "missing_park_signature": "缺少园区管理方签名",
    "unknown_lane": "通道不存在",
    "not_yet_valid": "审批单尚未生效",
    "expired": "审批单已过期",
    "exhausted": "审批次数已用完",
    "no_valid_approval": "无有效审批",
    "approval_exhausted": "审批次数已用完",
    "approval_expired": "审批已过期",
    "approval_not_yet_valid": "审批尚未生效",
    "lift_in_progress": "正在抬杆",
    "plate_mismatch": "车牌与审批不符",
    "countersignature_required": "需园区管理方会签",
}
APPROVAL_EVENTS = {
    "approval.accepted": "审批通过",
    "approval.refused": "审批被拒",
    "approval.expired": "审批过期未用",
    "manual_lift.refused": "手动抬杆被拒",
}
EMERGENCY_TYPES = ("警车", "消防车", "救护车", "其他")
INCIDENT_KINDS = {
    "forced_passage": "闯卡",
    "tailgating": "跟车",
    "barrier_fault": "道闸故障",
    "damage": "设施损坏/刮蹭/撞毁",
    "other": "其他",
}
INCIDENT_ACTIONS = {"incident.opened": "开启", "incident.updated": "处置", "incident.closed": "关闭"}
TICKET_STATES = {
    "reported": "已上报",
    "notified": "已通报",
    "diagnosing": "排查中",
    "fixed": "已修复",
    "closed": "已关闭",
}
TICKET_SOURCES = {"fault": "设备自动报障", "report": "人工上报"}
PARTIES = {"customs": "海关", "park": "园区管理方", "om": "运维单位"}
CATEGORIES = {"hardware": "硬件故障", "software": "软件故障", "other": "其他原因"}
DUTY = {"start": "上岗检查", "end": "下岗检查", "video.note": "视频监控记录"}
#: Labels of the content fields of records (what is not a column of its own).
FIELDS = {
    "what": "经过", "plate": "车牌", "photos": "照片", "notified": "已通知", "note": "备注", "parties": "通报对象",
    "at": "通报时间", "cause": "故障原因", "solution": "解决方案", "category": "故障类别", "passage_id": "通行编号",
}
SITE_WIDE = "全场"
DRILL = "演练"
HOURS = {True: "海关指令开放", False: "海关指令关闭"}
#: Whether a lane releases automatically now (its hours and customs' order together).
LANE_OPEN = {True: "开放", False: "非开放时间"}
#: Who a local API token belongs to (``GET /api/v1/whoami``'s ``role``).
ROLES = {"guard": "保安", "customs": "海关", "park": "园区管理方", "maintenance": "运维", "camera": "车牌识别",
         "full": "全部权限"}
#: A guard's verdict on one device at a shift check.
CHECK_VERDICTS = {"ok": "正常", "faulty": "故障"}
LEDGER_FORMATS = {"xlsx": "Excel 表格（xlsx）", "csv": "CSV 文本（csv）"}


def zh(table: Mapping[str, str], code: Any) -> str | None:
    """The word for ``code``; the code itself if the table has none; None for None."""
    if code is None:
        return None
    return table.get(code, str(code))


def device(name: str) -> str:
    """A lane device or an IO module (named as in the config)."""
    return DEVICES.get(name, f"IO模块 {name}")


def reason(code: str | None) -> str | None:
    return zh(REASONS, code)


def _auth(a: ev.Authorisation | None) -> str:
    if a is None:
        return ""
    return f"{AUTH_KINDS.get(a.kind, a.kind)} {a.id}"


def alarm_detail(e: ev.Event) -> str:
    """What a guard needs to know about one alarm, beyond its name."""
    match e:
        case ev.DeviceFaultAlarm():
            return f"{device(e.device)} {e.reason}".strip()
        case ev.ForcedPassageAlarm():
            return {"safety_loop": "安全线圈有车但未抬杆", "exit_loop": "出口线圈有车但未抬杆"}.get(e.loop, "")
        case ev.TailgatingAlarm():
            return "一次抬杆通过两辆车"
        case ev.BarrierFaultAlarm():
            return BARRIER_FAULTS.get(e.reason, e.reason)
        case ev.EmergencyReleaseAlarm():
            return "请登记特种车辆信息" if e.account_pending else "道闸已抬起"
        case ev.AuthorityUnreachableAlarm():
            return zh(REASONS, f"authority_{e.reason}") or ""
        case ev.InstructionReplayAlarm():
            return _auth(e.authorisation)
        case ev.JournalFaultAlarm():
            return e.detail
    return ""


def describe(st: Stamped) -> str:
    """One line in Chinese for a person reading the event stream (screen, demo)."""
    e = st.event
    match e:
        case ev.PassageOpened():
            return "紧急车辆到达" if e.emergency else ("审批抬杆" if e.approval_id else "车辆到达")
        case ev.CardRead():
            return f"刷卡 {e.card}"
        case ev.PlateRead():
            return f"车牌 {e.plate}"
        case ev.CardRefused():
            why = f"该卡在{e.lane}通道尚有未完成通行" if e.reason == "open_elsewhere" else "通道忙"
            return f"拒绝卡 {e.card} ({why})"
        case ev.WeightStable():
            return f"称重 {e.gross_weight_kg:.0f} kg"
        case ev.ReleaseRequested():
            return "请求海关放行指令"
        case ev.AuthorityDecision():
            return " ".join(str(x) for x in ("海关指令", zh(DECISIONS, e.decision), e.instruction_id, e.hint) if x)
        case ev.LocalDecision():
            return f"本通道名单核验: {zh(DECISIONS, e.decision)} ({reason(e.basis)})"
        case ev.ReleaseAnswered():
            answer = zh(DECISIONS, e.decision) if e.decision else f"无应答 ({e.reason})"
            return f"{zh(KINDS, e.lane_kind)}系统: {answer}"
        case ev.ReleaseFailed():
            return f"海关系统无应答 ({reason('authority_' + e.reason)})"
        case ev.AuthorisationCommitted():
            return f"授权已记入日志 ({_auth(e.authorisation)})"
        case ev.BarrierLifted():
            what = _auth(e.authorisation)
            return ("安全回抬" if e.reason == "safety_reverse" else "抬杆") + (f" ({what})" if what else "")
        case ev.BarrierLowered():
            return "落杆"
        case ev.BarrierLiftFailed():
            return "抬杆指令未执行"
        case ev.PassageHeld():
            return f"不予放行: {reason(e.reason)}"
        case ev.PassageClosed():
            text = f"通行结束: {zh(OUTCOMES, e.outcome)}" + (f" ({reason(e.reason)})" if e.reason else "")
            return f"[{DRILL}] {text}" if e.drill else text
        case ev.LaneRecovered():
            return "重启后恢复通行状态"
        case ev.SpotCheckApplied():
            return f"海关抽查 (剩余 {e.remaining})"
        case ev.SpotCheckOrdered():
            return "海关抽查指令"
        case ev.AlarmRaised():
            detail = alarm_detail(e)
            return f"报警: {zh(ALARMS, e.alarm)}" + (f" — {detail}" if detail else "")
        case ev.FaultOpened():
            return f"故障: {device(e.device)} {e.reason}".strip()
        case ev.FaultClosed():
            return f"恢复: {device(e.device)}"
        case ev.BarrierIncidentOpened() | ev.IncidentOpened():
            return f"事件记录 {zh(INCIDENT_KINDS, e.kind)}: {e.reason}"
        case ev.ManualLiftRefused():
            return f"手动抬杆被拒绝: {zh(REFUSALS, e.reason)}"
        case ev.ApprovalAccepted():
            return f"审批已接受 {e.approval_id}"
        case ev.ApprovalRefused():
            return f"审批被拒绝 {e.approval_id or ''}: {zh(REFUSALS, e.reason)}"
        case ev.ApprovalUsed():
            return f"审批抬杆 {e.approval_id} (第{e.use}次/共{e.max_lifts}次)"
        case ev.ApprovalExpired():
            return f"审批过期未用 {e.approval_id}"
        case ev.EmergencyAccountGiven():
            return f"紧急放行登记: {e.vehicle_type} {e.plate or ''} ({e.by})"
        case ev.AlarmAcknowledged():
            return f"报警已确认 ({e.by})"
        case ev.HoursOrderedEvent():
            if e.clear:
                return "海关指令取消，恢复开放时间"
            return f"{HOURS[bool(e.open)]}" + (f" 至 {e.until[:16]}" if e.until else "") + (
                f" ({e.reason})" if e.reason else "")
        case ev.IncidentUpdated():
            return f"事故记录 {e.incident_id} ({e.account.get('by') or ''})"
        case ev.IncidentClosed():
            return f"事件关闭 {e.incident_id} ({e.by})"
        case ev.TicketOpened():
            return f"故障处理单 {e.ticket_id} {zh(TICKET_SOURCES, e.source)}: {device(e.device)}"
        case ev.TicketAdvanced():
            return f"故障处理单 {e.ticket_id} {zh(TICKET_STATES, e.to)} ({e.by})"
        case ev.ShiftHandover():
            return f"交接班 {e.outgoing} → {e.incoming}"
        case ev.ShiftCheck():
            return f"{zh(DUTY, e.phase)} ({e.guard})"
        case ev.VideoNote():
            return f"{DUTY['video.note']} ({e.guard})"
        case ev.DrillStarted():
            return f"应急演练开始 {e.note}".strip()
        case ev.DrillEnded():
            return "应急演练结束"
    return st.type


__all__ = [name for name in globals() if name.isupper()] + ["zh", "device", "reason", "alarm_detail", "describe"]
