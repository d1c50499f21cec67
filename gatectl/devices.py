"""``gatectl devices --config F``: probe every configured device once, print what it sees.

For an ops engineer on site: is the reader wired to the right port and speaking the
configured format, does the indicator settle, which loop inputs are on right now. The
probe uses the daemon's own drivers for a few seconds and decides nothing; run it with the
daemon stopped (serial ports are opened exclusively).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any

from drivers.health import Health
from drivers.modbus_io import BusRegistry
from drivers.serial_device import CardReader, Weighbridge
from gatectl.config import SiteConfig
from gatectl.io_routing import build_modules
from gatectl.service import cancel_all


@dataclass
class Probe:
    name: str
    kind: str
    where: str
    seen: list[str] = field(default_factory=list)
    health: list[str] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)

    def ok(self) -> bool:
        return any(h == Health.OK.value for h in self.health) and Health.FAULTY.value not in self.health[-1:]


async def probe(config: SiteConfig, seconds: float) -> list[Probe]:
    probes: list[Probe] = []
    tasks: list[asyncio.Task] = []

    def health_of(p: Probe):
        return lambda h, reason: p.health.append(h.value) or p.seen.append(f"{h.value}: {reason}")

    points_by_module: dict[str, list[tuple[str, str, int]]] = {}
    for lane in config.lanes:
        for role, point in lane.points.items():
            if point.kind == "di":
                points_by_module.setdefault(point.module, []).append((lane.id, role, point.address))

    module_probes: dict[str, Probe] = {}
    inputs: dict[str, dict[int, bool]] = {}

    def on_inputs(module: str, values: dict[int, bool]) -> None:
        inputs.setdefault(module, {}).update(values)

    def on_module_health(module: str, health: Health, reason: str) -> None:
        p = module_probes[module]
        p.health.append(health.value)
        p.seen.append(f"{health.value}: {reason}")

    registry = BusRegistry()
    modules = build_modules(config, registry, on_inputs, on_module_health)
    for name, module in modules.items():
        cfg = config.io_modules[name]
        where = f"{cfg.host}:{cfg.port} unit {cfg.unit}" if cfg.protocol == "modbus-tcp" else f"{cfg.port} unit {cfg.unit}"
        module_probes[name] = Probe(name, cfg.protocol, where)
        probes.append(module_probes[name])
        tasks.append(asyncio.create_task(module.run()))

    readers: list[tuple[Probe, Any]] = []
    for lane in config.lanes:
        rp = Probe(f"{lane.id}/card_reader", lane.card_reader.format, lane.card_reader.port)
        reader = CardReader(
            rp.name, lane.card_reader.port, lane.card_reader.baudrate, lane.card_reader.format,
            on_card=lambda card, rp=rp: rp.seen.append(f"card {card}"),
            on_health=health_of(rp),
        )
        probes.append(rp)
        readers.append((rp, reader))
        tasks.append(asyncio.create_task(reader.run()))
        if lane.weighbridge is not None:
            wb = lane.weighbridge
            wp = Probe(f"{lane.id}/weighbridge", wb.format, wb.port)
            readings: list[tuple[float, bool]] = []

            def on_weight(kg: float, stable: bool, wp=wp, readings=readings) -> None:
                if not readings or readings[-1] != (kg, stable):
                    wp.seen.append(f"{kg:g} kg {'stable' if stable else 'unstable'}")
                readings.append((kg, stable))

            scale = Weighbridge(
                wp.name, wb.port, wb.baudrate, wb.format, wb.stable_samples,
                on_weight=on_weight, on_health=health_of(wp),
            )
            probes.append(wp)
            readers.append((wp, scale))
            tasks.append(asyncio.create_task(scale.run()))

    await asyncio.sleep(seconds)
    await cancel_all(tasks)
    registry.close_all()
    for p, driver in readers:
        p.counters = driver.counters
    for name, module in modules.items():
        p = module_probes[name]
        p.counters = module.counters
        values = inputs.get(name, {})
        for lane_id, role, address in sorted(points_by_module.get(name, []), key=lambda x: x[2]):
            if address in values:
                p.seen.append(f"di {address:<3} {lane_id}.{role} = {int(values[address])}")
    return probes


def report(probes: list[Probe], out=sys.stdout) -> None:
    for p in probes:
        verdict = "OK" if p.health and p.health[-1] == Health.OK.value else (
            "FAULTY" if p.health and p.health[-1] == Health.FAULTY.value else "no answer / no frames")
        print(f"{p.name} ({p.kind} at {p.where}): {verdict}", file=out)
        for line in p.seen[:40]:
            print(f"    {line}", file=out)
        interesting = {k: v for k, v in p.counters.items() if v not in (0, None, {}, [])}
        if interesting:
            print(f"    counters: {interesting}", file=out)


def cmd_devices(args, config: SiteConfig) -> int:
    probes = asyncio.run(probe(config, args.seconds))
    report(probes)
    return 0
