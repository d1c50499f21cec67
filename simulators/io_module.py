"""A Modbus TCP IO module (and the barriers wired to it) for tests and the demo.

A real pymodbus 3.16 ``ModbusTcpServer`` on 127.0.0.1, run in the caller's event loop.
It speaks what CONTRACT 2.3 needs: discrete inputs read with function 2, coils read with
function 1 and written with functions 5 and 15; anything else gets the exception
response pymodbus gives (illegal address).

How it hooks into pymodbus 3.16 (from the installed source, ``simulator/simruntime.py``,
``transaction/transaction.py``, ``server/requesthandler.py``):

- The device is a ``SimDevice`` with separate coil and discrete-input blocks. Its
  ``action`` coroutine runs on every access to a block, after the address check and
  before the request is served, with the block's registers (16 bits each, bit 0 first)
  and, for writes, the values being written. The simulator keeps its own bit lists as
  the truth: the action copies them into the registers, so reads return them, and
  records writes, which fire the ``on_coil_write`` hooks. (The older datastore classes,
  ``ModbusDeviceContext`` and friends, are deprecated in 3.16 and log a warning.)
- ``trace_pdu(sending=False, pdu)`` sees every decoded request; returning ``None`` makes
  the request handler drop it unanswered. That copies a device's silence twice over:
  requests for another unit id get no reply (as on a real RS-485 line behind a
  gateway), and ``silent = True`` makes the module accept connections but never answer
  or act.
- ``stop()`` shuts the server down, which also closes every accepted connection, so
  clients see the connection drop and further connects are refused; ``start()`` again
  builds a fresh server on the same port with the same inputs and coils.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal

from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

__all__ = ["Barrier", "IoModuleSimulator"]

Position = Literal["up", "down", "moving_up", "moving_down"]

_COIL_FUNCTIONS = frozenset({1, 5, 15})
_COIL_WRITES = frozenset({5, 15})
_INPUT_FUNCTIONS = frozenset({2})


class IoModuleSimulator:
    """A Modbus TCP IO module: ``inputs`` discrete inputs and ``coils`` coils, from address 0."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        unit: int = 1,
        inputs: int = 16,
        coils: int = 16,
    ) -> None:
        if not 1 <= unit <= 255:
            raise ValueError(f"unit must be 1..255, got {unit}")
        if inputs < 1 or coils < 1:
            raise ValueError("a module needs at least one input and one coil")
        self.host = host
        self.port = port
        """The listening port; after ``start()`` with port 0, the one the OS chose."""
        self.unit = unit
        self.silent = False
        """Accept connections but never answer or act on a request, like a hung module."""
        self.coil_writes: list[tuple[float, int, bool]] = []
        """Every coil write acted on: (``time.monotonic()``, address, value)."""
        self.on_coil_write: list[Callable[[int, bool], None]] = []
        """Called with (address, value) for every coil write, after the coil changed."""
        self.barriers: list[Barrier] = []
        self._inputs = [False] * inputs
        self._coils = [False] * coils
        self._server: ModbusTcpServer | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen (again) on ``host:port``; raise ``RuntimeError`` if the port is taken."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        device = SimDevice(
            self.unit,
            simdata=(
                [SimData(0, values=[False] * len(self._coils), datatype=DataType.BITS)],
                [SimData(0, values=[False] * len(self._inputs), datatype=DataType.BITS)],
                [SimData(0, datatype=DataType.INVALID)],  # no holding registers
                [SimData(0, datatype=DataType.INVALID)],  # no input registers
            ),
            action=self._action,
        )
        server = ModbusTcpServer(device, address=(self.host, self.port), trace_pdu=self._trace_pdu)
        await server.serve_forever(background=True)  # RuntimeError when it can't listen
        self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._server = server

    async def stop(self) -> None:
        """Stop listening and drop every client connection."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()

    # ------------------------------------------------------------------ state

    def set_input(self, address: int, value: bool) -> None:
        self._inputs[self._index(address, self._inputs, "input")] = bool(value)

    def input(self, address: int) -> bool:
        return self._inputs[self._index(address, self._inputs, "input")]

    def coil(self, address: int) -> bool:
        return self._coils[self._index(address, self._coils, "coil")]

    def add_barrier(
        self, open_coil: int, close_coil: int, up_input: int, down_input: int, travel_s: float = 1.4
    ) -> Barrier:
        """Wire a barrier to this module: it moves on rising edges of its coils."""
        barrier = Barrier(self, open_coil, close_coil, up_input, down_input, travel_s)
        self.barriers.append(barrier)
        return barrier

    @staticmethod
    def _index(address: int, bits: list[bool], kind: str) -> int:
        if not 0 <= address < len(bits):
            raise IndexError(f"{kind} address {address} outside 0..{len(bits) - 1}")
        return address

    # ------------------------------------------------------------------ pymodbus hooks

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        if not sending and (self.silent or pdu.dev_id != self.unit):
            return None  # the request handler drops it: no action, no answer
        return pdu

    async def _action(
        self,
        function_code: int,
        _start_address: int,
        address: int,
        _count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> None:
        if function_code in _COIL_FUNCTIONS:
            bits = self._coils
        elif function_code in _INPUT_FUNCTIONS:
            bits = self._inputs
        else:
            return None
        if values is not None and function_code in _COIL_WRITES:
            for offset, value in enumerate(values):
                self._coil_written(address + offset, bool(value))
        registers[: (len(bits) + 15) // 16] = _pack(bits)
        return None

    def _coil_written(self, address: int, value: bool) -> None:
        self._coils[address] = value
        self.coil_writes.append((time.monotonic(), address, value))
        for hook in list(self.on_coil_write):
            hook(address, value)


class Barrier:
    """A boom barrier wired to two coils and two limit inputs of an IO module.

    It starts down. A rising edge of the open coil sends it up: the down limit opens at
    once, the up limit closes ``travel_s`` later. The close coil does the same downwards.
    A rising edge against the current travel reverses it from where it is, taking as long
    to return as it had travelled. With ``stuck`` set the limit inputs freeze while the
    boom keeps moving (a jammed or broken limit switch).
    """

    def __init__(
        self,
        sim: IoModuleSimulator,
        open_coil: int,
        close_coil: int,
        up_input: int,
        down_input: int,
        travel_s: float,
    ) -> None:
        if travel_s <= 0:
            raise ValueError(f"travel_s must be > 0, got {travel_s}")
        if open_coil == close_coil or up_input == down_input:
            raise ValueError("open and close coils, and up and down inputs, must differ")
        for coil in (open_coil, close_coil):
            sim.coil(coil)  # IndexError if out of range
        self._sim = sim
        self.open_coil, self.close_coil = open_coil, close_coil
        self.up_input, self.down_input = up_input, down_input
        self.travel_s = travel_s
        self.opens = 0
        """Rising edges seen on the open coil."""
        self.closes = 0
        """Rising edges seen on the close coil."""
        self.stuck = False
        """Limit switches frozen: the inputs stop following the boom."""
        self._coil_seen = {open_coil: sim.coil(open_coil), close_coil: sim.coil(close_coil)}
        self._fraction = 0.0  # 0 down .. 1 up, as of self._since
        self._direction = 0  # +1 up, -1 down, 0 at rest
        self._since = 0.0
        self._arrival: asyncio.TimerHandle | None = None
        sim.set_input(up_input, False)
        sim.set_input(down_input, True)
        sim.on_coil_write.append(self._coil_written)

    @property
    def position(self) -> Position:
        if self._direction > 0:
            return "moving_up"
        if self._direction < 0:
            return "moving_down"
        return "up" if self._fraction >= 1.0 else "down"

    def _coil_written(self, address: int, value: bool) -> None:
        if address not in self._coil_seen:
            return
        rising = value and not self._coil_seen[address]
        self._coil_seen[address] = value
        if not rising:
            return
        if address == self.open_coil:
            self.opens += 1
            self._travel(+1)
        else:
            self.closes += 1
            self._travel(-1)

    def _travel(self, direction: int) -> None:
        target = 1.0 if direction > 0 else 0.0
        if self._direction == direction or (self._direction == 0 and self._fraction == target):
            return  # already going there, or already there
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._direction:  # reversing: start from where the boom is now
            moved = self._direction * (now - self._since) / self.travel_s
            self._fraction = min(1.0, max(0.0, self._fraction + moved))
        if self._arrival is not None:
            self._arrival.cancel()
        self._direction, self._since = direction, now
        self._limits(up=False, down=False)
        self._arrival = loop.call_later(abs(target - self._fraction) * self.travel_s, self._arrive)

    def _arrive(self) -> None:
        self._fraction = 1.0 if self._direction > 0 else 0.0
        self._direction = 0
        self._arrival = None
        self._limits(up=self._fraction == 1.0, down=self._fraction == 0.0)

    def _limits(self, *, up: bool, down: bool) -> None:
        if not self.stuck:
            self._sim.set_input(self.up_input, up)
            self._sim.set_input(self.down_input, down)


def _pack(bits: list[bool]) -> list[int]:
    """Bits to 16-bit registers, bit 0 first (pymodbus's layout for bit blocks)."""
    return [
        sum(1 << i for i, bit in enumerate(bits[start : start + 16]) if bit)
        for start in range(0, len(bits), 16)
    ]
