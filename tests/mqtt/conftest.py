"""MQTT link fixtures: a real Mosquitto per test (killable, restartable on its port), a
subscriber that keeps every message, and the simulated site (as in tests/e2e) running
``gatectl.service.Site`` with an ``MqttLink`` wired in as the daemon will wire it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import sqlite3
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fastsite import BONDED, fast_site

from gatectl.config import load_config
from gatectl.mqtt import MqttLink
from gatectl.service import Site
from simulators.site import SITE_ID, LaneSpec, SimulatedSite, free_tcp_port

# Debian puts it in /usr/sbin, which is not on every user's PATH.
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
PREFIX = f"gatectl/{SITE_ID}"
BONDED_OUT = LaneSpec("B2-OUT", "保税货物出区2号", "bonded", "out", "K002")
#: Fast reconnects for tests (the defaults are 0.5 s doubling to 3 s).
LINK_KW = {"backoff_initial": 0.1, "backoff_max": 1.0}


async def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, step: float = 0.02) -> None:
    """Poll until ``predicate()`` holds; fail the test if it never does."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


# ---------------------------------------------------------------------- certificates


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gatectl tests"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage, san: list[x509.GeneralName] | None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH,
                              [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client, client_key = leaf("lanepc-01", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    return Pki(
        ca=write_cert(ca, directory / "ca.pem"),
        server_cert=write_cert(server, directory / "server.pem"),
        server_key=write_key(server_key, directory / "server.key"),
        client_cert=write_cert(client, directory / "client.pem"),
        client_key=write_key(client_key, directory / "client.key"),
    )


# ---------------------------------------------------------------------- the broker


class Broker:
    """One Mosquitto on 127.0.0.1:``port``, anonymous or with a password file, plain or
    TLS with client certificates required. ``kill()`` is SIGKILL; ``start()`` again
    comes back on the same port (no persistence: a killed broker forgets everything)."""

    def __init__(self, workdir: Path, *, pki: Pki | None = None, passwords: dict[str, str] | None = None) -> None:
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        self.pki = pki
        self.password_file: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "mosquitto.log"
        if passwords is not None:
            self.password_file = workdir / "passwords"
            self.set_passwords(passwords)

    def set_passwords(self, passwords: dict[str, str]) -> None:
        """Rewrite the password file (mosquitto_passwd); ``reload()`` makes a running broker read it."""
        assert MOSQUITTO_PASSWD is not None and self.password_file is not None
        self.password_file.unlink(missing_ok=True)
        self.password_file.touch()
        for user, password in passwords.items():
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(self.password_file), user, password], check=True,
                           capture_output=True)

    def conf(self) -> str:
        lines = []
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to `mosquitto` and cannot read pytest's 0700 tmp dirs
        lines += [f"listener {self.port} 127.0.0.1", "persistence false"]
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.pki is not None:
            lines += [f"cafile {self.pki.ca}", f"certfile {self.pki.server_cert}", f"keyfile {self.pki.server_key}",
                      "require_certificate true"]
        return "\n".join(lines) + "\n"

    async def start(self) -> None:
        path = self.workdir / "mosquitto.conf"
        path.write_text(self.conf())
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(path)], stdout=out, stderr=out)
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if loop.time() > end:
                    raise AssertionError("mosquitto did not listen:\n" + self.log.read_text()) from None
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
async def brokers(tmp_path: Path):
    """Make brokers with ``brokers(name, **kw)``; all are killed at the end."""
    made: list[Broker] = []

    async def make(name: str = "broker", **kw) -> Broker:
        broker = Broker(tmp_path / name, **kw)
        await broker.start()
        made.append(broker)
        return broker

    try:
        yield make
    finally:
        for broker in made:
            broker.stop()


# ---------------------------------------------------------------------- a subscriber


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self):
        return json.loads(self.payload)


@dataclass
class Collector:
    """Subscribes to ``{PREFIX}/#`` and keeps every message; reconnects when the broker
    goes away (``subscribed`` is set while it is subscribed)."""

    port: int
    username: str | None = None
    password: str | None = None
    tls: Callable[[], ssl.SSLContext] | None = None
    messages: list[Received] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    client: aiomqtt.Client | None = None
    _task: asyncio.Task | None = None

    async def start(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.subscribed.wait(), 10)
        return self

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, username=self.username, password=self.password,
                    tls_context=self.tls() if self.tls else None,
                ) as client:
                    await client.subscribe(f"{PREFIX}/#", qos=1)
                    self.client = client
                    self.subscribed.set()
                    async for m in client.messages:
                        payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                        self.messages.append(Received(m.topic.value, payload, m.retain))
            except aiomqtt.MqttError:
                pass
            self.subscribed.clear()
            self.client = None
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        await wait_until(lambda: self.client is not None)
        assert self.client is not None
        await self.client.publish(topic, payload, qos=1, retain=retain)

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.on(topic)]

    def events(self, lane: str) -> list[dict]:
        topic = f"{PREFIX}/site/events" if lane == "_site" else f"{PREFIX}/lanes/{lane}/events"
        return [m.json() for m in self.on(topic)]

    def seqs(self, lane: str) -> list[int]:
        return [e["seq"] for e in self.events(lane)]


@pytest.fixture
async def collectors():
    made: list[Collector] = []

    async def make(port: int, **kw) -> Collector:
        c = Collector(port, **kw)
        made.append(c)
        return await c.start()

    try:
        yield make
    finally:
        for c in made:
            await c.stop()


# ---------------------------------------------------------------------- the site


@dataclass
class Harness:
    sim: SimulatedSite
    site: Site
    link: MqttLink
    config_path: Path
    stop_event: asyncio.Event
    task: asyncio.Task

    def journal(self, lane: str, type_: str | None = None) -> list[dict]:
        return [e for e in self.site.journal.events(lane) if type_ is None or e["type"] == type_]

    def saved_cursors(self) -> dict[str, int]:
        """The cursors in the journal file (works after the site closed its journal)."""
        db = sqlite3.connect(self.site.journal.path)
        try:
            return dict(db.execute("SELECT lane_id, seq FROM mqtt_cursor").fetchall())
        finally:
            db.close()

    async def stop(self) -> None:
        """Stop the site (the link says offline and saves its cursors); keep the simulators."""
        self.stop_event.set()
        await asyncio.gather(self.task, return_exceptions=True)


def mqtt_yaml(port: int, *, username: str | None = None, password: str | None = None,
              pki: Pki | None = None, client_cert: bool = True) -> list[str]:
    """Extra lines of the config's mqtt section (after host, port, prefix, client_id)."""
    lines = []
    if username is not None:
        lines += [f"  username: {username}", f"  password: {password}"]
    if pki is not None:
        lines += ["  tls:", f"    ca_file: {pki.ca}"]
        if client_cert:
            lines += [f"    cert_file: {pki.client_cert}", f"    key_file: {pki.client_key}"]
    return lines


def write_config(sim: SimulatedSite, tmp_path: Path, port: int, extra: list[str] = (),
                 trust: dict | None = None) -> Path:
    path = sim.write_config(tmp_path / "site.yaml", journal_path=str(tmp_path / "gatectl.db"),
                            api_listen=f"127.0.0.1:{free_tcp_port()}", mqtt=f"127.0.0.1:{port}", trust=trust)
    text = path.read_text(encoding="utf-8")
    anchor = "  client_id: demo-lanepc\n"
    assert anchor in text
    path.write_text(text.replace(anchor, anchor + "".join(line + "\n" for line in extra)), encoding="utf-8")
    return path


class Sites:
    """``await sites(port, specs, extra=..., trust=..., **link_kw)``: a simulated site, its
    ``Site`` and an ``MqttLink`` wired in as the daemon wires it (``subscribe`` and
    ``add_task`` before ``run``), running. ``await sites.again(h)``: a new ``Site`` and
    link on the same simulators and journal (a daemon restart; stop ``h`` first)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.made: list[Harness] = []
        self.sims: list[SimulatedSite] = []

    async def __call__(self, port: int, specs: list[LaneSpec] = (BONDED,), *, extra: list[str] = (),
                       trust: dict | None = None, **link_kw) -> Harness:
        workdir = self.tmp_path / f"sim{len(self.sims)}"
        sim = fast_site(workdir, specs)
        await sim.start()
        self.sims.append(sim)
        return await self._run(sim, write_config(sim, workdir, port, extra, trust), link_kw)

    async def again(self, h: Harness, **link_kw) -> Harness:
        return await self._run(h.sim, h.config_path, link_kw)

    async def _run(self, sim: SimulatedSite, path: Path, link_kw: dict) -> Harness:
        site = Site(load_config(path))
        link = MqttLink(site, **{**LINK_KW, **link_kw})
        site.subscribe(link.on_events)
        site.add_task(link.run, "mqtt")
        stop = asyncio.Event()
        task = asyncio.create_task(site.run(stop))
        h = Harness(sim, site, link, path, stop, task)
        self.made.append(h)
        await wait_until(lambda: site.running or task.done())
        assert not task.done(), task.exception()
        return h

    async def close(self) -> None:
        for h in self.made:
            await h.stop()
        for sim in self.sims:
            await sim.stop()


@pytest.fixture
async def sites(tmp_path: Path):
    made = Sites(tmp_path)
    try:
        yield made
    finally:
        await made.close()
