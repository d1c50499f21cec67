"""A lane whose release authority speaks gather-xml (CONTRACT 3.2), through the daemon."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastsite import fast_site

from gatectl.api import start_api
from gatectl.config import load_config
from gatectl.service import Site
from simulators.authority_gather import GatherAuthoritySimulator
from simulators.site import LaneSpec, Vehicle

from .conftest import wait_until, write_site_config

LANE = LaneSpec("E1-IN", "跨境电商9610进区", "ecommerce_9610", "in", "K005")
TRUCK = Vehicle("0100E2850E", "云A12345", 23480)
SECOND = Vehicle("06008E6D5D", "云A67890", 18800)


@pytest.fixture
async def gather_site(tmp_path: Path):
    sim = fast_site(tmp_path, [LANE])
    await sim.start()
    gather = GatherAuthoritySimulator()
    await gather.start()
    path = write_site_config(sim, tmp_path)
    text = path.read_text(encoding="utf-8").replace(
        "authorities:\n",
        "authorities:\n"
        "  logistics:\n"
        "    protocol: gather-xml\n"
        "    host: 127.0.0.1\n"
        f"    port: {gather.port}\n"
        '    area_id: "5301000001"\n'
        "    timeout_ms: 500\n"
        '    release_codes: ["^00"]\n',
        1,
    ).replace("    authority: customs\n", "    authority: logistics\n")
    path.write_text(text, encoding="utf-8")
    site = Site(load_config(path))
    runner = await start_api(site)
    stop = asyncio.Event()
    task = asyncio.create_task(site.run(stop))
    await wait_until(lambda: site.running)
    try:
        yield sim, gather, site
    finally:
        stop.set()
        await task
        await runner.cleanup()
        await gather.stop()
        await sim.stop()


def closed(site: Site) -> list[dict]:
    return [e for e in site.journal.events("E1-IN") if e["type"] == "passage.closed"]


async def test_gather_xml_release_hold_and_silence(gather_site) -> None:
    """R1, R3, S5: CHECK_RESULT matching release_codes lifts once, with instruction id
    FORM_ID+SEQ_NO and OP_HINT on the display; a hold code holds; a silent front end holds
    and raises authority_unreachable."""
    sim, gather, site = gather_site
    lane = sim.lane("E1-IN")
    gather.script(TRUCK.card, "release", hint="检查放行")
    gather.script(SECOND.card, "hold", hint="请到待检区")
    assert await lane.drive(TRUCK) == "passed"
    assert await lane.drive(SECOND, wait_for_lift_s=1.5) == "backed_out"
    await wait_until(lambda: len(closed(site)) == 2)
    assert [c["outcome"] for c in closed(site)] == ["passed", "held"]
    decided = [e for e in site.journal.events("E1-IN") if e["type"] == "release.decided"]
    first = decided[0]
    assert first["decision"] == "release" and first["hint"] == "检查放行"
    assert first["instruction_id"] == f"{first['form_id']}{gather.requests[0]['seq_no']}"
    assert gather.requests[0]["seq_no"] == first["request_id"]
    assert gather.requests[0]["dr_ic_no"] == TRUCK.card and gather.requests[0]["gross_wt"] == 23480
    assert lane.opens == 1

    gather.silent = True
    assert await lane.drive(TRUCK, wait_for_lift_s=2.0) == "backed_out"
    await wait_until(lambda: len(closed(site)) == 3)
    alarms = [e["alarm"] for e in site.journal.events("E1-IN") if e["type"] == "alarm.raised"]
    assert alarms == ["authority_unreachable"]
    assert lane.opens == 1
