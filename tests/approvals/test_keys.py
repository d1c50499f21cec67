"""Key-holder tools (gatectl.keys): signing keys and signed approval files for R10/R17.

The security bar: approvals are Ed25519-signed by customs (and park) keys named in the
config; private keys are created owner-only and refused when readable by others.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatectl.approvals import ApprovalRefused, public_key_b64, verify
from gatectl.config.models import TrustConfig
from gatectl.keys import (
    KeyFileError,
    add_approval_subcommands,
    add_subcommands,
    cmd_approval_sign,
    cmd_keys_new,
    load_private_key,
    new_key,
    sign_file,
)

CST = timezone(timedelta(hours=8))
NOW = datetime(2026, 11, 27, 9, 30, tzinfo=CST)
APPROVAL = {
    "approval_id": "AP-20261127-0002",
    "lane_id": "N1-IN",
    "trigger": "panel",
    "reason": "network_fault",
    "detail": "云关通网络中断，人工核验后放行",
    "requested_by": {"org": "某某物流有限公司", "name": "张三"},
    "verified_by": {"org": "运维单位", "name": "李四"},
    "approved_by": {"org": "昆明海关", "name": "王五"},
    "countersigned_by": {"org": "园区管理方", "name": "赵六"},
    "plate": "云A12345",
    "valid_from": "2026-11-27T09:00:00+08:00",
    "valid_until": "2026-11-27T10:00:00+08:00",
    "max_lifts": 1,
    "signatures": [],
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_approval(path: Path, doc: dict = APPROVAL) -> Path:
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


@pytest.fixture
def loose_umask():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    p = argparse.ArgumentParser(prog="gatectl")
    sub = p.add_subparsers(dest="command", required=True)
    return p, add_subcommands(sub)


def run(argv: list[str]) -> int:
    p, _ = parser()
    args = p.parse_args(argv)
    return args.func(args)


# --- new_key / load_private_key ---------------------------------------------------------


def test_security_new_key_is_mode_0600_pem_pkcs8(tmp_path: Path, loose_umask) -> None:
    """Security: a new key file is owner-only even under umask 0, PEM PKCS#8, its public key returned."""
    path = tmp_path / "customs.key"
    public = new_key(path)
    assert mode(path) == 0o600
    pem = path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    assert public == public_key_b64(key)
    assert len(base64.b64decode(public)) == 32
    TrustConfig(customs=[public])  # the form trust takes
    assert [p.name for p in tmp_path.iterdir()] == ["customs.key"]  # no temporary left behind


def test_security_new_key_refuses_to_overwrite(tmp_path: Path) -> None:
    """Security: an existing key (or anything else at that path) is never replaced."""
    path = tmp_path / "customs.key"
    first = new_key(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        new_key(path)
    assert path.read_bytes() == before
    assert public_key_b64(load_private_key(path)) == first
    dangling = tmp_path / "link.key"
    dangling.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        new_key(dangling)
    assert not (tmp_path / "elsewhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["customs.key", "link.key"]


def test_security_new_key_without_hard_links_still_0600_and_exclusive(
    tmp_path: Path, loose_umask, monkeypatch
) -> None:
    """Security: on a file system without hard links the key is written in place, still 0600, still never over a file."""

    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "customs.key"
    public = new_key(path)
    assert mode(path) == 0o600 and public_key_b64(load_private_key(path)) == public
    assert [p.name for p in tmp_path.iterdir()] == ["customs.key"]
    with pytest.raises(FileExistsError):
        new_key(path)


def test_new_keys_differ(tmp_path: Path) -> None:
    assert new_key(tmp_path / "a") != new_key(tmp_path / "b")


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o644, 0o660, 0o606, 0o700 | 0o004])
def test_security_loose_key_permissions_refused(tmp_path: Path, loose: int) -> None:
    """Security: like ssh, a private key readable or writable by group or others is refused."""
    path = tmp_path / "customs.key"
    new_key(path)
    os.chmod(path, loose)
    with pytest.raises(KeyFileError, match="too open.*chmod 600"):
        load_private_key(path)
    os.chmod(path, 0o400)
    assert isinstance(load_private_key(path), Ed25519PrivateKey)


def test_load_private_key_refuses_what_is_no_ed25519_key(tmp_path: Path) -> None:
    """Security: missing files, garbage, other key types and encrypted keys are clear errors."""
    with pytest.raises(KeyFileError, match="no such key file"):
        load_private_key(tmp_path / "missing.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"hello")
    garbage.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_private_key(garbage)
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ec_key.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_private_key(ec_key)
    enc = tmp_path / "enc.key"
    enc.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    enc.chmod(0o600)
    with pytest.raises(KeyFileError, match="encrypted"):
        load_private_key(enc)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_private_key(tmp_path)
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):  # and does not hang waiting for a writer
        load_private_key(fifo)


# --- sign_file --------------------------------------------------------------------------


def test_r10_sign_file_then_verify_round_trip(tmp_path: Path) -> None:
    """R10: customs and park sign a non_bonded approval file; the daemon's verify accepts it."""
    customs_pub = new_key(tmp_path / "customs.key")
    park_pub = new_key(tmp_path / "park.key")
    src = write_approval(tmp_path / "AP-0002.json")
    signed_path = tmp_path / "signed.json"

    sign_file(tmp_path / "customs.key", src, "customs", signed_path)
    assert json.loads(src.read_text(encoding="utf-8")) == APPROVAL  # --out leaves the input alone
    doc = sign_file(tmp_path / "park.key", signed_path, "park")  # in place

    text = signed_path.read_text(encoding="utf-8")
    assert "云关通网络中断" in text and "\\u" not in text  # Chinese kept as UTF-8
    assert list(json.loads(text)) == list(APPROVAL)  # key order kept
    assert json.loads(text) == doc
    assert [(s["role"], s["key"]) for s in doc["signatures"]] == [("customs", customs_pub), ("park", park_pub)]

    trust = TrustConfig(customs=[customs_pub], park=[park_pub])
    v = verify(signed_path.read_bytes(), trust=trust, lanes={"N1-IN": "non_bonded"}, now=NOW)
    assert v.signed_by("customs") == (customs_pub,) and v.signed_by("park") == (park_pub,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["AP-0002.json", "customs.key", "park.key", "signed.json"]


def test_r10_resigning_replaces_the_own_signature(tmp_path: Path) -> None:
    """R10: signing the same file twice with one key leaves one signature of that key."""
    new_key(tmp_path / "customs.key")
    src = write_approval(tmp_path / "a.json")
    sign_file(tmp_path / "customs.key", src, "customs")
    doc = sign_file(tmp_path / "customs.key", src, "customs")
    assert len(doc["signatures"]) == 1


def test_sign_file_keeps_the_file_mode(tmp_path: Path) -> None:
    new_key(tmp_path / "k")
    src = write_approval(tmp_path / "a.json")
    src.chmod(0o640)
    sign_file(tmp_path / "k", src, "customs")
    assert mode(src) == 0o640


def test_r10_sign_file_refuses_malformed_and_leaves_it_alone(tmp_path: Path) -> None:
    """R10: a malformed approval is not signed and the file is untouched."""
    new_key(tmp_path / "k")
    src = write_approval(tmp_path / "a.json", APPROVAL | {"valid_from": "2026-11-27T09:00:00"})
    before = src.read_bytes()
    with pytest.raises(ApprovalRefused) as info:
        sign_file(tmp_path / "k", src, "customs")
    assert info.value.code == "malformed" and info.value.field == "valid_from"
    assert src.read_bytes() == before
    with pytest.raises(ValueError):
        sign_file(tmp_path / "k", src, "police")


def test_security_sign_file_refuses_a_loose_key(tmp_path: Path) -> None:
    """Security: a key readable by others signs nothing."""
    new_key(tmp_path / "k")
    (tmp_path / "k").chmod(0o644)
    src = write_approval(tmp_path / "a.json")
    with pytest.raises(KeyFileError):
        sign_file(tmp_path / "k", src, "customs")
    assert json.loads(src.read_text(encoding="utf-8"))["signatures"] == []


# --- CLI functions ----------------------------------------------------------------------


def test_cli_keys_new_exit_codes(tmp_path: Path, capsys) -> None:
    """`gatectl keys new --out PATH`: 0 and the public key on stdout; 1 when the file exists."""
    path = tmp_path / "customs.key"
    assert run(["keys", "new", "--out", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == public_key_b64(load_private_key(path))
    assert "0600" in err
    assert run(["keys", "new", "--out", str(path)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert run(["keys", "new", "--out", str(tmp_path / "no-dir" / "k")]) == 1


def test_cli_approval_sign_exit_codes(tmp_path: Path, capsys) -> None:
    """`gatectl approval sign`: 0 signed; 1 key or file problems; 2 malformed approval."""
    key = tmp_path / "customs.key"
    new_key(key)
    src = write_approval(tmp_path / "a.json")
    out = tmp_path / "signed.json"
    assert run(["approval", "sign", "--key", str(key), "--role", "customs", str(src), "--out", str(out)]) == 0
    assert "signed AP-20261127-0002 as customs" in capsys.readouterr().err
    assert json.loads(out.read_text(encoding="utf-8"))["signatures"][0]["role"] == "customs"

    assert run(["approval", "sign", "--key", str(tmp_path / "nope.key"), "--role", "customs", str(src)]) == 1
    assert run(["approval", "sign", "--key", str(key), "--role", "customs", str(tmp_path / "nope.json")]) == 1
    key.chmod(0o644)
    assert run(["approval", "sign", "--key", str(key), "--role", "customs", str(src)]) == 1
    assert "too open" in capsys.readouterr().err
    key.chmod(0o600)
    bad = write_approval(tmp_path / "bad.json", APPROVAL | {"max_lifts": 0})
    assert run(["approval", "sign", "--key", str(key), "--role", "park", str(bad)]) == 2
    (tmp_path / "nojson.json").write_text("{", encoding="utf-8")
    assert run(["approval", "sign", "--key", str(key), "--role", "park", str(tmp_path / "nojson.json")]) == 2


def test_cli_approval_sign_warns_about_what_will_be_refused(tmp_path: Path, capsys) -> None:
    """R10: signing an approval with a missing chain party or a stale signature warns the signer."""
    new_key(tmp_path / "c.key")
    new_key(tmp_path / "p.key")
    src = write_approval(tmp_path / "a.json", APPROVAL | {"requested_by": None, "countersigned_by": None})
    assert run(["approval", "sign", "--key", str(tmp_path / "c.key"), "--role", "customs", str(src)]) == 0
    assert "requested_by" in capsys.readouterr().err
    doc = json.loads(src.read_text(encoding="utf-8"))
    doc["detail"] = "changed after customs signed"
    write_approval(src, doc)
    assert run(["approval", "sign", "--key", str(tmp_path / "p.key"), "--role", "park", str(src)]) == 0
    err = capsys.readouterr().err
    assert "countersigned_by" in err and "no longer matches" in err


def test_cli_bad_usage_is_exit_2(tmp_path: Path) -> None:
    """Bad usage (unknown role, missing arguments) exits 2 through argparse."""
    p, _ = parser()
    for argv in (
        ["approval", "sign", "--key", "k", "--role", "police", "f"],
        ["approval", "sign", "--role", "customs", "f"],
        ["keys", "new"],
        ["keys"],
        ["approval"],
    ):
        with pytest.raises(SystemExit) as info:
            p.parse_args(argv)
        assert info.value.code == 2


def test_cli_approval_group_takes_more_commands() -> None:
    """gatectl.cli adds `approval add` to the group add_subcommands returns."""
    p, approval_sub = parser()
    add = approval_sub.add_parser("add")
    add.add_argument("--config", required=True)
    add.add_argument("file")
    add.set_defaults(func=lambda args: 0)
    args = p.parse_args(["approval", "add", "--config", "site.yaml", "a.json"])
    assert args.func(args) == 0 and args.file == "a.json"
    assert p.parse_args(["approval", "sign", "--key", "k", "--role", "park", "f"]).func is cmd_approval_sign
    assert p.parse_args(["keys", "new", "--out", "k"]).func is cmd_keys_new

    # the pieces also register into groups the caller owns
    q = argparse.ArgumentParser()
    group = q.add_subparsers(dest="command").add_parser("approval").add_subparsers(dest="approval_command")
    add_approval_subcommands(group)
    assert q.parse_args(["approval", "sign", "--key", "k", "--role", "customs", "f"]).role == "customs"
