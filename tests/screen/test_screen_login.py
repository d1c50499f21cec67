"""The guard logs in on the screen with the guard's own token (CONTRACT 8): the page shows
who is logged in, the name fields are the guard's and cannot be changed, and what the
guard acknowledges is journaled in the guard's name. A wrong token is refused at login."""

from __future__ import annotations

from .conftest import GUARD, ScreenSite, wait_until
from journaling import record


async def test_contract8_guard_logs_in_and_acknowledges_an_alarm_in_their_own_name(
    page, screen_site: ScreenSite
) -> None:
    r = screen_site
    name, token = GUARD
    await page.goto(r.url + "/")
    await page.wait_for_selector('#conn[data-state="live"]')
    assert await page.locator("#token-button").inner_text() == "登录"

    # A wrong token is refused at login and nothing is kept.
    await page.click("#token-button")
    await page.fill("#token-input", "not-a-token")
    await page.click("#token-save")
    # A locator, not wait_for_function: the screen's CSP forbids eval, which that may need.
    await page.locator("#token-status", has_text="403").wait_for()
    assert await page.evaluate("sessionStorage.getItem('gatectl.token')") is None
    await page.fill("#token-input", token)
    await page.click("#token-save")
    await page.locator("#token-dialog").wait_for(state="hidden")
    assert await page.locator("#token-button").inner_text() == f"{name}（保安）"

    alarm = record(r.site, "B1-IN", "alarm.raised", {"alarm": "device_fault", "device": "card_reader",
                                                     "reason": "silent"})
    item = page.locator(f'.alarm.open[data-event-id="{alarm["event_id"]}"]')
    await item.wait_for()
    await item.locator("button.ack").click()
    await page.locator("#ack-dialog").wait_for(state="visible")
    assert await page.locator("#ack-token").is_hidden()  # logged in: no token asked
    assert await page.input_value("#ack-name") == name
    assert await page.locator("#ack-name").get_attribute("readonly") is not None
    await page.fill("#ack-note", "已通知运维")
    await page.click("#ack-submit")
    await page.locator("#ack-dialog").wait_for(state="hidden")
    await wait_until(lambda: r.events("B1-IN", "alarm.acknowledged"))
    (ack,) = r.events("B1-IN", "alarm.acknowledged")
    assert (ack["alarm_event_id"], ack["by"], ack["note"]) == (alarm["event_id"], name, "已通知运维")
    assert not [m for m in page.console_messages if m.startswith("pageerror")]
