"""Write the generated parts of the reference docs from the code, so they cannot drift.

    .venv/bin/python docs/reference/generate.py           # rewrite the generated blocks
    .venv/bin/python docs/reference/generate.py --check   # exit 1 and name the stale ones

A generated block sits between two HTML comments in a Markdown file::

    <!-- generated: config-keys -->
    ...
    <!-- end generated: config-keys -->

Everything outside the markers is written by hand; the tests in ``tests/docs`` run
``--check``'s comparison, so a config key, an event type or a display text added to the
code without regenerating the docs fails the run.

Sources: the pydantic config models (``gatectl/config/models.py``) for every config key,
its default, range and meaning; ``gatectl/lane/display.py`` for the display texts;
``gatectl/events.py`` for the event types and their fields.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, StringConstraints, WithJsonSchema
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

HERE = Path(__file__).resolve().parent

# ------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class Row:
    key: str
    kind: str
    default: str
    limits: str
    meaning: str


def _flatten(tp: Any) -> tuple[Any, list[Any]]:
    """``tp`` without its Annotated layers, and their metadata, outermost first."""
    meta: list[Any] = []
    while get_origin(tp) is Annotated:
        args = get_args(tp)
        tp = args[0]
        meta = list(args[1:]) + meta  # inner layers are the base; outer ones narrow them
    out: list[Any] = []
    for m in meta:
        if isinstance(m, FieldInfo):
            out.extend(m.metadata)
        else:
            out.append(m)
    return tp, out


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _strip_none(tp: Any) -> tuple[Any, bool]:
    if _is_union(tp):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)):
            return (args[0] if len(args) == 1 else Union[tuple(args)]), True
    return tp, False


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}".replace(",", " ") if isinstance(value, int) and abs(value) >= 10_000 else str(value)


def _limits(meta: list[Any], base: Any, unit: str) -> list[str]:
    low = high = None
    low_open = high_open = False
    min_len = max_len = None
    pattern = None
    enum = None
    one_line = False
    for m in meta:
        if isinstance(m, at.Ge):
            low, low_open = m.ge, False
        elif isinstance(m, at.Gt):
            low, low_open = m.gt, True
        elif isinstance(m, at.Le):
            high, high_open = m.le, False
        elif isinstance(m, at.Lt):
            high, high_open = m.lt, True
        elif isinstance(m, at.MinLen):
            min_len = m.min_length
        elif isinstance(m, at.MaxLen):
            max_len = m.max_length
        elif isinstance(m, StringConstraints):
            min_len = m.min_length if m.min_length is not None else min_len
            max_len = m.max_length if m.max_length is not None else max_len
            pattern = m.pattern or pattern
        elif isinstance(m, WithJsonSchema) and m.json_schema and "enum" in m.json_schema:
            enum = m.json_schema["enum"]
        elif "_no_control" in getattr(getattr(m, "func", None), "__qualname__", ""):
            one_line = True
        elif getattr(getattr(m, "func", None), "__name__", "") == "_card":
            pattern = "1–32 hex digits, stored uppercase"
        elif getattr(getattr(m, "func", None), "__name__", "") == "_sha256_hex":
            max_len, pattern = None, "64 hex digits"
    out = []
    if enum is not None:
        out.append("one of " + ", ".join(_num(v) for v in enum))
    if low is not None or high is not None:
        if low is not None and high is not None and not low_open and not high_open:
            out.append(f"{_num(low)}–{_num(high)}{unit}")
        else:
            if low is not None:
                out.append(f"{'>' if low_open else '≥'} {_num(low)}{unit}")
            if high is not None:
                out.append(f"{'<' if high_open else '≤'} {_num(high)}{unit}")
    if min_len is not None or max_len is not None:
        what = "characters" if base is str else "entries"
        if min_len and max_len is not None:
            out.append(f"{min_len}–{_num(max_len)} {what}")
        elif max_len is not None:
            out.append(f"at most {_num(max_len)} {what}")
        else:
            out.append(f"at least {min_len} {'entry' if what == 'entries' else 'character'}"
                       if min_len == 1 else f"at least {min_len} {what}")
    if pattern is not None:
        out.append(pattern if " " in pattern else f"`{pattern}`")
    if one_line:
        out.append("one line, no control characters")
    return out


def _scalar_name(tp: Any, key: str) -> str:
    from gatectl.config.models import OUTPUT_ROLES, Point, TimeWindow, WeeklyHours

    if get_origin(tp) is Literal:
        return "one of " + ", ".join(f"`{v}`" for v in get_args(tp))
    if tp is bool:
        return "true/false"
    if tp is int:
        return "integer"
    if tp is float:
        return "number"
    if tp is str:
        return "text"
    if tp is bytes:
        return "Ed25519 public key, base64 of the raw 32 bytes"
    if tp is date:
        return "date `YYYY-MM-DD`"
    if tp is Path:
        return "file path"
    if tp is Point:
        leaf = key.rsplit(".", 1)[-1]
        return "coil point `MODULE:coil:N`" if leaf in OUTPUT_ROLES else "input point `MODULE:di:N`"
    if tp is TimeWindow:
        return 'window `"HH:MM-HH:MM"`'
    if tp is WeeklyHours:
        return "hours by day"
    return getattr(tp, "__name__", str(tp))


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "(the defaults below)"
    elif info.default is PydanticUndefined:
        return "**required**"
    else:
        value = info.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (int, float)):
        return f"`{_num(value)}`"
    return f"`{json.dumps(value, ensure_ascii=False)}`"


#: The models' references to the interface sections, as links within these docs.
_REFERENCES = {
    "2.1": "[card readers](wire-formats.md#card-readers)",
    "2.2": "[weighing indicators](wire-formats.md#weighing-indicators)",
    "3.1": "[http-json](wire-formats.md#http-json)",
    "3.2": "[gather-xml](wire-formats.md#gather-xml)",
    "5": "[MQTT](mqtt.md)",
}


def _meaning(info: FieldInfo) -> str:
    text = info.description or info.title or ""
    text = re.sub(r"CONTRACT (\d(?:\.\d)?)", lambda m: _REFERENCES.get(m.group(1), m.group(0)), text)
    return text.replace("|", "\\|").replace("\n", " ")


def _union_models(tp: Any) -> list[type[BaseModel]] | None:
    tp, _ = _flatten(tp)
    if _is_union(tp):
        models = [_flatten(a)[0] for a in get_args(tp)]
        if all(_is_model(m) for m in models):
            return models
    return None


def _protocol(model: type[BaseModel]) -> str:
    return get_args(model.model_fields["protocol"].annotation)[0]


Group = tuple[str, list[Row]]


def _walk(model: type[BaseModel], prefix: str, rows: list[Row], groups: list[Group]) -> None:
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        tp, nullable = _strip_none(info.annotation)
        tp, inner = _flatten(tp)
        meta = inner + list(info.metadata)
        unit = " ms" if name.endswith("_ms") else (" kg" if name.endswith("_kg") else "")
        default = _default(info)
        if nullable and default == "**required**":
            default = "none"
        origin = get_origin(tp)
        if _is_model(tp):
            rows.append(Row(key, "section" + (" (optional)" if nullable else ""), default, "", _meaning(info)))
            _walk(tp, key + ".", rows, groups)
            continue
        if origin in (list, tuple) and get_args(tp):
            item, item_meta = _flatten(get_args(tp)[0])
            if _is_model(item):
                rows.append(Row(key, "list", default, "; ".join(_limits(meta, list, "")), _meaning(info)))
                _walk(item, key + "[].", rows, groups)
                continue
            kind = f"list of {_scalar_name(item, key)}"
            limits = _limits(meta, list, "") + _limits(item_meta, item, unit)
            rows.append(Row(key, kind, default, "; ".join(limits), _meaning(info)))
            continue
        if origin is dict:
            k_tp, v_tp = get_args(tp)
            k_tp, k_meta = _flatten(k_tp)
            variants = _union_models(v_tp)
            if variants is not None:
                limits = _limits(meta, dict, "") + [f"names {x}" for x in _limits(k_meta, str, "")]
                rows.append(Row(key, "mapping of name → section", default, "; ".join(limits), _meaning(info)))
                for variant in variants:
                    sub: list[Row] = []
                    _walk(variant, f"{key}.<name>.", sub, groups)
                    groups.append((f"`{key}.<name>` with `protocol: {_protocol(variant)}`", sub))
                continue
            v_tp, v_meta = _flatten(v_tp)
            kind = f"mapping of {_scalar_name(k_tp, key)} → {_scalar_name(v_tp, key)}"
            limits = _limits(meta, dict, "") + _limits(v_meta, str, "")
            rows.append(Row(key, kind, default, "; ".join(limits), _meaning(info)))
            continue
        if _is_union(tp):  # open_hours
            kinds = []
            for arg in get_args(tp):
                arg, _ = _flatten(arg)
                if get_origin(arg) is Literal:
                    kinds.append(" or ".join(f"`{json.dumps(v)}`" for v in get_args(arg)))
                elif get_origin(arg) in (list, tuple):
                    kinds.append("a list of windows (every day)")
                else:
                    kinds.append(_scalar_name(arg, key))
            rows.append(Row(key, ", ".join(kinds), default, "", _meaning(info)))
            continue
        rows.append(Row(key, _scalar_name(tp, key), default, "; ".join(_limits(meta, tp, unit)), _meaning(info)))


def config_groups() -> list[Group]:
    """Every config key, grouped by top-level section (and by protocol where it varies)."""
    from gatectl.config.models import SiteConfig

    rows: list[Row] = []
    variants: list[Group] = []
    _walk(SiteConfig, "", rows, variants)
    groups: list[Group] = []
    for row in rows:
        top = re.split(r"[.\[]", row.key, maxsplit=1)[0]
        if not groups or groups[-1][0] != f"`{top}`":
            groups.append((f"`{top}`", []))
        groups[-1][1].append(row)
    out: list[Group] = []
    for heading, section in groups:
        out.append((heading, section))
        out.extend(g for g in variants if g[0].startswith(heading[:-1] + "."))
    return out


def config_keys() -> list[str]:
    """Every key path the models know, as the doc names them (``lanes[].barrier.pulse_ms``)."""
    return [row.key for _, rows in config_groups() for row in rows]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(out)


def block_config_keys() -> str:
    parts = []
    for heading, rows in config_groups():
        parts.append(f"#### {heading}\n")
        parts.append(_table(["key", "type", "default", "range / limit", "meaning"],
                            [[f"`{r.key}`", r.kind, r.default, r.limits, r.meaning] for r in rows]))
        parts.append("")
    return "\n".join(parts).rstrip()


def block_cross_checks() -> str:
    from gatectl.config.models import CROSS_CHECKS

    lines = []
    for check in CROSS_CHECKS:
        doc = " ".join((check.__doc__ or "").split())
        doc = re.sub(r"^CONTRACT [\d.]+: (.)", lambda m: m.group(1).upper(), doc)  # the docs stand alone
        lines.append(f"- {doc}")
    return "\n".join(lines)


def block_file_limits() -> str:
    from gatectl.config import loader

    return "\n".join([
        f"- the file is at most {_num(loader.MAX_CONFIG_BYTES)} bytes ({loader.MAX_CONFIG_BYTES // (1024 * 1024)} MB);",
        f"- nested at most {loader.MAX_CONFIG_DEPTH} levels deep;",
        f"- YAML anchors and aliases may expand it to at most {_num(loader.MAX_CONFIG_NODES)} values;",
        "- explicit YAML tags (`!!python/...`, `!!binary`, ...) are refused.",
    ])


# ------------------------------------------------------------------------------ display

#: When the lane display shows each fixed text (the core's situations).
STATE_TEXTS: dict[str, str] = {
    "TEXT_WELCOME": "idle, the lane open: waiting for a vehicle",
    "TEXT_CARD": "a vehicle on the arrival loop, no card read yet (after a restart: until it shows its card again, held or not)",
    "TEXT_WEIGHING": "card read, waiting for a stable weight",
    "TEXT_DECIDING": "the release authority (or the lane's own list) is being asked",
    "TEXT_RELEASED": "released and lifted (unless the authority gave a hint: then the hint)",
    "TEXT_EMERGENCY": "the emergency button lifted the barrier",
    "TEXT_ONE_BY_ONE": "a second vehicle came under one lift (tailgating)",
    "TEXT_FORCED": "a vehicle reached the barrier with no lift (forced passage)",
    "TEXT_FAULT": "idle with a faulty device",
    "TEXT_FAULT_HELD": "first part of a hold for a device fault or a journal error (then where to go)",
    "TEXT_CLOSED": "idle outside open hours (or closed by customs)",
    "TEXT_INTERRUPTED": "a lift whose authorisation was spent but the barrier did not rise",
    "TEXT_INSPECTION": "second part of a hold on a goods lane: go to the inspection area",
    "TEXT_BACK_OUT": "second part of a customs denial: back out",
    "TEXT_GUARD": "second part of a hold on an administrative or personnel lane",
    "TEXT_NO_ANSWER": "first part of a hold when the authority did not answer (timeout, connection, malformed, mismatch)",
    "TEXT_NO_CARD": "first part of a hold: no card read within `card_wait_ms`",
    "TEXT_NO_WEIGHT": "first part of a hold: no stable weight within `weigh_wait_ms`",
    "TEXT_NO_AUTHORITY": "first part of a hold: the lane has no release authority",
    "TEXT_DENIED": "first part of a `deny` the authority gave no hint for",
    "TEXT_HELD": "first part of a `hold` the authority gave no hint for",
    "TEXT_TO_INSPECT": "first part of an `inspect` the authority gave no hint for",
}


def _display_texts() -> dict[str, str]:
    from gatectl.lane import display

    return {n: v for n, v in vars(display).items() if n.startswith("TEXT_") and isinstance(v, str)}


def block_display_states() -> str:
    texts = _display_texts()
    missing = sorted(set(texts) - set(STATE_TEXTS))
    if missing:
        raise SystemExit(f"docs/reference/generate.py: say when {', '.join(missing)} is shown (STATE_TEXTS)")
    return _table(["when", "display", "constant"],
                  [[STATE_TEXTS[n], texts[n], f"`{n}`"] for n in STATE_TEXTS if n in texts])


def block_hold_reasons() -> str:
    from gatectl.lane.display import DECISION_TEXTS, HOLD_TEXTS

    rows = [[f"`{r}`", "the authority's decision (no hint given)", t] for r, t in DECISION_TEXTS.items()]
    rows += [[f"`{r}`", "the lane", t] for r, t in HOLD_TEXTS.items()]
    return _table(["reason", "decided by", "first part of the display"], rows)


def block_display_table() -> str:
    from gatectl.lane.display import DISPLAY_TABLE, hold_text

    return _table(["lane kind", "reason", "authority's hint", "display"],
                  [[kind, f"`{reason}`", hint if hint is not None else "—", hold_text(reason, hint, kind)]
                   for kind, reason, hint in DISPLAY_TABLE])


# ------------------------------------------------------------------------------ events


def block_event_types() -> str:
    from gatectl import events

    rows = []
    for type_ in sorted(events._TYPES):
        for cls in events._TYPES[type_]:
            fixed = ", ".join(f"`{k}`: `{v}`" for k, v in cls.FIXED.items())
            fields = ", ".join(f"`{f.key}`" + ("?" if f.omit else "") for f in cls._FIELDS)
            rows.append([f"`{type_}`", fixed, fields])
    return _table(["type", "variant", "fields (`?`: left out while empty)"], rows)


# ------------------------------------------------------------------------------ files

BLOCKS: dict[str, dict[str, Callable[[], str]]] = {
    "configuration.md": {
        "config-keys": block_config_keys,
        "cross-checks": block_cross_checks,
        "file-limits": block_file_limits,
    },
    "display.md": {
        "display-states": block_display_states,
        "hold-reasons": block_hold_reasons,
        "display-table": block_display_table,
    },
    "mqtt.md": {
        "event-types": block_event_types,
    },
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated: {re.escape(name)} -->\n)(.*?)(<!-- end generated: {re.escape(name)} -->)",
                      re.DOTALL)


def render(text: str, blocks: dict[str, Callable[[], str]], where: str = "") -> str:
    """``text`` with every generated block rewritten; each block must be there once."""
    for name, make in blocks.items():
        pattern = _pattern(name)
        if len(pattern.findall(text)) != 1:
            raise ValueError(f"{where}: the markers of generated block {name!r} must appear once")
        body = make()
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(3), text)
    return text


def stale(directory: Path = HERE) -> Iterator[tuple[Path, str, str]]:
    """(path, text now, text as generated) for each doc whose generated blocks are out of date."""
    for name, blocks in BLOCKS.items():
        path = directory / name
        text = path.read_text(encoding="utf-8")
        new = render(text, blocks, str(path))
        if new != text:
            yield path, text, new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say which docs are out of date (exit 1)")
    args = parser.parse_args(argv)
    found = list(stale())
    for path, _, new in found:
        if args.check:
            print(f"{path}: out of date; run .venv/bin/python docs/reference/generate.py", file=sys.stderr)
        else:
            path.write_text(new, encoding="utf-8")
            print(f"{path}: rewritten")
    return 1 if (found and args.check) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent.parent))
    sys.exit(main())
