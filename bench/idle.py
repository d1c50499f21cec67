"""Bench 5: idle, four lanes with nobody about, IO polled every 50 ms.

The simulators run in this process (one IO module, four card readers and four weighing
indicators on ptys; the indicators send 10 frames a second, as real ones do whether or
not a lorry is on the bridge). Against them, in windows that alternate:

- gatectl: ``gatectl run --config`` in its own process (local API up, journal open);
- baseline: a minimal asyncio script in its own process doing the same I/O: a pymodbus
  client reading the same discrete inputs every 50 ms, and the eight serial ports opened
  with pyserial-asyncio-fast and read (bytes dropped).

Each process is measured from ``/proc/<pid>``: CPU seconds over the window (schedstat,
all threads) as a share of one core, and resident memory (VmRSS at the end, VmHWM).
Targets are on the daemon's own figures: <= 2 % of a core and <= 80 MB.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from bench.common import (
    LANE_NICE,
    Child,
    Report,
    Row,
    bench_args,
    median,
    proc_cpu_s,
    proc_rss_mb,
    scratch,
    until,
)
from bench.decision import make_sim, start_daemon, write_config
from bench.lanes import specs

LANES = 4
POLL_MS = 50
WARM_S = 3.0


async def measure(pid: int, seconds: float) -> dict:
    await asyncio.sleep(WARM_S)
    t0, c0 = time.monotonic(), proc_cpu_s(pid)
    await asyncio.sleep(seconds)
    t1, c1 = time.monotonic(), proc_cpu_s(pid)
    rss, hwm = proc_rss_mb(pid)
    return {"cpu_share": (c1 - c0) / (t1 - t0), "rss_mb": rss, "hwm_mb": hwm, "window_s": t1 - t0}


async def baseline_script(a: dict) -> None:
    """The minimal idle loop (runs in the baseline's own process)."""
    import serial_asyncio_fast
    from pymodbus.client import AsyncModbusTcpClient

    class Drop(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            pass

    loop = asyncio.get_running_loop()
    for port in a["ports"]:
        await serial_asyncio_fast.create_serial_connection(loop, Drop, port, baudrate=9600)
    client = AsyncModbusTcpClient(a["host"], port=a["port"], reconnect_delay=0, retries=0, timeout=2.0)
    if not await client.connect():
        raise SystemExit("cannot reach the IO module")
    period = a["poll_ms"] / 1000
    next_at = loop.time()
    while True:
        await client.read_discrete_inputs(address=0, count=a["inputs"], device_id=a["unit"])
        next_at = max(next_at + period, loop.time())
        await asyncio.sleep(next_at - loop.time())


async def run(quick: bool, workdir: Path) -> Report:
    total = 20.0 if quick else 60.0
    windows = 2 if quick else 3
    each = total / windows
    sim = make_sim(workdir / "sim", specs(LANES), travel_s=0.2, poll_ms=POLL_MS, speed=10.0, weigh_interval_s=0.1)
    await sim.start()
    got: dict[str, list[dict]] = {"gatectl": [], "baseline": []}
    try:
        config, api = write_config(sim, workdir)
        inputs = max(lane.input_address(role) for lane in sim.lanes for role, point in lane.points().items()
                     if ":di:" in point) + 1
        args = {
            "host": sim.io.host, "port": sim.io.port, "unit": sim.io.unit, "inputs": inputs, "poll_ms": POLL_MS,
            "ports": [p for lane in sim.lanes for p in (lane.reader.port, lane.scale.port) if lane.scale],
        }
        for w in range(windows):
            for side in ("gatectl", "baseline") if w % 2 == 0 else ("baseline", "gatectl"):
                if side == "gatectl":
                    child = await start_daemon(config, api, workdir / "daemon.log")
                else:
                    child = Child([sys.executable, "-m", "bench.idle", "--baseline-child", json.dumps(args)],
                                  workdir / "baseline.log", nice=LANE_NICE)
                try:
                    if side == "baseline":
                        await until(lambda: len(sim.io.requests_for(sim.io.unit)) > 0, 10)
                    got[side].append(await measure(child.pid, each))
                    if not child.alive():
                        raise RuntimeError(f"{side} died:\n{child.tail()}")
                finally:
                    child.stop()
    finally:
        await sim.stop()
    cpu = {k: median(x["cpu_share"] for x in v) * 100 for k, v in got.items()}
    rss = {k: max(x["rss_mb"] for x in v) for k, v in got.items()}
    hwm = {k: max(x["hwm_mb"] for x in v) for k, v in got.items()}
    rep = Report("idle", "5. idle (4 lanes, 50 ms polls)")
    rep.rows.append(Row("5 idle", "CPU, share of one core", "%", cpu["gatectl"], cpu["baseline"], "<= 2 %",
                        cpu["gatectl"] <= 2.0))
    rep.rows.append(Row("5 idle", "resident memory (VmRSS)", "MB", rss["gatectl"], rss["baseline"], "<= 80 MB",
                        rss["gatectl"] <= 80.0, note=f"peak VmHWM {hwm['gatectl']:.1f} MB"))
    rep.details = {"windows": got, "inputs_polled": inputs, "seconds_per_side": total}
    rep.notes.append(f"{windows} alternating windows of {each:g} s per side ({total:g} s each), after {WARM_S:g} s warm-up")
    return rep


def main() -> None:
    p = bench_args(__doc__.splitlines()[0])
    import argparse

    p.add_argument("--baseline-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.baseline_child:
        asyncio.run(baseline_script(json.loads(args.baseline_child)))
        return
    with scratch(args.workdir, "idle") as wd:
        rep = asyncio.run(run(args.quick, wd))
    rep.write(args.json)


if __name__ == "__main__":
    main()
