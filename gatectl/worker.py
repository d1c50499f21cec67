"""Bulk work (a ledger export) in a process of its own, at a lower CPU priority.

A ledger export is seconds of pure Python that makes millions of objects. In a thread of
the daemon it holds the interpreter's lock for tens of milliseconds at a time (its
garbage collections, its XML writing), and no thread of the daemon runs meanwhile, the
lanes' control loop included: with an export running, the control loop woke up to 40 ms
late (``docs/performance.md``, bench 9). In a child process it shares no lock with the
lanes, and at ``NICE`` the kernel gives the lanes a processor first.

One worker per daemon, started on first use (``spawn``: a fresh interpreter, nothing
inherited from the daemon's threads) and kept for the next job; one job at a time. It is
a daemonic process: it ends with the daemon. A job is a picklable callable and its
arguments; its result (or exception) comes back pickled. ``call`` blocks: run it with
``asyncio.to_thread``. A job whose caller sets ``stop`` is told to stop (it gets
``STOP`` as its ``stop`` argument, an event set in the worker); a worker that died is
started again for the next job.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable
from typing import Any

#: The worker's niceness above the daemon's (0 .. 19; higher is lower priority).
NICE = 10
#: How often a waiting caller looks at its stop flag (seconds).
POLL_S = 0.1


class _Stop:
    """Placeholder for the worker's stop event in a job's keyword arguments."""

    def __repr__(self) -> str:
        return "STOP"


#: Pass as ``stop=STOP``: the job gets an event that is set when its caller stops it.
STOP = _Stop()


def _serve(conn: Any, stop: Any) -> None:
    """The worker process: take jobs until the pipe closes."""
    try:
        os.nice(NICE)
    except OSError:
        pass
    while True:
        try:
            fn, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        kwargs = {k: (stop if v is STOP or isinstance(v, _Stop) else v) for k, v in kwargs.items()}
        try:
            reply = ("ok", fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - the caller gets it
            reply = ("error", exc)
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - a result that does not pickle
            conn.send(("error", RuntimeError(f"worker result could not be sent back: {exc!r}")))


class Worker:
    """A child process for bulk jobs (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: Any = None
        self._stop: Any = None

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        if self._conn is not None:
            self._conn.close()
        parent, child = self._ctx.Pipe()
        self._stop = self._ctx.Event()
        self._proc = self._ctx.Process(target=_serve, args=(child, self._stop), name="gatectl-worker", daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def call(self, fn: Callable[..., Any], args: tuple = (), kwargs: dict[str, Any] | None = None, *,
             stop: threading.Event | None = None) -> Any:
        """``fn(*args, **kwargs)`` in the worker; its result, or its exception raised here.
        When ``stop`` is set meanwhile, the job's ``STOP`` event is set (it should give up)."""
        kwargs = kwargs or {}
        with self._lock:
            self._ensure()
            self._stop.clear()
            self._conn.send((fn, args, kwargs))
            try:
                while not self._conn.poll(POLL_S):
                    if stop is not None and stop.is_set():
                        self._stop.set()
                    if not self._proc.is_alive():
                        raise EOFError
                status, value = self._conn.recv()
            except (EOFError, OSError):
                self._proc.join(timeout=5)
                raise RuntimeError(f"the worker process ended (exit code {self._proc.exitcode})") from None
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._proc is not None:
                self._proc.join(timeout=5)
                if self._proc.is_alive():
                    self._proc.terminate()
                self._proc = None


_worker: Worker | None = None
_worker_lock = threading.Lock()


def worker() -> Worker:
    """This process's worker (made on first use)."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = Worker()
        return _worker


__all__ = ["STOP", "NICE", "Worker", "worker"]
