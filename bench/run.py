"""Run every bench and print one table: ``.venv/bin/python -m bench [--quick]``.

Each bench runs in its own process (``python -m bench.<name> --json FILE``), bounded in
time; a bench that overruns is stopped with its whole process group, so the daemons,
brokers and ptys it started go with it. Nothing here is a pass/fail test: the table says
which targets were met on this machine, this time.

``--quick``: about ten minutes, for a developer. Without it: the full run (about an
hour). ``--only decision,idle`` runs some. ``--markdown`` prints the table as Markdown
(for docs/performance.md). ``--json FILE`` keeps every bench's figures and details.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, describe_machine, fmt_num, machine  # noqa: E402

#: (module, seconds allowed quick, seconds allowed full)
BENCHES = [
    ("decision", 600, 1800),
    ("decision_reads", 600, 1800),
    ("flood", 600, 1800),
    ("lanes", 600, 1800),
    ("journal_growth", 600, 2400),
    ("ledger", 300, 900),
    ("idle", 300, 600),
    ("outbox", 300, 900),
    ("central_ingest", 900, 3600),
]


def run_one(name: str, quick: bool, limit: float, out_dir: Path) -> dict:
    if name == "ledger":
        return run_ledger(quick, limit, out_dir)
    return _run(name, [sys.executable, "-m", f"bench.{name}", "--json", str(out_dir / f"{name}.json")]
                + (["--quick"] if quick else []), limit, out_dir)


def run_ledger(quick: bool, limit: float, out_dir: Path) -> dict:
    """Bench 4 is ``bench/ledger_export.py`` (the ledger's author's own bench): 120 k
    passages, ``raw csv`` / ``raw xlsx`` / ``ledger csv`` / ``ledger xlsx`` on one journal.
    It runs its four measurements back to back, so it is run 3 times (1 with --quick)
    and the median of each figure is taken; its printed table is parsed."""
    name = "ledger_export"
    if not (ROOT / "bench" / "ledger_export.py").exists():
        return {"name": "ledger", "error": None, "pending": "bench/ledger_export.py is not there yet",
                "rows": [{"bench": "4 ledger", "metric": "ledger csv export vs raw sqlite3 -> csv", "unit": "s",
                          "gatectl": None, "baseline": None, "ratio": None, "target": "<= 2x", "met": None,
                          "note": "pending: bench/ledger_export.py"}], "seconds": 0.0}
    runs, started, raws = [], time.monotonic(), []
    for _ in range(1 if quick else 3):
        left = limit - (time.monotonic() - started)
        res = _run(name, [sys.executable, str(ROOT / "bench" / "ledger_export.py")], left, out_dir)
        if res.get("error"):
            return res
        raws.append(res["raw"])
        figures = {}
        for line in res["raw"].splitlines():
            parts = line.split()
            if len(parts) >= 3 and " ".join(parts[:2]) in ("raw csv", "raw xlsx", "ledger csv", "ledger xlsx"):
                figures[" ".join(parts[:2])] = float(parts[2])
        if len(figures) != 4:
            return {"name": name, "error": None, "raw": res["raw"], "seconds": time.monotonic() - started}
        runs.append(figures)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    rows = []
    for ours, base, target in (("ledger csv", "raw csv", 2.0), ("ledger xlsx", "raw xlsx", None)):
        ratio = med[ours] / med[base]
        rows.append({"bench": "4 ledger", "metric": f"{ours} export of 120 k passages vs {base}", "unit": "s",
                     "gatectl": med[ours], "baseline": med[base], "ratio": ratio,
                     "target": f"<= {target:g}x" if target else "", "met": (ratio <= target) if target else None,
                     "note": "" if target else "no target"})
    return {"name": "ledger", "title": "4. ledger export (bench/ledger_export.py)", "rows": rows,
            "details": {"runs": runs, "medians": med}, "raw": None, "last_output": raws[-1],
            "notes": [f"bench/ledger_export.py run {len(runs)} time(s), median of each figure; each run times raw csv, "
                      "raw xlsx, ledger csv, ledger xlsx back to back on a fresh synthetic journal"],
            "seconds": time.monotonic() - started}


def _run(name: str, cmd: list[str], limit: float, out_dir: Path) -> dict:
    out = out_dir / f"{name}.json"
    out.unlink(missing_ok=True)
    log = out_dir / f"{name}.log"
    started = time.monotonic()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return {"name": name, "error": f"stopped after {limit:g} s", "seconds": time.monotonic() - started}
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        return {"name": name, "error": f"exit {proc.returncode}:\n{tail}", "seconds": seconds}
    if not out.exists():
        return {"name": name, "error": None, "raw": log.read_text(errors="replace")[-3000:], "seconds": seconds}
    try:
        data = json.loads(out.read_text(encoding="utf-8"))
    except ValueError:
        # A bench that does not speak this runner's JSON (e.g. a colleague's): show its output.
        return {"name": name, "error": None, "raw": out.read_text(errors="replace")[-2000:], "seconds": seconds}
    data["seconds"] = seconds
    return data


def verdict(met) -> str:
    return {True: "met", False: "MISSED", None: ""}[met]


def table(results: list[dict], markdown: bool) -> str:
    head = ["bench", "metric", "unit", "gatectl", "baseline", "ratio", "target", "met"]
    lines: list[list[str]] = []
    notes: list[str] = []
    for res in results:
        if res.get("error"):
            lines.append([res["name"], "error: " + res["error"].splitlines()[0], "", "", "", "", "", ""])
            continue
        if res.get("raw"):
            lines.append([res["name"], "(own output, see below)", "", "", "", "", "", ""])
            continue
        for r in res["rows"]:
            ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            metric = r["metric"]
            if r.get("note"):
                notes.append(f"{r['bench']}, {metric}: {r['note']}")
                metric += f" [{len(notes)}]"
            lines.append([r["bench"], metric, r["unit"], fmt_num(r["gatectl"]), fmt_num(r["baseline"]), ratio,
                          r["target"], r.get("verdict") or verdict(r["met"])])
    foot = [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines]
        return "\n".join(out + [""] + [f"{f}  " for f in foot])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{'>' if i in (3, 4, 5) else '<'}{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out + [""] + foot)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="about ten minutes instead of about an hour")
    p.add_argument("--only", help="comma-separated: " + ", ".join(n for n, *_ in BENCHES))
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--json", help="write every result, with details, to this file")
    args = p.parse_args(argv)
    names = [n for n, *_ in BENCHES]
    chosen = names if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = set(chosen) - set(names)
    if unknown:
        p.error(f"unknown bench(es): {', '.join(sorted(unknown))}")
    m = machine()
    mode = "quick" if args.quick else "full"
    print(f"gatectl benches, {mode} run, {datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {describe_machine(m)}; load average at start {m['loadavg']:.2f}")
    results = []
    with tempfile.TemporaryDirectory(prefix="gatectl-bench-run-") as tmp:
        for name, quick_s, full_s in BENCHES:
            if name not in chosen:
                continue
            print(f"  running {name} ...", flush=True)
            res = run_one(name, args.quick, quick_s if args.quick else full_s, Path(tmp))
            print(f"    {res['seconds']:.0f} s" + (f", {res['error'].splitlines()[0]}" if res.get("error") else ""),
                  flush=True)
            results.append(res)
    print()
    print(table(results, args.markdown))
    for res in results:
        for note in res.get("notes", []):
            print(f"  [{res['name']}] {note}")
        if res.get("pending"):
            print(f"  [{res['name']}] pending: {res['pending']}")
        if res.get("raw"):
            print(f"  [{res['name']}] output:\n{res['raw']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": m, "mode": mode, "results": results}, ensure_ascii=False,
                                              indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
