"""The strict base every config model inherits, and the problem types the loader reports.

A misspelt YAML key must be an error, never silently ignored (CONTRACT section 1), so every
model forbids extra keys. Models are frozen: the running daemon reads its config, it never
edits it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AllowInfNan, BaseModel, ConfigDict, Strict

__all__ = [
    "ConfigError",
    "GatectlModel",
    "Int",
    "Loc",
    "Number",
    "Problem",
    "format_problems",
    "yaml_path",
]


class GatectlModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# YAML already types its scalars, so integers and numbers are strict: `port: true` or
# `poll_ms: "50"` is a mistake to report, not something to coerce.
Int = Annotated[int, Strict()]
Number = Annotated[float, Strict(), AllowInfNan(False)]  # strict float still takes a YAML integer; .inf is refused


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config file.

    `path` is the YAML path of the offending node (`lanes[1].barrier.pulse_ms`, "" for the
    document itself), `line` is 1-based (None when it cannot be known, e.g. a missing
    file), `file` is the config file as the user named it.
    """

    path: str
    line: int | None
    message: str
    file: str | None = None

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        if self.path:
            return f"{where} {self.path}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every reason found, in file order."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(format_problems(self.problems))


def format_problems(problems: Iterable[Problem]) -> str:
    """One problem per line, as `check-config` prints them."""
    return "\n".join(str(p) for p in problems)


Loc = tuple[str | int, ...]
"""A location in the config document: mapping keys and list indexes, outermost first."""

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def yaml_path(loc: Loc) -> str:
    """Render a location the way an ops engineer reads it: `lanes[1].barrier.pulse_ms`.

    List indexes count from 0, as in the YAML tools. Keys that are not plain words are
    quoted: `authorities["jg 2"].url`.
    """
    out = ""
    for seg in loc:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif _PLAIN_KEY.match(seg):
            out += f".{seg}" if out else seg
        else:
            out += f"[{json.dumps(seg, ensure_ascii=False)}]"
    return out


def distinct_tokens(users: list[Any]) -> list[Any]:
    """``users`` (each with ``name`` and ``token_sha256``) unchanged, or ValueError naming
    two users who share one bearer token: the token would not say who acted."""
    seen: dict[str, str] = {}
    for user in users:
        if user.token_sha256 in seen:
            raise ValueError(f"users {seen[user.token_sha256]} and {user.name} share one token")
        seen[user.token_sha256] = user.name
    return users
