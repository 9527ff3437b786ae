"""The archive krew installs for `kubectl krew install cellar` (plugins/cellar.yaml names its sha256).

Byte for byte the same from the same files (fixed mtimes, owners and order, gzip without a timestamp), so the
manifest's sha256 can be checked here and the release uploads what this writes.

Usage: python -m tools.krew_archive OUTPUT.tar.gz   (prints the sha256)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = (("plugins/kubectl-cellar", 0o755), ("LICENSE", 0o644))


def archive_bytes() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relative, mode in FILES:
            data = (REPO / relative).read_bytes()
            info = tarfile.TarInfo(Path(relative).name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def sha256() -> str:
    return hashlib.sha256(archive_bytes()).hexdigest()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    Path(sys.argv[1]).write_bytes(archive_bytes())
    print(sha256())
