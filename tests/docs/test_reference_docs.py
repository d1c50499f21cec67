"""The reference docs (docs/reference/) against the code: config keys, routes, topics,
event types, display texts, approval and command fields. A key, route or text added to
the code and not to the docs fails here."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference"


def _generator():
    spec = importlib.util.spec_from_file_location("docs_reference_generate", REFERENCE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _generator()


def doc(name: str) -> str:
    return (REFERENCE / name).read_text(encoding="utf-8")


def test_generated_blocks_are_current() -> None:
    """Every generated block equals what the code generates now (run generate.py to fix)."""
    stale = [str(path.relative_to(ROOT)) for path, _, _ in gen.stale()]
    assert not stale, f"out of date: {stale}; run .venv/bin/python docs/reference/generate.py"


def test_every_config_key_of_the_models_is_in_configuration_md() -> None:
    text = doc("configuration.md")
    keys = gen.config_keys()
    assert len(keys) > 80  # the walk reached every section
    for key in ("lanes[].authorities", "lanes[].weighs", "lanes[].open_hours", "calendar.holidays",
                "lanes[].plate_camera.max_age_ms", "lanes[].barrier.backout_wait_ms",
                "lanes[].barrier.weigh_wait_ms", "lanes[].barrier.card_grace_ms", "local_api.users[].role",
                "local_api.users[].token_sha256", "trust.customs", "trust.park", "ledger.every_days",
                "administrative_vehicles[].plate", "mqtt.tls.ca_file", "authorities.<name>.release_codes",
                "io_modules.<name>.stopbits"):
        assert key in keys
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, f"config keys not in docs/reference/configuration.md: {missing}"


def test_configuration_md_names_each_default_and_range() -> None:
    """A row of the generated table carries the model's default and range."""
    text = doc("configuration.md")
    assert "| `lanes[].barrier.backout_wait_ms` | integer | `5000` | 500–600 000 ms |" in text
    assert "| `lanes[].barrier.card_grace_ms` | integer | `5000` | 0–600 000 ms |" in text
    assert "| `local_api.listen` | text | `\"127.0.0.1:8470\"` |" in text
    assert "| `lanes[].kind` | one of `bonded`, `ecommerce_9610`, `non_bonded`, `administrative`, " \
           "`personnel`, `shared` | **required** |" in text


def _table_rows(text: str, start: str, end: str) -> list[list[str]]:
    body = text[text.index(start):text.index(end)]
    rows = []
    for line in body.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows[1:]  # the header


def test_display_md_table_equals_display_table_of_the_code() -> None:
    """R6: each (lane kind, reason, hint) row of display.md is what hold_text says."""
    from gatectl.lane.display import DISPLAY_TABLE, hold_text

    rows = _table_rows(doc("display.md"), "<!-- generated: display-table -->", "<!-- end generated: display-table -->")
    expected = [[kind, f"`{reason}`", hint if hint is not None else "—", hold_text(reason, hint, kind)]
                for kind, reason, hint in DISPLAY_TABLE]
    assert rows == expected
    texts = {row[3] for row in rows}
    assert "不予放行；请倒车驶离" in texts  # deny: back out, not the inspection area
    assert not any(t.count("待检区") > 1 for t in texts)


def test_display_md_names_every_text_of_the_code() -> None:
    from gatectl.lane import display

    text = doc("display.md")
    for name, value in vars(display).items():
        if name.startswith("TEXT_") and isinstance(value, str):
            assert value in text, name
    for reason, value in display.HOLD_TEXTS.items():
        assert f"`{reason}`" in text and value in text


def _app_routes(tmp_path: Path) -> list[tuple[str, str, frozenset[str]]]:
    from gatectl.api import make_app
    from gatectl.config import load_config
    from gatectl.daemon import assemble

    config = tmp_path / "site.yaml"
    config.write_text((ROOT / "config" / "site.example.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    site, setups = assemble(load_config(config))
    try:
        app = make_app(site, *setups)
        out = []
        for route in app.router.routes():
            if route.method == "HEAD":
                continue
            path = route.resource.canonical if route.resource is not None else ""
            out.append((route.method, path, frozenset(getattr(route.handler, "gatectl_roles", ()))))
        return out
    finally:
        site.journal.close()


def test_every_route_of_the_app_is_in_api_md_with_its_roles(tmp_path: Path) -> None:
    from gatectl.api import ANY_ROLE

    text = doc("api.md")
    rows = {(r[0], r[1].strip("`").replace("/…", "")): r[2] for r in _table_rows(text, "## Routes", "Every POST body")}
    routes = _app_routes(tmp_path)
    assert len(routes) > 30
    for method, path, roles in routes:
        assert (method, path) in rows, f"{method} {path} is not in docs/reference/api.md"
        if method == "POST":
            cell = rows[(method, path)]
            # "customs; any role relaying a signed command": the route takes every role and
            # checks the rest inside.
            documented = set(ANY_ROLE) if "any role" in cell else {w.strip(" ,;") for w in cell.split()}
            assert set(roles) == documented, f"{method} {path}: roles {sorted(roles)} vs doc {cell!r}"


def test_api_md_names_every_lane_state() -> None:
    from gatectl.lane.core import LaneState

    text = doc("api.md")
    for state in LaneState:
        assert f"`{state.value}`" in text


def test_mqtt_md_names_every_topic_and_event_type() -> None:
    from gatectl import events

    text = doc("mqtt.md")
    source = (ROOT / "gatectl" / "mqtt.py").read_text(encoding="utf-8")
    topics = set(re.findall(r'f"\{self\.prefix\}/([a-z/-]+)"', source))
    assert {"status", "alarms", "cmd/approvals", "cmd/spot-checks", "cmd/lane-hours", "cmd/replay"} <= topics
    for topic in topics | {"lanes/{lane}/state", "lanes/{lane}/events", "site/events"}:
        assert f"`{{prefix}}/{topic}`" in text, topic
    for type_ in events.TYPES:
        assert f"`{type_}`" in text, type_
    for word in ("QoS 1", "last will", "last_seq", "ledger.exported", "retained"):
        assert word in text


def test_approvals_md_names_every_field_and_refusal() -> None:
    from gatectl.approvals import REASON_CODES, Approval
    from gatectl.commands import COMMANDS, HoursCommand, SpotCheckCommand

    text = doc("approvals.md")
    for field in Approval.model_fields:
        assert f"`{field}`" in text, field
    for code in REASON_CODES:
        assert f"`{code}`" in text, code
    for command in COMMANDS:
        assert f"`{command}`" in text
    for field in set(SpotCheckCommand.model_fields) | set(HoursCommand.model_fields):
        assert f"`{field}`" in text or f'"{field}"' in text, field
    for code in ("unknown_command", "wrong_topic", "replayed", "expired", "not_yet_valid"):
        assert f"`{code}`" in text


def test_wire_formats_md_names_every_format() -> None:
    from drivers.codecs.card import CardFormat
    from drivers.codecs.weight import WeightFormat

    text = doc("wire-formats.md")
    for fmt in [*CardFormat, *WeightFormat, "http-json", "gather-xml"]:
        assert f"`{fmt}`" in text
    assert "E2 5C 4B 89" in text and "pass-confirmations" in text and "function code 2" in text


@pytest.mark.parametrize("name", ["configuration.md", "api.md", "mqtt.md", "approvals.md", "wire-formats.md",
                                  "display.md"])
def test_reference_links_resolve(name: str) -> None:
    """Links between the reference docs point at files and headings that exist."""
    text = doc(name)
    for target, anchor in re.findall(r"\]\(([a-z-]+\.md)(?:#([a-z0-9-]+))?\)", text):
        linked = REFERENCE / target
        assert linked.exists(), target
        if anchor:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
            slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower().replace("`", "")).replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{name}: {target}#{anchor}"
