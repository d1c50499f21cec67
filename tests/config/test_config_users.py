"""``local_api.users`` (CONTRACT 8): name, role and the SHA-256 of the token; every
problem refused with its YAML path and line, as the rest of the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatectl.config import ConfigError, parse_config
from gatectl.users import token_sha256

from test_config_limits import BASE

GUARD = token_sha256("guard-token")
CUSTOMS = token_sha256("customs-token")


def with_users(*lines: str) -> str:
    anchor = "  token: change-me\n"
    assert anchor in BASE
    return BASE.replace(anchor, anchor + "  users:\n" + "".join(f"    - {line}\n" for line in lines))


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return [(p.path, p.message) for p in info.value.problems]


def test_contract8_users_are_read_and_default_to_none() -> None:
    assert parse_config(BASE).local_api.users == []
    config = parse_config(with_users(f"{{name: 王保安, role: guard, token_sha256: {GUARD.upper()}}}",
                                     f"{{name: 海关查验科, role: customs, token_sha256: {CUSTOMS}}}"))
    assert [(u.name, u.role, u.token_sha256) for u in config.local_api.users] == [
        ("王保安", "guard", GUARD), ("海关查验科", "customs", CUSTOMS)]


@pytest.mark.parametrize(("line", "where", "says"), [
    (f"{{name: x, role: viewer, token_sha256: {GUARD}}}", "local_api.users[0].role", "guard"),
    ("{name: x, role: guard, token_sha256: abc}", "local_api.users[0].token_sha256", "64 hex digits"),
    (f"{{name: x, role: guard, token_sha256: {'z' * 64}}}", "local_api.users[0].token_sha256", "64 hex digits"),
    (f"{{name: '{'名' * 65}', role: guard, token_sha256: {GUARD}}}", "local_api.users[0].name", "64"),
    (f"{{name: '', role: guard, token_sha256: {GUARD}}}", "local_api.users[0].name", ""),
    (f"{{name: x, role: guard, token: {GUARD}}}", "local_api.users[0]", ""),
])
def test_contract8_bad_users_are_refused_with_their_path(line: str, where: str, says: str) -> None:
    found = problems(with_users(line))
    assert any(path.startswith(where) and says in message for path, message in found), found


def test_contract8_two_users_with_one_token_are_refused() -> None:
    found = problems(with_users(f"{{name: 甲, role: guard, token_sha256: {GUARD}}}",
                                f"{{name: 乙, role: customs, token_sha256: {GUARD}}}"))
    assert any(path == "local_api.users" and "share one token" in message for path, message in found), found
