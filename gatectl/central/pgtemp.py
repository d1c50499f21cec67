"""A throwaway PostgreSQL in a temporary directory, for the zone demo, the tests and the
benches: Debian's ``postgresql`` binaries (``initdb``, ``pg_ctl``), a free loopback port,
no Unix socket, password authentication.

PostgreSQL refuses to run as root, so as root the cluster belongs to an unprivileged user
(``nobody`` by default) and every command runs as that user; its directory is made with
``tempfile.mkdtemp`` under the system temporary directory, which that user can reach.

    with TempPostgres() as pg:          # initdb + start; stop and delete at the end
        url = pg.url                    # postgresql://gatectl:...@127.0.0.1:PORT/gatectl
        pg.stop("immediate"); pg.start()
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

INSTALL_HINT = ("PostgreSQL is not installed: install the Debian package `postgresql` "
                "(apt-get install postgresql); its binaries are looked for with `pg_config --bindir` "
                "and in /usr/lib/postgresql/*/bin")


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bindir() -> Path:
    """The directory with ``initdb`` and ``pg_ctl`` (the newest installed version)."""
    env = os.environ.get("GATECTL_PG_BINDIR")
    candidates = [Path(env)] if env else []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
            if out:
                candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2].split(".")[0])
                      if p.split("/")[-2].split(".")[0].isdigit() else 0, reverse=True)
    candidates += [Path(p) for p in versions]
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file():
            return c
    raise PostgresMissing(INSTALL_HINT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempPostgres:
    def __init__(self, *, user: str = "nobody", fsync: bool = True, port: int | None = None,
                 settings: dict[str, str] | None = None) -> None:
        self.bindir = find_bindir()
        self.port = port or free_port()
        self.password = secrets.token_hex(12)
        self.root = Path(tempfile.mkdtemp(prefix="gatectl-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.fsync = fsync
        self.settings = settings or {}
        self._uid: int | None = None
        self._gid: int | None = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam(user)
            self._uid, self._gid = pw.pw_uid, pw.pw_gid
            os.chown(self.root, self._uid, self._gid)
        os.chmod(self.root, 0o700)
        self._initdb()

    @property
    def url(self) -> str:
        return f"postgresql://gatectl:{self.password}@127.0.0.1:{self.port}/gatectl"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kw: dict = {}
        if self._uid is not None:
            kw = {"user": self._uid, "group": self._gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "HOME": str(self.root)}
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=self.root, **kw)
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr or proc.stdout}"
                               + (f"\n{self.log.read_text()[-2000:]}" if self.log.exists() else ""))
        return proc

    def _initdb(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._uid is not None:
            os.chown(pwfile, self._uid, self._gid)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "gatectl", f"--pwfile={pwfile}",
                  "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-locale",
                  "--no-sync")
        pwfile.unlink()
        conf = {
            "listen_addresses": "'127.0.0.1'", "port": str(self.port), "unix_socket_directories": "''",
            "fsync": "on" if self.fsync else "off", "max_connections": "100", "shared_buffers": "'128MB'",
            **self.settings,
        }
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n# gatectl TempPostgres\n" + "".join(f"{k} = {v}\n" for k, v in conf.items()))

    def start(self, timeout: float = 60) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", str(int(timeout)), "start", timeout=timeout + 10)
        self._wait_ready(timeout)
        self._ensure_db()

    def _wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > end:
                    raise RuntimeError("postgres did not listen:\n" + self.log.read_text()[-2000:]) from None
                time.sleep(0.05)

    def _ensure_db(self) -> None:
        import psycopg

        url = f"postgresql://gatectl:{self.password}@127.0.0.1:{self.port}/postgres"
        for attempt in range(100):
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'gatectl'").fetchone() is None:
                        conn.execute("CREATE DATABASE gatectl")
                    return
            except psycopg.OperationalError:
                if attempt == 99:
                    raise
                time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (clean), or ``immediate`` (like a crash: recovery at the next start)."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def cleanup(self) -> None:
        try:
            self.stop("immediate")
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
