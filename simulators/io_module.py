"""Modbus IO modules (and the barriers wired to them) for tests and the demo, over TCP or RTU.

Both speak what CONTRACT 2.3 needs: discrete inputs read with function 2, coils read with
function 1 and written with functions 5 and 15; anything else gets the exception
response pymodbus gives (illegal address). One ``SimulatedUnit`` holds a unit's inputs,
coils and behaviour (``silent``, ``latency_s``, barriers); the transports serve units:

- ``IoModuleSimulator`` is a unit behind a real pymodbus 3.16 ``ModbusTcpServer`` on
  127.0.0.1, run in the caller's event loop. ``add_unit()`` puts more units behind the
  same server, like an RS-485 line behind a TCP gateway.
- ``RtuBusSimulator`` is an RS-485 line with several units on it, served by a pymodbus
  ``ModbusSerialServer`` (RTU framing) over real ptys; see its docstring for which end
  is which.

How it hooks into pymodbus 3.16 (from the installed source, ``simulator/simruntime.py``,
``simulator/simcore.py``, ``transaction/transaction.py``, ``server/requesthandler.py``,
``transport/serialtransport.py``):

- Each unit is a ``SimDevice`` with separate coil and discrete-input blocks; a server
  takes a list of them, one per unit id. Its ``action`` coroutine runs on every access
  to a block, after the address check and before the request is served, with the
  block's registers (16 bits each, bit 0 first) and, for writes, the values being
  written. The unit keeps its own bit lists as the truth: the action copies them into
  the registers, so reads return them, and records writes, which fire the
  ``on_coil_write`` hooks. (The older datastore classes, ``ModbusDeviceContext`` and
  friends, are deprecated in 3.16 and log a warning.)
- ``trace_pdu(sending=False, pdu)`` sees every decoded request; returning ``None`` makes
  the request handler drop it unanswered. That copies a device's silence: requests for
  a unit id nobody simulates get no reply (as on a real RS-485 line, where pymodbus
  would otherwise answer "gateway target failed" or pick device 0), and a unit with
  ``silent = True`` never answers or acts (nor does any unit on a request its ``lose``
  picks: one lost frame). The same hook, and ``trace_pdu(sending=True)``
  for answers, feeds ``traffic``, the order in which requests and answers crossed the line.
- The serial server opens its port with pyserial, which needs a path it can open; a
  pty master has none (reopening ``/dev/ptmx`` makes a new pty). Hence two ptys joined
  by a relay, like ``socat``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import tty
from collections.abc import Callable, Iterable
from typing import Literal

from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

__all__ = ["Barrier", "IoModuleSimulator", "RtuBusSimulator", "SimulatedUnit", "Traffic"]

Position = Literal["up", "down", "moving_up", "moving_down"]
Traffic = tuple[float, Literal["request", "answer", "ignored"], int, int]
"""(``time.monotonic()``, kind, unit id, function code) of one frame on the line."""

_COIL_FUNCTIONS = frozenset({1, 5, 15})
_COIL_WRITES = frozenset({5, 15})
_INPUT_FUNCTIONS = frozenset({2})


class SimulatedUnit:
    """One Modbus unit: ``inputs`` discrete inputs and ``coils`` coils, from address 0."""

    def __init__(self, unit: int, inputs: int = 16, coils: int = 16) -> None:
        if not 1 <= unit <= 255:
            raise ValueError(f"unit must be 1..255, got {unit}")
        if inputs < 1 or coils < 1:
            raise ValueError("a module needs at least one input and one coil")
        self.unit = unit
        self.silent = False
        """Never answer or act on a request, like a hung module (a TCP server still
        accepts connections)."""
        self.latency_s = 0.0
        """Think this long before answering a request (after the address check)."""
        self.lose: Callable[[ModbusPDU], bool] | None = None
        """A request for which this returns True is lost on the line: never acted on,
        never answered (one frame's fault, where ``silent`` is the whole unit's)."""
        self.coil_writes: list[tuple[float, int, bool]] = []
        """Every coil write acted on: (``time.monotonic()``, address, value)."""
        self.on_coil_write: list[Callable[[int, bool], None]] = []
        """Called with (address, value) for every coil write, after the coil changed."""
        self.barriers: list[Barrier] = []
        self._inputs = [False] * inputs
        self._coils = [False] * coils

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
        """Wire a barrier to this unit: it moves on rising edges of its coils."""
        barrier = Barrier(self, open_coil, close_coil, up_input, down_input, travel_s)
        self.barriers.append(barrier)
        return barrier

    @staticmethod
    def _index(address: int, bits: list[bool], kind: str) -> int:
        if not 0 <= address < len(bits):
            raise IndexError(f"{kind} address {address} outside 0..{len(bits) - 1}")
        return address

    # ------------------------------------------------------------------ pymodbus hooks

    def _device(self) -> SimDevice:
        return SimDevice(
            self.unit,
            simdata=(
                [SimData(0, values=[False] * len(self._coils), datatype=DataType.BITS)],
                [SimData(0, values=[False] * len(self._inputs), datatype=DataType.BITS)],
                [SimData(0, datatype=DataType.INVALID)],  # no holding registers
                [SimData(0, datatype=DataType.INVALID)],  # no input registers
            ),
            action=self._action,
        )

    async def _action(
        self,
        function_code: int,
        _start_address: int,
        address: int,
        _count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> None:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
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


class _Line:
    """What the server saw on the line, for both transports: ``traffic`` and ``overlaps``."""

    def __init__(self) -> None:
        self.traffic: list[Traffic] = []
        """Every request the server decoded (``"request"``, or ``"ignored"`` when no unit
        answers it) and every answer it sent, in order."""
        self.overlaps = 0
        """Requests that arrived while an earlier one was still being served. A master
        that keeps to one request at a time on the line never causes one."""
        self._serving: int | None = None

    def _units(self) -> dict[int, SimulatedUnit]:
        raise NotImplementedError

    def requests_for(self, unit: int) -> list[float]:
        """When requests for ``unit`` arrived (answered or not)."""
        return [t for t, kind, u, _ in self.traffic if u == unit and kind != "answer"]

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        now = time.monotonic()
        if sending:
            self.traffic.append((now, "answer", pdu.dev_id, pdu.function_code))
            self._serving = None
            return pdu
        unit = self._units().get(pdu.dev_id)
        if unit is None or unit.silent or (unit.lose is not None and unit.lose(pdu)):
            self.traffic.append((now, "ignored", pdu.dev_id, pdu.function_code))
            return None  # the request handler drops it: no action, no answer
        if self._serving is not None:
            self.overlaps += 1
        self._serving = pdu.dev_id
        self.traffic.append((now, "request", pdu.dev_id, pdu.function_code))
        return pdu


class IoModuleSimulator(SimulatedUnit, _Line):
    """A Modbus TCP IO module (unit ``unit``), optionally with more units behind it.

    ``stop()`` shuts the server down, which also closes every accepted connection, so
    clients see the connection drop and further connects are refused; ``start()`` again
    builds a fresh server on the same port with the same inputs and coils.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        unit: int = 1,
        inputs: int = 16,
        coils: int = 16,
    ) -> None:
        SimulatedUnit.__init__(self, unit, inputs, coils)
        _Line.__init__(self)
        self.host = host
        self.port = port
        """The listening port; after ``start()`` with port 0, the one the OS chose."""
        self._others: dict[int, SimulatedUnit] = {}
        self._server: ModbusTcpServer | None = None

    def add_unit(self, unit: int, inputs: int = 16, coils: int = 16) -> SimulatedUnit:
        """Another unit behind the same server (a TCP gateway to an RS-485 line).

        Takes effect at the next ``start()``.
        """
        if unit in self._units():
            raise ValueError(f"unit {unit} is already simulated")
        self._others[unit] = SimulatedUnit(unit, inputs, coils)
        return self._others[unit]

    @property
    def units(self) -> dict[int, SimulatedUnit]:
        """Every unit behind this server, this module included."""
        return self._units()

    def _units(self) -> dict[int, SimulatedUnit]:
        return {self.unit: self, **self._others}

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen (again) on ``host:port``; raise ``RuntimeError`` if the port is taken."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        devices = [u._device() for u in self._units().values()]
        server = ModbusTcpServer(devices, address=(self.host, self.port), trace_pdu=self._trace_pdu)
        await server.serve_forever(background=True)  # RuntimeError when it can't listen
        self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._server = server

    async def stop(self) -> None:
        """Stop listening and drop every client connection."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
        self._serving = None


class RtuBusSimulator(_Line):
    """An RS-485 line with Modbus RTU units on it, served over two ptys joined by a relay.

    Which end is which:

    - **Driver end** (``port``): what the driver opens, exactly as it would open
      ``/dev/ttyUSB0``. ``port`` is a symlink in a private temp directory to the slave of
      the driver's pty (``tty``, e.g. ``/dev/pts/7``), so the path stays the same across
      ``unplug()`` / ``replug()``, like a ``/dev/serial/by-id`` link.
    - **Device end** (``device_tty``): the slave of a second pty, opened by pymodbus's
      ``ModbusSerialServer`` (RTU framer) serving every unit, as the devices' UARTs.
    - **The cable**: the simulator holds both pty masters and copies bytes between them.
      It also keeps its own descriptor of each slave open, so the ptys and their raw
      settings outlive a server restart or a driver that closes and reopens the port.

    Line states: ``start()`` serves (silent units and unknown unit ids still never
    answer). ``stop()`` shuts the server down and the cable drops what the driver sends:
    nothing answers, but the driver's port stays open (a dead line, e.g. the bus's 24 V
    gone); ``start()`` serves again with the same inputs and coils. ``unplug()`` closes
    the driver's pty and removes the path: a driver holding the port gets ``EIO`` and
    cannot reopen it (a USB adapter pulled out); ``replug()`` puts a new pty behind the
    same path. ``close()`` ends everything. Construct and use it inside a running loop.
    """

    LINK_NAME = "ttyRS485"

    def __init__(
        self,
        units: Iterable[int] = (1,),
        inputs: int = 16,
        coils: int = 16,
        baudrate: int = 9600,
        parity: Literal["N", "E", "O"] = "N",
        stopbits: Literal[1, 2] = 1,
    ) -> None:
        super().__init__()
        self.baudrate, self.parity, self.stopbits = baudrate, parity, stopbits
        self.units: dict[int, SimulatedUnit] = {}
        """The units on the line, by unit id."""
        for unit in units:
            self.add_unit(unit, inputs, coils)
        self.dropped = 0
        """Bytes the cable threw away: sent while the line was dead or unplugged."""
        self._server: ModbusSerialServer | None = None
        self._dir: str | None = None
        self._device: tuple[int, int] | None = None  # (master, slave) of the device pty
        self._driver: tuple[int, int] | None = None  # (master, slave) of the driver pty
        self._tty = ""
        self._loop: asyncio.AbstractEventLoop | None = None

    def add_unit(self, unit: int, inputs: int = 16, coils: int = 16) -> SimulatedUnit:
        """Another unit on the line; takes effect at the next ``start()``."""
        if not 1 <= unit <= 247:
            raise ValueError(f"an RTU unit id is 1..247, got {unit}")
        if unit in self.units:
            raise ValueError(f"unit {unit} is already on the line")
        self.units[unit] = SimulatedUnit(unit, inputs, coils)
        return self.units[unit]

    def __getitem__(self, unit: int) -> SimulatedUnit:
        return self.units[unit]

    def _units(self) -> dict[int, SimulatedUnit]:
        return self.units

    # ------------------------------------------------------------------ ends

    @property
    def port(self) -> str:
        """The driver's end: a stable path (symlink) to the driver pty's slave."""
        if self._dir is None:
            raise RuntimeError("start() the line first")
        return os.path.join(self._dir, self.LINK_NAME)

    @property
    def tty(self) -> str:
        """The driver pty's slave right now (changes with every ``replug()``)."""
        return self._tty

    @property
    def device_tty(self) -> str:
        """The device end: the pty slave the Modbus server has open."""
        if self._device is None:
            raise RuntimeError("start() the line first")
        return os.ttyname(self._device[1])

    @property
    def running(self) -> bool:
        """The server is serving: units answer."""
        return self._server is not None

    @property
    def plugged(self) -> bool:
        """The driver's end exists."""
        return self._driver is not None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Serve every unit (again); the first call also opens the ptys and the path."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        if self._device is None:
            self._loop = asyncio.get_running_loop()
            self._dir = tempfile.mkdtemp(prefix="gatectl-rtu-")
            self._device = self._open_pty(self._from_device)
            self.replug()
        server = ModbusSerialServer(
            [u._device() for u in self.units.values()],
            framer=FramerType.RTU,
            port=self.device_tty,
            baudrate=self.baudrate,
            parity=self.parity,
            stopbits=self.stopbits,
            ignore_missing_devices=True,
            reconnect_delay=0,
            trace_pdu=self._trace_pdu,
        )
        await server.serve_forever(background=True)  # RuntimeError when it can't open
        self._server = server

    async def stop(self) -> None:
        """The line goes dead: no unit answers; the driver's port stays open."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
        self._serving = None

    def unplug(self) -> None:
        """The driver's port vanishes: its pty closes (``EIO``) and the path is removed."""
        ends, self._driver = self._driver, None
        if ends is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.port)
        self._close_pty(ends)

    def replug(self) -> None:
        """A new pty behind the same ``port`` path (no-op while plugged)."""
        if self._driver is not None:
            return
        if self._dir is None:
            raise RuntimeError("start() the line first")
        self._driver = self._open_pty(self._from_driver)
        self._tty = os.ttyname(self._driver[1])
        tmp = self.port + ".new"
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        os.symlink(self._tty, tmp)
        os.replace(tmp, self.port)

    async def close(self) -> None:
        """Stop serving, close both ptys and remove the path (idempotent)."""
        await self.stop()
        self.unplug()
        ends, self._device = self._device, None
        if ends is not None:
            self._close_pty(ends)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # ------------------------------------------------------------------ the cable

    def _open_pty(self, on_readable: Callable[[], None]) -> tuple[int, int]:
        assert self._loop is not None
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            os.set_blocking(master, False)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._loop.add_reader(master, on_readable)
        return master, slave

    def _close_pty(self, ends: tuple[int, int]) -> None:
        assert self._loop is not None
        master, slave = ends
        self._loop.remove_reader(master)
        os.close(master)  # the master first, so whoever holds the slave sees a hang-up
        os.close(slave)

    def _from_driver(self) -> None:
        if self._driver is None:
            return
        data = self._read(self._driver[0])
        if data and self._server is not None and self._device is not None:
            self._write(self._device[0], data)
        else:
            self.dropped += len(data)

    def _from_device(self) -> None:
        if self._device is None:
            return
        data = self._read(self._device[0])
        if data and self._driver is not None:
            self._write(self._driver[0], data)
        else:
            self.dropped += len(data)

    @staticmethod
    def _read(master: int) -> bytes:
        try:
            return os.read(master, 4096)
        except OSError:  # nothing after all, or the pty is being torn down
            return b""

    def _write(self, master: int, data: bytes) -> None:
        # Frames are a few bytes and the kernel buffer holds kilobytes; what it will
        # not take now is lost, as on a line nobody listens to.
        try:
            written = os.write(master, data)
        except OSError:
            written = 0
        self.dropped += len(data) - written


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
        sim: SimulatedUnit,
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
