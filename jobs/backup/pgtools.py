"""pg_dump and pg_restore: finding them, their versions, and running them without a password on argv."""

from __future__ import annotations

import collections
import functools
import glob
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from common.errors import PermanentError
from common.reasons import Reason

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


# Where PostgreSQL client tools of several majors live side by side: PGDG's RPMs (the image) and
# Debian's or Ubuntu's packages. The first directory found for a major wins.
_LAYOUTS = ("/usr/pgsql-*/bin", "/usr/lib/postgresql/*/bin")
# pg_restore 17 and newer begin every restore with SET transaction_timeout = 0, which servers before
# 17 reject: such a pg_restore cannot restore into them.
TRANSACTION_TIMEOUT_SINCE = 17


@dataclass(frozen=True)
class ClientTools:
    """pg_dump, pg_restore and psql of one PostgreSQL major, from one directory."""

    major: int
    version: str  # "18.6"
    bindir: Path

    def path(self, name: str) -> str:
        candidate = self.bindir / name
        if not os.access(candidate, os.X_OK):
            raise PermanentError(
                f"{candidate} is missing or not executable: install the PostgreSQL {self.major} client tools "
                "there, or point CELLAR_PG_BINDIR at directories that hold pg_dump and pg_restore",
                reason=Reason.TOOL_MISSING,
            )
        return str(candidate)

    def describe(self, name: str) -> str:
        return f"{name} {self.version}"


def _candidate_directories() -> tuple[list[Path], str]:
    """The directories to look in, and where that list came from (for error messages)."""
    configured = os.environ.get("CELLAR_PG_BINDIR")
    if configured:
        return [Path(part) for part in configured.split(os.pathsep) if part], f"CELLAR_PG_BINDIR={configured}"
    directories = [Path(found) for layout in _LAYOUTS for found in sorted(glob.glob(layout))]
    on_path = shutil.which("pg_dump")
    if on_path:
        directories.append(Path(on_path).resolve().parent)
    return directories, f"PATH and {', '.join(_LAYOUTS)}"


def _read_version(bindir: Path) -> tuple[int, str] | None:
    pg_dump = bindir / "pg_dump"
    if not os.access(pg_dump, os.X_OK):
        return None
    output = subprocess.run(
        [str(pg_dump), "--version"], capture_output=True, text=True, check=False, timeout=30
    ).stdout.strip()
    match = _VERSION.search(output)
    if not match:
        raise PermanentError(f"cannot read the version of {pg_dump} from {output!r}", reason=Reason.TOOL_MISSING)
    return int(match.group(1)), match.group(0).split()[-1]


@functools.cache
def _installed(directories: tuple[Path, ...]) -> tuple[ClientTools, ...]:
    by_major: dict[int, ClientTools] = {}
    for bindir in directories:
        found = _read_version(bindir)
        if found is not None and found[0] not in by_major:
            by_major[found[0]] = ClientTools(found[0], found[1], bindir)
    return tuple(by_major[major] for major in sorted(by_major))


def installed_client_tools() -> tuple[ClientTools, ...]:
    """Every PostgreSQL major whose client tools are installed here, oldest first (at least one)."""
    directories, source = _candidate_directories()
    tools = _installed(tuple(directories))
    if not tools:
        raise PermanentError(
            f"no pg_dump found (looked in {source}): install the PostgreSQL client tools or set CELLAR_PG_BINDIR",
            reason=Reason.TOOL_MISSING,
        )
    return tools


def _majors(tools: Sequence[ClientTools]) -> str:
    return ", ".join(str(t.major) for t in tools)


def major_of(version: str) -> int | None:
    """The major of a version as servers and tools print it ("15.19", "18.6 (Debian ...)", "pg_dump
    (PostgreSQL) 17.2"); None when there is none."""
    match = re.search(r"(?<![\d.])(\d+)(?:\.\d+)?", version.rsplit("(PostgreSQL)", maxsplit=1)[-1])
    return int(match.group(1)) if match else None


def tools_for_dump(server_version_num: int, server_version: str) -> ClientTools:
    return pick_dump_tools(installed_client_tools(), server_version_num, server_version)


def pick_dump_tools(tools: Sequence[ClientTools], server_version_num: int, server_version: str) -> ClientTools:
    """Of `tools` (oldest first), the client tools of the server's own major, else the nearest newer ones installed.

    Dumping with the server's own major keeps the archive readable by that major's stock pg_restore,
    and the restore test (on the same server) free of settings the server does not know.
    A pg_dump older than the server cannot read its catalog: refused.
    """
    server_major = server_version_num // 10000
    usable = [t for t in tools if t.major >= server_major]
    if not usable:
        newest = tools[-1]
        raise PermanentError(
            f"pg_dump {newest.major} is older than the server ({server_version}); pg_dump must be at least the "
            f"server's major version, and the newest installed is {newest.describe('pg_dump')} (majors "
            f"{_majors(tools)}). Use an image with the PostgreSQL {server_major} client tools or newer "
            "(or set CELLAR_PG_BINDIR)",
            reason=Reason.PG_DUMP_TOO_OLD,
        )
    return usable[0]


def tools_for_restore(target_version_num: int, target_version: str, dumped_by: str, dumped_server: str) -> ClientTools:
    return pick_restore_tools(installed_client_tools(), target_version_num, target_version, dumped_by, dumped_server)


def pick_restore_tools(
    tools: Sequence[ClientTools], target_version_num: int, target_version: str, dumped_by: str, dumped_server: str
) -> ClientTools:
    """Of `tools` (oldest first), the client tools to restore an archive written by `dumped_by` (the
    manifest's pg_dump version, from a server of `dumped_server`) into a server: the oldest that can
    read the archive (pg_restore at least pg_dump's major) and is at least the target's major, else the
    newest that can read it.

    Into an older major than the dump's, PostgreSQL promises nothing: it works only where the dump uses
    nothing the older server lacks. A pg_restore of 17 or newer cannot connect its restore to a server before
    17 (it sets transaction_timeout first): such a restore goes through SQL instead (restores_through_sql).
    """
    target_major = target_version_num // 10000
    archive_major = major_of(dumped_by) or 0
    readable = [t for t in tools if t.major >= archive_major]
    if not readable:
        raise PermanentError(
            f"the backup was written by {dumped_by}; pg_restore must be at least {archive_major} to read it, and "
            f"the installed client tools are majors {_majors(tools)}. Use an image with the PostgreSQL "
            f"{archive_major} client tools or newer (or set CELLAR_PG_BINDIR)",
            reason=Reason.PG_RESTORE_TOO_OLD,
        )
    at_least_target = [t for t in readable if t.major >= target_major]
    return at_least_target[0] if at_least_target else readable[-1]


def restores_through_sql(tools: ClientTools, target_version_num: int) -> bool:
    """Whether these tools must restore into that server through SQL (`pg_restore -f -` into the target's
    psql, without the settings the server does not know) rather than connecting themselves: a pg_restore of
    17 or newer begins every restore with SET transaction_timeout, which servers before 17 reject."""
    return target_version_num // 10000 < TRANSACTION_TIMEOUT_SINCE <= tools.major


def psql_for(target_version_num: int, restoring: ClientTools) -> ClientTools:
    """The psql that runs SQL on a server: the server's own major where it is installed, else `restoring`'s."""
    same = [t for t in installed_client_tools() if t.major == target_version_num // 10000]
    return same[0] if same else restoring


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
