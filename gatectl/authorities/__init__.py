"""Release authorities (CONTRACT section 3): adapters that ask, never decide.

``base`` holds the protocol-independent types and imports nothing heavy, so the sans-IO
lane core can use them. Protocol adapters are imported lazily on first access, so importing
this package does not pull in aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gatectl.authorities.base import (
    AUTHORITY_ERROR_REASONS,
    DECISIONS,
    AuthorityError,
    AuthorityErrorReason,
    Decision,
    DecisionKind,
    Direction,
    PassRequest,
    ReleaseAuthority,
)

if TYPE_CHECKING:
    from gatectl.authorities.http_json import HttpJsonAuthority

__all__ = [
    "AUTHORITY_ERROR_REASONS",
    "DECISIONS",
    "AuthorityError",
    "AuthorityErrorReason",
    "Decision",
    "DecisionKind",
    "Direction",
    "HttpJsonAuthority",
    "PassRequest",
    "ReleaseAuthority",
]


def __getattr__(name: str) -> Any:
    if name == "HttpJsonAuthority":
        from gatectl.authorities.http_json import HttpJsonAuthority

        return HttpJsonAuthority
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
