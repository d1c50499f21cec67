"""Config models, loader and cross-checks (CONTRACT section 1; R1, R2, R3, R7, R10).

Every config under test is YAML text written to a temp file, and every expected line is
looked up in that text, so the tests read like what an ops engineer sees.
"""

from __future__ import annotations

import base64
import re
from datetime import date, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from gatectl.service import lane_schedule
from gatectl.config import (
    ConfigError,
    GatherXmlAuthority,
    HttpJsonAuthority,
    LaneConfig,
    ModbusTcpModule,
    Point,
    Problem,
    SiteConfig,
    TimeWindow,
    check_config,
    format_problems,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "site.example.yaml"

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(1, 33))).decode()

# Two lanes, everything a cross-check looks at. Markers in the comments are not needed:
# tests find lines by their text.
BASE = f"""\
site:
  id: test-site
  name: 测试园区
  timezone: Asia/Shanghai
journal:
  path: journal.db
trust:
  customs: ["{KEY_A}"]
  park: ["{KEY_B}"]
authorities:
  jg2:
    protocol: http-json
    url: http://127.0.0.1:8480
  logistics:
    protocol: gather-xml
    host: 127.0.0.1
    port: 8481
    area_id: "5301000001"
io_modules:
  io1:
    protocol: modbus-tcp
    host: 127.0.0.1
    port: 5020
administrative_vehicles:
  - {{card: "0100e2850e", plate: 云A12345, curb_weight_kg: 1800}}
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
      format: stx-hex-xor
    weighbridge:
      port: /dev/ttyUSB1
      format: xk3190-tf0
    points:
      arrival_loop: io1:di:0
      safety_loop: io1:di:1
      barrier_up: io1:di:3
      barrier_down: io1:di:4
      barrier_open: io1:coil:0
      barrier_close: io1:coil:1
  - id: A1-IN
    name: 行政进区
    kind: administrative
    direction: in
    channel_no: "K002"
    weighs: false
    card_reader:
      port: /dev/ttyUSB2
      format: ascii-line
    points:
      arrival_loop: io1:di:16
      safety_loop: io1:di:17
      barrier_up: io1:di:19
      barrier_down: io1:di:20
      emergency_button: io1:di:22
      barrier_open: io1:coil:8
      barrier_close: io1:coil:9
"""


def write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def edit(text: str, old: str, new: str, count: int = 1) -> str:
    assert text.count(old) >= count, f"{old!r} not in the config"
    return text.replace(old, new, count)


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing `needle`."""
    hits = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) >= nth, f"{needle!r} not found {nth} times"
    return hits[nth - 1]


def problems_of(tmp_path: Path, text: str) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.problems


def only(problems: list[Problem], path: str) -> Problem:
    matching = [p for p in problems if p.path == path]
    assert len(matching) == 1, format_problems(problems)
    return matching[0]


# --------------------------------------------------------------------------------------
# Valid configs


def test_example_site_validates() -> None:
    """R1: the shipped example has one lane of each kind and passes every check."""
    config = load_config(EXAMPLE)
    assert sorted(lane.kind for lane in config.lanes) == sorted(
        ["bonded", "ecommerce_9610", "non_bonded", "administrative", "personnel", "shared"]
    )
    protocols = {a.protocol for a in config.authorities.values()}
    assert protocols == {"http-json", "gather-xml"}
    assert all(isinstance(m, ModbusTcpModule) for m in config.io_modules.values())
    assert config.journal.path == EXAMPLE.parent / "gatectl.db"


def test_base_config_validates_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    lane = config.lanes[0]
    assert lane.barrier.pulse_ms == 300
    assert lane.barrier.travel_timeout_ms == 6000
    assert lane.barrier.card_wait_ms == 60000
    assert lane.open_hours == "always"
    assert lane.card_reader.baudrate == 9600
    assert lane.weighbridge is not None
    assert (lane.weighbridge.stable_samples, lane.weighbridge.min_vehicle_kg) == (5, 500)
    assert config.local_api.listen == "127.0.0.1:8470"
    assert config.local_api.token is None
    assert config.mqtt is None
    io1 = config.io_modules["io1"]
    assert isinstance(io1, ModbusTcpModule) and (io1.unit, io1.poll_ms) == (1, 50)
    jg2 = config.authorities["jg2"]
    assert isinstance(jg2, HttpJsonAuthority)
    assert jg2.url == "http://127.0.0.1:8480/"  # normalised: {url}gate/v1/... must join
    assert jg2.timeout_ms == 3000
    logistics = config.authorities["logistics"]
    assert isinstance(logistics, GatherXmlAuthority)
    assert logistics.release_codes == ["^00"] and logistics.byte_order == "big"
    assert logistics.is_release("00000000001002000000")
    assert not logistics.is_release("01000000001002000000")
    assert config.administrative_vehicles[0].card == "0100E2850E"  # uppercased
    assert config.trust.customs == [bytes(range(32))]


def test_mqtt_topic_prefix_defaults_to_site_id(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + "mqtt:\n  host: broker.local\n"))
    assert config.mqtt is not None
    assert (config.mqtt.port, config.mqtt.topic_prefix) == (1883, "gatectl/test-site")


def test_points_parse_and_serialise_back() -> None:
    point = Point.parse("io1:coil:12")
    assert (point.module, point.kind, point.address) == ("io1", "coil", 12)
    assert str(point) == "io1:coil:12"
    config = load_config(EXAMPLE)
    dumped = config.model_dump(mode="json")
    assert dumped["lanes"][0]["points"]["arrival_loop"] == "io1:di:0"
    assert dumped["lanes"][0]["points"]["barrier_open"] == "io1:coil:0"
    assert dumped["lanes"][0]["open_hours"]["mon"] == ["08:30-12:00", "13:30-17:30"]
    assert SiteConfig.model_validate(dumped) == config  # the whole config round-trips
    for bad in ("io1:do:3", "io1:di", "io 1:di:0", "io1:di:-1", "io1:coil:70000"):
        with pytest.raises(ValueError):
            Point.parse(bad)


def test_relative_paths_resolve_against_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = edit(BASE, "path: journal.db", "path: data/journal.db")
    text += "mqtt:\n  host: b\n  tls: {ca_file: ../pki/ca.pem, cert_file: c.pem, key_file: /abs/k.pem}\n"
    text = edit(text, "port: /dev/ttyUSB2", "port: ptys/card0")
    path = write(tmp_path / "etc", text)
    monkeypatch.chdir(tmp_path)  # a cwd other than the file's directory
    config = load_config(Path("etc/site.yaml"))
    etc = tmp_path / "etc"
    assert config.journal.path == etc / "data" / "journal.db"
    assert config.mqtt is not None and config.mqtt.tls is not None
    assert config.mqtt.tls.ca_file == tmp_path / "pki" / "ca.pem"
    assert config.mqtt.tls.cert_file == etc / "c.pem"
    assert config.mqtt.tls.key_file == Path("/abs/k.pem")
    assert config.lanes[1].card_reader.port == str(etc / "ptys" / "card0")
    assert config.lanes[0].card_reader.port == "/dev/ttyUSB0"
    assert path.exists() and not (etc / "data").exists()  # validating creates nothing


def _open_at(config, lane, h: int, m: int = 0, day: int = 27, month: int = 11, year: int = 2026) -> bool:
    schedule = lane_schedule(lane, config)
    return schedule is None or schedule.is_open(datetime(year, month, day, h, m, tzinfo=config.site.tz))


def test_open_hours_windows(tmp_path: Path) -> None:
    """R2: outside its windows a lane releases nothing automatically."""
    text = edit(BASE, '    channel_no: "K001"\n', '    channel_no: "K001"\n    open_hours: ["08:30-12:00", "22:00-02:00"]\n')
    config = load_config(write(tmp_path, text))
    lane = config.lanes[0]
    assert lane.open_hours == (TimeWindow(510, 720), TimeWindow(1320, 120))
    assert _open_at(config, lane, 8, 30) and _open_at(config, lane, 11, 59)
    assert not _open_at(config, lane, 12, 0) and not _open_at(config, lane, 13, 0)
    assert _open_at(config, lane, 23, 0) and _open_at(config, lane, 1, 59) and not _open_at(config, lane, 2, 0)
    assert str(TimeWindow.parse("13:30-24:00")) == "13:30-24:00"


def test_r2_open_hours_by_day_and_holiday(tmp_path: Path) -> None:
    """R2, CONTRACT 8: hours by weekday, a range of days, and holidays from the calendar."""
    hours = ('    open_hours:\n      mon-fri: ["08:30-12:00", "13:30-17:30"]\n      sat: ["09:00-12:00"]\n'
             "      sun: []\n      holiday: []\n")
    text = edit(BASE, '    channel_no: "K001"\n', '    channel_no: "K001"\n' + hours)
    text = text.replace("journal:\n", 'calendar:\n  holidays: ["2027-01-01"]\njournal:\n', 1)
    config = load_config(write(tmp_path, text))
    lane = config.lanes[0]
    assert _open_at(config, lane, 9) and not _open_at(config, lane, 12, 30)  # Friday
    assert _open_at(config, lane, 10, day=28) and not _open_at(config, lane, 14, day=28)  # Saturday
    assert not _open_at(config, lane, 10, day=29)  # Sunday
    assert not _open_at(config, lane, 10, day=1, month=1, year=2027)  # a holiday Friday


@pytest.mark.parametrize("hours, message", [
    ('{mon-fri: ["08:30-12:00"]}', "no hours for sat, sun"),
    ('{mon-fri: ["08:30-12:00"], fri-sun: []}', "fri is given twice"),
    ('{weekdays: ["08:30-12:00"]}', "'weekdays' is not a day"),
    ('{fri-mon: []}', "runs backwards"),
    ('{mon-sun: "08:30-12:00"}', "expected a list of windows"),
])
def test_r2_open_hours_by_day_say_what_is_wrong(tmp_path: Path, hours: str, message: str) -> None:
    text = edit(BASE, '    channel_no: "K001"\n', f'    channel_no: "K001"\n    open_hours: {hours}\n')
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert any(p.path == "lanes[0].open_hours" and message in p.message for p in exc.value.problems), exc.value.problems


def test_r1_a_shared_lane_names_each_kinds_authority(tmp_path: Path) -> None:
    """R1: one physical lane for bonded and non-bonded traffic: an authority per kind, and
    no single `authority`."""
    text = edit(BASE, "    kind: bonded\n", "    kind: shared\n", count=1)
    text = text.replace("    authority: jg2\n", "    authorities: {bonded: jg2, non_bonded: logistics}\n", 1)
    config = load_config(write(tmp_path, text))
    assert config.lanes[0].shared and config.lanes[0].authorities == {"bonded": "jg2", "non_bonded": "logistics"}
    broken = text.replace("    authorities: {bonded: jg2, non_bonded: logistics}\n", "    authority: jg2\n", 1)
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, broken))
    messages = {p.path: p.message for p in exc.value.problems}
    assert "an authority per kind" in messages["lanes[0].authority"]
    assert "add bonded, non_bonded" in messages["lanes[0].authorities"]


def test_plate_camera_and_barrier_timings_default_and_bound(tmp_path: Path) -> None:
    """CONTRACT 8: the three barrier timings and the plate camera's age, with defaults."""
    config = load_config(write(tmp_path, BASE))
    barrier = config.lanes[0].barrier
    assert (barrier.backout_wait_ms, barrier.weigh_wait_ms, barrier.card_grace_ms) == (5000, 60000, 5000)
    assert config.lanes[0].plate_camera is None
    text = edit(BASE, "    card_reader:\n", "    plate_camera: {max_age_ms: 20000}\n    barrier: {backout_wait_ms: 8000, "
                "weigh_wait_ms: 30000, card_grace_ms: 0}\n    card_reader:\n", count=1)
    config = load_config(write(tmp_path, text))
    lane = config.lanes[0]
    assert lane.plate_camera.max_age_ms == 20000 and lane.barrier.backout_wait_ms == 8000
    assert lane.barrier.card_grace_ms == 0
    text = edit(BASE, "    card_reader:\n", "    barrier: {backout_wait_ms: 10000000000}\n    card_reader:\n", count=1)
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert any(p.path == "lanes[0].barrier.backout_wait_ms" for p in exc.value.problems)


def test_device_silence_keys_default_and_validate(tmp_path: Path) -> None:
    """Added keys with defaults: configs without them keep working; set values must be > 0."""
    config = load_config(write(tmp_path, BASE))
    weighbridge = config.lanes[0].weighbridge
    assert weighbridge is not None and weighbridge.silence_ms == 3000
    assert config.lanes[0].card_reader.silence_ms is None  # readers are quiet between cards

    text = edit(BASE, "      format: xk3190-tf0\n", "      format: xk3190-tf0\n      silence_ms: null\n")
    text = edit(text, "      format: ascii-line\n", "      format: ascii-line\n      silence_ms: 60000\n")
    config = load_config(write(tmp_path, text))
    assert config.lanes[0].weighbridge is not None
    assert config.lanes[0].weighbridge.silence_ms is None
    assert config.lanes[1].card_reader.silence_ms == 60000

    text = edit(BASE, "      format: xk3190-tf0\n", "      format: xk3190-tf0\n      silence_ms: 0\n")
    text = edit(text, "      format: ascii-line\n", "      format: ascii-line\n      silence_ms: 1.5\n")
    problems = problems_of(tmp_path, text)
    zero = only(problems, "lanes[0].weighbridge.silence_ms")
    assert zero.line == line_of(text, "silence_ms: 0")
    assert "greater than or equal to 100" in zero.message
    fraction = only(problems, "lanes[1].card_reader.silence_ms")
    assert fraction.line == line_of(text, "silence_ms: 1.5")

    schema = SiteConfig.model_json_schema()["$defs"]
    for model in ("CardReaderConfig", "WeighbridgeConfig"):
        field = schema[model]["properties"]["silence_ms"]
        assert field["title"] and field["description"]


def test_ledger_section_defaults_and_validates(tmp_path: Path) -> None:
    """R14: the optional ``ledger`` section; without it nothing is scheduled."""
    ledger = load_config(write(tmp_path, BASE)).ledger
    assert (ledger.dir, ledger.every_days, ledger.formats, ledger.first_day) == (None, 15, ["xlsx"], None)

    text = BASE + "ledger:\n  dir: ledgers\n  every_days: 7\n  formats: [csv, xlsx]\n  first_day: 2026-11-13\n"
    ledger = load_config(write(tmp_path, text)).ledger
    assert ledger.dir == tmp_path / "ledgers"  # relative to the config file
    assert (ledger.every_days, ledger.formats, ledger.first_day) == (7, ["csv", "xlsx"], date(2026, 11, 13))

    text = BASE + "ledger:\n  every_days: 0\n  formats: [csv, pdf]\n  first_day: someday\n  email: x\n"
    problems = problems_of(tmp_path, text)
    assert only(problems, "ledger.every_days").line == line_of(text, "every_days: 0")
    assert only(problems, "ledger.formats[1]").line == line_of(text, "formats: [csv, pdf]")
    assert only(problems, "ledger.first_day").line == line_of(text, "first_day: someday")
    assert only(problems, "ledger.email").line == line_of(text, "email: x")
    text = BASE + "ledger:\n  formats: [csv, csv]\n"
    assert "name each format once" in only(problems_of(tmp_path, text), "ledger.formats").message
    field = SiteConfig.model_json_schema()["$defs"]["LedgerConfig"]["properties"]["dir"]
    assert field["title"] and field["description"]


def test_json_schema_has_titles() -> None:
    schema = SiteConfig.model_json_schema()
    lane = schema["$defs"]["LaneConfig"]["properties"]
    assert lane["channel_no"]["title"] == "Channel number"
    points = schema["$defs"]["PointsConfig"]["properties"]
    assert "pattern" in points["arrival_loop"]


# --------------------------------------------------------------------------------------
# Field errors, each with its path and line


@pytest.mark.parametrize(
    ("old", "new", "path", "needle", "message"),
    [
        ("id: test-site", "id: Test_Site", "site.id", "id: Test_Site", "should match pattern"),
        ("timezone: Asia/Shanghai", "timezone: Asia/Kunming1", "site.timezone", "Asia/Kunming1", "unknown time zone"),
        ("  path: journal.db", "  path: 42", "journal.path", "path: 42", "got 42"),
        ("url: http://127.0.0.1:8480", "url: ftp://x/", "authorities.jg2.url", "ftp://x/", "http:// or https://"),
        ('area_id: "5301000001"', 'area_id: "53010000012"', "authorities.logistics.area_id", "53010000012", "pattern"),
        ("    port: 5020", "    port: 70000", "io_modules.io1.port", "port: 70000", "less than or equal to 65535"),
        ("    port: 5020", "    port: true", "io_modules.io1.port", "port: true", "valid integer (got true)"),
        ("curb_weight_kg: 1800", "curb_weight_kg: -1", "administrative_vehicles[0].curb_weight_kg", "curb_weight_kg: -1", "greater than 0"),
        ('card: "5A5A5A5A5A"', 'card: "5A-5A"', "staff[0].card", "5A-5A", "hex digits"),
        ('card: "5A5A5A5A5A"', "card: 0100E2850", "staff[0].card", "0100E2850", "quote it"),
        ("kind: bonded", "kind: bonded_goods", "lanes[0].kind", "bonded_goods", "'bonded'"),
        ("direction: in", "direction: inbound", "lanes[0].direction", "inbound", "'in' or 'out'"),
        ("format: stx-hex-xor", "format: wiegand", "lanes[0].card_reader.format", "wiegand", "stx-bin-bcc"),
        ("format: xk3190-tf0", "format: xk3190-tf0\n      stable_samples: 1", "lanes[0].weighbridge.stable_samples", "stable_samples: 1", "greater than or equal to 2"),
        ("arrival_loop: io1:di:0", "arrival_loop: io1:coil:5", "lanes[0].points.arrival_loop", "io1:coil:5", "must be a di point"),
        ("barrier_open: io1:coil:0", "barrier_open: io1:di:9", "lanes[0].points.barrier_open", "io1:di:9", "must be a coil point"),
        ("safety_loop: io1:di:1", "safety_loop: io1-di-1", "lanes[0].points.safety_loop", "io1-di-1", "MODULE:di:N"),
        ('    channel_no: "K001"', '    channel_no: "K001"\n    open_hours: ["8:30-12:00"]', "lanes[0].open_hours[0]", "8:30-12:00", "HH:MM-HH:MM"),
        ('    channel_no: "K001"', '    channel_no: "K001"\n    open_hours: sometimes', "lanes[0].open_hours", "sometimes", 'expected "always", a list'),
    ],
)
def test_field_error_names_path_and_line(
    tmp_path: Path, old: str, new: str, path: str, needle: str, message: str
) -> None:
    text = edit(BASE, old, new)
    problem = only(problems_of(tmp_path, text), path)
    assert problem.line == line_of(text, needle)
    assert message in problem.message


def test_barrier_pulse_error_renders_like_the_contract(tmp_path: Path) -> None:
    text = edit(BASE, "      barrier_close: io1:coil:9\n", "      barrier_close: io1:coil:9\n    barrier:\n      pulse_ms: -5\n")
    [problem] = problems_of(tmp_path, text)
    line = line_of(text, "pulse_ms: -5")
    assert str(problem) == (
        f"{tmp_path / 'site.yaml'}:{line} lanes[1].barrier.pulse_ms: Input should be greater than or equal to 10 (got -5)"
    )


def test_unknown_key_names_its_own_line(tmp_path: Path) -> None:
    text = edit(BASE, "      safety_loop: io1:di:17\n", "      safety_loop: io1:di:17\n      safty_loop: io1:di:18\n")
    text = edit(text, "jg2:\n", "jg2:\n    timeout: 5\n")
    text += "lane_defaults: {}\n"
    problems = problems_of(tmp_path, text)
    typo = only(problems, "lanes[1].points.safty_loop")
    assert typo.line == line_of(text, "safty_loop")
    assert "unknown key 'safty_loop'" in typo.message and "did you mean 'safety_loop'" in typo.message
    inside_union = only(problems, "authorities.jg2.timeout")
    assert inside_union.line == line_of(text, "timeout: 5")
    assert "did you mean 'timeout_ms'" in inside_union.message
    top = only(problems, "lane_defaults")
    assert top.line == line_of(text, "lane_defaults")


def test_missing_key_points_at_its_parent(tmp_path: Path) -> None:
    text = edit(BASE, "      barrier_down: io1:di:4\n", "")
    text = edit(text, "    name: 行政进区\n", "")
    problems = problems_of(tmp_path, text)
    points = only(problems, "lanes[0].points.barrier_down")
    assert points.line == line_of(text, "    points:")
    assert points.message == "Field required"
    name = only(problems, "lanes[1].name")
    assert name.line == line_of(text, "- id: A1-IN")


def test_bad_protocol_points_at_the_protocol_key(tmp_path: Path) -> None:
    text = edit(BASE, "protocol: gather-xml", "protocol: gather-json")
    text = edit(text, "    protocol: modbus-tcp\n", "")
    problems = problems_of(tmp_path, text)
    bad = only(problems, "authorities.logistics.protocol")
    assert bad.line == line_of(text, "gather-json")
    assert "http-json, gather-xml" in bad.message
    missing = only(problems, "io_modules.io1.protocol")
    assert missing.line == line_of(text, "  io1:")
    assert "modbus-tcp, modbus-rtu" in missing.message


def test_section_validators(tmp_path: Path) -> None:
    cases = [
        ("local_api:\n  listen: localhost\n", "local_api.listen", 'expected "host:port"'),
        ("local_api:\n  listen: ::1:8470\n", "local_api.listen", "brackets"),
        ("local_api:\n  token: ''\n", "local_api.token", "at least 1 character"),
        ("mqtt:\n  host: b\n  topic_prefix: gatectl/#\n", "mqtt.topic_prefix", "wildcards"),
        ("mqtt:\n  host: b\n  tls: {cert_file: c.pem}\n", "mqtt.tls", "cert_file and key_file"),
    ]
    for extra, path, message in cases:
        problem = only(problems_of(tmp_path, BASE + extra), path)
        assert message in problem.message, problem
    text = edit(BASE, f'customs: ["{KEY_A}"]', f'customs: ["{KEY_A}", "AAAA", "not base64!"]')
    problems = problems_of(tmp_path, text)
    assert "32 raw bytes, this decodes to 3" in only(problems, "trust.customs[1]").message
    assert "not valid base64" in only(problems, "trust.customs[2]").message
    text = edit(BASE, 'area_id: "5301000001"', 'area_id: "5301000001"\n    release_codes: ["^00", "(("]')
    problem = only(problems_of(tmp_path, text), "authorities.logistics.release_codes")
    assert "not a regex" in problem.message and problem.line == line_of(text, "release_codes")
    text = edit(BASE, "      barrier_close: io1:coil:9\n", "      barrier_close: io1:coil:9\n    barrier: {pulse_ms: 7000}\n")
    problem = only(problems_of(tmp_path, text), "lanes[1].barrier")
    assert "shorter than travel_timeout_ms" in problem.message


# --------------------------------------------------------------------------------------
# Cross-checks, each at its node


@pytest.mark.parametrize(
    ("old", "new", "path", "needle", "message"),
    [
        pytest.param(
            "arrival_loop: io1:di:16", "arrival_loop: io2:di:16",
            "lanes[1].points.arrival_loop", "io2:di:16", "IO module 'io2' is not defined",
            id="points-name-existing-module",
        ),
        pytest.param(
            "authority: jg2", "authority: jg3",
            "lanes[0].authority", "authority: jg3", "authority 'jg3' is not defined",
            id="authority-exists",
        ),
        pytest.param(
            "    authority: jg2\n", "",
            "lanes[0].authority", "- id: B1-IN", "release only on their authority",
            id="goods-lane-needs-authority",
        ),
        pytest.param(
            "- id: A1-IN", "- id: b1-in",
            "lanes[1].id", "b1-in", "already used by lanes[0] (B1-IN)",
            id="lane-ids-unique",
        ),
        pytest.param(
            "barrier_close: io1:coil:9", "barrier_close: io1:coil:1",
            "lanes[1].points.barrier_close", ("barrier_close: io1:coil:1", 2), "already lanes[0].points.barrier_close",
            id="coil-shared-between-lanes",
        ),
        pytest.param(
            "barrier_close: io1:coil:9", "barrier_close: io1:coil:8",
            "lanes[1].points.barrier_close", "barrier_close: io1:coil:8", "of this lane",
            id="coil-shared-within-lane",
        ),
        pytest.param(
            "safety_loop: io1:di:17", "safety_loop: io1:di:0",
            "lanes[1].points.safety_loop", "safety_loop: io1:di:0", "already lanes[0].points.arrival_loop",
            id="loop-shared-between-lanes",
        ),
        pytest.param(
            "port: /dev/ttyUSB2", "port: /dev/ttyUSB0",
            "lanes[1].card_reader.port", ("port: /dev/ttyUSB0", 2), "already used by lanes[0].card_reader",
            id="card-reader-port-unique",
        ),
        pytest.param(
            "port: /dev/ttyUSB1", "port: /dev/ttyUSB0",
            "lanes[0].weighbridge.port", ("port: /dev/ttyUSB0", 2), "already used by lanes[0].card_reader",
            id="weighbridge-port-unique",
        ),
        pytest.param(
            '  - {card: "0100e2850e", plate: 云A12345, curb_weight_kg: 1800}\n', "  []\n",
            "lanes[1].kind", "kind: administrative", "administrative_vehicles is empty",
            id="administrative-lane-needs-vehicles",
        ),
        pytest.param(
            "    weighbridge:\n      port: /dev/ttyUSB1\n      format: xk3190-tf0\n", "",
            "lanes[0].weighbridge", "- id: B1-IN", "add a weighbridge",
            id="goods-lane-weighs",
        ),
        pytest.param(
            "    weighs: false\n", "",
            "lanes[1].weighbridge", "- id: A1-IN", "no weighbridge: add one, or set weighs: false",
            id="administrative-lane-weighs-its-registered-vehicles",
        ),
        pytest.param(
            "authority: jg2", "authority: logistics\n    open_hours: always",
            None, None, None,
            id="gather-xml-lane-ok",
        ),
    ],
)
def test_cross_check_points_at_the_offending_node(
    tmp_path: Path,
    old: str,
    new: str,
    path: str | None,
    needle: str | tuple[str, int] | None,
    message: str | None,
) -> None:
    text = edit(BASE, old, new)
    if path is None or needle is None or message is None:
        load_config(write(tmp_path, text))
        return
    problems = problems_of(tmp_path, text)
    problem = only(problems, path)
    needle_text, nth = needle if isinstance(needle, tuple) else (needle, 1)
    assert problem.line == line_of(text, needle_text, nth)
    assert message in problem.message
    assert len(problems) == 1, format_problems(problems)


def test_more_cross_checks(tmp_path: Path) -> None:
    # personnel lane with an empty staff list
    text = edit(BASE, "kind: administrative", "kind: personnel")
    text = edit(text, '  - {card: "5A5A5A5A5A", name: 王保安}\n', "  []\n")
    assert "staff is empty" in only(problems_of(tmp_path, text), "lanes[1].kind").message
    # R2: non_bonded is open 24 h
    text = edit(BASE, "kind: bonded", "kind: non_bonded\n    open_hours: [\"08:00-18:00\"]")
    problem = only(problems_of(tmp_path, text), "lanes[0].open_hours")
    assert problem.line == line_of(text, "08:00-18:00")
    # R10: the park countersignature needs a key other than customs'
    text = edit(BASE, f'park: ["{KEY_B}"]', f'park: ["{KEY_A}"]')
    assert only(problems_of(tmp_path, text), "trust.park[0]").line == line_of(text, "park:")
    # R4: one card, one vehicle
    text = edit(BASE, "curb_weight_kg: 1800}\n", "curb_weight_kg: 1800}\n  - {card: 0100E2850E, plate: 云A2, curb_weight_kg: 9}\n")
    assert only(problems_of(tmp_path, text), "administrative_vehicles[1].card").line == line_of(text, "云A2")
    # two names for one IO module would hide shared coils
    text = edit(BASE, "    port: 5020\n", "    port: 5020\n  io2: {protocol: modbus-tcp, host: 127.0.0.1, port: 5020}\n")
    assert only(problems_of(tmp_path, text), "io_modules.io2").line == line_of(text, "io2:")
    # gather-xml frames carry a 10-byte channel number
    text = edit(BASE, 'channel_no: "K001"\n    authority: jg2', 'channel_no: "K0010000001"\n    authority: logistics')
    assert "1-10 ASCII" in only(problems_of(tmp_path, text), "lanes[0].channel_no").message
    # an authority's channel: one lane per channel number and direction
    text = edit(BASE, 'channel_no: "K002"', 'channel_no: "K001"')
    assert only(problems_of(tmp_path, text), "lanes[1].channel_no").line == line_of(text, '"K001"', 2)
    # RS-485 modules on one port share line settings; a serial device cannot share it
    text = edit(
        BASE,
        "    port: 5020\n",
        "    port: 5020\n  rtu1: {protocol: modbus-rtu, port: /dev/ttyS1}\n"
        "  rtu2: {protocol: modbus-rtu, port: /dev/ttyS1, unit: 2, baudrate: 19200}\n",
    )
    text = edit(text, "port: /dev/ttyUSB2", "port: /dev/ttyS1")
    problems = problems_of(tmp_path, text)
    assert "share baudrate" in only(problems, "io_modules.rtu2.baudrate").message
    assert "io_modules.rtu1" in only(problems, "lanes[1].card_reader.port").message


def test_shared_panel_buttons_are_allowed(tmp_path: Path) -> None:
    text = edit(BASE, "      barrier_down: io1:di:4\n", "      barrier_down: io1:di:4\n      emergency_button: io1:di:22\n")
    load_config(write(tmp_path, text))


def test_model_validate_runs_the_cross_checks_too() -> None:
    data = load_config(EXAMPLE).model_dump(mode="json")
    data["lanes"][1]["points"]["barrier_open"] = "io1:coil:0"
    with pytest.raises(ValidationError, match=r"lanes\[1\]\.points\.barrier_open: io1:coil:0 is already"):
        SiteConfig.model_validate(data)
    LaneConfig.model_validate(data["lanes"][1])  # a lane alone has nothing to cross-check


# --------------------------------------------------------------------------------------
# Whole files: every problem at once


BROKEN_EDITS = [
    # (old, new, expected path, line needle)
    ("    port: 5020\n", "    port: 5020\n    poll_msec: 10\n", "io_modules.io1.poll_msec", "poll_msec"),
    ("arrival_loop: io1:di:0", "arrival_loop: io7:di:0", "lanes[0].points.arrival_loop", "io7:di:0"),
    ("format: ascii-line", "format: ascii-line\n      baudrate: fast", "lanes[1].card_reader.baudrate", "baudrate: fast"),
    ("barrier_close: io1:coil:9", "barrier_close: io1:coil:0", "lanes[1].points.barrier_close", "barrier_close: io1:coil:0"),
    ("    authority: jg2\n", "    authority: jg9\n", "lanes[0].authority", "authority: jg9"),
    ("curb_weight_kg: 1800", "curb_weight_kg: heavy", "administrative_vehicles[0].curb_weight_kg", "heavy"),
]


def broken_text() -> str:
    text = BASE
    for old, new, _, _ in BROKEN_EDITS:
        text = edit(text, old, new)
    return text


def test_broken_config_lists_every_problem_with_path_and_line(tmp_path: Path) -> None:
    """Type errors and cross-check findings together: one lane's bad baudrate does not
    hide its shared coil, nor lane 0's dangling module."""
    text = broken_text()
    problems = problems_of(tmp_path, text)
    assert len(problems) == len(BROKEN_EDITS), format_problems(problems)
    for _, _, path, needle in BROKEN_EDITS:
        assert only(problems, path).line == line_of(text, needle)
    lines = [p.line or 0 for p in problems]
    assert lines == sorted(lines)  # in file order


def test_check_config_exit_codes_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gatectl check-config` on a broken config lists each problem with its path and line."""
    good = write(tmp_path, BASE, "good.yaml")
    assert check_config(good) == 0
    out, err = capsys.readouterr()
    assert out.startswith("OK: 2 lanes") and err == ""

    text = broken_text()
    bad = write(tmp_path, text, "bad.yaml")
    assert check_config(bad) == 2
    out, err = capsys.readouterr()
    assert out == ""
    printed = err.splitlines()
    assert len(printed) == len(BROKEN_EDITS)
    for (_, _, path, needle), line in zip(
        sorted(BROKEN_EDITS, key=lambda e: line_of(text, e[3])), printed, strict=True
    ):
        assert re.match(rf"{re.escape(str(bad))}:{line_of(text, needle)} {re.escape(path)}: \S", line), line


def test_yaml_syntax_error_is_a_problem_with_its_line(tmp_path: Path) -> None:
    text = edit(BASE, "    name: 行政进区\n", "    name: [行政进区\n")
    [problem] = problems_of(tmp_path, text)
    assert problem.path == "" and problem.message.startswith("YAML: ")
    assert problem.line is not None and problem.line >= line_of(text, "[行政进区")
    text = edit(BASE, "  timezone: Asia/Shanghai\n", "  timezone: Asia/Shanghai\n  name: again\n")
    [problem] = problems_of(tmp_path, text)
    assert "duplicate key" in problem.message and problem.line == line_of(text, "name: again")


def test_missing_empty_and_odd_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    [problem] = info.value.problems
    assert str(problem) == f"{tmp_path / 'nope.yaml'}: config file not found"
    assert check_config(tmp_path / "nope.yaml") == 2
    assert "config file not found" in capsys.readouterr().err
    for text in ("", "# nothing\n", "- a list\n"):
        [problem] = problems_of(tmp_path, text)
        assert problem.line == 1
    problems = problems_of(tmp_path, "site: {id: x, name: y}\n")
    assert {p.path for p in problems} == {"journal", "io_modules", "lanes"}


def test_parse_config_and_problem_rendering(tmp_path: Path) -> None:
    config = parse_config(BASE, base_dir=tmp_path)
    assert config.journal.path == tmp_path / "journal.db"
    assert config.lane("A1-IN").kind == "administrative"
    assert str(Problem("lanes[1].id", 7, "bad", "site.yaml")) == "site.yaml:7 lanes[1].id: bad"
    assert str(Problem("", None, "bad", "site.yaml")) == "site.yaml: bad"
    error = ConfigError([Problem("a", 1, "x", "f"), Problem("b", 2, "y", "f")])
    assert str(error) == "f:1 a: x\nf:2 b: y"
