"""Modbus IO modules over TCP or RTU: poll discrete inputs, pulse coils (CONTRACT 2.3).

Two layers, following Home Assistant's Modbus hub (STYLE.md section 4):

- A *bus* is one physical line: ``ModbusTcpBus`` (one TCP connection, e.g. to a gateway
  with several units behind it) or ``ModbusRtuBus`` (one RS-485 serial port). It owns the
  pymodbus client and the one ``BusTurns`` that every request on the line, and the
  quiet pause after it, takes its turn from; it opens and reopens the line itself. It
  raises typed errors and knows nothing about health.
- An ``IoModule`` is *one unit on a bus*: its poll loop, health, counters and coil
  pulses. It reports facts through ``on_inputs`` / ``on_health`` and decides nothing.
  Several modules (different unit ids) share one bus.

Building them in the daemon: one bus per physical line, from a ``BusRegistry``, then the
modules on it::

    registry = BusRegistry()
    modules = {}
    for name, mod in config.io_modules.items():
        if mod.protocol == "modbus-tcp":
            bus = registry.tcp(mod.host, mod.port)
        else:  # modbus-rtu
            bus = registry.rtu(mod.port, mod.baudrate, mod.parity, mod.stopbits)
        modules[name] = IoModule.on_bus(
            name, bus, mod.unit, mod.poll_ms, inputs,
            on_inputs=..., on_health=...,
        )
    tasks = [asyncio.create_task(m.run()) for m in modules.values()]
    ...
    # shutdown: cancel and await the tasks, then
    registry.close_all()  # shuts every bus down; nothing reopens them

The old constructor ``IoModule(name, host, port, unit, poll_ms, inputs, on_inputs,
on_health, request_timeout_s=1.0)`` still works: it builds a private ``ModbusTcpBus``
that the module owns and closes when ``run()`` ends. A module built with ``on_bus``
never closes its bus; whoever made the bus (the registry) does.

Who reconnects on a shared bus: the bus. Modules never open or close it. Each poll
cycle a module calls ``bus.ensure_connected()``; if the line is down the bus tries to
reopen it, at most once per its own capped, jittered backoff, and otherwise answers
at once with the last failure. So two modules on a vanished port report one fault each
and neither hammers the port. The bus drops the line when the transport says it is
lost, on a protocol error, or after ``DEAD_LINE_AFTER`` requests in a row that no unit
answered (a half-open TCP connection, a wedged USB adapter). A single unit that stops
answering does *not* drop the line: the other units on it are still talking.

Whose turn it is on a shared line (``BusTurns``): one request at a time, as with a
lock, but a coil write (a barrier's lift, a safety reverse, a close) goes before every
poll waiting for the line, so it waits at most for the request already on the wire
(and other coil writes), not behind the polls of every module on the line. Polls are
never starved: a poll that has waited longer than its module's poll interval goes next.

One dead unit must not stall the bus (home-assistant/core#72495, #110013): each request
waits at most ``request_timeout_s`` (CONTRACT 2.3: 1 s), so another module waits at most
one timeout plus the quiet pause for its turn; and after ``SUSPECT_AFTER`` missed
requests in a row a unit is *suspect* and polled only every ``suspect_poll_ms``, so the
loop detectors on the other units stay live. Its first answer brings it back to the
normal rate.

pymodbus 3.16 client settings, chosen from its source (``transport/transport.py``,
``transport/serialtransport.py``, ``transaction/transaction.py``, ``framer/base.py``):

- ``reconnect_delay=0`` turns off pymodbus's own reconnect task; the bus owns
  reconnection (one report per outage, jittered delays, a fresh snapshot after it).
- ``retries=0``: pymodbus would otherwise resend a request 3 times, each with the full
  timeout, before giving up, and log an ERROR for every give-up (a log flood).
- Our ``asyncio.timeout(request_timeout_s)`` bounds connects and requests. pymodbus's own
  ``timeout`` (used for connect and response waits alike) is twice that, as a backstop
  that never fires first.
- A late answer is never taken for the answer to the next request: pymodbus clears its
  receive buffer before each send, and its framer skips frames whose unit id (RTU) or
  transaction id (TCP) is not the one asked for. So a timeout need not drop the line.
- The serial transport opens the port with pyserial ``exclusive=True`` (a port another
  process holds fails to open) and turns a read or write error (``EIO`` when a USB
  adapter is pulled) into a lost connection, which the bus sees as ``connected`` False.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from drivers.health import Health

__all__ = [
    "BusKey",
    "BusRegistry",
    "BusTurns",
    "IoModule",
    "IoModuleError",
    "IoModuleExceptionResponse",
    "IoModuleTimeout",
    "ModbusBus",
    "ModbusRtuBus",
    "ModbusTcpBus",
    "rtu_bus_key",
    "tcp_bus_key",
]

log = logging.getLogger(__name__)
bus_log = logging.getLogger(__name__ + ".bus")

RECONNECT_MIN_S = 0.1
"""First delay before retrying after a fault; doubles per failed attempt."""
RECONNECT_MAX_S = 5.0
"""Cap of the retry delay, so a module that comes back is seen within seconds."""
MAX_INPUTS = 2000
"""Most discrete inputs one function-2 request may read (Modbus spec 6.2)."""
SUSPECT_AFTER = 3
"""Missed requests in a row after which a unit is suspect and polled less often."""
SUSPECT_POLL_MS = 5000
"""Default period at which a suspect unit is polled until it answers."""
DEAD_LINE_AFTER = 3
"""Requests in a row that no unit on a bus answered, after which the bus reopens the line."""
RTU_QUIET_MS = 30
"""Default pause after each request on a serial line (Home Assistant's default)."""

BusKey = tuple[Any, ...]
"""``("tcp", host, port)`` or ``("rtu", port)``: one key per physical line."""

Call = Callable[[Any], Awaitable[ModbusPDU]]
Turn = Literal["write", "poll"]
"""What a request on a bus is, for ``BusTurns``: a coil write or an input poll."""


def tcp_bus_key(host: str, port: int) -> BusKey:
    """The key of a Modbus TCP line (host names compare case-insensitively)."""
    return ("tcp", host.casefold(), int(port))


def rtu_bus_key(port: str) -> BusKey:
    """The key of a Modbus RTU line: the serial port path as configured.

    Two different paths to one adapter (``/dev/ttyUSB0`` and a ``/dev/serial/by-id``
    link) are two keys; the second bus would then fail to open the port (pyserial
    opens it exclusively). Configure one path per adapter.
    """
    return ("rtu", port)


class IoModuleError(Exception):
    """A request to an IO module failed; ``reason`` says why, for people and logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IoModuleTimeout(IoModuleError):
    """No answer within the request timeout (or the line was lost while waiting)."""


class IoModuleExceptionResponse(IoModuleError):
    """The module answered with a Modbus exception response (``code``, e.g. 2 = illegal address)."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.code = code


class BusTurns:
    """Whose turn it is on one line: one holder at a time, coil writes before polls.

    Like an ``asyncio.Lock``, except for who is served next when the holder lets go:
    the oldest waiting coil write, then the oldest waiting poll (first come, first
    served within each kind). A poll that has waited past its ``patience_s`` (its
    module's poll interval) goes next, before the writes, so a stream of writes delays
    the loop detectors' polls by about one interval, never starves them; but not two
    such polls in a row while a write waits, so on a line too slow for its polls a
    write still waits for one poll at most. Nothing is taken from the holder: a
    request on the wire finishes first.
    """

    def __init__(self) -> None:
        self._held = False
        self._jumped = False  # the last turn went to an overdue poll ahead of a write
        # (future resolved when it is this waiter's turn, loop time after which a poll is overdue)
        self._queues: dict[Turn, deque[tuple[asyncio.Future[None], float]]] = {
            "write": deque(),
            "poll": deque(),
        }

    @property
    def held(self) -> bool:
        return self._held

    @property
    def waiting(self) -> dict[Turn, int]:
        """How many requests of each kind wait for their turn."""
        return {kind: len(queue) for kind, queue in self._queues.items()}

    @contextlib.asynccontextmanager
    async def turn(self, kind: Turn, patience_s: float | None = None) -> AsyncIterator[None]:
        """Wait for a turn on the line (``patience_s``: polls only), hold it in the block."""
        await self._acquire(kind, patience_s)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, kind: Turn, patience_s: float | None) -> None:
        if not self._held:  # nobody waits while the line is free: handing over keeps it held
            self._held = True
            return
        loop = asyncio.get_running_loop()
        overdue_at = loop.time() + patience_s if kind == "poll" and patience_s is not None else math.inf
        waiter = (loop.create_future(), overdue_at)
        queue = self._queues[kind]
        queue.append(waiter)
        try:
            await waiter[0]
        except asyncio.CancelledError:
            if waiter[0].done() and not waiter[0].cancelled():
                self._release()  # the turn came with the cancellation: pass it on
            elif waiter in queue:
                queue.remove(waiter)
            raise

    def _release(self) -> None:
        writes, polls = self._queues["write"], self._queues["poll"]
        while writes or polls:
            overdue = bool(polls) and polls[0][1] <= asyncio.get_running_loop().time()
            # An overdue poll goes before waiting writes, but never twice in a row: on a
            # line too slow for its polls every poll is overdue, and writes must still go.
            jump = overdue and not self._jumped
            future = writes.popleft()[0] if writes and not jump else polls.popleft()[0]
            # A waiter cancelled since it queued (its task has not run yet) is skipped.
            if not future.done():
                self._jumped = jump and bool(writes)
                future.set_result(None)  # still held: it is the waiter's now
                return
        self._held = False


class ModbusBus:
    """One physical Modbus line: a pymodbus client and the turns every request waits for.

    Subclasses say how to build the client (``_new_client``) and describe the line
    (``key``, ``where``). Every request and the ``quiet_ms`` pause after it run in a
    turn of ``turns``, so requests on one line never interleave, and a slow RS-485
    device has time to turn the line around before the next frame; coil writes get
    their turn before waiting polls.
    """

    COUNTERS = ("requests", "timeouts", "connects", "connect_failures", "drops")

    def __init__(self, request_timeout_s: float, quiet_ms: float, name: str) -> None:
        if request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {request_timeout_s}")
        if quiet_ms < 0:
            raise ValueError(f"quiet_ms must be >= 0, got {quiet_ms}")
        self.request_timeout_s = request_timeout_s
        self.quiet_s = quiet_ms / 1000
        self.name = name
        self.turns = BusTurns()
        self._client: Any = None
        self._closed_because = "not connected yet"
        self._in_error = False  # the line is down and that was logged
        self._connect_failures = 0  # in a row, for the reconnect backoff
        self._retry_at = 0.0  # loop time before which no reconnect is tried
        self._unanswered = 0  # requests in a row that no unit answered
        self._shut_down = False
        self._counters = dict.fromkeys(self.COUNTERS, 0)

    # ------------------------------------------------------------------ description

    @property
    def key(self) -> BusKey:
        raise NotImplementedError

    @property
    def where(self) -> str:
        """The line, for people: ``host:port`` or the serial port path."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.where}>"

    @property
    def counters(self) -> dict[str, int]:
        """Requests sent, timeouts, (re)connects and failed attempts, lines dropped."""
        return dict(self._counters)

    # ------------------------------------------------------------------ connection

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def retry_in_s(self) -> float:
        """Seconds until the bus will try to reopen the line; 0 when it would now."""
        if self.connected:
            return 0.0
        return max(0.0, self._retry_at - asyncio.get_running_loop().time())

    async def ensure_connected(self) -> None:
        """Open the line unless it is open; raise ``IoModuleError`` if it can't be.

        Within the backoff after a failed attempt this raises the last failure at once
        without touching the port, so every module on the line may call it every cycle.
        """
        if self.connected:
            return
        async with self.turns.turn("write"):
            if self._client is not None:
                if self._client.connected:
                    return
                self._lost(f"connection to {self.where} lost")
            loop = asyncio.get_running_loop()
            if self._shut_down or loop.time() < self._retry_at:
                raise IoModuleError(self._closed_because)
            await self._open_locked()

    async def connect(self) -> None:
        """Open a fresh connection now (closing any old one); raise ``IoModuleError`` on failure."""
        async with self.turns.turn("write"):
            self._shut_down = False
            self._close("reconnecting")
            await self._open_locked()

    async def _open_locked(self) -> None:
        loop = asyncio.get_running_loop()
        client = self._new_client()
        try:
            async with asyncio.timeout(self.request_timeout_s):
                ok = await client.connect()
        except TimeoutError:
            ok, reason = False, f"cannot connect to {self.where} within {self.request_timeout_s:g} s"
            timed_out = True
        else:
            timed_out = False
            reason = "" if ok else self._open_failed_reason()
        if not ok:
            client.close()
            self._counters["connect_failures"] += 1
            self._connect_failures += 1
            delay = min(RECONNECT_MAX_S, RECONNECT_MIN_S * 2 ** (self._connect_failures - 1))
            self._retry_at = loop.time() + delay * random.uniform(0.5, 1.0)
            self._closed_because = reason
            self._log_down(reason)
            raise (IoModuleTimeout if timed_out else IoModuleError)(reason)
        self._client = client
        self._counters["connects"] += 1
        self._connect_failures = 0
        self._retry_at = 0.0
        self._unanswered = 0
        if self._in_error:
            self._in_error = False
            bus_log.info("bus %s: %s open again", self.name, self.where)
        else:
            bus_log.debug("bus %s: %s open", self.name, self.where)

    def close(self, reason: str = "closed") -> None:
        """Drop the line; later requests fail with ``reason`` until it is reopened."""
        self._close(reason)

    def shutdown(self, reason: str = "bus shut down") -> None:
        """Drop the line for good: ``ensure_connected()`` no longer reopens it.

        For the daemon's shutdown, so a module still polling cannot reopen a port the
        daemon is letting go of; ``connect()`` still opens it explicitly.
        """
        self._shut_down = True
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._closed_because = reason

    def _lost(self, reason: str) -> None:
        """The line failed under us: drop it (it may be reopened at once) and say so once."""
        self._counters["drops"] += 1
        self._close(reason)
        self._log_down(reason)

    def _log_down(self, reason: str) -> None:
        # First failure loud, repeats quiet, cleared by the next open (STYLE.md 4).
        if self._in_error:
            bus_log.debug("bus %s: still down: %s", self.name, reason)
        else:
            self._in_error = True
            bus_log.warning("bus %s: %s; reopening %s", self.name, reason, self.where)

    def _new_client(self) -> Any:
        raise NotImplementedError

    def _open_failed_reason(self) -> str:
        return f"cannot connect to {self.where}"

    # ------------------------------------------------------------------ requests

    async def execute(
        self, call: Call, what: str, *, kind: Turn = "write", patience_s: float | None = None
    ) -> ModbusPDU:
        """Run one request in its turn on the line and under the request timeout, then
        pause quietly.

        ``kind`` says whose turn comes first (``BusTurns``): a ``"write"`` before any
        waiting ``"poll"``, unless that poll has waited more than ``patience_s``.
        ``what`` names the request (unit and address) and starts every error reason.
        Never opens the line: a request on a closed line fails with "not connected".
        A timeout leaves the line open (the other units on it may be fine) unless no
        unit has answered ``DEAD_LINE_AFTER`` requests in a row.
        """
        async with self.turns.turn(kind, patience_s):
            client = self._client
            if client is None:
                raise IoModuleError(f"{what}: not connected ({self._closed_because})")
            if not client.connected:
                reason = f"{what}: connection lost"
                self._lost(reason)
                raise IoModuleError(reason)
            self._counters["requests"] += 1
            try:
                response = await self._send_locked(client, call, what)
            finally:
                if self.quiet_s > 0:
                    # Inter-frame gap within the turn, answered or not: the next frame
                    # must not run into a slow device's late answer or line turnaround.
                    await asyncio.sleep(self.quiet_s)
        if response.isError():
            code = getattr(response, "exception_code", 0)
            raise IoModuleExceptionResponse(f"{what}: exception response, code {code}", code)
        return response

    async def _send_locked(self, client: Any, call: Call, what: str) -> ModbusPDU:
        try:
            async with asyncio.timeout(self.request_timeout_s):
                response = await call(client)
        except TimeoutError:
            if self._shut_down:  # let go on purpose while a request was on the line
                raise IoModuleError(f"{what}: {self._closed_because}") from None
            self._counters["timeouts"] += 1
            if not client.connected:
                reason = f"{what}: connection lost while waiting for the answer"
                self._lost(reason)
                raise IoModuleTimeout(reason) from None
            reason = f"{what}: no answer within {self.request_timeout_s:g} s"
            self._unanswered += 1
            if self._unanswered >= DEAD_LINE_AFTER:
                self._lost(f"no unit on {self.where} answered {self._unanswered} requests in a row")
            raise IoModuleTimeout(reason) from None
        except ModbusException as exc:
            if self._shut_down:
                raise IoModuleError(f"{what}: {self._closed_because}") from exc
            reason = f"{what}: {exc}"
            self._lost(reason)
            raise IoModuleError(reason) from exc
        self._unanswered = 0
        return response


class ModbusTcpBus(ModbusBus):
    """One Modbus TCP connection (a module, or a gateway with several units behind it)."""

    def __init__(
        self,
        host: str,
        port: int,
        request_timeout_s: float = 1.0,
        name: str = "modbus",
        quiet_ms: float = 0,
    ) -> None:
        super().__init__(request_timeout_s, quiet_ms, name)
        self.host = host
        self.port = port

    @property
    def key(self) -> BusKey:
        return tcp_bus_key(self.host, self.port)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def _new_client(self) -> AsyncModbusTcpClient:
        return AsyncModbusTcpClient(
            self.host,
            port=self.port,
            name=self.name,
            reconnect_delay=0,
            retries=0,
            timeout=2 * self.request_timeout_s,
        )

    def _open_failed_reason(self) -> str:
        return f"cannot connect to {self.where} (refused or unreachable)"


class ModbusRtuBus(ModbusBus):
    """One RS-485 line on a serial port, Modbus RTU framing, 8 data bits.

    ``quiet_ms`` is the pause after every request, within its turn, before the next
    frame goes out (Home Assistant pauses 30 ms on serial lines).
    """

    def __init__(
        self,
        port: str,
        baudrate: int = 9600,
        parity: Literal["N", "E", "O"] = "N",
        stopbits: Literal[1, 2] = 1,
        request_timeout_s: float = 1.0,
        quiet_ms: float = RTU_QUIET_MS,
        name: str = "rs485",
    ) -> None:
        if baudrate <= 0:
            raise ValueError(f"baudrate must be > 0, got {baudrate}")
        if parity not in ("N", "E", "O"):
            raise ValueError(f"parity must be N, E or O, got {parity!r}")
        if stopbits not in (1, 2):
            raise ValueError(f"stopbits must be 1 or 2, got {stopbits!r}")
        super().__init__(request_timeout_s, quiet_ms, name)
        self.port = port
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits

    @property
    def key(self) -> BusKey:
        return rtu_bus_key(self.port)

    @property
    def where(self) -> str:
        return self.port

    @property
    def settings(self) -> tuple[int, str, int]:
        """(baudrate, parity, stopbits)."""
        return (self.baudrate, self.parity, self.stopbits)

    def _new_client(self) -> AsyncModbusSerialClient:
        return AsyncModbusSerialClient(
            self.port,
            framer=FramerType.RTU,
            baudrate=self.baudrate,
            bytesize=8,
            parity=self.parity,
            stopbits=self.stopbits,
            name=self.name,
            reconnect_delay=0,
            retries=0,
            timeout=2 * self.request_timeout_s,
        )

    def _open_failed_reason(self) -> str:
        # pymodbus swallows pyserial's error (it logs it as a warning); say what we can.
        if not os.path.exists(self.port):
            return f"cannot open serial port {self.port}: it does not exist (adapter unplugged?)"
        return f"cannot open serial port {self.port} (in use by another process, or no permission)"


class BusRegistry:
    """One bus per physical line, by ``bus_key``; the daemon's single place to get buses.

    ``tcp()`` / ``rtu()`` return the existing bus for a line or create it. Asking for a
    serial port already open with other line settings is a ``ValueError`` (the config
    check rejects that earlier). ``close_all()`` at shutdown, after the modules stopped.
    """

    def __init__(self, request_timeout_s: float = 1.0, rtu_quiet_ms: float = RTU_QUIET_MS) -> None:
        self.request_timeout_s = request_timeout_s
        self.rtu_quiet_ms = rtu_quiet_ms
        self._buses: dict[BusKey, ModbusBus] = {}

    def tcp(self, host: str, port: int, *, name: str | None = None) -> ModbusTcpBus:
        key = tcp_bus_key(host, port)
        bus = self._buses.get(key)
        if bus is None:
            bus = ModbusTcpBus(
                host, port, self.request_timeout_s, name=name or f"tcp:{host}:{port}"
            )
            self._buses[key] = bus
        assert isinstance(bus, ModbusTcpBus)
        return bus

    def rtu(
        self,
        port: str,
        baudrate: int = 9600,
        parity: Literal["N", "E", "O"] = "N",
        stopbits: Literal[1, 2] = 1,
        *,
        name: str | None = None,
    ) -> ModbusRtuBus:
        key = rtu_bus_key(port)
        bus = self._buses.get(key)
        if bus is None:
            bus = ModbusRtuBus(
                port,
                baudrate,
                parity,
                stopbits,
                request_timeout_s=self.request_timeout_s,
                quiet_ms=self.rtu_quiet_ms,
                name=name or f"rtu:{port}",
            )
            self._buses[key] = bus
        assert isinstance(bus, ModbusRtuBus)
        if bus.settings != (baudrate, parity, stopbits):
            raise ValueError(
                f"serial port {port} is already open as {bus.settings[0]}/{bus.settings[1]}/"
                f"{bus.settings[2]}, not {baudrate}/{parity}/{stopbits}"
            )
        return bus

    def get(self, key: BusKey) -> ModbusBus | None:
        return self._buses.get(key)

    def __iter__(self) -> Iterator[ModbusBus]:
        return iter(list(self._buses.values()))

    def __len__(self) -> int:
        return len(self._buses)

    def close_all(self, reason: str = "daemon stopping") -> None:
        """Shut every bus down; modules still polling report "daemon stopping" faults."""
        for bus in self._buses.values():
            bus.shutdown(reason)


class IoModule:
    """One Modbus IO module (a unit on a bus): polls discrete inputs 0..inputs-1, pulses coils.

    ``on_inputs(changed, snapshot)``: the first good poll, and the first after every
    fault, reports every input with ``snapshot=True``; later polls report only the
    addresses that changed, ``snapshot=False``, and nothing when nothing changed.
    ``on_health(health, reason)``: ``FAULTY`` once per outage (no answer within
    ``request_timeout_s``, an exception response to a poll, a refused, vanished or
    dropped line), ``OK`` on the first good poll after it. Before the first poll health
    is unknown (``health`` is ``None``). The snapshot is delivered before ``OK``, so a
    listener that sees ``OK`` already has a current picture of the inputs.

    Build it with ``IoModule.on_bus(...)`` on a shared bus, or with the constructor for
    a module with a private TCP connection.
    """

    COUNTERS = ("polls", "timeouts", "exceptions", "reconnects", "writes")

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        unit: int,
        poll_ms: int,
        inputs: int,
        on_inputs: Callable[[dict[int, bool], bool], None],
        on_health: Callable[[Health, str], None],
        request_timeout_s: float = 1.0,
        *,
        suspect_poll_ms: int = SUSPECT_POLL_MS,
    ) -> None:
        """A module with its own TCP connection, closed when ``run()`` ends."""
        bus = ModbusTcpBus(host, port, request_timeout_s, name=name)
        self._setup(name, bus, unit, poll_ms, inputs, on_inputs, on_health, suspect_poll_ms, True)

    @classmethod
    def on_bus(
        cls,
        name: str,
        bus: ModbusBus,
        unit: int,
        poll_ms: int,
        inputs: int,
        on_inputs: Callable[[dict[int, bool], bool], None],
        on_health: Callable[[Health, str], None],
        *,
        suspect_poll_ms: int = SUSPECT_POLL_MS,
    ) -> IoModule:
        """A module on a bus it shares with others; the request timeout is the bus's.

        The module never opens or closes the bus itself beyond asking it to reconnect;
        the bus's owner closes it (``BusRegistry.close_all()``).
        """
        module = cls.__new__(cls)
        module._setup(name, bus, unit, poll_ms, inputs, on_inputs, on_health, suspect_poll_ms, False)
        return module

    def _setup(
        self,
        name: str,
        bus: ModbusBus,
        unit: int,
        poll_ms: int,
        inputs: int,
        on_inputs: Callable[[dict[int, bool], bool], None],
        on_health: Callable[[Health, str], None],
        suspect_poll_ms: int,
        owns_bus: bool,
    ) -> None:
        if not 0 <= unit <= 255:
            raise ValueError(f"unit must be 0..255, got {unit}")
        if poll_ms <= 0:
            raise ValueError(f"poll_ms must be > 0, got {poll_ms}")
        if not 1 <= inputs <= MAX_INPUTS:
            raise ValueError(f"inputs must be 1..{MAX_INPUTS}, got {inputs}")
        if suspect_poll_ms <= 0:
            raise ValueError(f"suspect_poll_ms must be > 0, got {suspect_poll_ms}")
        self.name = name
        self.unit = unit
        self.bus = bus
        self._owns_bus = owns_bus
        self._poll_s = poll_ms / 1000
        self._suspect_poll_s = suspect_poll_ms / 1000
        self._inputs = inputs
        self._on_inputs = on_inputs
        self._on_health = on_health
        self._health: Health | None = None
        self._last: list[bool] | None = None  # None: the next good poll is a snapshot
        self._failures = 0  # failed poll cycles since the last good poll
        self._misses = 0  # requests in a row this unit did not answer
        self._suspect_logged = False
        self._running = False
        # Coils a failed pulse may have left on: switched off before the next poll.
        self._must_switch_off: set[int] = set()
        self._owned_coils: set[int] = set()
        self._pulsing: set[int] = set()  # coils a pulse is driving right now
        self._counters = dict.fromkeys(self.COUNTERS, 0)
        self._log = _Prefixed(log, f"io module {name} unit {unit} at {bus.where}")

    def own_coils(self, addresses: Iterable[int]) -> None:
        """Coils only this driver drives: each is switched off before the first poll.

        A controller killed inside a pulse leaves its coil energised; nobody else would
        ever switch it off, and the barrier's next pulse on that coil would be no edge.
        """
        self._owned_coils.update(addresses)
        if not self._running:
            self._must_switch_off.update(self._owned_coils)

    @property
    def health(self) -> Health | None:
        """``None`` until the first poll succeeds or fails, then the last reported health."""
        return self._health

    @property
    def suspect(self) -> bool:
        """The unit missed ``SUSPECT_AFTER`` requests in a row and is polled only rarely."""
        return self._misses >= SUSPECT_AFTER

    @property
    def counters(self) -> dict[str, int]:
        """Requests sent (``polls``, ``writes``), failures by kind, retries after a fault
        (``reconnects``; the bus reopens the line first when it is down)."""
        return dict(self._counters)

    # ------------------------------------------------------------------ polling

    async def run(self) -> None:
        """Poll every ``poll_ms``; on any fault retry with backoff, until cancelled.

        Device faults never end it. An exception raised by ``on_inputs`` or ``on_health``
        does: that is a bug on the caller's side, and it should surface, not be logged away.
        """
        if self._running:
            raise RuntimeError(f"io module {self.name} is already running")
        self._running = True
        loop = asyncio.get_running_loop()
        try:
            # None: poll at once, then take a phase of this module's own within the interval.
            next_at: float | None = None
            while True:
                _honour_cancellation()
                started = loop.time()
                try:
                    await self._poll_once()
                except IoModuleError as exc:
                    self._fault(exc.reason)
                    await asyncio.sleep(self._retry_delay_s())
                    self._counters["reconnects"] += 1
                    next_at = None
                    continue
                now = loop.time()
                if next_at is None:
                    # Modules started together (or late together after a stall) would poll
                    # in step for ever: every module's answer handled in one burst each
                    # interval, and a lane's lift landing behind it. A random phase spreads
                    # them; the next poll starts within an interval of this one, never later.
                    next_at = started + self._poll_s * _poll_phase()
                else:
                    next_at += self._poll_s  # fixed rate
                    if next_at < now:
                        # After a slow request, poll again at once instead of bursting to
                        # catch up, then take a new phase.
                        next_at = None
                        continue
                await asyncio.sleep(next_at - now)
        finally:
            self._running = False
            if self._owns_bus:
                self.bus.close(f"io module {self.name} stopped")

    async def _poll_once(self) -> None:
        # (Every module polls 20 times a second: no coroutine where a test will do.)
        if not self.bus.connected:
            await self.bus.ensure_connected()
        if self._must_switch_off:
            await self._switch_off_leftovers()
        bits = await self._read_inputs()
        # A pulse that gave up while the read was on the line left its coil to this loop:
        # off before the poll counts as good (and the module as OK again).
        if self._must_switch_off:
            await self._switch_off_leftovers()
        self._good_poll(bits)

    async def _read_inputs(self) -> list[bool]:
        n = self._inputs
        self._counters["polls"] += 1
        response = await self._request(
            lambda c: c.read_discrete_inputs(address=0, count=n, device_id=self.unit),
            f"read discrete inputs 0-{n - 1}",
            kind="poll",
        )
        bits = list(response.bits)
        if len(bits) < n:
            raise IoModuleError(
                f"unit {self.unit} read discrete inputs 0-{n - 1}: short answer, {len(bits)} bits"
            )
        return bits[:n]

    def _good_poll(self, bits: list[bool]) -> None:
        self._failures = 0
        if self._last is None:
            changed, snapshot = dict(enumerate(bits)), True
        else:
            changed = {i: new for i, (old, new) in enumerate(zip(self._last, bits)) if old != new}
            snapshot = False
        self._last = bits
        if changed or snapshot:
            self._on_inputs(changed, snapshot)
        if self._health is not Health.OK:
            if self._health is Health.FAULTY:
                self._log.info("recovered, polling discrete inputs 0-%d again", self._inputs - 1)
            else:
                self._log.info("connected, polling discrete inputs 0-%d", self._inputs - 1)
            self._health = Health.OK
            self._on_health(Health.OK, f"polling discrete inputs 0-{self._inputs - 1}")

    def _fault(self, reason: str) -> None:
        self._failures += 1
        self._last = None  # whatever happened meanwhile, the next good poll is a snapshot
        if self.suspect and not self._suspect_logged:
            self._suspect_logged = True
            self._log.warning(
                "no answer to %d requests in a row; polling it every %g s until it answers",
                self._misses,
                self._suspect_poll_s,
            )
        if self._health is Health.FAULTY:
            # Same outage: one ERROR per outage, the rest at DEBUG (home-assistant#107230).
            self._log.debug("still faulty: %s", reason)
            return
        self._health = Health.FAULTY
        self._log.error("device fault: %s; retrying with backoff", reason)
        self._on_health(Health.FAULTY, reason)

    def _retry_delay_s(self) -> float:
        """How long to wait after a fault before polling again.

        A suspect unit waits ``suspect_poll_ms``; otherwise capped exponential backoff.
        Both are jittered, so many lanes don't retry in step, and never shorter than
        the bus's own wait before it tries to reopen a line that is down.
        """
        if self.suspect:
            delay = self._suspect_poll_s * random.uniform(0.8, 1.0)
        else:
            base = min(RECONNECT_MAX_S, RECONNECT_MIN_S * 2 ** max(0, self._failures - 1))
            delay = base * random.uniform(0.5, 1.0)
        return max(delay, self.bus.retry_in_s())

    # ------------------------------------------------------------------ coils

    async def write_coil(self, address: int, value: bool) -> None:
        """Write one coil (function 5); raise ``IoModuleError`` unless the module confirms it."""
        if not 0 <= address <= 0xFFFF:
            raise ValueError(f"coil address must be 0..65535, got {address}")
        what = f"write coil {address} {'on' if value else 'off'}"
        self._counters["writes"] += 1
        response = await self._request(
            lambda c: c.write_coil(address, value, device_id=self.unit), what
        )
        if response.address != address or not response.bits or bool(response.bits[0]) != value:
            raise IoModuleError(
                f"unit {self.unit} {what}: answer echoes coil {response.address} = {response.bits[:1]}"
            )

    async def pulse(self, address: int, ms: int, on_energised: Callable[[], None] | None = None) -> None:
        """Switch a coil on, wait ``ms``, switch it off (CONTRACT 2.3: on, pulse_ms, off).

        A coil left on is dangerous: a barrier's open input held on keeps the boom up, and
        the next vehicle tailgates through. So the off write is retried until it succeeds
        or the module is declared faulty, runs even when the pulse is cancelled, and if it
        still fails the poll loop switches the coil off before its next successful poll.

        Cancelled while the on write is on the line (its answer not read yet), the pulse
        still switches the coil off: the module may have acted on the write already.
        """
        self._pulsing.add(address)
        try:
            try:
                await self.write_coil(address, True)
            except IoModuleError as exc:
                if not isinstance(exc, IoModuleExceptionResponse):
                    # No answer, a lost line or a garbled echo: the module may have switched
                    # the coil on all the same. (An exception response says it did not.)
                    self._must_switch_off.add(address)
                # Faulty until the next good poll, so whoever waits on this pulse hears
                # (OK, with a fresh snapshot) when the module is usable again.
                self._fault(exc.reason)
                raise
            except asyncio.CancelledError:
                await self._switch_off_cancelled(address)
                raise
            try:
                if on_energised is not None:
                    on_energised()
                _honour_cancellation()
                await asyncio.sleep(ms / 1000)
            except (asyncio.CancelledError, Exception):
                await self._switch_off_cancelled(address)
                raise
            await self._switch_off(address)
        finally:
            self._pulsing.discard(address)

    async def _switch_off_cancelled(self, address: int) -> None:
        """The off write of a pulse that ends early; the pulse's own error is what its
        caller hears (a failure here is logged, and the coil left to the poll loop)."""
        with contextlib.suppress(IoModuleError):
            await self._switch_off(address)

    async def _switch_off(self, address: int) -> None:
        # Until the module confirms it is off; the poll loop leaves it to this pulse
        # meanwhile (``_pulsing``) and takes over if the pulse gives up or is cancelled.
        self._must_switch_off.add(address)
        logged = False
        while True:
            try:
                await self.write_coil(address, False)
            except IoModuleError as exc:
                if self._health is Health.FAULTY or not self._running:
                    self._log.error(
                        "coil %d may still be on (%s); will switch it off before polling again",
                        address,
                        exc.reason,
                    )
                    raise IoModuleError(f"coil {address} may still be on: {exc.reason}") from exc
                if not logged:
                    self._log.error(
                        "%s; retrying until it succeeds or the module is faulty", exc.reason
                    )
                    logged = True
                await asyncio.sleep(self._poll_s)
            else:
                self._must_switch_off.discard(address)
                if logged:
                    self._log.info("coil %d switched off after retrying", address)
                return

    async def _switch_off_leftovers(self) -> None:
        for address in sorted(self._must_switch_off - self._pulsing):
            await self.write_coil(address, False)
            self._must_switch_off.discard(address)
            self._log.info("coil %d switched off after a failed pulse", address)

    # ------------------------------------------------------------------ requests

    async def _request(self, call: Call, what: str, kind: Turn = "write") -> Any:
        try:
            # A poll that waited one interval for the line is overdue: it goes next.
            response = await self.bus.execute(
                call, f"unit {self.unit} {what}", kind=kind, patience_s=self._poll_s
            )
        except IoModuleTimeout:
            self._counters["timeouts"] += 1
            self._misses += 1
            raise
        except IoModuleExceptionResponse:
            self._counters["exceptions"] += 1
            self._answered()
            raise
        self._answered()
        return response

    def _answered(self) -> None:
        if self._suspect_logged:
            self._log.info("answers again; back to polling every %g s", self._poll_s)
        self._misses = 0
        self._suspect_logged = False


def _poll_phase() -> float:
    """Where in its interval a module polls, as a fraction of it after its first poll
    started (random: see ``IoModule.run``)."""
    return random.random()


def _honour_cancellation() -> None:
    """Raise ``CancelledError`` if this task was cancelled but the cancellation got lost.

    pymodbus waits with ``asyncio.wait_for``, which on 3.11 can drop a cancellation that
    lands as the answer arrives; without this the poll loop would run on after its lane
    stopped. Checked where a loop starts a new step, not after every request: a pulse
    switching its coil off after being cancelled is itself running with a cancellation
    pending, and its off write must count.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _Prefixed(logging.LoggerAdapter):
    """Puts the module, unit and address of the device in front of every line."""

    def __init__(self, logger: logging.Logger, device: str) -> None:
        super().__init__(logger, {"device": device})
        self.device = device

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs.setdefault("extra", {}).update(self.extra)
        return f"{self.device}: {msg}", kwargs
