"""The ``gather-xml`` release authority (CONTRACT 3.2): the customs front-end TCP protocol.

One TCP connection per request: connect, send one GATHER_INFO (0x21) frame, read until the
first complete frame, which must be the COMMAND_INFO (0x22) for this request, close. The
whole exchange (connect, send, answer) is bounded by ``timeout_ms``. Framing and XML live in
the sans-IO :mod:`gatectl.authorities.gather_codec`; this module only owns the socket and
the mapping between :class:`~gatectl.authorities.base.PassRequest` /
:class:`~gatectl.authorities.base.Decision` and the messages.

The request (GATHER_INFO):

- ``AREA_ID`` = the configured ``area_id`` (header and attribute);
- ``CHNL_NO`` = ``req.channel_no``; ``I_E_TYPE`` = ``I`` for ``in``, ``E`` for ``out``;
- ``SEQ_NO`` = ``req.request_id``; ``CHNL_TYPE`` = ``req.lane_kind``;
- ``DR_IC_NO`` = card, ``GROSS_WT`` = kilograms (empty if none), ``VE_NAME`` = plate (empty if none).

The answer becomes a :class:`Decision` only when everything about it fits (R3, S5):

- ``release`` when ``CHECK_RESULT`` matches one of ``release_codes`` (``re.search``), else
  ``hold``. The protocol has no separate inspect or deny: every other code holds, and
  ``OP_HINT`` tells the driver why (it is the decision's ``hint``).
- ``form_id`` = ``FORM_ID``; for a release ``instruction_id`` = ``FORM_ID + SEQ_NO`` (CONTRACT
  3.2). A release with no ``FORM_ID`` is ``malformed``: it names no release form (核放单), so
  nothing ties the lift to a customs document, and the contract's instruction id cannot be
  formed; an id of ``SEQ_NO`` alone would merely echo our own request id (R3).
  Note for S1: SEQ_NO is our fresh request id, so ``FORM_ID + SEQ_NO`` is new for every
  request; the journal's replay check therefore only catches an answer delivered twice for
  the same request, never one form released to two vehicles. Catching that would need a
  check on ``form_id`` itself, which is the core's and journal's business, not this adapter's.
- ``declared_weight_kg`` is None: the protocol carries none.

Failures, all :class:`~gatectl.authorities.base.AuthorityError` (the vehicle is held, S5):

- ``timeout``: no complete answer within ``timeout_ms`` (silent authority, slow answer, or an
  authority that ignores our frames, e.g. because it expects the other byte order);
- ``connection``: refused, reset, closed before a complete answer, or the client is closed;
- ``malformed``: any byte from the authority that is not part of a valid frame (garbage, a
  wrong byte order, a bad tail, non-GB18030, bad or unsafe XML), raised as soon as the
  decoder drops it rather than after the timeout; a first frame that is not a
  COMMAND_INFO, a release without FORM_ID; also a request that cannot be framed (a
  ``channel_no`` longer than 10 ASCII characters; the config refuses those up front);
- ``mismatch``: a COMMAND_INFO for another SEQ_NO, or for another AREA_ID, CHNL_NO or I/E.
  The first frame decides: a frame for another request is not skipped, it fails the
  request ("an answer that does not match the request holds the vehicle", CONTRACT 3).

``http_status`` never occurs here.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final, Literal

from gatectl.authorities.base import AuthorityError, Decision, PassRequest
from gatectl.authorities.gather_codec import (
    ByteOrder,
    CommandInfo,
    GatherDecoder,
    GatherFrame,
    GatherFrameError,
    GatherInfo,
    MessageType,
    check_fixed_field,
    encode,
)

__all__ = ["GatherXmlAuthority", "command_to_decision", "gather_info_for"]

_WIRE_DIRECTION: Final = {"in": "I", "out": "E"}
_READ_SIZE: Final = 64 * 1024
_CLOSE_WAIT_S: Final = 1.0


def gather_info_for(req: PassRequest, area_id: str) -> GatherInfo:
    """The GATHER_INFO message that asks about ``req`` (ValueError if it cannot be framed)."""
    return GatherInfo(
        area_id=area_id,
        chnl_no=req.channel_no,
        i_e_type=_WIRE_DIRECTION[req.direction],
        seq_no=req.request_id,
        chnl_type=req.lane_kind,
        dr_ic_no=req.card_no,
        gross_wt=req.gross_weight_kg,
        ve_name=req.plate,
    )


def command_to_decision(
    command: CommandInfo, req: PassRequest, area_id: str, release_codes: Iterable[re.Pattern[str]]
) -> Decision:
    """Turn the COMMAND_INFO answering ``req`` into its :class:`Decision` (see the module doc).

    Raises AuthorityError ``mismatch`` when the answer is for another request, channel, area
    or direction, ``malformed`` for a release without FORM_ID.
    """
    rid = req.request_id
    if command.seq_no != rid:
        raise AuthorityError("mismatch", f"COMMAND_INFO is for SEQ_NO {command.seq_no!r}", request_id=rid)
    expected = {"AREA_ID": area_id, "CHNL_NO": req.channel_no, "I_E_TYPE": _WIRE_DIRECTION[req.direction]}
    answered = {"AREA_ID": command.area_id, "CHNL_NO": command.chnl_no, "I_E_TYPE": command.i_e_type}
    for key, value in expected.items():
        if answered[key] != value:
            raise AuthorityError(
                "mismatch", f"COMMAND_INFO {key} is {answered[key]!r}, asked for {value!r}", request_id=rid
            )
    release = any(pattern.search(command.check_result) for pattern in release_codes)
    if release and not command.form_id:
        raise AuthorityError(
            "malformed", f"CHECK_RESULT {command.check_result!r} releases but names no FORM_ID", request_id=rid
        )
    return Decision(
        request_id=rid,
        decision="release" if release else "hold",
        instruction_id=f"{command.form_id}{command.seq_no}" if release else None,
        form_id=command.form_id,
        hint=command.op_hint,
        declared_weight_kg=None,
    )


def _describe_drops(decoder: GatherDecoder) -> str:
    return ", ".join(f"{reason} x{count}" for reason, count in sorted(decoder.dropped.items()))


class GatherXmlAuthority:
    """Client of one ``gather-xml`` release authority (CONTRACT 3.2).

    Implements :class:`~gatectl.authorities.base.ReleaseAuthority`. It holds no connection
    between requests, so concurrent requests from several lanes are independent. After
    :meth:`close` every request raises ``AuthorityError("connection")`` (S5).
    """

    def __init__(
        self,
        host: str,
        port: int,
        area_id: str,
        timeout_ms: int,
        release_codes: Iterable[str] = ("^00",),
        byte_order: ByteOrder = "big",
    ) -> None:
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be positive, not {timeout_ms}")
        if byte_order not in ("big", "little"):
            raise ValueError(f"byte_order must be 'big' or 'little', not {byte_order!r}")
        codes = list(release_codes)
        if not codes:
            raise ValueError("release_codes must name at least one regex")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"port must be 1-65535, not {port!r}")
        check_fixed_field("area_id", area_id)
        self.host: str = host
        self.port: int = port
        self.area_id: str = area_id
        self.timeout_ms: int = timeout_ms
        self.release_codes: list[str] = codes
        self.byte_order: ByteOrder = byte_order
        self._patterns: list[re.Pattern[str]] = []
        for i, code in enumerate(codes):
            try:
                self._patterns.append(re.compile(code))
            except re.error as exc:
                raise ValueError(f"release_codes[{i}] {code!r} is not a regex: {exc}") from None
        self._timeout_s: float = timeout_ms / 1000.0
        self._closed: bool = False
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    def from_config(cls, config: Any) -> GatherXmlAuthority:
        """Build from a ``gatectl.config.models.GatherXmlAuthority`` (or anything alike)."""
        return cls(
            host=config.host,
            port=config.port,
            area_id=config.area_id,
            timeout_ms=config.timeout_ms,
            release_codes=config.release_codes,
            byte_order=config.byte_order,
        )

    def is_release(self, check_result: str) -> bool:
        """True when ``check_result`` matches one of ``release_codes`` (re.search)."""
        return any(pattern.search(check_result) for pattern in self._patterns)

    async def request(self, req: PassRequest) -> Decision:
        """Ask the authority about ``req``; return its decision or raise AuthorityError."""
        rid = req.request_id
        if self._closed:
            raise AuthorityError("connection", "authority client is closed", request_id=rid)
        try:
            data = encode(gather_info_for(req, self.area_id).to_frame(), self.byte_order)
        except ValueError as exc:
            raise AuthorityError(
                "malformed", f"request cannot be sent as GATHER_INFO: {exc}", request_id=rid
            ) from None

        where = f"{self.host}:{self.port}"
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                self._writers.add(writer)
                if self._closed:  # closed while connecting
                    raise AuthorityError("connection", "authority client was closed", request_id=rid)
                writer.write(data)
                await writer.drain()
                frame = await self._read_answer(reader, rid, where)
        except AuthorityError:
            raise
        except TimeoutError:
            raise AuthorityError(
                "timeout", f"no answer from {where} within {self.timeout_ms} ms", request_id=rid
            ) from None
        except (OSError, EOFError) as exc:
            raise AuthorityError("connection", f"{where}: {type(exc).__name__}: {exc}", request_id=rid) from None
        finally:
            if writer is not None:
                self._writers.discard(writer)
                await self._close_writer(writer)

        if frame.msg_type is not MessageType.COMMAND_INFO:
            raise AuthorityError("malformed", f"{where} answered a {frame.msg_type.name} frame", request_id=rid)
        try:
            command = CommandInfo.from_xml(frame.xml)
        except GatherFrameError as exc:  # the decoder already checked it; kept for safety
            raise AuthorityError("malformed", f"bad COMMAND_INFO: {exc}", request_id=rid) from None
        return command_to_decision(command, req, self.area_id, self._patterns)

    async def _read_answer(self, reader: asyncio.StreamReader, rid: str, where: str) -> GatherFrame:
        """The first frame the authority sends; AuthorityError on any byte that is not one."""
        decoder = GatherDecoder(self.byte_order)
        while True:
            chunk = await reader.read(_READ_SIZE)
            if not chunk:
                if self._closed:
                    raise AuthorityError("connection", "authority client was closed", request_id=rid)
                state = f"{decoder.buffered} bytes of a frame" if decoder.buffered else "nothing"
                raise AuthorityError(
                    "connection", f"{where} closed the connection after sending {state}", request_id=rid
                )
            decoder.feed(chunk)
            frame = next(decoder.frames(), None)
            if decoder.dropped:
                raise AuthorityError(
                    "malformed", f"{where} sent bytes that are not gather-xml frames ({_describe_drops(decoder)})",
                    request_id=rid,
                )
            if frame is not None:
                return frame

    @staticmethod
    async def _close_writer(writer: asyncio.StreamWriter) -> None:
        writer.close()
        try:
            async with asyncio.timeout(_CLOSE_WAIT_S):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            writer.transport.abort()

    async def confirm(
        self,
        request_id: str,
        instruction_id: str | None,
        lane_id: str,
        result: Literal["passed", "not_passed"],
        passed_at: datetime,
        gross_weight_kg: float | None,
    ) -> bool:
        """No-op that returns True: gather-xml has no confirmation message (CONTRACT 3.2).

        The signature matches ``HttpJsonAuthority.confirm`` so the outbox can treat every
        authority alike; nothing is sent and nothing can fail, so a confirmation for a
        gather-xml lane is delivered at once and never retried.
        """
        return True

    async def close(self) -> None:
        """Refuse further requests and abort any exchange still in flight. Idempotent."""
        self._closed = True
        for writer in list(self._writers):
            writer.transport.abort()

    async def __aenter__(self) -> GatherXmlAuthority:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"GatherXmlAuthority(host={self.host!r}, port={self.port}, area_id={self.area_id!r}, "
            f"timeout_ms={self.timeout_ms}, byte_order={self.byte_order!r})"
        )
