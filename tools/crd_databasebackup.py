"""The DatabaseBackup CRD. Written into cronjobs/crds by tools/generate_crds.py."""

from __future__ import annotations

from typing import Any

from common.schema import COMPRESSIONS, SCRATCH_DATABASE_PREFIX
from tools.crd_schema import (
    age_column,
    boolean,
    condition_list,
    crd,
    database_connection,
    duration,
    encryption,
    integer,
    metrics_push,
    obj,
    progress,
    ready_column,
    reason_column,
    run_record,
    string,
    string_list,
)
from tools.crd_storage import object_storage


def database_backup() -> dict[str, Any]:
    spec = obj(
        "What to back up, where to, and how long to keep it. The schedule is the CronJob's.",
        {
            "database": database_connection(),
            "storage": object_storage(),
            "compression": obj(
                "How the dump is compressed on its way to storage.",
                {
                    "algorithm": string(
                        "zstd (default: fast, several cores), gzip (compatible) or none.",
                        enum=list(COMPRESSIONS),
                        default="zstd",
                    ),
                    "level": integer(
                        "Compression level: zstd 1-19 (default 1: the fastest, and smaller than gzip), "
                        "gzip 1-9 (default 6).",
                        minimum=1,
                        maximum=19,
                    ),
                    "workers": integer(
                        "zstd worker threads; 0 uses every available core.", minimum=0, maximum=64, default=0
                    ),
                },
                rules=[
                    {
                        "rule": "!has(self.level) || self.algorithm != 'gzip' || self.level <= 9",
                        "message": "gzip levels are 1 to 9",
                    },
                    {
                        "rule": "!has(self.level) || self.algorithm != 'none'",
                        "message": "level has no meaning with algorithm none",
                    },
                ],
                default={},
            ),
            "retention": obj(
                "Which complete backups to keep; a backup kept by any rule stays. The newest good backup is "
                "never deleted. With no rule set, nothing is deleted.",
                {
                    "keepLast": integer("Keep the newest N backups.", minimum=1, maximum=100000),
                    "maxAge": duration("Keep backups younger than this.", positive=True),
                    "keepDaily": integer(
                        "Keep the newest backup of each of the last N days (UTC).", minimum=0, maximum=100000
                    ),
                    "keepWeekly": integer(
                        "Keep the newest backup of each of the last N ISO weeks.", minimum=0, maximum=100000
                    ),
                    "keepMonthly": integer(
                        "Keep the newest backup of each of the last N months.", minimum=0, maximum=100000
                    ),
                    "incompleteAfter": duration(
                        "Objects without a manifest (a crashed run's leftovers) older than this are deleted. "
                        "Longer than any backup takes, or a running backup's upload is taken for a leftover.",
                        default="24h",
                        positive=True,
                    ),
                    "dryRun": boolean("List what retention would delete without deleting it.", False),
                },
                default={},
            ),
            "verify": obj(
                "Restore each new backup into a scratch database and compare every table's row count with "
                "the manifest. Needs CREATEDB for the connecting role. Without target the scratch database "
                "is made on the source's own server: a full copy of the data on its disk, its WAL shipped to "
                "its standbys and WAL archive, at the busiest time of the night.",
                {
                    "enabled": boolean("Verify every backup after it is written.", False),
                    "target": {
                        **database_connection(),
                        "description": "Another PostgreSQL server to run the restore test on (a small scratch "
                        "server, or a CloudNativePG cluster kept for it), so that it costs the source nothing; "
                        "its role needs CREATEDB, and its major must be the source's or newer. The Secret names "
                        "the database cellar connects to first (for example postgres). Secrets as in "
                        "spec.database.",
                    },
                    "scratchDatabasePrefix": string(
                        "Prefix of the scratch database's name; it is dropped after.",
                        pattern=SCRATCH_DATABASE_PREFIX,
                        default="cellar_verify_",
                    ),
                },
                default={},
            ),
            "encryption": encryption(
                "Encrypt every backup on the client with age (https://age-encryption.org) to these recipients "
                "(X25519 public keys, age1...), after compression: the object is a standard age file that "
                "`age -d -i key.txt` decrypts. Keep the identity (private key) out of the cluster, or in a "
                "Secret that only the restore test and restores read.",
                "The Secret key holding an age identity (AGE-SECRET-KEY-1...) of one recipient: needed when "
                "verify.enabled, to decrypt the restore test's copy.",
            ),
            "databases": obj(
                "Back up several databases of the server in one run, each in its own snapshot-consistent dump, "
                "listed in one manifest: the backup counts only when every one succeeded. Default: the one "
                "database the Secret names. A restore puts each back into the database of its own name.",
                {
                    "names": string_list("These databases, in this order.", 63),
                    "all": boolean("Every database that allows connections and is not a template.", False),
                    "exclude": string_list("With all: leave these out (names or shell patterns like tmp_*).", 63),
                    "parallelism": integer(
                        "Dump this many databases at once, each in its own snapshot and stream (or directory, with "
                        "spec.parallelism): memory is this many dumps' worth. Default 1: one after another.",
                        minimum=1,
                        maximum=16,
                        default=1,
                    ),
                },
                rules=[
                    {
                        "rule": "(has(self.names) && size(self.names) > 0) != self.all",
                        "message": "set either names or all: true",
                    },
                    {
                        "rule": "!has(self.exclude) || size(self.exclude) == 0 || self.all",
                        "message": "exclude only applies with all: true",
                    },
                ],
            ),
            "globals": obj(
                "Back up the server's roles, role memberships, role settings and tablespaces with each backup "
                "(pg_dumpall --globals-only, stored beside the dump): a rebuilt server gets its roles and grants back.",
                {
                    "enabled": boolean("Store the globals with every backup.", False),
                    "noRolePasswords": boolean(
                        "Leave role passwords out (pg_dumpall --no-role-passwords): needed where the role cannot read "
                        "pg_authid, as on most managed services, and when passwords must not be in backups.",
                        False,
                    ),
                },
                default={},
            ),
            "parallelism": integer(
                "Dump with pg_dump --format=directory --jobs=N: N tables at once, on N server backends and cores. "
                "The files pass through spec.staging.path, each compressed, encrypted and uploaded as soon as it is "
                "complete, then deleted there. Default 1: one pg_dump stream, nothing on disk.",
                minimum=1,
                maximum=64,
                default=1,
            ),
            "staging": obj(
                "A volume the backup Job mounts (an emptyDir or a PVC; the chart's backups.<name>.staging) for "
                "spec.parallelism's files on their way to storage. Checked before the dump: it must have the newest "
                "backup's raw size free.",
                {"path": string("Where the volume is mounted, for example /staging.", pattern=r"^/.*", maxLength=1024)},
                required=["path"],
            ),
            "metrics": metrics_push(),
            "staleAfter": duration(
                "Ready turns False when the newest good backup is older than this, so an alert fires even "
                "when the CronJob never ran. Default 26h (a daily schedule plus slack).",
                default="26h",
                positive=True,
            ),
            "dump": obj(
                "What pg_dump includes.",
                {
                    "schemas": string_list("Only these schemas (pg_dump --schema). Default: all.", 63),
                    "excludeSchemas": string_list("Leave these schemas out (--exclude-schema).", 63),
                    "excludeTableData": string_list(
                        "Dump these tables' definitions without their rows "
                        "(--exclude-table-data), schema.table patterns.",
                        130,
                    ),
                    "noOwner": boolean("Leave ownership out (--no-owner): restore as any role.", False),
                    "noPrivileges": boolean("Leave GRANTs out (--no-privileges).", False),
                },
                default={},
            ),
        },
        required=["database", "storage"],
        rules=[
            {
                "rule": "!has(self.parallelism) || self.parallelism == 1 || has(self.staging)",
                "message": "parallelism above 1 needs staging.path (a volume for pg_dump's directory)",
            }
        ],
    )
    status = obj(
        "What the backup job observed.",
        {
            "observedGeneration": integer("The generation of the spec the last run used.", format="int64"),
            "conditions": condition_list(),
            "lastRun": run_record("The last run, successful or not.", {"key": string("Object key it wrote.")}),
            "lastSuccessfulBackup": obj(
                "The newest complete backup.",
                {
                    "key": string("Object key of the dump (with several databases: the first one's)."),
                    "manifestKey": string("Object key of its manifest."),
                    "databases": {
                        "type": "array",
                        "description": "The databases it holds.",
                        "items": {"type": "string"},
                    },
                    "sizeBytes": integer("Stored size in bytes.", format="int64"),
                    "rawSizeBytes": integer("Size of the dumps before compression, in bytes.", format="int64"),
                    "size": string("Stored size for people (for example 1.2 GiB)."),
                    "sha256": string("SHA-256 of the stored object, hex (empty with several databases)."),
                    "startTime": string("When the dump started.", format="date-time"),
                    "completionTime": string("When the manifest was written.", format="date-time"),
                    "durationSeconds": {"type": "number", "description": "Wall time of the dump."},
                    "verified": boolean("Whether a restore test passed for this backup.", False),
                    "serverVersion": string("The PostgreSQL server's version when it was dumped."),
                    "pgDumpVersion": string("The pg_dump that wrote it (pg_restore must be this major or newer)."),
                },
            ),
            "lastVerification": obj(
                "The last restore test.",
                {
                    "time": string("When it finished.", format="date-time"),
                    "key": string("The backup tested."),
                    "result": string("Passed or Failed."),
                    "message": string("What it found."),
                    "passed": boolean("Whether it passed (result as a boolean, for metrics).", False),
                },
            ),
            "leftoverDatabases": {
                "type": "array",
                "description": (
                    "Scratch databases of restore tests that could not be dropped in time (sessions stayed connected "
                    "to them); the next run drops them."
                ),
                "items": obj(
                    "A scratch database left on a server.",
                    {
                        "name": string("The database."),
                        "server": string("The server it is on."),
                        "since": string("When its restore test ended.", format="date-time"),
                        "why": string("Why it could not be dropped."),
                    },
                ),
            },
            "backupsKept": integer("Complete backups in storage after retention."),
            "freshUntil": string(
                "When Ready turns stale unless a newer backup succeeds: the newest good backup's completion "
                "plus staleAfter. Alert on time() > freshUntil to catch a CronJob that stopped running.",
                format="date-time",
            ),
            "progress": progress(),
        },
    )
    columns = [
        ready_column(),
        reason_column("Ready"),
        {"name": "Last Success", "type": "date", "jsonPath": ".status.lastSuccessfulBackup.completionTime"},
        {"name": "Size", "type": "string", "jsonPath": ".status.lastSuccessfulBackup.size"},
        {"name": "Verified", "type": "boolean", "jsonPath": ".status.lastSuccessfulBackup.verified"},
        {"name": "Kept", "type": "integer", "jsonPath": ".status.backupsKept", "priority": 1},
        age_column(),
    ]
    return crd(
        "DatabaseBackup",
        "databasebackups",
        ["dbbackup", "dbb"],
        "A PostgreSQL database backed up by cellar's backup job to object storage (S3, Azure Blob Storage or GCS).",
        spec,
        status,
        columns,
    )
