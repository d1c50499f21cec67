"""What the lane display tells the driver (R6, R12), Chinese.

The core chooses a text by the lane's situation; this module holds the words and the one
rule for a vehicle that is not released (``hold_text``), so the guard's screen, the docs
(``docs/reference/display.md``, written from ``DISPLAY_TABLE``) and the tests name the
same texts.

Where a held vehicle is sent depends on why, and on the lane:

- a customs denial (``deny``): back out, nothing to inspect;
- a customs hold or inspection (``hold``, ``inspect``), a spot check, and every other hold
  on a goods lane: the inspection area (待检区), said once;
- administrative and personnel lanes have no inspection area for cars and people: the
  guard on duty deals with them, in their own words;
- a lift that was lost (the authorisation spent, the barrier still down): the guard.
"""

from __future__ import annotations

TEXT_WELCOME = "欢迎通行，请停车刷卡"
TEXT_CARD = "请刷IC卡"
TEXT_WEIGHING = "正在称重，请停稳"
TEXT_DECIDING = "正在核验，请稍候"
TEXT_RELEASED = "核放通过，请通行"
TEXT_INSPECTION = "请驶入待检区，打开箱门等候海关查验"
TEXT_BACK_OUT = "请倒车驶离"
TEXT_NO_ANSWER = "海关系统无应答，暂不放行"
TEXT_FAULT = "设备故障，暂停自动放行，请联系值班人员"
#: A vehicle held for a fault is told where to go after it: never two places.
TEXT_FAULT_HELD = "设备故障，暂停自动放行"
TEXT_NO_CARD = "未读到IC卡，暂不放行"
TEXT_NO_WEIGHT = "未能稳定称重，暂不放行"
TEXT_NO_AUTHORITY = "本通道未配置放行系统，暂不放行"
TEXT_EMERGENCY = "特种车辆紧急放行"
TEXT_ONE_BY_ONE = "请勿跟车，一车一杆"
TEXT_FORCED = "闯卡报警！已通知海关及园区管理方"
TEXT_INTERRUPTED = "抬杆中断，请联系值班人员"
TEXT_CLOSED = "本通道现为非开放时间，暂停自动放行"
TEXT_GUARD = "请联系值班保安"
TEXT_DENIED = "不予放行"
TEXT_HELD = "海关指令暂不放行"
TEXT_TO_INSPECT = "海关布控查验"

#: Why the lane holds a vehicle, as the display says it (the first part of the hold text).
HOLD_TEXTS = {
    "no_authority": TEXT_NO_AUTHORITY,
    "device_fault": TEXT_FAULT_HELD,
    "journal_error": TEXT_FAULT_HELD,
    "instruction_replay": "放行指令已使用过，不予重复抬杆",
    "no_card": TEXT_NO_CARD,
    "no_stable_weight": TEXT_NO_WEIGHT,
    "lift_interrupted": TEXT_INTERRUPTED,
    "forced_passage": TEXT_FORCED,
    "closed_hours": TEXT_CLOSED,
    "not_registered": "未登记车辆，暂不放行",
    "admin_overweight": "行政车辆严禁夹带货物，车重超出登记整备质量",
    "not_staff": "非登记人员卡，暂不放行",
    "plate_mismatch": "车牌与登记不符，暂不放行",
    "plate_unread": "未识别到车牌，暂不放行",
    "spot_check": "海关抽查",
    "kind_conflict": "申报信息冲突，暂不放行",
}
#: The default words of a customs decision the authority gave no hint for.
DECISION_TEXTS = {"deny": TEXT_DENIED, "hold": TEXT_HELD, "inspect": TEXT_TO_INSPECT}


def card_open_elsewhere(lane: str) -> str:
    return f"该卡在{lane}通道尚有未完成通行，请联系值班人员"


def _then(text: str, where: str, *marks: str) -> str:
    """``text``, then where to go, unless the text already says it."""
    return text if any(m in text for m in marks) else f"{text}；{where}"


def hold_text(reason: str, hint: str | None, kind: str) -> str:
    """The display for a held vehicle of a lane of ``kind``: why, then where to go (R6)."""
    if reason == "lift_interrupted":
        return TEXT_INTERRUPTED
    if reason in DECISION_TEXTS:
        why = hint or DECISION_TEXTS[reason]
    elif reason.startswith("authority_"):
        why = TEXT_NO_ANSWER
    else:
        why = HOLD_TEXTS.get(reason, TEXT_FAULT_HELD)
    if kind in ("administrative", "personnel"):
        return _then(why, TEXT_GUARD, "保安", "值班")
    if reason == "deny":
        return _then(why, TEXT_BACK_OUT, "倒车", "驶离")
    return _then(why, TEXT_INSPECTION, "待检区")


#: (lane kind, reason, hint) -> display, for the docs' table and its test.
DISPLAY_TABLE: tuple[tuple[str, str, str | None], ...] = (
    ("bonded", "deny", None),
    ("bonded", "deny", "不予放行，请倒车驶离"),
    ("bonded", "hold", None),
    ("bonded", "hold", "申报重量不符"),
    ("bonded", "inspect", None),
    ("bonded", "inspect", "请驶入待检区，打开箱门等候海关查验"),
    ("bonded", "spot_check", None),
    ("bonded", "authority_timeout", None),
    ("bonded", "device_fault", None),
    ("bonded", "no_card", None),
    ("bonded", "no_stable_weight", None),
    ("bonded", "closed_hours", None),
    ("bonded", "instruction_replay", None),
    ("bonded", "kind_conflict", None),
    ("bonded", "lift_interrupted", None),
    ("administrative", "not_registered", None),
    ("administrative", "admin_overweight", None),
    ("administrative", "plate_mismatch", None),
    ("administrative", "plate_unread", None),
    ("administrative", "spot_check", None),
    ("personnel", "not_staff", None),
)
