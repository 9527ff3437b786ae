"""What a backup run checks before it writes anything, and what it found: the Secrets and keys, the bucket,
the server and its databases, the client tools."""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from common import ownership
from common.db import connect
from common.encryption import Identities, fingerprint, resolve_keys
from common.errors import InsufficientPrivilege, PermanentError
from common.kube import DATABASE_BACKUP
from common.ownership import Area, Claimed, Owner, claim_prefix, take_over_from
from common.reasons import Reason
from common.runtime import RunContext
from common.secrets import DatabaseSettings
from common.storage import ObjectStore, open_store
from jobs.backup.backup.databases import ChosenDatabase, choose_databases
from jobs.backup.backup.directory import staging_error
from jobs.backup.backup.dump import ServerFacts, server_facts
from jobs.backup.catalog import DATA_DIR, MANIFEST_DIR, QUARANTINE_DIR, Manifest
from jobs.backup.inventory import take_inventory
from jobs.backup.pgtools import ClientTools, tools_for_dump
from jobs.backup.privileges import RoleFacts, role_facts
from jobs.backup.settings import BackupSettings
from jobs.backup.status import human_size

log = logging.getLogger(__name__)
APPLICATION = "cellar-backup"


def open_storage(ctx: RunContext, settings: BackupSettings) -> ObjectStore:
    credentials = ctx.secrets.storage_credentials(settings.storage)
    return open_store(settings.storage, credentials)


@dataclass(frozen=True)
class Preflight:
    """What a run checked before writing anything, and what it will use."""

    database: DatabaseSettings
    store: ObjectStore
    server: ServerFacts
    tools: ClientTools
    recipients: list[str]  # age recipients to encrypt to; none: not encrypted
    identities: Identities | None  # what the restore test decrypts with
    databases: list[ChosenDatabase]  # what the run dumps, in this order
    claimed: Claimed  # the prefix is this resource's; whose backups under it it reads (common.ownership)
    restore_test_server: DatabaseSettings  # where restore tests make their scratch database (spec.verify.target)
    role: RoleFacts  # the backup's role on the server: superuser or not (a managed server's never is)
    notes: tuple[str, ...] = ()  # what the run does differently for lack of a privilege, for the message
    staging: Path | None = None  # spec.parallelism: the run's own directory on the staging volume

    @property
    def role_passwords_left_out(self) -> str:
        """Why the globals go without role passwords though the spec did not ask: "" when it may read them."""
        return "" if self.role.superuser else self.role.role_passwords_note()


def preflight(ctx: RunContext, settings: BackupSettings, *, restore_test: bool, dumping: bool = True) -> Preflight:
    """Everything checked before anything is written: Secrets, keys, bucket, database, the client tools.

    The identity and the restore test's server are read only when a restore test runs (`restore_test`),
    so a backup Pod whose ServiceAccount may not read them (the chart grants them only then) works. The staging
    volume of a directory dump is prepared only for a run that dumps (`dumping`)."""
    database = ctx.secrets.database(settings.database)
    restore_test_server = (
        ctx.secrets.database(settings.verify_target)
        if restore_test and settings.verify_target is not None
        else database
    )
    encryption = settings.encryption
    if encryption is not None and not restore_test:
        encryption = replace(encryption, identity=None)
    recipients, identities = resolve_keys(ctx.secrets, encryption)
    store = open_storage(ctx, settings)
    store.check_access()
    skipped: list[str] = []
    with connect(database) as conn:
        facts = server_facts(conn)
        role = role_facts(conn)
        databases = (
            choose_databases(conn, settings.databases, skipped)
            if settings.databases is not None
            else [ChosenDatabase(database.dbname, facts.database_size)]
        )
    notes = _privilege_notes(role, skipped)
    if restore_test:
        check_restore_test_role(database, restore_test_server, role)
    tools = tools_for_dump(facts.version_num, facts.version)
    staging = usable_staging(ctx, settings) if dumping else None
    # Last, so that a resource whose Secrets or database are unusable claims nothing.
    claimed = claim_prefix(Area.of_backups(store), me(ctx), take_over=take_over_from(ctx.resource), dry_run=ctx.dry_run)
    if staging is not None:
        check_staging_room(settings, staging, take_inventory(store, claimed.readable).backups)
    checked = Preflight(
        database,
        store,
        facts,
        tools,
        recipients,
        identities,
        databases,
        claimed,
        restore_test_server,
        role,
        notes,
        staging=staging,
    )
    _log_passed(checked)
    return checked


def _log_passed(checked: Preflight) -> None:
    facts, role, notes = checked.server, checked.role, checked.notes
    log.info(
        "preflight passed",
        extra={
            "server_version": facts.version,
            "pg_dump": checked.tools.describe("pg_dump"),
            "databases": [d.name for d in checked.databases],
            "database_bytes": sum(d.size for d in checked.databases),
            "standby": facts.standby,
            "role": role.name,
            "superuser": role.superuser,
            **({"notes": list(notes)} if notes else {}),
            "bucket": checked.store.url(),
            "encrypted_to": [fingerprint(r) for r in checked.recipients],
        },
    )


def _privilege_notes(role: RoleFacts, skipped: list[str]) -> tuple[str, ...]:
    """What the run leaves out because the role is no superuser; logged, and said in the run's message."""
    notes = []
    if skipped:
        names = ", ".join(skipped)
        notes.append(
            f"left out {names}: role {role.name} may not connect to {'it' if len(skipped) == 1 else 'them'} "
            f"(GRANT CONNECT ON DATABASE {names} TO {role.name} to include, or list them in spec.databases.exclude)"
        )
        log.warning("databases the role may not connect to are left out", extra={"databases": skipped})
    if not role.reads_all_data:
        log.warning(
            "the backup role is neither a superuser nor a member of pg_read_all_data: a table it may not read "
            "fails the dump",
            extra={"role": role.name, "grant": f"GRANT pg_read_all_data TO {role.name}"},
        )
    return tuple(notes)


def check_restore_test_role(source: DatabaseSettings, server: DatabaseSettings, role: RoleFacts) -> None:
    """A restore test makes a scratch database: the role on its server needs CREATEDB (or superuser); refused
    here, before anything is written, when it lacks it."""
    facts = role
    if server is not source:
        with connect(server) as conn:
            facts = role_facts(conn)
    if facts.superuser or facts.createdb:
        return
    raise InsufficientPrivilege(
        f"spec.verify: the restore test creates a scratch database on {server.describe()}, and role {facts.name} "
        f"may not create databases: ALTER ROLE {facts.name} CREATEDB (on a managed server, as its admin role), "
        "or turn the restore test off (spec.verify.enabled: false)"
    )


def usable_staging(ctx: RunContext, settings: BackupSettings) -> Path | None:
    """The run's directory on the staging volume (spec.parallelism above 1), emptied of what a killed run of
    this resource left (CronJobs never run two of one resource at once); an unusable volume stops the run."""
    if not settings.directory or settings.staging_path is None:
        return None
    root = Path(settings.staging_path) / f"cellar-backup.{ctx.ref.namespace}.{ctx.ref.name}"
    try:
        if not ctx.dry_run:
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
            probe = root / ".written"
            probe.write_bytes(b"")
            probe.unlink()
        shutil.disk_usage(root if root.exists() else settings.staging_path)
    except OSError as exc:
        raise staging_error(settings.staging_path, exc) from None
    return root


def check_staging_room(settings: BackupSettings, staging: Path, backups: list[Manifest]) -> None:
    """Refuse a staging volume with less room than the newest backup's raw size (the whole dump: the window
    pg_dump and the uploads keep there depends on the largest tables and the store's speed). No backup yet:
    nothing to compare with, and a volume that fills fails the run cleanly (InsufficientSpace)."""
    if not backups:
        return
    newest = backups[0]
    free = shutil.disk_usage(staging if staging.exists() else str(settings.staging_path)).free
    if free < newest.bytes_raw:
        raise PermanentError(
            f"spec.staging.path: {settings.staging_path} has {human_size(free)} free, less than the "
            f"{human_size(newest.bytes_raw)} the newest backup ({newest.backup_id}) dumped. Give the staging volume "
            "at least that (the chart's backups.<name>.staging.sizeLimit, or a larger PVC in staging.claimName), "
            "or leave spec.parallelism out to stream the dump",
            reason=Reason.INSUFFICIENT_SPACE,
        )


def released_on_failure(ctx: RunContext, checked: Preflight) -> contextlib.AbstractContextManager[None]:
    """A failed first run takes back the owner record it wrote while no backup is under the prefix."""
    store = checked.store
    contents = [store.key(part) + "/" for part in (DATA_DIR, MANIFEST_DIR, QUARANTINE_DIR)]
    return ownership.released_on_failure(Area.of_backups(store), me(ctx), checked.claimed, contents)


def me(ctx: RunContext) -> Owner:
    """The DatabaseBackup of this run, as the owner of its prefix."""
    return Owner.of(DATABASE_BACKUP.kind, ctx.ref.namespace, ctx.ref.name, ctx.resource)


def describe_choice(settings: BackupSettings, checked: Preflight) -> str:
    if settings.databases is None:
        return checked.database.describe()
    names = [d.name for d in checked.databases]
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return f"{len(names)} databases ({shown}) on {checked.database.describe()}"
