"""Named points where a test can stop a job to kill it there (SIGKILL/SIGTERM), like etcd's gofail.

Inert unless CELLAR_FAILPOINTS names the point. `name` alone: the job prints `FAILPOINT <name>` on
stdout and waits there so that the test can kill it. `name=error-after:N`: the first N passes go
through, the next raises an error as a failed upload would. `name=wait-for:PATH`: the job prints the line
and waits until the file PATH exists, then goes on. Production never sets the variable.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from common.errors import InjectedFailure


def _parse(value: str) -> dict[str, int | str | None]:
    points: dict[str, int | str | None] = {}
    for item in (p for p in value.split(",") if p):
        name, _, action = item.partition("=")
        if action.startswith("error-after:"):
            points[name] = int(action.removeprefix("error-after:"))
        elif action.startswith("wait-for:"):
            points[name] = action.removeprefix("wait-for:")
        else:
            points[name] = None
    return points


_ENABLED = _parse(os.environ.get("CELLAR_FAILPOINTS", ""))
_passes: dict[str, int] = {}
_lock = threading.Lock()


def failpoint(name: str) -> None:
    if name not in _ENABLED:
        return
    fail_after = _ENABLED[name]
    if isinstance(fail_after, str):
        sys.stdout.write(f"FAILPOINT {name}\n")
        sys.stdout.flush()
        while not os.path.exists(fail_after):
            time.sleep(0.05)
        return
    if fail_after is not None:
        with _lock:
            _passes[name] = _passes.get(name, 0) + 1
            if _passes[name] > fail_after:
                raise InjectedFailure(f"failpoint {name}: injected failure after {fail_after} passes")
        return
    sys.stdout.write(f"FAILPOINT {name}\n")
    sys.stdout.flush()
    while True:  # until killed
        time.sleep(0.1)
