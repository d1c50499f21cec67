"""Orders: what people and systems outside the lanes ask of them.

Approvals (R10, R17), the guard's emergency accounts (R11), customs' spot checks (R7) and
the record orders (alarm acknowledgements, incidents, tickets, duty records) arrive by
the local API, by MQTT, or from the CLI through the journal's ``inbox`` table. Each kind
has one handler here, whatever the door it came in by, and every handler answers with a
result dict: ``{"status": "accepted", ...}`` or ``{"status": "refused", "reason", ...}``.

``Orders.run`` is the one poller of the inbox: it hands each order to its handler and
marks it done with the result, failed ones included, so an order that cannot be applied
is answered once and never retried forever.

Orders reach a lane as core inputs through ``Site.submit`` (the lane's own loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from gatectl import events as ev
from gatectl.approvals import ApprovalRefused as Refused
from gatectl.approvals import lane_kinds, parse_document, verify
from gatectl.journal import JournalError
from gatectl.lane.errors import LaneProtocolError
from gatectl.lane.inputs import ApprovalAccepted, ApprovalRefused, EmergencyAccount, SpotCheckOrdered

if TYPE_CHECKING:
    from gatectl.service import Site

log = structlog.get_logger("gatectl.orders")

#: How often the inbox is looked at for orders the CLI left.
INBOX_POLL_S = 1.0
#: Lane id of site-wide events that belong to no configured lane.
SITE_LANE = "_site"

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def spot_check_order(body: dict, source: str) -> SpotCheckOrdered:
    """Validate a spot-check order (local API or MQTT) into the core's input."""
    keys = set(body) - {"lane_id"}
    if len(keys) != 1 or not keys <= {"hold_next", "fraction", "clear"}:
        raise ValueError('give exactly one of "hold_next", "fraction" or "clear"')
    (key,) = keys
    value = body[key]
    if key == "hold_next" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError("hold_next must be a whole number >= 0")
    if key == "fraction" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
        raise ValueError("fraction must be a number from 0 to 1")
    if key == "clear" and value is not True:
        raise ValueError("clear must be true")
    try:
        return SpotCheckOrdered(
            hold_next=value if key == "hold_next" else None,
            fraction=float(value) if key == "fraction" else None,
            clear=key == "clear",
            source=source,
        )
    except LaneProtocolError as exc:
        raise ValueError(str(exc)) from exc


class Orders:
    """Every order of the site, by kind; the one inbox poller."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self._handlers: dict[str, Handler] = {
            "approval": lambda payload: self.approval(payload.get("document"), source="cli"),
            "emergency_account": lambda payload: self.emergency_account(payload),
        }

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
            approval_id = doc.get("approval_id") if isinstance(doc.get("approval_id"), str) else None
            lane_id = doc.get("lane_id") if isinstance(doc.get("lane_id"), str) else None
            used = await site.journal.read(lambda db: site.journal.approval_uses(approval_id, db)) if approval_id else 0
            verified = verify(doc, trust=site.config.trust, lanes=lane_kinds(site.config), now=now, lifts_used=used)
        except Refused as exc:
            result = {"status": "refused", "approval_id": approval_id, **exc.to_dict()}
            if lane_id in site.lanes:
                await site.submit(lane_id, ApprovalRefused(approval_id, exc.code, exc.message, source))
            else:
                await site.record(SITE_LANE, ev.ApprovalRefused(
                    approval_id=approval_id, reason=exc.code, message=exc.message, source=source, lane=lane_id))
            log.warning("approval refused", approval_id=approval_id, reason=exc.code, source=source)
            return result
        a = verified.approval
        await asyncio.wrap_future(site.journal.store_approval(
            a.approval_id, a.lane_id, a.trigger, a.max_lifts, a.valid_from, a.valid_until, verified.document_json, now))
        await site.submit(a.lane_id, ApprovalAccepted(a.approval_id, a.trigger, a.max_lifts, a.valid_from,
                                                      a.valid_until, used, a.plate,
                                                      countersigned=verified.countersigned))
        log.info("approval accepted", approval_id=a.approval_id, lane=a.lane_id, trigger=a.trigger, source=source)
        return {"status": "accepted", "approval_id": a.approval_id, "lane_id": a.lane_id, "trigger": a.trigger,
                "max_lifts": a.max_lifts, "lifts_used": used}

    # ------------------------------------------------------------ emergency accounts (R11)

    async def emergency_account(self, payload: dict[str, Any], lane_id: str | None = None) -> dict[str, Any]:
        """The guard's account (vehicle type, plate) of an emergency release."""
        site = self.site
        passage_id = payload.get("passage_id")
        row = await site.journal.read(lambda db: site.journal.passage(passage_id, db)) \
            if isinstance(passage_id, str) else None
        if row is None:
            return {"status": "refused", "reason": "unknown_passage", "message": f"no passage {passage_id!r}"}
        if lane_id is not None and row["lane_id"] != lane_id:
            return {"status": "refused", "reason": "other_lane", "message": "that passage belongs to another lane"}
        if row["auth_kind"] != "emergency":
            return {"status": "refused", "reason": "not_emergency", "message": "that passage was no emergency release"}
        vehicle_type = payload.get("vehicle_type")
        if not isinstance(vehicle_type, str) or not vehicle_type.strip():
            return {"status": "refused", "reason": "malformed", "message": "vehicle_type is required"}
        if row["lane_id"] not in site.lanes:
            return {"status": "refused", "reason": "unknown_lane", "message": "that lane is no longer configured"}
        await site.submit(row["lane_id"], EmergencyAccount(
            passage_id, vehicle_type.strip(), payload.get("plate"), payload.get("note") or "", payload.get("by") or ""))
        return {"status": "accepted", "passage_id": passage_id, "lane_id": row["lane_id"]}

    # ------------------------------------------------------------ spot checks (R7)

    async def spot_check(self, lane_id: str, body: dict, source: str) -> dict[str, Any]:
        """Customs spot checks on a lane; raises ``ValueError`` for an invalid order."""
        order = spot_check_order(body, source)
        await self.site.submit(lane_id, order)
        core = self.site.lanes[lane_id].core
        return {"lane_id": lane_id, "hold_next": core.spot_hold_next, "fraction": core.spot_fraction}

    # ------------------------------------------------------------ the inbox

    async def run(self) -> None:
        """Take the orders the CLI left in the journal, one at a time, until cancelled."""
        while True:
            await self.take_inbox()
            await asyncio.sleep(INBOX_POLL_S)

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


__all__ = ["Orders", "spot_check_order", "SITE_LANE"]
