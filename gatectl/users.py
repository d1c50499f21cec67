"""Users and roles behind bearer tokens, for any of gatectl's HTTP APIs.

A user is ``{name, role, token_sha256}``: the config holds the SHA-256 of the bearer
token, never the token, so a leaked config file opens nothing. A request's user is found
by hashing the presented token and comparing it with every configured hash in constant
time (no early exit on the first match, so timing tells nothing about which user or how
many there are). The user's ``name`` is the actor of whatever the request does: a body
never names its own actor.

    users = Users.of(config.users)                     # [UserConfig, ...]
    user = users.authenticate(request.headers.get("Authorization"))
    # -> AuthResult: .user (None: no or unknown token), .status 401/403 with .reason

    check = users.require(header, {"customs", "park"})  # 401, 403 or the user

The roles known here are the union of the lane API's (CONTRACT 8: guard, customs, park,
maintenance, camera) and the zone central's (customs, park, guard, maintenance, viewer);
each API names which of them it accepts where.

``python -m gatectl.users TOKEN`` prints the ``token_sha256`` of a token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from gatectl.config.base import GatectlModel
from gatectl.limits import Sha256Hex

Role = Literal["customs", "park", "guard", "maintenance", "viewer", "camera"]
ROLES: tuple[str, ...] = ("customs", "park", "guard", "maintenance", "viewer", "camera")
#: Chinese names of the roles, for screens and logs meant for people.
ROLE_ZH = {
    "customs": "海关",
    "park": "园区管理方",
    "guard": "保安",
    "maintenance": "运维",
    "viewer": "查看",
    "camera": "车牌识别相机",
}
#: Bearer tokens longer than this are refused before hashing (an outside input, bounded).
MAX_TOKEN_LEN = 512


class UserConfig(GatectlModel):
    """One user of an API: ``{name: 海关监控中心, role: customs, token_sha256: "<hex>"}``."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        title="Name", description="The actor of everything done with this token (shown in records)."
    )
    role: Role = Field(title="Role")
    token_sha256: Sha256Hex = Field(
        title="Token SHA-256",
        description="Lowercase hex SHA-256 of the bearer token (python -m gatectl.users TOKEN prints it).",
    )


def token_sha256(token: str) -> str:
    """The ``token_sha256`` of a bearer token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random bearer token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str


@dataclass(frozen=True, slots=True)
class AuthResult:
    """``user`` set: authenticated; else ``status`` (401) and ``reason``; or, from
    ``require``, a known user whose role is not allowed: ``user`` set, ``status`` 403."""

    user: User | None
    status: int = 200
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


class Users:
    """The users of one API. See the module docstring."""

    def __init__(self, users: Iterable[tuple[str, str, str]]) -> None:
        self._users: list[tuple[bytes, User]] = []
        seen: set[str] = set()
        for name, role, digest in users:
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
            if digest in seen:
                raise ValueError(f"two users share one token ({name})")
            seen.add(digest)
            self._users.append((bytes.fromhex(digest), User(name, role)))

    @classmethod
    def of(cls, configs: Iterable[UserConfig]) -> Users:
        return cls((u.name, u.role, u.token_sha256) for u in configs)

    def __len__(self) -> int:
        return len(self._users)

    def authenticate(self, authorization: str | None) -> AuthResult:
        """The user of an ``Authorization: Bearer <token>`` header (401 if none matches)."""
        if not authorization or not authorization.startswith("Bearer "):
            return AuthResult(None, 401, "missing bearer token (Authorization: Bearer <token>)")
        token = authorization[len("Bearer "):].strip()
        if not token or len(token) > MAX_TOKEN_LEN:
            return AuthResult(None, 401, "unknown bearer token")
        digest = hashlib.sha256(token.encode("utf-8", errors="replace")).digest()
        found: User | None = None
        for known, user in self._users:  # every one compared: constant time in the match
            if hmac.compare_digest(known, digest):
                found = user
        if found is None:
            return AuthResult(None, 401, "unknown bearer token")
        return AuthResult(found)

    def require(self, authorization: str | None, roles: Iterable[str] | None) -> AuthResult:
        """``authenticate``, then 403 unless the user's role is one of ``roles`` (None: any)."""
        result = self.authenticate(authorization)
        if result.user is None or roles is None:
            return result
        allowed = frozenset(roles)
        if result.user.role not in allowed:
            return AuthResult(result.user, 403,
                              f"role {result.user.role} may not do this (allowed: {', '.join(sorted(allowed))})")
        return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m gatectl.users TOKEN   (prints its token_sha256)", file=sys.stderr)
        return 2
    print(token_sha256(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
