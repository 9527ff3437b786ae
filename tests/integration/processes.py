"""Jobs as real processes, for tests that kill or signal them.

A `Job`'s stdout and stderr are drained by threads of its own from the start, so a test can wait for a line
with a bound (a hung job fails the test instead of hanging it), a chatty job never blocks on a full pipe, and
what the job printed before it was killed is still there to report where the kill landed.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from tests.harness.cluster import REPO

# Long enough for a job's start-up and first unit of work on a loaded two-core machine.
LINE_TIMEOUT = 180.0


class Job:
    """A running job process; stdout is kept line by line as it arrives."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self._process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._changed = threading.Condition()
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=self._drain, args=(stream, into), daemon=True)
            for stream, into in ((self._process.stdout, self._out), (self._process.stderr, self._err))
        ]
        for reader in self._readers:
            reader.start()

    def _drain(self, stream: IO[str] | None, into: list[str]) -> None:
        assert stream is not None
        for line in stream:
            with self._changed:
                into.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    def lines(self) -> list[str]:
        """What the job has printed on stdout so far."""
        with self._changed:
            return list(self._out)

    def count(self, text: str) -> int:
        """How many stdout lines so far contain `text`."""
        return sum(text in line for line in self.lines())

    def wait_for_line(self, *wanted: str, timeout: float = LINE_TIMEOUT) -> str:
        """Wait until a stdout line contains one of `wanted`; return that line. Fails if the job ends first or
        nothing matches within `timeout` seconds (then the job is killed, so that no stray run holds locks)."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self._out[seen:]:
                    if any(text in line for text in wanted):
                        return line
                seen = len(self._out)
                if self._process.poll() is not None and not self._readers[0].is_alive():
                    stderr = "".join(self._err)[-3000:]
                    raise AssertionError(f"job exited {self._process.returncode} before printing {wanted!r}: {stderr}")
                left = deadline - time.monotonic()
                if left <= 0:
                    self._process.kill()
                    raise AssertionError(f"job printed none of {wanted!r} within {timeout:.0f} s")
                self._changed.wait(timeout=min(left, 0.5))

    def reaches(self, *wanted: str, timeout: float = LINE_TIMEOUT) -> bool:
        """Like `wait_for_line`, but False where the job ended on its own first (for example with nothing left
        to do)."""
        try:
            self.wait_for_line(*wanted, timeout=timeout)
        except AssertionError:
            if self._process.poll() is None:
                raise
            return False
        return True

    def send_signal(self, signum: int) -> None:
        self._process.send_signal(signum)

    def wait(self, timeout: float = LINE_TIMEOUT) -> int:
        returncode = self._process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=30)
        return returncode

    def communicate(self, timeout: float = LINE_TIMEOUT) -> tuple[str, str]:
        """Wait for the job to exit; everything it printed on stdout and on stderr."""
        self.wait(timeout)
        with self._changed:
            return "".join(self._out), "".join(self._err)


def start_process(module: str, *args: str, env: dict[str, str] | None = None) -> Job:
    """`python -m <module> <args>` in the repository, with `env` added to this process's environment."""
    return Job([sys.executable, "-m", module, *args], {**os.environ, **(env or {})})


def start_job(
    module: str,
    kubeconfig: Path,
    namespace: str,
    name: str,
    *args: str,
    failpoint: str = "",
    env: dict[str, str] | None = None,
) -> Job:
    """`python -m <module> <args> --kubeconfig … --namespace … --name …`, with `env` added to the environment."""
    settings = {"CELLAR_FAILPOINTS": failpoint, "CELLAR_TERMINATION_LOG": "/nonexistent/x", **(env or {})}
    where = ["--kubeconfig", str(kubeconfig), "--namespace", namespace, "--name", name]
    return start_process(module, *args, *where, env=settings)


def wait_for_line(job: Job, wanted: str, timeout: float = LINE_TIMEOUT) -> str:
    return job.wait_for_line(wanted, timeout=timeout)


def run_until_failpoint(module: str, kubeconfig: Path, namespace: str, name: str, failpoint: str, *args: str) -> Job:
    job = start_job(module, kubeconfig, namespace, name, *args, failpoint=failpoint)
    job.wait_for_line(f"FAILPOINT {failpoint}")
    return job


class KillStorm:
    """SIGKILLs a series of runs of one job and records where each kill landed: before any unit of work
    (start-up, cleanup, planning), or mid-work (after the job printed at least one of `work`), or nowhere
    because the run ended on its own. A storm whose kills all land before the work tests nothing."""

    def __init__(self, work: tuple[str, ...], seed: int) -> None:
        self.work = work
        self.rng = random.Random(seed)
        self.landings: collections.Counter[str] = collections.Counter()

    def kill_at_random(self, job: Job, *, seconds: float) -> None:
        """Kill anywhere in the run: at a random moment within `seconds` after its start-up."""
        if job.reaches('"run started"'):
            time.sleep(self.rng.uniform(0, seconds))
        self.kill(job)

    def kill_mid_work(self, job: Job, *, seconds: float) -> None:
        """Kill at a random moment within `seconds` after the run's first unit of work."""
        if job.reaches(*self.work):
            time.sleep(self.rng.uniform(0, seconds))
        self.kill(job)

    def kill(self, job: Job) -> None:
        done = sum(job.count(line) for line in self.work)
        job.send_signal(signal.SIGKILL)
        job.wait()
        if job.returncode != -signal.SIGKILL:
            self.landings[f"exited {job.returncode}"] += 1
        else:
            self.landings["mid-work" if done else "before any work"] += 1

    def __str__(self) -> str:
        return ", ".join(f"{where}: {count}" for where, count in sorted(self.landings.items()))
