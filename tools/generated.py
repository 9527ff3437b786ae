"""Where the generators write, and what each does with its text: write it, or with --check say whether the
committed file is still what it would write (the tests run the check)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "cronjobs"  # the Helm chart: what `helm install cellar ./cronjobs` installs
CRDS = CHART / "crds"


def write_or_check(output: Path, text: str, command: str) -> int:
    """Write `text` to `output`; with --check, exit 1 (naming `command`) where the file differs."""
    if sys.argv[1:] == ["--check"]:
        if not output.exists() or output.read_text() != text:
            print(f"{output.name} is out of date: run {command}", file=sys.stderr)
            return 1
        return 0
    output.write_text(text)
    return 0
