"""Apache Spark for the tests that read cellar's Iceberg archives with it: PySpark and the Iceberg Spark runtime,
Iceberg's AWS bundle and PostgreSQL's JDBC driver, fetched once into the cache by build-servers.sh (component
`spark`), and a local Spark (local[2], small memory) started only by the tests that ask for it.

Spark reads the table as a data team would: through Iceberg's JdbcCatalog over the very PostgreSQL tables that
PyIceberg's SqlCatalog writes (`iceberg_tables`, `iceberg_namespace_properties`, with the `iceberg_type` column of
Iceberg's V1 JDBC schema), with S3FileIO against MinIO. The JdbcCatalog's catalog_name is the Spark catalog's
name, so the catalog is registered under the name cellar's catalog has (spec.iceberg.catalog.name, `cellar`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.harness.stack import S3_ACCESS_KEY, S3_SECRET_KEY, built_binaries, log


def spark_install() -> tuple[Path, Path]:
    """(the folder PySpark is installed in, the folder of the jars), fetched on first use."""
    found = built_binaries(["spark"])
    return found["spark-python"], found["spark-jars"]


def start_spark() -> Any:
    """A local SparkSession with the Iceberg runtime and its SQL extensions (CALL, VERSION AS OF)."""
    python, jars = spark_install()
    if str(python) not in sys.path:
        sys.path.insert(0, str(python))
    from pyspark.sql import SparkSession

    # py4j logs its connections' closing at INFO, from finalizers that run after pytest closed its streams.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    started = time.monotonic()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("cellar-tests")
        .config("spark.jars", ",".join(str(jar) for jar in sorted(jars.glob("*.jar"))))
        .config("spark.driver.memory", "768m")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.extensions", "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    log(f"Spark {session.version} started in {time.monotonic() - started:.0f}s (jars in {jars})")
    return session


def jdbc_catalog_conf(
    database: dict[str, Any],
    s3_endpoint: str,
    warehouse: str,
    *,
    catalog: str = "cellar",
    schema: str = "cellar_iceberg",
) -> dict[str, str]:
    """The Spark settings of an Iceberg catalog `catalog` over cellar's SQL catalog in `database` (the test
    Secret's keys), its data files on MinIO: what docs/guide.md tells a data team to set. `warehouse`: where
    tables Spark itself made would go (the JdbcCatalog will not start without one; cellar's tables keep theirs)."""
    prefix = f"spark.sql.catalog.{catalog}"
    url = f"jdbc:postgresql://{database['host']}:{database['port']}/{quote(database['dbname'])}?currentSchema={schema}"
    return {
        prefix: "org.apache.iceberg.spark.SparkCatalog",
        f"{prefix}.type": "jdbc",
        f"{prefix}.uri": url,
        f"{prefix}.jdbc.user": str(database["username"]),
        f"{prefix}.jdbc.password": str(database["password"]),
        f"{prefix}.jdbc.schema-version": "V1",
        f"{prefix}.warehouse": warehouse,
        f"{prefix}.io-impl": "org.apache.iceberg.aws.s3.S3FileIO",
        f"{prefix}.s3.endpoint": s3_endpoint,
        f"{prefix}.s3.path-style-access": "true",
        f"{prefix}.s3.access-key-id": S3_ACCESS_KEY,
        f"{prefix}.s3.secret-access-key": S3_SECRET_KEY,
        f"{prefix}.client.region": "us-east-1",
    }


def spark_over(spark: Any, conf: dict[str, str]) -> Any:
    """A new session of the running Spark (its own catalogs) with `conf` set: each test's database differs."""
    session = spark.newSession()
    for key, value in conf.items():
        session.conf.set(key, value)
    return session
