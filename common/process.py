"""What the process was given to run with: user, groups, capabilities, seccomp and a read-only root.

Logged with "run started", so that when a cluster's policy (OpenShift's SCC, a Pod Security profile, the
container runtime) decides these, the run's first line says what it decided.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

STATUS = Path("/proc/self/status")
SECCOMP_MODES = {"0": "disabled", "1": "strict", "2": "filter"}


def process_identity(status: Path = STATUS) -> dict[str, Any]:
    """uid, gid, groups, effective capabilities (hex), no_new_privs, seccomp mode, read-only root."""
    identity: dict[str, Any] = {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups())}
    try:
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    except OSError:  # not Linux: the ids are all there is
        fields = {}
    if "CapEff" in fields:
        identity["capabilities"] = fields["CapEff"].strip()
    if "NoNewPrivs" in fields:
        identity["no_new_privs"] = fields["NoNewPrivs"].strip() == "1"
    if "Seccomp" in fields:
        identity["seccomp"] = SECCOMP_MODES.get(fields["Seccomp"].strip(), fields["Seccomp"].strip())
    identity["read_only_root"] = bool(os.statvfs("/").f_flag & os.ST_RDONLY)
    return identity
