"""Shared pieces of the benches: the machine, statistics, results, the daemon and
helper processes, and /proc readings.

Nothing here changes product code. Timestamps on the wire come from ``bench/wire.py``
(the authority's answers, the IO module's coil writes as the kernel received them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` and `python -m bench.x` alike
    sys.path.insert(0, str(ROOT))


# The Modbus server of the IO module simulator logs an error with a frame dump whenever a
# daemon it serves is stopped mid-poll; the benches stop daemons all the time.
import logging  # noqa: E402

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------ the machine


def unit_nice(unit: Path = ROOT / "systemd" / "gatectl.service") -> int:
    """The niceness the lane daemon's systemd unit gives it (``Nice=``; 0 if it sets none)."""
    nice = 0
    for line in unit.read_text(encoding="utf-8").splitlines():
        if line.startswith("Nice="):
            nice = int(line.split("=", 1)[1])
    return nice


#: The daemon runs at the priority its unit gives it, and so does every baseline it is
#: compared with; the simulators, the load clients and the broker stay at the bench's own.
LANE_NICE = unit_nice()


def lane_nice_reached() -> int:
    """The niceness a child given ``LANE_NICE`` gets here: raising a priority needs root
    (CAP_SYS_NICE), as systemd has when it applies ``Nice=``."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    return LANE_NICE if LANE_NICE >= own or os.geteuid() == 0 else own


def machine() -> dict[str, Any]:
    """What the figures were measured on (CPU, RAM, Python, SQLite, load when we started)."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - Linux only
        affinity = os.cpu_count() or 0
    return {
        "nproc": affinity,
        "cpu": model,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
        "loadavg": os.getloadavg()[0],
        "daemon_nice": lane_nice_reached(),
    }


def describe_machine(m: dict[str, Any]) -> str:
    return (
        f"{m['nproc']} x {m['cpu']}, {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, SQLite {m['sqlite']}; the daemon and its baselines at niceness "
        f"{m.get('daemon_nice', 0)} (its systemd unit's: {LANE_NICE})"
    )


# ------------------------------------------------------------------------ statistics


def pct(values: Iterable[float], p: float) -> float:
    """The ``p``-th percentile (0..100), linear between closest ranks."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values: Iterable[float]) -> float:
    xs = list(values)
    return statistics.median(xs) if xs else float("nan")


# ------------------------------------------------------------------------ results


@dataclass
class Row:
    """One line of the table: the daemon's figure, the baseline's, their ratio, the target."""

    bench: str
    metric: str
    unit: str
    gatectl: float | None
    baseline: float | None
    target: str  # e.g. "<= 1.3x" (on the ratio) or "<= 2 %" (on the gatectl figure)
    met: bool | None  # None: no target on this line, or not measurable
    note: str = ""
    verdict: str | None = None  # instead of met/MISSED, when neither says it (e.g. "lower")

    @property
    def ratio(self) -> float | None:
        if self.gatectl is None or self.baseline in (None, 0):
            return None
        return self.gatectl / self.baseline


def ratio_row(bench: str, metric: str, unit: str, gatectl: float, baseline: float, limit: float | None,
              note: str = "") -> Row:
    """A row whose target is on the ratio gatectl / baseline (``limit`` None: no target)."""
    r = Row(bench, metric, unit, gatectl, baseline, f"<= {limit:g}x" if limit else "", None, note)
    if limit is not None and r.ratio is not None:
        r.met = r.ratio <= limit
    return r


@dataclass
class Report:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    pending: str | None = None  # why the bench could not run yet

    def write(self, path: str | None) -> None:
        data = {
            "name": self.name,
            "title": self.title,
            "rows": [{**asdict(r), "ratio": r.ratio} for r in self.rows],
            "details": self.details,
            "notes": self.notes,
            "pending": self.pending,
        }
        text = json.dumps(data, ensure_ascii=False, indent=1, default=str)
        if path:
            Path(path).write_text(text, encoding="utf-8")
        else:
            print(text)


def bench_args(description: str):
    """The options every bench module takes when run on its own."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="the developer's short run")
    p.add_argument("--json", help="write the result here (default: print it)")
    p.add_argument("--workdir", help="scratch directory (default: a new one under $TMPDIR)")
    return p


@contextlib.contextmanager
def scratch(workdir: str | None, name: str):
    """A scratch directory, removed afterwards unless the caller named it."""
    import shutil
    import tempfile

    if workdir:
        path = Path(workdir) / name
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix=f"gatectl-bench-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def log_to(path: Path) -> None:
    """Configure logging as ``gatectl run`` does (JSON lines), into a file instead of stderr."""
    from gatectl import logs

    path.parent.mkdir(parents=True, exist_ok=True)
    logs.configure(json=True, stream=open(path, "a", encoding="utf-8"))  # noqa: SIM115 - lives as long as the process


# ------------------------------------------------------------------------ instrumented simulators


def decision_latencies(sent: list[tuple[float, str, str, str]], coil_writes: list[tuple[float, int, bool]],
                       open_coil: dict[str, int], since: float = 0.0, until: float = float("inf"),
                       skip_first: int = 0) -> list[float]:
    """Seconds from each release answer leaving the authority (in ``[since, until)``) to
    the lane's open coil being switched on at the IO module (its first write after the
    answer). ``skip_first`` answers per lane are left out (warm-up)."""
    import bisect

    ons: dict[int, list[float]] = {}
    for t, address, value in coil_writes:
        if value:
            ons.setdefault(address, []).append(t)
    out = []
    seen: dict[str, int] = {}
    for t, lane, _rid, decision in sent:
        if decision != "release" or not since <= t < until:
            continue
        seen[lane] = seen.get(lane, 0) + 1
        if seen[lane] <= skip_first:
            continue
        times = ons.get(open_coil[lane], [])
        i = bisect.bisect_right(times, t)
        if i < len(times):
            out.append(times[i] - t)
    return out


# ------------------------------------------------------------------------ processes


def thread_sched(pid: int) -> dict[str, tuple[float, float]]:
    """Per thread of ``pid`` (by thread id): seconds run on a processor and seconds spent
    runnable, waiting for one (``/proc/<pid>/task/*/schedstat``)."""
    out: dict[str, tuple[float, float]] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            run_ns, wait_ns, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        out[task.name] = (int(run_ns) / 1e9, int(wait_ns) / 1e9)
    return out


def sched_shares(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
                 seconds: float) -> dict[str, object]:
    """The daemon's share of the window on a processor and runnable but waiting for one:
    the whole process, and its busiest threads (the control loop is the first, as a rule;
    Python does not name its threads for the kernel)."""
    threads = []
    for tid, (run, wait) in after.items():
        run0, wait0 = before.get(tid, (0.0, 0.0))
        threads.append(((run - run0) / seconds, (wait - wait0) / seconds))
    threads.sort(reverse=True)
    return {"cpu": round(sum(c for c, _ in threads), 4), "runqueue_wait": round(sum(w for _, w in threads), 4),
            "busiest": [{"cpu": round(c, 4), "runqueue_wait": round(w, 4)} for c, w in threads[:3]]}


def cpu_ticks() -> list[int]:
    """The machine's ``cpu`` line of ``/proc/stat`` (user, nice, system, idle, iowait, irq,
    softirq, steal, ...), in ticks."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return []


def steal_share(before: list[int], after: list[int]) -> float:
    """Of the machine's processor time over a window, the share the hypervisor gave to
    other guests (``steal``): time this machine's runnable work could not run at all."""
    if len(before) < 8 or len(after) < 8:
        return float("nan")
    total = sum(after[:8]) - sum(before[:8])
    return (after[7] - before[7]) / total if total > 0 else float("nan")


def proc_cpu_s(pid: int) -> float:
    """CPU seconds of a process so far, summed over its live threads.

    From ``/proc/<pid>/task/*/schedstat`` (nanoseconds), not ``/proc/<pid>/stat``, whose
    10 ms ticks are too coarse for an idle daemon over a few seconds. Falls back to
    ``stat`` where schedstat is missing.
    """
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9
    except (OSError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB (10^6 bytes)."""
    rss = hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024 / 1e6
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024 / 1e6
    return rss, hwm


def self_cpu_s() -> float:
    return time.process_time()


class Child:
    """A helper process we started, stopped by its own pid (never by name)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None,
                 nice: int | None = None) -> None:
        """``nice``: the niceness to run at (raising a priority needs root; without it the
        child runs at ours, and says so in its log)."""
        if nice is not None:  # nice(1) execs the command: the pid stays the command's
            args = ["nice", "-n", str(nice - os.getpriority(os.PRIO_PROCESS, 0)), *args]
        self.args = args
        self.log = log
        out = open(log, "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(args, stdout=out, stderr=out, env=env, cwd=str(ROOT))
        finally:
            out.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not go within ``timeout``."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""


def daemon(config: Path, log: Path) -> Child:
    """``gatectl run --config`` in its own process, as its systemd unit starts it."""
    return Child([sys.executable, "-m", "gatectl", "run", "--config", str(config)], log, nice=LANE_NICE)


async def wait_http_ok(url: str, child: Child, timeout: float = 30.0) -> None:
    """Until ``url`` answers 200 (the daemon's API is up), or fail with the child's log."""
    import aiohttp

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            if not child.alive():
                raise RuntimeError(f"{child.args[:4]} exited:\n{child.tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            if loop.time() > end:
                raise RuntimeError(f"{url} never answered:\n{child.tail()}")
            await asyncio.sleep(0.05)


async def until(predicate: Callable[[], bool], timeout: float, step: float = 0.02, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        await asyncio.sleep(step)


def fmt_num(x: float | None) -> str:
    if x is None or x != x:  # None or NaN
        return "-"
    ax = abs(x)
    if ax >= 100:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"
