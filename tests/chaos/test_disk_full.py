"""Campaign 5: the journal's disk fills up under traffic (S6, S5).

A real ``SQLITE_FULL`` without mounting anything: ``PRAGMA max_page_count`` on the
daemon's own journal connection (the limit is per connection, so the daemon runs in this
process and the pragma is set on the journal writer's connection, by a journal job) is
lowered to the file's current size. Writes that fit in the pages already there still succeed, the rest fail, as on a disk
with a few bytes left. After a while the limit is raised again, as when space is freed.

Checked: while the journal cannot record, nothing lifts without its authorisation
committed (every open edge at the simulator is a journaled lift of its own authorisation,
committed before the edge) and no automatic authorisation is committed while a lane has
its journal fault open; the lanes fail closed (vehicles held); every event seen in the
file before or during the fill is still there at the end; once space returns the events
the lanes kept in memory are written, seq 1..n per lane, the journal fault closes by itself
and each lane passes vehicles again; the daemon never stopped.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime
from pathlib import Path

import pytest
from fastsite import fast_site

from simulators.site import free_tcp_port

from .harness import (
    TWO_BONDED_LANES,
    CoilRecorder,
    InProcess,
    JournalObserver,
    Traffic,
    fail_closed_problems,
    lift_problems,
    read_authorisations,
    read_events,
    seq_problems,
    wait_until,
    write_config,
)

LANES = TWO_BONDED_LANES
NO_LIMIT = 1073741823  # SQLite's default max_page_count


def _ts(e: dict) -> float:
    return datetime.fromisoformat(e["ts"]).timestamp()


async def disk_full_campaign(tmp_path: Path, figures: dict, *, fills: int, full_s: float, seed: int) -> None:
    rng = random.Random(seed)
    sim = fast_site(tmp_path / "site", LANES)
    await sim.start()
    config = write_config(sim, tmp_path)
    recorder = CoilRecorder(sim)
    daemon = InProcess(config)
    observer = JournalObserver(tmp_path / "gatectl.db", interval=0.1)
    traffic = Traffic(sim, rng, wait_for_lift_s=3.0, release_share=0.9)
    windows: list[tuple[float, float]] = []
    late_written = 0
    try:
        await daemon.start()
        observer.start()
        traffic.start()
        journal = daemon.site.journal

        def limit_pages(tx) -> tuple[int, int]:
            pages = tx.db.execute("PRAGMA page_count").fetchone()[0]
            return pages, tx.db.execute(f"PRAGMA max_page_count = {pages}").fetchone()[0]

        def journal_faulty() -> list[str]:
            return [lane for lane in daemon.site.lanes if "journal" in daemon.lane_faults(lane)]

        def passed_since(t0: float, lane: str) -> bool:
            return any(e["type"] == "passage.closed" and e["outcome"] == "passed" and e["lane_id"] == lane
                       and _ts(e) > t0 for e in daemon.events(lane))

        await wait_until(lambda: sum(1 for e in daemon.events() if e["type"] == "passage.closed") >= 2,
                         timeout=60, what="warm-up passages")
        for _ in range(fills):
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            pages, limit = journal.run(limit_pages).result(timeout=30)
            assert limit == pages
            full_at = time.time()
            # Traffic keeps coming: some write soon finds no page left.
            await wait_until(lambda: journal_faulty() != [] or daemon.crashed is not None, timeout=60,
                             what="a journal write failing")
            assert daemon.crashed is None, f"the daemon stopped on a full disk: {daemon.crashed!r}"
            await asyncio.sleep(full_s)
            assert daemon.crashed is None, f"the daemon stopped on a full disk: {daemon.crashed!r}"
            seen_before = set(observer.seen)
            journal.run(lambda tx: tx.db.execute(f"PRAGMA max_page_count = {NO_LIMIT}")).result(timeout=30)
            freed_at = time.time()
            windows.append((full_at, freed_at))
            await wait_until(lambda: journal_faulty() == [], timeout=60, what="journal fault closed")
            await wait_until(lambda: all(passed_since(freed_at, s.id) for s in LANES), timeout=60,
                             what="each lane passes a vehicle after space returned")
            observer.poll()
            late_written += sum(1 for key in set(observer.seen) - seen_before
                                if _ts(daemon.site.journal.events(key[0], key[1] - 1, 1)[0]) < freed_at)
        await traffic.stop()
        await wait_until(lambda: all(lane.barrier.position == "down" for lane in sim.lanes), timeout=30,
                         what="booms down")
        assert daemon.crashed is None, repr(daemon.crashed)
        unwritten = daemon.site.journal.queued
        await daemon.stop()
        await observer.stop()

        evs = read_events(tmp_path / "gatectl.db")
        auths = read_authorisations(tmp_path / "gatectl.db")
        in_windows = lambda t: any(a <= t <= b for a, b in windows)  # noqa: E731
        journal_faults = [e for e in evs if e["type"] == "fault.opened" and e["device"] == "journal"]
        refused = [e for e in evs if e["type"] == "alarm.raised" and e["alarm"] == "journal_fault"]
        held = [e for e in evs if e["type"] == "passage.held" and in_windows(_ts(e))]
        figures.update({
            "seed": seed,
            "fills": len(windows),
            "full_s": full_s,
            "passages_driven": len(traffic.results),
            "journal_fault_opened": len(journal_faults),
            "authorisations_refused_by_the_journal": len(refused),
            "held_while_full": sorted({e["reason"] for e in held}),
            "lift_edges_while_full": sum(1 for e in recorder.edges(kind="lift") if in_windows(e.t)),
            "events_written_after_space_returned": late_written,
            "events_checked": len(evs),
            "events_seen_during_run": len(observer.seen),
            "passed": sum(1 for e in evs if e["type"] == "passage.closed" and e["outcome"] == "passed"),
        })
        assert unwritten == 0, f"appends still held in memory: {unwritten}"
        assert len(journal_faults) >= len(windows) and late_written > 0
        lift_stats: dict = {}
        problems = (observer.lost(evs) + seq_problems(evs) + lift_problems(recorder, auths, evs, lift_stats)
                    + fail_closed_problems(evs))
        figures.update(lift_stats)
        assert not problems, "\n".join(problems)
    finally:
        await traffic.cancel()
        await daemon.stop()
        await observer.stop()
        await sim.stop()


@pytest.mark.timeout(180)
async def test_disk_full_short(tmp_path: Path, figures: dict) -> None:
    """The journal full twice for 4 s each under traffic on two lanes."""
    await disk_full_campaign(tmp_path, figures, fills=2, full_s=4.0, seed=51)


@pytest.mark.soak
@pytest.mark.timeout(1800)
async def test_disk_full_long(tmp_path: Path, figures: dict) -> None:
    """The journal full ten times for 30 s each (opt-in: --soak)."""
    await disk_full_campaign(tmp_path, figures, fills=10, full_s=30.0, seed=52)


# ---------------------------------------------------------------------- a real full disk


def _mount_tmpfs(where: Path, size: str) -> None:
    import subprocess

    where.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip() or out.returncode}): "
                    "needs root with CAP_SYS_ADMIN")


def _umount(where: Path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def _fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; return the filler file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        while True:
            try:
                f.write(chunk)
            except OSError:
                break
        while True:  # the last few bytes
            try:
                f.write(b"\0" * 512)
            except OSError:
                break
    return filler


async def real_disk_full_campaign(tmp_path: Path, figures: dict, *, fills: int, full_s: float, seed: int) -> None:
    """The journal on a small tmpfs, which a filler file fills to the last byte under
    traffic (ENOSPC from the kernel: the WAL cannot grow, checkpoints cannot extend the
    file); the daemon runs as ``gatectl run``. Same checks, from the API and the journal
    file. Skipped where a tmpfs cannot be mounted."""
    from .harness import Daemon

    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "8m")
    rng = random.Random(seed)
    sim = fast_site(tmp_path / "site", LANES)
    daemon: Daemon | None = None
    observer: JournalObserver | None = None
    traffic: Traffic | None = None
    try:
        await sim.start()
        config = sim.write_config(tmp_path / "site.yaml", journal_path=str(disk / "gatectl.db"),
                                  api_listen=f"127.0.0.1:{free_tcp_port()}")
        recorder = CoilRecorder(sim)
        daemon = Daemon(config, tmp_path / "daemon.log")
        observer = JournalObserver(disk / "gatectl.db", interval=0.2)
        traffic = Traffic(sim, rng, wait_for_lift_s=3.0, release_share=0.9)
        daemon.start()
        await daemon.wait_healthy()
        observer.start()
        traffic.start()
        windows = []
        journal_faults_seen = 0

        async def faulty() -> list[str]:
            return [lane["lane_id"] for lane in await daemon.lanes() if "journal" in lane["faults"]]

        for _ in range(fills):
            await asyncio.sleep(rng.uniform(2.0, 5.0))
            full_at = time.time()
            filler = await asyncio.to_thread(_fill, disk)
            loop = asyncio.get_running_loop()
            end = loop.time() + 120
            while not await faulty():
                assert daemon.alive, "the daemon died on a full disk:\n" + daemon.tail()
                assert loop.time() < end, "no journal fault within 120 s of a full disk"
                await asyncio.sleep(0.2)
            journal_faults_seen += 1
            await asyncio.sleep(full_s)
            assert daemon.alive, "the daemon died on a full disk:\n" + daemon.tail()
            filler.unlink()
            freed_at = time.time()
            windows.append((full_at, freed_at))
            end = loop.time() + 60
            while await faulty():
                assert loop.time() < end, "journal fault never closed after space returned"
                await asyncio.sleep(0.2)
            await wait_until(lambda: all(any(r[0] == s.id and r[2] == "passed" and r[3] > freed_at
                                             for r in traffic.results) for s in LANES),
                             timeout=60, what="each lane passes a vehicle after space returned")
        await traffic.stop()
        assert await daemon.terminate() == 0, daemon.tail()
        await observer.stop()
        evs = read_events(disk / "gatectl.db")
        auths = read_authorisations(disk / "gatectl.db")
        in_windows = lambda t: any(a <= t <= b for a, b in windows)  # noqa: E731
        figures.update({
            "fills": len(windows),
            "full_s": full_s,
            "seed": seed,
            "tmpfs": "8m",
            "passages_driven": len(traffic.results),
            "journal_fault_opened": sum(1 for e in evs if e["type"] == "fault.opened" and e["device"] == "journal"),
            "lift_edges_while_full": sum(1 for e in recorder.edges(kind="lift") if in_windows(e.t)),
            "events_checked": len(evs),
            "events_seen_during_run": len(observer.seen),
        })
        lift_stats: dict = {}
        problems = (observer.lost(evs) + seq_problems(evs) + lift_problems(recorder, auths, evs, lift_stats)
                    + fail_closed_problems(evs))
        figures.update(lift_stats)
        assert not problems, "\n".join(problems)
    finally:
        if traffic is not None:
            await traffic.cancel()
        if daemon is not None:
            daemon.cleanup()
        if observer is not None:
            await observer.stop()
        await sim.stop()
        _umount(disk)


@pytest.mark.timeout(240)
async def test_disk_full_real_tmpfs_short(tmp_path: Path, figures: dict) -> None:
    """A real full disk once, for 5 s (ENOSPC from a tmpfs)."""
    await real_disk_full_campaign(tmp_path, figures, fills=1, full_s=5.0, seed=54)


@pytest.mark.soak
@pytest.mark.timeout(1800)
async def test_disk_full_real_tmpfs_long(tmp_path: Path, figures: dict) -> None:
    """A real full disk five times for 20 s each (opt-in: --soak)."""
    await real_disk_full_campaign(tmp_path, figures, fills=5, full_s=20.0, seed=53)
