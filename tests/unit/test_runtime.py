from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from common.errors import CellarError, ConnectionFailed, Forbidden, Interrupted, InvalidSpec, UsageError
from common.progress import ProgressReporter
from common.runtime import Interrupts, exit_code_for


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (None, 0),
        (UsageError("x"), 2),
        (InvalidSpec("x"), 3),
        (Forbidden("x"), 3),
        (ConnectionFailed("x"), 1),
        (CellarError("x"), 1),
        (RuntimeError("x"), 1),
        (Interrupted("x"), 143),
    ],
)
def test_exit_codes(error: BaseException | None, code: int) -> None:
    assert exit_code_for(error) == code


def test_sigterm_raises_interrupted_once() -> None:
    interrupts = Interrupts()
    interrupts.install()
    try:
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before kill() returns to Python code
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM during cleanup does not raise again
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_deferred_sigterm_waits_for_a_check() -> None:
    interrupts = Interrupts()
    interrupts.install()
    try:
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            assert interrupts.requested.is_set()
            with pytest.raises(Interrupted, match="stopped at a safe point"):
                interrupts.check()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_progress_publishes_at_most_every_interval() -> None:
    now = [0.0]
    published: list[dict[str, object]] = []
    reporter = ProgressReporter("bytes", 1000, published.append, clock=lambda: now[0], status_interval=30)
    for second in range(0, 100, 5):
        now[0] = float(second)
        reporter.update(second * 10)
    assert [p["done"] for p in published] == [300, 600, 900]
    assert published[0]["ratePerSecond"] == 10.0
    assert "eta" in published[0]


def test_progress_without_a_total_yet_has_no_eta_until_it_is_set() -> None:
    now = [0.0]
    reporter = ProgressReporter("rows", None, None, clock=lambda: now[0])
    now[0] = 10.0
    reporter.update(500)
    before = reporter.snapshot()
    assert before["done"] == 500
    assert "total" not in before
    assert "eta" not in before
    reporter.set_total(2000)
    after = reporter.snapshot()
    assert after["total"] == 2000
    assert "eta" in after


def test_an_estimated_total_that_the_work_passes_shows_the_work_done_and_no_eta() -> None:
    now = [0.0]
    reporter = ProgressReporter("rows", 1000, None, clock=lambda: now[0])
    now[0] = 10.0
    reporter.update(900)
    assert reporter.snapshot()["total"] == 1000
    assert "eta" in reporter.snapshot()
    reporter.update(1200)
    passed = reporter.snapshot()
    assert passed["total"] == 1200
    assert "eta" not in passed


@pytest.mark.parametrize("job", ["jobs.backup", "jobs.archive"])
def test_usage_into_a_closed_pipe_is_no_error(job: str) -> None:
    """`cellar-backup --help | head -1`: the reader is gone before the usage is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", job, "--help"], stdout=write_end, stderr=subprocess.PIPE, text=True, check=False
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, "")
