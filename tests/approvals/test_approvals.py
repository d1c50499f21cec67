"""Approvals (CONTRACT section 4): R10 manual lift only under approval, R17 remote release,
S1 each authorisation lifts at most once (an approval's ``max_lifts``).

Every refusal is checked by its stable reason code, not by its wording.
"""

from __future__ import annotations

import base64
import copy
import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from gatectl.approvals import (
    REASON_CODES,
    Approval,
    ApprovalRefused,
    VerifiedApproval,
    lane_kinds,
    parse_document,
    public_key_b64,
    sign,
    signing_bytes,
    verify,
)
from gatectl.config.models import TrustConfig

CST = timezone(timedelta(hours=8))
NOW = datetime(2026, 11, 27, 9, 30, tzinfo=CST)
LANES = {"B1-IN": "bonded", "N1-IN": "non_bonded", "E1-OUT": "ecommerce_9610", "A1-IN": "administrative"}

CUSTOMS = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
CUSTOMS_2 = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
PARK = Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32)
STRANGER = Ed25519PrivateKey.from_private_bytes(bytes([4]) * 32)


def raw(key: Ed25519PrivateKey) -> bytes:
    return base64.b64decode(public_key_b64(key))


TRUST = TrustConfig(customs=[public_key_b64(CUSTOMS), public_key_b64(CUSTOMS_2)], park=[public_key_b64(PARK)])

# CONTRACT section 4's example, field for field.
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
PARK_PARTY = {"org": "园区管理方", "name": "赵六"}


def approval(**changes) -> dict:
    doc = copy.deepcopy(EXAMPLE)
    doc.update(changes)
    return doc


def customs_signed(**changes) -> dict:
    return sign(approval(**changes), "customs", CUSTOMS)


def non_bonded_signed(**changes) -> dict:
    doc = approval(**({"lane_id": "N1-IN", "countersigned_by": PARK_PARTY} | changes))
    return sign(sign(doc, "customs", CUSTOMS), "park", PARK)


def check(doc, *, trust=TRUST, lanes=LANES, now=NOW, lifts_used=0) -> VerifiedApproval:
    return verify(doc, trust=trust, lanes=lanes, now=now, lifts_used=lifts_used)


def refusal(doc, **kwargs) -> ApprovalRefused:
    with pytest.raises(ApprovalRefused) as info:
        check(doc, **kwargs)
    return info.value


def keyless(doc: dict) -> dict:
    """The contract's bare ``{"role", "sig"}`` entries, without the ``key`` hint."""
    doc = copy.deepcopy(doc)
    doc["signatures"] = [{"role": s["role"], "sig": s["sig"]} for s in doc["signatures"]]
    return doc


# --- accepted ---------------------------------------------------------------------------


def test_r10_customs_signed_bonded_approval_verifies() -> None:
    """R10: the contract's example, signed by a trust.customs key, is accepted."""
    doc = customs_signed()
    v = check(doc)
    assert isinstance(v.approval, Approval)
    assert v.approval_id == "AP-20261127-0001" and v.lane_id == "B1-IN" and v.lane_kind == "bonded"
    assert v.signed_by("customs") == (public_key_b64(CUSTOMS),) and v.signed_by("park") == ()
    assert v.approval.valid_from == datetime(2026, 11, 27, 9, 0, tzinfo=CST)
    assert v.approval.requested_by is not None and v.approval.requested_by.name == "张三"
    assert v.signing_bytes == signing_bytes(doc)
    assert len(v.fingerprint) == 64
    assert v.document() == doc


def test_r10_contract_bare_signature_entries_verify() -> None:
    """R10: entries exactly as the contract shows them ({role, sig}, no key hint) verify."""
    v = check(keyless(customs_signed()))
    assert v.signed_by("customs") == (public_key_b64(CUSTOMS),)


def test_r10_any_trusted_customs_key_verifies() -> None:
    """R10: every key listed in trust.customs is a customs signer."""
    v = check(sign(approval(), "customs", CUSTOMS_2))
    assert v.signed_by("customs") == (public_key_b64(CUSTOMS_2),)


def test_r10_raw_bytes_and_text_verify_with_any_formatting() -> None:
    """R10: the signed bytes are canonical: pretty-printed, reordered or compact text verifies."""
    doc = customs_signed()
    reordered = dict(reversed(list(doc.items())))
    fingerprints = {
        check(json.dumps(reordered, ensure_ascii=False, indent=4).encode()).fingerprint,
        check(json.dumps(doc)).fingerprint,  # \\u escapes decode to the same text
        check(b"\xef\xbb\xbf" + json.dumps(doc, ensure_ascii=False).encode()).fingerprint,  # UTF-8 BOM
        check(doc).fingerprint,
    }
    assert len(fingerprints) == 1


def test_r10_non_bonded_fully_signed_verifies() -> None:
    """R10: a non_bonded lane accepts customs + park signatures with countersigned_by."""
    v = check(non_bonded_signed())
    assert v.lane_kind == "non_bonded"
    assert v.signed_by("customs") == (public_key_b64(CUSTOMS),)
    assert v.signed_by("park") == (public_key_b64(PARK),)


def test_r10_bonded_accepts_an_extra_park_signature() -> None:
    """R10: a park signature on a bonded lane is more than required, and verified like any other."""
    v = check(sign(customs_signed(), "park", PARK))
    assert {s.role for s in v.signers} == {"customs", "park"}


def test_r17_remote_approval_verifies_once() -> None:
    """R17: a signed remote approval verifies; after its one lift it is exhausted (S1)."""
    doc = customs_signed(trigger="remote", reason="network_fault", approval_id="AP-REMOTE-1")
    v = check(doc)
    assert v.trigger == "remote" and v.max_lifts == 1 and v.lifts_left(0) == 1
    assert refusal(doc, lifts_used=1).code == "exhausted"


def test_r10_other_lane_kinds_need_only_customs() -> None:
    """R10: only non_bonded lanes need the park countersignature."""
    for lane in ("E1-OUT", "A1-IN"):
        assert check(customs_signed(lane_id=lane)).lane_kind == LANES[lane]


def test_r10_optional_nulls_may_be_absent() -> None:
    """R10: countersigned_by and plate may be left out on a bonded lane."""
    doc = approval()
    del doc["countersigned_by"], doc["plate"]
    assert check(sign(doc, "customs", CUSTOMS)).approval.plate is None


# --- refusals ---------------------------------------------------------------------------


def test_r10_unsigned_refused() -> None:
    """R10: no signature at all is refused as unsigned."""
    e = refusal(approval())
    assert e.code == "unsigned" and e.field == "signatures"
    doc = approval()
    del doc["signatures"]
    assert refusal(doc).code == "unsigned"


def test_r10_park_signature_alone_is_unsigned() -> None:
    """R10: a park signature is no customs approval."""
    assert refusal(sign(approval(), "park", PARK)).code == "unsigned"


def test_r10_signed_by_unknown_key_refused() -> None:
    """R10: a signature by a key outside trust.customs is refused as unknown_key."""
    e = refusal(sign(approval(), "customs", STRANGER))
    assert e.code == "unknown_key" and e.field == "signatures[0]"
    assert public_key_b64(STRANGER) in e.message


def test_r10_park_key_posing_as_customs_is_unknown_key() -> None:
    """R10: a park key cannot sign as customs, with or without the key hint."""
    doc = sign(approval(), "customs", PARK)
    assert refusal(doc).code == "unknown_key"
    assert refusal(keyless(doc)).code == "unknown_key"


def test_r10_role_without_trusted_keys_is_unknown_key() -> None:
    """R10: a signature whose role has no trusted key at all cannot be checked: unknown_key."""
    trust = SimpleNamespace(customs=[raw(CUSTOMS)], park=[])
    assert refusal(sign(customs_signed(), "park", PARK), trust=trust).code == "unknown_key"
    assert refusal(customs_signed(), trust=SimpleNamespace(customs=[], park=[raw(PARK)])).code == "unknown_key"


def test_r10_keyless_unknown_signer_is_refused() -> None:
    """R10: a bare entry by an untrusted key is refused (bad_signature: Ed25519 cannot name the key)."""
    assert refusal(keyless(sign(approval(), "customs", STRANGER))).code == "bad_signature"


def test_r10_field_changed_after_signing_is_bad_signature() -> None:
    """R10: changing the approval after customs signed it breaks the signature."""
    doc = customs_signed()
    doc["max_lifts"] = 5
    e = refusal(doc)
    assert e.code == "bad_signature" and e.field == "signatures[0]"
    assert refusal(keyless(doc)).code == "bad_signature"


def test_r10_one_bad_entry_refuses_the_whole_approval() -> None:
    """R10: a valid customs signature does not excuse a forged second entry."""
    doc = customs_signed()
    forged = sign(approval(detail="other text"), "customs", CUSTOMS_2)["signatures"][0]
    doc["signatures"].append(forged)
    assert refusal(doc).code == "bad_signature"


def test_r10_expired_refused() -> None:
    """R10: an approval is refused from valid_until on (the window is half-open)."""
    doc = customs_signed()
    assert refusal(doc, now=datetime(2026, 11, 27, 10, 0, tzinfo=CST)).code == "expired"
    assert refusal(doc, now=datetime(2026, 11, 28, 0, 0, tzinfo=timezone.utc)).code == "expired"
    assert check(doc, now=datetime(2026, 11, 27, 1, 59, 59, tzinfo=timezone.utc)).lane_id == "B1-IN"


def test_r10_not_yet_valid_refused() -> None:
    """R10: an approval is refused before valid_from, accepted from it on."""
    doc = customs_signed()
    e = refusal(doc, now=datetime(2026, 11, 27, 8, 59, 59, tzinfo=CST))
    assert e.code == "not_yet_valid" and e.field == "valid_from"
    assert check(doc, now=datetime(2026, 11, 27, 1, 0, tzinfo=timezone.utc)).lane_id == "B1-IN"


def test_r10_wrong_lane_refused() -> None:
    """R10: the lane named must exist on this site."""
    e = refusal(customs_signed(lane_id="B9-IN"))
    assert e.code == "unknown_lane" and e.field == "lane_id"


def test_r10_s1_exhausted_after_max_lifts() -> None:
    """R10/S1: an approval for one lift is refused for the second use."""
    doc = customs_signed()
    assert check(doc, lifts_used=0).lifts_left(0) == 1
    e = refusal(doc, lifts_used=1)
    assert e.code == "exhausted" and e.field == "max_lifts"
    three = customs_signed(max_lifts=3)
    check(three, lifts_used=2)
    assert refusal(three, lifts_used=3).code == "exhausted"


@pytest.mark.parametrize("party", ["requested_by", "verified_by", "approved_by"])
@pytest.mark.parametrize("how", ["null", "absent"])
def test_r10_missing_chain_refused(party: str, how: str) -> None:
    """R10: the enterprise's request, the O&M verification and the customs approval are all required."""
    doc = approval()
    if how == "null":
        doc[party] = None
    else:
        del doc[party]
    e = refusal(sign(doc, "customs", CUSTOMS))
    assert e.code == "missing_chain" and e.field == party
    assert party in e.message


def test_r10_missing_chain_names_every_missing_party() -> None:
    """R10: the refusal lists every missing party, the field is the first."""
    e = refusal(customs_signed(requested_by=None, approved_by=None))
    assert e.field == "requested_by" and "requested_by" in e.message and "approved_by" in e.message
    assert "企业申请" in e.message_zh and "海关审批" in e.message_zh


def test_r10_non_bonded_missing_countersignature_refused() -> None:
    """R10: a non_bonded lane needs park management's countersigned_by."""
    e = refusal(non_bonded_signed(countersigned_by=None))
    assert e.code == "missing_countersignature" and e.field == "countersigned_by"


def test_r10_non_bonded_missing_park_signature_refused() -> None:
    """R10: a non_bonded lane needs a park signature by a trust.park key."""
    doc = sign(approval(lane_id="N1-IN", countersigned_by=PARK_PARTY), "customs", CUSTOMS)
    e = refusal(doc)
    assert e.code == "missing_park_signature"
    # a second customs signature is no park signature either
    assert refusal(sign(doc, "customs", CUSTOMS_2)).code == "missing_park_signature"


MALFORMED = {
    "naive valid_from": (approval(valid_from="2026-11-27T09:00:00"), "valid_from"),
    "naive valid_until": (approval(valid_until="2026-11-27T10:00:00"), "valid_until"),
    "date only": (approval(valid_until="2026-11-28"), "valid_until"),
    "unix time": (approval(valid_from=1795741200), "valid_from"),
    "not a time": (approval(valid_from="soon"), "valid_from"),
    "window backwards": (approval(valid_until="2026-11-27T09:00:00+08:00"), "valid_until"),
    "max_lifts 0": (approval(max_lifts=0), "max_lifts"),
    "max_lifts bool": (approval(max_lifts=True), "max_lifts"),
    "max_lifts text": (approval(max_lifts="1"), "max_lifts"),
    "max_lifts float": (approval(max_lifts=1.0), "max_lifts"),
    "bad trigger": (approval(trigger="button"), "trigger"),
    "bad reason": (approval(reason="fault"), "reason"),
    "unknown key": (approval(extra_constraint="only on Tuesdays"), "extra_constraint"),
    "no approval_id": ({k: v for k, v in EXAMPLE.items() if k != "approval_id"}, "approval_id"),
    "no lane_id": ({k: v for k, v in EXAMPLE.items() if k != "lane_id"}, "lane_id"),
    "blank party name": (approval(requested_by={"org": "某某物流有限公司", "name": " "}), "requested_by.name"),
    "party extra key": (approval(verified_by={"org": "运维单位", "name": "李四", "tel": "1"}), "verified_by.tel"),
    "party as text": (approval(approved_by="王五"), "approved_by"),
    "detail number": (approval(detail=5), "detail"),
    "signatures not list": (approval(signatures={"role": "customs"}), "signatures"),
    "unknown role": (approval(signatures=[{"role": "police", "sig": base64.b64encode(bytes(64)).decode()}]), "signatures[0].role"),
    "sig not base64": (approval(signatures=[{"role": "customs", "sig": "***"}]), "signatures[0].sig"),
    "sig too short": (approval(signatures=[{"role": "customs", "sig": base64.b64encode(bytes(32)).decode()}]), "signatures[0].sig"),
    "key hint too short": (
        approval(signatures=[{"role": "customs", "sig": base64.b64encode(bytes(64)).decode(), "key": "AAAA"}]),
        "signatures[0].key",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_r10_malformed_refused_with_the_field(case: str) -> None:
    """R10 / bad input: a malformed approval is refused as malformed, naming the field."""
    doc, field = MALFORMED[case]
    e = refusal(doc)
    assert e.code == "malformed"
    assert e.field == field, e.message


@pytest.mark.parametrize(
    "text",
    [
        b'{"approval_id": "A", "approval_id": "B"}',  # duplicate keys: readers disagree on which wins
        b'{"max_lifts": NaN}',
        b'{"max_lifts": Infinity}',
        b"[]",
        b"not json",
        b'"a string"',
        "审批".encode("gb18030"),
        b"[" * 100_000,
        b" " * 70_000 + b"{}",
    ],
)
def test_r10_malformed_text_refused(text: bytes) -> None:
    """Bad input: text that is no single JSON object is refused as malformed, not crashed on."""
    assert refusal(text).code == "malformed"


def test_r10_mapping_that_is_not_json_refused() -> None:
    """Bad input: a mapping holding what JSON cannot carry is malformed."""
    assert refusal(approval(detail=float("nan"))).code == "malformed"
    assert refusal(approval(detail=object())).code == "malformed"
    assert refusal(approval(detail="\ud800")).code == "malformed"  # lone surrogate: no UTF-8


def test_r10_duplicate_key_in_nested_object_refused() -> None:
    """Bad input: duplicates are refused at any depth, naming the key."""
    doc = customs_signed()
    text = json.dumps(doc, ensure_ascii=False).replace('"name": "张三"', '"name": "张三", "name": "某人"')
    e = refusal(text.encode())
    assert e.code == "malformed" and e.field == "name"


def test_refusal_order_authenticity_first() -> None:
    """R10: a forged approval is reported as forged, whatever else is wrong with it."""
    doc = customs_signed()
    doc.update(lane_id="B9-IN", requested_by=None, valid_until="2026-11-27T09:10:00+08:00")
    assert refusal(doc).code == "bad_signature"
    unsigned = approval(lane_id="B9-IN", requested_by=None)
    assert refusal(unsigned).code == "unsigned"


def test_refusal_carries_both_languages_and_a_dict() -> None:
    """Refusals carry a stable code, English and Chinese text, and serialise to JSON."""
    e = refusal(customs_signed(), now=datetime(2026, 11, 28, tzinfo=CST))
    d = e.to_dict()
    assert d["reason"] == "expired" and d["field"] == "valid_until"
    assert "expired" in d["message"] and "过期" in d["message_zh"]
    assert str(e).startswith("expired: ")
    assert e.reason_code == "expired"
    json.dumps(d, ensure_ascii=False)
    with pytest.raises(ValueError):
        ApprovalRefused("no_such_code", "x")


def test_reason_codes_are_the_documented_list() -> None:
    """The stable list of refusal codes."""
    assert REASON_CODES == (
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


def test_verify_needs_an_aware_now_and_non_negative_lifts() -> None:
    """verify is pure and takes its clock from the caller: a naive now is a programming error."""
    with pytest.raises(ValueError):
        check(customs_signed(), now=datetime(2026, 11, 27, 9, 30))
    with pytest.raises(ValueError):
        check(customs_signed(), lifts_used=-1)


# --- signing bytes ----------------------------------------------------------------------


def test_signing_bytes_match_the_contract_one_liner() -> None:
    """CONTRACT 4: the object without signatures, sorted keys, `,`/`:` separators, UTF-8 kept."""
    doc = customs_signed()
    body = {k: v for k, v in doc.items() if k != "signatures"}
    expected = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert signing_bytes(doc) == expected
    assert signing_bytes(doc) == (
        '{"approval_id":"AP-20261127-0001","approved_by":{"name":"王五","org":"昆明海关"},'
        '"countersigned_by":null,"detail":"地磅通讯中断","lane_id":"B1-IN","max_lifts":1,'
        '"plate":null,"reason":"equipment_fault","requested_by":{"name":"张三","org":"某某物流有限公司"},'
        '"trigger":"panel","valid_from":"2026-11-27T09:00:00+08:00",'
        '"valid_until":"2026-11-27T10:00:00+08:00","verified_by":{"name":"李四","org":"运维单位"}}'
    ).encode("utf-8")
    assert "地磅通讯中断".encode() in signing_bytes(doc)


def test_signature_is_plain_ed25519_over_the_signing_bytes() -> None:
    """CONTRACT 4: any Ed25519 tool signing the one-liner's bytes produces an accepted signature."""
    doc = approval()
    body = {k: v for k, v in doc.items() if k != "signatures"}
    sig = CUSTOMS.sign(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    doc["signatures"] = [{"role": "customs", "sig": base64.b64encode(sig).decode()}]
    assert check(doc).signed_by("customs") == (public_key_b64(CUSTOMS),)


def test_timestamps_are_signed_as_written() -> None:
    """R10: the same instant written another way is different signed content (nothing is normalised)."""
    doc = customs_signed()
    doc["valid_from"] = "2026-11-27T01:00:00+00:00"
    assert refusal(doc).code == "bad_signature"


# --- sign -------------------------------------------------------------------------------


def test_sign_appends_and_replaces_same_role_same_key() -> None:
    """sign(): one entry per (role, key); other signers are kept."""
    doc = approval()
    once = sign(doc, "customs", CUSTOMS)
    twice = sign(once, "customs", CUSTOMS)
    assert doc["signatures"] == []  # the input is not touched
    assert len(twice["signatures"]) == 1 and twice["signatures"][0]["key"] == public_key_b64(CUSTOMS)
    both = sign(twice, "customs", CUSTOMS_2)
    assert [s["key"] for s in both["signatures"]] == [public_key_b64(CUSTOMS), public_key_b64(CUSTOMS_2)]
    # a bare entry by the same key over the same content is recognised and replaced too
    bare = sign(keyless(once), "customs", CUSTOMS)
    assert len(bare["signatures"]) == 1
    # the same key signing as the other role is a different entry
    assert len(sign(once, "park", CUSTOMS)["signatures"]) == 2


def test_sign_refuses_malformed_and_unknown_role() -> None:
    """sign(): nothing malformed gets signed; only customs and park roles exist."""
    with pytest.raises(ApprovalRefused) as info:
        sign(approval(valid_from="2026-11-27T09:00:00"), "customs", CUSTOMS)
    assert info.value.code == "malformed"
    with pytest.raises(ValueError):
        sign(approval(), "police", CUSTOMS)


def test_sign_keeps_unknown_free_text_order_and_content() -> None:
    """sign(): the copy keeps key order and text exactly; only signatures change."""
    doc = approval(detail="地磅通讯中断，\n请人工核验 “引号” ✓")
    signed = sign(doc, "customs", CUSTOMS)
    assert list(signed) == list(doc)
    assert {k: v for k, v in signed.items() if k != "signatures"} == {k: v for k, v in doc.items() if k != "signatures"}


# --- VerifiedApproval -------------------------------------------------------------------


def test_verified_approval_helpers() -> None:
    """VerifiedApproval: window, lifts left, re-check at lift time; frozen and hashable."""
    v = check(customs_signed(max_lifts=2))
    assert v.window_contains(NOW)
    assert v.window_contains(datetime(2026, 11, 27, 9, 0, tzinfo=CST))
    assert not v.window_contains(datetime(2026, 11, 27, 10, 0, tzinfo=CST))
    assert not v.window_contains(datetime(2026, 11, 27, 8, 59, tzinfo=CST))
    assert (v.lifts_left(0), v.lifts_left(1), v.lifts_left(2), v.lifts_left(5)) == (2, 1, 0, 0)
    v.check_usable(NOW, 1)
    with pytest.raises(ApprovalRefused) as info:
        v.check_usable(datetime(2026, 11, 27, 10, 30, tzinfo=CST), 0)  # guard pressed too late
    assert info.value.code == "expired"
    with pytest.raises(ApprovalRefused) as info:
        v.check_usable(NOW, 2)
    assert info.value.code == "exhausted"
    with pytest.raises(ValueError):
        v.window_contains(datetime(2026, 11, 27, 9, 30))
    with pytest.raises(Exception):
        v.fingerprint = "x"  # type: ignore[misc]
    assert hash(v) == hash(check(customs_signed(max_lifts=2)))


def test_fingerprint_is_sha256_of_signing_bytes_and_ignores_signatures() -> None:
    """The fingerprint names the signed content: adding a signature keeps it, any edit changes it."""
    import hashlib

    one = check(customs_signed())
    two = check(sign(customs_signed(), "customs", CUSTOMS_2))
    assert one.fingerprint == two.fingerprint == hashlib.sha256(signing_bytes(approval())).hexdigest()
    assert check(customs_signed(max_lifts=2)).fingerprint != one.fingerprint


def test_lane_kinds_and_trust_from_config_objects() -> None:
    """verify takes config.trust as is and lane_kinds(config) for lanes."""
    config = SimpleNamespace(lanes=[SimpleNamespace(id="B1-IN", kind="bonded"), SimpleNamespace(id="N1-IN", kind="non_bonded")])
    assert lane_kinds(config) == {"B1-IN": "bonded", "N1-IN": "non_bonded"}
    assert TRUST.customs[0] == raw(CUSTOMS)
    check(customs_signed(), lanes=lane_kinds(config))


def test_trust_keys_may_be_base64_text() -> None:
    """verify takes raw key bytes (TrustConfig) or their base64 text; a bad key is a config error."""
    trust = SimpleNamespace(customs=[public_key_b64(CUSTOMS)], park=[])
    check(customs_signed(), trust=trust)
    with pytest.raises(ValueError, match="trust.customs"):
        check(customs_signed(), trust=SimpleNamespace(customs=[b"short"], park=[]))


def test_parse_document_returns_a_plain_copy() -> None:
    """parse_document: mappings are copied, never aliased."""
    doc = approval()
    parsed = parse_document(doc)
    parsed["requested_by"]["name"] = "changed"
    assert doc["requested_by"]["name"] == "张三"


# --- properties -------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=12).filter(
    lambda s: s.strip() != ""
)
_party = st.fixed_dictionaries({"org": _text, "name": _text})
_offsets = st.sampled_from([timezone.utc, CST, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))])


def _stamp(lo: datetime, hi: datetime) -> st.SearchStrategy[str]:
    naive = st.datetimes(min_value=lo.replace(tzinfo=None), max_value=hi.replace(tzinfo=None))
    return st.builds(lambda d, tz: d.replace(tzinfo=CST).astimezone(tz).isoformat(), naive, _offsets)


# Values that keep the approval well-formed: the only thing wrong after the change is the signature.
WELL_FORMED_VALUES: dict[str, st.SearchStrategy] = {
    "approval_id": st.from_regex(r"AP-[0-9A-Z-]{1,20}", fullmatch=True),
    "lane_id": st.sampled_from(sorted(LANES) + ["B9-IN"]),
    "trigger": st.sampled_from(["panel", "remote"]),
    "reason": st.sampled_from(["equipment_fault", "network_fault", "other"]),
    "detail": st.text(max_size=20),
    "requested_by": st.one_of(st.none(), _party),
    "verified_by": st.one_of(st.none(), _party),
    "approved_by": st.one_of(st.none(), _party),
    "countersigned_by": st.one_of(st.none(), _party),
    "plate": st.one_of(st.none(), _text),
    "valid_from": _stamp(datetime(2026, 11, 26, 0, 0, tzinfo=CST), datetime(2026, 11, 27, 9, 59, tzinfo=CST)),
    "valid_until": _stamp(datetime(2026, 11, 27, 9, 1, tzinfo=CST), datetime(2026, 11, 30, 0, 0, tzinfo=CST)),
    "max_lifts": st.integers(min_value=1, max_value=10**9),
}
SIGNED_FIELDS = sorted(k for k in EXAMPLE if k != "signatures")


def test_every_signed_field_has_a_strategy() -> None:
    assert sorted(WELL_FORMED_VALUES) == SIGNED_FIELDS


@settings(max_examples=300, deadline=None)
@given(data=st.data(), field=st.sampled_from(SIGNED_FIELDS), bare=st.booleans())
def test_r10_s1_any_field_changed_after_signing_is_bad_signature(data, field: str, bare: bool) -> None:
    """R10/S1: each top-level field, changed to any well-formed value after signing, is bad_signature."""
    doc = customs_signed()
    value = data.draw(WELL_FORMED_VALUES[field].filter(lambda v: v != EXAMPLE[field]), label=field)
    doc[field] = value
    try:
        Approval.model_validate(doc)
    except Exception:
        assume(False)  # e.g. a valid_from that crossed valid_until: malformed, covered elsewhere
    e = refusal(keyless(doc) if bare else doc)
    assert e.code == "bad_signature"


@settings(max_examples=100, deadline=None)
@given(field=st.sampled_from(["requested_by", "verified_by", "approved_by", "countersigned_by", "plate"]))
def test_r10_removing_a_field_after_signing_is_bad_signature(field: str) -> None:
    """R10: deleting a signed field (even a null one) changes the signed bytes."""
    doc = customs_signed()
    del doc[field]
    assert refusal(doc).code == "bad_signature"


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6,
)
_plausible = st.one_of(
    _json,
    *WELL_FORMED_VALUES.values(),
    st.just("2026-11-27T09:00:00"),
    st.just(1.0),
)


@st.composite
def mutations(draw):
    """A list of edits to a signed approval: values, deletions, new keys, nested edits, reorders,
    signature damage."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "delete", "add", "nested", "reorder", "sig", "drop_sig", "hint", "same"]))
        if kind == "set":
            edits.append(("set", draw(st.sampled_from(SIGNED_FIELDS)), draw(_plausible)))
        elif kind == "delete":
            edits.append(("delete", draw(st.sampled_from(list(EXAMPLE)))))
        elif kind == "add":
            edits.append(("set", draw(_text.filter(lambda k: k not in EXAMPLE)), draw(_json)))
        elif kind == "nested":
            party = draw(st.sampled_from(["requested_by", "verified_by", "approved_by"]))
            edits.append(("nested", party, draw(st.sampled_from(["org", "name"])), draw(_plausible)))
        elif kind == "reorder":
            edits.append(("reorder", draw(st.permutations(list(EXAMPLE)))))
        elif kind == "sig":
            edits.append(("sig", draw(st.integers(0, 63)), draw(st.integers(1, 255))))
        elif kind == "same":
            field = draw(st.sampled_from(SIGNED_FIELDS))
            edits.append(("set", field, copy.deepcopy(EXAMPLE[field])))
        else:
            edits.append((kind,))
    return edits


def apply(doc: dict, edits) -> dict:
    doc = copy.deepcopy(doc)
    for edit in edits:
        kind = edit[0]
        if kind == "set":
            doc[edit[1]] = copy.deepcopy(edit[2])
        elif kind == "delete":
            doc.pop(edit[1], None)
        elif kind == "nested":
            if isinstance(doc.get(edit[1]), dict):
                doc[edit[1]][edit[2]] = copy.deepcopy(edit[3])
        elif kind == "reorder":
            doc = {k: doc[k] for k in edit[1] if k in doc} | {k: v for k, v in doc.items() if k not in edit[1]}
        elif kind == "sig":
            sigs = doc.get("signatures")
            if isinstance(sigs, list) and sigs and isinstance(sigs[0], dict):
                raw_sig = bytearray(base64.b64decode(sigs[0]["sig"]))
                raw_sig[edit[1]] ^= edit[2]
                sigs[0]["sig"] = base64.b64encode(bytes(raw_sig)).decode()
        elif kind == "drop_sig":
            doc["signatures"] = []
        elif kind == "hint":
            sigs = doc.get("signatures")
            if isinstance(sigs, list) and sigs and isinstance(sigs[0], dict):
                sigs[0]["key"] = public_key_b64(CUSTOMS_2)
    return doc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=mutations(), as_text=st.sampled_from([None, 0, 2]))
def test_r10_s1_mutations_never_verify_unless_signed_bytes_unchanged(edits, as_text) -> None:
    """R10/S1: a mutated approval verifies only if its signed bytes are exactly what customs signed."""
    original = customs_signed()
    mutated = apply(original, edits)
    payload = mutated if as_text is None else json.dumps(mutated, ensure_ascii=False, indent=as_text or None).encode()
    try:
        v = check(payload)
    except ApprovalRefused as e:
        assert e.code in REASON_CODES
        event(f"refused {e.code}")
        return
    event("verified")
    assert v.signing_bytes == signing_bytes(original)
    assert v.fingerprint == check(original).fingerprint


@settings(max_examples=100, deadline=None)
@given(order=st.permutations(list(EXAMPLE)), indent=st.sampled_from([None, 1, 2, "\t"]), ascii_=st.booleans())
def test_r10_reformatting_keeps_the_signature(order, indent, ascii_) -> None:
    """R10: key order, whitespace and \\u escapes are not signed content: they always verify."""
    doc = customs_signed()
    reordered = {k: doc[k] for k in order}
    text = json.dumps(reordered, ensure_ascii=ascii_, indent=indent)
    assert check(text).fingerprint == check(doc).fingerprint
