"""The TableArchive CRD. Written into cronjobs/crds by tools/generate_crds.py."""

from __future__ import annotations

from typing import Any

from common.schema import ARCHIVE_FORMATS, ARCHIVE_MODES, PARTITIONINGS
from tools.crd_iceberg import iceberg
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
)
from tools.crd_storage import object_storage


def table_archive() -> dict[str, Any]:
    ident = {"type": "string", "minLength": 1, "maxLength": 63}
    spec = obj(
        "Which rows of which table age out, and where they go. Archive means move: archived rows leave the "
        "table (mode Move) once they are safely in storage.",
        {
            "database": database_connection(),
            "partitions": obj(
                "For a table range-partitioned on timestampColumn (declarative, pg_partman too): partitions whose "
                "whole range lies before the cutoff are detached, read once and dropped instead of deleted row by "
                "row; the rest goes in batches. Not in Copy mode, with a filter, or while unarchived rows are held.",
                {
                    "archiveWhole": boolean("Archive whole partitions (default true).", True),
                    "keepDetached": boolean(
                        "Keep each archived partition as a detached table instead of dropping it.", False
                    ),
                },
                default={},
            ),
            "metrics": metrics_push(),
            "storage": object_storage(),
            "table": obj(
                "The table to archive.",
                {
                    "schema": {**ident, "description": "Schema. Default public.", "default": "public"},
                    "name": {**ident, "description": "Table name (quoted as given: case matters)."},
                },
                required=["name"],
            ),
            "primaryKey": {
                "type": "array",
                "items": ident,
                "maxItems": 32,
                "description": "Primary-key columns. Default: discovered from the table.",
            },
            "timestampColumn": {
                **ident,
                "description": "The column whose age decides (timestamp, timestamptz or date).",
            },
            "olderThan": duration("Rows whose timestampColumn is older than now minus this are archived."),
            "filter": string(
                "TRUSTED SQL: a boolean expression ANDed to the age test, inserted into the query as written. "
                "Whoever can edit this resource can run SQL as the job's database role: restrict who may "
                "write TableArchives accordingly.",
                maxLength=4096,
            ),
            "batch": obj(
                "How much one transaction moves, and how many batches run at once. Small batches keep "
                "transactions short (VACUUM, locks). In Move mode without a pause, the due rows are split by "
                "time into `parallelism` lanes that run side by side, and in each lane the next batch's DELETE "
                "runs on a second connection while the previous batch uploads and commits: a run uses "
                "2 x parallelism database connections. With a pause, or in Copy mode, batches run one at a "
                "time on one connection. A run reads rows, maxBytesMiB, pause and maxReplicationLag (and "
                "maxRunTime, lockTimeout, statementTimeout) again between batches, at most every 10 seconds: "
                "a change applies to the run under way.",
                {
                    "rows": integer(
                        "Most rows per batch (one transaction). Default 25000; 100000 with format: Iceberg, where a "
                        "batch is one snapshot and its rows are read and written 25000 at a time.",
                        minimum=1,
                        maximum=1000000,
                    ),
                    "maxBytesMiB": integer("Most encoded MiB per batch object.", minimum=1, maximum=4096, default=128),
                    "parallelism": integer(
                        "Lanes of batches that run at once, each over its own time range and two connections "
                        "(Move mode without a pause). 1 spares the database most; each lane adds about one "
                        "busy backend while the run lasts.",
                        minimum=1,
                        maximum=8,
                        default=2,
                    ),
                    "pause": duration(
                        "Pause between batches, to spare the primary and its replicas; with a pause, batches run "
                        "one at a time on one connection.",
                        default="0s",
                    ),
                    "maxReplicationLag": duration(
                        "Hold each batch back while a standby streaming from the database replays more than "
                        "this far behind (pg_stat_replication.replay_lag; a standby that has replayed all WAL "
                        "written counts as 0). 0s waits for every standby to replay everything before each "
                        "batch. Needs pg_monitor (pg_read_all_stats) for the job's database role; unset, "
                        "nothing waits.",
                    ),
                },
                default={},
            ),
            "maxRunTime": duration(
                "A run stops after the batch in flight once it has run this long.", default="1h", positive=True
            ),
            "lockTimeout": duration(
                "SET LOCAL lock_timeout for each batch (and the partition detaches): how long a batch waits for a "
                "row or table lock before it fails. 0s waits without limit, as in PostgreSQL.",
                default="5s",
            ),
            "statementTimeout": duration(
                "SET LOCAL statement_timeout for each batch's statements. 0s: no limit, as in PostgreSQL.",
                default="60s",
            ),
            "format": string(
                "Parquet (zstd, queryable in place), CSVGzip, or Iceberg (an Apache Iceberg table: spec.iceberg).",
                enum=list(ARCHIVE_FORMATS),
                default="Parquet",
            ),
            "iceberg": iceberg(),
            "partitioning": string(
                "Hive-style key layout by the row's timestamp: Daily (dt=YYYY-MM-DD), Monthly (dt=YYYY-MM), Yearly "
                "(dt=YYYY), None, or Auto: chosen by the first run that has rows due, so that a partition holds at "
                "least about 64 MiB, and kept with the archive (an existing archive keeps its layout).",
                enum=list(PARTITIONINGS),
                default="Auto",
            ),
            "mode": string(
                "Move deletes archived rows; Copy keeps them and archives each row once, continuing after the "
                "newest (timestamp, key) it archived: a row inserted later with an older timestamp is not copied.",
                enum=list(ARCHIVE_MODES),
                default="Move",
            ),
            "encryption": encryption(
                "Encrypt every archived object on the client with age (https://age-encryption.org) to these "
                "recipients (X25519 public keys, age1...): each file is a standard age file of the Parquet "
                "(or CSV) file, `<name>.parquet.age`. Query engines then need it decrypted first "
                "(age -d); unarchive decrypts with identitySecretRef.",
                "The Secret key holding an age identity (AGE-SECRET-KEY-1...) of one recipient: needed by "
                "unarchive, and by a run that checks a crashed run's encrypted leftovers before deleting them.",
            ),
            "dryRun": boolean("Count what would move and show the plan; change nothing.", False),
            "allowCascade": boolean(
                "Archive even when other tables reference this one with ON DELETE CASCADE (their rows would "
                "be deleted without being archived).",
                False,
            ),
        },
        required=["database", "storage", "table", "timestampColumn", "olderThan"],
    )
    status = obj(
        "What the archive job observed.",
        {
            "observedGeneration": integer("The generation of the spec the last run used.", format="int64"),
            "conditions": condition_list(),
            "cutoff": string("Rows older than this were due in the last run.", format="date-time"),
            "oldestRowTime": string("The oldest timestampColumn value still in the table.", format="date-time"),
            "lastRun": run_record(
                "The last run.",
                {
                    "rows": integer("Rows archived.", format="int64"),
                    "bytes": integer("Bytes written.", format="int64"),
                    "batches": integer("Batches committed.", format="int64"),
                    "longestTransactionSeconds": {
                        "type": "number",
                        "description": "The longest batch transaction, BEGIN to COMMIT: what held locks and "
                        "VACUUM's horizon longest.",
                    },
                    "layout": string(
                        "The archive's partition granularity (Daily, Monthly, Yearly, None) and why: chosen by "
                        "partitioning (partitionBy): Auto from the rows due, or kept as the archive has it."
                    ),
                    "files": integer(
                        "Files written: Parquet objects, or the Iceberg table's data files.", format="int64"
                    ),
                },
            ),
            "totals": obj(
                "Everything archived so far.",
                {
                    "rows": integer("Rows archived.", format="int64"),
                    "bytes": integer("Bytes written.", format="int64"),
                    "batches": integer("Batches committed.", format="int64"),
                },
            ),
            "lastSkipped": obj(
                "The last run that found another run holding the table's lock and skipped (exit 0).",
                {
                    "time": string("When it skipped.", format="date-time"),
                    "runId": string("Its run id."),
                    "reason": string("LockHeld."),
                    "message": string("Why."),
                },
            ),
            "icebergTable": obj(
                "format: Iceberg: the table as the last run (and its maintenance) left it, from its current snapshot.",
                {
                    "snapshots": integer("Snapshots the table keeps: what time travel can reach.", format="int64"),
                    "dataFiles": integer("Data files in the current snapshot.", format="int64"),
                    "bytes": integer("Their size.", format="int64"),
                    "currentSnapshotId": string("The current snapshot's id (a string: 64-bit ids)."),
                },
            ),
            "lastMaintenance": obj(
                "The last maintenance of the Iceberg table (cellar-archive maintain, or the end of an archive run).",
                {
                    "time": string("When it finished.", format="date-time"),
                    "filesRewritten": integer("Small data files rewritten.", format="int64"),
                    "filesWritten": integer("Data files written in their place.", format="int64"),
                    "snapshotsExpired": integer("Snapshots expired.", format="int64"),
                    "filesDeleted": integer("Files deleted (expired snapshots' and orphans).", format="int64"),
                    "message": string("The outcome in words."),
                },
            ),
            "lastUnarchive": obj(
                "The last unarchive: rows loaded back from storage.",
                {
                    "time": string("When it finished.", format="date-time"),
                    "from": string("First timestamp brought back."),
                    "to": string("End of the range (exclusive)."),
                    "into": string("side or source."),
                    "objects": integer("Objects read and verified.", format="int64"),
                    "rows": integer("Rows inserted.", format="int64"),
                    "message": string("The outcome in words."),
                },
            ),
            "progress": progress(),
        },
    )
    columns = [
        ready_column(),
        reason_column("Ready"),
        {"name": "Table", "type": "string", "jsonPath": ".spec.table.name"},
        {"name": "Last Rows", "type": "integer", "jsonPath": ".status.lastRun.rows"},
        {"name": "Total Rows", "type": "integer", "jsonPath": ".status.totals.rows"},
        {"name": "Oldest Row", "type": "date", "jsonPath": ".status.oldestRowTime"},
        age_column(),
    ]
    return crd(
        "TableArchive",
        "tablearchives",
        ["tarchive"],
        "A table whose old rows cellar's archive job moves to Parquet in object storage (S3, Azure Blob or GCS).",
        spec,
        status,
        columns,
    )
