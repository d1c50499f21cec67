"""Hostile authority answers through the running lane (#13; S5, R3, R5).

Issue item 5: a 200 answer nested 6 000 levels deep escaped the http-json client as a
RecursionError; the vehicle was held only by the core's backstop, journaled as "no answer
in time". Now the answer is ``malformed`` when it arrives: the passage closes held with
``authority_malformed``, nothing lifts, and the next vehicle, answered properly, passes.
The same for the gather-xml front end.
"""

from __future__ import annotations

import json

from gatectl.authorities.gather_codec import GatherFrame, GatherInfo, MessageType, encode
from simulators.site import Vehicle

from .conftest import Running, wait_until
from .test_gather_xml_e2e import gather_site  # noqa: F401 - a fixture

TRUCK = Vehicle("0100E2850E", "云A12345", 31250)
SECOND = Vehicle("06008E6D5D", "云A67890", 18800)
THIRD = Vehicle("3A00F1229B", "云A24680", 22000)


def closed(events: list[dict]) -> list[tuple[str, str | None]]:
    return [(e["outcome"], e.get("reason")) for e in events if e["type"] == "passage.closed"]


async def test_issue_deep_and_oversized_answers_hold_at_once_then_a_vehicle_passes(running: Running) -> None:
    auth = running.sim.authority
    lane = running.sim.lane("B1-IN")
    for card in (TRUCK.card, SECOND.card, THIRD.card):
        auth.script(card, "release")
    hostile = [
        lambda req: b"[" * 6000 + b"]" * 6000,  # the issue's answer
        lambda req: (json.dumps({"request_id": req["request_id"], "decision": "release", "instruction_id": "C1"})[:-1]
                     + ', "declared_weight_kg": ' + "9" * 5000 + "}").encode(),
    ]
    for n, (vehicle, body) in enumerate(zip((TRUCK, SECOND), hostile), 1):
        auth.raw_answer = body
        assert await lane.drive(vehicle, wait_for_lift_s=1.5) == "backed_out"
        await wait_until(lambda n=n: len(closed(running.events("B1-IN"))) == n)
    assert closed(running.events("B1-IN")) == [("held", "authority_malformed")] * 2
    assert lane.opens == 0
    assert running.alarms("B1-IN").count("authority_unreachable") == 2

    auth.raw_answer = None
    assert await lane.drive(THIRD) == "passed"
    await wait_until(lambda: len(closed(running.events("B1-IN"))) == 3)
    assert closed(running.events("B1-IN"))[-1][0] == "passed" and lane.opens == 1


async def test_deep_xml_from_the_gather_front_end_holds_at_once_then_a_vehicle_passes(gather_site) -> None:
    sim, gather, site = gather_site
    lane = sim.lane("E1-IN")
    gather.script(TRUCK.card, "release")
    gather.script(SECOND.card, "release")

    def deep_command(info: GatherInfo) -> bytes:
        xml = (f'<COMMAND_INFO AREA_ID="{gather.area_id}" CHNL_NO="{info.chnl_no}" I_E_TYPE="{info.i_e_type}" '
               f'SEQ_NO="{info.seq_no}"><CHECK_RESULT>00</CHECK_RESULT><FORM_ID>HF1</FORM_ID>'
               + "<X>" * 6000 + "</X>" * 6000 + "</COMMAND_INFO>")
        return encode(GatherFrame(MessageType.COMMAND_INFO, gather.area_id, info.chnl_no, info.i_e_type, xml))

    gather.raw_answer = deep_command
    assert await lane.drive(TRUCK, wait_for_lift_s=1.5) == "backed_out"
    await wait_until(lambda: len(closed(site.journal.events("E1-IN"))) == 1)
    gather.raw_answer = None
    assert await lane.drive(SECOND) == "passed"
    await wait_until(lambda: len(closed(site.journal.events("E1-IN"))) == 2)
    assert closed(site.journal.events("E1-IN")) == [("held", "authority_malformed"), ("passed", None)]
    assert lane.opens == 1
