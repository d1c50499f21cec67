"""Customs' signed commands (CONTRACT 8) for tests: built and signed as a customs system
would, with ``gatectl.approvals.signing_bytes`` and an Ed25519 key."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatectl.approvals import public_key_b64, signing_bytes

TZ = ZoneInfo("Asia/Shanghai")


def command(kind: str, lane: str, *, issued_at: datetime | None = None, command_id: str | None = None,
            **body: Any) -> dict[str, Any]:
    """An unsigned command of ``kind`` ("spot-check", "lane-hours") for ``lane``."""
    return {"command": kind, "command_id": command_id or str(uuid.uuid4()), "lane_id": lane,
            "issued_at": (issued_at or datetime.now(TZ)).isoformat(), **body}


def sign(doc: dict[str, Any], key: Ed25519PrivateKey, role: str = "customs") -> dict[str, Any]:
    """``doc`` with a signature over its signing bytes appended (the key named as a hint)."""
    out = {k: v for k, v in doc.items() if k != "signatures"}
    sig = key.sign(signing_bytes(out))
    out["signatures"] = [*doc.get("signatures", []),
                         {"role": role, "sig": base64.b64encode(sig).decode(), "key": public_key_b64(key)}]
    return out


def signed(kind: str, lane: str, key: Ed25519PrivateKey, **kw: Any) -> dict[str, Any]:
    return sign(command(kind, lane, **kw), key)


def minutes_ago(n: float) -> datetime:
    return datetime.now(TZ) - timedelta(minutes=n)
