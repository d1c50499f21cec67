"""Bench 9: the control loop's lag under a flood of API reads, MQTT commands and a ledger export.

The decision bench's lane (``bench/decision.py``: wire-timed authority and IO module,
card reader and streaming indicator on ptys, ``gatectl run`` in its own process, released
lorries driven through), with everything around the lanes busy at once:

- a journal holding about 150 000 events over 30 days (``bench.load.prefill``, a fresh
  copy for every batch);
- four clients in a process of their own reading ``/api/v1/events?limit=10000`` and
  ``/api/v1/lanes`` as fast as the daemon answers;
- a real Mosquitto started by the bench, the daemon's MQTT link connected to it, and a
  publisher in a process of its own flooding ``cmd/spot-checks`` with junk and
  well-formed but unsigned orders (500 a second; all refused and counted);
- the daemon's own ledger scheduler exporting every day of those 30 days (csv and xlsx),
  due at once when the daemon starts.

The figure is ``gatectl_loop_lag_seconds{loop="control"}`` from ``/metrics`` over the
batches (how late the lanes' loop wakes a task that slept 50 ms; its p99 taken from the
histogram's buckets, as Prometheus' ``histogram_quantile`` does), against the target of
10 ms. The service loop's lag and the decision latency under the flood are reported too.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path

from bench.common import LANE_NICE, Report, Row, bench_args, pct, scratch
from bench.decision import LANE, bucket_quantile, machine_summary, measure, own_mean_ms, sum_buckets
from bench.load import TZ, copy_journal, flood, lag_probe, prefill, readers
from gatectl.metrics import LAG_BUCKETS
from gatectl.service import LAG_SAMPLE_S
from bench.outbox import MOSQUITTO, Broker
from simulators.site import SITE_ID, free_tcp_port

HISTORY_EVENTS = 150_000
HISTORY_DAYS = 30
CLIENTS = 4
#: The second lag probe runs this much above the daemon's priority (lower niceness).
ABOVE = 5
FLOOD_RATE = 500.0


def combine(*loads):
    """Several loads started together; their reports merged by name."""
    async def start(api: str, workdir: Path):
        stops = [await load(api, workdir) for load in loads]

        async def stop() -> dict:
            return {f"load{i}": await s() for i, s in enumerate(stops)}
        return stop
    return start


def buckets_of(samples: list[float]) -> dict[float, float]:
    """``samples`` counted into the daemon's lag buckets (cumulative, as Prometheus keeps
    them), so that the probe's p99 is interpolated exactly as the daemon's is."""
    return {b: float(sum(1 for x in samples if x <= b)) for b in (*LAG_BUCKETS, float("inf"))}


def ledger_lines(directory: Path, first_day: str) -> str:
    return "\n".join([
        "", "ledger:", f"  dir: {json.dumps(str(directory))}", "  every_days: 1", f"  first_day: {first_day}",
        "  formats: [csv, xlsx]", "",
    ])


async def run(quick: bool, workdir: Path) -> Report:
    rep = Report("flood", "9. control loop lag under API reads, an MQTT flood and a ledger export")
    if MOSQUITTO is None:
        rep.pending = "mosquitto is not installed"
        rep.rows.append(Row("9 flood", "control loop lag p99", "ms", None, None, "< 10 ms", None,
                            note="pending: mosquitto is not installed"))
        return rep
    template = workdir / "history.db"
    spacing = HISTORY_DAYS * 86400 / (HISTORY_EVENTS / 19)
    built = await asyncio.to_thread(prefill, template, LANE.id, HISTORY_EVENTS, spacing_s=spacing)
    first_day = (datetime.now(TZ) - timedelta(days=HISTORY_DAYS + 1)).date().isoformat()
    broker = Broker(workdir, free_tcp_port())
    await broker.start()
    exported: list[int] = []

    def prepare(journal: Path) -> None:
        copy_journal(template, journal)
        ledgers = workdir / "ledgers"
        if ledgers.exists():
            exported.append(sum(1 for _ in ledgers.rglob("*") if _.is_file()))
            for f in sorted(ledgers.rglob("*"), reverse=True):
                f.unlink() if f.is_file() else f.rmdir()

    try:
        load = combine(readers(CLIENTS), flood(("127.0.0.1", broker.port), f"gatectl/{SITE_ID}/cmd/spot-checks",
                                               [LANE.id], FLOOD_RATE), lag_probe(LANE_NICE, LAG_SAMPLE_S),
                       lag_probe(LANE_NICE - ABOVE, LAG_SAMPLE_S))
        m = await measure(quick, workdir, {"flood": load}, prepare=prepare,
                          config_extras={"mqtt": f"127.0.0.1:{broker.port}"},
                          config_tail=ledger_lines(workdir / "ledgers", first_day))
        prepare(workdir / "gatectl.db")  # counts the last batch's ledger files
    finally:
        broker.stop()
    own = m["own"]["flood"]
    control = sum_buckets([o["lag"]["control"] for o in own])
    service = sum_buckets([o["lag"]["service"] for o in own])
    p99 = bucket_quantile(control, 0.99) * 1000
    probe = [x for o in own for x in o["load"].get("load2", {}).get("lag_s", [])]
    above = [x for o in own for x in o["load"].get("load3", {}).get("lag_s", [])]
    probe_p99 = bucket_quantile(buckets_of(probe), 0.99) * 1000 if probe else None
    rep.rows.append(Row("9 flood", "control loop lag p99 (reads + MQTT flood + ledger)", "ms", p99, probe_p99,
                        "< 10 ms", p99 < 10.0,
                        note="baseline: a bare asyncio loop in its own process at the daemon's niceness, same load"))
    rep.rows.append(Row("9 flood", "service loop lag p99 (same)", "ms", bucket_quantile(service, 0.99) * 1000, None,
                        "", None, note="no target: the API, MQTT and ledger side"))
    lat = m["got"]["flood"]
    rep.rows.append(Row("9 flood", "decision latency p50 / p99 under the flood", "ms", pct(lat, 50) * 1000,
                        None, "", None, note=f"p99 {pct(lat, 99) * 1000:.2f} ms; no target"))
    loads = [o["load"] for o in own]
    readers_done = sum(x["load0"].get("events", 0) for x in loads)
    published = sum(x["load1"].get("published", 0) for x in loads)
    seconds = sum(x["load0"].get("seconds", 0.0) for x in loads)
    rep.details = {
        "journal": built,
        "control_lag_buckets": {str(k): v for k, v in control.items()},
        "service_lag_buckets": {str(k): v for k, v in service.items()},
        "control_lag_p50_ms": bucket_quantile(control, 0.5) * 1000,
        "probe_lag_p50_ms": pct(probe, 50) * 1000 if probe else None,
        "probe_lag_p99_ms_exact": pct(probe, 99) * 1000 if probe else None,
        "probe_lag_samples": len(probe),
        # A loop above the daemon's priority: what the lanes would get in a process of
        # their own that the kernel preferred to the service side's threads.
        "probe_above_nice": LANE_NICE - ABOVE,
        "probe_above_lag_p99_ms": bucket_quantile(buckets_of(above), 0.99) * 1000 if above else None,
        "control_lag_p999_ms": bucket_quantile(control, 0.999) * 1000,
        "lag_samples": control.get(float("inf"), 0.0),
        "decision_ms": sorted(round(x * 1000, 3) for x in lat),
        "daemon_own_mean_ms": own_mean_ms(own),
        "ledger_files_per_batch": exported,
        "loads": loads,
    }
    rep.notes.append(
        f"{m['rounds']} batches of {m['per_batch']} lorries, {seconds:.0f} s under load in all: "
        f"{readers_done / max(seconds, 1e-9):.1f} pages of 10 000 events a second to the readers, "
        f"{published / max(seconds, 1e-9):.0f} MQTT commands a second, ledger files written per batch {exported}"
    )
    rep.details["machine"] = [o["machine"] for o in own]
    rep.notes.append(machine_summary(own))
    if above:
        rep.notes.append(f"a bare loop at niceness {LANE_NICE - ABOVE} (above the daemon's threads) under the same "
                         f"load: lag p99 {rep.details['probe_above_lag_p99_ms']:.1f} ms")
    return rep


def main() -> None:
    args = bench_args(__doc__.splitlines()[0]).parse_args()
    with scratch(args.workdir, "flood") as wd:
        rep = asyncio.run(run(args.quick, wd))
    rep.write(args.json)


if __name__ == "__main__":
    main()
