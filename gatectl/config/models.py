"""Config models for one site: every key of CONTRACT section 1, and the cross-checks.

Each model validates its own section (types, bounds, formats). Rules that relate sections
to each other (a point names an IO module that exists, no two lanes pulse the same coil,
…) are small `verify_*` functions over a `SiteParts` view, so the loader can run them even
when another part of the file failed to validate, and point each finding at its YAML node.

Validation is pure: it never opens a port, a socket or a file. Relative paths are resolved
against `context={"base_dir": …}` (the loader passes the config file's directory).
"""

from __future__ import annotations

import base64
import binascii
import copy
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from datetime import time as dt_time
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    PlainSerializer,
    PlainValidator,
    Strict,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

from gatectl.config.base import GatectlModel, Int, Loc, Number, distinct_tokens, yaml_path
from gatectl.limits import (
    MAX_DURATION_MS,
    MAX_WEIGHT_KG,
    DurationMs,
    PersonName,
    Plate,
    Sha256Hex,
    WeightKg,
    single_line,
)

__all__ = [
    "GOODS_KINDS",
    "SHARED_KINDS",
    "INPUT_ROLES",
    "OUTPUT_ROLES",
    "AdministrativeVehicle",
    "Authority",
    "BarrierConfig",
    "CalendarConfig",
    "PlateCameraConfig",
    "WeeklyHours",
    "CardReaderConfig",
    "GatherXmlAuthority",
    "HttpJsonAuthority",
    "IoModule",
    "Issue",
    "JournalConfig",
    "LaneConfig",
    "LaneKind",
    "LedgerConfig",
    "LocalApiConfig",
    "LocalApiUser",
    "ModbusRtuModule",
    "ModbusTcpModule",
    "MqttConfig",
    "MqttTlsConfig",
    "Point",
    "PointsConfig",
    "SiteConfig",
    "SiteInfo",
    "SiteParts",
    "StaffMember",
    "TimeWindow",
    "TrustConfig",
    "WeighbridgeConfig",
    "CROSS_CHECKS",
    "cross_check",
]

LaneKind = Literal["bonded", "ecommerce_9610", "non_bonded", "administrative", "personnel", "shared"]
GOODS_KINDS: frozenset[str] = frozenset({"bonded", "ecommerce_9610", "non_bonded", "shared"})
#: What a shared lane (one physical lane, one set of devices) serves, each passage under
#: the rules of the kind whose authority claims it.
SHARED_KINDS: tuple[str, ...] = ("bonded", "non_bonded")
"""Lane kinds that lift only on their release authority's instruction (R3)."""

CONTEXT_BASE_DIR = "base_dir"
CONTEXT_SKIP_CROSS_CHECKS = "skip_cross_checks"

_NAME = r"^[A-Za-z0-9_-]+$"
ModuleName = Annotated[str, StringConstraints(pattern=_NAME, max_length=64)]
AuthorityName = Annotated[str, StringConstraints(pattern=_NAME, max_length=64)]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
Port = Annotated[Int, Field(ge=1, le=65535)]

# Limits (docs/reliability.md, "Input limits"): every number has a range that makes sense
# at a checkpoint and every string and list a length, so a value check-config accepts can
# never overflow a date, a timer or SQLite at run time.
MAX_LANES = 64
MAX_IO_MODULES = 256
MAX_AUTHORITIES = 32
MAX_WHITELIST = 10_000
MAX_TRUST_KEYS = 16
MAX_RELEASE_CODES = 32
MAX_WINDOWS = 24
MAX_PATH_LEN = 4096
MAX_HOST_LEN = 253  # a DNS name
BAUDRATES: tuple[int, ...] = (1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200)
"""Serial rates card readers, weighing indicators and RS-485 IO modules offer."""


def _ms(low: int, high: int) -> Any:
    return Annotated[DurationMs, Field(ge=low, le=high)]


PulseMs = _ms(10, 10_000)
TravelMs = _ms(100, 120_000)
WaitMs = _ms(1_000, MAX_DURATION_MS)
PollMs = _ms(10, 10_000)
AuthorityTimeoutMs = _ms(100, 60_000)
SilenceMs = _ms(100, MAX_DURATION_MS)
Kilograms = Annotated[WeightKg, Strict()]
Host = Annotated[str, StringConstraints(min_length=1, max_length=MAX_HOST_LEN)]
Label = single_line(128, what="a name")
"""Names shown to people: the site's, a lane's."""


def _baudrate(value: int) -> int:
    if value not in BAUDRATES:
        raise ValueError(f"baudrate must be one of {', '.join(map(str, BAUDRATES))}")
    return value


Baudrate = Annotated[Int, AfterValidator(_baudrate), WithJsonSchema({"type": "integer", "enum": list(BAUDRATES)})]


# --------------------------------------------------------------------------------------
# Scalar types


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context if isinstance(info.context, Mapping) else {}
    base = ctx.get(CONTEXT_BASE_DIR)
    return Path(base) if base is not None else Path.cwd()


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    if str(value) in ("", "."):
        raise ValueError("a file path is required")
    if len(str(value)) > MAX_PATH_LEN:
        raise ValueError(f"a path is at most {MAX_PATH_LEN} characters")
    if value.is_absolute():
        return value
    # Lexical, so validation touches no file system state.
    return Path(os.path.normpath(_base_dir(info) / value))


ConfigPath = Annotated[
    Path,
    AfterValidator(_resolve_path),
    PlainSerializer(str, return_type=str),
]
"""A file path; relative paths are relative to the config file (CONTRACT section 1)."""


def _resolve_serial_port(value: str, info: ValidationInfo) -> str:
    if "://" in value or os.path.isabs(value):
        return value  # pyserial URL (socket://, rfc2217://, loop://) or absolute device
    return os.path.normpath(_base_dir(info) / value)


SerialPort = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_PATH_LEN),
    AfterValidator(_resolve_serial_port),
]
"""A serial device (or pty, or pyserial URL); relative paths are relative to the config."""


def _card(value: str) -> str:
    if not re.fullmatch(r"[0-9A-Fa-f]{1,32}", value):
        raise ValueError("a card number is 1-32 hex digits, like 0100E2850E")
    return value.upper()


Card = Annotated[str, AfterValidator(_card)]
"""A card number as the readers report it: hex digits, normalised to uppercase."""


def _public_key(value: Any) -> bytes:
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        try:
            raw = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not valid base64") from None
    else:
        raise ValueError("expected a base64 string")
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 raw bytes, this decodes to {len(raw)}")
    return raw


PublicKey = Annotated[
    bytes,
    PlainValidator(_public_key),
    PlainSerializer(lambda raw: base64.b64encode(raw).decode("ascii"), return_type=str),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]
"""An Ed25519 public key: base64 in YAML, the raw 32 bytes in Python."""


_POINT_RE = re.compile(r"^(?P<module>[A-Za-z0-9_-]+):(?P<kind>di|coil):(?P<address>[0-9]{1,5})$")
POINT_PATTERN = _POINT_RE.pattern


@dataclass(frozen=True, slots=True)
class Point:
    """A Modbus point: `io1:di:3` is discrete input 3 of IO module `io1`.

    Addresses are protocol addresses from 0 (CONTRACT 2.3). Serialises back to the string.
    """

    module: str
    kind: Literal["di", "coil"]
    address: int

    @classmethod
    def parse(cls, text: str) -> Point:
        m = _POINT_RE.match(text)
        if m is None:
            raise ValueError(
                f"expected MODULE:di:N or MODULE:coil:N (like io1:di:0), got {text!r}"
            )
        address = int(m["address"])
        if address > 65535:
            raise ValueError(f"Modbus addresses run 0-65535, got {address}")
        return cls(m["module"], m["kind"], address)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.module}:{self.kind}:{self.address}"

    @classmethod
    def _coerce(cls, value: Any) -> Point:
        if isinstance(value, Point):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        raise ValueError("expected a point string like io1:di:0")

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._coerce,
            serialization=core_schema.plain_serializer_function_ser_schema(str),
            json_schema_input_schema=core_schema.str_schema(pattern=POINT_PATTERN),
        )


def _kind_is(kind: str, what: str):
    def check(point: Point) -> Point:
        if point.kind != kind:
            raise ValueError(f"{what} must be a {kind} point (like io1:{kind}:0), got {point}")
        return point

    return AfterValidator(check)


InputPoint = Annotated[Point, _kind_is("di", "an input (loop, limit switch, button)")]
OutputPoint = Annotated[Point, _kind_is("coil", "an output (barrier relay)")]


_WINDOW_RE = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Daily opening window `HH:MM-HH:MM` in the site's time zone, in minutes from midnight.

    `start` is included, `end` excluded; `24:00` may end a window; a window whose end is
    before its start runs over midnight (`22:00-06:00`).
    """

    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> TimeWindow:
        m = _WINDOW_RE.match(text)
        if m is None:
            raise ValueError(f'expected "HH:MM-HH:MM" like "08:30-12:00", got {text!r}')
        sh, sm, eh, em = (int(g) for g in m.groups())
        if sh > 23 or sm > 59 or em > 59 or eh > 24 or (eh == 24 and em != 0):
            raise ValueError(f"not a time of day in {text!r}")
        start, end = sh * 60 + sm, eh * 60 + em
        if start == end % 1440:
            raise ValueError(f'{text!r} is empty or the whole day; write "always" for 24 h')
        return cls(start, end)

    def contains(self, t: dt_time) -> bool:
        minute = t.hour * 60 + t.minute
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return (
            f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"
        )

    @classmethod
    def _coerce(cls, value: Any) -> TimeWindow:
        if isinstance(value, TimeWindow):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        raise ValueError('expected a string "HH:MM-HH:MM"')

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._coerce,
            serialization=core_schema.plain_serializer_function_ser_schema(str),
            json_schema_input_schema=core_schema.str_schema(pattern=_WINDOW_RE.pattern),
        )


def _some_windows(windows: tuple[TimeWindow, ...]) -> tuple[TimeWindow, ...]:
    if not windows:
        raise ValueError('no opening window: give at least one, or "always"')
    if len(windows) > MAX_WINDOWS:
        raise ValueError(f"at most {MAX_WINDOWS} opening windows a day")
    return windows


DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class WeeklyHours:
    """Open hours by day of the week, Monday first, and on holidays (None: a holiday keeps
    its weekday's hours). An empty day is a closed day."""

    days: tuple[tuple[TimeWindow, ...], ...]
    holiday: tuple[TimeWindow, ...] | None = None

    @staticmethod
    def _day_range(key: str) -> list[int]:
        parts = key.split("-")
        if len(parts) > 2 or any(p not in DAY_NAMES for p in parts):
            raise ValueError(f'{key!r} is not a day: one of {", ".join(DAY_NAMES)}, a range like "mon-fri", or "holiday"')
        first, last = DAY_NAMES.index(parts[0]), DAY_NAMES.index(parts[-1])
        if last < first:
            raise ValueError(f"{key!r} runs backwards: write the earlier day first")
        return list(range(first, last + 1))

    @classmethod
    def _coerce(cls, value: Any) -> WeeklyHours:
        if isinstance(value, WeeklyHours):
            return value
        if not isinstance(value, Mapping):
            raise ValueError("expected days mapped to windows")
        days: list[tuple[TimeWindow, ...] | None] = [None] * 7
        holiday = None
        for key, raw in value.items():
            if not isinstance(raw, (list, tuple)):
                raise ValueError(f'{key}: expected a list of windows like ["08:30-12:00"] ([] for closed)')
            if len(raw) > MAX_WINDOWS:
                raise ValueError(f"{key}: at most {MAX_WINDOWS} opening windows a day")
            windows = tuple(TimeWindow._coerce(w) for w in raw)
            if key == "holiday":
                holiday = windows
                continue
            for day in cls._day_range(str(key)):
                if days[day] is not None:
                    raise ValueError(f"{DAY_NAMES[day]} is given twice (in {key!r} and before)")
                days[day] = windows
        missing = [DAY_NAMES[i] for i, d in enumerate(days) if d is None]
        if missing:
            raise ValueError(f"no hours for {', '.join(missing)}: give them [] to keep the lane closed then")
        return cls(tuple(d for d in days if d is not None), holiday)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._coerce,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v: {**{DAY_NAMES[i]: [str(w) for w in d] for i, d in enumerate(v.days)},
                           **({"holiday": [str(w) for w in v.holiday]} if v.holiday is not None else {})}),
        )


def _open_hours_tag(value: Any) -> str | None:
    if value == "always":
        return "always"
    if isinstance(value, (list, tuple)):
        return "windows"
    if isinstance(value, (Mapping, WeeklyHours)):
        return "weekly"
    return None


OpenHours = Annotated[
    Union[
        Annotated[Literal["always"], Tag("always")],
        Annotated[tuple[TimeWindow, ...], AfterValidator(_some_windows), Tag("windows")],
        Annotated[WeeklyHours, Tag("weekly")],
    ],
    Discriminator(
        _open_hours_tag,
        custom_error_type="open_hours",
        custom_error_message=(
            'expected "always", a list like ["08:30-12:00", "13:30-17:30"], or days like '
            '{mon-fri: ["08:30-12:00"], sat: [], sun: [], holiday: []}'
        ),
    ),
]


# --------------------------------------------------------------------------------------
# Sections


class SiteInfo(GatectlModel):
    id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]+$", max_length=64)] = Field(
        title="Site id",
        description="Lowercase letters, digits and dashes; sent to authorities and in every event.",
    )
    name: Label = Field(title="Site name", description="Shown to people, e.g. 昆明综合保税区经开片区.")
    timezone: Annotated[str, StringConstraints(max_length=64)] = Field(
        "Asia/Shanghai",
        title="Time zone",
        description="IANA zone name; open hours and ledger days are in this zone.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"unknown time zone {value!r} (expected e.g. Asia/Shanghai)") from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class JournalConfig(GatectlModel):
    path: ConfigPath = Field(
        title="Journal file",
        description="SQLite journal; relative to the config file. Stored resolved (absolute).",
    )


def _split_host_port(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f'expected "host:port" like 127.0.0.1:8470, got {value!r}')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f'write an IPv6 address in brackets, like "[::1]:8470", got {value!r}')
    if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f'expected "host:port" with a port 1-65535, got {value!r}')
    return host, int(port_text)


LOCAL_API_ROLES: tuple[str, ...] = ("guard", "customs", "park", "maintenance", "camera")
MAX_LOCAL_API_USERS = 256


class LocalApiUser(GatectlModel):
    """One user of the local API: the actor of everything done with its token (CONTRACT 8)."""

    name: PersonName = Field(title="Name", description="The actor of every record made with this token.")
    role: Literal["guard", "customs", "park", "maintenance", "camera"] = Field(
        title="Role",
        description="guard: alarms, emergency accounts, incidents, duty records; customs: spot checks and "
        "lane hours; park: drills and tickets; maintenance: tickets; camera: plates only.",
    )
    token_sha256: Sha256Hex = Field(
        title="Token SHA-256",
        description="Lowercase hex SHA-256 of the bearer token (python -m gatectl.users TOKEN prints it).",
    )


class LocalApiConfig(GatectlModel):
    listen: Annotated[str, StringConstraints(max_length=MAX_HOST_LEN + 8)] = Field(
        "127.0.0.1:8470",
        title="Listen address",
        description='"host:port" of the local HTTP API and guard screen; IPv6 as "[::1]:8470".',
    )
    token: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = Field(
        None,
        repr=False,
        title="Bearer token",
        description="A full-access key for every POST (records name the actor the body gives). "
        "Without a token or users every POST is refused.",
    )
    users: list[LocalApiUser] = Field(
        default_factory=list,
        max_length=MAX_LOCAL_API_USERS,
        title="Users",
        description="Role-based access: each request's actor is the user of its bearer token.",
    )

    @field_validator("users")
    @classmethod
    def _distinct_tokens(cls, users: list[LocalApiUser]) -> list[LocalApiUser]:
        return distinct_tokens(users)

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        _split_host_port(value)
        return value

    @property
    def host(self) -> str:
        return _split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_host_port(self.listen)[1]


class MqttTlsConfig(GatectlModel):
    ca_file: ConfigPath | None = Field(
        None, title="CA file", description="PEM CA bundle; without it the system trust store."
    )
    cert_file: ConfigPath | None = Field(
        None, title="Client certificate", description="PEM client certificate (with key_file)."
    )
    key_file: ConfigPath | None = Field(
        None, title="Client key", description="PEM private key of cert_file."
    )

    @model_validator(mode="after")
    def _cert_with_key(self) -> MqttTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self


class MqttConfig(GatectlModel):
    host: Host = Field(title="Broker host")
    port: Port = Field(1883, title="Broker port")
    topic_prefix: Annotated[str, StringConstraints(max_length=128)] | None = Field(
        None,
        title="Topic prefix",
        description="Prefix of every topic (CONTRACT 5); default gatectl/<site.id>.",
    )
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        None,
        title="Client id",
        description="MQTT client id; must differ between lane PCs. Default: chosen by the MQTT link.",
    )
    username: Annotated[str, StringConstraints(max_length=256)] | None = Field(None, title="User name")
    password: Annotated[str, StringConstraints(max_length=1024)] | None = Field(None, repr=False, title="Password")
    tls: MqttTlsConfig | None = Field(None, title="TLS", description="None: plain TCP.")

    @field_validator("topic_prefix")
    @classmethod
    def _valid_prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value or value.startswith("/") or value.endswith("/") or "//" in value:
            raise ValueError("a topic prefix is one or more non-empty levels, like gatectl/kmzb-jk")
        if any(c in value for c in "+#\x00"):
            raise ValueError("a topic prefix cannot contain the wildcards + or #")
        return value


class TrustConfig(GatectlModel):
    customs: list[PublicKey] = Field(
        default_factory=list,
        max_length=MAX_TRUST_KEYS,
        title="Customs keys",
        description="Ed25519 public keys (base64, raw 32 bytes) whose signature is a customs approval.",
    )
    park: list[PublicKey] = Field(
        default_factory=list,
        max_length=MAX_TRUST_KEYS,
        title="Park management keys",
        description="Ed25519 public keys (base64, raw 32 bytes) of park management (non_bonded countersign).",
    )


class HttpJsonAuthority(GatectlModel):
    protocol: Literal["http-json"] = Field(title="Protocol", description="CONTRACT 3.1.")
    url: Annotated[str, StringConstraints(max_length=2048)] = Field(
        title="Base URL",
        description='Base URL; requests go to {url}gate/v1/…. A missing trailing "/" is added.',
    )
    timeout_ms: AuthorityTimeoutMs = Field(
        3000, title="Timeout", description="100-60000 ms. No answer in time holds."
    )

    @field_validator("url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        if parts.query or parts.fragment:
            raise ValueError("a base URL has no ?query or #fragment")
        # {url}gate/v1/pass-requests: the base must end with "/", or the last path
        # segment would be replaced. http://h:8480 and http://h:8480/ mean the same.
        return value if value.endswith("/") else value + "/"


class GatherXmlAuthority(GatectlModel):
    protocol: Literal["gather-xml"] = Field(title="Protocol", description="CONTRACT 3.2.")
    host: Host = Field(title="Host")
    port: Port = Field(title="Port")
    area_id: Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,10}$")] = Field(
        title="Area id",
        description="AREA_ID, 1-10 ASCII characters (space-padded in the frame). Quote it.",
    )
    timeout_ms: AuthorityTimeoutMs = Field(
        3000, title="Timeout", description="100-60000 ms. No answer in time holds."
    )
    release_codes: list[Annotated[str, StringConstraints(max_length=256)]] = Field(
        default_factory=lambda: ["^00"],
        min_length=1,
        max_length=MAX_RELEASE_CODES,
        title="Release codes",
        description="Regexes searched in CHECK_RESULT (re.search); any match releases, else hold.",
    )
    byte_order: Literal["big", "little"] = Field(
        "big", title="Byte order", description="Of the frame's integers."
    )

    @field_validator("release_codes")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for i, pattern in enumerate(value):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"release_codes[{i}] {pattern!r} is not a regex: {exc}") from None
        return value

    def is_release(self, check_result: str) -> bool:
        """True when CHECK_RESULT matches one of `release_codes`."""
        return any(re.search(p, check_result) for p in self.release_codes)


Authority = Annotated[Union[HttpJsonAuthority, GatherXmlAuthority], Field(discriminator="protocol")]


class ModbusTcpModule(GatectlModel):
    protocol: Literal["modbus-tcp"] = Field(title="Protocol")
    host: Host = Field(title="Host")
    port: Port = Field(502, title="Port")
    unit: Int = Field(1, ge=0, le=255, title="Unit id")
    poll_ms: PollMs = Field(50, title="Poll period", description="Discrete inputs read every poll_ms (10-10000).")


class ModbusRtuModule(GatectlModel):
    protocol: Literal["modbus-rtu"] = Field(title="Protocol")
    port: SerialPort = Field(title="Serial device", description="RS-485 adapter, e.g. /dev/ttyUSB0.")
    baudrate: Baudrate = Field(9600, title="Baud rate")
    parity: Literal["N", "E", "O"] = Field("N", title="Parity")
    stopbits: Literal[1, 2] = Field(1, title="Stop bits")
    unit: Int = Field(1, ge=1, le=247, title="Unit id")
    poll_ms: PollMs = Field(50, title="Poll period", description="Discrete inputs read every poll_ms (10-10000).")


IoModule = Annotated[Union[ModbusTcpModule, ModbusRtuModule], Field(discriminator="protocol")]


class AdministrativeVehicle(GatectlModel):
    card: Card = Field(title="Card", description="IC card number; uppercase hex.")
    plate: Plate = Field(title="Plate", description="Number plate, e.g. 云A12345 (at most 16 characters).")
    curb_weight_kg: Number | None = Field(
        None, gt=0, le=MAX_WEIGHT_KG, title="Curb weight (kg)",
        description="With a weighbridge, heavier than this plus the tolerance is held (R7).",
    )


class StaffMember(GatectlModel):
    card: Card = Field(title="Card", description="IC card number; uppercase hex.")
    name: PersonName = Field(title="Name")


class CardReaderConfig(GatectlModel):
    port: SerialPort = Field(title="Serial device", description="Any path pyserial opens, a pty included.")
    baudrate: Baudrate = Field(9600, title="Baud rate")
    format: Literal["ascii-line", "stx-hex-xor", "stx-bin-bcc"] = Field(
        title="Frame format", description="CONTRACT 2.1."
    )
    silence_ms: SilenceMs | None = Field(
        None,
        title="Silence fault after",
        description=(
            "A reader that sends no valid frame for this long is faulty and the lane fails "
            "closed. Readers only speak when a card is shown, so the default (null) never "
            "treats silence as a fault; set it only for readers that send a heartbeat."
        ),
    )


class WeighbridgeConfig(GatectlModel):
    port: SerialPort = Field(title="Serial device", description="Any path pyserial opens, a pty included.")
    baudrate: Baudrate = Field(9600, title="Baud rate")
    format: Literal["xk3190-tf0", "toledo-continuous"] = Field(
        title="Frame format", description="CONTRACT 2.2."
    )
    stable_samples: Int = Field(
        5, ge=2, le=100, title="Stable samples", description="Identical consecutive readings that count as stable."
    )
    min_vehicle_kg: Kilograms = Field(
        500, title="Minimum vehicle weight", description="Below this the bridge is empty."
    )
    silence_ms: SilenceMs | None = Field(
        3000,
        title="Silence fault after",
        description=(
            "An indicator in continuous mode that sends no valid frame for this long is "
            "faulty and the lane fails closed; the next valid frame clears it. null turns "
            "the check off (only for indicators that do not stream)."
        ),
    )


INPUT_ROLES: tuple[str, ...] = (
    "arrival_loop",
    "safety_loop",
    "exit_loop",
    "barrier_up",
    "barrier_down",
    "manual_lift_button",
    "emergency_button",
)
OUTPUT_ROLES: tuple[str, ...] = ("barrier_open", "barrier_close")
_SHAREABLE_ROLES = frozenset({"manual_lift_button", "emergency_button"})


class PointsConfig(GatectlModel):
    arrival_loop: InputPoint = Field(title="Arrival loop", description="Loop before the barrier.")
    safety_loop: InputPoint = Field(title="Safety loop", description="Loop under the boom.")
    exit_loop: InputPoint | None = Field(
        None,
        title="Exit loop",
        description="Loop after the barrier; without it, clearing the safety loop means passed.",
    )
    barrier_up: InputPoint = Field(title="Upper limit switch")
    barrier_down: InputPoint = Field(title="Lower limit switch")
    manual_lift_button: InputPoint | None = Field(None, title="Manual lift button (guard panel)")
    emergency_button: InputPoint | None = Field(None, title="Emergency button (guard panel)")
    barrier_open: OutputPoint = Field(title="Raise coil", description="Pulsed to raise the boom.")
    barrier_close: OutputPoint = Field(title="Lower coil", description="Pulsed to lower the boom.")

    def items(self) -> Iterator[tuple[str, Point]]:
        """(role, point) for every configured point, inputs first."""
        for role in INPUT_ROLES + OUTPUT_ROLES:
            point = getattr(self, role)
            if point is not None:
                yield role, point


class BarrierConfig(GatectlModel):
    pulse_ms: PulseMs = Field(300, title="Pulse length", description="Coil on-time per command (10-10000 ms).")
    travel_timeout_ms: TravelMs = Field(
        6000,
        title="Travel timeout",
        description="Limit switch not reached in time is a barrier fault (100-120000 ms).",
    )
    card_wait_ms: WaitMs = Field(
        60000,
        title="Card wait",
        description="A vehicle on the arrival loop without a card read is held after this (1 s to a day).",
    )
    backout_wait_ms: Annotated[DurationMs, Field(ge=500, le=600_000)] = Field(
        5000,
        title="Back-out wait",
        description="Every loop empty this long after a lift (or a hold): the vehicle has gone (0.5 s to 10 min).",
    )
    weigh_wait_ms: WaitMs = Field(
        60000,
        title="Weigh wait",
        description="No stable weight this long after the card: the vehicle is held (1 s to a day).",
    )
    card_grace_ms: Annotated[DurationMs, Field(ge=0, le=600_000)] = Field(
        5000,
        title="Card grace",
        description="A card read this long before the vehicle reaches the arrival loop still counts (0 to 10 min).",
    )

    @model_validator(mode="after")
    def _pulse_shorter_than_travel(self) -> BarrierConfig:
        if self.pulse_ms >= self.travel_timeout_ms:
            raise ValueError(
                f"pulse_ms ({self.pulse_ms}) must be shorter than travel_timeout_ms "
                f"({self.travel_timeout_ms})"
            )
        return self


class PlateCameraConfig(GatectlModel):
    max_age_ms: Annotated[DurationMs, Field(ge=1000, le=600_000)] = Field(
        30000,
        title="Plate age",
        description="The latest plate read this recently is the vehicle's on the arrival loop (1 s to 10 min).",
    )


class CalendarConfig(GatectlModel):
    holidays: list[date] = Field(
        default_factory=list, max_length=366 * 5, title="Holidays",
        description='Dates whose open hours are a lane\'s "holiday" hours, e.g. ["2027-01-01"].',
    )


class LaneConfig(GatectlModel):
    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]+$", max_length=64)] = Field(
        title="Lane id", description="Letters, digits and dashes; used in topics and URLs."
    )
    name: Label = Field(title="Lane name", description="Shown to people, e.g. 保税货物进区1号.")
    kind: LaneKind = Field(title="Lane kind", description="Decides who releases vehicles (R1).")
    direction: Literal["in", "out"] = Field(title="Direction", description="Into or out of the zone.")
    channel_no: Annotated[str, StringConstraints(min_length=1, max_length=32)] = Field(
        title="Channel number", description="The lane's number at the authority (CHNL_NO). Quote it."
    )
    authority: AuthorityName | None = Field(
        None,
        title="Release authority",
        description="Name in `authorities`; required on bonded, ecommerce_9610 and non_bonded lanes.",
    )
    authorities: dict[Literal["bonded", "non_bonded"], AuthorityName] | None = Field(
        None,
        title="Authorities of a shared lane",
        description=(
            "kind: shared only: the release authority of each kind the lane serves, "
            "e.g. {bonded: jg2, non_bonded: ygt}. Each vehicle is asked of both; the one "
            "whose authority claims it decides the passage's kind."
        ),
    )
    open_hours: OpenHours = Field(
        "always",
        title="Open hours",
        description=(
            '"always", daily windows ["08:30-12:00", …], or by day {mon-fri: [...], sat: [...], '
            "sun: [], holiday: []} in site.timezone (R2). On a shared lane they are the bonded "
            "traffic's; non-bonded traffic is open 24 h."
        ),
    )
    plate_camera: PlateCameraConfig | None = Field(
        None, title="Plate camera", description="Plates are posted by the camera role of the local API."
    )
    weighs: bool = Field(
        True,
        title="Weighs vehicles",
        description=(
            "Administrative lanes without a weighbridge must say false here: registered vehicles "
            "then pass without their curb weight being checked (R7 rests on spot checks)."
        ),
    )
    card_reader: CardReaderConfig = Field(title="Card reader")
    weighbridge: WeighbridgeConfig | None = Field(
        None, title="Weighbridge", description="Required on goods lanes, optional otherwise."
    )
    points: PointsConfig = Field(title="IO points")
    barrier: BarrierConfig = Field(default_factory=BarrierConfig, title="Barrier timing")
    curb_weight_tolerance_kg: Kilograms = Field(
        300,
        title="Curb weight tolerance",
        description=(
            "Administrative lanes hold a registered vehicle weighing more than its "
            "curb_weight_kg plus this (R7: no goods in administrative vehicles)."
        ),
    )

    @property
    def is_goods(self) -> bool:
        return self.kind in GOODS_KINDS

    @property
    def shared(self) -> bool:
        return self.kind == "shared"


class LedgerConfig(GatectlModel):
    """R14: the checkpoint ledger (卡口登记台账) the daemon writes by itself every period."""

    dir: ConfigPath | None = Field(
        None,
        title="Ledger directory",
        description="Where the daemon writes each period's ledger (relative to the config file); "
        "None: no scheduled ledger (`gatectl ledger export` works either way).",
    )
    every_days: Int = Field(
        15, ge=1, le=366, title="Period (days)", description="Length of one ledger period, in site-local days."
    )
    formats: list[Literal["csv", "xlsx"]] = Field(
        default_factory=lambda: ["xlsx"],
        min_length=1,
        title="Formats",
        description="One file (csv: one set of files) per format and period.",
    )
    first_day: date | None = Field(
        None,
        title="First period's first day",
        description="Periods run every_days from this site-local date; None: from the day of the journal's "
        "first event. Periods ending before it are never written.",
    )

    @field_validator("formats")
    @classmethod
    def _formats_once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("name each format once")
        return value


class SiteConfig(GatectlModel):
    """The whole config file (CONTRACT section 1)."""

    site: SiteInfo = Field(title="Site")
    journal: JournalConfig = Field(title="Journal")
    local_api: LocalApiConfig = Field(default_factory=LocalApiConfig, title="Local API")
    mqtt: MqttConfig | None = Field(None, title="MQTT", description="None: nothing is published.")
    trust: TrustConfig = Field(default_factory=TrustConfig, title="Approval signers")
    authorities: dict[AuthorityName, Authority] = Field(
        default_factory=dict, max_length=MAX_AUTHORITIES, title="Release authorities", description="By name."
    )
    io_modules: dict[ModuleName, IoModule] = Field(
        max_length=MAX_IO_MODULES, title="IO modules", description="By name."
    )
    administrative_vehicles: list[AdministrativeVehicle] = Field(
        default_factory=list,
        max_length=MAX_WHITELIST,
        title="Administrative vehicles",
        description="Whitelist of administrative lanes.",
    )
    staff: list[StaffMember] = Field(
        default_factory=list, max_length=MAX_WHITELIST, title="Staff", description="Cards that open personnel lanes."
    )
    lanes: list[LaneConfig] = Field(min_length=1, max_length=MAX_LANES, title="Lanes")
    calendar: CalendarConfig = Field(default_factory=CalendarConfig, title="Calendar", description="Holidays.")
    ledger: LedgerConfig = Field(
        default_factory=LedgerConfig, title="Checkpoint ledger", description="R14: the ledger written every period."
    )

    @model_validator(mode="after")
    def _defaults_and_cross_checks(self, info: ValidationInfo) -> SiteConfig:
        if self.mqtt is not None and self.mqtt.topic_prefix is None:
            mqtt = self.mqtt.model_copy(update={"topic_prefix": f"gatectl/{self.site.id}"})
            object.__setattr__(self, "mqtt", mqtt)  # frozen: fill the derived default once
        ctx = info.context if isinstance(info.context, Mapping) else {}
        if not ctx.get(CONTEXT_SKIP_CROSS_CHECKS):
            issues = cross_check(SiteParts.from_config(self))
            if issues:
                raise ValueError("; ".join(str(i) for i in issues))
        return self

    def lane(self, lane_id: str) -> LaneConfig:
        for lane in self.lanes:
            if lane.id == lane_id:
                return lane
        raise KeyError(lane_id)


# --------------------------------------------------------------------------------------
# Cross-checks


@dataclass(frozen=True, slots=True)
class Issue:
    """A cross-check finding: where in the document, and what is wrong."""

    loc: Loc
    message: str

    def __str__(self) -> str:
        return f"{yaml_path(self.loc)}: {self.message}"


@dataclass(frozen=True)
class SiteParts:
    """The parts of a site the cross-checks look at: whatever validated.

    From a valid `SiteConfig` every part is there. From a file with errors, only the lanes,
    modules, … that validated on their own are, so the cross-checks still run on them.
    """

    lanes: Mapping[int, LaneConfig] = field(default_factory=dict)  # by position in `lanes`
    # By name; a None value is a named entry whose body is invalid. The whole mapping is
    # None when the names are unknown (the section is missing or not a mapping), so the
    # checks that look names up stay quiet rather than flag every reference.
    io_modules: Mapping[str, IoModule | None] | None = field(default_factory=dict)
    authorities: Mapping[str, Authority | None] | None = field(default_factory=dict)
    administrative_vehicles: Mapping[int, AdministrativeVehicle] = field(default_factory=dict)
    administrative_vehicle_count: int = 0  # entries in the file, valid or not
    staff: Mapping[int, StaffMember] = field(default_factory=dict)
    staff_count: int = 0
    trust: TrustConfig | None = None

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> SiteParts:
        return cls(
            lanes=dict(enumerate(cfg.lanes)),
            io_modules=dict(cfg.io_modules),
            authorities=dict(cfg.authorities),
            administrative_vehicles=dict(enumerate(cfg.administrative_vehicles)),
            administrative_vehicle_count=len(cfg.administrative_vehicles),
            staff=dict(enumerate(cfg.staff)),
            staff_count=len(cfg.staff),
            trust=cfg.trust,
        )

    @classmethod
    def from_raw(cls, data: Any, context: Mapping[str, Any] | None = None) -> SiteParts:
        """Validate each part of a (plain) document on its own; keep what passes."""
        if not isinstance(data, Mapping):
            return cls()

        def one(adapter: TypeAdapter[Any], value: Any) -> Any:
            try:
                return adapter.validate_python(value, context=context)
            except ValidationError:
                return None

        def named(key: str, adapter: TypeAdapter[Any], *, required: bool) -> dict[str, Any] | None:
            if key not in data and not required:
                return {}
            raw = data.get(key)
            if not isinstance(raw, Mapping):
                return None
            return {str(k): one(adapter, v) for k, v in raw.items()}

        def indexed(key: str, adapter: TypeAdapter[Any]) -> tuple[dict[int, Any], int]:
            raw = data.get(key)
            if not isinstance(raw, list):
                return {}, 0
            out = {i: one(adapter, v) for i, v in enumerate(raw)}
            return {i: v for i, v in out.items() if v is not None}, len(raw)

        lanes = {}
        raw_lanes = data.get("lanes")
        if isinstance(raw_lanes, list):
            for i, raw in enumerate(raw_lanes):
                lane = _salvage(_LANE, raw, context, protected=_LANE_PROTECTED)
                if lane is not None:
                    lanes[i] = lane
        vehicles, n_vehicles = indexed("administrative_vehicles", _VEHICLE)
        staff, n_staff = indexed("staff", _STAFF)
        trust = one(_TRUST, data.get("trust") or {})
        return cls(
            lanes=lanes,
            io_modules=named("io_modules", _IO_MODULE, required=True),
            authorities=named("authorities", _AUTHORITY, required=False),
            administrative_vehicles=vehicles,
            administrative_vehicle_count=n_vehicles,
            staff=staff,
            staff_count=n_staff,
            trust=trust,
        )


_LANE: TypeAdapter[LaneConfig] = TypeAdapter(LaneConfig)
# Dropping these would make a goods lane look as if it had no authority or weighbridge.
_LANE_PROTECTED = frozenset({"authority", "weighbridge"})
_VEHICLE: TypeAdapter[AdministrativeVehicle] = TypeAdapter(AdministrativeVehicle)
_STAFF: TypeAdapter[StaffMember] = TypeAdapter(StaffMember)
_TRUST: TypeAdapter[TrustConfig] = TypeAdapter(TrustConfig)
_IO_MODULE: TypeAdapter[Any] = TypeAdapter(IoModule)
_AUTHORITY: TypeAdapter[Any] = TypeAdapter(Authority)


def _salvage(
    adapter: TypeAdapter[Any],
    raw: Any,
    context: Mapping[str, Any] | None,
    *,
    protected: frozenset[str] = frozenset(),
    attempts: int = 32,
) -> Any:
    """Validate `raw`; on errors, drop each offending key and try again.

    Keys with defaults fall back to them, unknown keys go; an error on a required key
    (it comes back as `missing`) or on a `protected` top-level key gives up and returns
    None. Only for the cross-checks of a file that already failed: a lane with a bad
    pulse_ms still has its points checked.
    """
    if not isinstance(raw, Mapping):
        return None
    value = copy.deepcopy(dict(raw))
    for _ in range(attempts):
        try:
            return adapter.validate_python(value, context=context)
        except ValidationError as exc:
            err = exc.errors()[0]  # one at a time: a dropped key may hold other errors
            if err["type"] == "missing" or not _drop_at(value, tuple(err["loc"]), protected):
                return None
    return None


def _drop_at(data: dict[str, Any], loc: Loc, protected: frozenset[str]) -> bool:
    """Delete the mapping key nearest to `loc` that exists in `data` (union tags skipped)."""
    node: Any = data
    trail: list[tuple[Any, Any]] = []  # (container, key) pairs along the existing path
    for seg in loc:
        if isinstance(node, dict) and isinstance(seg, str) and seg in node:
            trail.append((node, seg))
            node = node[seg]
        elif isinstance(node, list) and isinstance(seg, int) and 0 <= seg < len(node):
            trail.append((node, seg))
            node = node[seg]
    while trail and not isinstance(trail[-1][0], dict):
        trail.pop()  # inside a list: drop the whole list's key
    if not trail:
        return False
    container, key = trail[-1]
    if container is data and key in protected:
        return False
    del container[key]
    return True


def _lane_label(i: int, lane: LaneConfig) -> str:
    return f"lanes[{i}] ({lane.id})"


def verify_lane_ids_unique(parts: SiteParts) -> Iterator[Issue]:
    """Lane ids name topics, URLs and journal rows: one lane each (case-insensitively)."""
    seen: dict[str, int] = {}
    for i, lane in parts.lanes.items():
        key = lane.id.casefold()
        if key in seen:
            first = seen[key]
            yield Issue(
                ("lanes", i, "id"),
                f"lane id {lane.id!r} is already used by {_lane_label(first, parts.lanes[first])}",
            )
        else:
            seen[key] = i


def verify_channels_unique(parts: SiteParts) -> Iterator[Issue]:
    """The authority tells lanes apart by channel number and direction."""
    seen: dict[tuple[str, str], int] = {}
    for i, lane in parts.lanes.items():
        key = (lane.channel_no, lane.direction)
        if key in seen:
            first = seen[key]
            yield Issue(
                ("lanes", i, "channel_no"),
                f"channel_no {lane.channel_no!r} ({lane.direction}) is already used by "
                f"{_lane_label(first, parts.lanes[first])}",
            )
        else:
            seen[key] = i


def verify_io_points_exist(parts: SiteParts) -> Iterator[Issue]:
    """Every point names an IO module defined in `io_modules`."""
    if parts.io_modules is None:
        return
    names = sorted(parts.io_modules)
    for i, lane in parts.lanes.items():
        for role, point in lane.points.items():
            if point.module not in parts.io_modules:
                defined = ", ".join(names) if names else "none"
                yield Issue(
                    ("lanes", i, "points", role),
                    f"IO module {point.module!r} is not defined in io_modules (defined: {defined})",
                )


def verify_io_points_unique(parts: SiteParts) -> Iterator[Issue]:
    """One coil drives one barrier; one input is one loop, limit or button of one lane.

    Panel buttons may be shared between lanes (one emergency button for a booth).
    """
    seen: dict[Point, tuple[int, str]] = {}
    for i, lane in parts.lanes.items():
        for role, point in lane.points.items():
            first = seen.get(point)
            if first is None:
                seen[point] = (i, role)
                continue
            fi, frole = first
            same_lane = fi == i
            shareable = point.kind == "di" and role in _SHAREABLE_ROLES and frole in _SHAREABLE_ROLES
            if same_lane or not shareable:
                yield Issue(
                    ("lanes", i, "points", role),
                    f"{point} is already lanes[{fi}].points.{frole}"
                    + (" of this lane" if same_lane else f" ({parts.lanes[fi].id})"),
                )


def verify_io_modules_distinct(parts: SiteParts) -> Iterator[Issue]:
    """Two names for one device would hide shared coils from the check above."""
    seen: dict[tuple[Any, ...], str] = {}
    lines: dict[str, tuple[int, str, int]] = {}
    for name, module in (parts.io_modules or {}).items():
        if module is None:
            continue
        if isinstance(module, ModbusTcpModule):
            key: tuple[Any, ...] = ("tcp", module.host.casefold(), module.port, module.unit)
            what = f"{module.host}:{module.port} unit {module.unit}"
        else:
            key = ("rtu", module.port, module.unit)
            what = f"{module.port} unit {module.unit}"
            line = (module.baudrate, module.parity, module.stopbits)
            other = lines.setdefault(module.port, line)
            if other != line:
                yield Issue(
                    ("io_modules", name, "baudrate"),
                    f"modules on {module.port} must share baudrate/parity/stopbits "
                    f"{other[0]}/{other[1]}/{other[2]}",
                )
        if key in seen:
            yield Issue(("io_modules", name), f"{what} is already io_modules.{seen[key]}")
        else:
            seen[key] = name


def verify_serial_ports_unique(parts: SiteParts) -> Iterator[Issue]:
    """A serial port has one device on it: card reader, weighbridge or an RS-485 IO bus."""
    owners: dict[str, str] = {}
    for name, module in (parts.io_modules or {}).items():
        if isinstance(module, ModbusRtuModule):
            owners.setdefault(module.port, f"io_modules.{name}")
    for i, lane in parts.lanes.items():
        devices: list[tuple[str, str]] = [("card_reader", lane.card_reader.port)]
        if lane.weighbridge is not None:
            devices.append(("weighbridge", lane.weighbridge.port))
        for device, port in devices:
            owner = owners.get(port)
            if owner is not None:
                yield Issue(("lanes", i, device, "port"), f"serial port {port} is already used by {owner}")
            else:
                owners[port] = f"lanes[{i}].{device} ({lane.id})"


def verify_authorities_exist(parts: SiteParts) -> Iterator[Issue]:
    """A lane's authority is one of `authorities`."""
    if parts.authorities is None:
        return
    names = ", ".join(sorted(parts.authorities)) or "none"
    for i, lane in parts.lanes.items():
        if lane.authority is not None and lane.authority not in parts.authorities:
            yield Issue(
                ("lanes", i, "authority"),
                f"authority {lane.authority!r} is not defined in authorities (defined: {names})",
            )
        for kind, name in (lane.authorities or {}).items():
            if name not in parts.authorities:
                yield Issue(("lanes", i, "authorities", kind),
                            f"authority {name!r} is not defined in authorities (defined: {names})")


def verify_goods_lanes_have_authority(parts: SiteParts) -> Iterator[Issue]:
    """R3: a goods lane lifts only on its authority's release, so it must have one; a
    shared lane one for each kind it serves, and only those."""
    for i, lane in parts.lanes.items():
        if lane.shared:
            if lane.authority is not None:
                yield Issue(("lanes", i, "authority"),
                            "a shared lane names an authority per kind in `authorities`, not one `authority`")
            missing = [k for k in SHARED_KINDS if k not in (lane.authorities or {})]
            if missing:
                yield Issue(("lanes", i, "authorities"),
                            f"a shared lane needs the authority of each kind it serves: add {', '.join(missing)}")
        elif lane.authorities is not None:
            yield Issue(("lanes", i, "authorities"), "only a shared lane names authorities per kind")
        elif lane.is_goods and lane.authority is None:
            yield Issue(
                ("lanes", i, "authority"),
                f"{lane.kind} lanes release only on their authority's instruction: name one of authorities",
            )


def verify_administrative_lanes_weigh(parts: SiteParts) -> Iterator[Issue]:
    """R7: "no goods in administrative vehicles" is checked by weight: a lane without a
    weighbridge must say that it does not weigh."""
    curb = any(v.curb_weight_kg is not None for v in parts.administrative_vehicles.values())
    for i, lane in parts.lanes.items():
        if lane.kind == "administrative" and lane.weighbridge is None and lane.weighs and curb:
            yield Issue(
                ("lanes", i, "weighbridge"),
                "registered vehicles have curb weights but this administrative lane has no weighbridge: add one, "
                "or set weighs: false to pass them unweighed (R7 then rests on customs spot checks)",
            )
        if lane.weighbridge is not None and not lane.weighs:
            yield Issue(("lanes", i, "weighs"), "weighs: false on a lane with a weighbridge: remove one or the other")


def verify_goods_lanes_weigh(parts: SiteParts) -> Iterator[Issue]:
    """CONTRACT 1: the weighbridge is optional only on administrative and personnel lanes."""
    for i, lane in parts.lanes.items():
        if lane.is_goods and lane.weighbridge is None:
            yield Issue(
                ("lanes", i, "weighbridge"),
                f"{lane.kind} lanes weigh every vehicle: add a weighbridge",
            )


def verify_non_bonded_always_open(parts: SiteParts) -> Iterator[Issue]:
    """R2: the non-bonded lane is open 24 h."""
    for i, lane in parts.lanes.items():
        if lane.kind == "non_bonded" and lane.open_hours != "always":
            yield Issue(("lanes", i, "open_hours"), 'non_bonded lanes are open 24 h: use "always"')


def verify_gather_channel_numbers(parts: SiteParts) -> Iterator[Issue]:
    """gather-xml frames carry CHNL_NO in 10 ASCII bytes."""
    for i, lane in parts.lanes.items():
        names = [lane.authority or "", *(lane.authorities or {}).values()]
        gather = any(isinstance((parts.authorities or {}).get(n), GatherXmlAuthority) for n in names)
        if gather and not re.fullmatch(
            r"[\x21-\x7e]{1,10}", lane.channel_no
        ):
            yield Issue(
                ("lanes", i, "channel_no"),
                f"authority {lane.authority!r} speaks gather-xml: channel_no must be 1-10 ASCII characters",
            )


def verify_whitelists_present(parts: SiteParts) -> Iterator[Issue]:
    """Administrative and personnel lanes open only for listed cards: the list must exist."""
    for i, lane in parts.lanes.items():
        if lane.kind == "administrative" and parts.administrative_vehicle_count == 0:
            yield Issue(
                ("lanes", i, "kind"),
                "administrative lanes pass only registered vehicles, but administrative_vehicles is empty",
            )
        if lane.kind == "personnel" and parts.staff_count == 0:
            yield Issue(("lanes", i, "kind"), "personnel lanes open only for staff cards, but staff is empty")


def verify_cards_unique(parts: SiteParts) -> Iterator[Issue]:
    """One card, one vehicle (R4); one card, one person."""
    for key, entries in (
        ("administrative_vehicles", parts.administrative_vehicles),
        ("staff", parts.staff),
    ):
        seen: dict[str, int] = {}
        for j, entry in entries.items():
            if entry.card in seen:
                yield Issue((key, j, "card"), f"card {entry.card} is already {key}[{seen[entry.card]}]")
            else:
                seen[entry.card] = j


def verify_trust_roles_distinct(parts: SiteParts) -> Iterator[Issue]:
    """A park countersignature must come from someone other than customs (R10)."""
    if parts.trust is None:
        return
    customs = set(parts.trust.customs)
    for j, key in enumerate(parts.trust.park):
        if key in customs:
            yield Issue(("trust", "park", j), "this key is also a customs key; the two roles need different keys")


CROSS_CHECKS = (
    verify_lane_ids_unique,
    verify_channels_unique,
    verify_io_points_exist,
    verify_io_points_unique,
    verify_io_modules_distinct,
    verify_serial_ports_unique,
    verify_authorities_exist,
    verify_goods_lanes_have_authority,
    verify_goods_lanes_weigh,
    verify_administrative_lanes_weigh,
    verify_non_bonded_always_open,
    verify_gather_channel_numbers,
    verify_whitelists_present,
    verify_cards_unique,
    verify_trust_roles_distinct,
)


def cross_check(parts: SiteParts) -> list[Issue]:
    """Every finding of every cross-check."""
    return [issue for check in CROSS_CHECKS for issue in check(parts)]
