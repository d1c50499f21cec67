"""systemd service notification (sd_notify) from the event loop: READY, WATCHDOG, STOPPING, STATUS.

The protocol needs no libsystemd: each message is one datagram of ``KEY=value`` lines sent
to the AF_UNIX socket named in ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace). Without ``NOTIFY_SOCKET`` (a terminal, a test, a container) everything here is
a no-op.

``run_notifier(site, stop)`` is one asyncio task beside the lanes:

- ``STATUS=`` lines while the lanes start ("waiting for B1-IN ...") and while they run
  (lanes, open faults), so ``systemctl status gatectl`` says what the daemon is doing;
- ``READY=1`` once every lane runs (``site.running``, what ``/api/v1/health`` reports).
  If a lane still waits for its devices after ``ready_grace_s`` (an IO module unplugged at
  boot), ``READY=1`` is sent anyway with a STATUS naming the lanes still starting: they
  fail closed on their own, and a start timeout would make systemd restart the whole
  process — every other lane and the guard's screen with it — every 90 s to no avail;
- ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2`` (``WatchdogSec=`` in the unit). The pings come
  from this task, on the event loop, so a wedged loop (a blocking call, a busy loop) stops
  them and systemd kills and restarts the daemon — the point of the watchdog;
- ``STOPPING=1`` when ``stop`` is set (SIGTERM) or the task is cancelled at shutdown.

The task never returns before ``stop`` is set (``Site.run`` treats a finished task as a
failure), and never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Mapping
from typing import Any

import structlog

log = structlog.get_logger("gatectl.systemd")

#: Send READY=1 after this long even if some lane still waits for its devices; below the
#: unit's TimeoutStartSec=90.
READY_GRACE_S = 60.0
#: How often STATUS is refreshed (sent only when it changed) once the daemon runs.
STATUS_EVERY_S = 2.0
#: How often the lanes are looked at while they start.
START_POLL_S = 0.1
#: systemd shows STATUS on one line; keep it readable.
STATUS_MAX = 240


def notify_address(value: str | None) -> str | None:
    """The socket address in ``$NOTIFY_SOCKET``: a path, or ``@name`` → abstract ``\\0name``.
    None when unset or of a kind this module does not speak (e.g. ``vsock:``)."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET of an unsupported kind; not notifying systemd", notify_socket=value)
    return None


def watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """The watchdog timeout from ``$WATCHDOG_USEC`` (None when off or meant for another pid)."""
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID")
    try:
        usec = int(raw)
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        log.warning("ignoring malformed watchdog settings", watchdog_usec=raw, watchdog_pid=pid)
        return None
    return usec / 1_000_000 if usec > 0 else None


class Notifier:
    """Sends sd_notify messages; a no-op without ``NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = notify_address(env.get("NOTIFY_SOCKET"))
        self.watchdog_s = watchdog_seconds(env) if self.address is not None else None
        self._sock: socket.socket | None = None
        self._failing = False
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def ping_interval_s(self) -> float | None:
        """Half the watchdog timeout, as sd_watchdog_enabled(3) advises; None without one."""
        return None if self.watchdog_s is None else self.watchdog_s / 2

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram. False when disabled or it failed (logged
        once per outage: systemd may be re-executing; the next message tries again)."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning("systemd notification failed", error=str(exc), message=assignments[0] if assignments else "")
            return False
        if self._failing:
            self._failing = False
            log.info("systemd notifications delivered again")
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={_one_line(status)}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={_one_line(status)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= STATUS_MAX else text[: STATUS_MAX - 1] + "…"


def describe(site: Any, ready: bool) -> str:
    """One STATUS line: which lanes start or run, and the open faults."""
    lanes = list(site.lanes.values())
    starting = [lane.id for lane in lanes if not lane.core.running]
    faults = [f"{lane.id}/{device}" for lane in lanes for device in sorted(lane.core.faults)]
    if not ready:
        text = f"starting: waiting for the first inputs of {', '.join(starting)}" if starting else "starting"
    elif starting:
        text = f"running {len(lanes) - len(starting)}/{len(lanes)} lanes; still starting (failing closed): " + ", ".join(
            starting
        )
    else:
        text = f"running {len(lanes)} lane{'s' if len(lanes) != 1 else ''}"
    if faults:
        text += "; faults: " + ", ".join(faults)
    return text


async def run_notifier(
    site: Any,
    stop: asyncio.Event,
    *,
    notifier: Notifier | None = None,
    ready_grace_s: float = READY_GRACE_S,
    status_every_s: float = STATUS_EVERY_S,
) -> None:
    """Tell systemd how the daemon is doing until ``stop`` is set (see the module doc)."""
    n = notifier if notifier is not None else Notifier()
    if not n.enabled:
        await stop.wait()
        return
    loop = asyncio.get_running_loop()
    log.info("notifying systemd", watchdog_s=n.watchdog_s)
    stopped = asyncio.ensure_future(stop.wait())
    started = loop.time()
    interval = n.ping_interval_s
    next_ping = started
    ready = False
    last_status: str | None = None
    try:
        while not stop.is_set():
            now = loop.time()
            try:
                if not ready and (site.running or now - started >= ready_grace_s):
                    ready = True
                    last_status = describe(site, ready)
                    n.ready(last_status)
                    log.info("ready", status=last_status)
                status = describe(site, ready)
                if status != last_status:
                    last_status = status
                    n.status(status)
            except Exception:  # noqa: BLE001 - the pings below must go on whatever
                log.exception("systemd status failed")
            if interval is not None and now >= next_ping:
                n.watchdog()
                next_ping = now + interval
            wait = START_POLL_S if not ready else status_every_s
            if interval is not None:
                wait = min(wait, max(0.0, next_ping - now))
            await asyncio.wait({stopped}, timeout=wait)
    finally:
        stopped.cancel()
        with contextlib.suppress(Exception):
            n.stopping()
        n.close()
