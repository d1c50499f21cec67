"""R14: the scheduled ledger is written in the worker process (``gatectl.worker``), not a
thread of the daemon: another process, at a lower CPU priority; its errors come back to
the scheduler, a stop reaches the job, and a worker that died is started again."""

from __future__ import annotations

import os
import threading
import time

import pytest

from gatectl.worker import NICE, STOP, Worker


def whoami() -> tuple[int, int]:
    return os.getpid(), os.getpriority(os.PRIO_PROCESS, 0)


def fail(message: str) -> None:
    raise ValueError(message)


def wait_for_stop(stop) -> str:
    deadline = time.monotonic() + 30
    while not stop.is_set():
        if time.monotonic() > deadline:
            return "never stopped"
        time.sleep(0.01)
    return "stopped"


def die() -> None:
    os._exit(3)


@pytest.fixture
def worker():
    w = Worker()
    yield w
    w.close()


def test_r14_jobs_run_in_another_process_at_a_lower_priority(worker: Worker) -> None:
    pid, nice = worker.call(whoami)
    assert pid != os.getpid()
    assert nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICE)
    assert worker.call(whoami)[0] == pid  # kept for the next job


def test_r14_a_jobs_error_is_raised_to_its_caller(worker: Worker) -> None:
    with pytest.raises(ValueError, match="no directory"):
        worker.call(fail, ("no directory",))
    assert worker.call(whoami)[0] != os.getpid()


def test_r14_a_stop_reaches_the_job(worker: Worker) -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    assert worker.call(wait_for_stop, (), {"stop": STOP}, stop=stop) == "stopped"


def test_r14_a_worker_that_died_is_started_again(worker: Worker) -> None:
    first = worker.call(whoami)[0]
    with pytest.raises(RuntimeError, match="worker process ended"):
        worker.call(die)
    assert worker.call(whoami)[0] not in (first, os.getpid())
