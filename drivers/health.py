"""Device health, shared by every driver (serial devices, Modbus IO modules).

A driver reports its health through ``on_health(health, reason)``; the lane service
fails closed on anything other than ``Health.OK`` (requirement S5).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Health"]


class Health(StrEnum):
    """Health of one device as its driver sees it."""

    OK = "ok"
    """The device answers and its frames decode."""
    DEGRADED = "degraded"
    """The device answers, but something is off (e.g. many dropped frames)."""
    FAULTY = "faulty"
    """The device is gone, silent or unusable; the lane must fail closed."""
