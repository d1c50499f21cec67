"""``gatectl demo --zone``: a whole zone on one machine.

A Mosquitto broker, three lane PCs (each a real ``gatectl run`` process against its own
simulated site: IO module, card readers and weighbridges on ptys, a customs authority),
PostgreSQL in a temporary directory (as an unprivileged user when run as root) and the
zone central, with traffic on every lane. It prints the zone screen's address and a token,
and runs until Ctrl-C (or ``--duration``). Needs the Debian packages ``mosquitto`` and
``postgresql``, and says which one is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

SITES = (("kmzb-jk", "昆明综保区经开片区卡口"), ("kmzb-gk", "昆明综保区高新片区卡口"), ("kmzb-dk", "昆明综保区东区卡口"))
TOKEN = "zone-demo-token"


def _mosquitto() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def main(args) -> int:
    from gatectl.central.pgtemp import PostgresMissing, find_bindir

    if _mosquitto() is None:
        print("gatectl demo --zone needs an MQTT broker: install the Debian package `mosquitto` "
              "(apt-get install mosquitto)", file=sys.stderr)
        return 1
    try:
        find_bindir()
    except PostgresMissing as exc:
        print(f"gatectl demo --zone: {exc}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 0


async def _run(args) -> int:
    from gatectl import logs
    from gatectl.central.config import load_zone_config
    from gatectl.central.pgtemp import TempPostgres, free_port
    from gatectl.central.service import run_central
    from gatectl.users import token_sha256
    from simulators.site import SITE_ID, LaneSpec, SimulatedSite

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gatectl-zone-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    logs.configure(json=True, stream=open(work / "central.log", "a", encoding="utf-8"))  # noqa: SIM115
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(("user root\n" if os.geteuid() == 0 else "") + f"listener {port} 127.0.0.1\n"
                    "allow_anonymous true\npersistence false\nmax_queued_messages 100000\n")
    broker = subprocess.Popen([_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pg = TempPostgres()
    sims: list[SimulatedSite] = []
    lane_pcs: list[subprocess.Popen] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    rng = random.Random(args.seed)
    try:
        pg.start()
        specs = [LaneSpec("B1-IN", "保税货物进区1号", "bonded", "in", "K001"),
                 LaneSpec("B2-OUT", "保税货物出区2号", "bonded", "out", "K002"),
                 LaneSpec("N1-OUT", "非保税出区", "non_bonded", "out", "K003", exit_loop=False)]
        for i, (site_id, _name) in enumerate(SITES):
            d = work / site_id
            sim = SimulatedSite(d, specs[: 2 + (i == 0)], travel_s=1.0, speed=2.0)
            await sim.start()
            # Customs' instruction ids are unique zone-wide; each simulated authority counts its own.
            sim.authority._instruction_seq = itertools.count(100_000 * (i + 1))
            sims.append(sim)
            text = sim.config_yaml(journal_path=str(d / "gatectl.db"), api_listen=f"127.0.0.1:{free_port()}",
                                   mqtt=f"127.0.0.1:{port}")
            text = text.replace(f"  id: {SITE_ID}\n", f"  id: {site_id}\n").replace(
                f"gatectl/{SITE_ID}", f"gatectl/{site_id}").replace("client_id: demo-lanepc",
                                                                     f"client_id: lanepc-{site_id}")
            (d / "site.yaml").write_text(text, encoding="utf-8")
            log = open(d / "lanepc.log", "ab")  # noqa: SIM115
            lane_pcs.append(subprocess.Popen([sys.executable, "-m", "gatectl", "run", "--config", str(d / "site.yaml")],
                                             stdout=log, stderr=log, start_new_session=True))
        http = free_port()
        zone = work / "zone.yaml"
        zone.write_text(
            "zone: {id: kmzb, name: 昆明综合保税区, timezone: Asia/Shanghai}\n"
            f"database: {{url: '{pg.url}'}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {port}, client_id: central-demo, prefixes: ['gatectl/+']}}\n"
            f"http: {{listen: '127.0.0.1:{http}'}}\n"
            f"users:\n  - {{name: 演示值班, role: customs, token_sha256: '{token_sha256(TOKEN)}'}}\n",
            encoding="utf-8")
        print(f"zone demo: {len(SITES)} lane PCs, broker 127.0.0.1:{port}, PostgreSQL 127.0.0.1:{pg.port}")
        print(f"zone screen: http://127.0.0.1:{http}/#token={TOKEN}")
        print(f"API: curl -H 'Authorization: Bearer {TOKEN}' http://127.0.0.1:{http}/api/v1/completeness")
        print(f"files and logs: {work}   (Ctrl-C stops)")
        traffic = [asyncio.create_task(sim.run_traffic(stop, random.Random(rng.random()))) for sim in sims]
        if args.duration:
            loop.call_later(args.duration, stop.set)
        await run_central(load_zone_config(zone), stop)
        for t in traffic:
            t.cancel()
        await asyncio.gather(*traffic, return_exceptions=True)
    finally:
        for proc in lane_pcs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in lane_pcs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
        for sim in sims:
            await sim.stop()
        pg.cleanup()
        broker.kill()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0
