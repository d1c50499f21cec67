"""The ``http-json`` release authority (CONTRACT 3.1) against its simulator, over real sockets.

R3: a lane lifts only on a release instruction from its authority, so the adapter returns a
``release`` only when the authority named an instruction for *this* request.
S5: when the authority does not answer in time, fails, or answers nonsense, the adapter
raises ``AuthorityError`` and the lane holds the vehicle.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest

from gatectl.authorities import (
    AUTHORITY_ERROR_REASONS,
    AuthorityError,
    Decision,
    HttpJsonAuthority,
    PassRequest,
    ReleaseAuthority,
)
from simulators.authority_http import DEFAULT_HINTS, MISSING, UNSCRIPTED_HINT, HttpAuthoritySimulator

pytestmark = pytest.mark.timeout(10)

CST = timezone(timedelta(hours=8))
CARD = "0100E2850E"
#: Long enough that a loaded test machine answers a loopback request well within it (a
#: status or garbage test that timed out would fail for the wrong reason), short enough
#: for the tests that wait it out; the slow answer below comes after it.
TIMEOUT_MS = 1500


def make_request(
    card: str = CARD,
    direction: str = "in",
    request_id: str | None = None,
    lane_id: str = "B1-IN",
    plate: str | None = None,
    gross_weight_kg: float | None = 31250.0,
) -> PassRequest:
    return PassRequest(
        request_id=request_id or str(uuid.uuid4()),
        site_id="kmzb-jk",
        lane_id=lane_id,
        channel_no="K001",
        direction=direction,  # type: ignore[arg-type]
        lane_kind="bonded",
        card_no=card,
        plate=plate,
        gross_weight_kg=gross_weight_kg,
        captured_at=datetime(2026, 11, 27, 9, 15, 2, tzinfo=CST),
    )


@pytest.fixture
async def sim() -> AsyncIterator[HttpAuthoritySimulator]:
    simulator = HttpAuthoritySimulator()
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
async def authority(sim: HttpAuthoritySimulator) -> AsyncIterator[HttpJsonAuthority]:
    client = HttpJsonAuthority(sim.url, timeout_ms=TIMEOUT_MS)
    try:
        yield client
    finally:
        await client.close()


async def expect_error(authority: HttpJsonAuthority, req: PassRequest | None = None) -> AuthorityError:
    with pytest.raises(AuthorityError) as info:
        await authority.request(req or make_request())
    return info.value


# -- round trips -------------------------------------------------------------------------


async def test_r3_release_round_trip_names_its_instruction(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority) -> None:
    """R3: a release answer carries the authority's instruction id, form and hint."""
    sim.script(CARD, "release", form_id="HF530120261127000123", declared_weight_kg=31200.0)
    req = make_request()
    decision = await authority.request(req)
    assert decision == Decision(
        request_id=req.request_id,
        decision="release",
        instruction_id=sim.issued_instruction_ids[-1],
        form_id="HF530120261127000123",
        hint="核放单已核放，请通行",
        declared_weight_kg=31200.0,
    )
    assert decision.is_release
    assert decision.instruction_id is not None and decision.instruction_id.startswith("CMD-")


async def test_r3_each_release_gets_a_fresh_instruction(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority) -> None:
    """R3/S1: the simulator issues one instruction per release answer."""
    sim.script(CARD, "release")
    first = await authority.request(make_request())
    second = await authority.request(make_request())
    assert first.instruction_id != second.instruction_id


@pytest.mark.parametrize("kind", ["hold", "inspect", "deny"])
async def test_r3_non_release_decisions_round_trip(
    sim: HttpAuthoritySimulator, authority: HttpJsonAuthority, kind: str
) -> None:
    """R3: hold, inspect and deny come back as such, with their Chinese hints and no instruction."""
    sim.script(CARD, kind)
    req = make_request()
    decision = await authority.request(req)
    assert decision.request_id == req.request_id
    assert decision.decision == kind
    assert not decision.is_release
    assert decision.instruction_id is None
    assert decision.hint == DEFAULT_HINTS[kind]


async def test_scripted_hint_and_explicit_instruction(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority) -> None:
    sim.script(CARD, "release", hint="检查放行", instruction_id="CMD-0001")
    decision = await authority.request(make_request())
    assert (decision.instruction_id, decision.hint) == ("CMD-0001", "检查放行")


async def test_r3_unscripted_card_is_held(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority) -> None:
    """R3: a card the authority knows nothing about is not released."""
    decision = await authority.request(make_request(card="FFFFFFFFFF"))
    assert decision.decision == "hold"
    assert decision.hint == UNSCRIPTED_HINT
    assert decision.instruction_id is None


# -- the request on the wire -----------------------------------------------------------


async def test_request_json_is_exactly_the_contract(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority) -> None:
    req = make_request(plate="云A12345")
    await authority.request(req)
    assert sim.requests == [
        {
            "request_id": req.request_id,
            "site_id": "kmzb-jk",
            "lane_id": "B1-IN",
            "channel_no": "K001",
            "direction": "I",
            "lane_kind": "bonded",
            "card_no": CARD,
            "plate": "云A12345",
            "gross_weight_kg": 31250.0,
            "captured_at": "2026-11-27T09:15:02+08:00",
        }
    ]
    assert isinstance(sim.requests[0]["gross_weight_kg"], float)
    assert datetime.fromisoformat(sim.requests[0]["captured_at"]) == req.captured_at


@pytest.mark.parametrize(("direction", "wire"), [("in", "I"), ("out", "E")])
async def test_direction_maps_to_i_and_e(
    sim: HttpAuthoritySimulator, authority: HttpJsonAuthority, direction: str, wire: str
) -> None:
    await authority.request(make_request(direction=direction))
    assert sim.requests[-1]["direction"] == wire


async def test_null_plate_and_weight_are_sent_as_null(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority) -> None:
    await authority.request(make_request(plate=None, gross_weight_kg=None))
    assert sim.requests[-1]["plate"] is None
    assert sim.requests[-1]["gross_weight_kg"] is None


async def test_integer_weight_is_sent_as_a_number(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority) -> None:
    await authority.request(make_request(gross_weight_kg=31250))
    assert sim.requests[-1]["gross_weight_kg"] == 31250.0


async def test_simulator_refuses_a_request_off_the_contract(sim: HttpAuthoritySimulator) -> None:
    body = {"request_id": "x", "card_no": CARD, "direction": "in"}
    async with aiohttp.ClientSession() as session:
        async with session.post(sim.url + "gate/v1/pass-requests", json=body) as resp:
            assert resp.status == 400
            assert "wrong keys" in (await resp.json())["error"]


# -- the authority failing: S5 ---------------------------------------------------------


async def test_s5_silent_authority_times_out(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority) -> None:
    """S5: an authority that accepts the request but never answers holds the vehicle."""
    sim.silent = True
    error = await expect_error(authority)
    assert error.reason == "timeout"
    assert len(sim.requests) == 1


async def test_s5_slow_answer_times_out(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority) -> None:
    """S5: a release that arrives after timeout_ms never becomes a decision."""
    sim.script(CARD, "release", delay_s=2.0)
    error = await expect_error(authority)
    assert error.reason == "timeout"


async def test_s5_stopped_authority_refuses_connection(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority) -> None:
    """S5: no authority listening holds the vehicle."""
    await sim.stop()
    error = await expect_error(authority)
    assert error.reason == "connection"


async def test_s5_connection_lost_after_stop_with_warm_session(
    sim: HttpAuthoritySimulator, authority: HttpJsonAuthority
) -> None:
    """S5: a pooled keep-alive connection killed by the authority going away is a connection error."""
    sim.script(CARD, "hold")
    await authority.request(make_request())
    await sim.stop()
    error = await expect_error(authority)
    assert error.reason == "connection"


async def test_s5_authority_back_after_outage(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority) -> None:
    """S5 recovery: the same client works again once the authority is back on its port."""
    sim.script(CARD, "release")
    await sim.stop()
    assert (await expect_error(authority)).reason == "connection"
    await sim.start()
    assert (await authority.request(make_request())).is_release


async def test_s5_connection_reset_is_a_connection_error(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority) -> None:
    sim.drop = True
    error = await expect_error(authority)
    assert error.reason == "connection"


@pytest.mark.parametrize("status", [500, 503, 404, 201])
async def test_s5_non_200_status(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority, status: int) -> None:
    """S5: only a 200 carries a decision."""
    sim.script(CARD, "release")
    sim.status_code = status
    error = await expect_error(authority)
    assert error.reason == "http_status"
    assert str(status) in error.detail


async def test_s5_garbage_answer_is_malformed(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority) -> None:
    sim.script(CARD, "release")
    sim.garbage = True
    error = await expect_error(authority)
    assert error.reason == "malformed"


@pytest.mark.parametrize(
    "patch",
    [
        {"decision": "maybe"},
        {"decision": None},
        {"decision": MISSING},
        {"decision": ["release"]},
        {"request_id": {"id": 1}},
        {"request_id": MISSING},
        {"hint": 42},
        {"declared_weight_kg": "31200"},
        {"declared_weight_kg": True},
        {"instruction_id": ["CMD-1"]},
    ],
    ids=repr,
)
async def test_s5_wrong_shaped_answer_is_malformed(
    sim: HttpAuthoritySimulator, authority: HttpJsonAuthority, patch: dict[str, object]
) -> None:
    sim.script(CARD, "release")
    sim.answer_patch = patch
    error = await expect_error(authority)
    assert error.reason == "malformed"


async def test_s5_answer_that_is_not_http_is_malformed() -> None:
    """S5: a peer on the authority's port that does not speak HTTP gives no decision."""

    async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"RELEASE CMD-1 \x00\xff\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(babble, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with HttpJsonAuthority(f"http://127.0.0.1:{port}/", timeout_ms=TIMEOUT_MS) as client:
            with pytest.raises(AuthorityError) as info:
                await client.request(make_request())
        assert info.value.reason == "malformed"
    finally:
        server.close()
        await server.wait_closed()


def test_s5_answer_that_is_not_an_object_is_malformed() -> None:
    from gatectl.authorities.http_json import parse_decision

    with pytest.raises(AuthorityError) as info:
        parse_decision(b'["release"]', "r1")
    assert info.value.reason == "malformed"
    with pytest.raises(AuthorityError) as info:
        parse_decision(b'{"request_id": "r1", "decision": "hold", "declared_weight_kg": NaN}', "r1")
    assert info.value.reason == "malformed"


async def test_s5_answer_for_another_request_is_a_mismatch(
    sim: HttpAuthoritySimulator, authority: HttpJsonAuthority
) -> None:
    """S5/R3: a release meant for another request never lifts this vehicle."""
    sim.script(CARD, "release")
    sim.mismatch_id = True
    req = make_request()
    error = await expect_error(authority, req)
    assert error.reason == "mismatch"
    assert error.request_id == req.request_id


async def test_r3_release_without_instruction_is_malformed(
    sim: HttpAuthoritySimulator, authority: HttpJsonAuthority
) -> None:
    """R3: a release must name its instruction, or it is no release at all."""
    sim.script(CARD, "release")
    sim.omit_instruction_id = True
    error = await expect_error(authority)
    assert error.reason == "malformed"
    sim.omit_instruction_id = False
    sim.answer_patch = {"instruction_id": ""}
    assert (await expect_error(authority)).reason == "malformed"


async def test_s1_reused_instruction_is_passed_through_for_the_core_to_refuse(
    sim: HttpAuthoritySimulator, authority: HttpJsonAuthority
) -> None:
    """S1: the adapter reports a replayed instruction id faithfully; the core and journal refuse it."""
    sim.script(CARD, "release")
    first = await authority.request(make_request())
    sim.reuse_instruction_id = True
    second = await authority.request(make_request())
    assert second.is_release
    assert second.instruction_id == first.instruction_id


async def test_s5_closed_client_fails_closed(sim: HttpAuthoritySimulator) -> None:
    client = HttpJsonAuthority(sim.url, timeout_ms=TIMEOUT_MS)
    sim.script(CARD, "release")
    assert (await client.request(make_request())).is_release
    await client.close()
    await client.close()
    with pytest.raises(AuthorityError) as info:
        await client.request(make_request())
    assert info.value.reason == "connection"


async def test_s5_invalid_url_is_a_connection_error() -> None:
    client = HttpJsonAuthority("not a url", timeout_ms=TIMEOUT_MS)
    try:
        with pytest.raises(AuthorityError) as info:
            await client.request(make_request())
        assert info.value.reason == "connection"
    finally:
        await client.close()


# -- concurrency, sessions -------------------------------------------------------------


async def test_several_lanes_ask_at_once(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority) -> None:
    """Each lane gets the answer to its own request, with its own instruction."""
    cards = [f"00000000{i:02X}" for i in range(8)]
    for i, card in enumerate(cards):
        sim.script(card, "release" if i % 2 == 0 else "inspect", delay_s=0.02 * (8 - i))
    reqs = [make_request(card=card, lane_id=f"B{i}-IN") for i, card in enumerate(cards)]
    decisions = await asyncio.gather(*(authority.request(r) for r in reqs))
    for i, (req, decision) in enumerate(zip(reqs, decisions, strict=True)):
        assert decision.request_id == req.request_id
        assert decision.decision == ("release" if i % 2 == 0 else "inspect")
    instructions = [d.instruction_id for d in decisions if d.is_release]
    assert len(instructions) == 4 and len(set(instructions)) == 4
    assert len(sim.requests) == 8


async def test_one_silent_lane_does_not_block_the_others(sim: HttpAuthoritySimulator) -> None:
    """S5 per lane: a request stuck on a silent authority times out while others finished."""
    fast = HttpJsonAuthority(sim.url, timeout_ms=2000)
    slow = HttpJsonAuthority(sim.url, timeout_ms=TIMEOUT_MS)
    try:
        sim.silent = True
        stuck = asyncio.create_task(slow.request(make_request()))
        await sim.wait_for_requests(1)
        sim.silent = False
        sim.script(CARD, "deny")
        assert (await fast.request(make_request())).decision == "deny"
        with pytest.raises(AuthorityError) as info:
            await stuck
        assert info.value.reason == "timeout"
    finally:
        await fast.close()
        await slow.close()


async def test_shared_session_is_left_open(sim: HttpAuthoritySimulator) -> None:
    async with aiohttp.ClientSession() as session:
        client = HttpJsonAuthority(sim.url.rstrip("/"), timeout_ms=TIMEOUT_MS, session=session)
        assert client.url == sim.url
        sim.script(CARD, "hold")
        assert (await client.request(make_request())).decision == "hold"
        await client.close()
        assert not session.closed


async def test_is_a_release_authority(sim: HttpAuthoritySimulator) -> None:
    async with HttpJsonAuthority(sim.url, timeout_ms=TIMEOUT_MS) as client:
        assert isinstance(client, ReleaseAuthority)


# -- confirmations ---------------------------------------------------------------------


async def test_confirmation_is_recorded(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority) -> None:
    passed_at = datetime(2026, 11, 27, 9, 15, 20, tzinfo=CST)
    assert await authority.confirm("req-1", "CMD-000001", "B1-IN", "passed", passed_at, 31250.0) is True
    assert sim.confirmations == [
        {
            "request_id": "req-1",
            "instruction_id": "CMD-000001",
            "lane_id": "B1-IN",
            "result": "passed",
            "passed_at": "2026-11-27T09:15:20+08:00",
            "gross_weight_kg": 31250.0,
        }
    ]


async def test_failed_confirmation_raises(sim: HttpAuthoritySimulator, authority: HttpJsonAuthority) -> None:
    sim.fail_confirmations = True
    passed_at = datetime(2026, 11, 27, 9, 15, 20, tzinfo=CST)
    with pytest.raises(AuthorityError) as info:
        await authority.confirm("req-1", "CMD-000001", "B1-IN", "not_passed", passed_at, None)
    assert info.value.reason == "http_status"
    assert sim.confirmations == []
    assert len(sim.confirmation_attempts) == 1
    sim.fail_confirmations = False
    assert await authority.confirm("req-1", "CMD-000001", "B1-IN", "not_passed", passed_at, None)
    assert sim.confirmations[0]["result"] == "not_passed"


async def test_confirmation_to_stopped_authority_is_a_connection_error(
    sim: HttpAuthoritySimulator, authority: HttpJsonAuthority
) -> None:
    await sim.stop()
    with pytest.raises(AuthorityError) as info:
        await authority.confirm("req-1", "CMD-1", "B1-IN", "passed", datetime.now(CST), None)
    assert info.value.reason == "connection"


# -- value types -----------------------------------------------------------------------


def test_pass_request_needs_an_offset_and_a_direction() -> None:
    with pytest.raises(ValueError):
        PassRequest("r", "s", "l", "K001", "in", "bonded", CARD, None, None, datetime(2026, 11, 27, 9, 0))
    with pytest.raises(ValueError):
        PassRequest("r", "s", "l", "K001", "I", "bonded", CARD, None, None, datetime.now(CST))  # type: ignore[arg-type]


def test_authority_error_reasons() -> None:
    assert AUTHORITY_ERROR_REASONS == {"timeout", "connection", "http_status", "malformed", "mismatch"}
    error = AuthorityError("timeout", "no answer in 300 ms")
    assert (error.reason, error.detail) == ("timeout", "no answer in 300 ms")
    assert "no answer" in str(error)
    with pytest.raises(ValueError):
        AuthorityError("nope", "x")  # type: ignore[arg-type]


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HttpJsonAuthority("http://127.0.0.1:1/", timeout_ms=0)


def test_request_body_serialises_chinese_as_utf8() -> None:
    from gatectl.authorities.http_json import pass_request_body

    body = pass_request_body(make_request(plate="云A12345"))
    assert json.loads(json.dumps(body, ensure_ascii=False).encode("utf-8"))["plate"] == "云A12345"
