"""Key-holder tools: make an Ed25519 signing key, sign approvals with it (CONTRACT section 4).

For the customs officer and the park manager, not for the lane PC (which only holds public
keys, in ``trust``).

Key files are PEM, unencrypted PKCS#8 (``-----BEGIN PRIVATE KEY-----``), the form
``openssl genpkey -algorithm ed25519`` writes and ``openssl pkey`` reads. They are created
with mode 0600 and never overwritten; like ssh, a key file that group or others may read is
refused. The public key (what ``trust.customs`` / ``trust.park`` list) is the raw 32 bytes in
base64, printed by ``gatectl keys new``.

    gatectl keys new --out customs.key              # prints the public key for trust.customs
    gatectl approval sign --key customs.key --role customs AP-0001.json [--out signed.json]

Exit codes: 0 ok; 1 the job failed (a file missing, unreadable or already there, a key
file refused, a write failed); 2 bad usage (bad arguments, or the approval file is not a
well-formed approval).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import stat
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatectl.approvals import (
    CHAIN,
    ROLES,
    ApprovalRefused,
    parse_document,
    public_key_b64,
    read_document,
    sign,
    signing_bytes,
    validate,
)

__all__ = [
    "KeyFileError",
    "add_approval_subcommands",
    "add_keys_subcommands",
    "add_subcommands",
    "cmd_approval_sign",
    "cmd_keys_new",
    "load_private_key",
    "new_key",
    "sign_file",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class KeyFileError(Exception):
    """A key file that cannot be used: missing, unreadable, too open, or not an Ed25519 key."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _temp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")


def _write_new(path: Path, data: bytes, mode: int) -> int:
    """Create ``path`` exclusively with ``mode`` (less the umask), write ``data``, fsync; the open fd.

    O_CREAT|O_EXCL|O_NOFOLLOW: an existing file or a planted symlink is never written through.
    On failure the file is removed and the fd closed.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd


def new_key(path: Path | str) -> str:
    """Write a new Ed25519 private key to ``path`` (PEM PKCS#8, mode 0600); its public key, base64.

    Atomic and never overwriting: the key is written to a 0600 temporary file beside
    ``path`` (created with O_EXCL), fsynced, then hard-linked to ``path``, which fails if
    ``path`` exists. So ``path`` appears complete or not at all, and an existing key is
    never replaced (``FileExistsError``).
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise FileExistsError(f"{path} already exists; a key file is never overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = _temp_path(path)
    fd = _write_new(tmp, pem, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask can only remove bits; make it exactly 0600
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(f"{path} already exists; a key file is never overwritten") from None
        except OSError:
            # A file system without hard links: write in place, still exclusively (never
            # overwriting); a crash mid-write can leave a partial file, which loads as an error.
            direct = _write_new(path, pem, 0o600)
            try:
                os.fchmod(direct, 0o600)
            finally:
                os.close(direct)
    finally:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return public_key_b64(key)


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path``, or ``KeyFileError``.

    Refuses, like ssh, a file that group or others may read or write (``chmod 600`` it);
    the mode is read from the open file, so it is the file that was checked that is used.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not hang us
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"{path}: permissions {stat.S_IMODE(st.st_mode):04o} are too open; a private key must be "
                f"readable by its owner only (chmod 600 {path})"
            )
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            if sum(map(len, chunks)) > 65536:
                raise KeyFileError(f"{path}: too large to be a key file")
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{path}: the key is encrypted; gatectl expects an unencrypted PKCS#8 key") from None
    except ValueError:
        raise KeyFileError(f"{path}: not a PEM private key") from None
    except Exception as exc:  # noqa: BLE001 - cryptography raises a few kinds for odd PEM
        raise KeyFileError(f"{path}: not a usable private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def _write_replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, fsync, rename."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644  # less the umask, by os.open
    tmp = _temp_path(path)
    fd = _write_new(tmp, data, mode)
    try:
        if path.exists():
            os.fchmod(fd, mode)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _dump(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def sign_file(
    key_path: Path | str, approval_path: Path | str, role: str, out_path: Path | str | None = None
) -> dict[str, Any]:
    """Sign the approval in ``approval_path`` as ``role``; write it to ``out_path`` (default: in place).

    The JSON keeps its key order and its non-ASCII text as UTF-8, pretty-printed (the signed
    bytes are canonical, so formatting does not matter). The write is atomic. Returns the
    signed object. Raises ``KeyFileError``, ``ApprovalRefused("malformed")``, ``OSError``.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    key = load_private_key(key_path)
    approval_path = Path(approval_path)
    raw = read_document(approval_path)
    signed = sign(parse_document(raw), role, key)
    _write_replace(Path(out_path) if out_path is not None else approval_path, _dump(signed))
    return signed


def _stale_signatures(doc: dict[str, Any]) -> list[str]:
    """Entries naming a key whose signature no longer matches the content."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    approval = validate(doc)
    message = signing_bytes(doc)
    stale = []
    for i, entry in enumerate(approval.signatures):
        if entry.key is None:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(entry.key_bytes).verify(entry.sig_bytes, message)
        except (InvalidSignature, ValueError):
            stale.append(f"signatures[{i}] ({entry.role}, key {entry.key})")
    return stale


# --- commands ----------------------------------------------------------------------------


def cmd_keys_new(args: argparse.Namespace) -> int:
    """``gatectl keys new --out PATH``: the public key on stdout, the rest on stderr."""
    try:
        public = new_key(args.out)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(public)
    print(
        f"private key written to {args.out} (mode 0600); keep it secret. "
        "Add the public key above to trust.customs or trust.park of each site config.",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_approval_sign(args: argparse.Namespace) -> int:
    """``gatectl approval sign --key K --role customs|park FILE [--out F]``."""
    try:
        signed = sign_file(args.key, args.file, args.role, args.out)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ApprovalRefused as exc:
        print(f"error: {args.file}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        name = exc.filename or args.file
        print(f"error: {name}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    entry = signed["signatures"][-1]
    out = args.out or args.file
    print(f"signed {signed.get('approval_id')} as {args.role} with key {entry['key']} -> {out}", file=sys.stderr)
    for field, what, _ in CHAIN:
        if signed.get(field) is None:
            print(
                f"warning: {field} ({what}) is empty; the daemon will refuse this approval, and filling "
                "it in now would invalidate every signature",
                file=sys.stderr,
            )
    if args.role == "park" and signed.get("countersigned_by") is None:
        print("warning: countersigned_by is empty; non_bonded lanes refuse an approval without it", file=sys.stderr)
    for stale in _stale_signatures(signed):
        print(f"warning: {stale} no longer matches the content (changed after it was signed)", file=sys.stderr)
    return EXIT_OK


def add_keys_subcommands(keys_sub: argparse._SubParsersAction) -> None:
    """Register ``new`` in the ``keys`` group."""
    p = keys_sub.add_parser("new", help="make an Ed25519 signing key; prints the public key for trust")
    p.add_argument("--out", required=True, help="private key file to create (PEM PKCS#8, mode 0600)")
    p.set_defaults(func=cmd_keys_new)


def add_approval_subcommands(approval_sub: argparse._SubParsersAction) -> None:
    """Register ``sign`` in the ``approval`` group (``add`` is registered by gatectl.cli)."""
    p = approval_sub.add_parser("sign", help="sign an approval file as customs or park management")
    p.add_argument("--key", required=True, help="private key file (from `gatectl keys new`)")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--out", default=None, help="write the signed approval here (default: in place)")
    p.add_argument("file", help="approval JSON file")
    p.set_defaults(func=cmd_approval_sign)


def add_subcommands(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Register ``keys new`` and ``approval sign``; returns the ``approval`` group's subparsers.

        approval_sub = add_subcommands(sub)
        p = approval_sub.add_parser("add", ...)   # gatectl.cli adds its own commands here
    """
    keys = subparsers.add_parser("keys", help="signing keys for approvals")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    add_keys_subcommands(keys_sub)
    approval = subparsers.add_parser("approval", help="manual and remote lift approvals")
    approval_sub = approval.add_subparsers(dest="approval_command", required=True)
    add_approval_subcommands(approval_sub)
    return approval_sub
