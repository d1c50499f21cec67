"""The outside method's instruments: timestamps taken on the wire, not inside a framework.

The decision latency is the time from the release authority's answer leaving it to the
barrier's open coil being switched on. Both ends are timed as close to the socket as a
Python process gets, so that neither side's figure carries a simulator's own work:

- :class:`WireAuthority`, an ``http-json`` release authority written on asyncio's
  ``Protocol``: HTTP/1.0, ``Content-Length`` set, the connection closed after the
  answer. The answer's time is taken right after the whole response (head and body, one
  ``transport.write``, which hands the bytes to the kernel at once when the socket is
  idle) was written.
- :class:`WireIoModule`, a Modbus TCP IO module speaking just what a lane needs
  (function 2, read discrete inputs; function 5, write one coil; 1 and 15 for good
  measure), timing each request when its PDU arrives: the kernel's receive time of the
  segment (``SO_TIMESTAMPNS``, read with ``recvmsg``), so neither this process's loop
  nor its share of the CPU delays the stamp. Barriers
  (:class:`simulators.io_module.Barrier`) move on its coils, so vehicles can pass.
- :class:`WireSite`, a :class:`simulators.site.SimulatedSite` whose IO module and
  authority are these two; the card readers (stx-hex-xor) and weighing indicators
  (xk3190, streaming continuously) stay on their ptys.

Why not the simulators of the tests: the pymodbus server notes a coil write in its
``action`` hook, after it has framed, decoded and dispatched the request through a few
coroutines; the aiohttp authority notes its answer after its handler returned through
aiohttp's response machinery. Both add the same fraction of a millisecond to every
sample of either side, so the ratio of two small figures comes out smaller than the
ratio of what the two sides really did (``docs/performance.md``, bench 1).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

from simulators.authority_http import DEFAULT_HINTS, UNSCRIPTED_HINT
from simulators.io_module import SimulatedUnit
from simulators.site import COILS_PER_LANE, INPUTS_PER_LANE, SimLane, SimulatedSite

MBAP = struct.Struct(">HHHB")  # transaction, protocol, length, unit
_MAX_BODY = 64 * 1024


# ------------------------------------------------------------------ the IO module


class WireIoModule(SimulatedUnit):
    """A Modbus TCP IO module on plain non-blocking sockets in the asyncio loop (see the
    module docstring).

    ``coil_writes`` holds ``(time.monotonic(), address, value)`` per coil write, the time
    its frame arrived (the kernel's receive time, on Linux); ``requests`` counts requests
    by function code; ``line`` holds ``(arrived, function code)`` of every request, in
    the order served, and ``replied`` the time each one's answer was handed to the kernel
    (same order): how long this process kept the line waiting.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, unit: int = 1, inputs: int = 16,
                 coils: int = 16) -> None:
        super().__init__(unit, inputs, coils)
        self.host = host
        self.port = port
        self.requests: dict[int, int] = {}
        self.line: list[tuple[float, int]] = []
        self.replied: list[float] = []
        self._listener: socket.socket | None = None
        self._connections: set[_ModbusConnection] = set()
        #: Reads timed by the kernel (``SO_TIMESTAMPNS``); 0 if the platform has none.
        self.frames_timed = 0

    async def start(self) -> None:
        self._listener = socket.create_server((self.host, self.port))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        _ModbusConnection(self, sock)

    async def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            asyncio.get_running_loop().remove_reader(listener.fileno())
            listener.close()
        for conn in list(self._connections):
            conn.close()

    def serve(self, frame: bytes, arrived: float) -> bytes:
        """The answer to one request frame (MBAP header included)."""
        tid, _proto, _length, unit = MBAP.unpack_from(frame)
        pdu = frame[7:]
        fc = pdu[0]
        self.requests[fc] = self.requests.get(fc, 0) + 1
        self.line.append((arrived, fc))
        if unit != self.unit:
            return b""  # nobody at that unit id: no answer, as on the line
        try:
            if fc in (1, 2):
                address, count = struct.unpack_from(">HH", pdu, 1)
                bits = (self._coils if fc == 1 else self._inputs)[address:address + count]
                if len(bits) != count or not 1 <= count <= 2000:
                    raise IndexError
                packed = bytearray((count + 7) // 8)
                for i, bit in enumerate(bits):
                    if bit:
                        packed[i // 8] |= 1 << (i % 8)
                answer = bytes((fc, len(packed))) + bytes(packed)
            elif fc == 5:
                address, value = struct.unpack_from(">HH", pdu, 1)
                if value not in (0x0000, 0xFF00):
                    raise ValueError
                self._coils[address]  # noqa: B018 - IndexError outside the coils
                self._wrote(arrived, address, value == 0xFF00)
                answer = pdu[:5]
            elif fc == 15:
                address, count, nbytes = struct.unpack_from(">HHB", pdu, 1)
                data = pdu[6:6 + nbytes]
                if address + count > len(self._coils):
                    raise IndexError
                for i in range(count):
                    self._wrote(arrived, address + i, bool(data[i // 8] >> (i % 8) & 1))
                answer = pdu[:5]
            else:
                answer = bytes((fc | 0x80, 1))
        except (IndexError, ValueError, struct.error):
            answer = bytes((fc | 0x80, 2))
        return MBAP.pack(tid, 0, len(answer) + 1, unit) + answer

    def _wrote(self, arrived: float, address: int, value: bool) -> None:
        self._coils[address] = value
        self.coil_writes.append((arrived, address, value))
        for hook in list(self.on_coil_write):
            hook(address, value)


#: ``SO_TIMESTAMPNS`` (Linux; the socket module does not name it): every read of the
#: socket carries the kernel's receive time of its data.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")


def kernel_arrival(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    """The kernel's receive time of a read (``SO_TIMESTAMPNS``) on ``time.monotonic()``'s
    clock, or None if the read carried none. The kernel stamps on the realtime clock; the
    two clocks' offset is taken now, a few microseconds after the read."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return sec + nsec / 1e9 - (time.time() - time.monotonic())
    return None


class _ModbusConnection:
    """One client of the module, read with ``recvmsg`` so that each request is timed by
    the kernel when it arrived, not when this process's loop got round to it: with many
    lanes the bench's own loop (32 lanes' card readers, indicators and vehicles) is busy,
    and a stamp taken in ``data_received`` would charge its delays to whoever wrote the
    coil."""

    def __init__(self, module: WireIoModule, sock: socket.socket) -> None:
        self.module = module
        self.sock = sock
        self.buf = b""
        self.out = b""
        self.loop = asyncio.get_running_loop()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.kernel_stamps = True
        except OSError:  # pragma: no cover - not Linux: the loop's time, as before
            self.kernel_stamps = False
        module._connections.add(self)
        self.loop.add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            if self.out:
                self.loop.remove_writer(self.sock.fileno())
            self.sock.close()
        self.module._connections.discard(self)

    def _readable(self) -> None:
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(_TIMESPEC.size))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        arrived = kernel_arrival(ancillary) if self.kernel_stamps else None
        if arrived is None:
            arrived = time.monotonic()
        else:
            self.module.frames_timed += 1
        self.buf += data
        out = []
        while len(self.buf) >= 7:
            length = struct.unpack_from(">H", self.buf, 4)[0]
            end = 6 + length
            if length < 2 or length > 260:
                self.close()
                return
            if len(self.buf) < end:
                break
            frame, self.buf = self.buf[:end], self.buf[end:]
            out.append(self.module.serve(frame, arrived))
        if out:
            self._send(b"".join(out))
            now = time.monotonic()
            self.module.replied.extend(now for _ in out)

    def _send(self, data: bytes) -> None:
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self.out = data[sent:]
            self.loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        self.out = self.out[sent:]
        if not self.out:
            self.loop.remove_writer(self.sock.fileno())


# ------------------------------------------------------------------ the authority


class WireAuthority:
    """An ``http-json`` release authority on a plain asyncio server: HTTP/1.0, one
    request per connection, ``Content-Length`` set, closed after the answer.

    Scripted by card like :class:`simulators.authority_http.HttpAuthoritySimulator`
    (``script``; unscripted cards are held). ``sent`` holds ``(time.monotonic(),
    lane_id, request_id, decision)`` per pass request answered, taken right before the
    answer was handed to the socket; ``requests`` every pass-request body; ``confirmations`` every
    pass confirmation (answered 200).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.sent: list[tuple[float, str, str, str]] = []
        self.requests: list[dict[str, Any]] = []
        self.confirmations: list[dict[str, Any]] = []
        self._scripts: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def script(self, card: str, decision: str, *, hint: str | None = None, form_id: str | None = None,
               declared_weight_kg: float | None = None, **_: Any) -> None:
        self._scripts[card.upper()] = {"decision": decision, "hint": hint or DEFAULT_HINTS[decision],
                                       "form_id": form_id, "declared_weight_kg": declared_weight_kg}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _HttpConnection(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], str | None]:
        """(status, answer body, decision if it was a pass request)."""
        if path == "/gate/v1/pass-confirmations":
            self.confirmations.append(body)
            return 200, {"ok": True}, None
        if path != "/gate/v1/pass-requests":
            return 404, {"error": "not found"}, None
        self.requests.append(body)
        s = self._scripts.get(str(body.get("card_no", "")).upper())
        if s is None:
            s = {"decision": "hold", "hint": UNSCRIPTED_HINT, "form_id": None, "declared_weight_kg": None}
        answer = {"request_id": body.get("request_id"), "decision": s["decision"],
                  "instruction_id": f"CMD-{next(self._ids):06d}" if s["decision"] == "release" else None,
                  "form_id": s["form_id"], "hint": s["hint"], "declared_weight_kg": s["declared_weight_kg"]}
        return 200, answer, s["decision"]


class _HttpConnection(asyncio.Protocol):
    def __init__(self, authority: WireAuthority) -> None:
        self.authority = authority
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self.buf) > _MAX_BODY:
                self._reply(400, {"error": "head too long"})
            return
        head = self.buf[:head_end].decode("latin-1").split("\r\n")
        method, path, _version = (head[0].split(" ") + ["", "", ""])[:3]
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if len(self.buf) < head_end + 4 + length:
            return
        raw = self.buf[head_end + 4:head_end + 4 + length]
        try:
            body = json.loads(raw)
        except ValueError:
            self._reply(400, {"error": "not JSON"})
            return
        if method != "POST":
            self._reply(405, {"error": "POST only"})
            return
        status, answer, decision = self.authority.answer(path, body)
        sent = self._reply(status, answer)
        if decision is not None:
            self.authority.sent.append((sent, str(body.get("lane_id", "")), str(body.get("request_id", "")),
                                        decision))

    def _reply(self, status: int, answer: dict[str, Any]) -> float:
        """Answer and close; the time the answer was handed to the socket, taken just
        before: taken after, this process may have lost its processor to the lane in
        between, whose coil write the kernel would then stamp before it."""
        payload = json.dumps(answer, ensure_ascii=False).encode("utf-8")
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[status]
        head = (f"HTTP/1.0 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode("ascii")
        assert self.transport is not None
        data = head + payload
        sent = time.monotonic()
        self.transport.write(data)
        self.transport.close()  # after the buffered bytes are out
        return sent


# ------------------------------------------------------------------ the site


class WireSite(SimulatedSite):
    """``SimulatedSite`` with :class:`WireIoModule` and :class:`WireAuthority` in place of
    the pymodbus and aiohttp simulators; card readers, indicators and vehicles as ever.

    ``module_per_lane``: every lane on an IO module of its own (``io1``, ``io2``, ...,
    each its own TCP server, so its own connection and bus in the daemon), as many sites
    are wired, instead of every lane on the one ``io1``.
    """

    def __init__(self, workdir: Path, lanes, *, module_per_lane: bool = False,  # type: ignore[no-untyped-def]
                 **kw: Any) -> None:
        self.modules: dict[str, WireIoModule] | None = None
        super().__init__(workdir, lanes, **kw)
        if module_per_lane:
            self.modules = {f"io{i + 1}": WireIoModule("127.0.0.1", 0, unit=1, inputs=INPUTS_PER_LANE,
                                                       coils=COILS_PER_LANE) for i in range(len(self.specs))}
        else:
            self.modules = {"io1": WireIoModule("127.0.0.1", 0, unit=1, inputs=INPUTS_PER_LANE * len(self.specs),
                                                coils=COILS_PER_LANE * len(self.specs))}
        self.io = next(iter(self.modules.values()))  # type: ignore[assignment]
        self.authority = WireAuthority("127.0.0.1", 0)  # type: ignore[assignment]
        # The lanes again, wired to these IO modules (their readers and indicators are new,
        # on the same links; the first ones were never started).
        self.lanes = [SimLane(self, i, spec) for i, spec in enumerate(self.specs)]

    def lane_wiring(self, index: int) -> tuple[SimulatedUnit, str, int, int]:
        if self.modules is None or len(self.modules) == 1:  # (the first lanes, never used; or io1)
            return super().lane_wiring(index)
        name = f"io{index + 1}"
        return self.modules[name], name, 0, 0

    def io_modules(self) -> dict[str, SimulatedUnit]:
        return dict(self.modules or {})

    def coil_writes(self, lane: SimLane) -> list[tuple[float, int, bool]]:
        """The coil writes of ``lane``'s IO module (every lane's, on a shared one)."""
        return lane.io.coil_writes


__all__ = ["WireAuthority", "WireIoModule", "WireSite"]
