"""When IO modules poll, in virtual time: each module keeps its rate but not another's phase.

Requirement id: S2 (nothing else the daemon does may delay a lane's reaction: a lift or a
reverse must not wait behind every IO module's answer handled in one burst).

Modules started together polled in step for ever, so every interval the control loop
handled every module's answer in one burst, and a lane's lift that arrived then waited
behind all of them (bench 2, 32 lanes with an IO module each). The schedule is ours
(``IoModule.run``); the line under it here is an in-memory one answering at once, so the
test plays seconds of polling in virtual time and asserts the exact poll times.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from drivers.modbus_io import IoModule, ModbusBus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from virtual import VirtualTimeLoop  # noqa: E402

POLL_MS = 50


class _Answer:
    def __init__(self, bits: list[bool]) -> None:
        self.bits = bits

    def isError(self) -> bool:  # noqa: N802 - pymodbus's name
        return False


class _MemoryClient:
    """The line's far end: answers every read at once (after ``delay_s`` if set)."""

    connected = True

    def __init__(self, bus: MemoryBus) -> None:
        self.bus = bus

    async def connect(self) -> bool:
        return True

    def close(self) -> None:
        pass

    async def read_discrete_inputs(self, address: int, count: int, device_id: int) -> _Answer:
        self.bus.polls.append(asyncio.get_running_loop().time())
        if self.bus.delay_s:
            await asyncio.sleep(self.bus.delay_s)
        return _Answer([False] * count)


class MemoryBus(ModbusBus):
    def __init__(self, name: str) -> None:
        super().__init__(1.0, 0, name)
        self.polls: list[float] = []
        self.delay_s = 0.0

    @property
    def key(self) -> Any:
        return ("memory", self.name)

    @property
    def where(self) -> str:
        return self.name

    def _new_client(self) -> _MemoryClient:
        return _MemoryClient(self)


def _play(buses: list[MemoryBus], seconds: float, during: Any = None) -> None:
    async def main() -> None:
        modules = [IoModule.on_bus(b.name, b, 1, POLL_MS, 8, on_inputs=lambda *_: None,
                                   on_health=lambda *_: None) for b in buses]
        tasks = [asyncio.create_task(m.run()) for m in modules]
        if during is not None:
            await during()
        await asyncio.sleep(seconds)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_modules_started_together_poll_at_phases_of_their_own_and_keep_their_rate() -> None:
    buses = [MemoryBus(f"io{i}") for i in range(16)]
    _play(buses, 2.0)
    interval = POLL_MS / 1000
    # The first poll is at once (the lane's first reading waits for no phase) ...
    assert {b.polls[0] for b in buses} == {0.0}
    for b in buses:
        gaps = [later - earlier for earlier, later in zip(b.polls, b.polls[1:])]
        # ... the second within one interval, never later, then every interval exactly.
        assert 0 <= gaps[0] < interval
        assert all(abs(g - interval) < 1e-9 for g in gaps[1:])
        assert len(b.polls) >= 2.0 / interval
    # Not in step: sixteen modules, sixteen phases.
    assert len({round(b.polls[1], 9) for b in buses}) == len(buses)


def test_after_a_stall_shared_by_every_module_they_do_not_fall_back_into_step() -> None:
    buses = [MemoryBus(f"io{i}") for i in range(8)]

    async def stall() -> None:
        # Every module's next answer takes three intervals (a loop or a line held up).
        await asyncio.sleep(0.5)
        for b in buses:
            b.delay_s = 0.15
        await asyncio.sleep(0.2)
        for b in buses:
            b.delay_s = 0.0

    _play(buses, 2.0, stall)
    interval = POLL_MS / 1000
    for b in buses:
        gaps = [later - earlier for earlier, later in zip(b.polls, b.polls[1:])]
        # Never slower than the interval plus the slow answer itself.
        assert all(g <= interval + 0.15 + 1e-9 for g in gaps)
    # Each module caught up at once, then took a phase of its own again.
    last = [round(b.polls[-1] % interval, 9) for b in buses]
    assert len(set(last)) == len(buses)
