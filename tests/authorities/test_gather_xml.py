"""The ``gather-xml`` release authority (CONTRACT 3.2) against its simulator, over real sockets.

R3: a lane lifts only on a release instruction from its authority, so the adapter returns a
``release`` only when CHECK_RESULT matches a release code in the COMMAND_INFO for *this*
request, and the instruction is ``FORM_ID + SEQ_NO``.
S5: when the authority does not answer in time, fails, or answers anything that is not
exactly the matching COMMAND_INFO, the adapter raises ``AuthorityError`` and the lane holds.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone

import pytest

from gatectl.authorities import AuthorityError, Decision, PassRequest, ReleaseAuthority
from gatectl.authorities.gather_codec import (
    CommandInfo,
    GatherFrame,
    GatherInfo,
    MessageType,
    encode,
)
from gatectl.authorities.gather_xml import GatherXmlAuthority, command_to_decision, gather_info_for
from simulators.authority_gather import (
    CHECK_RESULTS,
    DEFAULT_HINTS,
    UNSCRIPTED_HINT,
    GatherAuthoritySimulator,
)

pytestmark = pytest.mark.timeout(10)

CST = timezone(timedelta(hours=8))
CARD = "0100E2850E"
AREA = "5301000001"
TIMEOUT_MS = 300


def make_request(
    card: str = CARD,
    direction: str = "in",
    request_id: str | None = None,
    lane_id: str = "B1-IN",
    channel_no: str = "K001",
    plate: str | None = None,
    gross_weight_kg: float | None = 31250.0,
) -> PassRequest:
    return PassRequest(
        request_id=request_id or str(uuid.uuid4()),
        site_id="kmzb-jk",
        lane_id=lane_id,
        channel_no=channel_no,
        direction=direction,  # type: ignore[arg-type]
        lane_kind="bonded",
        card_no=card,
        plate=plate,
        gross_weight_kg=gross_weight_kg,
        captured_at=datetime(2026, 11, 27, 9, 15, 2, tzinfo=CST),
    )


@pytest.fixture
async def sim() -> AsyncIterator[GatherAuthoritySimulator]:
    simulator = GatherAuthoritySimulator(area_id=AREA)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
async def authority(sim: GatherAuthoritySimulator) -> AsyncIterator[GatherXmlAuthority]:
    client = GatherXmlAuthority("127.0.0.1", sim.port, AREA, TIMEOUT_MS, ["^00"])
    try:
        yield client
    finally:
        await client.close()


async def expect_error(authority: GatherXmlAuthority, req: PassRequest | None = None) -> AuthorityError:
    with pytest.raises(AuthorityError) as info:
        await authority.request(req or make_request())
    return info.value


async def raw_authority(
    answer: Callable[[bytes], bytes | None],
) -> tuple[asyncio.Server, int]:
    """A peer on a real socket that reads one request frame and writes ``answer(request)``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readexactly(8)
        rest = await reader.readexactly(int.from_bytes(head[4:8], "big") - 8)
        reply = answer(head + rest)
        if reply is not None:
            writer.write(reply)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def with_raw_authority(
    answer: Callable[[bytes], bytes | None], check: Callable[[GatherXmlAuthority], Awaitable[None]]
) -> None:
    server, port = await raw_authority(answer)
    try:
        async with GatherXmlAuthority("127.0.0.1", port, AREA, TIMEOUT_MS) as client:
            await check(client)
    finally:
        server.close()
        await server.wait_closed()


def request_info(frame_bytes: bytes) -> GatherInfo:
    xml_len = int.from_bytes(frame_bytes[34:38], "big")
    return GatherInfo.from_xml(frame_bytes[38 : 38 + xml_len].decode("gb18030"))


def answer_to(info: GatherInfo, **changes: object) -> CommandInfo:
    values: dict[str, object] = {
        "area_id": info.area_id,
        "chnl_no": info.chnl_no,
        "i_e_type": info.i_e_type,
        "seq_no": info.seq_no,
        "check_result": CHECK_RESULTS["release"],
        "op_hint": "检查放行",
        "form_id": "HF530120261127000123",
    }
    return CommandInfo(**(values | changes))  # type: ignore[arg-type]


# -- decisions: R3 ---------------------------------------------------------------------------


async def test_r3_release_names_form_id_plus_seq_no(sim: GatherAuthoritySimulator, authority: GatherXmlAuthority) -> None:
    """R3: a release carries the instruction FORM_ID + SEQ_NO (CONTRACT 3.2), the form and OP_HINT."""
    sim.script(CARD, "release", form_id="HF530120261127000123")
    req = make_request()
    decision = await authority.request(req)
    assert decision == Decision(
        request_id=req.request_id,
        decision="release",
        instruction_id="HF530120261127000123" + req.request_id,
        form_id="HF530120261127000123",
        hint="检查放行",
        declared_weight_kg=None,
    )
    assert decision.is_release
    assert sim.answers[-1]["check_result"] == "00000000001002000000"


async def test_r3_generated_form_ids_and_fresh_instructions(
    sim: GatherAuthoritySimulator, authority: GatherXmlAuthority
) -> None:
    sim.script(CARD, "release")
    first = await authority.request(make_request())
    second = await authority.request(make_request())
    assert [first.form_id, second.form_id] == sim.issued_form_ids
    assert first.instruction_id != second.instruction_id


async def test_s1_same_form_twice_is_two_instructions(sim: GatherAuthoritySimulator, authority: GatherXmlAuthority) -> None:
    """S1: instruction id = FORM_ID + SEQ_NO, so one form released to two requests is two instructions.

    This is why the simulator has no ``reuse_instruction`` switch: a well-formed answer to a
    new request cannot repeat an earlier instruction id.
    """
    sim.script(CARD, "release", form_id="HF530120261127000123")
    first, second = make_request(), make_request()
    a, b = await authority.request(first), await authority.request(second)
    assert a.form_id == b.form_id == "HF530120261127000123"
    assert (a.instruction_id, b.instruction_id) == (
        "HF530120261127000123" + first.request_id,
        "HF530120261127000123" + second.request_id,
    )


@pytest.mark.parametrize("kind", ["hold", "inspect", "deny"])
async def test_r3_every_other_check_result_holds_with_its_hint(
    sim: GatherAuthoritySimulator, authority: GatherXmlAuthority, kind: str
) -> None:
    """R3: gather-xml knows only release codes; 01/02/03... hold, and OP_HINT says why."""
    sim.script(CARD, kind)
    req = make_request()
    decision = await authority.request(req)
    assert decision.request_id == req.request_id
    assert decision.decision == "hold"
    assert not decision.is_release
    assert decision.instruction_id is None and decision.form_id is None
    assert decision.hint == DEFAULT_HINTS[kind]
    assert sim.answers[-1]["check_result"].startswith({"hold": "01", "inspect": "02", "deny": "03"}[kind])


async def test_hold_keeps_a_form_id_but_names_no_instruction(
    sim: GatherAuthoritySimulator, authority: GatherXmlAuthority
) -> None:
    sim.script(CARD, "inspect", form_id="HF530120261127000124")
    decision = await authority.request(make_request())
    assert (decision.decision, decision.form_id, decision.instruction_id) == ("hold", "HF530120261127000124", None)


async def test_r3_unscripted_card_is_held(sim: GatherAuthoritySimulator, authority: GatherXmlAuthority) -> None:
    decision = await authority.request(make_request(card="FFFFFFFFFF"))
    assert (decision.decision, decision.hint, decision.instruction_id) == ("hold", UNSCRIPTED_HINT, None)


@pytest.mark.parametrize(
    ("codes", "check_result", "released"),
    [
        (["^00"], "00000000001002000000", True),
        (["^00"], "10000000001002000000", False),
        (["^00"], "X00", False),
        (["^00", "^9[0-9]"], "91000000000000000000", True),
        (["^00", "^9[0-9]"], "9X", False),
        (["1002"], "01000000001002000000", True),  # re.search: unanchored matches anywhere
        (["^00$"], "00000000001002000000", False),
    ],
)
async def test_r3_release_codes_are_regexes_searched_in_check_result(
    sim: GatherAuthoritySimulator, codes: list[str], check_result: str, released: bool
) -> None:
    sim.script(CARD, "release", check_result=check_result, form_id="HF1")
    async with GatherXmlAuthority("127.0.0.1", sim.port, AREA, TIMEOUT_MS, codes) as client:
        decision = await client.request(make_request())
        assert decision.is_release is released
        assert client.is_release(check_result) is released


# -- the request on the wire -------------------------------------------------------------------


async def test_gather_info_is_exactly_the_contract(sim: GatherAuthoritySimulator, authority: GatherXmlAuthority) -> None:
    req = make_request(plate="云A12345")
    await authority.request(req)
    assert sim.requests == [
        {
            "area_id": AREA,
            "chnl_no": "K001",
            "i_e_type": "I",
            "seq_no": req.request_id,
            "chnl_type": "bonded",
            "dr_ic_no": CARD,
            "gross_wt": 31250.0,
            "ve_name": "云A12345",
        }
    ]


@pytest.mark.parametrize(("direction", "wire"), [("in", "I"), ("out", "E")])
async def test_direction_maps_to_i_and_e(
    sim: GatherAuthoritySimulator, authority: GatherXmlAuthority, direction: str, wire: str
) -> None:
    sim.script(CARD, "release")
    decision = await authority.request(make_request(direction=direction))
    assert sim.requests[-1]["i_e_type"] == wire
    assert sim.answers[-1]["i_e_type"] == wire
    assert decision.is_release


async def test_no_plate_and_no_weight_are_sent_empty(sim: GatherAuthoritySimulator, authority: GatherXmlAuthority) -> None:
    await authority.request(make_request(plate=None, gross_weight_kg=None))
    assert sim.requests[-1]["ve_name"] is None and sim.requests[-1]["gross_wt"] is None


def test_request_frame_header_and_xml() -> None:
    req = make_request(direction="out", channel_no="K010", plate="云A12345", gross_weight_kg=31250.0)
    frame = gather_info_for(req, AREA).to_frame()
    wire = encode(frame)
    assert wire[8] == MessageType.GATHER_INFO
    assert wire[9:19] == AREA.encode() and wire[19:29] == b"K010      " and wire[29:30] == b"E"
    assert f'SEQ_NO="{req.request_id}"' in frame.xml and 'CHNL_TYPE="bonded"' in frame.xml
    assert "<GROSS_WT>31250</GROSS_WT>" in frame.xml


async def test_request_that_cannot_be_framed_is_refused_without_sending(sim: GatherAuthoritySimulator) -> None:
    """S5: a channel number the 10-byte field cannot hold holds the vehicle (config refuses it too)."""
    async with GatherXmlAuthority("127.0.0.1", sim.port, AREA, TIMEOUT_MS) as client:
        error = await expect_error(client, make_request(channel_no="K0010000001"))
    assert error.reason == "malformed" and "CHNL_NO" in error.detail
    assert sim.connections == 0


# -- the authority failing: S5 ---------------------------------------------------------------


async def test_s5_silent_authority_times_out(sim: GatherAuthoritySimulator, authority: GatherXmlAuthority) -> None:
    """S5: an authority that takes the request and never answers holds the vehicle."""
    sim.silent = True
    error = await expect_error(authority)
    assert error.reason == "timeout"
    assert len(sim.requests) == 1


async def test_s5_slow_answer_times_out(sim: GatherAuthoritySimulator, authority: GatherXmlAuthority) -> None:
    """S5: a release that arrives after timeout_ms never becomes a decision."""
    sim.script(CARD, "release", delay_s=2.0)
    assert (await expect_error(authority)).reason == "timeout"


async def test_s5_stopped_authority_refuses_connection(sim: GatherAuthoritySimulator, authority: GatherXmlAuthority) -> None:
    await sim.stop()
    assert (await expect_error(authority)).reason == "connection"


async def test_s5_authority_back_on_the_same_port(sim: GatherAuthoritySimulator, authority: GatherXmlAuthority) -> None:
    """S5 recovery: stop, start again on the same port, and the same client works."""
    sim.script(CARD, "release")
    port = sim.port
    await sim.stop()
    assert (await expect_error(authority)).reason == "connection"
    await sim.start()
    assert sim.port == port
    assert (await authority.request(make_request())).is_release


async def test_s5_dropped_connection(sim: GatherAuthoritySimulator, authority: GatherXmlAuthority) -> None:
    sim.drop = True
    error = await expect_error(authority)
    assert error.reason == "connection"
    assert len(sim.requests) == 1


async def test_s5_garbage_answer_is_malformed(sim: GatherAuthoritySimulator, authority: GatherXmlAuthority) -> None:
    sim.script(CARD, "release")
    sim.garbage = True
    error = await expect_error(authority)
    assert error.reason == "malformed"
    assert "head" in error.detail


async def test_s5_answer_for_another_seq_no_is_a_mismatch(
    sim: GatherAuthoritySimulator, authority: GatherXmlAuthority
) -> None:
    """S5/R3: a release for another request never lifts this vehicle; it is not skipped either."""
    sim.script(CARD, "release")
    sim.mismatch_seq = True
    req = make_request()
    error = await expect_error(authority, req)
    assert error.reason == "mismatch"
    assert error.request_id == req.request_id
    assert sim.answers[-1]["seq_no"] != req.request_id


@pytest.mark.parametrize(
    "override",
    [{"chnl_no": "K999"}, {"area_id": "5301999999"}, {"i_e_type": "E"}],
    ids=repr,
)
async def test_s5_answer_for_another_channel_area_or_direction_is_a_mismatch(
    sim: GatherAuthoritySimulator, authority: GatherXmlAuthority, override: dict[str, str]
) -> None:
    sim.script(CARD, "release")
    sim.answer_override = override
    assert (await expect_error(authority)).reason == "mismatch"


async def test_r3_release_without_form_id_is_malformed(sim: GatherAuthoritySimulator, authority: GatherXmlAuthority) -> None:
    """R3/S1: SEQ_NO alone would be a fresh instruction every time, beyond replay protection."""
    sim.script(CARD, "release")
    sim.answer_override = {"form_id": None}
    error = await expect_error(authority)
    assert error.reason == "malformed" and "FORM_ID" in error.detail


async def test_little_endian_client_and_authority(sim: GatherAuthoritySimulator) -> None:
    little = GatherAuthoritySimulator(area_id=AREA, byte_order="little")
    async with little:
        little.script(CARD, "release")
        async with GatherXmlAuthority("127.0.0.1", little.port, AREA, TIMEOUT_MS, byte_order="little") as client:
            req = make_request()
            decision = await client.request(req)
        assert decision.is_release and decision.instruction_id == little.issued_form_ids[-1] + req.request_id
        assert little.requests[-1]["seq_no"] == req.request_id


@pytest.mark.parametrize(("client_order", "sim_order"), [("big", "little"), ("little", "big")])
async def test_s5_byte_order_misconfigured_times_out(client_order: str, sim_order: str) -> None:
    """S5: an authority expecting the other byte order cannot read the request and stays silent.

    The simulator copies a real front-end: undecodable bytes get no answer, so the client's
    reason is ``timeout``; the simulator's decoder counts the frame as a bad length.
    """
    simulator = GatherAuthoritySimulator(area_id=AREA, byte_order=sim_order)  # type: ignore[arg-type]
    async with simulator:
        simulator.script(CARD, "release")
        async with GatherXmlAuthority(
            "127.0.0.1", simulator.port, AREA, TIMEOUT_MS, byte_order=client_order  # type: ignore[arg-type]
        ) as client:
            error = await expect_error(client)
        assert error.reason == "timeout"
        assert simulator.requests == [] and simulator.answers == []
        assert simulator.dropped["length"] >= 1


async def test_s5_answer_in_the_wrong_byte_order_is_malformed(
    sim: GatherAuthoritySimulator, authority: GatherXmlAuthority
) -> None:
    sim.script(CARD, "release")
    sim.wrong_byte_order = True
    error = await expect_error(authority)
    assert error.reason == "malformed" and "length" in error.detail


async def test_s5_request_for_another_area_gets_no_answer(sim: GatherAuthoritySimulator) -> None:
    async with GatherXmlAuthority("127.0.0.1", sim.port, "5301000002", TIMEOUT_MS) as client:
        assert (await expect_error(client)).reason == "timeout"
    assert sim.requests[-1]["area_id"] == "5301000002" and sim.answers == []


async def test_s5_first_frame_not_a_command_info_is_malformed() -> None:
    async def check(client: GatherXmlAuthority) -> None:
        assert (await expect_error(client)).reason == "malformed"

    await with_raw_authority(lambda request: request, check)  # echoes the GATHER_INFO back


async def test_s5_garbage_before_a_valid_answer_is_malformed() -> None:
    def answer(request: bytes) -> bytes:
        return b"\x00junk" + encode(answer_to(request_info(request)).to_frame())

    async def check(client: GatherXmlAuthority) -> None:
        assert (await expect_error(client)).reason == "malformed"

    await with_raw_authority(answer, check)


async def test_s5_answer_with_a_dtd_is_malformed() -> None:
    def answer(request: bytes) -> bytes:
        command = answer_to(request_info(request))
        xml = '<!DOCTYPE COMMAND_INFO [<!ENTITY x "00">]>' + command.to_xml().replace(
            CHECK_RESULTS["release"], "&x;"
        )
        return encode(GatherFrame(MessageType.COMMAND_INFO, command.area_id, command.chnl_no, "I", xml))

    async def check(client: GatherXmlAuthority) -> None:
        error = await expect_error(client)
        assert error.reason == "malformed" and "xml" in error.detail

    await with_raw_authority(answer, check)


async def test_s5_answer_cut_short_is_a_connection_error() -> None:
    def answer(request: bytes) -> bytes:
        return encode(answer_to(request_info(request)).to_frame())[:60]

    async def check(client: GatherXmlAuthority) -> None:
        error = await expect_error(client)
        assert error.reason == "connection" and "60 bytes" in error.detail

    await with_raw_authority(answer, check)


async def test_a_raw_peer_speaking_the_contract_is_understood() -> None:
    """The client relies on the contract, not on the simulator's quirks."""

    def answer(request: bytes) -> bytes:
        return encode(answer_to(request_info(request), check_result="00", op_hint="请通行").to_frame())

    async def check(client: GatherXmlAuthority) -> None:
        req = make_request()
        decision = await client.request(req)
        assert decision.is_release and decision.hint == "请通行"
        assert decision.instruction_id == "HF530120261127000123" + req.request_id

    await with_raw_authority(answer, check)


async def test_s5_closed_client_fails_closed(sim: GatherAuthoritySimulator) -> None:
    client = GatherXmlAuthority("127.0.0.1", sim.port, AREA, TIMEOUT_MS)
    sim.script(CARD, "release")
    assert (await client.request(make_request())).is_release
    await client.close()
    await client.close()
    assert (await expect_error(client)).reason == "connection"


async def test_s5_close_aborts_a_request_in_flight(sim: GatherAuthoritySimulator) -> None:
    client = GatherXmlAuthority("127.0.0.1", sim.port, AREA, 5000)
    sim.silent = True
    stuck = asyncio.create_task(client.request(make_request()))
    await sim.wait_for_requests(1)
    await client.close()
    with pytest.raises(AuthorityError) as info:
        await stuck
    assert info.value.reason == "connection"


# -- concurrency -----------------------------------------------------------------------------


async def test_several_lanes_ask_at_once(sim: GatherAuthoritySimulator, authority: GatherXmlAuthority) -> None:
    """One connection per request: each lane gets the answer to its own request."""
    cards = [f"00000000{i:02X}" for i in range(8)]
    for i, card in enumerate(cards):
        sim.script(card, "release" if i % 2 == 0 else "deny", delay_s=0.02 * (8 - i))
    reqs = [make_request(card=card, lane_id=f"B{i}-IN", channel_no=f"K{i:03d}") for i, card in enumerate(cards)]
    decisions = await asyncio.gather(*(authority.request(r) for r in reqs))
    for i, (req, decision) in enumerate(zip(reqs, decisions, strict=True)):
        assert decision.request_id == req.request_id
        assert decision.decision == ("release" if i % 2 == 0 else "hold")
    assert len({d.instruction_id for d in decisions if d.is_release}) == 4
    assert sim.connections == 8


async def test_one_silent_exchange_does_not_block_the_others(sim: GatherAuthoritySimulator) -> None:
    fast = GatherXmlAuthority("127.0.0.1", sim.port, AREA, 2000)
    slow = GatherXmlAuthority("127.0.0.1", sim.port, AREA, TIMEOUT_MS)
    try:
        sim.silent = True
        stuck = asyncio.create_task(slow.request(make_request()))
        await sim.wait_for_requests(1)
        sim.silent = False
        sim.script(CARD, "release")
        assert (await fast.request(make_request())).is_release
        with pytest.raises(AuthorityError) as info:
            await stuck
        assert info.value.reason == "timeout"
    finally:
        await fast.close()
        await slow.close()


# -- protocol surface ------------------------------------------------------------------------


async def test_is_a_release_authority(sim: GatherAuthoritySimulator, authority: GatherXmlAuthority) -> None:
    assert isinstance(authority, ReleaseAuthority)


async def test_confirm_is_a_no_op(sim: GatherAuthoritySimulator, authority: GatherXmlAuthority) -> None:
    """gather-xml has no confirmation message: confirm sends nothing and reports success."""
    passed_at = datetime(2026, 11, 27, 9, 15, 20, tzinfo=CST)
    assert await authority.confirm("req-1", "HF1req-1", "B1-IN", "passed", passed_at, 31250.0) is True
    assert sim.connections == 0


def test_from_config_follows_the_config_model() -> None:
    from gatectl.config.models import GatherXmlAuthority as GatherXmlConfig

    config = GatherXmlConfig(
        protocol="gather-xml", host="127.0.0.1", port=8481, area_id=AREA, timeout_ms=1500,
        release_codes=["^00", "^9"], byte_order="little",
    )
    client = GatherXmlAuthority.from_config(config)
    assert (client.host, client.port, client.area_id, client.timeout_ms) == ("127.0.0.1", 8481, AREA, 1500)
    assert (client.release_codes, client.byte_order) == (["^00", "^9"], "little")
    for code in ["00000000001002000000", "91", "01000000001002000000", "X00"]:
        assert client.is_release(code) == config.is_release(code)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout_ms": 0},
        {"area_id": "53010000011"},
        {"area_id": ""},
        {"byte_order": "middle"},
        {"release_codes": []},
        {"release_codes": ["("]},
        {"port": 0},
        {"port": 70000},
    ],
    ids=repr,
)
def test_constructor_refuses_bad_settings(kwargs: dict[str, object]) -> None:
    values: dict[str, object] = {"host": "127.0.0.1", "port": 8481, "area_id": AREA, "timeout_ms": 300} | kwargs
    with pytest.raises(ValueError):
        GatherXmlAuthority(**values)  # type: ignore[arg-type]


def test_command_to_decision_is_pure() -> None:
    import re

    req = make_request()
    info = gather_info_for(req, AREA)
    release = command_to_decision(answer_to(info), req, AREA, [re.compile("^00")])
    assert release.instruction_id == "HF530120261127000123" + req.request_id
    with pytest.raises(AuthorityError) as error:
        command_to_decision(answer_to(info, seq_no="other"), req, AREA, [re.compile("^00")])
    assert error.value.reason == "mismatch"


async def test_simulator_refuses_unknown_decisions(sim: GatherAuthoritySimulator) -> None:
    with pytest.raises(ValueError):
        sim.script(CARD, "maybe")
