"""Run one benchmark variant in a fresh wrapper process, so its rusage covers exactly that variant."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_WRAPPER = (
    "import json, resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "done = subprocess.run(json.loads(sys.argv[1]), stdout=subprocess.PIPE)\n"
    "wall = time.perf_counter() - start\n"
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "sys.stderr.buffer.write(done.stdout)\n"
    "print(json.dumps({'code': done.returncode, 'wall': wall, 'cpu': usage.ru_utime + usage.ru_stime,"
    " 'maxrss_kb': usage.ru_maxrss}))\n"
)


@dataclass
class Run:
    wall: float
    cpu: float
    peak_rss_mb: float
    output: str  # what the variant printed on stdout (cellar's JSON log lines, a loop's figures)


def run_measured(name: str, argv: list[str], env: dict[str, str]) -> Run:
    """Wall time, CPU time of all its processes, and the peak RSS of the largest one."""
    result = subprocess.run(
        [sys.executable, "-c", _WRAPPER, json.dumps(argv)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "{}"
    figures = json.loads(last)
    if figures.get("code") != 0:
        raise SystemExit(f"{name} failed ({figures}):\n{result.stderr[-3000:]}")
    return Run(figures["wall"], figures["cpu"], figures["maxrss_kb"] / 1024, result.stderr)
