"""Bench 8: decision latency while four clients read the journal through the local API.

The decision bench (``bench/decision.py``: wire-timed authority and IO module, card
reader and streaming indicator on ptys, ``gatectl run`` in its own process) on a journal
that already holds about 150 000 events (``bench.load.prefill``, a fresh copy for every
batch), in batches that alternate between:

- **idle**: nobody else talks to the daemon;
- **reads**: four clients in a process of their own read ``/api/v1/events?limit=10000``
  (about 4 MB each) and ``/api/v1/lanes`` in turn, as fast as the daemon answers, for
  the whole batch.

The figure is the latency under reads against the idle latency of the same run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.common import Report, bench_args, pct, ratio_row, scratch
from bench.decision import LANE, machine_summary, measure, own_mean_ms
from bench.load import copy_journal, prefill, readers

HISTORY_EVENTS = 150_000
CLIENTS = 4


async def run(quick: bool, workdir: Path) -> Report:
    template = workdir / "history.db"
    built = await asyncio.to_thread(prefill, template, LANE.id, HISTORY_EVENTS)
    m = await measure(quick, workdir, {"idle": None, "reads": readers(CLIENTS)},
                      prepare=lambda journal: copy_journal(template, journal))
    idle, busy = m["got"]["idle"], m["got"]["reads"]
    rep = Report("decision_reads", "8. decision latency while 4 clients read the journal")
    rep.rows.append(ratio_row("8 reads", "p50 latency, 4 API readers (vs idle)", "ms", pct(busy, 50) * 1000,
                              pct(idle, 50) * 1000, 2.0))
    rep.rows.append(ratio_row("8 reads", "p99 latency, 4 API readers (vs idle)", "ms", pct(busy, 99) * 1000,
                              pct(idle, 99) * 1000, 2.0))
    loads = [o["load"] for o in m["own"]["reads"]]
    answered = sum(o.get("events", 0) for o in loads)
    seconds = sum(o.get("seconds", 0.0) for o in loads)
    rep.details = {
        "journal": built,
        "samples": {"idle": len(idle), "reads": len(busy)},
        "batch_p50_ms": m["batch_p50"],
        "p90_ms": {"idle": pct(idle, 90) * 1000, "reads": pct(busy, 90) * 1000},
        "max_ms": {"idle": max(idle) * 1000, "reads": max(busy) * 1000},
        "daemon_own_mean_ms": {k: own_mean_ms(v) for k, v in m["own"].items()},
        "readers": loads,
        "idle_ms": sorted(round(x * 1000, 3) for x in idle),
        "reads_ms": sorted(round(x * 1000, 3) for x in busy),
    }
    rep.notes.append(
        f"journal of {built['events']:,} events ({built['bytes'] / 1e6:.0f} MB); {len(idle)} idle / {len(busy)} "
        f"under-reads passages, {m['rounds']} alternating rounds; the readers got {answered:,} pages of 10 000 "
        f"events in {seconds:.0f} s ({answered / max(seconds, 1e-9):.1f} a second)"
    )
    rep.details["machine"] = {k: [o["machine"] for o in v] for k, v in m["own"].items()}
    rep.notes.append(f"under reads, {machine_summary(m['own']['reads'])}")
    return rep


def main() -> None:
    args = bench_args(__doc__.splitlines()[0]).parse_args()
    with scratch(args.workdir, "decision_reads") as wd:
        rep = asyncio.run(run(args.quick, wd))
    rep.write(args.json)


if __name__ == "__main__":
    main()
