"""Hostile approvals (#13): every field bounded, refused as ``malformed`` by verification
itself, before anything is stored (R10, R17, S1).

The issue's case is an approval with ``max_lifts`` of 2**63, correctly signed by a trusted
customs key: the shape check refuses it like any other malformed approval, so it never
reaches SQLite (whose integers stop at 2**63 - 1) nor the lane. Each case below is signed
by a trusted key over exactly its own bytes (``gatectl approval sign`` refuses to sign
them), so only the limit can refuse it.
"""

from __future__ import annotations

import base64
import copy
import json
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gatectl.approvals import (
    MAX_APPROVAL_BYTES,
    MAX_LIFTS,
    ApprovalRefused,
    parse_document,
    public_key_b64,
    signing_bytes,
    verify,
)
from gatectl.config.models import TrustConfig

CST = timezone(timedelta(hours=8))
NOW = datetime(2026, 11, 27, 9, 30, tzinfo=CST)
LANES = {"B1-IN": "bonded"}
CUSTOMS = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
TRUST = TrustConfig(customs=[public_key_b64(CUSTOMS)], park=[])

EXAMPLE = {
    "approval_id": "AP-20261127-0001",
    "lane_id": "B1-IN",
    "trigger": "panel",
    "reason": "equipment_fault",
    "detail": "地磅通讯中断",
    "requested_by": {"org": "某某物流有限公司", "name": "张三"},
    "verified_by": {"org": "运维单位", "name": "李四"},
    "approved_by": {"org": "昆明海关", "name": "王五"},
    "countersigned_by": None,
    "plate": None,
    "valid_from": "2026-11-27T09:00:00+08:00",
    "valid_until": "2026-11-27T10:00:00+08:00",
    "max_lifts": 1,
    "signatures": [],
}


def signed(**changes) -> dict:
    """The example with `changes`, signed by the trusted customs key whatever its content."""
    doc = copy.deepcopy(EXAMPLE) | changes
    doc["signatures"] = [{
        "role": "customs",
        "sig": base64.b64encode(CUSTOMS.sign(signing_bytes(doc))).decode(),
        "key": public_key_b64(CUSTOMS),
    }]
    return doc


def refused(raw) -> ApprovalRefused:
    with pytest.raises(ApprovalRefused) as info:
        verify(raw, trust=TRUST, lanes=LANES, now=NOW)
    return info.value


def test_the_example_is_accepted() -> None:
    assert verify(signed(), trust=TRUST, lanes=LANES, now=NOW).max_lifts == 1


def test_issue_max_lifts_of_2_pow_63_signed_by_a_trusted_key_is_malformed() -> None:
    """Issue item 2: refused at verification, naming max_lifts, as body and as text."""
    doc = signed(max_lifts=2**63)
    for raw in (doc, json.dumps(doc, ensure_ascii=False), json.dumps(doc).encode()):
        e = refused(raw)
        assert (e.code, e.field) == ("malformed", "max_lifts"), e
        assert "less than or equal to 100" in e.message
        assert e.to_dict()["reason"] == "malformed"


@pytest.mark.parametrize("max_lifts", [0, -1, MAX_LIFTS + 1, 2**31, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63) - 1])
def test_max_lifts_out_of_1_to_100(max_lifts: int) -> None:
    assert refused(signed(max_lifts=max_lifts)).field == "max_lifts"


@pytest.mark.parametrize("max_lifts", [1.0, "1", True, None, [1], {"n": 1}])
def test_max_lifts_of_the_wrong_type(max_lifts) -> None:
    assert refused(signed(max_lifts=max_lifts)).field == "max_lifts"


@given(st.integers(min_value=-(2**80), max_value=2**80) | st.integers(min_value=-5, max_value=120))
@settings(max_examples=200, deadline=None)
def test_any_max_lifts_is_accepted_only_within_1_to_100(n: int) -> None:
    try:
        v = verify(signed(max_lifts=n), trust=TRUST, lanes=LANES, now=NOW)
    except ApprovalRefused as e:
        assert not 1 <= n <= MAX_LIFTS and (e.code, e.field) == ("malformed", "max_lifts")
    else:
        assert 1 <= n <= MAX_LIFTS and v.max_lifts == n


def test_validity_window_at_most_31_days() -> None:
    start = datetime(2026, 11, 1, tzinfo=CST)
    ok = signed(valid_from=start.isoformat(), valid_until=(start + timedelta(days=31)).isoformat())
    verify(ok, trust=TRUST, lanes=LANES, now=start + timedelta(days=26))
    for end in (start + timedelta(days=31, seconds=1), datetime(9999, 12, 31, tzinfo=CST)):
        e = refused(signed(valid_from=start.isoformat(), valid_until=end.isoformat()))
        assert e.field == "valid_until" and "at most 31 days" in e.message


PARTY = {"org": "某某物流有限公司", "name": "张三"}

TEXTS = [
    ("approval_id", {"approval_id": "A" * 129}),
    ("approval_id", {"approval_id": "AP\n1"}),
    ("lane_id", {"lane_id": "B" * 65}),
    ("detail", {"detail": "中" * 2001}),
    ("detail", {"detail": "a\x00b"}),
    ("requested_by.org", {"requested_by": PARTY | {"org": "公" * 129}}),
    ("requested_by.name", {"requested_by": PARTY | {"name": "张" * 65}}),
    ("verified_by.name", {"verified_by": PARTY | {"name": "李\u0007四"}}),
    ("approved_by.org", {"approved_by": PARTY | {"org": "   "}}),
    ("plate", {"plate": "云A" + "1" * 15}),
    ("plate", {"plate": "云A\r12345"}),
    ("plate", {"plate": {"text": "云A12345"}}),
    ("detail", {"detail": 12345}),
    ("requested_by", {"requested_by": {"org": "x", "name": "y", "extra": "z"}}),
]


@pytest.mark.parametrize(("field", "changes"), TEXTS, ids=[f"{t[0]}-{i}" for i, t in enumerate(TEXTS)])
def test_every_text_is_bounded(field: str, changes: dict) -> None:
    e = refused(signed(**changes))
    assert e.code == "malformed" and e.field is not None and e.field.startswith(field), e


def test_long_texts_within_the_bounds_are_accepted() -> None:
    doc = signed(approval_id="A" * 128, detail="中" * 1995 + "\n第二行\t", plate="云A12345挂",
                 requested_by={"org": "公" * 128, "name": "张" * 64})
    assert verify(doc, trust=TRUST, lanes=LANES, now=NOW).approval.plate == "云A12345挂"


def test_at_most_8_signatures() -> None:
    doc = signed()
    doc["signatures"] = doc["signatures"] * 9
    e = refused(doc)
    assert e.field == "signatures" and "at most 8" in e.message
    doc["signatures"] = doc["signatures"][:8]
    verify(doc, trust=TRUST, lanes=LANES, now=NOW)  # the same entry 8 times still verifies


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"detail": ' + nested(6000) + "}", "nested more than 32"),
        ('{"x": ' + '{"a": ' * 6000 + "1" + "}" * 6000 + "}", "nested more than 32"),
        ("[" * 100_000, "larger than"),
        ('{"max_lifts": ' + "9" * 5000 + "}", "5000 digits"),
        ('{"max_lifts": 1e400}', "out of range"),
        ('{"max_lifts": NaN}', "NaN"),
        ('{"max_lifts": Infinity}', "Infinity"),
        ('{"lane_id": "B1-IN", "lane_id": "X"}', "appears twice"),
        ('{"detail": "' + "x" * MAX_APPROVAL_BYTES + '"}', "larger than"),
        ("\ufeff[]", "expected a JSON object"),
        ('"just a string"', "expected a JSON object"),
        ("{", "not JSON"),
    ],
    ids=["deep-array", "deep-object", "huge", "long-number", "overflow", "nan", "infinity", "duplicate", "big-string",
         "array", "string", "truncated"],
)
def test_hostile_json_is_malformed_at_once(text: str, needle: str) -> None:
    """Issue item 5's nesting and its neighbours: refused before the parser recurses."""
    for raw in (text, text.encode("utf-8")):
        e = refused(raw)
        assert e.code == "malformed" and needle in e.message, e


def test_hostile_objects_handed_over_already_parsed() -> None:
    """The MQTT link and the API may hand over a parsed body: its depth is checked too."""
    deep: dict = {}
    node = deep
    for _ in range(100):
        node["x"] = {}
        node = node["x"]
    assert "nested more than 32" in refused(signed() | {"x": deep}).message
    loop: list = []
    loop.append(loop)
    assert refused({"x": loop}).code == "malformed"
    assert parse_document({"a": [1, 2, {"b": None}]}) == {"a": [1, 2, {"b": None}]}


def test_not_utf8_is_malformed() -> None:
    assert "not UTF-8" in refused(json.dumps(signed(), ensure_ascii=False).encode("gb18030")).message


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)
KEYS = st.sampled_from(sorted(EXAMPLE) + ["extra"])


def _verifies_or_refuses(changes: dict) -> None:
    try:
        doc = signed(**changes)
    except (ValueError, TypeError):
        return  # not even signable (a lone surrogate has no UTF-8)
    for raw in (doc, json.dumps(doc, ensure_ascii=False)):
        try:
            v = verify(raw, trust=TRUST, lanes=LANES, now=NOW)
        except ApprovalRefused as e:
            assert e.to_dict()["reason"]
        else:
            assert 1 <= v.max_lifts <= MAX_LIFTS


@given(st.dictionaries(KEYS, JSON, max_size=6))
@settings(max_examples=300, deadline=None)
def test_any_json_object_verifies_or_is_refused_with_a_code(changes: dict) -> None:
    """Fuzz: random values in the approval's own keys, signed by the trusted key: either a
    valid approval or an ApprovalRefused, never another exception."""
    _verifies_or_refuses(changes)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@given(st.dictionaries(KEYS, JSON, max_size=10))
@settings(max_examples=20_000, deadline=None)
def test_any_json_object_verifies_or_is_refused_with_a_code_long(changes: dict) -> None:
    _verifies_or_refuses(changes)


def test_approval_files_are_read_no_further_than_the_limit(tmp_path, capsys) -> None:
    """`gatectl approval add` and `approval sign` given /dev/zero or a huge file refuse it
    as malformed without reading it whole; a file within the limit is read as it is."""
    from gatectl.approvals import read_document
    from gatectl.cli import main
    from gatectl.keys import new_key

    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps(signed(), ensure_ascii=False), encoding="utf-8")
    assert json.loads(read_document(ok)) == signed()
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * (MAX_APPROVAL_BYTES + 1))
    for path in (huge, "/dev/zero"):
        with pytest.raises(ApprovalRefused, match="larger than"):
            read_document(path)
    key = tmp_path / "customs.key"
    new_key(key)
    assert main(["approval", "sign", "--key", str(key), "--role", "customs", "/dev/zero"]) == 2
    assert "larger than" in capsys.readouterr().err
