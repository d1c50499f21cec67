"""``gatectl demo``: a whole simulated site and the real daemon, live in the terminal.

The simulators (IO module with moving barriers, card readers and weighbridges on ptys,
an HTTP release authority) speak the real wire formats; the daemon talks to them
exactly as it would to hardware. Traffic is scripted: mostly released trucks, some
held, an occasional tailgater or forced passage.
"""

from __future__ import annotations

import asyncio
import random
import socket
import sys
import tempfile
from collections import deque
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gatectl import events as ev
from gatectl import labels as L
from gatectl import logs
from gatectl.api import start_api
from gatectl.config import load_config
from gatectl.daemon import assemble
from simulators.site import DEMO_USERS, LaneSpec, SimulatedSite

STATE_STYLE = {"open": "bold green", "held": "bold red", "deciding": "yellow", "lowering": "cyan"}
QUIET_EVENTS = {"loop.changed", "barrier.position"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAULTS_ZH = {
    "reader_unplugged": "读卡器USB断开",
    "scale_silent": "地磅仪表无数据",
    "reader_noise": "读卡器线路干扰",
    "barrier_stuck": "道闸限位开关卡死",
    "io_down": "IO模块断线",
}


async def inject_faults(sim, rng: random.Random, stop: asyncio.Event, note, period_s: float = 30.0,
                        hold_s: float = 12.0) -> None:
    """Break one device at a time, for real, then mend it: the lanes fail closed and recover."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), period_s)
            return
        except TimeoutError:
            pass
        lane = rng.choice(sim.lanes)
        kinds = ["reader_unplugged", "reader_noise", "barrier_stuck", "io_down"]
        if lane.scale is not None:
            kinds.append("scale_silent")
        kind = rng.choice(kinds)
        note(f"注入故障 {lane.id}: {FAULTS_ZH[kind]}（{hold_s:.0f} 秒后恢复）")
        if kind == "reader_unplugged":
            lane.reader.unplug()
        elif kind == "scale_silent":
            lane.scale.silent = True
        elif kind == "reader_noise":
            for _ in range(20):
                lane.reader.garbage(12)
                lane.reader.present_corrupt("0BADCAFE00")
        elif kind == "barrier_stuck":
            lane.barrier.stuck = True
        elif kind == "io_down":
            await sim.io.stop()
        try:
            await asyncio.wait_for(stop.wait(), hold_s)
        except TimeoutError:
            pass
        if kind == "reader_unplugged":
            await lane.reader.replug()
        elif kind == "scale_silent":
            lane.scale.silent = False
        elif kind == "barrier_stuck":
            lane.barrier.stuck = False
        elif kind == "io_down":
            await sim.io.start()
        note(f"已恢复 {lane.id}: {FAULTS_ZH[kind]}")


class View:
    def __init__(self, site, sim, api_url: str) -> None:
        self.site = site
        self.sim = sim
        self.api_url = api_url
        self.recent: deque[dict] = deque(maxlen=14)
        self.counts: dict[str, int] = {}
        self.fault_note = ""
        site.subscribe(self.on_events)

    def on_events(self, written: list[ev.Stamped]) -> None:
        for st in written:
            if isinstance(st.event, ev.PassageClosed):
                outcome = L.zh(L.OUTCOMES, st.event.outcome)
                self.counts[outcome] = self.counts.get(outcome, 0) + 1
            elif isinstance(st.event, ev.AlarmRaised):
                self.counts["报警"] = self.counts.get("报警", 0) + 1
            if st.type not in QUIET_EVENTS:
                self.recent.append(st)

    def render(self):
        lanes = Table(expand=True, title="卡口通道 Lanes", title_style="bold")
        for col in ("通道", "状态", "线圈 到达/安全/出口", "道闸", "IC卡 / 车牌", "重量 kg", "海关指令", "显示屏"):
            lanes.add_column(col, overflow="fold")
        for lane in self.site.lanes.values():
            snap = lane.snapshot()
            inputs = snap["inputs"]
            loops = " ".join("●" if inputs[p] else "○" for p in ("arrival_loop", "safety_loop", "exit_loop"))
            barrier = "▲ 抬起" if inputs["barrier_up"] else ("▼ 落下" if inputs["barrier_down"] else "↕ 运动中")
            p = snap["passage"] or {}
            state = snap["state"]
            faults = ", ".join(snap["faults"])
            notes = []
            if not snap.get("open", True):
                notes.append("非开放时间")
            if snap.get("drill"):
                notes.append("演练中")
            lanes.add_row(
                f"{lane.id}\n{L.zh(L.KINDS, lane.config.kind)} {L.zh(L.DIRECTIONS, lane.config.direction)}",
                Text(L.zh(L.STATES, state) + (f"\n故障:{faults}" if faults else "")
                     + (f"\n{' '.join(notes)}" if notes else ""), STATE_STYLE.get(state, "")),
                loops,
                barrier,
                "\n".join(x for x in (p.get("card"), p.get("plate")) if x),
                f"{p['weight_kg']:.0f}" if p.get("weight_kg") else "",
                L.zh(L.DECISIONS, p.get("decision")) or "",
                snap["display"],
            )
        events = Table(expand=True, title="事件 Events (journal)", title_style="bold", show_lines=False)
        for col in ("时间", "通道", "seq", "事件"):
            events.add_column(col)
        for st in reversed(self.recent):
            style = "bold red" if st.type == "alarm.raised" else ("green" if st.type == "barrier.lifted" else "")
            events.add_row(st.ts[11:19], st.lane_id, str(st.seq), Text(L.describe(st), style))
        totals = "  ".join(f"{k}: {v}" for k, v in sorted(self.counts.items())) or "—"
        note = f"\n{self.fault_note}" if self.fault_note else ""
        footer = Text(
            f"通行统计 {totals}{note}\n值班屏幕 {self.api_url}/   API {self.api_url}/api/v1/lanes   Ctrl-C 退出",
            style="dim",
        )
        return Panel(Group(lanes, events, footer), title="gatectl demo — 昆明综合保税区 (simulated site)")


async def run_demo(args) -> int:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gatectl-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    specs = [
        LaneSpec("B1-IN", "保税货物进区1号", "bonded", "in", "K001", plate_camera=True),
        LaneSpec("E1-OUT", "跨境电商9610出区", "ecommerce_9610", "out", "K002"),
        LaneSpec("N1-IN", "非保税进区", "non_bonded", "in", "K003", exit_loop=False),
        LaneSpec("A1-IN", "行政通道进区", "administrative", "in", "K004", plate_camera=True),
        LaneSpec("P1-IN", "人员通道", "personnel", "in", "K005", weigh_format=None, exit_loop=False),
        LaneSpec("B2-OUT", "保税货物出区2号", "bonded", "out", "K006"),
    ][: max(1, min(args.lanes, 6))]
    sim = SimulatedSite(workdir, specs, travel_s=1.4, camera_seed=args.seed)
    await sim.start()
    port = _free_port()
    # Plate cameras post with the camera user's token; the guard logs into the screen with theirs.
    cfg_path = sim.write_config(
        workdir / "site.yaml", journal_path=str(workdir / "gatectl.db"), api_listen=f"127.0.0.1:{port}",
        users=DEMO_USERS,
    )
    config = load_config(cfg_path)
    site, setups = assemble(config)
    runner = await start_api(site, *setups)
    api_url = f"http://127.0.0.1:{port}"
    stop = asyncio.Event()
    traffic_stop = asyncio.Event()
    daemon = asyncio.create_task(site.run(stop))
    rng = random.Random(args.seed)
    traffic = asyncio.create_task(sim.run_traffic(traffic_stop, rng))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.duration if args.duration else None
    console = Console()
    view = View(site, sim, api_url)
    faults = None
    if args.faults:

        def note(text: str) -> None:
            view.fault_note = text
            if args.plain:
                print(f"--- {text}", flush=True)

        faults = asyncio.create_task(inject_faults(sim, random.Random(rng.random()), traffic_stop, note))
    if args.plain:
        site.subscribe(
            lambda written: [
                print(f"{st.ts[11:19]} {st.lane_id:7} #{st.seq:<4} {L.describe(st)}", flush=True)
                for st in written
                if st.type not in QUIET_EVENTS
            ]
        )
    print(f"gatectl demo: config {cfg_path}, journal {workdir / 'gatectl.db'}, API {api_url}", file=sys.stderr)
    print("gatectl demo: tokens " + ", ".join(f"{role} {name} {token}" for role, (name, token) in DEMO_USERS.items()),
          file=sys.stderr)
    try:
        if args.plain:
            while deadline is None or loop.time() < deadline:
                if daemon.done():
                    break
                await asyncio.sleep(0.25)
        else:
            with Live(view.render(), console=console, refresh_per_second=4, screen=False) as live:
                while deadline is None or loop.time() < deadline:
                    if daemon.done():
                        break
                    live.update(view.render())
                    await asyncio.sleep(0.25)
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    finally:
        traffic_stop.set()
        traffic.cancel()
        await asyncio.gather(traffic, *([faults] if faults else []), return_exceptions=True)
        stop.set()
        await asyncio.gather(daemon, return_exceptions=True)
        await runner.cleanup()
        await sim.stop()
    if daemon.done() and not daemon.cancelled() and daemon.exception() is not None:
        print(f"daemon failed: {daemon.exception()!r}", file=sys.stderr)
        return 1
    print(f"通行统计 {view.counts}", file=sys.stderr)
    return 0


def main(args) -> int:
    logs.configure(json=False, level=40)  # the view shows what matters; only errors in the log
    try:
        return asyncio.run(run_demo(args))
    except KeyboardInterrupt:
        return 0


__all__ = ["main", "View"]
