"""Named points where a test can stop a job to kill it there (SIGKILL/SIGTERM), like etcd's gofail.

Inert unless CELLAR_FAILPOINTS names the point: then the job prints `FAILPOINT <name>` on stdout and
waits there so that the test can kill it. Production never sets the variable.
"""

from __future__ import annotations

import os
import sys
import time

_ENABLED = frozenset(p for p in os.environ.get("CELLAR_FAILPOINTS", "").split(",") if p)


def failpoint(name: str) -> None:
    if name not in _ENABLED:
        return
    sys.stdout.write(f"FAILPOINT {name}\n")
    sys.stdout.flush()
    while True:  # until killed
        time.sleep(0.1)
