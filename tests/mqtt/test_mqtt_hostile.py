"""Anyone on the broker, as an attacker would use it (#13 item 3): floods of junk
commands and approvals, payloads too large for their topic, and a journal row damaged
under the link. Every refusal is counted per surface and reason; the journal grows by a
record per topic and reason a minute (with the count), never one per message; a damaged
row is reported once and skipped; the lane passes vehicles afterwards."""

from __future__ import annotations

import asyncio
import json
import sqlite3

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatectl.approvals import public_key_b64
from signed import command
from simulators.site import FLEET

from .conftest import PREFIX, wait_until
from .test_mqtt_commands import approval, dumps

CUSTOMS = Ed25519PrivateKey.generate()


def rows(path: str) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        db.close()


async def test_issue13_mqtt_flood_and_oversize_payloads_are_counted_not_journaled_one_by_one(
    brokers, collectors, sites
) -> None:
    """#13 item 3: 1 500 junk spot checks and 100 unsigned approvals, as fast as a client
    can publish them, plus payloads too large for their topics. Every message is refused
    and counted (the inbox sheds what it cannot hold as ``busy``); the journal gains one
    ``approval.refused`` and a handful of counted ``command.refused`` records; the link
    stays up and a lorry passes."""
    broker = await brokers()
    col = await collectors(broker.port)
    h = await sites(broker.port, trust={"customs": [public_key_b64(CUSTOMS)]}, refused_interval=0.5)
    await wait_until(lambda: h.link.connected)
    before = rows(h.site.journal.path)

    await col.publish(f"{PREFIX}/cmd/approvals", b"{" + b" " * (70 * 1024) + b"}")
    await col.publish(f"{PREFIX}/cmd/spot-checks", b"x" * (20 * 1024))
    await col.publish(f"{PREFIX}/cmd/replay", b"x" * 5000)
    spot = dumps(command("spot-check", "B1-IN", hold_next=1))  # unsigned
    junk_approval = dumps(approval("AP-JUNK"))  # unsigned
    assert col.client is not None
    col.client.pending_calls_threshold = 10_000
    await asyncio.gather(*(col.client.publish(f"{PREFIX}/cmd/spot-checks", spot, qos=1) for _ in range(1500)))
    await asyncio.gather(*(col.client.publish(f"{PREFIX}/cmd/approvals", junk_approval, qos=1) for _ in range(100)))

    # The broker may shed some of a flood on its way out (its queue per client is
    # bounded); every message that reached the link is refused and counted.
    link = h.link
    last = -1
    while last != link.received or not link._inbox.empty():
        last = link.received
        await asyncio.sleep(1.0)
    counts = h.site.orders.refusals.counts
    assert link.received >= 800
    assert link.received == link.commands["refused"] + link.commands["approvals"]
    assert counts[("mqtt", "too_large")] == 3
    assert counts[("approval", "unsigned")] == link.commands["approvals"] >= 1
    assert counts[("command", "unsigned")] + counts[("mqtt", "busy")] == link.received - 3 - link.commands["approvals"]
    link.flush_refused()
    h.site.orders.refused.flush()
    await wait_until(lambda: sum(r["count"] for r in h.journal("_site", "command.refused"))
                     == link.commands["refused"] + counts[("approval", "unsigned")] - 1, timeout=10)
    grown = rows(h.site.journal.path) - before
    approvals = h.journal("B1-IN", "approval.refused")
    assert [a["approval_id"] for a in approvals] == ["AP-JUNK"]  # the first; the rest counted
    assert grown < 60, grown  # a record per topic, reason and interval, not one per message
    assert h.link.connected and h.link.outages == 0

    lane = h.sim.lane("B1-IN")
    assert await lane.drive(FLEET[0]) == "passed"


async def test_issue13_a_damaged_journal_row_is_reported_once_and_skipped_by_the_link_and_the_replay(
    brokers, collectors, sites, capsys
) -> None:
    """#13: an event body that is not JSON, met by the running daemon's MQTT link and its
    replay: reported once with file, lane and seq, left out, and every other event is
    published; the daemon does not stop and the lane passes vehicles."""
    broker = await brokers()
    h = await sites(broker.port)
    await wait_until(lambda: h.link.connected)
    lane = h.sim.lane("B1-IN")
    assert await lane.drive(FLEET[0]) == "passed"
    await wait_until(lambda: h.journal("B1-IN", "passage.closed") != [])
    await h.stop()

    path = h.site.journal.path
    db = sqlite3.connect(path)
    try:
        seqs = [s for (s,) in db.execute("SELECT seq FROM events WHERE lane_id = 'B1-IN' ORDER BY seq")]
        bad = seqs[len(seqs) // 2]
        db.execute("UPDATE events SET body = ? WHERE lane_id = 'B1-IN' AND seq = ?", (b"\xff{not json", bad))
        db.execute("DELETE FROM mqtt_cursor")  # publish everything again
        db.commit()
    finally:
        db.close()

    col = await collectors(broker.port)
    h2 = await sites.again(h)
    await wait_until(lambda: h2.link.connected)
    await wait_until(lambda: set(col.seqs("B1-IN")) >= set(seqs) - {bad}, timeout=20)
    assert bad not in col.seqs("B1-IN")
    assert all(isinstance(e, dict) for e in col.events("B1-IN"))

    # A replay over the damaged seq serves the rest of the range.
    before = len(col.events("B1-IN"))
    await col.publish(f"{PREFIX}/cmd/replay", json.dumps({"lane_id": "B1-IN", "from_seq": 1, "to_seq": seqs[-1]}))
    await wait_until(lambda: len(col.events("B1-IN")) - before >= len(seqs) - 1, timeout=20)
    assert bad not in col.seqs("B1-IN")

    out = capsys.readouterr()
    text = out.out + out.err
    reports = [line for line in text.splitlines() if "damaged event in the journal" in line]
    assert len(reports) == 1 and f"seq={bad}" in reports[0] and "lane=B1-IN" in reports[0] and path in reports[0]
    assert h2.site.orders.refusals.counts[("journal", "damaged_row")] == 1
    assert await lane.drive(FLEET[1]) in ("passed", "held")  # the lane goes on (the fleet's own script)
    assert h2.link.connected
