"""What is in storage: backups (a manifest plus the object it describes) and leftovers.

Layout under the resource's prefix:
  data/<backup-id>.pgdump[.zst|.gz][.age]   the dump (compressed, then encrypted), written first
  data/<backup-id>.db.<name>.pgdump[...]   with spec.databases: one dump per database (name URL-quoted)
  data/<backup-id>.dir/<file>[.zst|.gz][.age]   with spec.parallelism: pg_dump's directory, one object a file
  data/<backup-id>.db.<name>.dir/<file>[...]   the same, one directory per database of spec.databases
  data/<backup-id>.globals.sql[.zst|.gz][.age]   the server's roles and tablespaces, with spec.globals
  manifests/<backup-id>.json           written last; its existence is what makes a backup exist
  rejected/<backup-id>.json            a backup that failed its restore test: it no longer counts
A backup id starts with the UTC start time (20261122T023000Z-<run id>), so keys sort by age.
The manifest is described here; jobs.backup.inventory sorts a listing of storage into backups and leftovers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from common.documents import StoredDocument

# 2: the object may be encrypted (`encryption`), the globals may be stored (`globals`); 3: several databases
# (`databases`, spec.databases); 4: directory dumps (`files`, spec.parallelism). A manifest says the lowest
# version that describes it, so that every cellar that reads it restores it, and an older one refuses what it
# cannot restore cleanly.
FORMAT_VERSION = 4
DATA_DIR = "data"
MANIFEST_DIR = "manifests"
# A backup that failed its restore test: a copy of its manifest here takes it out of the catalog, whether
# or not its manifest could be deleted (an object lock forbids that until its retention ends).
QUARANTINE_DIR = "rejected"


def backup_id(started: datetime, run_id: str) -> str:
    return f"{started.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}-{run_id}"


@dataclass(frozen=True)
class TableCount:
    schema: str
    name: str
    rows: int


@dataclass(frozen=True)
class Encryption:
    """How a backup's object is encrypted: its format (age) and its recipients' fingerprints, never keys."""

    format: str
    recipients: tuple[str, ...]


@dataclass(frozen=True)
class GlobalsObject:
    """The SQL of the server's roles, memberships, role settings and tablespaces (pg_dumpall --globals-only),
    stored beside the dump, compressed (and encrypted) the same way."""

    data_key: str
    bytes_raw: int
    bytes_stored: int
    sha256: str
    no_role_passwords: bool
    # Why the roles are stored without passwords when the spec did not ask ("": it asked, or they have them).
    without_passwords_because: str = ""

    def describe(self) -> str:
        """What the run's message says of the globals."""
        if not self.no_role_passwords:
            return "with the roles and tablespaces"
        return "with the roles without passwords and the tablespaces"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "dataKey": self.data_key,
            "bytesRaw": self.bytes_raw,
            "bytesStored": self.bytes_stored,
            "sha256": self.sha256,
            "noRolePasswords": self.no_role_passwords,
        }
        if self.no_role_passwords:
            body["rolesWithoutPasswords"] = self.without_passwords_because or "spec.globals.noRolePasswords"
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> GlobalsObject:
        return cls(
            body["dataKey"],
            int(body["bytesRaw"]),
            int(body["bytesStored"]),
            body["sha256"],
            bool(body.get("noRolePasswords", False)),
            str(body.get("rolesWithoutPasswords", "")),
        )


@dataclass(frozen=True)
class DumpFile:
    """One file of a directory dump (pg_dump --format=directory), stored as one object: its name in the
    directory (toc.dat, 3456.dat), the object's key, and its size before and after compression and encryption."""

    name: str
    key: str
    bytes_raw: int
    bytes_stored: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "bytesRaw": self.bytes_raw,
            "bytesStored": self.bytes_stored,
            "sha256": self.sha256,
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> DumpFile:
        name = str(body["name"])
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"file name {name!r} is not a plain name in the dump's directory")
        return cls(name, body["key"], int(body["bytesRaw"]), int(body["bytesStored"]), body["sha256"])


@dataclass(frozen=True)
class DatabaseDump:
    """One database's dump and the row counts taken in its snapshot: one custom-format object, or (with
    `files`) a directory-format dump whose data_key is the prefix its files' objects share."""

    database: str
    data_key: str
    bytes_raw: int
    bytes_stored: int
    sha256: str
    tables: list[TableCount]
    counts_in_dump_snapshot: bool = True
    owner: str = ""  # the database's owner on the source (spec.databases; a dump does not carry it)
    files: tuple[DumpFile, ...] = ()  # a directory dump's files; (): one custom-format object

    @property
    def directory(self) -> bool:
        return bool(self.files)

    @property
    def object_sizes(self) -> dict[str, int]:
        """Every object of this dump, with its stored size."""
        if self.files:
            return {f.key: f.bytes_stored for f in self.files}
        return {self.data_key: self.bytes_stored}

    def to_json(self) -> dict[str, Any]:
        return {
            **({"owner": self.owner} if self.owner else {}),
            **({"format": "directory", "files": [f.to_json() for f in self.files]} if self.files else {}),
            "dataKey": self.data_key,
            "database": self.database,
            "bytesRaw": self.bytes_raw,
            "bytesStored": self.bytes_stored,
            "sha256": self.sha256,
            "tables": [{"schema": t.schema, "name": t.name, "rows": t.rows} for t in self.tables],
            "countsInDumpSnapshot": self.counts_in_dump_snapshot,
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> DatabaseDump:
        files = tuple(DumpFile.from_json(f) for f in body.get("files") or ())
        outside = [f.key for f in files if not f.key.startswith(body["dataKey"]) or not body["dataKey"].endswith("/")]
        if outside:  # retention deletes what a manifest names: only its own directory's objects
            raise ValueError(f"files {outside[:3]} are not under the dump's directory {body['dataKey']}")
        return cls(
            database=body["database"],
            data_key=body["dataKey"],
            bytes_raw=int(body["bytesRaw"]),
            bytes_stored=int(body["bytesStored"]),
            sha256=body["sha256"],
            tables=[TableCount(t["schema"], t["name"], int(t["rows"])) for t in body["tables"]],
            counts_in_dump_snapshot=bool(body.get("countsInDumpSnapshot", True)),
            owner=str(body.get("owner", "")),
            files=files,
        )


@dataclass
class Manifest(StoredDocument):
    """Everything a restore or an audit needs to know about one backup: one run's dumps (one database's,
    or with `server_wide` each database spec.databases named), and the globals when it has them."""

    latest_version: ClassVar[int] = FORMAT_VERSION
    what: ClassVar[str] = "manifest"

    backup_id: str
    dumps: list[DatabaseDump]
    server_version: str
    pg_dump_version: str
    start_time: str
    end_time: str
    compression: str
    compression_level: int
    generation: int | None
    resource: str
    run_id: str
    standby: bool = False
    encryption: Encryption | None = None
    globals: GlobalsObject | None = None
    # spec.databases: each database restores into the one of its own name, not the target Secret's.
    server_wide: bool = False
    format_version: int = 0  # 0: the lowest that describes this manifest (see FORMAT_VERSION)
    manifest_key: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.format_version:
            if any(d.directory for d in self.dumps):
                self.format_version = 4
            elif self.server_wide:
                self.format_version = 3
            elif self.encryption is not None or self.globals is not None:
                self.format_version = 2
            else:
                self.format_version = 1

    @property
    def data_key(self) -> str:
        """The first (for most backups the only) dump's key: what status and `spec.backup.key` name."""
        return self.dumps[0].data_key

    @property
    def databases(self) -> list[str]:
        return [d.database for d in self.dumps]

    @property
    def bytes_raw(self) -> int:
        return sum(d.bytes_raw for d in self.dumps)

    @property
    def bytes_stored(self) -> int:
        return sum(d.bytes_stored for d in self.dumps)

    @property
    def dump(self) -> DatabaseDump:
        """The one dump a restore of a single database reads (see for_database)."""
        if len(self.dumps) != 1:
            raise ValueError(f"backup {self.backup_id} holds {len(self.dumps)} databases; choose one")
        return self.dumps[0]

    def for_database(self, name: str) -> Manifest:
        """The backup as if it held only database `name`: what restore, verify and staging read."""
        chosen = [d for d in self.dumps if d.database == name]
        if not chosen:
            raise KeyError(name)
        return replace(self, dumps=chosen, manifest_key=self.manifest_key)

    def describe_databases(self) -> str:
        names = self.databases
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        return f"{len(names)} databases ({shown})" if len(names) > 1 else f"database {names[0]}"

    @property
    def object_keys(self) -> list[str]:
        """Every object of the backup: the dumps (each file of a directory dump), and the globals when it has them."""
        return [
            *(key for d in self.dumps for key in d.object_sizes),
            *([self.globals.data_key] if self.globals else []),
        ]

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "formatVersion": self.format_version,
            "backupId": self.backup_id,
            "serverVersion": self.server_version,
            "pgDumpVersion": self.pg_dump_version,
            "startTime": self.start_time,
            "endTime": self.end_time,
            "compression": {"algorithm": self.compression, "level": self.compression_level},
            "standby": self.standby,
            "generation": self.generation,
            "resource": self.resource,
            "runId": self.run_id,
        }
        if self.server_wide:
            body["databases"] = [d.to_json() for d in self.dumps]
        else:  # formats 1 and 2: the one dump's fields at the top
            body.update(self.dump.to_json())
        if self.encryption is not None:
            body["encryption"] = {"format": self.encryption.format, "recipients": list(self.encryption.recipients)}
        if self.globals is not None:
            body["globals"] = self.globals.to_json()
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any], key: str) -> Manifest:
        server_wide = "databases" in body
        dumps = (
            [DatabaseDump.from_json(d) for d in body["databases"]] if server_wide else [DatabaseDump.from_json(body)]
        )
        if not dumps:
            raise ValueError("it lists no database")
        return cls(
            backup_id=body["backupId"],
            dumps=dumps,
            server_version=body["serverVersion"],
            pg_dump_version=body["pgDumpVersion"],
            start_time=body["startTime"],
            end_time=body["endTime"],
            compression=body["compression"]["algorithm"],
            compression_level=int(body["compression"]["level"]),
            generation=body.get("generation"),
            resource=body.get("resource", ""),
            run_id=body["runId"],
            standby=bool(body.get("standby", False)),
            server_wide=server_wide,
            encryption=(
                Encryption(body["encryption"]["format"], tuple(body["encryption"]["recipients"]))
                if body.get("encryption")
                else None
            ),
            globals=GlobalsObject.from_json(body["globals"]) if body.get("globals") else None,
            format_version=int(body["formatVersion"]),
            manifest_key=key,
        )

    @property
    def completed_at(self) -> datetime:
        return datetime.fromisoformat(self.end_time.replace("Z", "+00:00"))
