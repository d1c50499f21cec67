"""sd_notify against a real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET.

Everything is counted, never timed: which messages arrive, in which order, and how many
watchdog pings arrive while the event loop is blocked (none).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from e2e.conftest import wait_until
from gatectl.config import load_config
from gatectl.service import Site
from gatectl.systemd import Notifier, notify_address, run_notifier, watchdog_seconds
from simulators.site import SimulatedSite

from .conftest import FakeSystemd, write_config


@pytest.fixture
def notify_path(tmp_path: Path):
    path = str(tmp_path / "notify.sock")
    fake = FakeSystemd(path)
    try:
        yield path, fake
    finally:
        fake.close()


def stub_site(running: bool = True) -> SimpleNamespace:
    """Just what the notifier looks at: lanes with a core that runs or not, and faults."""
    core = SimpleNamespace(running=running, faults={})
    lane = SimpleNamespace(id="B1-IN", core=core)
    return SimpleNamespace(lanes={"B1-IN": lane}, running=running)


def test_environment_parsing() -> None:
    assert notify_address(None) is None and notify_address("") is None
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@gatectl/notify") == "\0gatectl/notify"
    assert notify_address("vsock:2:1234") is None
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_seconds({}) is None
    n = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000"})
    assert n.enabled and n.ping_interval_s == 15.0
    # No NOTIFY_SOCKET: no watchdog either, whatever WATCHDOG_USEC says.
    assert Notifier({"WATCHDOG_USEC": "30000000"}).ping_interval_s is None


async def test_without_notify_socket_it_is_a_noop_that_waits_for_stop() -> None:
    n = Notifier({})
    assert not n.enabled and n.notify("READY=1") is False
    stop = asyncio.Event()
    task = asyncio.create_task(run_notifier(stub_site(), stop, notifier=n))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()  # Site.run would take a finished task for a failure
    stop.set()
    await asyncio.wait_for(task, 5)
    assert n.sent == 0


async def test_real_site_ready_only_once_lanes_run_then_pings_then_stopping(
    tmp_path: Path, notify_path, fast_sim: SimulatedSite
) -> None:
    """Wired as ``gatectl run`` should: ``site.add_task(lambda: run_notifier(site, stop))``.
    STATUS while starting, READY=1 once the lane runs (its STATUS says so), WATCHDOG=1 pings,
    and STOPPING=1 when the site stops on SIGTERM's ``stop``."""
    path, fake = notify_path
    site = Site(load_config(write_config(fast_sim, tmp_path)))
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})  # a ping every 0.1 s
    stop = asyncio.Event()
    site.add_task(lambda: run_notifier(site, stop, notifier=notifier), "systemd-notify")
    task = asyncio.create_task(site.run(stop))
    await wait_until(lambda: fake.count("READY=1") == 1)
    assert site.running
    lines = fake.lines()
    ready_at = lines.index("READY=1")
    assert lines[ready_at + 1] == "STATUS=running 1 lane"
    assert any(line.startswith("STATUS=starting") for line in lines[:ready_at])
    before = fake.count("WATCHDOG=1")
    await wait_until(lambda: fake.count("WATCHDOG=1") >= before + 3)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 20)
    lines = fake.lines()
    assert lines.count("STOPPING=1") == 1 and lines.count("READY=1") == 1
    assert lines.index("STOPPING=1") > lines.index("READY=1")


async def test_abstract_socket_and_fault_status() -> None:
    """``@name`` in NOTIFY_SOCKET is the abstract namespace; open faults show in STATUS."""
    name = f"gatectl-test-{uuid.uuid4().hex}"
    fake = FakeSystemd("\0" + name)
    try:
        site = stub_site()
        site.lanes["B1-IN"].core.faults["weighbridge"] = "silent"
        stop = asyncio.Event()
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        task = asyncio.create_task(run_notifier(site, stop, notifier=n, status_every_s=0.01))
        await wait_until(lambda: fake.count("READY=1") == 1)
        assert "STATUS=running 1 lane; faults: B1-IN/weighbridge" in fake.lines()
        site.lanes["B1-IN"].core.faults.clear()
        await wait_until(lambda: "STATUS=running 1 lane" in fake.lines())
        stop.set()
        await asyncio.wait_for(task, 5)
        assert fake.count("STOPPING=1") == 1
        assert fake.count("WATCHDOG=1") == 0  # no WATCHDOG_USEC, no pings
    finally:
        fake.close()


async def test_lane_stuck_starting_still_gets_ready_after_the_grace(notify_path) -> None:
    """A lane waiting for a dead IO module must not keep the whole process from READY (a
    start timeout would restart every lane): READY after the grace, STATUS names it."""
    path, fake = notify_path
    stop = asyncio.Event()
    n = Notifier({"NOTIFY_SOCKET": path})
    task = asyncio.create_task(run_notifier(stub_site(running=False), stop, notifier=n, ready_grace_s=0.0))
    await wait_until(lambda: fake.count("READY=1") == 1)
    assert "STATUS=running 0/1 lanes; still starting (failing closed): B1-IN" in fake.lines()
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_blocked_event_loop_sends_no_watchdog_ping(notify_path) -> None:
    """The pings come from the event loop: while a blocking call holds it, not one ping is
    sent (so systemd's watchdog fires); once it is free, they resume."""
    path, fake = notify_path
    stop = asyncio.Event()
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})  # a ping every 10 ms
    task = asyncio.create_task(run_notifier(stub_site(), stop, notifier=n))
    await wait_until(lambda: fake.count("WATCHDOG=1") >= 3)

    fake.drain()
    sent_before = n.sent
    time.sleep(0.3)  # a wedged loop: 30 ping intervals with the loop blocked
    during = fake.drain()
    assert [m for m in during if "WATCHDOG=1" in m] == []
    assert n.sent == sent_before

    after = fake.count("WATCHDOG=1")
    await wait_until(lambda: fake.count("WATCHDOG=1") >= after + 3)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert fake.count("STOPPING=1") == 1


async def test_missing_systemd_socket_is_logged_not_raised(tmp_path: Path) -> None:
    """systemd gone (or re-executing): sends fail quietly, the task goes on until stop."""
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens"), "WATCHDOG_USEC": "20000"})
    stop = asyncio.Event()
    task = asyncio.create_task(run_notifier(stub_site(), stop, notifier=n))
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert n.sent == 0
