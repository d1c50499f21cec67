"""IO routing: the site's Modbus IO modules, and which lane listens to which address.

The IO modules are shared: one module may carry the loops of two lanes, one RS-485 line
or TCP gateway several modules (one ``BusRegistry`` bus per physical line). This module
builds them from the config and routes what they report:

- each poll's changed inputs go to the lanes with points on them, by point name;
- a lane starts from one complete first reading: its inputs are gathered until every
  module it reads has reported once, then handed over together;
- a module's health goes to every lane with any point on it (input or coil);
- a lane pulses its barrier coils through ``LaneCoils``.

Runs on the control loop, like the lanes it feeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from drivers.health import Health
from drivers.modbus_io import BusRegistry, IoModule, IoModuleError
from gatectl.lane.runtime import CoilError

if TYPE_CHECKING:
    from gatectl.config import LaneConfig, SiteConfig

OnPoll = Callable[[dict[str, bool]], None]
OnHealth = Callable[[str, Health, str], None]


class _LaneInputs:
    """One lane's subscription: its points by module, and its first reading so far."""

    def __init__(self, lane: LaneConfig, on_poll: OnPoll, on_health: OnHealth) -> None:
        self.lane_id = lane.id
        self.on_poll = on_poll
        self.on_health = on_health
        self.modules = sorted({p.module for _, p in lane.points.items()})
        self.input_modules = sorted({p.module for _, p in lane.points.items() if p.kind == "di"})
        self.first: dict[str, dict[str, bool]] | None = {}

    def deliver(self, module: str, values: dict[str, bool]) -> None:
        if self.first is None:
            self.on_poll(values)
            return
        self.first.setdefault(module, {}).update(values)
        if set(self.first) >= set(self.input_modules):
            merged: dict[str, bool] = {}
            for part in self.first.values():
                merged.update(part)
            self.first = None
            self.on_poll(merged)


def build_modules(
    config: SiteConfig,
    buses: BusRegistry,
    on_inputs: Callable[[str, dict[int, bool]], None],
    on_health: Callable[[str, Health, str], None],
) -> dict[str, IoModule]:
    """One driver per configured IO module, on one bus per physical line (a TCP gateway
    or an RS-485 port shared by several units), reading inputs 0..the highest a lane uses;
    ``on_inputs(module, changed)`` and ``on_health(module, health, reason)``."""
    highest: dict[str, int] = {}
    for lane in config.lanes:
        for _, point in lane.points.items():
            if point.kind == "di":
                highest[point.module] = max(highest.get(point.module, 0), point.address)
    modules: dict[str, IoModule] = {}
    for name, mod in config.io_modules.items():
        if mod.protocol == "modbus-tcp":
            bus = buses.tcp(mod.host, mod.port)
        else:
            bus = buses.rtu(mod.port, mod.baudrate, mod.parity, mod.stopbits)
        modules[name] = IoModule.on_bus(
            name, bus, mod.unit, mod.poll_ms, highest.get(name, 0) + 1,
            on_inputs=lambda values, snapshot, name=name: on_inputs(name, values),
            on_health=lambda h, reason, name=name: on_health(name, h, reason),
        )
    return modules


class IoRouting:
    def __init__(self, config: SiteConfig, registry: BusRegistry | None = None) -> None:
        self.config = config
        self.buses = registry if registry is not None else BusRegistry()
        #: module -> [(lane id, input address, point name)]
        self._points: dict[str, list[tuple[str, int, str]]] = {}
        for lane in config.lanes:
            for role, point in lane.points.items():
                if point.kind == "di":
                    self._points.setdefault(point.module, []).append((lane.id, point.address, role))
        self._lanes: dict[str, _LaneInputs] = {}
        self.modules = build_modules(config, self.buses, self._inputs, self._health)
        # A daemon killed inside a pulse left that coil on: off before the first poll.
        for lane in config.lanes:
            for point in (lane.points.barrier_open, lane.points.barrier_close):
                self.modules[point.module].own_coils([point.address])

    def attach(self, lane: LaneConfig, on_poll: OnPoll, on_health: OnHealth) -> None:
        """Route ``lane``'s inputs (by point name) and its modules' health to it."""
        self._lanes[lane.id] = _LaneInputs(lane, on_poll, on_health)

    def coils(self, lane: LaneConfig) -> LaneCoils:
        return LaneCoils(lane, self.modules)

    def _inputs(self, module: str, values: dict[int, bool]) -> None:
        per_lane: dict[str, dict[str, bool]] = {}
        for lane_id, address, role in self._points.get(module, ()):
            if address in values:
                per_lane.setdefault(lane_id, {})[role] = values[address]
        for lane_id, mapped in per_lane.items():
            listener = self._lanes.get(lane_id)
            if listener is not None:
                listener.deliver(module, mapped)

    def _health(self, module: str, health: Health, reason: str) -> None:
        for listener in self._lanes.values():
            if module in listener.modules:
                listener.on_health(module, health, reason)

    def close(self) -> None:
        self.buses.close_all()


class LaneCoils:
    """A lane's barrier coils (``CoilsPort``): a pulse on the module that carries each."""

    def __init__(self, lane: LaneConfig, modules: dict[str, IoModule]) -> None:
        self._points = {"open": lane.points.barrier_open, "close": lane.points.barrier_close}
        self._modules = modules
        self._pulse_ms = lane.barrier.pulse_ms

    async def pulse(self, coil: str, on_energised: Callable[[], None] | None = None) -> None:
        point = self._points[coil]
        try:
            await self._modules[point.module].pulse(point.address, self._pulse_ms, on_energised=on_energised)
        except IoModuleError as exc:
            # (The driver has reported the module faulty already; this says which pulse.)
            raise CoilError(point.module, str(exc)) from exc


__all__ = ["IoRouting", "LaneCoils", "build_modules"]
