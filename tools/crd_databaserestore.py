"""The DatabaseRestore CRD. Written into cronjobs/crds by tools/generate_crds.py."""

from __future__ import annotations

from typing import Any

from common.schema import DNS_SUBDOMAIN
from tools.crd_schema import (
    age_column,
    boolean,
    condition_list,
    crd,
    database_connection,
    integer,
    metrics_push,
    obj,
    progress,
    reason_column,
    secret_key_selector,
    string,
    string_list,
)


def database_restore() -> dict[str, Any]:
    spec = obj(
        "Which backup to restore, and into which database. One-shot: run once by the backup image's restore "
        "command; create a new DatabaseRestore to restore again.",
        {
            "backup": obj(
                "The backup to restore.",
                {
                    "name": string(
                        "Name of the DatabaseBackup (same namespace) whose storage holds the backup.",
                        pattern=DNS_SUBDOMAIN,
                        maxLength=253,
                    ),
                    "key": string(
                        "Object key of the dump. Default: the newest complete backup.", minLength=1, maxLength=1024
                    ),
                },
                required=["name"],
            ),
            "target": database_connection(),
            "createDatabase": boolean("Create the target database first (it must not exist).", False),
            "clean": boolean(
                "Drop the objects the dump contains before recreating them (pg_restore --clean --if-exists).", False
            ),
            "noOwner": boolean("Do not restore ownership (pg_restore --no-owner).", False),
            "globals": boolean(
                "Apply the backup's roles, memberships, role settings and tablespaces to the target server first "
                "(statements that fail, such as a role that exists already, are reported, not fatal).",
                False,
            ),
            "databases": string_list(
                "Of a backup of several databases (spec.databases in the DatabaseBackup), restore these, each into "
                "the database of its own name on the target's server. Default: every one it holds.",
                63,
            ),
            "select": obj(
                "Restore only part of the backup, chosen from pg_restore's table of contents: whole schemas, "
                "and tables or views with what belongs to them (their data, owned sequences, defaults, "
                "constraints, indexes, triggers, comments, grants, own foreign keys). Without clean, the "
                "restore refuses if the target already has any of them.",
                {
                    "schemas": string_list("Schemas to restore whole.", 63),
                    "tables": string_list("Tables or views as schema.table (a name alone is in public).", 127),
                    "data": boolean("Restore their rows too; false: definitions only.", True),
                },
                rules=[
                    {
                        "rule": "(has(self.schemas) && size(self.schemas) > 0) || "
                        "(has(self.tables) && size(self.tables) > 0)",
                        "message": "name at least one schema or table, or leave select out to restore everything",
                    }
                ],
            ),
            "parallelism": integer(
                "Restore with pg_restore --jobs=N from a copy of the dump staged on spec.staging.path, as fast "
                "as the target's cores allow; needs createDatabase (pg_restore -j cannot run in one transaction, "
                "so a failure drops that database again). Default 1: streamed, in one transaction.",
                minimum=1,
                maximum=64,
                default=1,
            ),
            "staging": obj(
                "A volume the restore Job mounts (an emptyDir or a PVC) for the staged copy of the dump, "
                "uncompressed: it needs the backup's raw size free, checked before the download. The copy is "
                "removed afterwards.",
                {"path": string("Where the volume is mounted, for example /staging.", pattern=r"^/.*", maxLength=1024)},
                required=["path"],
            ),
            "metrics": metrics_push(),
            "decryption": obj(
                "For a backup encrypted with age: the identity that decrypts it.",
                {
                    "identitySecretRef": secret_key_selector(
                        "The Secret key holding an age identity (AGE-SECRET-KEY-1..., what age-keygen writes) "
                        "of one of the backup's recipients."
                    )
                },
                required=["identitySecretRef"],
            ),
        },
        required=["backup", "target"],
        rules=[
            {
                "rule": "!(self.createDatabase && self.clean)",
                "message": "clean has nothing to drop in a database that createDatabase just made; set one",
            },
            {
                "rule": "!has(self.parallelism) || self.parallelism == 1 || (has(self.staging) && self.createDatabase)",
                "message": "parallelism above 1 needs staging.path and createDatabase: true",
            },
        ],
    )
    status = obj(
        "What the restore observed.",
        {
            "observedGeneration": integer("The generation of the spec the run used.", format="int64"),
            "conditions": condition_list(),
            "key": string("The backup that was restored."),
            "startTime": string("When the restore started.", format="date-time"),
            "completionTime": string("When it ended.", format="date-time"),
            "bytesRead": integer("Bytes read from storage.", format="int64"),
            "progress": progress(),
        },
    )
    columns = [
        {"name": "Succeeded", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Succeeded")].status'},
        reason_column("Succeeded"),
        {"name": "Backup", "type": "string", "jsonPath": ".spec.backup.name"},
        {"name": "Completed", "type": "date", "jsonPath": ".status.completionTime"},
        age_column(),
    ]
    return crd(
        "DatabaseRestore",
        "databaserestores",
        ["dbrestore", "dbr"],
        "A one-shot restore of a cellar backup into a PostgreSQL database.",
        spec,
        status,
        columns,
    )
