"""A ``gather-xml`` release authority (CONTRACT 3.2) on a real TCP socket, scripted by card.

Runs in the caller's event loop, like :mod:`simulators.authority_http`::

    sim = GatherAuthoritySimulator(area_id="5301000001")
    await sim.start()                       # sim.port is the real port
    sim.script("0100E2850E", "release", form_id="HF530120261127000123")
    sim.script("3A00F1229B", "inspect")     # CHECK_RESULT 02..., OP_HINT 请到待检区开箱查验
    sim.silent = True                       # S5: accept, never answer (until stop())
    await sim.stop()

Each connection carries one GATHER_INFO; the simulator answers it with one COMMAND_INFO
(same SEQ_NO, CHNL_NO and I/E, its own AREA_ID) and closes the connection. Decisions are
per card (``DR_IC_NO``) and stay until scripted again; unscripted cards get
:attr:`~GatherAuthoritySimulator.default` (``hold``, "未查到核放单，请到待检区"). The protocol
only knows CHECK_RESULT codes, so each decision maps to a code (:data:`CHECK_RESULTS`):
``release`` → ``00000000001002000000`` (matches the default release code ``^00``),
``hold`` / ``inspect`` / ``deny`` → codes starting ``01`` / ``02`` / ``03``. Each release
without a scripted ``form_id`` gets a fresh FORM_ID (``HF<area 4><form_date><nnnnnn>``).

Like real front-ends it copies a device's silence (STYLE 6): bytes it cannot decode (for
instance frames in the other byte order) and GATHER_INFOs for another AREA_ID get no
answer; they are counted in :attr:`dropped` / recorded in :attr:`requests` respectively.

Fault switches (checked in this order, after the request is recorded):

- ``silent``: never answer; the connection waits until :meth:`stop`, then is dropped.
- ``drop``: close the connection without answering.
- ``garbage``: answer random bytes (no frame head in them), then close.
- ``mismatch_seq``: answer with another SEQ_NO.
- ``wrong_byte_order``: answer in the byte order opposite to :attr:`byte_order`.
- ``answer_override``: COMMAND_INFO fields replaced in every answer (e.g.
  ``{"form_id": None}``, ``{"chnl_no": "K999"}``, ``{"area_id": "5301999999"}``).
- ``raw_answer``: ``raw_answer(request)`` returns the bytes to send instead of the answer
  (the request's GATHER_INFO is given, so a hostile frame can still carry its SEQ_NO).

There is no ``reuse_instruction`` switch: the instruction id is ``FORM_ID + SEQ_NO`` and
SEQ_NO is the daemon's fresh request id, so an authority cannot repeat an earlier
instruction id in a well-formed answer to a new request (an answer carrying the old SEQ_NO
is a ``mismatch``). Scripting the same ``form_id`` twice gives two different instruction
ids, which is what the tests check instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
import itertools
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

from gatectl.authorities.gather_codec import (
    HEAD,
    ByteOrder,
    CommandInfo,
    GatherDecoder,
    GatherFrameError,
    GatherInfo,
    MessageType,
    encode,
)

__all__ = [
    "CHECK_RESULTS",
    "DEFAULT_HINTS",
    "UNSCRIPTED_HINT",
    "GatherAuthoritySimulator",
    "GatherScript",
]

CHECK_RESULTS: Final[dict[str, str]] = {
    "release": "00000000001002000000",
    "hold": "01000000001002000000",
    "inspect": "02000000001002000000",
    "deny": "03000000001002000000",
}
DEFAULT_HINTS: Final[dict[str, str]] = {
    "release": "检查放行",
    "hold": "请将车辆驶入待检区并打开箱门",
    "inspect": "请到待检区开箱查验",
    "deny": "不予放行，请倒车驶离",
}
UNSCRIPTED_HINT: Final = "未查到核放单，请到待检区"

_OTHER_ORDER: Final[dict[str, ByteOrder]] = {"big": "little", "little": "big"}


@dataclass(frozen=True, slots=True)
class GatherScript:
    """The scripted answer for one card."""

    decision: str
    check_result: str
    hint: str | None
    form_id: str | None
    delay_s: float


class GatherAuthoritySimulator:
    """A scriptable ``gather-xml`` release authority on ``host:port`` (port 0: any free port).

    After :meth:`start`, :attr:`port` is the real port. :meth:`stop` closes the listening
    socket and every open connection (clients then get connection refused); :meth:`start`
    again listens on the same port.

    Recorded, in arrival order: :attr:`requests` (every GATHER_INFO received, as
    :meth:`GatherInfo.as_dict`), :attr:`answers` (every COMMAND_INFO sent, as
    :meth:`CommandInfo.as_dict`), :attr:`dropped` (what the simulator's decoders threw away,
    by reason, over all connections), :attr:`ignored` (valid frames that were not GATHER_INFO).
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, area_id: str = "5301000001", byte_order: ByteOrder = "big"
    ) -> None:
        self.host = host
        self._port = port
        self.area_id = area_id
        self.byte_order: ByteOrder = byte_order
        GatherDecoder(byte_order)  # validates byte_order
        self.default: str = "hold"
        self.default_hint: str | None = None  # None: UNSCRIPTED_HINT for hold, else DEFAULT_HINTS
        self.form_date: str = "20261127"
        self.silent = False
        self.drop = False
        self.garbage = False
        self.mismatch_seq = False
        self.wrong_byte_order = False
        self.answer_override: dict[str, Any] = {}
        self.raw_answer: Callable[[GatherInfo], bytes] | None = None

        self.requests: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []
        self.ignored: list[Any] = []
        self.dropped: Counter[str] = Counter()
        self.issued_form_ids: list[str] = []
        self.connections = 0

        self._scripts: dict[str, GatherScript] = {}
        self._form_seq = itertools.count(1)
        self._rng = random.Random(0x5301)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping = asyncio.Event()
        self._arrivals = asyncio.Condition()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("simulator not started: no port yet")
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, self.host, self._port, reuse_address=True)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every open connection unanswered."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        handlers = list(self._handlers)
        if handlers:
            await asyncio.wait(handlers, timeout=2.0)
        await server.wait_closed()

    async def __aenter__(self) -> GatherAuthoritySimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- scripting ---------------------------------------------------------------------

    def script(
        self,
        card: str,
        decision: str = "release",
        check_result: str | None = None,
        hint: str | None = None,
        form_id: str | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """Answer every GATHER_INFO for ``card`` with ``decision`` from now on.

        ``check_result`` defaults to the decision's code in :data:`CHECK_RESULTS` (give one to
        test ``release_codes``), ``hint`` to its Chinese text in :data:`DEFAULT_HINTS`; a
        release without ``form_id`` gets a fresh one per answer; ``delay_s`` delays the answer.
        """
        if decision not in CHECK_RESULTS:
            raise ValueError(f"decision must be one of {sorted(CHECK_RESULTS)}, not {decision!r}")
        self._scripts[card.upper()] = GatherScript(
            decision=decision,
            check_result=CHECK_RESULTS[decision] if check_result is None else check_result,
            hint=DEFAULT_HINTS[decision] if hint is None else hint,
            form_id=form_id,
            delay_s=delay_s,
        )

    def unscript(self, card: str) -> None:
        self._scripts.pop(card.upper(), None)

    def reset_faults(self) -> None:
        """Clear every fault switch (not the scripts or the records)."""
        self.silent = self.drop = self.garbage = self.mismatch_seq = self.wrong_byte_order = False
        self.answer_override = {}
        self.raw_answer = None

    def next_form_id(self) -> str:
        form_id = f"HF{self.area_id[:4]}{self.form_date}{next(self._form_seq):06d}"
        self.issued_form_ids.append(form_id)
        return form_id

    async def wait_for_requests(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until at least ``count`` GATHER_INFOs have arrived in total."""
        async with asyncio.timeout(timeout):
            async with self._arrivals:
                await self._arrivals.wait_for(lambda: len(self.requests) >= count)

    # -- connections -------------------------------------------------------------------

    def _script_for(self, card: str) -> GatherScript:
        script = self._scripts.get(card.upper())
        if script is not None:
            return script
        hint = self.default_hint
        if hint is None:
            hint = UNSCRIPTED_HINT if self.default == "hold" else DEFAULT_HINTS.get(self.default)
        return GatherScript(self.default, CHECK_RESULTS[self.default], hint, None, 0.0)

    def _answer_for(self, info: GatherInfo, script: GatherScript) -> CommandInfo:
        form_id = script.form_id
        if script.decision == "release" and form_id is None:
            form_id = self.next_form_id()
        answer = CommandInfo(
            area_id=self.area_id,
            chnl_no=info.chnl_no,
            i_e_type=info.i_e_type,
            seq_no=f"{info.seq_no}-other" if self.mismatch_seq else info.seq_no,
            check_result=script.check_result,
            op_hint=script.hint,
            form_id=form_id,
        )
        if self.answer_override:
            answer = dataclasses.replace(answer, **self.answer_override)
        return answer

    def _garbage(self) -> bytes:
        """64 random bytes that cannot hold a frame head (no 0xE2)."""
        return bytes(b for b in (self._rng.randrange(256) for _ in range(64)) if b != HEAD[0]) or b"\x00"

    async def _record(self, info: GatherInfo) -> None:
        async with self._arrivals:
            self.requests.append(info.as_dict())
            self._arrivals.notify_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.connections += 1
        decoder = GatherDecoder(self.byte_order)
        try:
            while not self._stopping.is_set():
                data = await reader.read(64 * 1024)
                if not data:
                    return
                before = Counter(decoder.dropped)
                decoder.feed(data)
                frames = list(decoder.frames())
                self.dropped.update(decoder.dropped - before)
                for frame in frames:
                    if frame.msg_type is not MessageType.GATHER_INFO:
                        self.ignored.append(frame)
                        continue
                    if await self._answer(GatherInfo.from_xml(frame.xml), writer):
                        return
        except (OSError, GatherFrameError):
            return
        finally:
            self._writers.discard(writer)
            self._handlers.discard(task)
            if self._stopping.is_set():
                writer.transport.abort()
            else:
                writer.close()

    async def _answer(self, info: GatherInfo, writer: asyncio.StreamWriter) -> bool:
        """Act on one GATHER_INFO; True when the connection is done."""
        await self._record(info)
        if info.area_id != self.area_id:
            return False  # another area's request: silence, as on a real front-end
        if self.silent:
            await self._stopping.wait()
            return True
        if self.drop:
            writer.transport.abort()
            return True
        if self.garbage:
            writer.write(self._garbage())
            await writer.drain()
            return True
        if self.raw_answer is not None:
            writer.write(self.raw_answer(info))
            await writer.drain()
            return True
        script = self._script_for(info.dr_ic_no)
        if script.delay_s > 0:
            try:
                async with asyncio.timeout(script.delay_s):
                    await self._stopping.wait()
            except TimeoutError:
                pass  # the delay is over: answer
            else:
                return True  # stopped while delaying: no answer
        answer = self._answer_for(info, script)
        order = _OTHER_ORDER[self.byte_order] if self.wrong_byte_order else self.byte_order
        self.answers.append(answer.as_dict())
        writer.write(encode(answer.to_frame(), order))
        await writer.drain()
        return True
