"""Hostile approvals against the running daemon (#13, R10, R17, S1): refused with their
reason by the CLI and the local API, nothing of them stored, and the lane goes on passing
vehicles and honouring valid approvals.

The issue's case: ``max_lifts`` 2**63 signed by a trusted customs key. Before, `gatectl
approval add` said "queued", SQLite raised OverflowError in the daemon's inbox, and every
restart died on the same row.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp

from gatectl.approvals import public_key_b64, sign, signing_bytes
from simulators.site import Vehicle

from .conftest import wait_until
from .test_approvals_e2e import CUSTOMS, approval, drive_through, site  # noqa: F401 - `site` is a fixture

TRUCK = Vehicle("0100E2850E", "云A12345", 31250)


def trusted(doc: dict) -> dict:
    """Signed by the trusted customs key over exactly these bytes, limits or not."""
    doc = dict(doc)
    sig = CUSTOMS.sign(signing_bytes(doc))
    doc["signatures"] = [{"role": "customs", "sig": base64.b64encode(sig).decode(), "key": public_key_b64(CUSTOMS)}]
    return doc


async def wait_for_state(daemon, lane_id: str, state: str) -> None:
    """Poll GET /api/v1/lanes until the lane is in `state`."""
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            async with http.get(daemon.api + "/api/v1/lanes") as r:
                lanes = {lane["lane_id"]: lane for lane in (await r.json())["lanes"]}
            if lanes[lane_id]["state"] == state:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{lane_id} never {state}: {lanes[lane_id]['state']}")


def stored(journal: Path) -> tuple[int, int]:
    """(approvals stored, orders left in the inbox) in the daemon's journal."""
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return (db.execute("SELECT COUNT(*) FROM approvals").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM inbox").fetchone()[0])
    finally:
        db.close()


async def test_issue_hostile_approvals_refused_nothing_stored_and_the_lane_runs_on(site, tmp_path: Path) -> None:
    sim, daemon = site
    journal = Path(daemon.config.journal.path)
    big = trusted(approval(approval_id="AP-BIG", max_lifts=2**63))

    # The CLI refuses at once, exit 1, and never says "queued".
    file = tmp_path / "big.json"
    file.write_text(json.dumps(big, ensure_ascii=False), encoding="utf-8")
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gatectl", "approval", "add", "--config", str(tmp_path / "site.yaml"), str(file)],
        capture_output=True, text=True,
    )
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "refused: malformed" in out.stderr and "max_lifts" in out.stderr and "queued" not in out.stdout + out.stderr
    assert "Traceback" not in out.stderr

    # The local API refuses it and its neighbours with 422 and the reason.
    deep = json.dumps(approval(approval_id="AP-DEEP"), ensure_ascii=False)[:-1] + ', "x": ' + "[" * 6000 + "]" * 6000 + "}"
    window = trusted(approval(approval_id="AP-LONG", end=40 * 86400))
    many = trusted(approval(approval_id="AP-MANY"))
    many["signatures"] = many["signatures"] * 9
    plate = trusted(approval(approval_id="AP-PLATE", plate="云A" * 250_000))
    for body in (big, deep, window, many, trusted(approval(approval_id="AP-ZERO", max_lifts=0))):
        status, result = await daemon.post("/api/v1/approvals", body)
        assert status == 422 and result["status"] == "refused" and result["reason"] == "malformed", result
    # Beyond the route's 64 KB the body is not even read: 413 at the HTTP edge.
    status, result = await daemon.post("/api/v1/approvals", plate)
    assert status == 413 and result["reason"] == "too_large", result
    assert stored(journal) == (0, 0)

    # The daemon runs on: a released truck passes, a valid remote approval lifts once.
    sim.authority.script(TRUCK.card, "release")
    lane = sim.lane("B1-IN")
    assert await lane.drive(TRUCK) == "passed"
    await wait_until(lambda: lane.barrier.position == "down")
    await wait_for_state(daemon, "B1-IN", "idle")  # R17: a remote approval lifts an idle lane at once
    status, result = await daemon.post("/api/v1/approvals", sign(
        approval(approval_id="AP-OK", trigger="remote", max_lifts=100), "customs", CUSTOMS))
    assert status == 200, result
    await wait_until(lambda: lane.barrier.position == "up")
    await drive_through(lane)
    await wait_until(lambda: lane.barrier.position == "down")
    assert lane.opens == 2
    assert [c["outcome"] for c in daemon.events("B1-IN", "passage.closed")] == ["passed", "manual"]
    assert stored(journal)[0] == 1
