"""Fast checks without services: the zone config's errors, users and roles, replay
requests on the lane side (CONTRACT 8, 9)."""

from __future__ import annotations

import json

import pytest

from gatectl.central.config import parse_zone_config
from gatectl.config import ConfigError
from gatectl.replay import MAX_EVENTS, ReplayRefused, Replayer, parse_request
from gatectl.users import Users, UserConfig, token_sha256

GOOD = """
zone: {id: kmzb, name: 昆明综合保税区经开片区}
database: {url: "postgresql://gatectl:x@127.0.0.1:5432/gatectl"}
mqtt: {host: 127.0.0.1, prefixes: ["gatectl/+"], shared_group: central}
users:
  - {name: 海关监控中心, role: customs, token_sha256: "%s"}
""" % token_sha256("t1")


def test_zone_config_defaults_and_every_problem_with_its_line():
    config = parse_zone_config(GOOD)
    assert config.mqtt.zone_topic_prefix == "gatectl-zone/kmzb" and config.http.listen == "127.0.0.1:8490"
    bad = GOOD.replace("shared_group: central", "shared_group: central, prefix: x").replace(
        "role: customs", "role: boss").replace('"gatectl/+"', '"gatectl/#"')
    with pytest.raises(ConfigError) as err:
        parse_zone_config(bad, filename="zone.yaml")
    text = str(err.value)
    assert "zone.yaml:4 mqtt.prefix: unknown key 'prefix'; did you mean 'prefixes'?" in text
    assert "zone.yaml:4 mqtt.prefixes" in text and "zone.yaml:6 users[0].role" in text


def test_two_users_of_one_token_are_refused_by_name():
    """A shared token would not say who acted: the zone config names both users."""
    twice = GOOD + '  - {name: 园区管委会, role: park, token_sha256: "%s"}\n' % token_sha256("t1")
    with pytest.raises(ConfigError) as err:
        parse_zone_config(twice, filename="zone.yaml")
    assert "users 海关监控中心 and 园区管委会 share one token" in str(err.value)


def test_users_roles_401_403():
    users = Users.of([UserConfig(name="海关", role="customs", token_sha256=token_sha256("t1")),
                      UserConfig(name="保安", role="guard", token_sha256=token_sha256("t2"))])
    assert users.authenticate(None).status == 401
    assert users.authenticate("Bearer nope").status == 401
    assert users.authenticate("Bearer " + "x" * 10_000).status == 401
    assert users.authenticate("Bearer t1").user.name == "海关"
    assert users.require("Bearer t2", {"customs"}).status == 403
    assert users.require("Bearer t1", {"customs"}).ok
    with pytest.raises(ValueError):
        Users([("a", "customs", token_sha256("same")), ("b", "park", token_sha256("same"))])


def test_replay_requests_are_checked_and_bounded():
    """CONTRACT 8: at most 10 000 events a request; junk refused and counted, not queued."""
    assert parse_request(b'{"lane_id": "B1-IN", "from_seq": 5, "to_seq": 100000}', ["B1-IN"]).to_seq == \
        5 + MAX_EVENTS - 1
    for raw, reason in ((b"nope", "malformed"), (b"[]", "malformed"),
                        (b'{"lane_id": "X", "from_seq": 1, "to_seq": 2}', "unknown_lane"),
                        (b'{"lane_id": "B1-IN", "from_seq": 0, "to_seq": 2}', "invalid"),
                        (b'{"lane_id": "B1-IN", "from_seq": 3, "to_seq": 2}', "invalid"),
                        (b'{"lane_id": "B1-IN", "from_seq": true, "to_seq": 2}', "invalid"),
                        (b'{"lane_id": "B1-IN", "from_seq": 1, "to_seq": 2, "x": 1}', "malformed"),
                        (b"{" + b" " * 5000 + b"}", "too_large")):
        with pytest.raises(ReplayRefused) as err:
            parse_request(raw, ["B1-IN"])
        assert err.value.reason == reason


def test_replayer_queues_one_lane_at_a_time_and_refuses_beyond_its_queue():
    r = Replayer("/nonexistent.db", ["B1-IN"], lambda lane: f"p/lanes/{lane}/events")
    for i in range(20):
        r.submit(json.dumps({"lane_id": "B1-IN", "from_seq": i + 1, "to_seq": i + 1}).encode())
    assert r.pending() == 16 and r.counters["refused:busy"] == 4
    r.submit(b'{"lane_id": "B1-IN", "from_seq": 1, "to_seq": 1}')
    assert r.pending() == 16 and r.counters["duplicate"] == 1
    assert r.submit(b"junk") is None and r.counters["refused:malformed"] == 1
