"""The zone config (``zone.yaml``) of ``gatectl central``: CONTRACT section 9, and a few
keys of its own, each with a default.

    config = load_zone_config("zone.yaml")     # raises ConfigError(problems=[...])

Errors are reported like the site config's: every problem at once, each with its YAML
path and line (the site loader's own functions place them), exit 2 from
``gatectl central check-config``.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Mapping
from datetime import date
from os import PathLike
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, StringConstraints, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from gatectl.config.base import ConfigError, GatectlModel, Int, Number, Problem, distinct_tokens, yaml_path
from gatectl.config.loader import _from_pydantic, _locate, _plain
from gatectl.config.models import CONTEXT_BASE_DIR, ConfigPath, MqttTlsConfig
from gatectl.users import UserConfig

__all__ = ["ZoneConfig", "load_zone_config", "check_zone_config", "parse_zone_config"]

NonEmpty = Annotated[str, StringConstraints(min_length=1)]
Port = Annotated[Int, Field(ge=1, le=65535)]
#: One MQTT topic filter level: no wildcard but a whole ``+`` or a final ``#``.
_FILTER_LEVEL = re.compile(r"^(\+|#|[^+#]+)$")


class ZoneInfoConfig(GatectlModel):
    id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]+$", max_length=64)] = Field(
        title="Zone id", description="Lowercase letters, digits, dashes; in the zone's alarm topic."
    )
    name: NonEmpty = Field(title="Zone name", description="Shown to people, e.g. 昆明综合保税区经开片区.")
    timezone: str = Field("Asia/Shanghai", title="Time zone", description="Ledger days are in this zone.")

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


class DatabaseConfig(GatectlModel):
    url: NonEmpty = Field(
        title="PostgreSQL URL",
        description="libpq connection URI, e.g. postgresql://gatectl:secret@127.0.0.1:5432/gatectl.",
        repr=False,
    )
    pool_size: Int = Field(4, ge=1, le=64, title="Read connections", description="For the API, screen and ledger.")

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("postgresql", "postgres"):
            raise ValueError("expected a postgresql:// URL, e.g. postgresql://gatectl:secret@127.0.0.1:5432/gatectl")
        return value


class ZoneMqttConfig(GatectlModel):
    host: NonEmpty = Field(title="Broker host")
    port: Port = Field(1883, title="Broker port")
    client_id: NonEmpty = Field(
        "gatectl-central-1", title="Client id",
        description="Stable and different per instance: the broker keeps this instance's session under it.",
    )
    username: str | None = Field(None, title="User name")
    password: str | None = Field(None, repr=False, title="Password")
    tls: MqttTlsConfig | None = Field(None, title="TLS", description="None: plain TCP.")
    prefixes: list[NonEmpty] = Field(
        default_factory=lambda: ["gatectl/+"], min_length=1, title="Lane PC prefixes",
        description="MQTT filters matching each lane PC's topic_prefix.",
    )
    shared_group: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+$", max_length=64)] | None = Field(
        None, title="Shared subscription group",
        description="Instances with the same group share the events ($share/GROUP/...).",
    )
    zone_topic_prefix: str | None = Field(
        None, title="Zone topic prefix", description="Where zone alarms go; default gatectl-zone/<zone.id>."
    )

    @field_validator("prefixes")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        for f in value:
            levels = f.split("/")
            if f.startswith("/") or f.endswith("/") or "//" in f or "#" in f or f.startswith("$"):
                raise ValueError(f"{f!r}: a prefix filter is levels joined by '/', with '+' wildcards and no '#'")
            if not all(_FILTER_LEVEL.match(level) for level in levels):
                raise ValueError(f"{f!r}: '+' must stand alone as a level")
        if len(set(value)) != len(value):
            raise ValueError("name each prefix filter once")
        return value


class HttpConfig(GatectlModel):
    listen: str = Field("127.0.0.1:8490", title="Listen address", description='"host:port" of the API and screen.')
    max_body_bytes: Int = Field(65536, ge=1024, le=4 * 1024 * 1024, title="Largest request body")

    @field_validator("listen")
    @classmethod
    def _valid(cls, value: str) -> str:
        split_listen(value)
        return value

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


class IngestConfig(GatectlModel):
    batch_max: Int = Field(2000, ge=1, le=50_000, title="Events per database transaction")
    queue_max: Int = Field(20_000, ge=100, le=1_000_000, title="Events received and not yet stored",
                           description="When full, the central stops reading from the broker until it drains.")
    gap_grace_s: Number = Field(3.0, gt=0, le=3600, title="Gap grace",
                                description="A missing range older than this is asked for by cmd/replay.")
    replay_timeout_s: Number = Field(30.0, gt=0, le=3600, title="Replay timeout",
                                     description="A replay that brought nothing for this long is asked again.")
    replay_max: Int = Field(10_000, ge=1, le=10_000, title="Events per replay request (the lane's limit)")


class ZoneLedgerConfig(GatectlModel):
    dir: ConfigPath | None = Field(None, title="Ledger directory",
                                   description="The zone ledger is written here every period; None: not scheduled.")
    every_days: Int = Field(15, ge=1, le=366, title="Period (days)")
    formats: list[Literal["csv", "xlsx"]] = Field(default_factory=lambda: ["xlsx"], min_length=1)
    first_day: date | None = Field(None, title="First period's first day; None: the day of the first event.")


class ZoneConfig(GatectlModel):
    """The whole zone.yaml (CONTRACT section 9)."""

    zone: ZoneInfoConfig
    database: DatabaseConfig
    mqtt: ZoneMqttConfig
    http: HttpConfig = Field(default_factory=HttpConfig)
    users: list[UserConfig] = Field(default_factory=list)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    ledger: ZoneLedgerConfig = Field(default_factory=ZoneLedgerConfig)

    @field_validator("users")
    @classmethod
    def _distinct(cls, value: list[UserConfig]) -> list[UserConfig]:
        return distinct_tokens(value)

    @model_validator(mode="after")
    def _zone_prefix(self) -> ZoneConfig:
        if self.mqtt.zone_topic_prefix is None:
            mqtt = self.mqtt.model_copy(update={"zone_topic_prefix": f"gatectl-zone/{self.zone.id}"})
            object.__setattr__(self, "mqtt", mqtt)
        return self


def split_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f'expected "host:port" with a port 1-65535, like 127.0.0.1:8490, got {value!r}')
    return host, int(port)


# --------------------------------------------------------------------------------------
# Loading


def load_zone_config(path: str | PathLike[str]) -> ZoneConfig:
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem("", None, "config file not found", name)]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem("", None, f"cannot read config file: {exc}", name)]) from None
    return parse_zone_config(text, base_dir=Path(path).absolute().parent, filename=name)


def parse_zone_config(text: str, *, base_dir: str | PathLike[str] | None = None,
                      filename: str = "<config>") -> ZoneConfig:
    try:
        tree = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([Problem("", line, f"YAML: {exc.problem or exc.context or 'syntax error'}", filename)]) \
            from None
    except YAMLError as exc:
        raise ConfigError([Problem("", None, f"YAML: {exc}", filename)]) from None
    if not isinstance(tree, Mapping):
        raise ConfigError([Problem("", 1, "expected a mapping with zone, database and mqtt", filename)])
    context = {CONTEXT_BASE_DIR: Path(base_dir).absolute() if base_dir is not None else Path.cwd()}
    try:
        return ZoneConfig.model_validate(_plain(tree), context=context)
    except ValidationError as exc:
        problems = [_problem(err, tree, filename) for err in exc.errors()]
        problems.sort(key=lambda p: (p.line is None, p.line or 0))
        raise ConfigError(problems) from None


def _problem(err: Mapping[str, Any], tree: Any, filename: str) -> Problem:
    if err["type"] != "extra_forbidden":
        return _from_pydantic(err, tree, filename)
    # The site loader's "did you mean" looks in the site's models; the zone has its own.
    loc = tuple(err["loc"])
    allowed = _allowed(loc[:-1])
    message = f"unknown key {loc[-1]!r}"
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
    if close:
        message += f"; did you mean {close[0]!r}?"
    elif allowed:
        message += f"; expected one of: {', '.join(allowed)}"
    path, line = _locate(tree, loc, missing_ok=False)
    return Problem(yaml_path(path), line, message, filename)


def _allowed(loc: tuple) -> list[str]:
    """The keys the model at ``loc`` takes (list items: their element model)."""
    tp: Any = ZoneConfig
    for seg in loc:
        if isinstance(seg, int):
            continue  # a list item: ``tp`` is already the element's model
        if not (isinstance(tp, type) and issubclass(tp, BaseModel)) or str(seg) not in tp.model_fields:
            return []
        ann = tp.model_fields[str(seg)].annotation
        models = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        tp = models[0] if models else ann  # Optional[Model] and list[Model] alike
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def check_zone_config(path: str | PathLike[str]) -> int:
    """``gatectl central check-config``: a summary and 0, or every problem and 2."""
    try:
        config = load_zone_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    group = f", shared group {config.mqtt.shared_group}" if config.mqtt.shared_group else ""
    print(f"OK: zone {config.zone.id}; broker {config.mqtt.host}:{config.mqtt.port} "
          f"({', '.join(config.mqtt.prefixes)}{group}); http {config.http.listen}; "
          f"{len(config.users)} user{'s' * (len(config.users) != 1)}")
    return 0
