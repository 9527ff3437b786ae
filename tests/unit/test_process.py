"""The identity line of "run started": read from /proc/self/status as the kernel writes it."""

from __future__ import annotations

import os
from pathlib import Path

from common.process import process_identity

CONFINED = """Name:\tpython3
Uid:\t1000770000\t1000770000\t1000770000\t1000770000
Gid:\t0\t0\t0\t0
CapInh:\t0000000000000000
CapPrm:\t0000000000000000
CapEff:\t0000000000000000
NoNewPrivs:\t1
Seccomp:\t2
Seccomp_filters:\t1
"""


def test_a_confined_process(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(CONFINED)
    identity = process_identity(status)
    assert identity["capabilities"] == "0000000000000000"
    assert identity["no_new_privs"] is True
    assert identity["seccomp"] == "filter"
    assert identity["uid"] == os.getuid()  # the ids come from the process itself, not the file
    assert identity["read_only_root"] is False  # this machine's root is writable


def test_this_process() -> None:
    identity = process_identity()
    assert set(identity) >= {"uid", "gid", "groups", "capabilities", "no_new_privs", "seccomp", "read_only_root"}
    assert identity["seccomp"] in {"disabled", "strict", "filter"}


def test_no_proc(tmp_path: Path) -> None:
    identity = process_identity(tmp_path / "missing")
    assert set(identity) == {"uid", "gid", "groups", "read_only_root"}
