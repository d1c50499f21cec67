"""``GET /metrics`` on a real Site driven through the simulators: what an ops engineer's
Prometheus sees after real passages, refusals and a device fault."""

from __future__ import annotations

import asyncio

from datetime import datetime

from e2e.conftest import wait_until
from gatectl.approvals import sign
from gatectl import events as ev
from gatectl.metrics import OTHER, Metrics
from simulators.site import Vehicle

from .conftest import CUSTOMS, OpsSite, Scrape, approval

LANE = "B1-IN"
TRUCK = Vehicle("0100E2850E", "云A12345", 31250)
HELD = Vehicle("06008E6D5D", "云A67890", 18800)


def io_module(ops: OpsSite) -> str:
    (name,) = ops.site.io.modules
    return name


async def test_released_vehicle_counted_with_its_lift_latency_and_healthy_devices(ops_site: OpsSite) -> None:
    """A released truck: one passage ``passed``, one lift by release instruction, one latency
    observation (the answer in to the coil on: at least the journal's decided → lifted gap,
    which is the part of it inside the lane); devices healthy; lane idle."""
    ops = ops_site
    ops.sim.authority.script(TRUCK.card, "release")
    lane = ops.sim.lane(LANE)
    assert await lane.drive(TRUCK) == "passed"
    await wait_until(lambda: len(ops.events(LANE, "passage.closed")) == 1)
    await wait_until(lambda: lane.barrier.position == "down" and ops.site.lanes[LANE].core.state.value == "idle")

    seq_before = ops.site.journal.last_seq(LANE)  # a limit switch may still report as the scrape runs
    m = await ops.scrape()
    assert m.content_type.startswith("text/plain; version=0.0.4")
    assert m.value("gatectl_passages_total", lane=LANE, outcome="passed") == 1
    assert m.value("gatectl_passages_total", lane=LANE, outcome="held") == 0
    assert m.value("gatectl_barrier_lifts_total", lane=LANE, authorisation="release_instruction") == 1
    assert m.value("gatectl_barrier_lifts_total", lane=LANE, authorisation="approval") == 0
    assert m.value("gatectl_release_decisions_total", lane=LANE, source="authority", decision="release") == 1

    # Decision latency: one observation, spanning the gap the journal shows between the two events.
    decided = datetime.fromisoformat(ops.events(LANE, "release.decided")[0]["ts"])
    lifted = datetime.fromisoformat(ops.events(LANE, "barrier.lifted")[0]["ts"])
    assert m.value("gatectl_decision_latency_seconds_count", lane=LANE, source="authority") == 1
    assert m.value("gatectl_decision_latency_seconds_sum", lane=LANE, source="authority") >= (
        (lifted - decided).total_seconds()
    )
    assert m.value("gatectl_decision_latency_seconds_bucket", lane=LANE, source="authority", le="5.0") == 1
    assert m.value("gatectl_decision_latency_seconds_bucket", lane=LANE, source="authority", le="+Inf") == 1

    # Scrape-time gauges: devices healthy, counters moving, the lane idle (one-hot).
    module = io_module(ops)
    for device in ("card_reader", "weighbridge", module):
        assert m.value("gatectl_device_health", lane=LANE, device=device) == 0, device
    assert m.value("gatectl_io_module_health", module=module) == 0
    assert m.value("gatectl_io_module_polls_total", module=module) > 0
    assert m.value("gatectl_io_module_timeouts_total", module=module) == 0
    assert m.value("gatectl_device_frames_total", lane=LANE, device="weighbridge") > 0
    assert m.value("gatectl_device_frames_total", lane=LANE, device="card_reader") >= 1
    states = {lab["state"]: v for lab, v in m.samples("gatectl_lane_state") if lab["lane"] == LANE}
    assert states["idle"] == 1 and sum(states.values()) == 1 and len(states) == 9
    assert m.value("gatectl_lane_faults_open", lane=LANE) == 0
    assert m.value("gatectl_site_ready") == 1
    assert m.value("gatectl_lane_info", lane=LANE, kind="bonded", direction="in") == 1
    (target,) = ops.site.outbox
    assert m.value("gatectl_outbox_pending", target=target) is not None
    assert seq_before <= m.value("gatectl_journal_seq", lane=LANE) <= ops.site.journal.last_seq(LANE)
    assert m.value("process_resident_memory_bytes") > 0

    # Bounded labels: no card, plate or id of any kind is a label value.
    ids = {TRUCK.card, TRUCK.plate}
    for body in ops.site.journal.events(LANE):
        ids |= {body["event_id"], body.get("passage_id"), body.get("request_id"), body.get("instruction_id")}
    assert not (ids - {None}) & m.label_values()

    # OpenMetrics for a scraper that asks for it.
    om = await ops.scrape(accept="application/openmetrics-text; version=1.0.0")
    assert om.content_type.startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")


async def test_holds_refusals_approval_lift_and_device_fault(ops_site: OpsSite) -> None:
    """A held vehicle, a manual lift with no approval, an unsigned then a valid approval and
    its lift, then the card reader unplugged: each counted under its own bounded label."""
    ops = ops_site
    lane = ops.sim.lane(LANE)
    ops.sim.authority.script(HELD.card, "hold")
    assert await lane.drive(HELD, wait_for_lift_s=1.0) == "backed_out"
    await wait_until(lambda: len(ops.events(LANE, "passage.closed")) == 1)

    core = ops.site.lanes[LANE].core
    await lane.press("manual_lift")
    await wait_until(lambda: ops.events(LANE, "manual_lift.refused") != [])
    # The next press must come after the lane saw this one released (a poll apart).
    await wait_until(lambda: not core.inputs["manual_lift_button"])

    status, body = await ops.post("/api/v1/approvals", approval(lane=LANE, approval_id="AP-OPS-U"))
    assert status == 422 and body["reason"] == "unsigned"
    status, body = await ops.post("/api/v1/approvals", sign(approval(lane=LANE, approval_id="AP-OPS-1"), "customs",
                                                            CUSTOMS))
    assert status == 200, body
    lane.set_loop("arrival", True)
    await lane.press("manual_lift")
    await wait_until(lambda: lane.barrier.position == "up")

    # The counters follow the journal's subscribers, which may trail the coil by a group.
    m = await ops.scrape()
    for _ in range(100):
        if m.value("gatectl_barrier_lifts_total", lane=LANE, authorisation="approval") == 1:
            break
        await asyncio.sleep(0.1)
        m = await ops.scrape()
    assert m.value("gatectl_passages_total", lane=LANE, outcome="held") == 1
    assert m.value("gatectl_release_decisions_total", lane=LANE, source="authority", decision="hold") == 1
    assert m.value("gatectl_manual_lifts_refused_total", lane=LANE, reason="no_valid_approval") == 1
    assert m.value("gatectl_approvals_refused_total", lane=LANE, reason="unsigned") == 1
    assert m.value("gatectl_approvals_accepted_total", lane=LANE, trigger="panel") == 1
    assert m.value("gatectl_approval_lifts_total", lane=LANE, trigger="panel") == 1
    assert m.value("gatectl_barrier_lifts_total", lane=LANE, authorisation="approval") == 1
    assert m.value("gatectl_barrier_lifts_total", lane=LANE, authorisation="release_instruction") == 0
    # A lift under an approval follows no release decision: no latency observation.
    assert m.value("gatectl_decision_latency_seconds_count", lane=LANE, source="authority") is None
    assert m.value("gatectl_alarms_total", lane=LANE, alarm="device_fault") is None

    lane.reader.unplug()
    await wait_until(lambda: "card_reader" in core.faults)
    m = await ops.scrape()
    for _ in range(100):
        if m.value("gatectl_alarms_total", lane=LANE, alarm="device_fault") == 1:
            break
        await asyncio.sleep(0.1)
        m = await ops.scrape()
    assert m.value("gatectl_device_health", lane=LANE, device="card_reader") == 2
    assert m.value("gatectl_device_health", lane=LANE, device="weighbridge") == 0
    assert m.value("gatectl_lane_fault", lane=LANE, device="card_reader") == 1
    assert m.value("gatectl_lane_faults_open", lane=LANE) == 1
    assert m.value("gatectl_alarms_total", lane=LANE, alarm="device_fault") == 1
    assert m.value("gatectl_device_open_failures_total", lane=LANE, device="card_reader") is not None


async def test_labels_stay_bounded_and_bad_events_never_raise(ops_site: OpsSite) -> None:
    """Values outside the known sets count as ``other``; a malformed event is counted as a
    metrics error instead of breaking anything; a second Metrics on the same process has
    its own registry."""
    ops = ops_site
    mine = Metrics(ops.site, subscribe=False, process=False)
    ts = "2026-01-01T08:00:00+08:00"

    def stamped(lane: str, event: ev.Event) -> ev.Stamped:
        return ev.Stamped("e", 1, "s", lane, ts, event)

    mine.on_events([
        stamped(LANE, ev.PassageClosed(outcome="0100E2850E")),
        ev.decode({"event_id": "e", "seq": 2, "site_id": "s", "lane_id": "云A12345", "type": "alarm.raised",
                   "ts": ts, "alarm": "0100E2850E"}),
        stamped(LANE, ev.BarrierLifted(authorisation="not-an-authorisation")),  # type: ignore[arg-type]
        stamped(LANE, ev.ManualLiftRefused(reason="AP-20261127-0001")),
    ])
    for i in range(50):
        mine.on_decision(LANE, "authority", 0.002)
        mine.on_decision("云A12345", f"P{i}", 0.002)

    text = mine.exposition().decode()
    m = Scrape("", text)
    assert m.value("gatectl_passages_total", lane=LANE, outcome=OTHER) == 1
    assert m.value("gatectl_alarms_total", lane=OTHER, alarm=OTHER) == 1
    assert m.value("gatectl_manual_lifts_refused_total", lane=LANE, reason=OTHER) == 1
    assert m.value("gatectl_metrics_errors_total") == 1
    assert "0100E2850E" not in text and "AP-20261127-0001" not in text and "P1000" not in text
    # The site's own metrics saw none of this.
    site_m = await ops.scrape()
    assert site_m.value("gatectl_passages_total", lane=LANE, outcome=OTHER) is None
    assert site_m.value("gatectl_metrics_errors_total") == 0


def test_process_metrics_without_proc_stat(tmp_path) -> None:
    """Under the unit's ProcSubset=pid only /proc/<pid> is visible, not /proc/stat: the
    process metrics (memory, CPU, fds) are still there."""
    from prometheus_client import CollectorRegistry, generate_latest

    from gatectl.metrics import _ProcessCollector

    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "self").symlink_to("/proc/self")  # and no "stat"
    registry = CollectorRegistry()
    _ProcessCollector(proc=str(proc), registry=registry)
    m = Scrape("", generate_latest(registry).decode())
    assert m.value("process_resident_memory_bytes") > 0
    assert m.value("process_open_fds") > 0
    start = m.value("process_start_time_seconds")
    assert start is not None and start <= datetime.now().timestamp()


async def test_r14_drill_passages_and_alarms_count_apart(ops_site: OpsSite) -> None:
    """R14/R12: a passage and an alarm journaled during a drill are not real statistics: they
    count in ``gatectl_drill_events_total`` by type, never in the passage or alarm counters."""
    ops = ops_site
    mine = Metrics(ops.site, subscribe=False, process=False)
    ts = "2026-01-01T08:00:00+08:00"

    def stamped(event: ev.Event) -> ev.Stamped:
        return ev.Stamped("e", 1, "s", LANE, ts, event)

    mine.on_events([
        stamped(ev.DrillStarted(by="园区管理办")),
        stamped(ev.PassageClosed(outcome="emergency", drill=True)),
        stamped(ev.ForcedPassageAlarm(loop="exit_loop", state="occupied", drill=True)),
        stamped(ev.PassageClosed(outcome="passed")),
        stamped(ev.ForcedPassageAlarm(loop="exit_loop", state="occupied")),
        stamped(ev.SpotCheckApplied(remaining=0, fraction=0.0, drill=True)),
    ])
    m = Scrape("", mine.exposition().decode())
    assert m.value("gatectl_passages_total", lane=LANE, outcome="emergency") == 0
    assert m.value("gatectl_passages_total", lane=LANE, outcome="passed") == 1
    assert m.value("gatectl_alarms_total", lane=LANE, alarm="forced_passage") == 1
    assert m.value("gatectl_drill_events_total", lane=LANE, type="passage.closed") == 1
    assert m.value("gatectl_drill_events_total", lane=LANE, type="alarm.raised") == 1
    assert m.value("gatectl_drill_events_total", lane=LANE, type=OTHER) == 1
    assert m.value("gatectl_drill_events_total", lane=LANE, type="drill.started") is None  # not marked itself
