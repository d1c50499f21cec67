"""What the lane display tells the driver (R6, R12), Chinese.

The core chooses a text by the lane's situation; this module only holds the words, so the
guard's screen, the docs and the tests name the same texts.
"""

from __future__ import annotations

TEXT_WELCOME = "欢迎通行，请停车刷卡"
TEXT_CARD = "请刷IC卡"
TEXT_WEIGHING = "正在称重，请停稳"
TEXT_DECIDING = "正在核验，请稍候"
TEXT_RELEASED = "核放通过，请通行"
TEXT_INSPECTION = "请驶入待检区，打开箱门等候海关查验"
TEXT_NO_ANSWER = "海关系统无应答，暂不放行"
TEXT_FAULT = "设备故障，暂停自动放行，请联系值班人员"
TEXT_NO_CARD = "未读到IC卡，暂不放行"
TEXT_NO_WEIGHT = "未能稳定称重，暂不放行"
TEXT_NO_AUTHORITY = "本通道未配置放行系统，暂不放行"
TEXT_EMERGENCY = "特种车辆紧急放行"
TEXT_ONE_BY_ONE = "请勿跟车，一车一杆"
TEXT_FORCED = "闯卡报警！已通知海关及园区管理方"
TEXT_INTERRUPTED = "抬杆中断，请联系值班人员"
TEXT_CLOSED = "本通道现为非开放时间，暂停自动放行"
TEXT_GUARD = "请联系值班保安"
TEXT_NOT_RELEASED = "不予放行"

#: Why the lane holds a vehicle, as the display says it (the first part of the hold text).
HOLD_TEXTS = {
    "no_authority": TEXT_NO_AUTHORITY,
    "device_fault": TEXT_FAULT,
    "journal_error": TEXT_FAULT,
    "instruction_replay": "放行指令已使用过，不予重复抬杆",
    "no_card": TEXT_NO_CARD,
    "no_stable_weight": TEXT_NO_WEIGHT,
    "lift_interrupted": TEXT_INTERRUPTED,
    "forced_passage": TEXT_FORCED,
    "closed_hours": TEXT_CLOSED,
    "not_registered": "未登记车辆，暂不放行",
    "admin_overweight": "行政车辆严禁夹带货物，车重超出登记整备质量",
    "not_staff": "非登记人员卡，暂不放行",
    "spot_check": "海关抽查",
}


def card_open_elsewhere(lane: str) -> str:
    return f"该卡在{lane}通道尚有未完成通行，请联系值班人员"


def hold_text(reason: str, hint: str | None, personnel: bool) -> str:
    """The display for a held vehicle: why, then where to go (R6). A lift that was lost
    (the authorisation spent, the barrier still down) is the guard's to sort out there."""
    if reason == "lift_interrupted":
        return TEXT_INTERRUPTED
    if reason in ("hold", "inspect", "deny"):
        text = hint or TEXT_NOT_RELEASED
    elif reason.startswith("authority_"):
        text = TEXT_NO_ANSWER
    else:
        text = HOLD_TEXTS.get(reason, TEXT_FAULT)
    return f"{text}；{TEXT_GUARD if personnel else TEXT_INSPECTION}"
