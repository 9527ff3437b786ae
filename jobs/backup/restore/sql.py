"""A restore into a server older than every pg_restore that reads the backup, where that pg_restore is 17 or
newer: it cannot connect its restore to a server before 17 (it opens with SET transaction_timeout), so it
writes SQL (`pg_restore -f -`) that the server's own psql runs in one transaction, without the settings the
server does not know. The checksum is held back as in every restore (restore.py)."""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from common.errors import RestoreFailed
from jobs.backup.pgtools import StderrTail, stop_process
from jobs.backup.restore.plan import RestoreTarget

log = logging.getLogger(__name__)

_SET = re.compile(rb"^SET ([A-Za-z_][A-Za-z0-9_.]*) = .*;\r?\n?$")
_COPY_FROM_STDIN = re.compile(rb"^COPY .* FROM stdin;\r?\n$")
_END_OF_COPY = (b"\\.\n", b"\\.\r\n")


def without_unknown_settings(lines: Iterable[bytes], known: frozenset[str], dropped: set[str]) -> Iterator[bytes]:
    """pg_restore's SQL as it comes, without the `SET name = ...;` lines of settings the server does not know
    (`transaction_timeout` for a server before 17); the rows of a COPY pass as they are."""
    in_copy = False
    for line in lines:
        if in_copy:
            in_copy = line not in _END_OF_COPY
        elif _COPY_FROM_STDIN.match(line):
            in_copy = True
        elif (found := _SET.match(line)) is not None and found.group(1).decode().lower() not in known:
            dropped.add(found.group(1).decode())
            continue
        yield line


class SqlRestore:
    """pg_restore writing SQL (`-f -`) into the server's psql in one transaction (RestorePlan.through_sql).

    psql commits when its input ends, so its input ends only after pg_restore exited 0, which it cannot do
    before it read the archive's held-back end: a pg_restore that fails, or is killed because the checksum
    did not match, leaves psql killed and its transaction rolled back."""

    def __init__(self, target: RestoreTarget):
        self.plan = plan = target.plan
        env = target.environment()
        writer = [plan.tools.path("pg_restore"), "--exit-on-error", "--file=-", *target.options]
        runner = [plan.sql_client.path("psql"), "--no-psqlrc", "--quiet", "--no-password", "--single-transaction"]
        runner += ["--set=ON_ERROR_STOP=1", f"--dbname={target.database.dbname}"]
        self.writer = subprocess.Popen(
            writer, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self.runner = subprocess.Popen(
            runner, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        assert self.writer.stderr is not None
        assert self.runner.stderr is not None
        self.writer_errors, self.runner_errors = StderrTail(self.writer.stderr), StderrTail(self.runner.stderr)
        self.dropped: set[str] = set()
        self._forwarder = threading.Thread(target=self._forward, name="restore-sql", daemon=True)
        self._forwarder.start()

    @property
    def stdin(self) -> Any:
        return self.writer.stdin

    def _forward(self) -> None:
        assert self.writer.stdout is not None
        assert self.runner.stdin is not None
        try:
            for line in without_unknown_settings(self.writer.stdout, self.plan.known_settings, self.dropped):
                self.runner.stdin.write(line)
        except OSError:  # psql stopped at an error: pg_restore must not block on output no one reads
            self.writer.kill()
            return
        if self.writer.wait() == 0:
            with contextlib.suppress(OSError):
                self.runner.stdin.close()  # the end of psql's input: it commits
        else:
            self.runner.kill()  # never commit what a failed pg_restore wrote

    def finish(self) -> None:
        """Wait for both; RestoreFailed naming what failed and what it said."""
        code = self.writer.wait()
        self._forwarder.join()
        ran = self.runner.wait()
        if self.dropped:
            log.info("left out settings the server does not know", extra={"settings": sorted(self.dropped)})
        if ran != 0:
            raise RestoreFailed(
                f"PostgreSQL {self.plan.server_version} refused what {self.plan.tools.describe('pg_restore')} wrote "
                f"(an older major than the backup's, restored through {self.plan.sql_client.describe('psql')}; "
                f"nothing was committed): {self._refused()}"
            )
        if code != 0:
            raise RestoreFailed(f"{self.plan.describe()} exited with code {code}: {self.writer_errors.error_lines()}")

    def _refused(self) -> str:
        """psql's error and the statement's line it quotes, each on one line (the caret line left out)."""
        lines = [" ".join(line.split()) for line in self.runner_errors.text().splitlines()]
        return " / ".join([line for line in lines if line.strip("^ ")][-3:])

    def stop(self) -> None:
        stop_process(self.writer)
        stop_process(self.runner)
        self._forwarder.join(timeout=30)
