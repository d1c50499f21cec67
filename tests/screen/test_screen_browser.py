"""R12, R11: the guard's screen in headless Chromium against the real daemon and the
simulated site: a vehicle released and passing shows up live (card, weight, decision,
barrier, then a recent-passage row); a forced passage raises an alarm the guard
acknowledges through the page (token, name, note); an emergency release gets its account
through the page. Skipped when Chromium or Playwright is missing."""

from __future__ import annotations

import asyncio

from simulators.site import Vehicle

from .conftest import TOKEN, ScreenSite, keep_screenshot, wait_until

TRUCK = Vehicle("3A00F1229B", "云A12345", 31250)
INTRUDER = Vehicle(None, "云A3X882", 15400)


def lane_sel(lane: str) -> str:
    return f'.lane[data-lane="{lane}"]'


async def step(r: ScreenSite, lane, loop: str, on: bool) -> None:
    lane.set_loop(loop, on)
    await asyncio.sleep(r.sim.min_dwell_s)


async def test_screen_shows_a_passage_live_and_the_guard_acknowledges_a_forced_passage(
    page, screen_site: ScreenSite, tmp_path
) -> None:
    """R12: each lane live, the authority's decision, the recent passage; R8: a forced
    passage's alarm, acknowledged from the screen with the token, journaled as
    alarm.acknowledged."""
    r = screen_site
    await page.goto(r.url + "/")
    await page.wait_for_selector('#conn[data-state="live"]')
    b1 = page.locator(lane_sel("B1-IN"))
    await b1.wait_for()
    await page.wait_for_selector(f'{lane_sel("B1-IN")} .barrier[data-barrier="down"]')
    assert await page.locator(lane_sel("N1-OUT")).count() == 1
    assert await b1.locator(".state").inner_text() == "空闲"
    assert await page.locator("#alarms-section").is_hidden()

    # A released lorry on B1-IN: arrival loop, card, weight -> the authority says release -> lift.
    r.sim.authority.script(TRUCK.card, "release")
    lane = r.sim.lane("B1-IN")
    await step(r, lane, "arrival", True)
    await wait_until(lambda: r.site.lanes["B1-IN"].core.state.value == "present")
    await page.wait_for_selector(f'{lane_sel("B1-IN")} .vehicle[data-present="1"]')
    lane.reader.present(TRUCK.card)
    await wait_until(lambda: r.events("B1-IN", "card.read"))
    lane.weigh(TRUCK.gross_kg)
    await page.wait_for_selector(f'{lane_sel("B1-IN")} .decision[data-decision="release"]')
    await page.wait_for_selector(f'{lane_sel("B1-IN")} .barrier[data-barrier="up"]')
    assert await b1.locator(".card").inner_text() == TRUCK.card
    assert "31,250" in await b1.locator(".weight").inner_text()
    assert "放行" in await b1.locator(".decision").inner_text()
    hint = r.events("B1-IN", "release.decided")[0].get("hint")
    if hint:
        assert hint in await b1.locator(".decision").inner_text()
    assert await b1.locator(".state").inner_text() == "已抬杆"
    assert await b1.locator(".led").inner_text() == r.site.lanes["B1-IN"].core.display
    # Every device of the lane shows its health.
    devices = await b1.locator(".dev").all_inner_texts()
    assert any(t.startswith("读卡器") for t in devices) and any(t.startswith("地磅") for t in devices)
    assert all(("正常" in t) for t in devices), devices

    # Meanwhile a van forces its way through N1-OUT: the alarm is on the screen at once.
    await r.sim.lane("N1-OUT").force_through(INTRUDER)
    await wait_until(lambda: r.events("N1-OUT", "alarm.raised"))
    alarm = page.locator('.alarm.open[data-alarm="forced_passage"]')
    await alarm.wait_for()
    assert "闯卡" in await alarm.inner_text() and "N1-OUT" in await alarm.inner_text()
    alarm_id = await alarm.get_attribute("data-event-id")
    assert alarm_id in {e["event_id"] for e in r.events("N1-OUT", "alarm.raised")}
    assert await page.locator("#alarm-count").inner_text() == "未确认报警 1"
    shot = tmp_path / "screen.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    keep_screenshot(shot)

    # The lorry drives through; the barrier comes down; the passage is listed as passed.
    for loop, on in [("safety", True), ("arrival", False), ("exit", True), ("safety", False), ("exit", False)]:
        if loop == "arrival":
            lane.weigh(0)
        await step(r, lane, loop, on)
    row = page.locator('#passages tr[data-outcome="passed"]', has_text=TRUCK.card)
    await row.wait_for()
    assert "已通行" in await row.inner_text() and "B1-IN" in await row.inner_text()
    await page.wait_for_selector('#passages tr[data-outcome="forced"]')
    await wait_until(lambda: lane.barrier.position == "down")
    await page.wait_for_selector(f'{lane_sel("B1-IN")} .barrier[data-barrier="down"]')

    # The guard acknowledges the alarm: no token kept yet, so the dialog asks for one. A
    # wrong token is refused clearly and nothing is recorded.
    await alarm.locator("button.ack").click()
    dialog = page.locator("#ack-dialog")
    await dialog.wait_for(state="visible")
    assert await page.locator("#ack-token").is_visible()
    await page.fill("#ack-token", "not-the-token")
    await page.fill("#ack-name", "王保安")
    await page.fill("#ack-note", "已通知海关，调取录像")
    await page.click("#ack-submit")
    error = page.locator("#ack-error")
    await error.wait_for(state="visible")
    assert "403" in await error.inner_text() and "令牌" in await error.inner_text()
    assert not r.events("N1-OUT", "alarm.acknowledged")
    assert await page.locator("#ack-token").is_visible()
    await page.fill("#ack-token", TOKEN)
    await page.click("#ack-submit")
    await dialog.wait_for(state="hidden")

    acked = page.locator(f'.alarm.acked[data-event-id="{alarm_id}"]')
    await acked.wait_for()
    assert "王保安" in await acked.inner_text()
    assert await page.locator(f'.alarm.open[data-event-id="{alarm_id}"]').count() == 0
    assert await page.locator("#alarm-count").inner_text() == "无未确认报警"
    acks = [e for e in r.events("N1-OUT", "alarm.acknowledged") if alarm_id in e.values()]
    assert len(acks) == 1 and acks[0]["by"] == "王保安" and acks[0]["note"] == "已通知海关，调取录像"
    assert alarm_id not in await r.open_alarm_ids()
    # The token is kept for this tab only.
    assert await page.evaluate("sessionStorage.getItem('gatectl.token')") == TOKEN
    await page.screenshot(path=str(tmp_path / "screen-acknowledged.png"), full_page=True)

    # Nothing failed to load; the one refusal was the wrong token's.
    assert [f.split(" ")[0] for f in page.failed_responses] == ["403"], page.failed_responses
    assert not [m for m in page.console_messages if m.startswith("pageerror")], page.console_messages


async def test_guard_enters_the_account_of_an_emergency_release(page, screen_site: ScreenSite, tmp_path) -> None:
    """R11: an emergency release owes an account; the guard enters it on the screen
    (vehicle type, plate, note, name) and it is journaled as emergency.account."""
    r = screen_site
    await page.goto(r.url + "/")
    await page.wait_for_selector('#conn[data-state="live"]')
    await page.wait_for_selector(f'{lane_sel("B1-IN")} .barrier[data-barrier="down"]')
    lane = r.sim.lane("B1-IN")
    await lane.press("emergency")
    await page.wait_for_selector('.alarm.open[data-alarm="emergency_release"]')
    await page.wait_for_selector(f'{lane_sel("B1-IN")} .barrier[data-barrier="up"]')
    for loop, on in [("safety", True), ("exit", True), ("safety", False), ("exit", False)]:
        await step(r, lane, loop, on)
    owed = page.locator("#owed li.owed")
    await owed.wait_for()
    passage_id = await owed.get_attribute("data-passage")
    assert [e["outcome"] for e in r.events("B1-IN", "passage.closed")] == ["emergency"]
    await page.wait_for_selector(f'#passages tr[data-outcome="emergency"][data-passage="{passage_id}"] button')

    await owed.locator("button").click()
    await page.locator("#account-dialog").wait_for(state="visible")
    await page.fill("#account-token", TOKEN)
    await page.select_option("#account-type", "消防车")
    await page.fill("#account-plate", "云A119XF")
    await page.fill("#account-note", "园区仓库火警出警")
    await page.fill("#account-by", "李保安")
    await page.screenshot(path=str(tmp_path / "screen-account.png"))
    await page.click("#account-submit")
    await page.locator("#account-dialog").wait_for(state="hidden")

    await wait_until(lambda: r.events("B1-IN", "emergency.account"))
    (account,) = r.events("B1-IN", "emergency.account")
    assert (account["passage_id"], account["vehicle_type"], account["plate"], account["note"], account["by"]) == (
        passage_id, "消防车", "云A119XF", "园区仓库火警出警", "李保安"
    )
    await page.locator("#owed li.owed").wait_for(state="detached")
    assert await page.locator(f'#passages tr[data-passage="{passage_id}"] button').count() == 0
