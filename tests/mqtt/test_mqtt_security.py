"""MQTT security (DESIGN 5): TLS with client certificates and user name / password,
each against a Mosquitto that requires it; a link without what the broker requires
stays out, says so once (ERROR), and never announces itself."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from .conftest import PREFIX, make_pki, mqtt_yaml, wait_until
from journaling import record


async def test_tls_with_client_certificates(tmp_path: Path, brokers, collectors, sites) -> None:
    pki = make_pki(tmp_path / "pki")
    broker = await brokers(pki=pki)
    col = await collectors(broker.port, tls=pki.client_context)
    with capture_logs() as logs:
        # (timeout: aiomqtt waits that long for a CONNACK the broker will never send)
        without_cert = await sites(broker.port, extra=mqtt_yaml(broker.port, pki=pki, client_cert=False), timeout=2)
        h = await sites(broker.port, extra=mqtt_yaml(broker.port, pki=pki))
        await wait_until(lambda: col.payloads(f"{PREFIX}/status") == [b"online"])
        await wait_until(lambda: col.on(f"{PREFIX}/lanes/B1-IN/state") != [])
        record(h.site, "_site", "note.recorded", {"text": "TLS"})
        await wait_until(lambda: [e["type"] for e in col.events("_site")] == ["note.recorded"])
        await wait_until(lambda: without_cert.link.outages == 1)
    assert h.link.connected and h.link.outages == 0
    assert without_cert.link.connects == 0
    down = [e for e in logs if e["event"] == "mqtt link down"]
    assert len(down) == 1 and down[0]["log_level"] == "error"
    # aiomqtt only says the CONNACK never came; the TLS alert behind it is in the detail.
    assert "certificate" in (down[0]["detail"] or "").lower(), down


async def test_username_and_password(brokers, collectors, sites) -> None:
    broker = await brokers(passwords={"lanepc-01": "s3cret-密码", "reader": "r"})
    col = await collectors(broker.port, username="reader", password="r")
    with capture_logs() as logs:
        wrong = await sites(broker.port, extra=mqtt_yaml(broker.port, username="lanepc-01", password="wrong"))
        await wait_until(lambda: wrong.link.outages == 1)
        h = await sites(broker.port, extra=mqtt_yaml(broker.port, username="lanepc-01", password="s3cret-密码"))
        await wait_until(lambda: col.payloads(f"{PREFIX}/status") == [b"online"])
        await wait_until(lambda: col.on(f"{PREFIX}/lanes/B1-IN/state") != [])
    assert h.link.connected and wrong.link.connects == 0
    down = [e for e in logs if e["event"] == "mqtt link down"]
    assert len(down) == 1 and "authori" in down[0]["error"].lower(), down
