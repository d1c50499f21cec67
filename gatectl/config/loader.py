"""Load a site config file, and say exactly what is wrong with it.

`load_config(path)` parses the YAML with ruamel's round-trip loader (which keeps the line of
every key and list item), validates it with the pydantic models, runs the cross-checks,
and either returns a `SiteConfig` or raises `ConfigError` listing every problem found, each
with its YAML path and line: syntax errors, type and bound errors, unknown keys, and
cross-check findings all together.

`check_config(path)` is `gatectl check-config`: a summary and 0, or the problems and 2.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
import types
import typing
from collections.abc import Mapping
from datetime import date, datetime
from os import PathLike
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.composer import Composer, ComposerError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from ruamel.yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode

from gatectl.config.base import ConfigError, Loc, Problem, yaml_path
from gatectl.config.models import (
    CONTEXT_BASE_DIR,
    CONTEXT_SKIP_CROSS_CHECKS,
    Issue,
    SiteConfig,
    SiteParts,
    cross_check,
)

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_NODES",
    "check_config",
    "load_config",
    "parse_config",
]

MAX_CONFIG_BYTES = 2 * 1024 * 1024
"""A site config is a few KB; with 10 000 whitelist entries under 1 MB."""
MAX_CONFIG_DEPTH = 24
"""Nesting levels, aliases expanded. A config is about six deep (lanes[0].barrier.pulse_ms)."""
MAX_CONFIG_NODES = 300_000
"""Values in the document once every alias is expanded (10 000 whitelist entries are 70 000)."""


def load_config(path: str | PathLike[str]) -> SiteConfig:
    """Read, validate and cross-check a config file.

    Raises `ConfigError` with every problem found. Relative paths in the file are resolved
    against the file's directory.
    """
    name = str(path)
    file = Path(path)
    try:
        with file.open("rb") as stream:
            raw = stream.read(MAX_CONFIG_BYTES + 1)  # /dev/zero, a log file by mistake...
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError([Problem("", None, _too_large(), name)])
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem("", None, "config file not found", name)]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem("", None, f"not UTF-8 text ({exc.reason})", name)]) from None
    except OSError as exc:
        raise ConfigError(
            [Problem("", None, f"cannot read config file: {exc.strerror or exc}", name)]
        ) from None
    return parse_config(text, base_dir=file.absolute().parent, filename=name)


def parse_config(
    text: str, *, base_dir: str | PathLike[str] | None = None, filename: str = "<config>"
) -> SiteConfig:
    """Validate config text; relative paths resolve against `base_dir` (default: cwd)."""
    base = Path(base_dir).absolute() if base_dir is not None else Path.cwd()

    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError([Problem("", None, _too_large(), filename)])
    yaml = YAML(typ="rt")
    yaml.Composer = _BoundedComposer
    try:
        tree = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "YAML syntax error"
        if exc.context and exc.problem:
            message = f"{exc.problem} ({exc.context})"
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([Problem("", line, f"YAML: {message}", filename)]) from None
    except YAMLError as exc:
        raise ConfigError([Problem("", None, f"YAML: {exc}", filename)]) from None
    except (ValueError, TypeError, AssertionError, OverflowError) as exc:
        # ruamel's constructors raise these on values the composer let through; nothing
        # is known to reach here, but a config is text from outside: report, never crash.
        raise ConfigError([Problem("", None, f"YAML: cannot read a value: {exc}", filename)]) from None

    if tree is None:
        raise ConfigError([Problem("", 1, "the file is empty; expected a site config", filename)])
    if not isinstance(tree, Mapping):
        raise ConfigError(
            [Problem("", 1, "expected a mapping with site, journal, io_modules and lanes", filename)]
        )

    data = _plain(tree)
    context = {CONTEXT_BASE_DIR: base, CONTEXT_SKIP_CROSS_CHECKS: True}
    problems: list[Problem] = []
    try:
        config = SiteConfig.model_validate(data, context=context)
    except ValidationError as exc:
        config = None
        problems.extend(_from_pydantic(err, tree, filename) for err in exc.errors())
        parts = SiteParts.from_raw(data, context)
    else:
        parts = SiteParts.from_config(config)
    problems.extend(_from_issue(issue, tree, filename) for issue in cross_check(parts))

    if problems or config is None:
        problems.sort(key=lambda p: (p.line is None, p.line or 0))
        raise ConfigError(problems)
    return config


def check_config(path: str | PathLike[str]) -> int:
    """`gatectl check-config`: print a summary and return 0, or every problem and return 2."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    print(f"OK: {summarise(config)}")
    return 0


def summarise(config: SiteConfig) -> str:
    """One line: what this config describes."""
    lanes = ", ".join(f"{lane.id} {lane.kind} {lane.direction}" for lane in config.lanes)
    n_lanes = len(config.lanes)
    mqtt = (
        f"mqtt {config.mqtt.host}:{config.mqtt.port} {config.mqtt.topic_prefix}"
        if config.mqtt is not None
        else "no mqtt"
    )
    return (
        f"{n_lanes} lane{'s' * (n_lanes != 1)} ({lanes}); "
        f"{_count(len(config.authorities), 'authority', 'authorities')}, "
        f"{_count(len(config.io_modules), 'IO module', 'IO modules')}, "
        f"{_count(len(config.administrative_vehicles), 'administrative vehicle', 'administrative vehicles')}, "
        f"{_count(len(config.staff), 'staff card', 'staff cards')}; "
        f"site {config.site.id}, journal {config.journal.path}, "
        f"api {config.local_api.listen}, {mqtt}"
    )


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _too_large() -> str:
    return f"larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MB; a site config is a few KB"


# --------------------------------------------------------------------------------------
# YAML with a budget


_TAG_INT = "tag:yaml.org,2002:int"
_TAG_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_TAG_STR = "tag:yaml.org,2002:str"
_MAX_INT_CHARS = 32
_BAD_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


class _BoundedComposer(Composer):
    """ruamel's composer, refusing what a site config never needs and a hostile file uses.

    Aliases are cheap to compose (they share one node) but every reader after the composer
    expands them: an 8-level alias bomb of 2 KB is billions of values. So while composing,
    the size and depth of the document *as expanded* are counted, exactly and in linear
    time: each node counts once, each alias counts the expanded size of what it names
    (measured once per anchor). The first alias that takes the count over
    MAX_CONFIG_NODES, or the depth over MAX_CONFIG_DEPTH, is refused at its line.

    Also refused at their line: an alias inside its own anchor (an infinite value), an
    anchor defined twice (which one an alias means is easy to misread),
    explicit tags (``!!binary``, ``!!python/object``, ``!!set``...: a config needs none,
    and ruamel's constructors for them raise on bad input), keys that are not plain values,
    integers longer than 32 characters, and control characters or lone surrogates in text.
    Dates and times stay text, so pydantic reports a bad one with its line.
    """

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self._depth = 0  # our own count: the composer recurses, so this is checked before Python's limit
        self._expanded = 0
        self._measured: dict[int, tuple[int, int]] = {}  # id(node) -> (size, depth)

    def _refuse(self, message: str, mark: Any) -> ComposerError:
        return ComposerError(None, None, message, mark)

    def _count(self, n: int, mark: Any) -> None:
        self._expanded += n
        if self._expanded > MAX_CONFIG_NODES:
            raise self._refuse(
                f"more than {MAX_CONFIG_NODES} values once aliases are expanded (an alias bomb?); "
                "a site config needs far fewer",
                mark,
            )

    def _measure(self, node: Node) -> tuple[int, int]:
        """(values, depth) of ``node`` expanded; memoised, so shared nodes cost once."""
        known = self._measured.get(id(node))
        if known is not None:
            return known
        if isinstance(node, MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, CollectionNode):
            children = list(node.value)
        else:
            children = []
        size, depth = 1, 0
        for child in children:
            child_size, child_depth = self._measure(child)
            size += child_size
            depth = max(depth, child_depth)
        result = (size, depth + 1)
        self._measured[id(node)] = result
        return result

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if isinstance(parent, MappingNode) and index is None:
            target = self.anchors.get(event.anchor) if isinstance(event, AliasEvent) else None
            if not isinstance(event, (ScalarEvent, AliasEvent)) or (
                target is not None and not isinstance(target, ScalarNode)
            ):
                raise self._refuse("a mapping key must be a plain value, not a list or a mapping", event.start_mark)
        if isinstance(event, AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # else ruamel reports the undefined alias
                if isinstance(target, CollectionNode) and target.end_mark is None:
                    raise self._refuse(f"alias *{event.anchor} is inside its own anchor", event.start_mark)
                size, depth = self._measure(target)
                self._count(size, event.start_mark)
                if self._depth + depth > MAX_CONFIG_DEPTH:
                    raise self._refuse(
                        f"nested more than {MAX_CONFIG_DEPTH} levels deep once aliases are expanded",
                        event.start_mark,
                    )
            return super().compose_node(parent, index)
        if isinstance(event, (ScalarEvent, CollectionStartEvent)):
            if event.anchor is not None and event.anchor in self.anchors:
                raise self._refuse(f"anchor &{event.anchor} is defined twice", event.start_mark)
            tag = event.ctag
            if tag is not None and str(tag) != "!":
                shown = str(tag).replace("tag:yaml.org,2002:", "!!")
                raise self._refuse(
                    f"explicit tag {shown} is not used in a site config; quote the value instead", event.start_mark
                )
        self._count(1, event.start_mark)
        self._depth += 1
        if self._depth > MAX_CONFIG_DEPTH:
            raise self._refuse(f"nested more than {MAX_CONFIG_DEPTH} levels deep; a site config is about six",
                               event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_scalar_node(self, anchor: Any) -> Any:
        node = super().compose_scalar_node(anchor)
        value = node.value
        bad = _BAD_CHAR.search(value)
        if bad is not None:
            what = "a lone surrogate" if "\ud800" <= bad.group() <= "\udfff" else "a control character"
            raise self._refuse(f"{what} ({bad.group()!r}) in a value", node.start_mark)
        if node.tag == _TAG_INT and len(value) > _MAX_INT_CHARS:
            raise self._refuse(f"a number of {len(value)} characters is no config value", node.start_mark)
        if node.tag == _TAG_TIMESTAMP:
            node.tag = _TAG_STR
        return node


# --------------------------------------------------------------------------------------
# ruamel tree → plain data


def _plain(node: Any) -> Any:
    """ruamel's round-trip types → dict, list, str, int, float, bool, None.

    ruamel returns int/float/str subclasses that carry formatting; pydantic should see
    exactly what the YAML said, and nothing else.
    """
    if isinstance(node, Mapping):
        return {_plain(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node  # None, dates and times


# --------------------------------------------------------------------------------------
# Locations → lines


def _locate(tree: Any, loc: Loc, *, missing_ok: bool) -> tuple[Loc, int | None]:
    """Follow `loc` through the ruamel tree.

    Returns the part of `loc` that names document nodes (dropping pydantic's union tags)
    and the 1-based line of the deepest node reached: a key's own line, a list item's
    line. If the last segment is absent (a missing key) it is kept in the path and the
    line is its parent's.
    """
    node = tree
    line = _node_line(tree)
    path: list[str | int] = []
    for n, seg in enumerate(loc):
        last = n == len(loc) - 1
        if seg == "[key]":
            continue  # pydantic: the error is about the key itself, which we are on
        if isinstance(node, Mapping) and seg in node:
            line = _key_line(node, seg, line)
            node = node[seg]
            path.append(seg)
        elif isinstance(node, list) and isinstance(seg, int) and 0 <= seg < len(node):
            line = _item_line(node, seg, line)
            node = node[seg]
            path.append(seg)
        elif last and missing_ok and isinstance(node, Mapping):
            path.append(seg)
        # else: a union tag such as "modbus-tcp" or "windows"; not in the document
    return tuple(path), line


def _node_line(node: Any) -> int | None:
    lc = getattr(node, "lc", None)
    return lc.line + 1 if lc is not None and lc.line is not None else None


def _key_line(node: Any, key: Any, fallback: int | None) -> int | None:
    try:
        return node.lc.key(key)[0] + 1
    except (AttributeError, KeyError, TypeError):
        return fallback  # e.g. a key merged in from an anchor


def _item_line(node: Any, idx: int, fallback: int | None) -> int | None:
    try:
        return node.lc.item(idx)[0] + 1
    except (AttributeError, KeyError, TypeError):
        return fallback


def _from_issue(issue: Issue, tree: Any, filename: str) -> Problem:
    path, line = _locate(tree, issue.loc, missing_ok=True)
    return Problem(yaml_path(path), line, issue.message, filename)


def _from_pydantic(err: Mapping[str, Any], tree: Any, filename: str) -> Problem:
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    message = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    message = _PYTHON_TYPE.sub("", message)  # "… dictionary or instance of LaneConfig"

    if kind in ("union_tag_invalid", "union_tag_not_found"):
        # Point at the discriminator key (or, when it is missing, name it).
        discriminator = str(ctx.get("discriminator", "")).strip("'\"")
        if discriminator:
            loc = (*loc, discriminator)
        tags = _union_tags(loc[:-1])
        expected = ", ".join(tags) if tags else str(ctx.get("expected_tags", ""))
        if kind == "union_tag_not_found":
            message = f"Field required; one of: {expected}"
        else:
            message = f"unknown {discriminator} {ctx.get('tag')!r}; one of: {expected}"
        path, line = _locate(tree, loc, missing_ok=True)
        return Problem(yaml_path(path), line, message, filename)

    if kind == "extra_forbidden":
        key = loc[-1]
        allowed = _allowed_keys(loc[:-1])
        message = f"unknown key {key!r}"
        if allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            message += f"; did you mean {close[0]!r}?" if close else f"; expected one of: {', '.join(allowed)}"
        path, line = _locate(tree, loc, missing_ok=False)
        return Problem(yaml_path(path), line, message, filename)

    path, line = _locate(tree, loc, missing_ok=kind == "missing")
    if kind != "missing":
        value = err.get("input")
        got = _show(value)
        already_quoted = isinstance(value, str) and (got in message or repr(value) in message)
        if got is not None and not already_quoted:
            message += f" (got {got})"
            if kind == "string_type" and isinstance(err.get("input"), (int, float)):
                message += "; quote it"
    return Problem(yaml_path(path), line, message, filename)


_PYTHON_TYPE = re.compile(r" or instance of \w+")


def _show(value: Any) -> str | None:
    """A scalar input as YAML shows it, or None for mappings and lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:57] + '..."'
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return None


# --------------------------------------------------------------------------------------
# Model types along a location (for "did you mean" and the expected union tags)


def _type_at(loc: Loc) -> Any:
    tp: Any = SiteConfig
    for seg in loc:
        tp = _step(tp, seg)
        if tp is None:
            return None
    return _unwrap(tp)


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is typing.Annotated:
            tp = get_args(tp)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _step(tp: Any, seg: str | int) -> Any:
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        info = tp.model_fields.get(str(seg)) if isinstance(seg, str) else None
        return info.annotation if info is not None else None
    origin = get_origin(tp)
    args = get_args(tp)
    if origin in (list, tuple) and isinstance(seg, int) and args:
        return args[0]
    if origin is dict and isinstance(seg, str) and len(args) == 2:
        return args[1]
    if origin in (typing.Union, types.UnionType) and isinstance(seg, str):
        for member in args:
            member = _unwrap(member)
            if seg in _protocol_tags(member):
                return member
    return None


def _protocol_tags(member: Any) -> tuple[str, ...]:
    if isinstance(member, type) and issubclass(member, BaseModel):
        info = member.model_fields.get("protocol")
        if info is not None and get_origin(info.annotation) is typing.Literal:
            return tuple(get_args(info.annotation))
    return ()


def _allowed_keys(loc: Loc) -> list[str]:
    tp = _type_at(loc)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _union_tags(loc: Loc) -> list[str]:
    tp = _type_at(loc)
    if get_origin(tp) in (typing.Union, types.UnionType):
        return [tag for member in get_args(tp) for tag in _protocol_tags(_unwrap(member))]
    return []
