"""The ``http-json`` release authority (CONTRACT section 3.1).

``POST {url}gate/v1/pass-requests`` carries one :class:`~gatectl.authorities.base.PassRequest`;
the ``200`` answer becomes a :class:`~gatectl.authorities.base.Decision`. Everything that is
not a well-formed answer to *this* request within ``timeout_ms`` (no answer, a refused or
reset connection, another status, non-JSON, a wrong shape, another request's id, a release
naming no instruction) raises :class:`~gatectl.authorities.base.AuthorityError`, which holds
the vehicle (S5). Only a release instruction from the authority may lift (R3), so this
adapter never invents or repairs a decision.

``confirm`` posts ``gate/v1/pass-confirmations`` once; the journal's outbox retries it.
"""

from __future__ import annotations

import asyncio
import json
import math
from datetime import datetime
from typing import Any, Final, Literal

import aiohttp

from gatectl.authorities.base import (
    DECISIONS,
    AuthorityError,
    Decision,
    PassRequest,
)

__all__ = ["HttpJsonAuthority", "pass_request_body", "confirmation_body"]

PASS_REQUESTS_PATH: Final = "gate/v1/pass-requests"
PASS_CONFIRMATIONS_PATH: Final = "gate/v1/pass-confirmations"
#: Answers larger than this are not decisions; refuse them rather than buffer them.
MAX_ANSWER_BYTES: Final = 64 * 1024

_WIRE_DIRECTION: Final = {"in": "I", "out": "E"}
_CONFIRM_RESULTS: Final = frozenset({"passed", "not_passed"})


def pass_request_body(req: PassRequest) -> dict[str, Any]:
    """The exact JSON object of CONTRACT 3.1 for ``req`` (direction ``I``/``E``)."""
    return {
        "request_id": req.request_id,
        "site_id": req.site_id,
        "lane_id": req.lane_id,
        "channel_no": req.channel_no,
        "direction": _WIRE_DIRECTION[req.direction],
        "lane_kind": req.lane_kind,
        "card_no": req.card_no,
        "plate": req.plate,
        "gross_weight_kg": None if req.gross_weight_kg is None else float(req.gross_weight_kg),
        "captured_at": req.captured_at.isoformat(),
    }


def confirmation_body(
    request_id: str,
    instruction_id: str | None,
    lane_id: str,
    result: Literal["passed", "not_passed"],
    passed_at: datetime,
    gross_weight_kg: float | None,
) -> dict[str, Any]:
    """The exact JSON object of a CONTRACT 3.1 pass confirmation."""
    if result not in _CONFIRM_RESULTS:
        raise ValueError(f"confirmation result must be 'passed' or 'not_passed', not {result!r}")
    if passed_at.tzinfo is None or passed_at.utcoffset() is None:
        raise ValueError("passed_at must be timezone-aware (ISO 8601 with offset)")
    return {
        "request_id": request_id,
        "instruction_id": instruction_id,
        "lane_id": lane_id,
        "result": result,
        "passed_at": passed_at.isoformat(),
        "gross_weight_kg": None if gross_weight_kg is None else float(gross_weight_kg),
    }


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} in answer")


def _optional_str(answer: dict[str, Any], key: str) -> str | None:
    value = answer.get(key)
    if value is None or isinstance(value, str):
        return value
    raise AuthorityError("malformed", f"{key} must be a string or null, got {type(value).__name__}")


def parse_decision(raw: bytes, request_id: str) -> Decision:
    """Turn the body of a ``200`` answer into a :class:`Decision` for ``request_id``.

    Required: a JSON object with ``request_id`` (equal to the one sent, else ``mismatch``)
    and ``decision`` (one of the four). ``instruction_id``, ``form_id``, ``hint`` (strings)
    and ``declared_weight_kg`` (a number) may be null or absent, except that a ``release``
    must name its ``instruction_id`` (R3). Unknown keys are ignored. Anything else raises
    ``AuthorityError("malformed")``.
    """
    try:
        answer = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AuthorityError("malformed", f"answer is not JSON: {exc}", request_id=request_id) from None
    if not isinstance(answer, dict):
        raise AuthorityError("malformed", f"answer is a JSON {type(answer).__name__}, not an object", request_id=request_id)

    answered_id = answer.get("request_id")
    if not isinstance(answered_id, str) or not answered_id:
        raise AuthorityError("malformed", "answer has no request_id", request_id=request_id)
    if answered_id != request_id:
        raise AuthorityError("mismatch", f"answer is for request {answered_id!r}", request_id=request_id)

    decision = answer.get("decision")
    if not isinstance(decision, str) or decision not in DECISIONS:
        raise AuthorityError(
            "malformed", f"decision {decision!r} is not one of {sorted(DECISIONS)}", request_id=request_id
        )
    try:
        instruction_id = _optional_str(answer, "instruction_id")
        form_id = _optional_str(answer, "form_id")
        hint = _optional_str(answer, "hint")
    except AuthorityError as exc:
        exc.request_id = request_id
        raise
    weight = answer.get("declared_weight_kg")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))):
        raise AuthorityError("malformed", "declared_weight_kg must be a number or null", request_id=request_id)
    if weight is not None and not math.isfinite(weight):
        raise AuthorityError("malformed", "declared_weight_kg is not finite", request_id=request_id)
    if decision == "release" and not instruction_id:
        raise AuthorityError("malformed", "release names no instruction_id", request_id=request_id)

    return Decision(
        request_id=request_id,
        decision=decision,
        instruction_id=instruction_id,
        form_id=form_id,
        hint=hint,
        declared_weight_kg=None if weight is None else float(weight),
    )


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > limit:
            raise AuthorityError("malformed", f"answer is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class HttpJsonAuthority:
    """Client of one ``http-json`` release authority (CONTRACT 3.1).

    ``url`` is the authority's base URL (a missing trailing ``/`` is added). Each call is
    bounded as a whole (connect, send, status, body) by ``timeout_ms``. ``session`` may be
    shared and then stays open on :meth:`close`; without one the authority creates its own on
    first use and closes it in :meth:`close`. After :meth:`close` every call raises
    ``AuthorityError("connection")``, so a late request still holds the vehicle (S5).
    """

    def __init__(self, url: str, timeout_ms: int, session: aiohttp.ClientSession | None = None) -> None:
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be positive, not {timeout_ms}")
        self.url: str = url if url.endswith("/") else url + "/"
        self.timeout_ms: int = timeout_ms
        self._timeout_s: float = timeout_ms / 1000.0
        self._session: aiohttp.ClientSession | None = session
        self._owns_session: bool = session is None
        self._closed: bool = False

    @property
    def pass_requests_url(self) -> str:
        return self.url + PASS_REQUESTS_PATH

    @property
    def pass_confirmations_url(self) -> str:
        return self.url + PASS_CONFIRMATIONS_PATH

    def _get_session(self, request_id: str) -> aiohttp.ClientSession:
        if self._closed:
            raise AuthorityError("connection", "authority client is closed", request_id=request_id)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        elif self._session.closed:
            raise AuthorityError("connection", "the shared HTTP session is closed", request_id=request_id)
        return self._session

    async def _post(self, url: str, body: dict[str, Any], request_id: str) -> tuple[int, bytes]:
        """POST ``body``; return (status, body bytes). Every failure is an AuthorityError."""
        session = self._get_session(request_id)
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", "Accept": "application/json"}
        try:
            async with asyncio.timeout(self._timeout_s):
                async with session.post(url, data=data, headers=headers, allow_redirects=False) as resp:
                    return resp.status, await _read_capped(resp, MAX_ANSWER_BYTES)
        except AuthorityError as exc:
            exc.request_id = request_id
            raise
        except TimeoutError:  # asyncio.timeout, and aiohttp's own timeout errors subclass it
            raise AuthorityError(
                "timeout", f"no answer from {url} within {self.timeout_ms} ms", request_id=request_id
            ) from None
        except aiohttp.ClientPayloadError as exc:
            raise AuthorityError("connection", f"answer from {url} cut short: {exc}", request_id=request_id) from None
        except aiohttp.ClientResponseError as exc:  # an answer that is not valid HTTP
            raise AuthorityError("malformed", f"{url}: bad HTTP answer: {exc}", request_id=request_id) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise AuthorityError(
                "connection", f"{url}: {type(exc).__name__}: {exc}", request_id=request_id
            ) from None

    async def request(self, req: PassRequest) -> Decision:
        """Ask the authority about ``req``; return its decision or raise AuthorityError."""
        status, raw = await self._post(self.pass_requests_url, pass_request_body(req), req.request_id)
        if status != 200:
            raise AuthorityError(
                "http_status", f"pass request answered HTTP {status}: {_snippet(raw)}", request_id=req.request_id
            )
        return parse_decision(raw, req.request_id)

    async def confirm(
        self,
        request_id: str,
        instruction_id: str | None,
        lane_id: str,
        result: Literal["passed", "not_passed"],
        passed_at: datetime,
        gross_weight_kg: float | None,
    ) -> bool:
        """Tell the authority how the passage ended; True on any 2xx, else AuthorityError."""
        body = confirmation_body(request_id, instruction_id, lane_id, result, passed_at, gross_weight_kg)
        status, raw = await self._post(self.pass_confirmations_url, body, request_id)
        if not 200 <= status < 300:
            raise AuthorityError(
                "http_status", f"confirmation answered HTTP {status}: {_snippet(raw)}", request_id=request_id
            )
        return True

    async def close(self) -> None:
        """Close the session if this authority created it. Idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session and not session.closed:
            await session.close()

    async def __aenter__(self) -> HttpJsonAuthority:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"HttpJsonAuthority(url={self.url!r}, timeout_ms={self.timeout_ms})"


def _snippet(raw: bytes, limit: int = 200) -> str:
    text = raw[:limit].decode("utf-8", errors="replace")
    return text + ("…" if len(raw) > limit else "")
