"""``gatectl devices``: what an ops engineer sees when probing a lane's devices on site."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from simulators.site import SimulatedSite

from .conftest import BONDED, write_site_config


async def test_devices_probe_shows_inputs_cards_and_weights(tmp_path: Path) -> None:
    """Issue: per-device diagnostics. The probe prints each IO point's live value, the
    cards the reader decodes and whether the indicator settles, and exits 0."""
    sim = SimulatedSite(tmp_path, [BONDED], travel_s=0.2, speed=5.0, weigh_interval_s=0.05)
    await sim.start()
    try:
        config = write_site_config(sim, tmp_path)
        lane = sim.lane("B1-IN")
        lane.set_loop("arrival", True)
        lane.weigh(20000)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gatectl", "devices", "--config", str(config), "--seconds", "4",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        presenting = asyncio.create_task(_present_until_done(lane, proc))
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        presenting.cancel()
        text = out.decode()
        assert proc.returncode == 0, err.decode()
        assert "io1 (modbus-tcp" in text and ": OK" in text
        assert "B1-IN.arrival_loop = 1" in text and "B1-IN.safety_loop = 0" in text
        assert "card 0100E2850E" in text
        assert "20000 kg stable" in text
    finally:
        await sim.stop()


async def _present_until_done(lane, proc) -> None:
    while proc.returncode is None:
        lane.reader.present("0100E2850E")
        await asyncio.sleep(0.5)
