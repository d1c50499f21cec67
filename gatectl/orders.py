"""Orders: what people and systems outside the lanes ask of them.

Approvals (R10, R17), the guard's emergency accounts (R11), customs' spot checks (R7) and
hours orders (R2), park management's drills, plate cameras' reads and signed commands
(CONTRACT 8), and the record orders (alarm acknowledgements, incidents,
tickets, duty records) arrive by the local API, by MQTT, or from the CLI through the
journal's ``inbox`` table. Each kind has one handler here, whatever the door it came in
by, and every handler answers with a result dict: ``{"status": "accepted", ...}`` or
``{"status": "refused", "reason", ...}``. Bodies are checked by the pydantic models of
``gatectl.commands`` (every field bounded, unknown keys refused) before anything reaches a
lane.

``Orders.run`` is the one poller of the inbox: it hands each order to its handler and
marks it done with the result, failed ones included, so an order that cannot be applied
is answered once and never retried forever.

Refusals are counted per surface and reason (``Orders.refusals``, shown by ``/metrics``).
A refused approval from outside is journaled as ``approval.refused`` for the first of its
source, lane and reason in each ``refused_interval``; the others of that interval are
counted and journaled together as one ``command.refused`` with the ``count`` (a flood of
junk approvals costs a record a minute, not one each). Signed commands are accepted once
per ``command_id``: the ids are kept in the journal file (table ``commands_seen``, written
by a journal job before the order reaches the lane).

Orders reach a lane as core inputs through ``Site.submit`` (the lane's own loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from gatectl import events as ev
from gatectl.approvals import ApprovalRefused as Refused
from gatectl.approvals import lane_kinds, parse_document, verify
from gatectl.commands import (
    MAX_HOURS_AHEAD,
    MAX_PLATE_SKEW,
    CommandRefused,
    DrillBody,
    HoursBody,
    PlateBody,
    SpotCheckBody,
    VerifiedCommand,
    verify_command,
)
from gatectl.journal import JournalError, WriteTx
from gatectl.lane.errors import LaneProtocolError
from gatectl.lane.inputs import (
    ApprovalAccepted,
    ApprovalRefused,
    DrillOrdered,
    EmergencyAccount,
    HoursOrdered,
    PlateRead,
    SpotCheckOrdered,
)
from gatectl.limits import MAX_ID_LEN, MAX_LANE_ID_LEN, FreeText, Identifier, PersonName, Plate, single_line
from gatectl.limits import validation_message
from gatectl.refusals import Refusals, RefusedRecords

if TYPE_CHECKING:
    from gatectl.service import Site

log = structlog.get_logger("gatectl.orders")

#: How often the inbox is looked at for orders the CLI left.
INBOX_POLL_S = 1.0
#: Lane id of site-wide events that belong to no configured lane.
SITE_LANE = "_site"
#: Signed command ids older than this (by ``issued_at``) are forgotten: long expired.
COMMANDS_KEPT_S = 2 * 86400

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

COMMANDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands_seen (
    command_id   TEXT PRIMARY KEY,
    command      TEXT NOT NULL,
    lane_id      TEXT NOT NULL,
    issued_at    TEXT NOT NULL,
    issued_epoch REAL NOT NULL,
    accepted_at  TEXT NOT NULL,
    source       TEXT NOT NULL,
    signer       TEXT NOT NULL,
    fingerprint  TEXT NOT NULL
)
"""


class OrderRefused(ValueError):
    """An order refused at the edge (nothing applied); ``reason`` for the answer and the
    metrics, ``status`` the HTTP status to answer."""

    def __init__(self, reason: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {"status": "refused", "reason": self.reason, "message": self.message}


VehicleType = single_line(32, what="a vehicle type")


class EmergencyAccountBody(BaseModel):
    """R11: the guard's account of an emergency release."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    passage_id: Identifier
    vehicle_type: VehicleType
    plate: Plate | None = None
    note: FreeText = ""
    by: PersonName | None = None


def _model(model: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise OrderRefused("invalid", "the body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise OrderRefused("invalid", validation_message(exc)) from None


def spot_check_order(body: dict, source: str) -> SpotCheckOrdered:
    """Validate a plain spot-check order (``lane_id`` aside) into the core's input;
    raises ``OrderRefused`` (a ``ValueError``) with the reason."""
    order = _model(SpotCheckBody, {k: v for k, v in body.items() if k != "lane_id"} if isinstance(body, dict)
                   else body)
    try:
        return SpotCheckOrdered(hold_next=order.hold_next, fraction=order.fraction, clear=bool(order.clear),
                                source=source)
    except LaneProtocolError as exc:
        raise OrderRefused("invalid", str(exc)) from exc


def hours_order(body: Any, source: str, now: datetime, by: str | None = None) -> HoursOrdered:
    """Validate an hours order (``lane_id`` aside) into the core's input: ``until`` after
    ``now`` and at most a year ahead; ``by`` (a signed command's) over the body's. Raises
    ``OrderRefused``."""
    order: HoursBody = _model(HoursBody, {k: v for k, v in body.items() if k != "lane_id"}
                              if isinstance(body, dict) else body)
    if order.until is not None:
        if order.until <= now:
            raise OrderRefused("invalid", f"until {order.until.isoformat()} has passed already")
        if order.until > now + MAX_HOURS_AHEAD:
            raise OrderRefused("invalid", f"until is at most {MAX_HOURS_AHEAD.days} days ahead")
    try:
        return HoursOrdered(open=order.open, until=order.until, reason=order.reason or "", clear=bool(order.clear),
                            source=source, by=by if by is not None else (order.by or ""))
    except LaneProtocolError as exc:
        raise OrderRefused("invalid", str(exc)) from exc


def actor_of(body: dict[str, Any], key: str, actor: str | None) -> dict[str, Any]:
    """The body with its actor field ``key`` set from the credential's user ``actor``.

    A body may repeat the user's own name; naming anyone else is refused (403). Without a
    user (the legacy full-access token, the CLI) the body's own ``key`` stands."""
    if actor is None:
        return body
    given = body.get(key)
    if given not in (None, "") and given != actor:
        raise OrderRefused("actor_mismatch", f"this token is {actor}'s: a record cannot be made in another's name "
                                             f"({key} {str(given)[:64]!r})", status=403)
    return {**body, key: actor}


class Orders:
    """Every order of the site, by kind; the one inbox poller."""

    def __init__(self, site: Site, refused_interval: float = 60.0) -> None:
        self.site = site
        self.refusals = Refusals()
        self.refused_interval = refused_interval
        self.refused = RefusedRecords(site.journal, site.now, refused_interval)
        self._refusal_journaled: dict[tuple[str, str, str], float] = {}
        self._handlers: dict[str, Handler] = {
            "approval": lambda payload: self.approval(payload.get("document"), source="cli"),
            "emergency_account": lambda payload: self.emergency_account(payload),
        }
        self._commands_ready = False
        try:
            site.journal.run(self._commands_schema).result()
        except JournalError as exc:  # e.g. a full disk at the very start: tried again with the first command
            log.error("signed command table unavailable", error=str(exc))

    def register(self, kind: str, handler: Handler) -> None:
        """Another module's orders (the records) taken from the inbox too."""
        self._handlers[kind] = handler

    # ------------------------------------------------------------ approvals (R10, R17)

    async def approval(self, raw: bytes | str | dict | None, source: str) -> dict[str, Any]:
        """Verify an approval; journal and apply it if valid."""
        site = self.site
        now = site.now()
        approval_id = lane_id = None
        try:
            doc = parse_document(raw if raw is not None else b"")
            approval_id = _bounded(doc.get("approval_id"), MAX_ID_LEN)
            lane_id = _bounded(doc.get("lane_id"), MAX_LANE_ID_LEN)
            used = await site.journal.read(lambda db: site.journal.approval_uses(approval_id, db)) if approval_id else 0
            verified = verify(doc, trust=site.config.trust, lanes=lane_kinds(site.config), now=now, lifts_used=used)
        except Refused as exc:
            await self._approval_refused(exc, approval_id, lane_id, source)
            return {"status": "refused", "approval_id": approval_id, **exc.to_dict()}
        a = verified.approval
        await asyncio.wrap_future(site.journal.store_approval(
            a.approval_id, a.lane_id, a.trigger, a.max_lifts, a.valid_from, a.valid_until, verified.document_json, now))
        await site.submit(a.lane_id, ApprovalAccepted(a.approval_id, a.trigger, a.max_lifts, a.valid_from,
                                                      a.valid_until, used, a.plate,
                                                      countersigned=verified.countersigned))
        log.info("approval accepted", approval_id=a.approval_id, lane=a.lane_id, trigger=a.trigger, source=source)
        return {"status": "accepted", "approval_id": a.approval_id, "lane_id": a.lane_id, "trigger": a.trigger,
                "max_lifts": a.max_lifts, "lifts_used": used}

    async def _approval_refused(self, exc: Refused, approval_id: str | None, lane_id: str | None,
                                source: str) -> None:
        """Count it; journal the first of its source, lane and reason in an interval as
        ``approval.refused``, the rest of the interval as one counted ``command.refused``."""
        site = self.site
        self.refusals.count("approval", exc.code, exc.message, source=source, approval_id=approval_id or "",
                            lane=lane_id or "")
        lane = lane_id if lane_id in site.lanes else SITE_LANE
        key = (source, lane, exc.code)
        now = time.monotonic()
        if now - self._refusal_journaled.get(key, float("-inf")) < self.refused_interval:
            self.refused.add(source=source, topic="approvals", reason=exc.code, message=exc.message, lane=lane_id,
                             payload=approval_id or "")
            return
        self._refusal_journaled[key] = now
        message = exc.message[:500]
        if lane != SITE_LANE:
            await site.submit(lane, ApprovalRefused(approval_id, exc.code, message, source))
        else:
            await site.record(SITE_LANE, ev.ApprovalRefused(
                approval_id=approval_id, reason=exc.code, message=message, source=source, lane=lane_id))

    # ------------------------------------------------------------ emergency accounts (R11)

    async def emergency_account(self, payload: dict[str, Any], lane_id: str | None = None,
                                actor: str | None = None) -> dict[str, Any]:
        """The guard's account (vehicle type, plate) of an emergency release. ``actor``:
        the user of the API token (the account's ``by``); without one, the payload's."""
        site = self.site
        try:
            if isinstance(payload, dict):  # the CLI leaves optional fields empty
                payload = {k: v for k, v in payload.items() if not (k in ("by", "plate") and v in (None, ""))}
            body: EmergencyAccountBody = _model(EmergencyAccountBody, actor_of(payload, "by", actor))
        except OrderRefused as exc:
            return {**exc.to_dict(), "reason": "malformed" if exc.reason == "invalid" else exc.reason,
                    "http_status": exc.status}
        passage_id = body.passage_id
        row = await site.journal.read(lambda db: site.journal.passage(passage_id, db))
        if row is None:
            return {"status": "refused", "reason": "unknown_passage", "message": f"no passage {passage_id!r}"}
        if lane_id is not None and row["lane_id"] != lane_id:
            return {"status": "refused", "reason": "other_lane", "message": "that passage belongs to another lane"}
        if row["auth_kind"] != "emergency":
            return {"status": "refused", "reason": "not_emergency", "message": "that passage was no emergency release"}
        if row["lane_id"] not in site.lanes:
            return {"status": "refused", "reason": "unknown_lane", "message": "that lane is no longer configured"}
        await site.submit(row["lane_id"], EmergencyAccount(
            passage_id, body.vehicle_type.strip(), body.plate, body.note, body.by or ""))
        return {"status": "accepted", "passage_id": passage_id, "lane_id": row["lane_id"], "by": body.by}

    # ------------------------------------------------------------ spot checks (R7)

    async def spot_check(self, lane_id: str, body: dict, source: str) -> dict[str, Any]:
        """Customs spot checks on a lane; raises ``OrderRefused`` (a ``ValueError``) for an
        invalid order."""
        order = spot_check_order(body, source)
        await self.site.submit(lane_id, order)
        return self._spot_state(lane_id)

    def _spot_state(self, lane_id: str) -> dict[str, Any]:
        core = self.site.lanes[lane_id].core
        return {"lane_id": lane_id, "hold_next": core.spot_hold_next, "fraction": core.spot_fraction}

    # ------------------------------------------------------------ hours, drills, plates (CONTRACT 8)

    async def lane_hours(self, lane_id: str, body: dict[str, Any], source: str,
                         actor: str | None = None) -> dict[str, Any]:
        """R2: customs open or close the lane now over its open hours (or clear that), a
        plain order; ``actor`` (the token's user) is its ``by``. Raises ``OrderRefused``."""
        order = hours_order(actor_of(body, "by", actor) if isinstance(body, dict) else body, source,
                            self.site.now())
        await self.site.submit(lane_id, order)
        return self._hours_state(lane_id)

    def _hours_state(self, lane_id: str) -> dict[str, Any]:
        view = self.site.lanes[lane_id].snapshot()
        return {"lane_id": lane_id, "open": view["open"], "hours_order": view["hours_order"]}

    async def drill(self, lane_id: str, body: dict[str, Any], actor: str | None = None) -> dict[str, Any]:
        """Park management start or end an emergency drill on the lane; ``actor`` (the
        token's user) is its ``by``. Starting one under way, or ending none, is refused
        (409): the lane does nothing twice. Raises ``OrderRefused``."""
        order: DrillBody = _model(DrillBody, actor_of(body, "by", actor) if isinstance(body, dict) else body)
        lane = self.site.lanes[lane_id]
        running = lane.view["drill"] is not None
        if order.start == running:
            raise OrderRefused("drill_state", "a drill is under way on this lane already" if running
                               else "no drill is under way on this lane", status=409)
        await self.site.submit(lane_id, DrillOrdered(order.start, order.by or "", order.note))
        return {"lane_id": lane_id, "drill": lane.view["drill"]}

    async def plate(self, lane_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """The plate camera's read of the vehicle on the arrival loop. Refused (409) on a
        lane without ``plate_camera``. Raises ``OrderRefused``."""
        lane = self.site.lanes[lane_id]
        if lane.config.plate_camera is None:
            raise OrderRefused("no_plate_camera", f"lane {lane_id} has no plate_camera configured: its plates "
                                                  "are not taken", status=409)
        read: PlateBody = _model(PlateBody, body)
        plate = read.plate.strip()
        if not plate:
            raise OrderRefused("invalid", "plate: empty")
        now = self.site.now()
        if read.captured_at is not None and abs(read.captured_at - now) > MAX_PLATE_SKEW:
            raise OrderRefused("invalid", f"captured_at {read.captured_at.isoformat()} is more than a day from "
                                          "this lane PC's clock: set the camera's clock")
        await self.site.submit(lane_id, PlateRead(plate, read.confidence, read.captured_at))
        passage = lane.view["passage"]
        return {"status": "accepted", "lane_id": lane_id, "plate": plate,
                "passage_id": passage["passage_id"] if passage is not None and passage["plate"] == plate else None}

    # ------------------------------------------------------------ signed commands (CONTRACT 8)

    async def signed_command(self, raw: bytes | str | dict, source: str, expect: str | None = None,
                             lane_id: str | None = None) -> dict[str, Any]:
        """Verify a signed command, accept its ``command_id`` once, apply it. Raises
        ``CommandRefused`` (counted here; the caller answers or aggregates it)."""
        site = self.site
        try:
            verified = verify_command(raw, trust_customs=site.config.trust.customs, lanes=site.lanes,
                                      now=site.now(), expect=expect)
            if lane_id is not None and verified.lane_id != lane_id:
                raise CommandRefused("unknown_lane", f"the command is for lane {verified.lane_id}, not {lane_id}")
            order = self._command_input(verified, source)
            if not await asyncio.wrap_future(site.journal.run(lambda tx: self._accept_once(tx, verified, source))):
                raise CommandRefused("replayed", f"command {verified.command_id} was accepted before: each "
                                                 "command_id is accepted once")
        except CommandRefused as exc:
            self.refusals.count("command", exc.code, exc.message, source=source)
            raise
        await site.submit(verified.lane_id, order)
        log.info("signed command accepted", command=verified.kind, command_id=verified.command_id,
                 lane=verified.lane_id, source=source, by=verified.by)
        result = {"status": "accepted", "command": verified.kind, "command_id": verified.command_id,
                  "lane_id": verified.lane_id, "by": verified.by}
        if verified.kind == "spot-check":
            result.update(self._spot_state(verified.lane_id))
        else:
            result.update(self._hours_state(verified.lane_id))
        return result

    def _command_input(self, verified: VerifiedCommand, source: str) -> Any:
        """The core's input for a verified command (checked again by the input itself)."""
        body = verified.body()
        try:
            if verified.kind == "spot-check":
                return spot_check_order(body, source)
            return self._hours_input(body, source, verified.by)
        except OrderRefused as exc:
            raise CommandRefused("invalid", exc.message) from None

    def _hours_input(self, body: dict[str, Any], source: str, by: str) -> Any:
        return hours_order(body, source, self.site.now(), by=by)

    def _commands_schema(self, tx: WriteTx) -> None:
        tx.db.execute(COMMANDS_SCHEMA)
        tx.db.execute("CREATE INDEX IF NOT EXISTS commands_seen_issued ON commands_seen (issued_epoch)")
        self._commands_ready = True

    def _accept_once(self, tx: WriteTx, verified: VerifiedCommand, source: str) -> bool:
        """A journal job: record ``command_id`` unless it is there already (then False)."""
        if not self._commands_ready:
            self._commands_schema(tx)
        db = tx.db
        issued = verified.command.issued_at
        db.execute("DELETE FROM commands_seen WHERE issued_epoch < ?", (issued.timestamp() - COMMANDS_KEPT_S,))
        cur = db.execute(
            "INSERT OR IGNORE INTO commands_seen (command_id, command, lane_id, issued_at, issued_epoch, accepted_at,"
            " source, signer, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (verified.command_id, verified.kind, verified.lane_id, issued.isoformat(), issued.timestamp(),
             self.site.now().isoformat(), source, verified.signers[0], verified.fingerprint),
        )
        return cur.rowcount == 1

    # ------------------------------------------------------------ the inbox

    async def run(self) -> None:
        """Take the orders the CLI left in the journal, one at a time, and journal the
        refusals counted since the last interval, until cancelled."""
        try:
            while True:
                await self.take_inbox()
                if self.refused.due():
                    self.refused.flush()
                await asyncio.sleep(INBOX_POLL_S)
        finally:
            self.refused.flush()

    async def take_inbox(self) -> int:
        """One pass over the inbox: each order handled and marked done with its answer.
        Returns how many were taken."""
        journal = self.site.journal
        try:
            items = await journal.read(lambda db: journal.inbox_pending())
        except Exception as exc:  # noqa: BLE001 - read again next round
            log.error("inbox unreadable", error=str(exc))
            return 0
        done = 0
        for item in items:
            result = await self._perform(item)
            try:
                await asyncio.wrap_future(journal.inbox_done(item["id"], self.site.now(), result))
            except JournalError as exc:
                log.error("inbox order not marked done; tried again next round", id=item["id"], error=str(exc))
                break
            done += 1
        return done

    async def _perform(self, item: dict[str, Any]) -> dict[str, Any]:
        handler = self._handlers.get(item["kind"])
        if handler is None:
            return {"status": "refused", "reason": "unknown_kind", "message": f"no order {item['kind']!r}"}
        if not isinstance(item["payload"], dict):
            return {"status": "refused", "reason": "malformed", "message": "the order's payload is damaged"}
        try:
            return await handler(item["payload"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - answer the CLI rather than retry forever
            log.exception("order failed", id=item["id"], kind=item["kind"])
            return {"status": "failed", "reason": "internal", "message": repr(exc)[:500]}


def _bounded(value: Any, length: int) -> str | None:
    """An id read from a document before it was validated, as far as it may be recorded."""
    return value[:length] if isinstance(value, str) else None


__all__ = ["Orders", "OrderRefused", "EmergencyAccountBody", "actor_of", "hours_order", "spot_check_order",
           "SITE_LANE"]
