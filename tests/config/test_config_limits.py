"""Hostile and careless config files (#13): every number has a range, every text and list a
length, and the YAML itself a size, a depth and an alias budget. Each problem is refused by
``check-config`` with its YAML path and line (exit 2), never accepted to crash the daemon at
run time, never a traceback.

The cases are the issue's (``card_wait_ms: 10000000000000000``, the 8-level alias bomb)
and their neighbours: huge, negative, zero, wrong type, infinite, long, many, deep.
"""

from __future__ import annotations

import base64
import re
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gatectl.config import ConfigError, Problem, SiteConfig, check_config, load_config, parse_config
from gatectl.config.loader import MAX_CONFIG_BYTES, MAX_CONFIG_NODES

KEY = base64.b64encode(bytes(range(32))).decode()

# Every bounded key is written out, so each case edits one line of it.
BASE = f"""\
site:
  id: limits
  name: 测试园区
journal:
  path: journal.db
local_api:
  listen: 127.0.0.1:8470
  token: change-me
mqtt:
  host: 127.0.0.1
  port: 1883
  client_id: lanepc-01
trust:
  customs: ["{KEY}"]
authorities:
  jg2:
    protocol: http-json
    url: http://127.0.0.1:8480/
    timeout_ms: 3000
  logistics:
    protocol: gather-xml
    host: 127.0.0.1
    port: 8481
    area_id: "5301000001"
    timeout_ms: 2500
    release_codes: ["^00"]
io_modules:
  io1:
    protocol: modbus-tcp
    host: 127.0.0.1
    port: 5020
    poll_ms: 50
  rtu1:
    protocol: modbus-rtu
    port: /dev/ttyS9
    baudrate: 19200
    unit: 2
    poll_ms: 60
administrative_vehicles:
  - {{card: "0100E2850E", plate: 云A12345, curb_weight_kg: 1800}}
staff:
  - {{card: "5A5A5A5A5A", name: 王保安}}
lanes:
  - id: B1-IN
    name: 保税进区
    kind: bonded
    direction: in
    channel_no: "K001"
    authority: jg2
    card_reader:
      port: /dev/ttyUSB0
      baudrate: 9600
      format: stx-hex-xor
      silence_ms: 60000
    weighbridge:
      port: /dev/ttyUSB1
      baudrate: 4800
      format: xk3190-tf0
      stable_samples: 5
      min_vehicle_kg: 500
      silence_ms: 3000
    points:
      arrival_loop: io1:di:0
      safety_loop: io1:di:1
      barrier_up: io1:di:3
      barrier_down: io1:di:4
      barrier_open: io1:coil:0
      barrier_close: io1:coil:1
    barrier:
      pulse_ms: 300
      travel_timeout_ms: 6000
      card_wait_ms: 60000
  - id: A1-IN
    name: 行政进区
    kind: administrative
    direction: in
    channel_no: "K002"
    weighs: false
    open_hours: ["08:30-12:00"]
    curb_weight_tolerance_kg: 300
    card_reader:
      port: /dev/ttyUSB2
      format: ascii-line
    points:
      arrival_loop: io1:di:16
      safety_loop: io1:di:17
      barrier_up: io1:di:19
      barrier_down: io1:di:20
      barrier_open: io1:coil:8
      barrier_close: io1:coil:9
"""


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} is not once in the config"
    return text.replace(old, new)


def line_of(text: str, needle: str, *, whole: bool = False) -> int:
    """The line holding `needle`; `whole`: as a whole value (not `poll_ms: 5` in `poll_ms: 50`)."""
    pattern = re.compile(re.escape(needle) + (r"(?=$|[,}\s])" if whole else ""))
    hits = [n for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert len(hits) == 1, f"{needle!r} found {len(hits)} times"
    return hits[0]


def problems(tmp_path: Path, text: str | bytes) -> list[Problem]:
    path = tmp_path / "site.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def the_problem(tmp_path: Path, text: str, path: str) -> Problem:
    found = [p for p in problems(tmp_path, text) if p.path == path]
    assert len(found) == 1, [str(p) for p in problems(tmp_path, text)]
    return found[0]


def test_base_is_valid(tmp_path: Path) -> None:
    config = parse_config(BASE, base_dir=tmp_path)
    assert config.lanes[0].barrier.card_wait_ms == 60000


# --------------------------------------------------------------------------------------
# The issue's case: values check-config accepted that crashed the daemon at run time


def test_issue_huge_card_wait_and_travel_timeout_are_refused_by_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """R9, S5: card_wait_ms / travel_timeout_ms of 10**16 overflowed a date at the first
    arrival or lift. check-config now refuses both, each with its path and line, exit 2."""
    text = edit(BASE, "card_wait_ms: 60000", "card_wait_ms: 10000000000000000")
    text = edit(text, "travel_timeout_ms: 6000", "travel_timeout_ms: 10000000000000000")
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    assert check_config(path) == 2
    err = capsys.readouterr().err.splitlines()
    assert f"{path}:{line_of(text, 'card_wait_ms')} lanes[0].barrier.card_wait_ms: " in err[1]
    assert f"{path}:{line_of(text, 'travel_timeout_ms')} lanes[0].barrier.travel_timeout_ms: " in err[0]
    assert all("less than or equal to" in line for line in err) and len(err) == 2


# --------------------------------------------------------------------------------------
# Numbers: (the line as in BASE, its YAML path, values refused, values accepted)

NUMBERS = [
    ("card_wait_ms: 60000", "lanes[0].barrier.card_wait_ms", [0, -1, 999, 86_400_001, 2**63, 1.5, "60000", True],
     [1000, 86_400_000]),
    ("travel_timeout_ms: 6000", "lanes[0].barrier.travel_timeout_ms", [0, 99, 120_001, 10**16, -6000, 6e3],
     [301, 120_000]),
    ("pulse_ms: 300", "lanes[0].barrier.pulse_ms", [0, 9, -300, 10_001, 2**64, "300"], [10, 5999]),
    ("    timeout_ms: 3000", "authorities.jg2.timeout_ms", [0, 99, 60_001, 10**20, None], [100, 60_000]),
    ("timeout_ms: 2500", "authorities.logistics.timeout_ms", [-1, 60_001], [100]),
    ("port: 5020", "io_modules.io1.port", [0, 65536, -1, 2**32, "5020"], [1, 65535]),
    ("port: 8481", "authorities.logistics.port", [0, 70000], [65535]),
    ("port: 1883", "mqtt.port", [0, 99999], [8883]),
    ("poll_ms: 50", "io_modules.io1.poll_ms", [0, 9, 10_001, 10**9], [10, 10_000]),
    ("poll_ms: 60", "io_modules.rtu1.poll_ms", [5, 100_000], [10]),
    ("baudrate: 19200", "io_modules.rtu1.baudrate", [0, 9601, 10**7, -9600, 9600.0], [1200, 115200]),
    ("baudrate: 9600", "lanes[0].card_reader.baudrate", [0, 12345, 2**40], [2400, 57600]),
    ("baudrate: 4800", "lanes[0].weighbridge.baudrate", [1, 4801], [9600]),
    ("unit: 2", "io_modules.rtu1.unit", [0, 248, 2**31], [1, 247]),
    ("stable_samples: 5", "lanes[0].weighbridge.stable_samples", [0, 1, 101, 10**12, 5.5], [2, 100]),
    ("min_vehicle_kg: 500", "lanes[0].weighbridge.min_vehicle_kg", [-1, 200_001, 1e308, ".inf", ".nan"],
     [0, 200_000, 0.5]),
    ("    silence_ms: 3000", "lanes[0].weighbridge.silence_ms", [0, 99, 86_400_001, 10**18], [100, 86_400_000]),
    ("silence_ms: 60000", "lanes[0].card_reader.silence_ms", [-5, 10**17], [None]),
    ("curb_weight_kg: 1800", "administrative_vehicles[0].curb_weight_kg", [0, -1800, 200_001, ".inf"], [1]),
    ("curb_weight_tolerance_kg: 300", "lanes[1].curb_weight_tolerance_kg", [-1, 1e9], [0]),
]


def _yaml(value: object) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if isinstance(value, str) and not value.startswith("."):
        return f'"{value}"'
    return str(value)


@pytest.mark.parametrize(("line", "path", "bad", "good"), NUMBERS, ids=[n[1] for n in NUMBERS])
def test_every_number_has_a_range(tmp_path: Path, line: str, path: str, bad: list, good: list) -> None:
    """Huge, negative, zero, fractional, quoted and infinite values are refused at their
    line; the bounds themselves are accepted."""
    key = line.strip().split(":")[0]
    indent = line[: len(line) - len(line.lstrip())]
    for value in bad:
        text = edit(BASE, line, f"{indent}{key}: {_yaml(value)}")
        problem = the_problem(tmp_path, text, path)
        assert problem.line == line_of(text, f"{indent}{key}: {_yaml(value)}", whole=True), value
    for value in good:
        text = edit(BASE, line, f"{indent}{key}: {_yaml(value)}")
        parse_config(text, base_dir=tmp_path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.integers(min_value=-(2**80), max_value=2**80), st.integers(min_value=0, max_value=200_000)))
def test_card_wait_accepted_exactly_within_one_second_to_a_day(tmp_path: Path, value: int) -> None:
    """S5: any integer a YAML file can hold is either within 1 s..1 day or refused."""
    text = edit(BASE, "card_wait_ms: 60000", f"card_wait_ms: {value}")
    try:
        config = parse_config(text, base_dir=tmp_path)
    except ConfigError as exc:
        assert not 1000 <= value <= 86_400_000
        assert [p.path for p in exc.problems] == ["lanes[0].barrier.card_wait_ms"]
    else:
        assert config.lanes[0].barrier.card_wait_ms == value and 1000 <= value <= 86_400_000


# --------------------------------------------------------------------------------------
# Texts and lists

TEXTS = [
    ("  name: 测试园区", "site.name", "园" * 129),
    ("    name: 保税进区", "lanes[0].name", "x" * 129),
    ('    channel_no: "K001"', "lanes[0].channel_no", "K" * 33),
    ("plate: 云A12345", "administrative_vehicles[0].plate", "云A" + "1" * 15),
    ("name: 王保安", "staff[0].name", "王" * 65),
    ("  token: change-me", "local_api.token", "t" * 1025),
    ("  client_id: lanepc-01", "mqtt.client_id", "c" * 129),
    ("    url: http://127.0.0.1:8480/", "authorities.jg2.url", "http://h/" + "p" * 2048),
    ("    host: 127.0.0.1\n    port: 5020", "io_modules.io1.host", "h" * 254),
    ("  path: journal.db", "journal.path", "d/" * 2100),
    ("      port: /dev/ttyUSB0", "lanes[0].card_reader.port", "/dev/" + "x" * 4096),
]


@pytest.mark.parametrize(("line", "path", "value"), TEXTS, ids=[t[1] for t in TEXTS])
def test_every_text_has_a_length(tmp_path: Path, line: str, path: str, value: str) -> None:
    key = line.strip().split(":")[0]
    indent = line[: len(line) - len(line.lstrip())]
    rest = line.split("\n", 1)[1] if "\n" in line else None
    text = edit(BASE, line, f'{indent}{key}: "{value}"' + (f"\n{rest}" if rest else ""))
    problem = the_problem(tmp_path, text, path)
    assert problem.line == line_of(text, value[:40]) and "at most" in problem.message, problem


def test_names_and_plates_take_no_control_characters(tmp_path: Path) -> None:
    text = BASE.replace("plate: 云A12345", 'plate: "云A\\t12345"')
    problem = the_problem(tmp_path, text, "administrative_vehicles[0].plate")
    assert "control character" in problem.message


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        ('  customs: ["' + KEY + '"]', "  customs: [" + ", ".join([f'"{KEY}"'] * 17) + "]", "trust.customs"),
        ('release_codes: ["^00"]', "release_codes: [" + ", ".join(['"^00"'] * 33) + "]",
         "authorities.logistics.release_codes"),
        ('open_hours: ["08:30-12:00"]', "open_hours: [" + ", ".join(['"08:30-12:00"'] * 25) + "]",
         "lanes[1].open_hours"),
        ('release_codes: ["^00"]', 'release_codes: ["' + "0" * 257 + '"]', "authorities.logistics.release_codes[0]"),
    ],
    ids=["trust-keys", "release-codes", "open-hours", "release-code-length"],
)
def test_lists_have_a_length(tmp_path: Path, old: str, new: str, path: str) -> None:
    text = edit(BASE, old, new)
    problem = the_problem(tmp_path, text, path)
    assert problem.line == line_of(text, new.strip()[:20])


def test_site_lists_are_bounded() -> None:
    """Whitelists, lanes, modules and authorities have a ceiling (checked on the model:
    10 001 entries in YAML take the loader seconds, the bound is the same)."""
    limits = {name: None for name in ("lanes", "administrative_vehicles", "staff", "io_modules", "authorities")}
    for name in limits:
        metadata = SiteConfig.model_fields[name].metadata
        limits[name] = next(m.max_length for m in metadata if hasattr(m, "max_length") and m.max_length)
    assert limits == {"lanes": 64, "administrative_vehicles": 10_000, "staff": 10_000, "io_modules": 256,
                      "authorities": 32}
    data = parse_config(BASE).model_dump(mode="json")
    data["staff"] = [{"card": f"{i:010X}", "name": "王"} for i in range(10_001)]
    with pytest.raises(ValidationError) as info:
        SiteConfig.model_validate(data, context={"skip_cross_checks": True})
    assert [e["loc"] for e in info.value.errors()] == [("staff",)]


# --------------------------------------------------------------------------------------
# The YAML itself


def alias_bomb(levels: int = 8, fan: int = 9) -> str:
    """The issue's bomb: ~2 KB, aliases `levels` deep under an unknown top-level key."""
    lines = ["lol_bomb:", '  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"  a{i}: &a{i} [" + ", ".join(f"*a{i - 1}" for _ in range(fan)) + "]")
    return "\n".join(lines) + "\n"


def test_issue_alias_bomb_is_refused_at_its_line_in_bounded_memory(tmp_path: Path) -> None:
    """6: 8 levels of aliases expand to 9**9 values. Refused while composing, naming the
    file and the line of the alias that crossed the budget, with a few MB allocated."""
    bomb = alias_bomb()
    text = BASE + bomb
    assert len(bomb) < 2048
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as info:
            load_config(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    [problem] = info.value.problems
    assert problem.file == str(path) and problem.line is not None
    assert text.splitlines()[problem.line - 1].lstrip().startswith("a")  # a line of the bomb
    assert problem.line > line_of(text, "lol_bomb:")
    assert f"more than {MAX_CONFIG_NODES} values" in problem.message
    assert peak < 32 * 1024 * 1024, peak


def test_aliases_a_site_uses_still_work(tmp_path: Path) -> None:
    """Anchors and merge keys for shared settings stay usable: only the expansion counts."""
    text = edit(BASE, "    barrier:\n      pulse_ms: 300", "    barrier: &timing\n      pulse_ms: 300")
    text += "    barrier: *timing\n"
    config = parse_config(text, base_dir=tmp_path)
    assert config.lanes[1].barrier == config.lanes[0].barrier


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("x: &a [*a]\n", "inside its own anchor"),
        ("x: &a {b: [*a]}\n", "inside its own anchor"),
        ("x: " + "[" * 30 + "]" * 30 + "\n", "nested more than 24 levels"),
        ("x: &a " + "[" * 20 + "1" + "]" * 20 + "\ny: [[[[[[[*a]]]]]]]\n", "nested more than 24 levels"),
        ("x: " + "9" * 5000 + "\n", "a number of 5000 characters"),
        ("x: 0x" + "f" * 5000 + "\n", "a number of 5002 characters"),
        ("x: !!binary aGk=\n", "explicit tag !!binary"),
        ("x: !!python/object:os.system ls\n", "explicit tag !!python/object:os.system"),
        ("x: !!set {a, b}\n", "explicit tag !!set"),
        ("x: !!int abc\n", "explicit tag !!int"),
        ("? [a, b]\n: c\n", "a mapping key must be a plain value"),
        ("x: {[1]: 2}\n", "a mapping key must be a plain value"),
        ('x: "\\ud800"\n', "lone surrogate"),
        ('x: "a\\0b"\n', "control character"),
        ("x: *nowhere\n", "undefined alias"),
        ("x: &a 1\ny: &a 2\n", "anchor &a is defined twice"),
    ],
    ids=["recursive", "recursive-nested", "deep", "deep-by-alias", "long-int", "long-hex", "binary", "python",
         "set", "int-tag", "complex-key", "flow-complex-key", "surrogate", "nul", "undefined-alias", "anchor-twice"],
)
def test_hostile_yaml_is_refused_with_its_line(tmp_path: Path, extra: str, expected: str) -> None:
    text = BASE + extra
    [problem] = problems(tmp_path, text)
    assert expected in problem.message, problem
    assert problem.line is not None and len(BASE.splitlines()) < problem.line <= len(text.splitlines()), problem


def test_bad_dates_are_reported_by_the_model_with_their_line(tmp_path: Path) -> None:
    """YAML would build a date and crash on 2026-02-30; dates stay text for pydantic."""
    text = BASE + "ledger:\n  first_day: 2026-02-30\n"
    problem = the_problem(tmp_path, text, "ledger.first_day")
    assert problem.line == line_of(text, "first_day")
    assert parse_config(BASE + "ledger:\n  first_day: 2026-02-28\n").ledger.first_day.isoformat() == "2026-02-28"


def test_a_file_over_the_size_cap_is_refused_unread(tmp_path: Path) -> None:
    text = BASE + "# " + "x" * MAX_CONFIG_BYTES + "\n"
    [problem] = problems(tmp_path, text)
    assert "larger than 2 MB" in problem.message and problem.file == str(tmp_path / "site.yaml")


def test_not_utf8_is_refused(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, BASE.encode("gb18030"))
    assert "not UTF-8" in problem.message


YAML_BITS = st.sampled_from(
    ["&a ", "*a", "&b ", "*b", "!!str ", "!x ", "[", "]", "{", "}", ", ", ": ", "- ", "? ", "\n", "\n  ", "\n    ",
     "'", '"', "\\", "#", "|", ">", "lanes", "site", "9" * 40, "1e999", "-.inf", ".nan", "0x", "~", "null",
     "2026-02-30", "<<", "%YAML 1.1\n", "---\n", "...\n", "\t", "\x00", "\ud800", "中", "a"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(YAML_BITS, max_size=60).map("".join))
def test_any_text_is_a_config_or_a_list_of_problems(text: str) -> None:
    """Fuzz: whatever the text, parse_config returns a config or raises ConfigError."""
    try:
        parse_config(text)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, Problem) for p in exc.problems)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@settings(max_examples=20_000, deadline=None)
@given(st.lists(YAML_BITS, max_size=200).map("".join))
def test_any_text_is_a_config_or_a_list_of_problems_long(text: str) -> None:
    try:
        parse_config(text)
    except ConfigError as exc:
        assert exc.problems
