"""An ``http-json`` release authority (CONTRACT 3.1) on a real socket, scripted by card.

Runs in the caller's event loop, so tests and ``gatectl demo`` drive it directly::

    sim = HttpAuthoritySimulator()
    await sim.start()                       # sim.url == "http://127.0.0.1:<port>/"
    sim.script("0100E2850E", "release", form_id="HF530120261127000123")
    sim.script("3A00F1229B", "inspect")
    sim.silent = True                       # S5: accept, never answer (until stop())
    await sim.stop()

Decisions are per card and stay until scripted again; unscripted cards get
:attr:`~HttpAuthoritySimulator.default` (``hold``, "未查到核放单，请到待检区"). Each release
without a scripted ``instruction_id`` gets a fresh one (``CMD-000001``, ...).

Fault switches (checked in this order, each request is recorded first):

- ``silent``: never answer; the request waits until :meth:`stop`, then the connection is
  dropped without an answer.
- ``drop``: close the connection without answering (the client sees a reset).
- ``status_code``: answer that HTTP status (e.g. 500) with a JSON error body.
- ``garbage``: answer ``200`` with a body that is not JSON.
- ``mismatch_id``: answer with another ``request_id``.
- ``reuse_instruction_id``: answer a release with the instruction id given last (a replay).
- ``omit_instruction_id``: answer a release with ``instruction_id: null``.
- ``answer_patch``: keys merged into every answer; a value of :data:`MISSING` removes the key.
- ``raw_answer``: answer ``200`` (``application/json``) with exactly these bytes, or with
  what ``raw_answer(request_body)`` returns: for answers no JSON encoder would write (nested
  6 000 deep, duplicate keys, a 5 000-digit number, a huge body).

Pass requests are checked against the contract's shape (exact keys, ``I``/``E``, an
ISO 8601 ``captured_at`` with offset); a request that fails is answered ``400``.
Confirmations are answered ``200``, or ``503`` while ``fail_confirmations`` is set.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from aiohttp import web

__all__ = ["DEFAULT_HINTS", "MISSING", "UNSCRIPTED_HINT", "HttpAuthoritySimulator", "Script"]

DEFAULT_HINTS: Final[dict[str, str]] = {
    "release": "核放单已核放，请通行",
    "hold": "请将车辆驶入待检区并打开箱门",
    "inspect": "请到待检区开箱查验",
    "deny": "不予放行，请倒车驶离",
}
UNSCRIPTED_HINT: Final = "未查到核放单，请到待检区"

PASS_REQUEST_KEYS: Final = frozenset(
    {
        "request_id", "site_id", "lane_id", "channel_no", "direction", "lane_kind",
        "card_no", "plate", "gross_weight_kg", "captured_at",
    }
)
CONFIRMATION_KEYS: Final = frozenset(
    {"request_id", "instruction_id", "lane_id", "result", "passed_at", "gross_weight_kg"}
)


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: Use as a value in ``answer_patch`` to leave that key out of the answer.
MISSING: Final = _Missing()


@dataclass(frozen=True, slots=True)
class Script:
    """The scripted answer for one card."""

    decision: str
    hint: str | None
    delay_s: float
    instruction_id: str | None
    form_id: str | None
    declared_weight_kg: float | None


def _check_pass_request(body: Any) -> str | None:
    """Why ``body`` is not a contract pass request, or None if it is."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    keys = set(body)
    if keys != PASS_REQUEST_KEYS:
        missing, extra = sorted(PASS_REQUEST_KEYS - keys), sorted(keys - PASS_REQUEST_KEYS)
        return f"wrong keys: missing {missing}, unexpected {extra}"
    for key in ("request_id", "site_id", "lane_id", "channel_no", "lane_kind", "card_no", "captured_at"):
        if not isinstance(body[key], str) or not body[key]:
            return f"{key} must be a non-empty string"
    if body["direction"] not in ("I", "E"):
        return "direction must be 'I' or 'E'"
    if body["plate"] is not None and not isinstance(body["plate"], str):
        return "plate must be a string or null"
    weight = body["gross_weight_kg"]
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))):
        return "gross_weight_kg must be a number or null"
    try:
        captured = datetime.fromisoformat(body["captured_at"])
    except ValueError:
        return "captured_at is not ISO 8601"
    if captured.tzinfo is None:
        return "captured_at has no UTC offset"
    return None


class HttpAuthoritySimulator:
    """A scriptable ``http-json`` release authority on ``host:port`` (port 0: any free port).

    After :meth:`start`, :attr:`port` is the real port and :attr:`url` the base URL ending in
    ``/``. :meth:`stop` closes the socket (clients then get connection refused); calling
    :meth:`start` again listens on the same port.

    Recorded, in arrival order: :attr:`requests` (every pass-request body received),
    :attr:`answers` (every answer body sent), :attr:`confirmations` (confirmation bodies
    answered ``200``), :attr:`confirmation_attempts` (every confirmation body received).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._port = port
        self.default: str = "hold"
        self.default_hint: str | None = None  # None: UNSCRIPTED_HINT for hold, else DEFAULT_HINTS
        self.silent = False
        self.drop = False
        self.status_code: int | None = None
        self.garbage = False
        self.mismatch_id = False
        self.reuse_instruction_id = False
        self.omit_instruction_id = False
        self.answer_patch: dict[str, Any] = {}
        self.raw_answer: bytes | Callable[[dict[str, Any]], bytes] | None = None
        self.fail_confirmations = False

        self.requests: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []
        self.confirmations: list[dict[str, Any]] = []
        self.confirmation_attempts: list[dict[str, Any]] = []
        self.issued_instruction_ids: list[str] = []

        self._scripts: dict[str, Script] = {}
        self._instruction_seq = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._arrivals = asyncio.Condition()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("simulator not started: no port yet")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_post("/gate/v1/pass-requests", self._handle_pass_request)
        app.router.add_post("/gate/v1/pass-confirmations", self._handle_confirmation)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening; silent requests are released and dropped unanswered."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping.set()
        await runner.cleanup()

    async def __aenter__(self) -> HttpAuthoritySimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- scripting ---------------------------------------------------------------------

    def script(
        self,
        card: str,
        decision: str = "release",
        hint: str | None = None,
        delay_s: float = 0.0,
        instruction_id: str | None = None,
        form_id: str | None = None,
        declared_weight_kg: float | None = None,
    ) -> None:
        """Answer every request for ``card`` with ``decision`` from now on.

        ``hint`` defaults to the decision's Chinese text in :data:`DEFAULT_HINTS`; a release
        without ``instruction_id`` gets a fresh ``CMD-nnnnnn`` per answer; ``delay_s`` delays
        the answer.
        """
        if decision not in DEFAULT_HINTS:
            raise ValueError(f"decision must be one of {sorted(DEFAULT_HINTS)}, not {decision!r}")
        self._scripts[card.upper()] = Script(
            decision=decision,
            hint=DEFAULT_HINTS[decision] if hint is None else hint,
            delay_s=delay_s,
            instruction_id=instruction_id,
            form_id=form_id,
            declared_weight_kg=declared_weight_kg,
        )

    def unscript(self, card: str) -> None:
        self._scripts.pop(card.upper(), None)

    def reset_faults(self) -> None:
        """Clear every fault switch (not the scripts or the records)."""
        self.silent = self.drop = self.garbage = False
        self.mismatch_id = self.reuse_instruction_id = self.omit_instruction_id = False
        self.status_code = None
        self.answer_patch = {}
        self.raw_answer = None
        self.fail_confirmations = False

    def next_instruction_id(self) -> str:
        instruction_id = f"CMD-{next(self._instruction_seq):06d}"
        self.issued_instruction_ids.append(instruction_id)
        return instruction_id

    async def wait_for_requests(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until at least ``count`` pass requests have arrived in total."""
        async with asyncio.timeout(timeout):
            async with self._arrivals:
                await self._arrivals.wait_for(lambda: len(self.requests) >= count)

    # -- handlers ----------------------------------------------------------------------

    def _script_for(self, card: Any) -> Script:
        script = self._scripts.get(card.upper()) if isinstance(card, str) else None
        if script is not None:
            return script
        hint = self.default_hint
        if hint is None:
            hint = UNSCRIPTED_HINT if self.default == "hold" else DEFAULT_HINTS.get(self.default)
        return Script(self.default, hint, 0.0, None, None, None)

    def _answer_for(self, body: dict[str, Any], script: Script) -> dict[str, Any]:
        instruction_id: str | None = None
        if script.decision == "release":
            if self.omit_instruction_id:
                instruction_id = None
            elif self.reuse_instruction_id and self.issued_instruction_ids:
                instruction_id = self.issued_instruction_ids[-1]
            elif script.instruction_id is not None:
                instruction_id = script.instruction_id
                self.issued_instruction_ids.append(instruction_id)
            else:
                instruction_id = self.next_instruction_id()
        request_id = body["request_id"]
        if self.mismatch_id:
            request_id = f"{request_id}-other"
        answer: dict[str, Any] = {
            "request_id": request_id,
            "decision": script.decision,
            "instruction_id": instruction_id,
            "form_id": script.form_id,
            "hint": script.hint,
            "declared_weight_kg": script.declared_weight_kg,
        }
        for key, value in self.answer_patch.items():
            if value is MISSING:
                answer.pop(key, None)
            else:
                answer[key] = value
        return answer

    async def _record(self, body: dict[str, Any]) -> None:
        async with self._arrivals:
            self.requests.append(body)
            self._arrivals.notify_all()

    async def _handle_pass_request(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            return web.json_response({"error": f"request is not JSON: {exc}"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "request is not a JSON object"}, status=400)
        await self._record(body)

        if self.silent:
            await self._stopping.wait()
            return self._drop(request)
        if self.drop:
            return self._drop(request)
        problem = _check_pass_request(body)
        if problem is not None:
            return web.json_response({"error": problem}, status=400)

        script = self._script_for(body.get("card_no"))
        if script.delay_s > 0:
            try:
                async with asyncio.timeout(script.delay_s):
                    await self._stopping.wait()
            except TimeoutError:
                pass  # the delay is over: answer
            else:
                return self._drop(request)  # stopped while delaying: no answer
        if self.status_code is not None and self.status_code != 200:
            return web.json_response({"error": "simulated failure"}, status=self.status_code)
        if self.garbage:
            return web.Response(status=200, text="<html>502 网关错误</html>", content_type="text/html")
        if self.raw_answer is not None:
            raw = self.raw_answer(body) if callable(self.raw_answer) else self.raw_answer
            return web.Response(status=200, body=raw, content_type="application/json")

        answer = self._answer_for(body, script)
        self.answers.append(answer)
        return web.json_response(answer, dumps=lambda o: json.dumps(o, ensure_ascii=False))

    async def _handle_confirmation(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            return web.json_response({"error": f"confirmation is not JSON: {exc}"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "confirmation is not a JSON object"}, status=400)
        self.confirmation_attempts.append(body)
        if set(body) != CONFIRMATION_KEYS or body.get("result") not in ("passed", "not_passed"):
            return web.json_response({"error": "not a contract pass confirmation"}, status=400)
        if self.fail_confirmations:
            return web.json_response({"error": "simulated outage"}, status=503)
        self.confirmations.append(body)
        return web.json_response({"ok": True})

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        """Close the connection without an answer."""
        if request.transport is not None:
            request.transport.abort()
        # Writing this to the aborted transport fails; aiohttp treats that as the client
        # having gone away and ends the connection quietly. Nothing reaches the client.
        return web.Response(status=204)
