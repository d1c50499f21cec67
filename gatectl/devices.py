"""``gatectl devices --config F``: probe every configured device once, print what it sees.

For an ops engineer on site: is the reader wired to the right port and speaking the
configured format, does the indicator settle, which loop inputs are on right now. The
probe uses the daemon's own drivers for a few seconds and decides nothing; run it with the
daemon stopped (serial ports are opened exclusively).

Each device gets one verdict line; a device with a problem says it on that line, once:
``FAULTY: <reason>`` or ``no answer``. The drivers' own log lines (which repeat the same
reason) are kept out of the report. Exit status: 0 when every device answered, 1 when any
is faulty or gave no sign of life, so a script can tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
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

    @property
    def final(self) -> str | None:
        """The last health the driver reported; None if it never reported one."""
        return self.health[-1] if self.health else None

    @property
    def problem(self) -> bool:
        """Faulty at the end, or never a sign of life: the lane would fail closed on it."""
        return self.final in (None, Health.FAULTY.value)


async def probe(config: SiteConfig, seconds: float) -> list[Probe]:
    probes: list[Probe] = []
    tasks: list[asyncio.Task] = []

    def health_of(p: Probe):
        def report(h: Health, reason: str) -> None:
            p.health.append(h.value)
            p.seen.append(f"{h.value}: {reason}")

        return report

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
        silence = lane.card_reader.silence_ms
        reader = CardReader(
            rp.name, lane.card_reader.port, lane.card_reader.baudrate, lane.card_reader.format,
            on_card=lambda card, rp=rp: rp.seen.append(f"card {card}"),
            on_health=health_of(rp),
            silence_s=None if silence is None else silence / 1000,
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
                silence_s=None if wb.silence_ms is None else wb.silence_ms / 1000,
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


_REPEATS_VERDICT = ("health", "health_reason")


def _verdict(p: Probe) -> str:
    if p.final is None:
        return "no answer: the device gave no sign of life"
    reason = next((line.split(": ", 1)[1] for line in reversed(p.seen) if line.startswith(f"{p.final}: ")), "")
    label = {Health.OK.value: "OK", Health.DEGRADED.value: "DEGRADED", Health.FAULTY.value: "FAULTY"}[p.final]
    return f"{label}: {reason}" if reason and p.final != Health.OK.value else label


def _history(p: Probe) -> Iterator[str]:
    """What the device showed, without the final health (it is on the verdict line) and
    without a line repeated back to back."""
    lines = list(p.seen)
    final = f"{p.final}: " if p.final else None
    if final is not None:
        last = max(i for i, line in enumerate(lines) if line.startswith(final))
        del lines[last]
    previous = None
    for line in lines[:40]:
        if line != previous:
            yield line
        previous = line


def report(probes: list[Probe], out=sys.stdout) -> None:
    """One verdict line per device, then what it showed, then its counters."""
    for p in probes:
        print(f"{p.name} ({p.kind} at {p.where}): {_verdict(p)}", file=out)
        for line in _history(p):
            print(f"    {line}", file=out)
        interesting = {
            k: v for k, v in p.counters.items() if v not in (0, None, {}, []) and k not in _REPEATS_VERDICT
        }
        if interesting:
            print(f"    counters: {interesting}", file=out)


@contextlib.contextmanager
def _quiet_drivers() -> Iterator[None]:
    """The drivers log every outage (and pymodbus every refused connect); the report says
    each once. Restored afterwards."""
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    pymodbus = logging.getLogger("pymodbus")
    saved_pymodbus = pymodbus.level
    root.handlers[:] = [logging.NullHandler()]
    root.setLevel(logging.CRITICAL)
    pymodbus.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        pymodbus.setLevel(saved_pymodbus)


def cmd_devices(args, config: SiteConfig) -> int:
    """Probe, report, and exit 1 when any device is faulty or silent (stderr says how many)."""
    with _quiet_drivers():
        probes = asyncio.run(probe(config, args.seconds))
    report(probes)
    bad = [p for p in probes if p.problem]
    if bad:
        print(f"{len(bad)} of {len(probes)} devices faulty or not answering: "
              + ", ".join(p.name for p in bad), file=sys.stderr)
        return 1
    return 0
