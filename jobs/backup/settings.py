"""The backup job's settings, parsed and validated from a DatabaseBackup or DatabaseRestore spec."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from common.encryption import EncryptionSpec, parse_encryption_spec
from common.errors import InvalidSpec
from common.schema import COMPRESSIONS, SCRATCH_DATABASE_PREFIX
from common.spec import DatabaseSpec, SecretKeyRef, SpecReader
from common.storage_spec import StorageSpec
from jobs.backup.toc import Selection

# zstd level 1: faster than level 3 and no larger on realistic data (docs/design.md).
DEFAULT_LEVELS = {"zstd": 1, "gzip": 6, "none": 0}
_SCRATCH_PREFIX = re.compile(SCRATCH_DATABASE_PREFIX)


@dataclass(frozen=True)
class Compression:
    algorithm: str
    level: int
    workers: int

    @property
    def extension(self) -> str:
        return {"zstd": ".zst", "gzip": ".gz", "none": ""}[self.algorithm]


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int | None = None
    max_age: timedelta | None = None
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    incomplete_after: timedelta = timedelta(hours=24)
    dry_run: bool = False

    @property
    def deletes_anything(self) -> bool:
        """With no rule set nothing is deleted (an empty policy is not 'keep nothing')."""
        return bool(self.keep_last or self.max_age or self.keep_daily or self.keep_weekly or self.keep_monthly)


@dataclass(frozen=True)
class DumpOptions:
    schemas: tuple[str, ...] = ()
    exclude_schemas: tuple[str, ...] = ()
    exclude_table_data: tuple[str, ...] = ()
    no_owner: bool = False
    no_privileges: bool = False

    def pg_dump_arguments(self) -> list[str]:
        arguments = [f"--schema={s}" for s in self.schemas]
        arguments += [f"--exclude-schema={s}" for s in self.exclude_schemas]
        arguments += [f"--exclude-table-data={t}" for t in self.exclude_table_data]
        if self.no_owner:
            arguments.append("--no-owner")
        if self.no_privileges:
            arguments.append("--no-privileges")
        return arguments


@dataclass(frozen=True)
class GlobalsOptions:
    """spec.globals: the server's roles, memberships, role settings and tablespaces go with each backup."""

    no_role_passwords: bool = False


@dataclass(frozen=True)
class DatabaseChoice:
    """spec.databases: which databases of the server one run dumps, each into its own object."""

    names: tuple[str, ...] = ()  # these, in this order
    every: bool = False  # every connectable database that is not a template
    exclude: tuple[str, ...] = ()  # with `every`: names or shell patterns left out
    parallelism: int = 1  # databases dumped at once (databases.parallelism)

    def describe(self) -> str:
        if not self.every:
            return ", ".join(self.names)
        return "every database" + (f" except {', '.join(self.exclude)}" if self.exclude else "")


@dataclass(frozen=True)
class BackupSettings:
    database: DatabaseSpec
    storage: StorageSpec
    compression: Compression
    retention: RetentionPolicy
    verify: bool
    scratch_prefix: str
    stale_after: timedelta
    dump: DumpOptions
    encryption: EncryptionSpec | None = None
    globals: GlobalsOptions | None = None
    databases: DatabaseChoice | None = None  # None: the one database the Secret names
    verify_target: DatabaseSpec | None = None  # spec.verify.target; None: restore tests on the source's server
    parallelism: int = 1  # spec.parallelism: above 1, pg_dump --format=directory --jobs=N through staging
    staging_path: str | None = None  # spec.staging.path: the volume a directory dump passes through

    @property
    def directory(self) -> bool:
        """Whether each database is dumped as a directory (spec.parallelism above 1), not one stream."""
        return self.parallelism > 1


def parse_database_choice(reader: SpecReader) -> DatabaseChoice:
    names = reader.string_list("names")
    every = reader.boolean("all")
    exclude = reader.string_list("exclude")
    if every == bool(names):
        raise InvalidSpec(
            f"{reader.path}: set either names (a list of databases) or all: true (every database of the server)"
        )
    if exclude and not every:
        raise InvalidSpec(f"{reader.path}.exclude: only applies with all: true; list the names you want instead")
    if len(set(names)) != len(names):
        raise InvalidSpec(f"{reader.path}.names: a database is named twice")
    return DatabaseChoice(names, every, exclude, reader.integer("parallelism", 1, minimum=1, maximum=16))


def parse_staging(reader: SpecReader, parallelism: int, what: str) -> str | None:
    """spec.staging.path, which spec.parallelism above 1 needs (`what`: the tool that reads or writes it)."""
    staging = reader.child("staging").optional_string("path") if reader.has("staging") else None
    if parallelism > 1 and not staging:
        raise InvalidSpec(
            f"spec.parallelism: {what}; give a volume in spec.staging.path (an emptyDir or a PVC the Job "
            "mounts: the chart's staging: entry does both), or leave parallelism out to stream"
        )
    if staging is not None and not staging.startswith("/"):
        raise InvalidSpec(f"spec.staging.path: {staging!r} must be an absolute path (where the volume is mounted)")
    return staging


def parse_compression(reader: SpecReader) -> Compression:
    algorithm = reader.string("algorithm", "zstd", choices=COMPRESSIONS)
    level = reader.integer("level", minimum=1, maximum=19)
    if level is not None and algorithm == "gzip" and level > 9:
        raise InvalidSpec(f"{reader.path}.level: gzip levels are 1 to 9, got {level}")
    if level is not None and algorithm == "none":
        raise InvalidSpec(f"{reader.path}.level: has no meaning with algorithm none; remove it")
    workers = reader.integer("workers", 0, minimum=0, maximum=64)
    return Compression(algorithm, level or DEFAULT_LEVELS[algorithm], workers)


def parse_retention(reader: SpecReader) -> RetentionPolicy:
    return RetentionPolicy(
        keep_last=reader.integer("keepLast", minimum=1),
        max_age=reader.duration("maxAge", positive=True),
        keep_daily=reader.integer("keepDaily", 0, minimum=0),
        keep_weekly=reader.integer("keepWeekly", 0, minimum=0),
        keep_monthly=reader.integer("keepMonthly", 0, minimum=0),
        incomplete_after=reader.duration("incompleteAfter", "24h", positive=True),
        dry_run=reader.boolean("dryRun"),
    )


def parse_backup_spec(spec: Mapping[str, Any]) -> BackupSettings:
    """Validate a DatabaseBackup spec; every error names its field."""
    reader = SpecReader(spec, "spec")
    parallelism = reader.integer("parallelism", 1, minimum=1, maximum=64)
    verify = reader.child("verify")
    dump = reader.child("dump")
    globals_ = reader.child("globals")
    encryption = parse_encryption_spec(reader.child("encryption"))
    if encryption is not None and encryption.identity is None and verify.boolean("enabled"):
        raise InvalidSpec(
            "spec.verify.enabled: the restore test decrypts the backup; name the identity's Secret in "
            "spec.encryption.identitySecretRef, or turn verification off"
        )
    return BackupSettings(
        database=DatabaseSpec.parse(reader.child("database", required=True)),
        storage=StorageSpec.parse(reader.child("storage", required=True)),
        compression=parse_compression(reader.child("compression")),
        retention=parse_retention(reader.child("retention")),
        verify=verify.boolean("enabled"),
        verify_target=DatabaseSpec.parse(verify.child("target")) if verify.has("target") else None,
        scratch_prefix=verify.string("scratchDatabasePrefix", "cellar_verify_", pattern=_SCRATCH_PREFIX),
        stale_after=reader.duration("staleAfter", "26h", positive=True),
        dump=DumpOptions(
            schemas=dump.string_list("schemas"),
            exclude_schemas=dump.string_list("excludeSchemas"),
            exclude_table_data=dump.string_list("excludeTableData"),
            no_owner=dump.boolean("noOwner"),
            no_privileges=dump.boolean("noPrivileges"),
        ),
        encryption=encryption,
        globals=GlobalsOptions(globals_.boolean("noRolePasswords")) if globals_.boolean("enabled") else None,
        databases=parse_database_choice(reader.child("databases")) if reader.has("databases") else None,
        parallelism=parallelism,
        staging_path=parse_staging(
            reader,
            parallelism,
            "pg_dump --jobs writes a directory of files, not a stream, and they pass through a volume",
        ),
    )


@dataclass(frozen=True)
class RestoreSettings:
    backup_name: str
    backup_key: str | None
    target: DatabaseSpec
    create_database: bool
    clean: bool
    no_owner: bool
    identity: SecretKeyRef | None = None  # spec.decryption.identitySecretRef: for encrypted backups
    globals: bool = False  # spec.globals: apply the backup's roles and tablespaces first
    selection: Selection | None = None  # spec.select; None: everything
    parallelism: int = 1  # spec.parallelism: pg_restore -j, from a staged copy of the dump
    staging_path: str | None = None  # spec.staging.path: where the staged copy goes (a mounted volume)
    databases: tuple[str, ...] = ()  # spec.databases: of a several-database backup, these; (): all of them


def parse_restore_spec(spec: Mapping[str, Any]) -> RestoreSettings:
    reader = SpecReader(spec, "spec")
    backup = reader.child("backup", required=True)
    settings = RestoreSettings(
        backup_name=backup.string("name", required=True),
        backup_key=backup.optional_string("key"),
        target=DatabaseSpec.parse(reader.child("target", required=True)),
        create_database=reader.boolean("createDatabase"),
        clean=reader.boolean("clean"),
        no_owner=reader.boolean("noOwner"),
        globals=reader.boolean("globals"),
        databases=reader.string_list("databases"),
        identity=(
            SecretKeyRef.parse(reader.child("decryption").child("identitySecretRef", required=True))
            if reader.has("decryption")
            else None
        ),
    )
    if reader.has("select"):
        settings = replace(settings, selection=parse_selection(reader.child("select")))
    if settings.create_database and settings.clean:
        raise InvalidSpec("spec: clean has nothing to drop in a database that createDatabase just made; set one")
    parallelism = reader.integer("parallelism", 1, minimum=1, maximum=64)
    staging = parse_staging(reader, parallelism, "pg_restore -j reads a file, not a stream")
    if parallelism > 1 and not settings.create_database:
        raise InvalidSpec(
            "spec.parallelism: pg_restore -j cannot run in one transaction, so a failure would leave the target "
            "half-restored; use it with createDatabase: true (a failed restore drops that database again)"
        )
    return replace(settings, parallelism=parallelism, staging_path=staging)


def parse_selection(reader: SpecReader) -> Selection:
    """spec.select: `schemas`, `tables` (schema.table; a name alone is in public) and `data`."""
    tables = []
    for index, text in enumerate(reader.string_list("tables")):
        schema, dot, name = text.partition(".")
        if not dot:
            schema, name = "public", text
        if not schema or not name:
            raise InvalidSpec(f"{reader.path}.tables[{index}]: {text!r} is not schema.table")
        tables.append((schema, name))
    selection = Selection(reader.string_list("schemas"), tuple(tables), reader.boolean("data", True))
    if selection.everything:
        raise InvalidSpec(
            f"{reader.path}: name at least one schema or table, or leave select out to restore everything"
        )
    return selection
