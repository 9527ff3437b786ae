"""pg_dump and pg_restore: finding them, their versions, and running them without a password on argv."""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from common.errors import PermanentError

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def tool_path(name: str) -> str:
    """`CELLAR_PG_BINDIR/<name>` when set (images pin the client version), else from PATH."""
    bindir = os.environ.get("CELLAR_PG_BINDIR")
    if bindir:
        candidate = Path(bindir) / name
        if not os.access(candidate, os.X_OK):
            raise PermanentError(f"{candidate} is not executable (CELLAR_PG_BINDIR={bindir})", reason="ToolMissing")
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise PermanentError(
            f"{name} not found on PATH: install the PostgreSQL client (postgresql-client) or set CELLAR_PG_BINDIR",
            reason="ToolMissing",
        )
    return found


@dataclass(frozen=True)
class ToolVersion:
    text: str
    major: int


def tool_version(name: str) -> ToolVersion:
    output = subprocess.run(
        [tool_path(name), "--version"], capture_output=True, text=True, check=False, timeout=30
    ).stdout.strip()
    match = _VERSION.search(output)
    if not match:
        raise PermanentError(f"cannot read the version of {name} from {output!r}", reason="ToolMissing")
    return ToolVersion(output, int(match.group(1)))


def check_pg_dump_supports(server_version_num: int, server_version: str) -> ToolVersion:
    """Refuse a pg_dump older than the server: it cannot dump a newer server's catalog."""
    dump = tool_version("pg_dump")
    server_major = server_version_num // 10000
    if dump.major < server_major:
        raise PermanentError(
            f"pg_dump {dump.major} is older than the server ({server_version}); pg_dump must be at least the "
            f"server's major version. Use an image with pg_dump {server_major} or newer "
            "(or set CELLAR_PG_BINDIR)",
            reason="PgDumpTooOld",
        )
    return dump


class StderrTail:
    """Collects the last lines a child process writes to stderr, on a thread, so the pipe never fills."""

    def __init__(self, stream: IO[bytes], lines: int = 40) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self._lines.append(raw.decode("utf-8", errors="replace").rstrip())

    def text(self) -> str:
        self._thread.join(timeout=5)
        return "\n".join(line for line in self._lines if line)

    def error_lines(self) -> str:
        """The lines that say what went wrong (pg_dump: error: ...), or everything when none is marked."""
        text = self.text()
        marked = [line for line in text.splitlines() if "error" in line.lower() or "fatal" in line.lower()]
        return "\n".join(marked or text.splitlines()[-5:])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
