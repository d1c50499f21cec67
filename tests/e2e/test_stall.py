"""The lane waits on nothing (S2): clients reading the journal as hard as they can do not
delay the barrier's reaction to its safety loop.

A journal of 30 000 events; four clients (another process) read
``/api/v1/events?limit=10000`` and ``/api/v1/lanes`` in a loop. A released truck drives
through; a quarter of a second after the close pulse a second vehicle noses under the
falling boom. The barrier must rise again (a safety reverse) and never reach its down
limit with the safety loop occupied. Not timed: what is asserted is what the barrier did.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest

from gatectl import events as ev
from gatectl.api import start_api
from gatectl.config import load_config
from gatectl.journal import Entry, Journal
from gatectl.service import Site
from simulators.site import FLEET, SCRIPT, SimulatedSite

from .conftest import BONDED, wait_until, write_site_config

RELEASED = next(v for v in FLEET if SCRIPT[v.card] == "release")

READERS = textwrap.dedent("""
    import sys, threading, urllib.request
    base, stop_file = sys.argv[1], sys.argv[2]
    import os
    def read(path):
        while not os.path.exists(stop_file):
            try:
                with urllib.request.urlopen(base + path, timeout=30) as r:
                    r.read()
            except OSError:
                pass
    paths = ["/api/v1/events?limit=10000", "/api/v1/events?limit=10000&since_seq=5000",
             "/api/v1/lanes", "/api/v1/events?limit=10000"]
    threads = [threading.Thread(target=read, args=(p,)) for p in paths]
    for t in threads: t.start()
    for t in threads: t.join()
""")


def prefill(path: Path, site_id: str, lane: str, n: int) -> None:
    """``n`` events of old passages, as a lane PC has after some weeks."""
    journal = Journal(path, site_id)
    now = datetime.now().astimezone()
    try:
        for start in range(0, n, 1000):
            journal.write(lane, [Entry(ev.LoopChanged(loop="arrival_loop", occupied=bool(i % 2)), now)
                                 for i in range(start, min(start + 1000, n))])
    finally:
        journal.close()


@pytest.mark.timeout(240)
async def test_s2_a_vehicle_under_the_falling_boom_is_seen_while_clients_read_the_journal_hard(tmp_path: Path) -> None:
    """S2 under load: the safety loop occupied 0.25 s after the close pulse makes the
    barrier rise again, whatever the API is doing."""
    sim = SimulatedSite(tmp_path, [BONDED], travel_s=1.4, speed=5.0, weigh_interval_s=0.05)
    await sim.start()
    cfg_path = write_site_config(sim, tmp_path)
    config = load_config(cfg_path)
    prefill(config.journal.path, config.site.id, BONDED.id, 30_000)
    site = Site(config)
    runner = await start_api(site)
    stop = asyncio.Event()
    task = asyncio.create_task(site.run(stop))
    stop_file = tmp_path / "stop-readers"
    readers = None
    lane = sim.lanes[0]
    try:
        await wait_until(lambda: site.running)
        readers = subprocess.Popen([sys.executable, "-c", READERS, f"http://{config.local_api.listen}",
                                    str(stop_file)])
        await asyncio.sleep(2.0)  # the readers are at it
        closes = lane.closes
        driving = asyncio.create_task(lane.drive(RELEASED))
        await wait_until(lambda: lane.closes > closes, timeout=60)
        await asyncio.sleep(0.25)
        lane.set_loop("safety", True)  # a second vehicle, under the falling boom
        occupied_and_down = False
        end = asyncio.get_running_loop().time() + 6.0
        while asyncio.get_running_loop().time() < end:
            if lane.barrier.position == "down":
                occupied_and_down = True
                break
            if lane.barrier.position == "up" and lane.opens >= 2:
                break  # risen again over the vehicle: the reverse happened
            await asyncio.sleep(0.005)
        assert not occupied_and_down, "S2: the barrier reached its down limit on an occupied safety loop"
        lifts = [e for e in site.journal.events(BONDED.id) if e["type"] == "barrier.lifted"]
        assert [e["reason"] for e in lifts][-2:] == ["lift", "safety_reverse"]
        lane.set_loop("safety", False)
        await driving
    finally:
        stop_file.write_text("stop")
        if readers is not None:
            try:
                readers.wait(timeout=30)
            except subprocess.TimeoutExpired:
                readers.kill()
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
        await sim.stop()
