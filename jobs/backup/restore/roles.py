"""The server's roles, memberships, role settings and tablespaces of a backup (spec.globals), applied to
a restore's target server before the database."""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass

from common.db import libpq_environment
from common.encryption import CorruptedCiphertext, decrypt_bytes
from common.errors import ChecksumMismatch, DecryptionFailed, RestoreFailed
from jobs.backup.compression import decompressor_for
from jobs.backup.restore.plan import BackupSource, RestoreTarget


@dataclass(frozen=True)
class GlobalsApplied:
    statements: int  # what psql ran
    errors: list[str]  # the statements that failed, as psql reported them (a role that exists already)


def apply_globals(source: BackupSource, server: RestoreTarget) -> GlobalsApplied:
    """Run the backup's roles, memberships, role settings and tablespaces (pg_dumpall --globals-only) on
    the target server with psql, after checking the object's SHA-256.

    The statements run one by one, not in a transaction, and a failing one does not stop the rest: on a
    server that has some of the roles already, CREATE ROLE fails for those and the ALTER ROLE that follows
    still sets their attributes. The failures are returned for the message."""
    manifest, identities, plan = source.manifest, source.identities, server.plan
    assert manifest.globals is not None
    described = manifest.globals
    body = source.store.get_bytes(described.data_key)
    digest = hashlib.sha256(body).hexdigest()
    if len(body) != described.bytes_stored or digest != described.sha256:
        raise ChecksumMismatch(
            f"{described.data_key}: SHA-256 {digest} ({len(body)} bytes) does not match the manifest's "
            f"{described.sha256} ({described.bytes_stored} bytes); the roles were not applied"
        )
    if manifest.encryption is not None:
        if identities is None:
            raise DecryptionFailed(f"backup {manifest.backup_id} is encrypted and no identity was given")
        try:
            body = decrypt_bytes(body, identities, what=described.data_key)
        except CorruptedCiphertext as exc:
            raise ChecksumMismatch(str(exc)) from None
    sql_text = decompressor_for(manifest.compression).decompress(body)
    argv = [plan.sql_client.path("psql"), "--no-psqlrc", "--quiet", "--no-password", "-v", "ON_ERROR_STOP=0"]
    env = {**os.environ, **libpq_environment(server.database)}
    done = subprocess.run(argv, input=sql_text, capture_output=True, env=env, check=False)
    errors = [
        line.split("ERROR:", 1)[1].strip()
        for line in done.stderr.decode("utf-8", "replace").splitlines()
        if "ERROR:" in line
    ]
    if done.returncode != 0:
        raise RestoreFailed(
            f"{plan.sql_client.describe('psql')} could not apply the roles and tablespaces "
            f"(exit code {done.returncode}): "
            f"{done.stderr.decode('utf-8', 'replace').strip()[-500:]}"
        )
    statements = sum(1 for line in sql_text.decode("utf-8", "replace").splitlines() if line.rstrip().endswith(";"))
    return GlobalsApplied(statements, errors)
