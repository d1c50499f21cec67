"""Reads the API and the screen share: completeness per lane, alarms of the zone."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from gatectl.central.store import zone_alarm_json


async def completeness_rows(pool: AsyncConnectionPool) -> list[dict]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT site_id, lane_id, contiguous_seq, max_seq, greatest(max_seq - stored, 0), stored,"
            " replay_from, replay_to FROM lanes ORDER BY site_id, lane_id")
        rows = await cur.fetchall()
    return [{"site_id": s, "lane_id": ln, "contiguous_seq": c, "max_seq": m, "missing": miss, "stored": st,
             "replaying": [rf, rt] if rt is not None else None}
            for s, ln, c, m, miss, st, rf, rt in rows]


async def alarm_rows(pool: AsyncConnectionPool, open_only: bool, limit: int = 500) -> list[dict]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT alarm_id::text, alarm, site_ids, raised_at, cleared_at, detail FROM zone_alarms"
            + (" WHERE cleared_at IS NULL" if open_only else "") + " ORDER BY raised_at DESC LIMIT %s", (limit,))
        zone = [zone_alarm_json(*r) for r in await cur.fetchall()]
        cur = await conn.execute(
            "SELECT r.body, EXISTS (SELECT 1 FROM events a WHERE a.type = 'alarm.acknowledged'"
            " AND a.body->>'alarm_event_id' = r.event_id::text) FROM events r WHERE r.type = 'alarm.raised'"
            " ORDER BY r.ts DESC LIMIT %s", (limit,))
        lane = [{"source": "lane", "alarm": b.get("alarm"), "site_ids": [b.get("site_id")], "site_id": b.get("site_id"),
                 "lane_id": b.get("lane_id"), "raised_at": b.get("ts"), "open": not acked, "event": b}
                for b, acked in await cur.fetchall() if not (open_only and acked)]
    return sorted(zone + lane, key=lambda a: a["raised_at"] or "", reverse=True)
