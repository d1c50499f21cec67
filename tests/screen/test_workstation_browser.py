"""R13, R15, R8, R14, R12: the guard's workstation in headless Chromium, every action by
clicking, with the guard's own login, against the real daemon, records and simulated
site; after each action the journaled record is checked (its actor is the logged-in
guard, taken from the token). One browser session drives them all (a browser start costs
more than an action).

With GATECTL_SCREENSHOT_DOCS=1 the screenshots are written to docs/screens/ for
docs/workstation.md."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

from gatectl.lane.inputs import DrillOrdered, HoursOrdered, PlateRead
from journaling import record
from simulators.site import Vehicle

from .conftest import GUARD, ScreenSite, wait_until

INTRUDER = Vehicle(None, "云A3X882", 15400)
DOCS_SCREENS = Path(__file__).resolve().parents[2] / "docs" / "screens"


async def shot(page, tmp_path: Path, name: str, dialog: str | None = None) -> None:
    """A screenshot (of one dialog, or the whole page); kept for the docs on request."""
    path = tmp_path / f"{name}.png"
    if dialog:
        await page.locator(dialog).screenshot(path=str(path))
    else:
        await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5_000
    if os.environ.get("GATECTL_SCREENSHOT_DOCS") == "1":
        DOCS_SCREENS.mkdir(parents=True, exist_ok=True)
        (DOCS_SCREENS / path.name).write_bytes(path.read_bytes())


def duty(r: ScreenSite, type_: str) -> list[dict]:
    return r.events("_site", type_)


async def error_beside(page, form: str, field: str) -> str:
    """The error text shown under one field of a form (it must be visible)."""
    slot = page.locator(f'{form} [data-error-for="{field}"]')
    await slot.wait_for(state="visible")
    return await slot.inner_text()


async def test_r13_r15_guard_workstation_every_duty_by_clicking(page, screen_site: ScreenSite, tmp_path) -> None:
    r = screen_site
    name, token = GUARD
    assert r.alarms_real, "the workstation needs gatectl.records' routes"
    await page.goto(r.url + "/")
    await page.wait_for_selector('#conn[data-state="live"]')
    await page.wait_for_selector('.lane[data-lane="B1-IN"] .barrier[data-barrier="down"]')

    # Something to carry over: a van forces N1-OUT (alarm and incident, R8).
    await r.sim.lane("N1-OUT").force_through(INTRUDER)
    await wait_until(lambda: r.events("N1-OUT", "alarm.raised") and r.events("N1-OUT", "incident.opened"))
    (forced,) = r.events("N1-OUT", "alarm.raised")
    (opened,) = r.events("N1-OUT", "incident.opened")
    incident_id = opened["incident_id"]

    # ---- handover (R13). A form needs the guard's own login: it is asked for first.
    await page.click("#open-handover")
    await page.locator("#token-dialog").wait_for(state="visible")
    await page.fill("#token-input", token)
    await page.click("#token-save")
    dialog = page.locator("#handover-dialog")
    await dialog.wait_for(state="visible")
    assert await page.locator("#handover-dialog .me").inner_text() == name
    await page.wait_for_selector(f'#handover-items li[data-item="{forced["event_id"]}"]')
    await page.wait_for_selector(f'#handover-items li[data-item="{incident_id}"]')
    assert "闯卡" in await page.locator(f'#handover-items li[data-item="{forced["event_id"]}"]').inner_text()
    # The browser's checks, beside the fields; nothing is sent.
    await page.click("#handover-form button[type=submit]")
    assert "核对遗留事项" in await error_beside(page, "#handover-form", "confirmed")
    assert "接班人姓名" in await error_beside(page, "#handover-form", "incoming")
    await page.check("#handover-form [name=confirmed]")
    await page.fill("#handover-form [name=incoming]", name)
    await page.fill("#handover-form [name=notes]", "N1-OUT 闯卡已报海关，录像已调取")
    await page.click("#handover-form button[type=submit]")
    assert "本人" in await error_beside(page, "#handover-form", "incoming")
    # What is carried over changes while the form is open: it must be confirmed again.
    fault = record(r.site, "B1-IN", "alarm.raised", {"alarm": "device_fault", "device": "card_reader",
                                                      "reason": "no answer"})
    await page.fill("#handover-form [name=incoming]", "李保安")
    await page.click("#handover-form button[type=submit]")
    assert "变化" in await error_beside(page, "#handover-form", "confirmed")
    await page.wait_for_selector(f'#handover-items li[data-item="{fault["event_id"]}"]')
    assert not duty(r, "shift.handover")
    # Nothing typed was lost on the refusals.
    assert await page.input_value("#handover-form [name=incoming]") == "李保安"
    assert await page.input_value("#handover-form [name=notes]") == "N1-OUT 闯卡已报海关，录像已调取"
    await shot(page, tmp_path, "handover", "#handover-dialog")
    await page.check("#handover-form [name=confirmed]")
    await page.click("#handover-form button[type=submit]")
    await dialog.wait_for(state="hidden")
    await wait_until(lambda: duty(r, "shift.handover"))
    (handover,) = duty(r, "shift.handover")
    assert (handover["outgoing"], handover["incoming"], handover["notes"]) == (name, "李保安", "N1-OUT 闯卡已报海关，录像已调取")
    assert {forced["event_id"], fault["event_id"]} <= set(handover["open_alarms"])
    assert incident_id in handover["open_incidents"]
    await page.wait_for_selector('#duty li[data-type="shift.handover"]')

    # ---- shift-start equipment check: every device of every lane, faulty ones explained.
    await page.click("#open-check-start")
    await page.locator("#check-dialog").wait_for(state="visible")
    assert await page.locator("#check-form input[name=phase][value=start]").is_checked()
    rows = page.locator("#check-devices tr")
    keys = [await rows.nth(i).get_attribute("data-device") for i in range(await rows.count())]
    assert {"B1-IN/card_reader", "B1-IN/weighbridge", "B1-IN/barrier", "N1-OUT/card_reader"} <= set(keys)
    await page.click("#check-form button[type=submit]")
    assert "检查结果" in await error_beside(page, "#check-form", "v:B1-IN/barrier")
    for key in keys:
        verdict = "faulty" if key == "B1-IN/weighbridge" else "ok"
        await page.check(f'#check-form input[name="v:{key}"][value="{verdict}"]')
    await page.click("#check-form button[type=submit]")
    assert "说明" in await error_beside(page, "#check-form", "n:B1-IN/weighbridge")
    await page.fill('#check-form input[name="n:B1-IN/weighbridge"]', "读数跳动，空载不回零")
    await page.fill("#check-form [name=remarks]", "岗亭照明正常")
    await shot(page, tmp_path, "shift-check", "#check-dialog")
    await page.click("#check-form button[type=submit]")
    await page.locator("#check-dialog").wait_for(state="hidden")
    await wait_until(lambda: duty(r, "shift.check"))
    (check,) = duty(r, "shift.check")
    assert (check["phase"], check["guard"]) == ("start", name)
    assert "B1-IN/weighbridge 地磅：故障 — 读数跳动，空载不回零" in check["remarks"]
    assert "B1-IN/barrier 道闸：正常" in check["remarks"] and "其他说明：岗亭照明正常" in check["remarks"]
    assert check["devices"], "the daemon's own view of the devices goes with the guard's"

    # ---- video-monitoring and anomaly note.
    await page.click("#open-video")
    await page.click("#video-form button[type=submit]")
    assert "记录内容" in await error_beside(page, "#video-form", "note")
    await page.fill("#video-form [name=note]", "22:10 N1-OUT 录像：面包车未停车冲卡，已报海关值班")
    await page.click("#video-form button[type=submit]")
    await page.locator("#video-dialog").wait_for(state="hidden")
    await wait_until(lambda: duty(r, "video.note"))
    (note,) = duty(r, "video.note")
    assert (note["guard"], note["note"]) == (name, "22:10 N1-OUT 录像：面包车未停车冲卡，已报海关值班")

    # ---- fault report (R15), then a second one for the same device: the server refuses
    # it (one open ticket per device) and says so beside the device, keeping the text.
    for attempt in (1, 2):
        await page.click("#open-ticket")
        await page.locator("#ticket-dialog").wait_for(state="visible")
        await page.select_option("#ticket-form [name=lane_id]", "B1-IN")
        await page.select_option("#ticket-form [name=device]", "weighbridge")
        await page.fill("#ticket-form [name=reason]", "地磅读数跳动，空载不回零")
        await page.click("#ticket-form button[type=submit]")
        if attempt == 1:
            await page.locator("#ticket-dialog").wait_for(state="hidden")
    refusal = await error_beside(page, "#ticket-form", "device")
    # (a ticket the daemon opened itself for a device fault may be there too)
    (opened_ticket,) = [t for t in r.events("B1-IN", "ticket.opened") if t["source"] == "report"]
    assert opened_ticket["ticket_id"] in refusal and "服务器拒绝" in refusal
    assert await page.input_value("#ticket-form [name=reason]") == "地磅读数跳动，空载不回零"
    assert (opened_ticket["device"], opened_ticket["by"], opened_ticket["source"]) == ("weighbridge", name, "report")
    await page.click("#ticket-form .cancel")
    ticket_id = opened_ticket["ticket_id"]

    # Its progress: notified (who was told), diagnosing, fixed (cause, solution, category).
    item = page.locator(f'#tickets li[data-ticket="{ticket_id}"]')
    for before, step in (("reported", "notified"), ("notified", "diagnosing"), ("diagnosing", "fixed")):
        await page.wait_for_selector(f'#tickets li[data-ticket="{ticket_id}"][data-state="{before}"] button.advance')
        await item.locator("button.advance").click()
        await page.locator("#advance-dialog").wait_for(state="visible")
        assert await page.input_value("#advance-form [name=to]") == step
        if step == "notified":
            await page.click("#advance-form button[type=submit]")
            assert "通报" in await error_beside(page, "#advance-form", "parties")
            await page.check('#advance-form input[name=parties][value="customs"]')
            await page.check('#advance-form input[name=parties][value="om"]')
        if step == "fixed":
            await page.click("#advance-form button[type=submit]")
            assert "故障原因" in await error_beside(page, "#advance-form", "cause")
            await page.fill("#advance-form [name=cause]", "称重仪表接线端子松动")
            await page.fill("#advance-form [name=solution]", "紧固端子，重新标定")
            await page.select_option("#advance-form [name=category]", "hardware")
            await shot(page, tmp_path, "ticket-fixed", "#advance-dialog")
        await page.click("#advance-form button[type=submit]")
        await page.locator("#advance-dialog").wait_for(state="hidden")
        await wait_until(lambda s=step: any(e["to"] == s and e["ticket_id"] == ticket_id
                                            for e in r.events("B1-IN", "ticket.advanced")))
    steps = {e["to"]: e for e in r.events("B1-IN", "ticket.advanced") if e["ticket_id"] == ticket_id}
    assert steps["notified"]["parties"] == ["customs", "om"] and steps["notified"]["by"] == name
    assert (steps["fixed"]["cause"], steps["fixed"]["category"], steps["fixed"]["by"]) == (
        "称重仪表接线端子松动", "hardware", name)

    # ---- incidents (R8): the forced passage's incident closes only after its account.
    inc = page.locator(f'#incidents li[data-incident="{incident_id}"]')
    await inc.wait_for()
    assert await inc.locator("button.close-inc").is_disabled()
    await inc.locator("button.account-inc").click()
    await page.locator("#account-inc-dialog").wait_for(state="visible")
    await page.click("#account-inc-form button[type=submit]")
    assert "经过" in await error_beside(page, "#account-inc-form", "what")
    await page.fill("#account-inc-form [name=what]", "面包车未刷卡冲过 N1-OUT 道闸，道闸未损坏")
    await page.fill("#account-inc-form [name=plate]", INTRUDER.plate)
    await page.fill("#account-inc-form [name=photos]", "N1-OUT-2210.mp4，N1-OUT-2210.jpg")
    await page.check('#account-inc-form input[name=notified][value="海关"]')
    await page.check('#account-inc-form input[name=notified][value="园区管理方"]')
    await shot(page, tmp_path, "incident-account", "#account-inc-dialog")
    await page.click("#account-inc-form button[type=submit]")
    await page.locator("#account-inc-dialog").wait_for(state="hidden")
    await wait_until(lambda: r.events("N1-OUT", "incident.updated"))
    (updated,) = r.events("N1-OUT", "incident.updated")
    assert updated["account"] == {"by": name, "what": "面包车未刷卡冲过 N1-OUT 道闸，道闸未损坏", "plate": INTRUDER.plate,
                                  "photos": ["N1-OUT-2210.mp4", "N1-OUT-2210.jpg"], "notified": ["海关", "园区管理方"]}
    await page.wait_for_selector(f'#incidents li[data-incident="{incident_id}"][data-accounts="1"]')
    await inc.locator("button.close-inc").click()
    await page.locator("#close-inc-dialog").wait_for(state="visible")
    await page.fill("#close-inc-form [name=summary]", "已移交海关处理")
    await page.click("#close-inc-form button[type=submit]")
    await page.locator("#close-inc-dialog").wait_for(state="hidden")
    await wait_until(lambda: r.events("N1-OUT", "incident.closed"))
    (closed,) = r.events("N1-OUT", "incident.closed")
    assert (closed["incident_id"], closed["by"], closed["summary"]) == (incident_id, name, "已移交海关处理")
    await inc.wait_for(state="detached")

    # A damage the guard saw: a new incident record.
    await page.click("#open-incident")
    await page.select_option("#incident-form [name=lane_id]", "B1-IN")
    await page.select_option("#incident-form [name=kind]", "damage")
    await page.fill("#incident-form [name=reason]", "货车倒车刮蹭 B1-IN 道闸立柱")
    await page.click("#incident-form button[type=submit]")
    await page.locator("#incident-dialog").wait_for(state="hidden")
    await wait_until(lambda: r.events("B1-IN", "incident.opened"))
    (damage,) = r.events("B1-IN", "incident.opened")
    assert (damage["kind"], damage["by"], damage["reason"]) == ("damage", name, "货车倒车刮蹭 B1-IN 道闸立柱")
    await page.wait_for_selector(f'#incidents li[data-incident="{damage["incident_id"]}"][data-accounts="0"]')

    # ---- alarm acknowledgement (kept working), in the guard's name.
    await page.locator(f'.alarm.open[data-event-id="{fault["event_id"]}"] button.ack').click()
    await page.locator("#ack-dialog").wait_for(state="visible")
    await page.fill("#ack-note", "已通知运维")
    await page.click("#ack-submit")
    await page.locator("#ack-dialog").wait_for(state="hidden")
    await wait_until(lambda: [e for e in r.events("B1-IN", "alarm.acknowledged")
                              if e["alarm_event_id"] == fault["event_id"]])

    # ---- the ledger download (R14): the form builds GET /api/v1/ledger?from&to&format.
    await page.click("#open-ledger")
    await page.locator("#ledger-dialog").wait_for(state="visible")
    await page.fill("#ledger-form [name=from]", "2026-03-16")
    await page.fill("#ledger-form [name=to]", "2026-03-01")
    await page.click("#ledger-form button[type=submit]")
    assert "早于" in await error_beside(page, "#ledger-form", "to")
    await page.fill("#ledger-form [name=from]", "2026-03-01")
    await page.fill("#ledger-form [name=to]", "2026-03-15")
    await page.check('#ledger-form input[name=format][value="csv"]')
    await shot(page, tmp_path, "ledger", "#ledger-dialog")
    has_route = any(getattr(rt.resource, "canonical", None) == "/api/v1/ledger" for rt in r.runner.app.router.routes())
    async with page.expect_request(lambda req: "/api/v1/ledger?" in req.url) as asked:
        if has_route:
            async with page.expect_download() as got:
                await page.click("#ledger-form button[type=submit]")
            assert (await got.value).suggested_filename.endswith(".csv")
        else:
            await page.click("#ledger-form button[type=submit]")
    assert (await asked.value).url == f"{r.url}/api/v1/ledger?from=2026-03-01&to=2026-03-15&format=csv"
    if not has_route:
        await page.locator("#ledger-form .form-error").wait_for(state="visible")
        assert "404" in await page.locator("#ledger-form .form-error").inner_text()
    await page.click("#ledger-form .cancel")

    # ---- the lane card (R12): customs' hours order, a drill, the plate, open or not.
    now = r.site.now()
    await r.site.submit("B1-IN", HoursOrdered(open=False, until=now + timedelta(hours=2), reason="海关临时关闭",
                                              source="local_api", by="海关"))
    await r.site.submit("N1-OUT", DrillOrdered(start=True, by="园区管理方", note="冲卡处置演练"))
    card = page.locator('.lane[data-lane="B1-IN"]')
    order = card.locator(".hours-order")
    await order.wait_for()
    assert "海关指令关闭" in await order.inner_text() and "海关临时关闭" in await order.inner_text()
    assert await card.locator(".open-badge").inner_text() == "非开放时间"
    assert await card.locator(".drill-badge").count() == 0
    drill = page.locator('.lane.drill[data-lane="N1-OUT"] .drill-badge')
    await drill.wait_for()
    assert await drill.inner_text() == "演练"
    assert await page.locator('.lane[data-lane="N1-OUT"] .open-badge').inner_text() == "开放"
    lane = r.sim.lane("B1-IN")
    lane.set_loop("arrival", True)
    await wait_until(lambda: r.site.lanes["B1-IN"].core.state.value == "present")
    await r.site.submit("B1-IN", PlateRead("云A12345"))
    await page.wait_for_selector('.lane[data-lane="B1-IN"] .plate:text("云A12345")')
    # The events list says the records in words too.
    events = await page.locator("#events").inner_text()
    assert f"故障处理单 {ticket_id} 已修复 ({name})" in events
    await page.evaluate("document.querySelector('#notice').hidden = true")  # the passing notice, not for the docs
    await shot(page, tmp_path, "workstation")

    # Nothing failed but the refusals asked for.
    refused = [f.split(" ")[0] for f in page.failed_responses]
    assert sorted(refused) == sorted(["409"] + ([] if has_route else ["404"])), page.failed_responses
    assert not [m for m in page.console_messages if m.startswith("pageerror")], page.console_messages
    assert re.search(r"未确认报警 \d", await page.locator("#alarm-count").inner_text())
