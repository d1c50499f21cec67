"""Modbus TCP IO modules: poll discrete inputs, pulse coils (CONTRACT 2.3).

Two layers, so a Modbus RTU transport can later slot in beside the TCP one:

- ``ModbusTcpBus`` is *the bus*: one connection and the ``asyncio.Lock`` every request on
  it runs under (a TCP gateway in front of an RS-485 line is one bus), plus the
  per-request timeout. It raises typed errors and knows nothing about health.
- ``IoModule`` is *the module*: a unit on a bus, its poll loop, health, counters and
  coil pulses. It reports facts through ``on_inputs`` / ``on_health`` and decides nothing.

pymodbus 3.16 client settings, chosen from its source (``transport/transport.py``,
``transaction/transaction.py``):

- ``reconnect_delay=0`` turns off pymodbus's own reconnect task. Ours owns reconnection,
  because it must report health once per outage, jitter its delays, take a fresh
  snapshot after every reconnect and switch off coils a failed pulse may have left on.
- ``retries=0``: pymodbus would otherwise resend a request 3 times, each with the full
  timeout, before giving up, and log an ERROR for every give-up (a log flood). One
  attempt; the poll loop decides what happens next.
- Our ``asyncio.timeout(request_timeout_s)`` bounds connects and requests. pymodbus's own
  ``timeout`` (the same value is used for connect and response waits) is set to twice
  that, as a backstop that never fires first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from drivers.health import Health

__all__ = [
    "IoModule",
    "IoModuleError",
    "IoModuleExceptionResponse",
    "IoModuleTimeout",
    "ModbusTcpBus",
]

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 0.1
"""First delay before reconnecting after a fault; doubles per failed attempt."""
RECONNECT_MAX_S = 5.0
"""Cap of the reconnect delay, so a module that comes back is seen within seconds."""
MAX_INPUTS = 2000
"""Most discrete inputs one function-2 request may read (Modbus spec 6.2)."""


class IoModuleError(Exception):
    """A request to an IO module failed; ``reason`` says why, for people and logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IoModuleTimeout(IoModuleError):
    """No answer within the request timeout (the connection is dropped afterwards)."""


class IoModuleExceptionResponse(IoModuleError):
    """The module answered with a Modbus exception response (``code``, e.g. 2 = illegal address)."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.code = code


class ModbusTcpBus:
    """One Modbus TCP connection and the lock that serialises every request on it."""

    def __init__(
        self, host: str, port: int, request_timeout_s: float, name: str = "modbus"
    ) -> None:
        if request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {request_timeout_s}")
        self.host = host
        self.port = port
        self.request_timeout_s = request_timeout_s
        self.name = name
        self.lock = asyncio.Lock()
        self._client: AsyncModbusTcpClient | None = None
        self._closed_because = "not connected yet"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Open a fresh connection (closing any old one); raise ``IoModuleError`` on failure."""
        async with self.lock:
            self._close("reconnecting")
            client = AsyncModbusTcpClient(
                self.host,
                port=self.port,
                name=self.name,
                reconnect_delay=0,
                retries=0,
                timeout=2 * self.request_timeout_s,
            )
            where = f"{self.host}:{self.port}"
            try:
                async with asyncio.timeout(self.request_timeout_s):
                    ok = await client.connect()
            except TimeoutError:
                client.close()
                raise IoModuleTimeout(
                    f"no TCP connection to {where} within {self.request_timeout_s:g} s"
                ) from None
            if not ok:
                client.close()
                raise IoModuleError(f"cannot connect to {where} (refused or unreachable)")
            self._client = client

    def close(self, reason: str = "closed") -> None:
        """Drop the connection; later requests fail with ``reason`` until ``connect()``."""
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._closed_because = reason

    async def execute(
        self, call: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]], what: str
    ) -> ModbusPDU:
        """Run one request under the bus lock and the request timeout.

        ``what`` names the request (unit and address) and starts every error reason.
        A timeout or transport error drops the connection: a late answer must never be
        taken for the answer to the next request.
        """
        async with self.lock:
            client = self._client
            if client is None:
                raise IoModuleError(f"{what}: not connected ({self._closed_because})")
            if not client.connected:
                reason = f"{what}: connection lost"
                self._close(reason)
                raise IoModuleError(reason)
            try:
                async with asyncio.timeout(self.request_timeout_s):
                    response = await call(client)
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # pymodbus waits with asyncio.wait_for, which on 3.11 can drop a
                    # cancellation that lands as the answer arrives; honour it here, or
                    # the poll loop would run on after its lane stopped.
                    raise asyncio.CancelledError
            except TimeoutError:
                reason = (
                    f"{what}: no answer within {self.request_timeout_s:g} s"
                    if client.connected
                    else f"{what}: connection lost while waiting for the answer"
                )
                self._close(reason)
                raise IoModuleTimeout(reason) from None
            except ModbusException as exc:
                reason = f"{what}: {exc}"
                self._close(reason)
                raise IoModuleError(reason) from exc
            if response.isError():
                code = getattr(response, "exception_code", 0)
                raise IoModuleExceptionResponse(f"{what}: exception response, code {code}", code)
            return response


class IoModule:
    """One Modbus TCP IO module: polls discrete inputs 0..inputs-1, pulses coils.

    ``on_inputs(changed, snapshot)``: after every (re)connect the first good poll reports
    every input with ``snapshot=True``; later polls report only the addresses that
    changed, ``snapshot=False``, and nothing when nothing changed.
    ``on_health(health, reason)``: ``FAULTY`` once per outage (no answer within
    ``request_timeout_s``, an exception response, a refused or dropped connection),
    ``OK`` on the first good poll after it. Before the first good poll health is unknown
    (``health`` is ``None``). The snapshot is delivered before ``OK``, so a listener
    that sees ``OK`` already has a current picture of the inputs.
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
    ) -> None:
        if not 0 <= unit <= 255:
            raise ValueError(f"unit must be 0..255, got {unit}")
        if poll_ms <= 0:
            raise ValueError(f"poll_ms must be > 0, got {poll_ms}")
        if not 1 <= inputs <= MAX_INPUTS:
            raise ValueError(f"inputs must be 1..{MAX_INPUTS}, got {inputs}")
        self.name = name
        self.unit = unit
        self.bus = ModbusTcpBus(host, port, request_timeout_s, name=name)
        self._poll_s = poll_ms / 1000
        self._inputs = inputs
        self._on_inputs = on_inputs
        self._on_health = on_health
        self._health: Health | None = None
        self._last: list[bool] | None = None  # None: the next good poll is a snapshot
        self._failures = 0  # failed connect/poll cycles since the last good poll
        self._running = False
        # Coils a pulse may have left on: switched off first thing after every reconnect.
        self._must_switch_off: set[int] = set()
        self._counters = dict.fromkeys(self.COUNTERS, 0)
        self._log = _Prefixed(log, f"io module {name} unit {unit} at {host}:{port}")

    @property
    def health(self) -> Health | None:
        """``None`` until the first poll succeeds or fails, then the last reported health."""
        return self._health

    @property
    def counters(self) -> dict[str, int]:
        """Requests sent (``polls``, ``writes``), failures by kind, reconnect attempts."""
        return dict(self._counters)

    # ------------------------------------------------------------------ polling

    async def run(self) -> None:
        """Connect, poll every ``poll_ms``; on any fault reconnect with backoff, until cancelled.

        Device faults never end it. An exception raised by ``on_inputs`` or ``on_health``
        does: that is a bug on the caller's side, and it should surface, not be logged away.
        """
        if self._running:
            raise RuntimeError(f"io module {self.name} is already running")
        self._running = True
        try:
            first = True
            while True:
                if not first:
                    self._counters["reconnects"] += 1
                first = False
                try:
                    await self.bus.connect()
                    self._last = None
                    await self._switch_off_leftovers()
                    await self._poll_forever()
                except IoModuleError as exc:
                    self.bus.close(exc.reason)
                    self._fault(exc.reason)
                await asyncio.sleep(self._backoff_s())
        finally:
            self._running = False
            self.bus.close(f"io module {self.name} stopped")

    async def _poll_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self._good_poll(await self._read_inputs())
            # Fixed rate; after a slow request, start again from now instead of bursting.
            next_at = max(next_at + self._poll_s, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def _read_inputs(self) -> list[bool]:
        n = self._inputs
        self._counters["polls"] += 1
        response = await self._request(
            lambda c: c.read_discrete_inputs(address=0, count=n, device_id=self.unit),
            f"read discrete inputs 0-{n - 1}",
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
        if self._health is Health.FAULTY:
            # Same outage: one ERROR per outage, the rest at DEBUG (home-assistant#107230).
            self._log.debug("still faulty: %s", reason)
            return
        self._health = Health.FAULTY
        self._log.error("device fault: %s; reconnecting with backoff", reason)
        self._on_health(Health.FAULTY, reason)

    def _backoff_s(self) -> float:
        """Capped exponential backoff with jitter, so many lanes don't reconnect in step."""
        base = min(RECONNECT_MAX_S, RECONNECT_MIN_S * 2 ** max(0, self._failures - 1))
        return base * random.uniform(0.5, 1.0)

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
                f"{what}: answer echoes coil {response.address} = {response.bits[:1]}"
            )

    async def pulse(self, address: int, ms: int) -> None:
        """Switch a coil on, wait ``ms``, switch it off (CONTRACT 2.3: on, pulse_ms, off).

        A coil left on is dangerous: a barrier's open input held on keeps the boom up, and
        the next vehicle tailgates through. So the off write is retried until it succeeds
        or the module is declared faulty, runs even when the pulse is cancelled, and if it
        still fails the coil is switched off first thing after the next reconnect.
        """
        try:
            await self.write_coil(address, True)
        except IoModuleTimeout:
            # The module may have switched the coil on and then gone quiet.
            self._must_switch_off.add(address)
            raise
        try:
            await asyncio.sleep(ms / 1000)
        except asyncio.CancelledError:
            with contextlib.suppress(IoModuleError):  # already logged; stay cancelled
                await self._switch_off(address)
            raise
        await self._switch_off(address)

    async def _switch_off(self, address: int) -> None:
        self._must_switch_off.add(address)  # until the module confirms it is off
        logged = False
        while True:
            try:
                await self.write_coil(address, False)
            except IoModuleError as exc:
                if self._health is Health.FAULTY or not self._running:
                    self._log.error(
                        "coil %d may still be on (%s); will switch it off after reconnecting",
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
        for address in sorted(self._must_switch_off):
            await self.write_coil(address, False)
            self._must_switch_off.discard(address)
            self._log.info("coil %d switched off after reconnecting", address)

    # ------------------------------------------------------------------ requests

    async def _request(
        self, call: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]], what: str
    ) -> Any:
        try:
            return await self.bus.execute(call, f"unit {self.unit} {what}")
        except IoModuleTimeout:
            self._counters["timeouts"] += 1
            raise
        except IoModuleExceptionResponse:
            self._counters["exceptions"] += 1
            raise


class _Prefixed(logging.LoggerAdapter):
    """Puts the module, unit and address of the device in front of every line."""

    def __init__(self, logger: logging.Logger, device: str) -> None:
        super().__init__(logger, {"device": device})
        self.device = device

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs.setdefault("extra", {}).update(self.extra)
        return f"{self.device}: {msg}", kwargs
