"""Prometheus metrics for ``GET /metrics`` (CONTRACT section 6).

One ``Metrics`` per ``Site``, with its own ``CollectorRegistry`` (never the global one, so
a test can run several sites in one process). Two kinds of metric:

- **counters fed from journaled events**: ``Metrics(site)`` subscribes to
  ``site.subscribe``, so they count exactly what the journal recorded (passages closed,
  lifts, alarms, approvals, refused manual lifts, authority failures; what happened during
  an emergency drill in ``gatectl_drill_events_total`` by type, its passages and alarms
  nowhere else, so the real figures stay real). They start at zero
  with the process, as Prometheus counters do; the journal keeps the history.
- **histograms measured on the control path**: the decision latency (the authority's
  answer in, or the lane's own list decision, to the open coil switched on: journal commit
  included), observed by the lane runtime; and each event loop's lag (how late a task that
  slept is woken: ``control`` runs the lanes, ``service`` everything else).
- **gauges and driver counters read at scrape time** by a custom collector: lane state,
  device health, device frame/drop counters, IO module polls/timeouts, open faults,
  outbox depth. Nothing is cached; a scrape shows the site as it is.

Labels are bounded: lanes and devices come from the config, every other label value from
a closed set the code defines (anything else is counted as ``other``). No card number,
plate, passage, request or approval id is ever a label.

Wiring: ``metrics = Metrics(site)`` then ``start_api(site, metrics.setup_routes)``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from gatectl import events as ev
from gatectl.heap import frozen_objects
from gatectl.api import GUARD_KEY, NoQuery, query
from gatectl.approvals import REASON_CODES as APPROVAL_REFUSALS
from gatectl.authorities.base import AUTHORITY_ERROR_REASONS
from gatectl.lane.core import LaneState
from gatectl.lane.inputs import DECISIONS
from gatectl.service import SITE_LANE

log = structlog.get_logger("gatectl.metrics")

#: Decision latency buckets (seconds): the lane's own share is a journal commit (a few ms,
#: an fsync); anything near a second means the disk or the event loop is in trouble.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Loop lag buckets (seconds): the control loop's budget is 10 ms at p99.
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
LOOPS = ("control", "service")

#: Closed label sets. A value outside them is counted as ``other`` (a bug to look at, not
#: a new time series per value).
OUTCOMES = ("passed", "held", "backed_out", "forced", "manual", "emergency")
LIFT_KINDS = ("release_instruction", "whitelist", "staff_card", "approval", "emergency")
ALARMS = (
    "forced_passage",
    "tailgating",
    "barrier_fault",
    "device_fault",
    "authority_unreachable",
    "emergency_release",
    "instruction_replay",
    "journal_fault",
)
MANUAL_LIFT_REFUSALS = (
    "no_valid_approval",
    "approval_exhausted",
    "approval_expired",
    "approval_not_yet_valid",
    "lift_in_progress",
)
APPROVAL_TRIGGERS = ("panel", "remote")
#: Event types of a drill counted by type (any other: ``other``).
DRILL_TYPES = ("passage.opened", "passage.closed", "alarm.raised", "barrier.lifted", "release.decided",
               "authorisation.committed", "drill.started", "drill.ended")
DECISION_SOURCES = ("authority", "local")
RELEASE_FAILURES = tuple(sorted(AUTHORITY_ERROR_REASONS))
HEALTH_VALUES = {"ok": 0, "degraded": 1, "faulty": 2}
OTHER = "other"

_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _one_of(value: Any, allowed: Iterable[str]) -> str:
    return value if isinstance(value, str) and value in allowed else OTHER


def _token(value: Any) -> str:
    """A driver-defined key (drop reason, counter name) as a label or name part."""
    return value if isinstance(value, str) and _TOKEN.fullmatch(value) else OTHER


def _ts(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None


class Metrics:
    """The site's metrics: ``on_events`` is subscribed to the site, ``setup_routes`` adds
    ``GET /metrics`` to the local API."""

    def __init__(self, site: Any, *, subscribe: bool = True, process: bool = True) -> None:
        self.site = site
        # ``_created`` series double every counter for nothing an operator needs.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._lanes = frozenset(site.lanes) | {SITE_LANE}
        self.passages = Counter(
            "gatectl_passages", "Passages closed, by lane and outcome.", ["lane", "outcome"], registry=r
        )
        self.lifts = Counter(
            "gatectl_barrier_lifts",
            "Barrier lifts under an authorisation, by lane and kind of authorisation.",
            ["lane", "authorisation"],
            registry=r,
        )
        self.safety_reverses = Counter(
            "gatectl_barrier_safety_reverses",
            "Barrier lifted again because the safety loop was occupied while it lowered.",
            ["lane"],
            registry=r,
        )
        self.alarms = Counter("gatectl_alarms", "Alarms raised, by lane and kind.", ["lane", "alarm"], registry=r)
        self.decisions = Counter(
            "gatectl_release_decisions",
            "Release decisions journaled, by lane, source (authority or the lane's own lists) and decision.",
            ["lane", "source", "decision"],
            registry=r,
        )
        self.release_failures = Counter(
            "gatectl_release_failures",
            "Release requests the authority gave no usable answer to, by lane and reason.",
            ["lane", "reason"],
            registry=r,
        )
        self.decision_latency = Histogram(
            "gatectl_decision_latency_seconds",
            "From the release decision (the authority's answer in, or the lane's own list) to the open coil "
            "switched on: the authorisation's journal commit, then the coil write.",
            ["lane", "source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "gatectl_loop_lag_seconds",
            "How late an event loop wakes a task that slept: what any input of that loop may wait before it "
            "is looked at (control: the lanes; service: API, screen, MQTT, records, ledger).",
            ["loop"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.approvals_accepted = Counter(
            "gatectl_approvals_accepted",
            "Approvals (manual or remote lifts) accepted, by lane and trigger.",
            ["lane", "trigger"],
            registry=r,
        )
        self.approvals_refused = Counter(
            "gatectl_approvals_refused",
            "Approvals refused, by lane and reason code.",
            ["lane", "reason"],
            registry=r,
        )
        self.approval_lifts = Counter(
            "gatectl_approval_lifts",
            "Lifts spent from approvals, by lane and trigger.",
            ["lane", "trigger"],
            registry=r,
        )
        self.manual_lifts_refused = Counter(
            "gatectl_manual_lifts_refused",
            "Manual lift button presses refused, by lane and reason.",
            ["lane", "reason"],
            registry=r,
        )
        self.events = Counter(
            "gatectl_journal_events", "Events written to the journal, by lane.", ["lane"], registry=r
        )
        self.drill_events = Counter(
            "gatectl_drill_events",
            "Events journaled during an emergency drill, by lane and type; drill passages and alarms are "
            "counted here only, never in gatectl_passages_total or gatectl_alarms_total.",
            ["lane", "type"],
            registry=r,
        )
        self.errors = Counter(
            "gatectl_metrics_errors",
            "Journaled events the metrics could not account for (a gatectl bug; see the log).",
            registry=r,
        )
        for lane in site.lanes:
            for outcome in OUTCOMES:
                self.passages.labels(lane, outcome)
            for kind in LIFT_KINDS:
                self.lifts.labels(lane, kind)
            self.safety_reverses.labels(lane)
            self.events.labels(lane)
        for loop in LOOPS:
            self.loop_lag.labels(loop)
        self.collector = SiteCollector(site)
        r.register(self.collector)
        if process:
            _ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        if subscribe:
            site.subscribe(self.on_events)
            site.decision_observers.append(self.on_decision)
            site.lag_observers.append(self.on_lag)

    # ------------------------------------------------------------------ events

    def on_events(self, written: list[ev.Stamped]) -> None:
        """Count journaled events. Never raises: metrics must never break anything."""
        for st in written:
            try:
                self._count(st)
            except Exception:  # noqa: BLE001 - metrics must never break a lane
                self.errors.inc()
                log.exception("metrics could not count an event", type=st.type, lane=st.lane_id)

    def on_decision(self, lane: str, source: str, seconds: float) -> None:
        """From the lane runtime (its thread): one decision's latency to the open coil."""
        self.decision_latency.labels(_one_of(lane, self._lanes), _one_of(source, DECISION_SOURCES)).observe(seconds)

    def on_lag(self, loop: str, seconds: float) -> None:
        self.loop_lag.labels(_one_of(loop, LOOPS)).observe(seconds)

    def _count(self, st: ev.Stamped) -> None:
        lane = _one_of(st.lane_id, self._lanes)
        self.events.labels(lane).inc()
        e = st.event
        if getattr(e, "drill", None):
            self.drill_events.labels(lane, _one_of(st.type, DRILL_TYPES)).inc()
            if isinstance(e, (ev.PassageClosed, ev.AlarmRaised)):
                return  # a drill's passage or alarm is no real one
        match e:
            case ev.PassageClosed():
                self.passages.labels(lane, _one_of(e.outcome, OUTCOMES)).inc()
            case ev.BarrierLifted() if e.reason == "safety_reverse":
                self.safety_reverses.labels(lane).inc()
            case ev.BarrierLifted():
                kind = e.authorisation.kind if e.authorisation is not None else None
                self.lifts.labels(lane, _one_of(kind, LIFT_KINDS)).inc()
            case ev.AuthorityDecision() | ev.LocalDecision():
                source = "authority" if isinstance(e, ev.AuthorityDecision) else "local"
                self.decisions.labels(lane, source, _one_of(e.decision, DECISIONS)).inc()
            case ev.ReleaseFailed():
                self.release_failures.labels(lane, _one_of(e.reason, RELEASE_FAILURES)).inc()
            case ev.AlarmRaised():
                self.alarms.labels(lane, _one_of(e.alarm, ALARMS)).inc()
            case ev.ApprovalAccepted():
                self.approvals_accepted.labels(lane, _one_of(e.trigger, APPROVAL_TRIGGERS)).inc()
            case ev.ApprovalRefused():
                self.approvals_refused.labels(lane, _one_of(e.reason, APPROVAL_REFUSALS)).inc()
            case ev.ApprovalUsed():
                self.approval_lifts.labels(lane, _one_of(e.trigger, APPROVAL_TRIGGERS)).inc()
            case ev.ManualLiftRefused():
                self.manual_lifts_refused.labels(lane, _one_of(e.reason, MANUAL_LIFT_REFUSALS)).inc()
            case ev.Unknown() if e.type == "alarm.raised":
                self.alarms.labels(lane, OTHER).inc()  # an alarm this gatectl has no name for

    # ------------------------------------------------------------------ HTTP

    def setup_routes(self, app: web.Application) -> None:
        """For ``make_app(site, metrics.setup_routes)``: ``GET /metrics``."""
        self.collector.guard = app.get(GUARD_KEY)
        app.router.add_get("/metrics", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        query(request, NoQuery)
        # Prometheus text 0.0.4 by default; OpenMetrics when the scraper asks for it. The
        # collectors read the journal (outbox depth): on a reader thread, off the loop.
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await self.site.journal.read(lambda db: encoder(self.registry))
        return web.Response(body=body, headers={"Content-Type": content_type})

    def exposition(self) -> bytes:
        """The text exposition, as ``GET /metrics`` answers it to a plain client."""
        encoder, _ = choose_encoder("")
        return encoder(self.registry)


class SiteCollector(Collector):
    """Gauges and driver counters read from the running site at each scrape."""

    def __init__(self, site: Any) -> None:
        self.site = site
        self.guard: Any = None  # the local API's ConnectionGuard, once its routes are set up

    def describe(self) -> list[Metric]:
        # Dynamic families: nothing to check at registration (and no site access then).
        return []

    def collect(self) -> Iterator[Metric]:
        site = self.site
        ready = GaugeMetricFamily("gatectl_site_ready", "1 once every lane runs (as /api/v1/health says).")
        ready.add_metric([], 1.0 if site.running else 0.0)
        yield ready
        frozen = GaugeMetricFamily("gatectl_gc_frozen_objects",
                                   "Objects of start-up left out of garbage collection (gatectl run).")
        frozen.add_metric([], float(frozen_objects()))
        yield frozen
        yield from self._lanes()
        yield from self._io_modules()
        yield from self._outbox()
        yield from self._refused()

    # -------------------------------------------------------------- hostile input

    def _refused(self) -> Iterator[Metric]:
        refusals = getattr(getattr(self.site, "orders", None), "refusals", None)
        if refusals is not None:
            refused = CounterMetricFamily(
                "gatectl_input_refused",
                "Outside input refused at the edge, by surface (api, mqtt, approval, command, replay, journal) "
                "and reason: counted, logged at a bounded rate, never journaled one by one.",
                labels=["surface", "reason"],
            )
            for (surface, reason), n in sorted(refusals.snapshot().items()):
                refused.add_metric([surface, reason], float(n))
            yield refused
        guard = self.guard
        if guard is not None:
            conns = GaugeMetricFamily("gatectl_api_connections", "Open connections of the local API.")
            conns.add_metric([], float(len(guard.conns)))
            yield conns
            peak = GaugeMetricFamily("gatectl_api_connections_peak", "Most connections of the local API open at once.")
            peak.add_metric([], float(guard.peak))
            yield peak

    # -------------------------------------------------------------- lanes

    def _lanes(self) -> Iterator[Metric]:
        info = InfoMetricFamily("gatectl_lane", "The configured lanes.", labels=["lane"])
        state = GaugeMetricFamily(
            "gatectl_lane_state", "The lane core's state, one-hot (1 for the current state).", labels=["lane", "state"]
        )
        open_hours = GaugeMetricFamily(
            "gatectl_lane_open_hours", "1 while the lane is within its open hours (R2).", labels=["lane"]
        )
        faults_open = GaugeMetricFamily(
            "gatectl_lane_faults_open", "Faults open on the lane (it fails closed while any is).", labels=["lane"]
        )
        fault = GaugeMetricFamily(
            "gatectl_lane_fault", "1 for each device with an open fault on the lane.", labels=["lane", "device"]
        )
        spot_next = GaugeMetricFamily(
            "gatectl_spot_check_hold_next", "Customs spot checks: vehicles still to hold (R7).", labels=["lane"]
        )
        spot_fraction = GaugeMetricFamily(
            "gatectl_spot_check_fraction", "Customs spot checks: share of vehicles held at random (R7).",
            labels=["lane"],
        )
        seq = GaugeMetricFamily("gatectl_journal_seq", "The lane's last journaled seq.", labels=["lane"])
        health = GaugeMetricFamily(
            "gatectl_device_health",
            "Device health as the lane sees it: 0 ok, 1 degraded, 2 faulty (absent until first reported).",
            labels=["lane", "device"],
        )
        serial = _SerialFamilies()
        for lane_id, lane in self.site.lanes.items():
            try:
                snap = lane.snapshot()
            except Exception:  # noqa: BLE001 - one lane's snapshot must not blank the scrape
                log.exception("lane snapshot failed", lane=lane_id)
                continue
            info.add_metric(
                [lane_id],
                {"kind": str(snap.get("kind")), "direction": str(snap.get("direction")), "name": str(snap.get("name"))},
            )
            current = snap.get("state")
            for s in LaneState:
                state.add_metric([lane_id, s.value], 1.0 if s.value == current else 0.0)
            open_hours.add_metric([lane_id], 1.0 if snap.get("open_now") else 0.0)
            faults = snap.get("faults") or {}
            faults_open.add_metric([lane_id], float(len(faults)))
            for device in sorted(faults):
                fault.add_metric([lane_id, str(device)], 1.0)
            spots = snap.get("spot_checks") or {}
            spot_next.add_metric([lane_id], float(spots.get("hold_next") or 0))
            spot_fraction.add_metric([lane_id], float(spots.get("fraction") or 0.0))
            seq.add_metric([lane_id], float(snap.get("last_seq") or 0))
            for device, counters in sorted((snap.get("devices") or {}).items()):
                value = HEALTH_VALUES.get((counters or {}).get("health"))
                if value is not None:
                    health.add_metric([lane_id, device], float(value))
                if counters and "frames" in counters:
                    serial.add(lane_id, device, counters)
        yield from (info, state, open_hours, faults_open, fault, spot_next, spot_fraction, seq, health)
        yield from serial.families()

    # --------------------------------------------------------- IO modules

    IO_HELP = {
        "polls": "Discrete input polls sent.",
        "writes": "Coil writes sent.",
        "timeouts": "Requests that got no answer in time.",
        "exceptions": "Requests answered with a Modbus exception.",
        "reconnects": "Retries after a fault.",
    }

    def _io_modules(self) -> Iterator[Metric]:
        health = GaugeMetricFamily(
            "gatectl_io_module_health",
            "IO module health: 0 ok, 1 degraded, 2 faulty (absent until first reported).",
            labels=["module"],
        )
        counts: dict[str, dict[str, float]] = {}
        for name, module in sorted(self.site.io.modules.items()):
            try:
                h = module.health
                value = HEALTH_VALUES.get(h.value if h is not None else None)
                if value is not None:
                    health.add_metric([name], float(value))
                for key, count in module.counters.items():
                    per_module = counts.setdefault(_token(key), {})
                    per_module[name] = per_module.get(name, 0.0) + float(count)
            except Exception:  # noqa: BLE001
                log.exception("io module counters failed", module=name)
        yield health
        for key, per_module in counts.items():
            fam = CounterMetricFamily(
                f"gatectl_io_module_{key}", self.IO_HELP.get(key, f"IO module {key}."), labels=["module"]
            )
            for name, count in per_module.items():
                fam.add_metric([name], count)
            yield fam

    # -------------------------------------------------------------- outbox

    def _outbox(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "gatectl_outbox_pending",
            "Journal outbox items not yet delivered, by target (e.g. authority:<name> pass confirmations).",
            labels=["target"],
        )
        try:
            for target in sorted(self.site.outbox):
                pending.add_metric([target], float(self.site.journal.outbox_depth(target)))
        except Exception:  # noqa: BLE001 - the journal may be closing
            log.warning("outbox depth unavailable", exc_info=True)
        yield pending
        journal = self.site.journal
        groups = CounterMetricFamily("gatectl_journal_group_commits", "Journal transactions committing lanes' events.")
        groups.add_metric([], float(journal.groups))
        yield groups
        appends = CounterMetricFamily("gatectl_journal_group_appends", "Lane appends committed in those groups.")
        appends.add_metric([], float(journal.group_appends))
        yield appends
        faulty = GaugeMetricFamily("gatectl_journal_faulty", "1 while the journal refuses writes (lanes fail closed).")
        faulty.add_metric([], 1.0 if journal.faulty else 0.0)
        yield faulty
        mqtt_depth = getattr(self.site, "mqtt_depth", None)
        if callable(mqtt_depth):
            try:
                depth = float(mqtt_depth())
            except Exception:  # noqa: BLE001
                log.warning("mqtt backlog unavailable", exc_info=True)
            else:
                backlog = GaugeMetricFamily("gatectl_mqtt_backlog", "Events waiting to be published over MQTT.")
                backlog.add_metric([], depth)
                yield backlog


class _ProcessCollector(ProcessCollector):
    """``process_*`` metrics even where ``/proc/stat`` is hidden (the unit's ProcSubset=pid):
    the boot time comes from CLOCK_BOOTTIME then, and ``/proc/self`` is all that is read."""

    def _boot_time(self) -> float:
        try:
            btime = super()._boot_time()
        except OSError:
            btime = None
        return btime or time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class _SerialFamilies:
    """Serial device (card reader, weighbridge) counters of every lane, one family each."""

    COUNTERS = {
        "frames": ("gatectl_device_frames", "Valid frames decoded."),
        "bytes": ("gatectl_device_bytes", "Bytes read from the port."),
        "reconnects": ("gatectl_device_reconnects", "Times the port was reopened."),
        "open_failures": ("gatectl_device_open_failures", "Failed attempts to open the port."),
        "silence_faults": ("gatectl_device_silence_faults", "Times the device fell silent for too long."),
    }

    def __init__(self) -> None:
        labels = ["lane", "device"]
        self.counters = {
            key: CounterMetricFamily(name, doc, labels=labels) for key, (name, doc) in self.COUNTERS.items()
        }
        self.dropped = CounterMetricFamily(
            "gatectl_device_frames_dropped", "Malformed frames counted and dropped, by reason.",
            labels=["lane", "device", "reason"],
        )
        self.error_ratio = GaugeMetricFamily(
            "gatectl_device_error_ratio", "Share of bad frames in the device's current window.", labels=labels
        )
        self.frame_age = GaugeMetricFamily(
            "gatectl_device_last_frame_age_seconds", "Seconds since the last valid frame (absent before one).",
            labels=labels,
        )

    def add(self, lane: str, device: str, c: dict[str, Any]) -> None:
        for key, fam in self.counters.items():
            if isinstance(c.get(key), (int, float)):
                fam.add_metric([lane, device], float(c[key]))
        dropped: dict[str, float] = {}
        for reason, count in (c.get("dropped") or {}).items():
            key = _token(str(reason))
            dropped[key] = dropped.get(key, 0.0) + float(count)
        for reason, count in sorted(dropped.items()):
            self.dropped.add_metric([lane, device, reason], count)
        if isinstance(c.get("error_rate"), (int, float)):
            self.error_ratio.add_metric([lane, device], float(c["error_rate"]))
        if isinstance(c.get("last_frame_age_s"), (int, float)):
            self.frame_age.add_metric([lane, device], float(c["last_frame_age_s"]))

    def families(self) -> Iterator[Metric]:
        yield from self.counters.values()
        yield self.dropped
        yield self.error_ratio
        yield self.frame_age
