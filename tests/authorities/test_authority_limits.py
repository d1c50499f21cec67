"""Hostile authority answers (#13, S5): whatever comes back on the wire, the client raises
``AuthorityError`` with one of its reason codes, at once when the bytes say enough, and
never anything else (no RecursionError, no MemoryError, no waiting for the timeout).

Issue item 5 is the first case: a 200 answer nested 6 000 levels deep (under 64 KB)
escaped the http-json client as RecursionError; the lane held the vehicle only at its own
backstop, journaled as "no answer in time" although the answer came in 9 ms. Each case
runs over a real socket: the HTTP simulator's ``raw_answer`` switch, or a raw TCP peer
that writes exactly the bytes of the case.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatectl.authorities import AUTHORITY_ERROR_REASONS, AuthorityError, HttpJsonAuthority, PassRequest
from gatectl.authorities.gather_codec import (
    MAX_XML,
    DropReason,
    GatherDecoder,
    GatherFrame,
    GatherFrameError,
    GatherInfo,
    MessageType,
    _parse_xml,
    encode,
)
from gatectl.authorities.gather_xml import GatherXmlAuthority
from gatectl.authorities.http_json import parse_decision
from simulators.authority_http import HttpAuthoritySimulator

pytestmark = pytest.mark.timeout(20)

CST = timezone(timedelta(hours=8))
AREA = "5301000001"
# Long enough that "at once" and "after the timeout" are told apart by the reason alone:
# a malformed answer is never reported as a timeout.
TIMEOUT_MS = 5000


def make_request(request_id: str | None = None) -> PassRequest:
    return PassRequest(
        request_id=request_id or str(uuid.uuid4()), site_id="kmzb-jk", lane_id="B1-IN", channel_no="K001",
        direction="in", lane_kind="bonded", card_no="0100E2850E", plate=None, gross_weight_kg=31250.0,
        captured_at=datetime(2026, 11, 27, 9, 15, 2, tzinfo=CST),
    )


def answer(request_id: str, **fields) -> dict:
    return {"request_id": request_id, "decision": "release", "instruction_id": "CMD-1", "form_id": "HF1",
            "hint": "请通行", "declared_weight_kg": 31200.0} | fields


def deep(n: int) -> str:
    return "[" * n + "]" * n


def spliced(body: dict, key: str, raw: str) -> bytes:
    """``body`` as JSON with ``"key": raw`` added as written (no encoder would write it)."""
    return (json.dumps(body, ensure_ascii=False)[:-1] + f', "{key}": {raw}}}').encode()


# (name, body for a request id) -> every one of these is "malformed"
HTTP_CASES: list[tuple[str, Callable[[str], bytes]]] = [
    ("issue-6000-deep-array", lambda rid: deep(6000).encode()),
    ("6000-deep-inside-an-answer", lambda rid: spliced(answer(rid), "extra", deep(6000))),
    ("6000-deep-objects", lambda rid: spliced(answer(rid), "extra", '{"a":' * 6000 + "1" + "}" * 6000)),
    ("33-deep", lambda rid: spliced(answer(rid), "extra", deep(33))),
    ("over-64-KB", lambda rid: spliced(answer(rid), "extra", json.dumps("x" * 70_000))),
    ("duplicate-decision", lambda rid: spliced(answer(rid, decision="hold"), "decision", '"release"')),
    ("5000-digit-weight", lambda rid: spliced(answer(rid), "declared_weight_kg", "9" * 5000)),
    ("weight-overflows", lambda rid: spliced(answer(rid), "declared_weight_kg", "1e400")),
    ("weight-nan", lambda rid: spliced(answer(rid), "declared_weight_kg", "NaN")),
    ("weight-negative", lambda rid: json.dumps(answer(rid, declared_weight_kg=-1)).encode()),
    ("weight-huge", lambda rid: json.dumps(answer(rid, declared_weight_kg=1e12)).encode()),
    ("weight-a-string", lambda rid: json.dumps(answer(rid, declared_weight_kg="31200")).encode()),
    ("weight-true", lambda rid: json.dumps(answer(rid, declared_weight_kg=True)).encode()),
    ("instruction-id-long", lambda rid: json.dumps(answer(rid, instruction_id="C" * 129)).encode()),
    ("instruction-id-control", lambda rid: json.dumps(answer(rid, instruction_id="CMD\x00-1")).encode()),
    ("instruction-id-number", lambda rid: json.dumps(answer(rid, instruction_id=1)).encode()),
    ("form-id-long", lambda rid: json.dumps(answer(rid, form_id="H" * 65)).encode()),
    ("hint-long", lambda rid: json.dumps(answer(rid, hint="请" * 257), ensure_ascii=False).encode()),
    ("hint-an-object", lambda rid: json.dumps(answer(rid, hint={"zh": "请通行"})).encode()),
    ("decision-long", lambda rid: json.dumps(answer(rid, decision="release" * 10_000)).encode()),
    ("not-utf8", lambda rid: json.dumps(answer(rid, hint="请通行"), ensure_ascii=False).encode("gb18030")),
]


@pytest.fixture
async def sim() -> AsyncIterator[HttpAuthoritySimulator]:
    simulator = HttpAuthoritySimulator()
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.mark.parametrize(("name", "body"), HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
async def test_hostile_200_answers_are_malformed_at_once(sim: HttpAuthoritySimulator, name: str, body) -> None:
    """S5: over real HTTP, each hostile 200 answer is `malformed`, never a timeout."""
    sim.raw_answer = lambda request: body(request["request_id"])
    async with HttpJsonAuthority(sim.url, timeout_ms=TIMEOUT_MS) as client:
        with pytest.raises(AuthorityError) as info:
            await client.request(make_request())
    assert info.value.reason == "malformed", info.value
    assert len(info.value.detail) < 300  # details are journaled: never the answer itself


async def test_answers_within_the_limits_are_decisions(sim: HttpAuthoritySimulator) -> None:
    sim.raw_answer = lambda request: spliced(
        answer(request["request_id"], hint="请" * 256, instruction_id="C" * 128, form_id="H" * 64,
               declared_weight_kg=200_000), "vendor", deep(30))
    async with HttpJsonAuthority(sim.url, timeout_ms=TIMEOUT_MS) as client:
        decision = await client.request(make_request())
    assert decision.is_release and decision.instruction_id == "C" * 128 and decision.declared_weight_kg == 200_000


async def raw_peer(reply: Callable[[bytes], AsyncIterator[bytes]]) -> tuple[asyncio.Server, int]:
    """A TCP peer that reads the request, then writes whatever `reply(request)` yields."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.read(65536)
            async for chunk in reply(request):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def endless_body(request: bytes) -> AsyncIterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    while True:
        yield b"4000\r\n" + b"[" * 0x4000 + b"\r\n"
        await asyncio.sleep(0)


async def long_header(request: bytes) -> AsyncIterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\nX-Junk: " + b"a" * 200_000 + b"\r\n\r\n{}"


async def lying_length(request: bytes) -> AsyncIterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n" + b"{" * 70_000


@pytest.mark.parametrize("reply", [endless_body, long_header, lying_length])
async def test_hostile_http_framing_is_malformed(reply) -> None:
    """An endless chunked body, a 200 KB header, a Content-Length of 100 GB: refused on the
    bytes that arrived (the size cap, aiohttp's header limits), not after the timeout."""
    server, port = await raw_peer(reply)
    try:
        async with HttpJsonAuthority(f"http://127.0.0.1:{port}/", timeout_ms=TIMEOUT_MS) as client:
            with pytest.raises(AuthorityError) as info:
                await client.request(make_request())
        assert info.value.reason == "malformed", info.value
    finally:
        server.close()
        await server.wait_closed()


async def trickle(request: bytes) -> AsyncIterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    while True:
        yield b" "
        await asyncio.sleep(0.05)


async def test_a_trickled_answer_times_out() -> None:
    """Slow: one byte every 50 ms is bounded by timeout_ms for the whole exchange."""
    server, port = await raw_peer(trickle)
    try:
        async with HttpJsonAuthority(f"http://127.0.0.1:{port}/", timeout_ms=300) as client:
            with pytest.raises(AuthorityError) as info:
                await client.request(make_request())
        assert info.value.reason == "timeout"
    finally:
        server.close()
        await server.wait_closed()


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(["request_id", "decision", "instruction_id", "form_id", "hint",
                                                "declared_weight_kg", "x"]), JSONISH, max_size=7),
       raw=st.binary(max_size=200))
def test_any_answer_body_is_a_decision_or_an_authority_error(fields: dict, raw: bytes) -> None:
    """Fuzz parse_decision: JSON of any shape and raw bytes alike."""
    for body in (json.dumps(answer("rid") | fields).encode(), raw):
        try:
            decision = parse_decision(body, "rid")
        except AuthorityError as exc:
            assert exc.reason in AUTHORITY_ERROR_REASONS
        else:
            assert decision.request_id == "rid"
            assert decision.decision != "release" or decision.instruction_id


# -- gather-xml -----------------------------------------------------------------------------


def frame(info: GatherInfo, xml: str, msg_type: MessageType = MessageType.COMMAND_INFO) -> bytes:
    return encode(GatherFrame(msg_type, info.area_id, info.chnl_no, info.i_e_type, xml))


def command_xml(info: GatherInfo, inner: str = "", **fields: str) -> str:
    values = {"check_result": "00000000001002000000", "op_hint": "检查放行", "form_id": "HF530120261127000123"} | fields
    return (f'<COMMAND_INFO AREA_ID="{info.area_id}" CHNL_NO="{info.chnl_no}" I_E_TYPE="{info.i_e_type}" '
            f'SEQ_NO="{info.seq_no}"><CHECK_RESULT>{values["check_result"]}</CHECK_RESULT>'
            f'<OP_HINT>{values["op_hint"]}</OP_HINT><FORM_ID>{values["form_id"]}</FORM_ID>{inner}</COMMAND_INFO>')


LAUGHS = ('<!DOCTYPE COMMAND_INFO [<!ENTITY a "lol">' + "".join(
    f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9)) + "]>")

GATHER_CASES: list[tuple[str, Callable[[GatherInfo], bytes]]] = [
    ("nested-6000-deep", lambda i: frame(i, command_xml(i, "<X>" * 6000 + "</X>" * 6000))),
    ("nested-9-deep", lambda i: frame(i, command_xml(i, "<X>" * 8 + "</X>" * 8))),
    ("300-elements", lambda i: frame(i, command_xml(i, "<X/>" * 300))),
    ("many-attributes", lambda i: frame(i, command_xml(i).replace("<CHECK_RESULT>", "<CHECK_RESULT " + " ".join(
        f'a{n}="1"' for n in range(20)) + ">"))),
    ("billion-laughs", lambda i: frame(i, LAUGHS + command_xml(i, op_hint="&j;"))),
    ("external-entity", lambda i: frame(
        i, '<!DOCTYPE C [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + command_xml(i, op_hint="&e;"))),
    ("undefined-entity", lambda i: frame(i, command_xml(i, op_hint="&e;"))),
    ("hint-257", lambda i: frame(i, command_xml(i, op_hint="请" * 257))),
    ("form-id-65", lambda i: frame(i, command_xml(i, form_id="H" * 65))),
    ("check-result-65", lambda i: frame(i, command_xml(i, check_result="0" * 65))),
    ("seq-no-129", lambda i: frame(i, command_xml(i).replace(i.seq_no, "S" * 129))),
    ("not-gb18030", lambda i: frame(i, command_xml(i))[:-20] + b"\x81\x30" + frame(i, command_xml(i))[-18:]),
    ("length-field-4-GB", lambda i: b"\xe2\x5c\x4b\x89\xff\xff\xff\xff" + b"\x22" + b"\x00" * 100),
    ("length-fields-disagree", lambda i: (lambda f: f[:34] + (len(f) - 39).to_bytes(4, "big") + f[38:])(
        frame(i, command_xml(i)))),
    ("junk-without-head", lambda i: bytes(range(256)).replace(b"\xe2", b"") * 400),
]


async def gather_peer(reply: Callable[[GatherInfo], bytes]) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = GatherDecoder()
        try:
            while True:
                decoder.feed(await reader.read(65536))
                frames = list(decoder.frames())
                if frames:
                    writer.write(reply(GatherInfo.from_xml(frames[0].xml)))
                    await writer.drain()
                    await asyncio.sleep(0.2)  # let the client read before closing
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(("name", "reply"), GATHER_CASES, ids=[c[0] for c in GATHER_CASES])
async def test_hostile_gather_answers_are_malformed_at_once(name: str, reply) -> None:
    """S5: deep or huge XML, entities, over-long fields, lying length fields and junk:
    each `malformed`, from the bytes that came, not after the timeout."""
    server, port = await gather_peer(reply)
    try:
        async with GatherXmlAuthority("127.0.0.1", port, AREA, TIMEOUT_MS) as client:
            with pytest.raises(AuthorityError) as info:
                await client.request(make_request())
        assert info.value.reason == "malformed", info.value
        assert len(info.value.detail) < 300
    finally:
        server.close()
        await server.wait_closed()


async def test_gather_answers_within_the_limits_are_decisions() -> None:
    def reply(info: GatherInfo) -> bytes:
        return frame(info, '<?xml version="1.0" encoding="GB18030"?>' + command_xml(
            info, "<V><W><X><Y><Z>1</Z></Y></X></W></V>" + "<E/>" * 240, op_hint="请" * 256, form_id="H" * 64))

    server, port = await gather_peer(reply)
    try:
        async with GatherXmlAuthority("127.0.0.1", port, AREA, TIMEOUT_MS) as client:
            decision = await client.request(make_request())
        assert decision.is_release and decision.hint == "请" * 256
    finally:
        server.close()
        await server.wait_closed()


def test_the_decoder_drops_a_billion_laughs_without_expanding_it() -> None:
    """The codec alone: a DTD-carrying frame is counted as one XML drop, and the parser
    itself (behind the textual check) stops at the DTD, before any entity is declared."""
    info = GatherInfo(AREA, "K001", "I", str(uuid.uuid4()), "bonded", "0100E2850E")
    xml = LAUGHS + command_xml(info, op_hint="&j;")
    assert len(xml.encode("gb18030")) < MAX_XML
    decoder = GatherDecoder()
    decoder.feed(frame(info, xml))
    assert list(decoder.frames()) == [] and decoder.dropped == {DropReason.XML: 1}
    with pytest.raises(GatherFrameError, match="DTD"):
        _parse_xml(xml)
    with pytest.raises(GatherFrameError, match="nested more than 8"):
        _parse_xml("<A>" * 100_000 + "</A>" * 100_000)
