"""Approvals for manual and remote lifts (CONTRACT section 4; R10, R17).

An approval is a JSON object signed with Ed25519 by customs (and, on ``non_bonded`` lanes,
by park management). This module parses it, checks it and signs it; it does no I/O and
reads no clock, so the lane core, the local API, MQTT and the CLI can all call it.

    verified = verify(body, trust=config.trust, lanes=lane_kinds(config), now=now, lifts_used=n)
    # raises ApprovalRefused(code, message) with one of REASON_CODES

Decisions worth knowing:

* The signed bytes are computed from the JSON object exactly as received (minus
  ``signatures``), never from the pydantic model, so nothing a signer signed is lost,
  reformatted or reordered (``"2026-11-27T09:00:00+08:00"`` stays that string).
* Unknown top-level keys are refused (``malformed``). They would be signed content the
  daemon does not understand, and a constraint the daemon silently ignores (say a
  ``"lanes"`` list a signer thought restricted the approval) must fail closed.
* Pass the raw body (``bytes``/``str``) when you have it: the parser refuses duplicate keys
  (``{"lane_id": "A", "lane_id": "B"}``), which ``json.loads`` would silently resolve to the
  last one while another reader may take the first. It also refuses NaN/Infinity.
* Every signature entry must verify; one bad entry refuses the whole approval.
* Limits (``docs/reliability.md``), refused as ``malformed`` before any signature is
  checked or anything is stored: at most :data:`MAX_APPROVAL_BYTES`, nested at most
  :data:`~gatectl.limits.MAX_JSON_DEPTH` deep, ``max_lifts`` 1 to :data:`MAX_LIFTS`, a
  validity window of at most :data:`MAX_VALIDITY` (31 days), at most
  :data:`MAX_SIGNATURES` signatures, and every text bounded (names 64 characters,
  organisations 128, plate 16, detail 2 000, ids 128). A ``max_lifts`` of 2**63 signed by
  a trusted key is as malformed as an unsigned one: nothing downstream (SQLite's 64-bit
  integers, the lane's counters) ever sees it.
* A signature entry may carry an optional ``"key"`` (the signer's raw public key, base64),
  which :func:`sign` always writes. It is outside the signed bytes and only a hint: the
  signature is still tried against every trusted key of its role. It is what lets a refusal
  tell "signed by a key not in trust" (``unknown_key``) from "content changed after
  signing" (``bad_signature``). Without it Ed25519 cannot tell them apart (the public key is
  not recoverable from a signature), so a keyless entry that matches no trusted key is
  reported as ``bad_signature`` unless it verifies under a key of the other role
  (``unknown_key``: a park key used as customs or the reverse).
* The validity window is half-open: ``valid_from <= now < valid_until``.
* Checks run in this order, so each refusal names the first problem: ``malformed``, the
  signatures (``unknown_key`` / ``bad_signature``, then ``unsigned``), ``unknown_lane``,
  ``missing_chain``, ``missing_countersignature``, ``missing_park_signature``,
  ``not_yet_valid``, ``expired``, ``exhausted``. Authenticity comes first: a tampered
  approval is reported as tampered, whatever field was changed.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from gatectl.limits import (
    MAX_JSON_DEPTH,
    FreeText,
    Identifier,
    JsonRefused,
    OrgName,
    PersonName,
    Plate,
    check_depth,
    load_json,
)

__all__ = [
    "MAX_APPROVAL_BYTES",
    "MAX_LIFTS",
    "MAX_SIGNATURES",
    "MAX_VALIDITY",
    "REASON_CODES",
    "ROLES",
    "Approval",
    "ApprovalRefused",
    "Party",
    "SignatureEntry",
    "Signer",
    "VerifiedApproval",
    "lane_kinds",
    "parse_document",
    "public_key_b64",
    "read_document",
    "sign",
    "signing_bytes",
    "validate",
    "verify",
]

ROLES: tuple[str, ...] = ("customs", "park")
Role = Literal["customs", "park"]

REASON_CODES: tuple[str, ...] = (
    "malformed",
    "unknown_key",
    "bad_signature",
    "unsigned",
    "unknown_lane",
    "missing_chain",
    "missing_countersignature",
    "missing_park_signature",
    "not_yet_valid",
    "expired",
    "exhausted",
)
"""Every refusal code, in the order the checks run. Stable: journaled and published."""

MAX_APPROVAL_BYTES = 64 * 1024
"""An approval larger than this (raw text, or its signed bytes) is refused as malformed."""
MAX_LIFTS = 100
"""An approval lifts at most this often: a day of a lane's traffic with its devices down."""
MAX_VALIDITY = timedelta(days=31)
"""Longest validity window: approvals cover an outage, not a season."""
MAX_SIGNATURES = 8
"""Signature entries: customs and park, each with room for a re-signing."""

CHAIN: tuple[tuple[str, str, str], ...] = (
    ("requested_by", "the enterprise's request", "企业申请"),
    ("verified_by", "the O&M verification", "运维核实"),
    ("approved_by", "the customs approval", "海关审批"),
)
"""The approval chain every approval must name (R10), with what each party stands for."""

_ROLE_ZH = {"customs": "海关", "park": "园区管理方"}


class ApprovalRefused(Exception):
    """An approval that must not be accepted, with a stable ``code`` from REASON_CODES.

    ``message`` is English, ``message_zh`` Chinese (for the guard's screen); ``field`` names
    the offending field where there is one (``valid_from``, ``requested_by.name``,
    ``signatures[1]``).
    """

    def __init__(self, code: str, message: str, *, message_zh: str | None = None, field: str | None = None):
        if code not in REASON_CODES:
            raise ValueError(f"unknown refusal code {code!r}")
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.message_zh = message_zh or message
        self.field = field

    @property
    def reason_code(self) -> str:
        return self.code

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"reason", "message", "message_zh", "field"}``."""
        return {"reason": self.code, "message": self.message, "message_zh": self.message_zh, "field": self.field}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# --- the model ---------------------------------------------------------------------------


def _timestamp(value: Any) -> datetime:
    # Only ISO 8601 text: pydantic alone would also take numbers as Unix times.
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 time stamp string with offset, like 2026-11-27T09:00:00+08:00")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time stamp: {value!r}") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"time stamp {value!r} has no UTC offset (write it like 2026-11-27T09:00:00+08:00)")
    return parsed


def _b64(length: int, what: str):
    def check(value: str) -> str:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{what} is not valid base64") from None
        if len(raw) != length:
            raise ValueError(f"{what} must be {length} raw bytes, this decodes to {len(raw)}")
        return value

    return AfterValidator(check)


Timestamp = Annotated[datetime, BeforeValidator(_timestamp)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Party(_Strict):
    """Who requested, verified, approved or countersigned: ``{"org", "name"}``."""

    org: OrgName
    name: PersonName


class SignatureEntry(_Strict):
    """One entry of ``signatures``: ``{"role", "sig"}`` plus the optional ``key`` hint."""

    role: Role
    sig: Annotated[str, _b64(64, "an Ed25519 signature")]
    key: Annotated[str, _b64(32, "an Ed25519 public key")] | None = None

    @property
    def sig_bytes(self) -> bytes:
        return base64.b64decode(self.sig)

    @property
    def key_bytes(self) -> bytes | None:
        return None if self.key is None else base64.b64decode(self.key)


class Approval(_Strict):
    """The approval object of CONTRACT section 4, field for field. Unknown keys are refused.

    The three chain parties and ``countersigned_by`` may be null (or absent) here: a missing
    party is a refusal of its own (``missing_chain``, ``missing_countersignature``), not a
    shape error.
    """

    approval_id: Identifier
    lane_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    trigger: Literal["panel", "remote"]
    reason: Literal["equipment_fault", "network_fault", "other"]
    detail: FreeText
    requested_by: Party | None = None
    verified_by: Party | None = None
    approved_by: Party | None = None
    countersigned_by: Party | None = None
    plate: Plate | None = None
    valid_from: Timestamp
    valid_until: Timestamp
    max_lifts: int = Field(ge=1, le=MAX_LIFTS)
    # A JSON list; tuple: hashable.
    signatures: tuple[SignatureEntry, ...] = Field((), strict=False, max_length=MAX_SIGNATURES)

    @field_validator("valid_until")
    @classmethod
    def _after_valid_from(cls, value: datetime, info: ValidationInfo) -> datetime:
        start = info.data.get("valid_from")
        if start is not None and value <= start:
            raise ValueError("valid_until must be later than valid_from")
        if start is not None and value - start > MAX_VALIDITY:
            raise ValueError(f"the validity window is at most {MAX_VALIDITY.days} days")
        return value


# --- bytes -------------------------------------------------------------------------------


def signing_bytes(obj: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the object without ``signatures``, canonical JSON.

    Exactly CONTRACT section 4's one-liner:
    ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()``.
    """
    body = {k: v for k, v in obj.items() if k != "signatures"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64: the form ``trust`` lists."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def _malformed(field: str | None, problem: str, problem_zh: str | None = None) -> ApprovalRefused:
    where = f" at {field}" if field else ""
    where_zh = f"（{field}）" if field else ""
    return ApprovalRefused(
        "malformed",
        f"approval is malformed{where}: {problem}",
        message_zh=f"审批单格式错误{where_zh}：{problem_zh or problem}",
        field=field,
    )


def _refused_json(exc: JsonRefused) -> ApprovalRefused:
    zh = {
        "too_large": f"超过 {MAX_APPROVAL_BYTES} 字节",
        "not_utf8": "不是 UTF-8 编码",
        "too_deep": f"嵌套超过 {MAX_JSON_DEPTH} 层",
        "bad_number": "数值超出范围",
    }
    if exc.reason == "duplicate_key":
        return _malformed(exc.key, exc.message, f"键 {exc.key!r} 重复出现")
    return _malformed(None, exc.message, zh.get(exc.reason, f"不是合法的 JSON：{exc.message}"))


def parse_document(raw: Mapping[str, Any] | bytes | bytearray | str) -> dict[str, Any]:
    """The approval as a plain JSON object, or ``ApprovalRefused("malformed")``.

    Text and bytes (UTF-8, a BOM tolerated) go through :func:`gatectl.limits.load_json`:
    size, nesting depth, duplicate keys, NaN/Infinity and over-long numbers are refused
    before parsing recurses. A mapping is taken as already parsed: its depth is checked,
    then it is copied through canonical JSON, which refuses what JSON cannot carry.
    """
    if isinstance(raw, (bytes, bytearray, str)):
        try:
            doc = load_json(raw, max_bytes=MAX_APPROVAL_BYTES, allow_bom=True)
        except JsonRefused as exc:
            raise _refused_json(exc) from None
    elif isinstance(raw, Mapping):
        try:
            check_depth(raw)
            doc = json.loads(json.dumps(dict(raw), ensure_ascii=False, allow_nan=False))
        except JsonRefused as exc:
            raise _refused_json(exc) from None
        except (TypeError, ValueError) as exc:
            raise _malformed(None, f"not a JSON object: {exc}", "不是合法的 JSON 对象") from None
    else:
        raise _malformed(None, f"expected a JSON object, got {type(raw).__name__}", "应为 JSON 对象")
    if not isinstance(doc, dict):
        raise _malformed(None, f"expected a JSON object, got {type(doc).__name__}", "应为 JSON 对象")
    return doc


def read_document(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an approval file, reading no more than one byte past the size limit.

    A larger file (a log picked by mistake, ``/dev/zero``) is refused as ``malformed``
    without being read whole. ``OSError`` for a file that cannot be read.
    """
    with open(path, "rb") as stream:
        raw = stream.read(MAX_APPROVAL_BYTES + 1)
    if len(raw) > MAX_APPROVAL_BYTES:
        raise _malformed(None, f"larger than {MAX_APPROVAL_BYTES} bytes", f"超过 {MAX_APPROVAL_BYTES} 字节")
    return raw


def _loc(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(err: Mapping[str, Any]) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        return "unknown field (not in CONTRACT section 4)"
    if kind == "missing":
        return "required field is missing"
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def validate(doc: Mapping[str, Any]) -> Approval:
    """The model of an already parsed approval object, or ``ApprovalRefused("malformed")``.

    Only the shape: no signature, lane, chain or time checks.
    """
    if not isinstance(doc, Mapping):
        raise _malformed(None, f"expected a JSON object, got {type(doc).__name__}", "应为 JSON 对象")
    try:
        body = signing_bytes(doc)  # also refuses lone surrogates (no UTF-8 for them)
    except (TypeError, ValueError, RecursionError) as exc:
        raise _malformed(None, f"cannot be serialised as JSON: {exc}", "无法序列化为 JSON") from None
    if len(body) > MAX_APPROVAL_BYTES:
        raise _malformed(None, f"larger than {MAX_APPROVAL_BYTES} bytes", f"超过 {MAX_APPROVAL_BYTES} 字节")
    try:
        return Approval.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        field = _loc(first["loc"]) or None
        problems = "; ".join(
            [_describe(first)] + [f"{_loc(e['loc']) or '(object)'}: {_describe(e)}" for e in errors[1:5]]
        )
        if len(errors) > 5:
            problems += f"; and {len(errors) - 5} more"
        raise _malformed(field, problems) from None


# --- verification ------------------------------------------------------------------------


class TrustLike(Protocol):
    """``TrustConfig`` or anything with raw 32-byte Ed25519 public keys per role (base64 text is taken too)."""

    customs: Sequence[bytes]
    park: Sequence[bytes]


@dataclass(frozen=True, slots=True)
class Signer:
    """A signature that verified: its role and the signer's raw public key in base64."""

    role: str
    key: str


@dataclass(frozen=True, slots=True)
class VerifiedApproval:
    """An approval that passed every check of :func:`verify` at the ``now`` it was given.

    ``fingerprint`` is the SHA-256 (hex) of the signed bytes: the same for the same signed
    content, whatever the JSON's formatting or key order and however many signatures it
    carries. ``document_json`` is the whole object (signatures included) as canonical JSON,
    for the journal.
    """

    approval: Approval
    lane_kind: str
    signing_bytes: bytes
    fingerprint: str
    signers: tuple[Signer, ...]
    document_json: str

    @property
    def approval_id(self) -> str:
        return self.approval.approval_id

    @property
    def lane_id(self) -> str:
        return self.approval.lane_id

    @property
    def trigger(self) -> str:
        return self.approval.trigger

    @property
    def max_lifts(self) -> int:
        return self.approval.max_lifts

    def document(self) -> dict[str, Any]:
        """A fresh copy of the whole approval object, signatures included."""
        return json.loads(self.document_json)

    def signed_by(self, role: str) -> tuple[str, ...]:
        """The base64 public keys whose ``role`` signature verified."""
        return tuple(s.key for s in self.signers if s.role == role)

    @property
    def countersigned(self) -> bool:
        """Park management countersigned it (named and signed): what a manual lift of a
        non-bonded passage needs (R10)."""
        return bool(self.signed_by("park")) and self.approval.countersigned_by is not None

    def window_contains(self, now: datetime) -> bool:
        """``valid_from <= now < valid_until``; ``now`` must carry a UTC offset."""
        _require_aware(now)
        return self.approval.valid_from <= now < self.approval.valid_until

    def lifts_left(self, used: int) -> int:
        """How many lifts remain after ``used`` (never negative)."""
        if used < 0:
            raise ValueError("lifts used cannot be negative")
        return max(0, self.approval.max_lifts - used)

    def check_usable(self, now: datetime, lifts_used: int) -> None:
        """Re-check what changes after acceptance, at the moment of a lift.

        A panel approval is accepted, then used when the guard presses the button, maybe
        much later: raises ``ApprovalRefused`` ``not_yet_valid``, ``expired`` or
        ``exhausted`` exactly as :func:`verify` would at that ``now``.
        """
        _check_window_and_lifts(self.approval, now, lifts_used)


def stored_countersigned(document: Mapping[str, Any]) -> bool:
    """``VerifiedApproval.countersigned`` of an approval accepted before (its signatures
    verified then): it names park management and carries a park signature."""
    signatures = document.get("signatures") or []
    return document.get("countersigned_by") is not None and any(
        isinstance(sig, Mapping) and sig.get("role") == "park" for sig in signatures)


def lane_kinds(config: Any) -> dict[str, str]:
    """``{lane_id: kind}`` of a ``SiteConfig``: the ``lanes`` argument of :func:`verify`."""
    return {lane.id: lane.kind for lane in config.lanes}


def _require_aware(now: datetime) -> None:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a datetime with a UTC offset")


def public_keys(keys: Iterable[bytes | str], role: str) -> list[tuple[bytes, Ed25519PublicKey]]:
    """``(raw, key)`` of each trusted Ed25519 public key (base64 text or raw bytes) of
    ``trust.{role}``; ValueError naming the role for one that is not a key."""
    out = []
    for key in keys:
        try:
            raw = base64.b64decode(key, validate=True) if isinstance(key, str) else bytes(key)
            out.append((raw, Ed25519PublicKey.from_public_bytes(raw)))
        except (TypeError, ValueError, binascii.Error) as exc:
            raise ValueError(f"trust.{role} holds an invalid Ed25519 public key: {exc}") from None
    return out


def verifies(key: Ed25519PublicKey, sig: bytes, message: bytes) -> bool:
    try:
        key.verify(sig, message)
    except InvalidSignature:
        return False
    return True


def _b64s(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _check_signatures(approval: Approval, message: bytes, trust: TrustLike) -> tuple[Signer, ...]:
    trusted = {"customs": public_keys(trust.customs, "customs"), "park": public_keys(trust.park, "park")}
    signers: list[Signer] = []
    for i, entry in enumerate(approval.signatures):
        field = f"signatures[{i}]"
        role, other = entry.role, ("park" if entry.role == "customs" else "customs")
        keys = trusted[role]
        label = f"signature {i + 1} ({role})"
        label_zh = f"第 {i + 1} 个签名（{_ROLE_ZH[role]}）"
        if not keys:
            raise ApprovalRefused(
                "unknown_key",
                f"{label} cannot be checked: no trust.{role} keys are configured",
                message_zh=f"{label_zh}无法校验：配置中没有 trust.{role} 公钥",
                field=field,
            )
        sig = entry.sig_bytes
        hit = next((raw for raw, key in keys if verifies(key, sig, message)), None)
        if hit is not None:
            signer = Signer(role, _b64s(hit))
            if signer not in signers:
                signers.append(signer)
            continue
        hint = entry.key_bytes
        if hint is not None and hint not in {raw for raw, _ in keys}:
            raise ApprovalRefused(
                "unknown_key",
                f"{label} is by key {entry.key}, which is not in trust.{role}",
                message_zh=f"{label_zh}的签名密钥 {entry.key} 不在 trust.{role} 信任列表中",
                field=field,
            )
        if hint is not None:
            raise ApprovalRefused(
                "bad_signature",
                f"{label} by trusted key {entry.key} does not verify: the approval was changed after it was signed",
                message_zh=f"{label_zh}校验失败：审批单在签名后被修改",
                field=field,
            )
        if any(verifies(key, sig, message) for _, key in trusted[other]):
            raise ApprovalRefused(
                "unknown_key",
                f"{label} is by a trust.{other} key, not a trust.{role} key",
                message_zh=f"{label_zh}使用的是{_ROLE_ZH[other]}密钥，不是{_ROLE_ZH[role]}密钥",
                field=field,
            )
        raise ApprovalRefused(
            "bad_signature",
            f"{label} matches no trust.{role} key: the approval was changed after it was signed, "
            f"or it was signed by a key not in trust.{role} (entries written by `gatectl approval sign` "
            "name their key and tell the two apart)",
            message_zh=f"{label_zh}与所有 trust.{role} 公钥均不匹配：审批单在签名后被修改，或签名密钥不受信任",
            field=field,
        )
    if not any(s.role == "customs" for s in signers):
        raise ApprovalRefused(
            "unsigned",
            "approval carries no customs signature",
            message_zh="审批单没有海关签名",
            field="signatures",
        )
    return tuple(signers)


def _check_window_and_lifts(approval: Approval, now: datetime, lifts_used: int) -> None:
    _require_aware(now)
    if lifts_used < 0:
        raise ValueError("lifts_used cannot be negative")
    start, end = approval.valid_from, approval.valid_until
    if now < start:
        raise ApprovalRefused(
            "not_yet_valid",
            f"approval is valid from {start.isoformat()}, it is now {now.isoformat()}",
            message_zh=f"审批单尚未生效（生效时间 {start.isoformat()}）",
            field="valid_from",
        )
    if now >= end:
        raise ApprovalRefused(
            "expired",
            f"approval expired at {end.isoformat()}, it is now {now.isoformat()}",
            message_zh=f"审批单已过期（截止时间 {end.isoformat()}）",
            field="valid_until",
        )
    if lifts_used >= approval.max_lifts:
        raise ApprovalRefused(
            "exhausted",
            f"approval allows {approval.max_lifts} lift(s) and {lifts_used} have been used",
            message_zh=f"审批单可抬杆 {approval.max_lifts} 次，已使用 {lifts_used} 次",
            field="max_lifts",
        )


def verify(
    raw: Mapping[str, Any] | bytes | str,
    *,
    trust: TrustLike,
    lanes: Mapping[str, str],
    now: datetime,
    lifts_used: int = 0,
) -> VerifiedApproval:
    """Check an approval against CONTRACT section 4, or raise ``ApprovalRefused``.

    ``trust`` has raw 32-byte keys per role (``config.trust``); ``lanes`` maps each lane id
    of the site to its kind (:func:`lane_kinds`); ``now`` carries a UTC offset; ``lifts_used``
    is how many lifts this approval has already given. Pure: no I/O, no clock.
    """
    _require_aware(now)
    if lifts_used < 0:
        raise ValueError("lifts_used cannot be negative")
    doc = parse_document(raw)
    approval = validate(doc)
    message = signing_bytes(doc)
    signers = _check_signatures(approval, message, trust)

    kind = lanes.get(approval.lane_id)
    if kind is None:
        raise ApprovalRefused(
            "unknown_lane",
            f"lane {approval.lane_id!r} does not exist on this site",
            message_zh=f"通道 {approval.lane_id} 不存在",
            field="lane_id",
        )
    missing = [(f, en, zh) for f, en, zh in CHAIN if getattr(approval, f) is None]
    if missing:
        field = missing[0][0]
        raise ApprovalRefused(
            "missing_chain",
            "approval chain incomplete: "
            + ", ".join(f"{f} ({en}) is missing" for f, en, _ in missing),
            message_zh="审批链不完整：缺少" + "、".join(f"{zh}（{f}）" for f, _, zh in missing),
            field=field,
        )
    if kind == "non_bonded":
        if approval.countersigned_by is None:
            raise ApprovalRefused(
                "missing_countersignature",
                f"lane {approval.lane_id} is non_bonded: park management's countersigned_by is required",
                message_zh=f"通道 {approval.lane_id} 为非保税通道，须有园区管理方会签（countersigned_by）",
                field="countersigned_by",
            )
        if not any(s.role == "park" for s in signers):
            raise ApprovalRefused(
                "missing_park_signature",
                f"lane {approval.lane_id} is non_bonded: a park signature by a trust.park key is required",
                message_zh=f"通道 {approval.lane_id} 为非保税通道，须有园区管理方签名",
                field="signatures",
            )
    _check_window_and_lifts(approval, now, lifts_used)
    return VerifiedApproval(
        approval=approval,
        lane_kind=kind,
        signing_bytes=message,
        fingerprint=hashlib.sha256(message).hexdigest(),
        signers=signers,
        document_json=json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
    )


# --- signing -----------------------------------------------------------------------------


def sign(obj: Mapping[str, Any], role: str, private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of ``obj`` with a ``role`` signature by ``private_key`` appended.

    The entry is ``{"role", "sig", "key"}`` (``key``: the signer's public key, a hint
    outside the signed bytes). An earlier entry of the same role by the same key is
    replaced: one naming that key, or a keyless one that verifies under it. Refuses
    (``ApprovalRefused("malformed")``) to sign an object that is not a well-formed approval;
    missing chain parties are not checked here (the verifier refuses them).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    doc = copy.deepcopy(dict(obj))
    approval = validate(doc)
    message = signing_bytes(doc)
    public = private_key.public_key()
    key_b64 = public_key_b64(public)

    def same_signer(entry: SignatureEntry) -> bool:
        if entry.role != role:
            return False
        if entry.key is not None:
            return entry.key_bytes == base64.b64decode(key_b64)
        return verifies(public, entry.sig_bytes, message)

    kept = [raw for raw, entry in zip(doc.get("signatures", []), approval.signatures) if not same_signer(entry)]
    sig = _b64s(private_key.sign(message))
    doc["signatures"] = kept + [{"role": role, "sig": sig, "key": key_b64}]
    return doc
