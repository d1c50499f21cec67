"""Campaign 2: the park's MQTT broker dies under traffic (CONTRACT 5, R12).

A real Mosquitto (started by the test on a free port) is SIGKILLed while vehicles keep
coming on two lanes, stays away for a while (short: 10 s, long: 60 s) and comes back on the
same port. The daemon is ``gatectl run`` in its own process, whose config has an ``mqtt``
section, so it runs the MQTT link (``gatectl.mqtt.MqttLink``, default backoff).

The broker keeps nothing (``persistence false``), and a killed broker forgets the
subscriber: it is brought back accepting only the subscriber's account, and the daemon's
only once the subscriber is in again (SIGHUP rereads the password file), so the subscriber
sees what the daemon sends after the outage. The kill happens at a moment when the
subscriber holds every event journaled so far, so what it lacks afterwards was journaled
during the outage.

Checked: after the recovery every journaled event of each lane reached the subscriber,
the journal's own body, and each lane's first copies in seq order (at least once:
repeats allowed, never a gap, never a later event before an earlier one); the link logged
one ERROR for the outage and one INFO when it was back; the daemon never stopped and exits
0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path

import pytest
from fastsite import fast_site

from simulators.site import SITE_ID, SimulatedSite

from .harness import (
    TWO_BONDED_LANES,
    MOSQUITTO,
    MOSQUITTO_PASSWD,
    Broker,
    Collector,
    Daemon,
    Traffic,
    first_copies,
    read_events,
    seq_problems,
    wait_until,
    write_config,
)

LANES = TWO_BONDED_LANES
PREFIX = f"gatectl/{SITE_ID}"
PASSWORDS = {"collector": "c-pw", "gatectl": "g-pw"}

pytestmark = pytest.mark.skipif(MOSQUITTO is None or MOSQUITTO_PASSWD is None,
                                reason="mosquitto and mosquitto_passwd are needed (apt-get install mosquitto)")


def mqtt_config(sim: SimulatedSite, workdir: Path, port: int) -> Path:
    path = write_config(sim, workdir, mqtt=f"127.0.0.1:{port}")
    text = path.read_text(encoding="utf-8")
    anchor = "  client_id: demo-lanepc\n"
    assert anchor in text
    path.write_text(text.replace(anchor, anchor + "  username: gatectl\n  password: g-pw\n"), encoding="utf-8")
    return path


def last_seqs(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    db = sqlite3.connect(str(path), timeout=5)
    try:
        return dict(db.execute("SELECT lane_id, MAX(seq) FROM events GROUP BY lane_id").fetchall())
    except sqlite3.Error:
        return {}
    finally:
        db.close()


async def broker_campaign(tmp_path: Path, figures: dict, *, outage_s: float, seed: int) -> None:
    rng = random.Random(seed)
    broker = Broker(tmp_path / "broker", passwords=PASSWORDS)
    await broker.start()
    collector = Collector(broker.port, PREFIX, "collector", PASSWORDS["collector"])
    await collector.start()
    sim = fast_site(tmp_path / "site", LANES)
    await sim.start()
    daemon = Daemon(mqtt_config(sim, tmp_path, broker.port), tmp_path / "daemon.log")
    traffic = Traffic(sim, rng, wait_for_lift_s=3.0, release_share=0.8)
    lanes = [s.id for s in LANES]
    db_path = tmp_path / "gatectl.db"
    seqs: dict[str, int] = {}

    def has_all() -> bool:
        seqs.update(last_seqs(db_path))
        return all(set(collector.seqs(lane)) >= set(range(1, seqs.get(lane, 0) + 1)) for lane in lanes)

    def total() -> int:
        seqs.update(last_seqs(db_path))
        return sum(seqs.get(lane, 0) for lane in lanes)

    try:
        daemon.start()
        await daemon.wait_healthy()
        await wait_until(lambda: (f"{PREFIX}/status", b"online") in collector.messages, timeout=30,
                         what="the daemon online at the broker")
        traffic.start()
        # Kill when the subscriber holds everything journaled so far (no await in between).
        await wait_until(lambda: total() >= 20 and has_all(), timeout=60, what="traffic delivered")
        broker.kill()
        killed_at, at_kill = time.time(), total()
        await asyncio.sleep(outage_s)
        during = total() - at_kill
        back_at = time.time()
        broker.set_passwords({"collector": PASSWORDS["collector"]})
        await broker.start()
        await wait_until(collector.subscribed.is_set, timeout=30, what="subscriber back")
        broker.set_passwords(PASSWORDS)
        broker.reload()
        await wait_until(has_all, timeout=120, what="every event journaled during the outage delivered")
        caught_up_s = time.time() - back_at
        await wait_until(lambda: total() >= at_kill + during + 10, timeout=60, what="traffic after the outage")
        await traffic.stop()
        await wait_until(lambda: all(lane.barrier.position == "down" for lane in sim.lanes), timeout=30,
                         what="booms down")
        await wait_until(has_all, timeout=60, what="everything delivered at the end")
        assert daemon.alive, "the daemon stopped:\n" + daemon.tail()
        assert await daemon.terminate() == 0, daemon.tail()

        evs = read_events(db_path)
        problems = seq_problems(evs)
        delivered = duplicates = 0
        for lane in lanes:
            journal_events = [e for e in evs if e["lane_id"] == lane]
            got = collector.seqs(lane)
            delivered += len(set(got))
            duplicates += len(got) - len(set(got))
            if first_copies(got) != [e["seq"] for e in journal_events]:
                problems.append(f"{lane}: first copies out of order or missing")
            by_seq = {e["seq"]: e for e in collector.events(lane)}
            if [by_seq.get(e["seq"]) for e in journal_events] != journal_events:
                problems.append(f"{lane}: bodies differ from the journal")
        figures.update({
            "seed": seed,
            "outage_s": outage_s,
            "passages_driven": len(traffic.results),
            "events_journaled": len(evs),
            "events_journaled_during_outage": during,
            "events_delivered": delivered,
            "duplicates_delivered": duplicates,
            "caught_up_after_return_s": round(caught_up_s, 1),
            "broker_kills": 1,
        })
        log = daemon.log_events()
        downs = [e for e in log if e.get("event") == "mqtt link down" and e.get("level") == "error"]
        restored = [e for e in log if e.get("event") == "mqtt link restored"]
        figures["link_log"] = {"mqtt link down (error)": len(downs), "mqtt link restored": len(restored)}
        assert during >= 5, "too little traffic during the outage"
        assert (len(downs), len(restored)) == (1, 1), figures["link_log"]
        assert not problems, "\n".join(problems)
    finally:
        await traffic.cancel()
        daemon.cleanup()
        await collector.stop()
        broker.stop()
        await sim.stop()


@pytest.mark.timeout(180)
async def test_broker_outage_short(tmp_path: Path, figures: dict) -> None:
    """Mosquitto SIGKILLed for 10 s under traffic on two lanes."""
    await broker_campaign(tmp_path, figures, outage_s=10, seed=21)


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_broker_outage_long(tmp_path: Path, figures: dict) -> None:
    """Mosquitto SIGKILLed for 60 s under traffic (opt-in: --soak)."""
    await broker_campaign(tmp_path, figures, outage_s=60, seed=22)
