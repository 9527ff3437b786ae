"""The chart (cronjobs/) with the real Helm 4 and 3 (built by the harness): lint, what a fleet values file renders,
the errors a bad values file gets (its values schema and the templates' own checks), the release manifest, and
install, upgrade and uninstall on the real kube-apiserver, CRD upgrades included."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.harness.chart import CHART, CRD_DIR, FLEET_EXAMPLE, helm, helm_binary, render, rendered
from tests.harness.stack import REPO, LocalStack

STORAGE = {
    "bucket": "cellar",
    "credentials": {
        "accessKeyId": {"name": "object-storage", "key": "id"},
        "secretAccessKey": {"name": "object-storage", "key": "secret"},
    },
}
RECIPIENT = "age1yalfykae8edwcd84sjcq5tvqtz0r8mz97fvt6pv05c9h7az4z9gq7zpzhg"


def write_values(tmp_path: Path, values: dict[str, Any], name: str = "values.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def spread(namespace: str, name: str) -> tuple[int, int]:
    """The minute and hour the chart derives from a resource's name (adler32, as Helm's adler32sum)."""
    hashed = zlib.adler32(f"{namespace}/{name}".encode())
    return hashed % 60, hashed // 60 % 24


def kinds(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def pods_of(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every Pod spec the chart renders: the CronJobs' and the Jobs'."""
    pods = [d["spec"]["jobTemplate"]["spec"]["template"]["spec"] for d in documents if d["kind"] == "CronJob"]
    return pods + [d["spec"]["template"]["spec"] for d in documents if d["kind"] == "Job"]


def readable(documents: list[dict[str, Any]], job: str, resource: str = "secrets") -> set[str]:
    """The names the Role of `job` may get of `resource`; a rule without resourceNames would be all of them."""
    role = rendered(documents, "Role", f"cellar-{job}")
    names: set[str] = set()
    for rule in role["rules"]:
        if resource in rule["resources"]:
            assert rule.get("resourceNames"), f"cellar-{job} may read every one of {resource}: {rule}"
            names |= set(rule["resourceNames"])
    return names


def test_the_chart_lints_with_its_defaults_and_the_fleet_example() -> None:
    for values in ([], ["--values", str(FLEET_EXAMPLE)]):
        linted = helm("lint", "--strict", str(CHART), *values, check=False)
        assert linted.returncode == 0, linted.stdout + linted.stderr
        assert "0 chart(s) failed" in linted.stdout


def test_helm_3_renders_what_helm_4_renders() -> None:
    """The chart is apiVersion v2 and uses only what both majors have: the same documents, lint clean."""
    settings = ("monitoring.enabled=true",)
    helm4 = render(FLEET_EXAMPLE, namespace="shop", settings=settings)
    helm3 = render(FLEET_EXAMPLE, namespace="shop", settings=settings, component="helm3")
    assert len(helm4) == len(helm3) > 20
    assert helm3 == helm4
    linted = helm("lint", "--strict", str(CHART), "--values", str(FLEET_EXAMPLE), component="helm3", check=False)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_the_fleet_example_renders_eight_resources_and_their_cronjobs() -> None:
    documents = render(
        FLEET_EXAMPLE, namespace="shop", settings=("image.registry=registry.example/mirror", "image.tag=1.2.3")
    )
    cronjobs = kinds(documents, "CronJob")
    backups, archives = kinds(documents, "DatabaseBackup"), kinds(documents, "TableArchive")
    assert sorted(backups) == ["analytics-server", "billing", "customers", "inventory", "orders"]
    assert sorted(archives) == ["audit-log", "events", "orders-created-at"]
    assert sorted(cronjobs) == sorted(
        [f"cellar-backup-{n}" for n in backups] + [f"cellar-archive-{n}" for n in archives]
    )
    assert all(len(name) <= 52 for name in cronjobs)
    assert backups["analytics-server"]["spec"]["databases"] == {"all": True}
    # Every Pod runs the one image value.
    images = {c["image"] for pod in pods_of(documents) for c in pod["containers"]}
    assert images == {"registry.example/mirror/cellar-backup:1.2.3", "registry.example/mirror/cellar-archive:1.2.3"}
    # Each resource gets its own prefix, and the defaults' storage otherwise.
    prefixes = [r["spec"]["storage"]["prefix"] for r in [*backups.values(), *archives.values()]]
    assert sorted(prefixes) == sorted(f"shop/{n}" for n in [*backups, *archives])
    assert {r["spec"]["storage"]["bucket"] for r in [*backups.values(), *archives.values()]} == {"cellar"}
    # @daily and @hourly are spread by a hash of the name; five fields are kept.
    for name, schedule in (("orders", "{m} {h} * * *"), ("customers", "{m} * * * *"), ("inventory", "{m} {h} * * *")):
        minute, hour = spread("shop", name)
        assert cronjobs[f"cellar-backup-{name}"]["spec"]["schedule"] == schedule.format(m=minute, h=hour)
    assert cronjobs["cellar-backup-billing"]["spec"]["schedule"] == "15 1 * * *"
    assert len({c["spec"]["schedule"] for c in cronjobs.values()}) == len(cronjobs), "no two start together"
    # staleAfter: one period of the schedule plus the Job's deadline (6h).
    assert backups["orders"]["spec"]["staleAfter"] == "30h"
    assert backups["customers"]["spec"]["staleAfter"] == "7h"
    # The Roles name exactly the Secrets the specs use; nothing reads a restore target or an identity.
    assert readable(documents, "backup") == {
        "analytics-db-superuser",
        "billing-db-app",
        "cellar-object-storage",
        "customers-db-app",
        "inventory-db-app",
        "orders-db-app",
    }
    assert readable(documents, "archive") == {
        "billing-db-app",
        "cellar-object-storage",
        "inventory-db-app",
        "orders-db-app",
    }
    assert readable(documents, "restore") == set()
    # Resources outlive the release; the data in storage is never the chart's.
    assert all(r["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for r in backups.values())


def test_keys_are_granted_only_to_the_job_that_uses_them(tmp_path: Path) -> None:
    identity = {"name": "backup-identity", "key": "key.txt"}
    values = {
        "defaults": {"storage": STORAGE},
        "backups": {
            "tested": {
                "spec": {
                    "database": {"secretRef": {"name": "tested-db"}},
                    "encryption": {"recipients": [RECIPIENT], "identitySecretRef": identity},
                    "verify": {"enabled": True, "target": {"secretRef": {"name": "scratch-server"}}},
                }
            },
            "sealed": {
                "staging": {"claimName": "dump-scratch"},
                "spec": {
                    "parallelism": 4,
                    "database": {"secretRef": {"name": "sealed-db"}},
                    "encryption": {
                        "recipientsFrom": {"configMapKeyRef": {"name": "recipients", "key": "r.txt"}},
                        "identitySecretRef": {"name": "sealed-identity", "key": "key.txt"},
                    },
                },
            },
        },
        "restores": {
            "copy": {
                "spec": {
                    "backup": {"name": "sealed"},
                    "target": {"secretRef": {"name": "restore-target"}},
                    "decryption": {"identitySecretRef": {"name": "sealed-identity", "key": "key.txt"}},
                },
                "staging": {"sizeLimit": "5Gi"},
            }
        },
    }
    documents = render(write_values(tmp_path, values))
    # sealed is not restore-tested: its backups never read its identity, only the restore does.
    assert readable(documents, "backup") == {
        "backup-identity",
        "object-storage",
        "scratch-server",
        "sealed-db",
        "tested-db",
    }
    assert readable(documents, "backup", "configmaps") == {"recipients"}
    assert readable(documents, "restore") == {"object-storage", "restore-target", "sealed-identity"}
    assert readable(documents, "archive") == set()
    job = rendered(documents, "Job", "cellar-restore-copy")
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "cellar-restore"
    assert {"name": "staging", "emptyDir": {"sizeLimit": "5Gi"}} in pod["volumes"]
    assert rendered(documents, "DatabaseRestore", "copy")["spec"]["staging"] == {"path": "/staging"}
    # A backup's staging: entry mounts its volume for spec.parallelism's directory, as a restore's does.
    backup_pod = rendered(documents, "CronJob", "cellar-backup-sealed")["spec"]["jobTemplate"]["spec"]["template"][
        "spec"
    ]
    assert {"name": "staging", "persistentVolumeClaim": {"claimName": "dump-scratch"}} in backup_pod["volumes"]
    assert {"name": "staging", "mountPath": "/staging"} in backup_pod["containers"][0]["volumeMounts"]
    assert rendered(documents, "DatabaseBackup", "sealed")["spec"]["staging"] == {"path": "/staging"}
    tested_pod = rendered(documents, "CronJob", "cellar-backup-tested")["spec"]["jobTemplate"]["spec"]["template"][
        "spec"
    ]
    assert not any(volume["name"] == "staging" for volume in tested_pod["volumes"])
    restore_rules = rendered(documents, "Role", "cellar-restore")["rules"]
    assert {"apiGroups": ["cellar.dev"], "resources": ["databaserestores", "databasebackups"], "verbs": ["get"]} in (
        restore_rules
    )
    backup_rules = rendered(documents, "Role", "cellar-backup")["rules"]
    assert not any("databaserestores" in rule["resources"] for rule in backup_rules)


def test_a_rest_catalogs_secrets_and_ca_are_granted_to_the_archive_job(tmp_path: Path) -> None:
    def archive(auth: dict[str, Any], ca: dict[str, Any]) -> dict[str, Any]:
        rest = {"uri": "https://catalog.example", "auth": auth, "caBundle": ca}
        return {
            "spec": {
                "database": {"secretRef": {"name": "app-db"}},
                "table": {"name": "orders"},
                "timestampColumn": "created_at",
                "olderThan": "30d",
                "format": "Iceberg",
                "iceberg": {"catalog": {"type": "Rest", "rest": rest}},
            }
        }

    oauth2 = {"clientId": {"name": "lake-client", "key": "id"}, "clientSecret": {"name": "lake-secret", "key": "s"}}
    values = {
        "defaults": {"storage": STORAGE},
        "archives": {
            "orders": archive({"oauth2": oauth2}, {"configMapKeyRef": {"name": "lake-ca", "key": "ca.pem"}}),
            "events": archive(
                {"bearerToken": {"name": "lake-token", "key": "t"}},
                {"secretKeyRef": {"name": "lake-ca-secret", "key": "ca.pem"}},
            ),
        },
    }
    documents = render(write_values(tmp_path, values))
    assert readable(documents, "archive") == {
        "app-db",
        "lake-ca-secret",
        "lake-client",
        "lake-secret",
        "lake-token",
        "object-storage",
    }
    assert readable(documents, "archive", "configmaps") == {"lake-ca"}
    assert readable(documents, "backup") == set()


def test_azure_and_gcs_keys_are_granted_from_their_blocks(tmp_path: Path) -> None:
    gke = {"iam.gke.io/gcp-service-account": "cellar@acme.iam.gserviceaccount.com"}
    values = {
        "serviceAccountAnnotations": gke,
        "defaults": {"storage": STORAGE},  # S3 for the others; a resource on another provider takes none of it
        "backups": {
            "on-azure": {
                "spec": {
                    "database": {"secretRef": {"name": "azure-db"}},
                    "storage": {
                        "provider": "AzureBlob",
                        "azureBlob": {
                            "account": "acme1",
                            "container": "backups",
                            "credentials": {"sasToken": {"name": "azure-sas", "key": "token"}},
                        },
                    },
                }
            },
            "on-gke": {
                "spec": {
                    "database": {"secretRef": {"name": "gke-db"}},
                    "storage": {
                        "provider": "GCS",
                        "gcs": {"bucket": "acme-backups", "credentials": {"workloadIdentity": True}},
                    },
                }
            },
        },
        "archives": {
            "events": {
                "spec": {
                    "database": {"secretRef": {"name": "azure-db"}},
                    "storage": {
                        "provider": "GCS",
                        "gcs": {
                            "bucket": "acme-lake",
                            "credentials": {"serviceAccountKey": {"name": "gcs-key", "key": "k"}},
                        },
                    },
                    "table": {"name": "events"},
                    "timestampColumn": "at",
                    "olderThan": "90d",
                }
            }
        },
    }
    documents = render(write_values(tmp_path, values))
    assert readable(documents, "backup") == {"azure-db", "azure-sas", "gke-db"}  # workload identity: no Secret
    assert readable(documents, "archive") == {"azure-db", "gcs-key"}
    storage = rendered(documents, "DatabaseBackup", "on-azure")["spec"]["storage"]
    assert (storage["provider"], storage["prefix"]) == ("AzureBlob", "default/on-azure")
    assert "bucket" not in storage
    assert "credentials" not in storage
    for job in ("backup", "archive", "restore"):  # workload identity binds to the ServiceAccount
        assert rendered(documents, "ServiceAccount", f"cellar-{job}")["metadata"]["annotations"] == gke


SECTIONS = {"backups": "databasebackups", "archives": "tablearchives", "restores": "databaserestores"}
# A valid spec of each kind, which the tests take one required field from at a time.
DATABASE = {"secretRef": {"name": "orders-db"}, "sslMode": "require"}
VALID_SPECS: dict[str, dict[str, Any]] = {
    "backups": {"database": DATABASE, "storage": STORAGE},
    "archives": {
        "database": DATABASE,
        "storage": STORAGE,
        "table": {"name": "orders"},
        "timestampColumn": "created_at",
        "olderThan": "400d",
    },
    "restores": {"backup": {"name": "orders"}, "target": {"secretRef": {"name": "copy-db"}}},
}
HELMS = ("helm", "helm3")
MISSING = re.compile(r"at '[^']*': missing property '[^']*'")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"backups": {"Orders": {"spec": VALID_SPECS["backups"]}}},
            "backups.Orders: a name is lowercase letters, digits and '-'",
        ),
        ({"backups": {"a" * 38: {"spec": VALID_SPECS["backups"]}}}, f"backups.{'a' * 38}: use at most 37 characters"),
        (
            {"backups": {"orders": {"schedule": "every night", "spec": VALID_SPECS["backups"]}}},
            'backups.orders.schedule: "every night" is not a schedule',
        ),
        (
            {"archives": {"events": {"activeDeadline": "6 hours", "spec": VALID_SPECS["archives"]}}},
            'archives.events.activeDeadline: "6 hours" is not a duration',
        ),
        (
            {"restores": {"copy": {"spec": {**VALID_SPECS["restores"], "backup": {"name": "elsewhere"}}}}},
            'restores.copy: spec.backup.name "elsewhere" is not under backups:',
        ),
    ],
)
def test_a_bad_values_file_fails_with_what_to_fix(tmp_path: Path, values: dict[str, Any], message: str) -> None:
    failed = helm("template", "cellar", str(CHART), "--values", str(write_values(tmp_path, values)), check=False)
    assert failed.returncode != 0
    assert message in failed.stderr, failed.stderr


def crd_spec_schema(section: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRD_DIR / f"{SECTIONS[section]}.yaml").read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])


def required_fields(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """(path of the object, field) of every field the CRD schema requires, at any depth under spec."""
    for field in schema.get("required", []):
        yield path, field
    for name, child in schema.get("properties", {}).items():
        yield from required_fields(child, (*path, name))


def example(schema: dict[str, Any]) -> Any:
    """A value of `schema` with its required fields (their values need not pass every pattern: only a missing field
    is looked for)."""
    if schema.get("type") == "object":
        return {field: example(schema["properties"][field]) for field in schema.get("required", [])}
    return {"string": "x1", "integer": 1, "boolean": True, "array": []}[schema["type"]]


def without(section: str, path: tuple[str, ...], field: str) -> dict[str, Any]:
    """The valid spec of `section` with the object at `path` present (made from its schema if absent) but `field`."""
    spec = copy.deepcopy(VALID_SPECS[section])
    schema, value = crd_spec_schema(section), spec
    for step in path:
        schema = schema["properties"][step]
        value = value.setdefault(step, example(schema))
    value.pop(field, None)
    return spec


def refusals(values: Path, *flags: str) -> dict[str, str]:
    """What `helm lint` and `helm template` of Helm 4 and 3 print for `values`; each must refuse it."""
    outputs = {}
    for component in HELMS:
        for verb in (["lint", "--strict"], ["template", "cellar"]):
            result = helm(*verb, str(CHART), "--values", str(values), *flags, check=False, component=component)
            assert result.returncode != 0, f"{component} {verb[0]} accepted {values.read_text()}"
            outputs[f"{component} {verb[0]}"] = result.stdout + result.stderr
    return outputs


def test_every_field_a_crd_requires_is_refused_by_lint_and_template_with_the_entrys_path(tmp_path: Path) -> None:
    """One values file (no defaults), an entry per field the CRDs require with that field left out, and one
    without a spec per kind: Helm 4 and 3, lint and template, name every entry's path."""
    values: dict[str, Any] = {section: {} for section in SECTIONS}
    expected = []
    cases = [
        (section, path, field) for section in SECTIONS for path, field in required_fields(crd_spec_schema(section))
    ]
    assert len(cases) > 70
    for number, (section, path, field) in enumerate(cases):
        name = f"without-{number}"
        values[section][name] = {"spec": without(section, path, field)}
        expected.append(f"at '/{'/'.join((section, name, 'spec', *path))}': missing property '{field}'")
    for section in SECTIONS:
        values[section]["no-spec"] = {"schedule": "@daily"} if section != "restores" else {}
        expected.append(f"at '/{section}/no-spec': missing property 'spec'")
    for command, output in refusals(write_values(tmp_path, values)).items():
        unnamed = [line for line in expected if line not in output]
        assert unnamed == [], f"{command} did not name {unnamed}:\n{output}"


@pytest.mark.parametrize(
    ("defaults", "specs", "expected"),
    [
        # defaults.storage lacks credentials: an entry that keeps S3 needs them; one of another provider its block.
        (
            {"database": DATABASE, "storage": {"bucket": "cellar"}},
            {"a": {}, "b": {"storage": {"provider": "GCS"}}, "c": {"storage": {"credentials": STORAGE["credentials"]}}},
            [
                "at '/backups/a/spec': missing property 'storage'",
                "at '/backups/b/spec/storage': missing property 'gcs'",
            ],
        ),
        # defaults.storage is Azure's without its block: an entry that names S3 takes nothing from it.
        (
            {"storage": {"provider": "AzureBlob"}},
            {"a": {"database": DATABASE}, "s3": {"database": DATABASE, "storage": {"provider": "S3"}}},
            [
                "at '/backups/a/spec': missing property 'storage'",
                "at '/backups/s3/spec/storage': missing property 'bucket'",
                "at '/backups/s3/spec/storage': missing property 'credentials'",
            ],
        ),
        # defaults.database without a Secret: every entry names its own.
        (
            {"database": {"sslMode": "require"}, "storage": STORAGE},
            {"a": {}, "b": {"database": {"dbname": "b"}}, "c": {"database": {"secretRef": {"name": "c"}}}},
            [
                "at '/backups/a/spec': missing property 'database'",
                "at '/backups/b/spec/database': missing property 'secretRef'",
            ],
        ),
    ],
    ids=["s3-without-credentials", "azure-default-s3-entry", "database-without-secret"],
)
def test_what_defaults_do_not_give_an_entry_must(
    tmp_path: Path, defaults: dict[str, Any], specs: dict[str, Any], expected: list[str]
) -> None:
    values = {"defaults": defaults, "backups": {name: {"spec": spec} for name, spec in specs.items()}}
    for command, output in refusals(write_values(tmp_path, values)).items():
        assert set(MISSING.findall(output)) == set(expected), f"{command}:\n{output}"


def test_what_defaults_give_an_entry_may_leave_out(tmp_path: Path) -> None:
    azure = {"account": "acme1", "container": "backups", "credentials": {"workloadIdentity": True}}
    values = {
        "defaults": {"storage": STORAGE, "database": {"secretRef": {"name": "shared-db"}, "sslMode": "require"}},
        "backups": {
            "orders": {"spec": {}},
            "customers": {"spec": {"database": {"dbname": "customers"}}},
            "on-azure": {"spec": {"storage": {"provider": "AzureBlob", "azureBlob": azure}}},
        },
        "archives": {"events": {"spec": {"table": {"name": "events"}, "timestampColumn": "at", "olderThan": "90d"}}},
    }
    values_file = write_values(tmp_path, values)
    for component in HELMS:
        linted = helm("lint", "--strict", str(CHART), "--values", str(values_file), check=False, component=component)
        assert linted.returncode == 0, linted.stdout + linted.stderr
    documents = render(values_file)
    assert rendered(documents, "DatabaseBackup", "orders")["spec"]["database"] == values["defaults"]["database"]
    customers = rendered(documents, "DatabaseBackup", "customers")["spec"]
    assert customers["database"] == {"secretRef": {"name": "shared-db"}, "sslMode": "require", "dbname": "customers"}
    assert rendered(documents, "TableArchive", "events")["spec"]["storage"]["bucket"] == "cellar"
    assert "bucket" not in rendered(documents, "DatabaseBackup", "on-azure")["spec"]["storage"]


@pytest.mark.parametrize(
    ("section", "spec", "message"),
    [
        (
            "backups",
            {"storage": STORAGE},
            "backups.orders.spec: database is required (here, or in defaults.database)",
        ),
        (
            "archives",
            {**VALID_SPECS["archives"], "database": {"sslMode": "require"}},
            "archives.orders.spec.database: secretRef is required (here, or in defaults.database)",
        ),
        (
            "backups",
            {"database": DATABASE},
            "backups.orders.spec.storage: provider S3 needs bucket and credentials (here, or in defaults.storage)",
        ),
        ("archives", {**VALID_SPECS["archives"], "table": {}}, "archives.orders.spec.table: name is required"),
    ],
)
def test_without_the_schema_the_templates_still_name_a_missing_field(
    tmp_path: Path, section: str, spec: dict[str, Any], message: str
) -> None:
    """`helm template --skip-schema-validation` (the values schema set aside): the templates check the merged spec
    against the CRD's own required fields before anything is rendered. (`helm lint` ignores a template's fail.)"""
    values = write_values(tmp_path, {section: {"orders": {"spec": spec}}})
    for component in HELMS:
        failed = helm(
            "template",
            "cellar",
            str(CHART),
            "--values",
            str(values),
            "--skip-schema-validation",
            check=False,
            component=component,
        )
        assert failed.returncode != 0
        assert message in failed.stderr, failed.stderr


@pytest.mark.parametrize(
    ("values", "pointer", "key"),
    [
        (
            {"backups": {"orders": {"spec": {**VALID_SPECS["backups"], "retension": {"keepLast": 3}}}}},
            "/backups/orders/spec",
            "retension",
        ),
        ({"backups": {"orders": {"shedule": "@daily", "spec": VALID_SPECS["backups"]}}}, "/backups/orders", "shedule"),
        (
            {"archives": {"events": {"spec": {**VALID_SPECS["archives"], "table": {"name": "e", "shema": "a"}}}}},
            "/archives/events/spec/table",
            "shema",
        ),
        ({"defaults": {"storage": {**STORAGE, "bukket": "x"}}}, "/defaults/storage", "bukket"),
        ({"backup": {"orders": {"spec": VALID_SPECS["backups"]}}}, "", "backup"),
    ],
    ids=["retension", "shedule", "shema", "bukket", "backup"],
)
def test_an_unknown_key_is_refused_not_dropped(tmp_path: Path, values: dict[str, Any], pointer: str, key: str) -> None:
    for command, output in refusals(write_values(tmp_path, values)).items():
        assert f"at '{pointer}': additional properties '{key}' not allowed" in output, f"{command}:\n{output}"


def test_the_release_manifest_is_what_the_chart_renders() -> None:
    """release/cellar.yaml, for kubectl users, is current: the CRDs and the one-backup example as Helm renders them."""
    checked = subprocess.run(
        [sys.executable, "-m", "tools.generate_release_manifest", "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HELM": str(helm_binary())},
    )
    assert checked.returncode == 0, checked.stderr
    documents = [d for d in yaml.safe_load_all((REPO / "release" / "cellar.yaml").read_text()) if d]
    assert sorted(d["metadata"]["name"] for d in documents if d["kind"] == "CustomResourceDefinition") == [
        "databasebackups.cellar.dev",
        "databaserestores.cellar.dev",
        "tablearchives.cellar.dev",
    ]
    assert rendered(documents, "DatabaseBackup", "orders")["spec"]["storage"]["prefix"] == "cellar/orders"
    assert rendered(documents, "CronJob", "cellar-backup-orders")["spec"]["concurrencyPolicy"] == "Forbid"


def test_the_release_manifest_applies_to_the_real_api_server(
    stack: LocalStack, crds: list[str], namespace: str
) -> None:
    """What a kubectl user runs, as a server-side dry run (the CRDs are the test server's already)."""
    kubectl = [str(stack.binaries["kubectl"]), f"--kubeconfig={stack.kubeconfig}"]
    manifest = REPO / "release" / "cellar.yaml"
    applied = subprocess.run(
        [*kubectl, "apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", str(manifest)],
        capture_output=True,
        text=True,
    )
    assert applied.returncode == 0, applied.stderr
    assert "databasebackup.cellar.dev/orders serverside-applied (server dry run)" in applied.stdout, applied.stdout
    assert "cronjob.batch/cellar-backup-orders serverside-applied (server dry run)" in applied.stdout, applied.stdout


def release(
    stack: LocalStack, verb: str, namespace: str, values: Path, chart: Path = CHART, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`helm install` or `helm upgrade` of release cellar into `namespace` on the real API server."""
    return helm(
        verb,
        "cellar",
        str(chart),
        "--namespace",
        namespace,
        "--values",
        str(values),
        kubeconfig=stack.kubeconfig,
        check=check,
    )


@pytest.fixture
def release_namespace(admin_api: Any, crds: list[str], namespace: str, stack: LocalStack) -> Iterator[str]:
    """The test's namespace; the release in it is uninstalled at the end, whatever happened."""
    yield namespace
    helm("uninstall", "cellar", "--namespace", namespace, kubeconfig=stack.kubeconfig, check=False)


def installed(admin_api: Any, namespace: str) -> tuple[dict[str, str], set[str], set[str]]:
    """CronJob name -> schedule, the DatabaseBackups and the Roles in the namespace."""
    batch, rbac = client.BatchV1Api(admin_api), client.RbacAuthorizationV1Api(admin_api)
    cronjobs = {c.metadata.name: c.spec.schedule for c in batch.list_namespaced_cron_job(namespace).items}
    backups = client.CustomObjectsApi(admin_api).list_namespaced_custom_object(
        "cellar.dev", "v1alpha1", namespace, "databasebackups"
    )["items"]
    roles = {r.metadata.name for r in rbac.list_namespaced_role(namespace).items}
    return cronjobs, {b["metadata"]["name"] for b in backups}, roles


def test_install_upgrade_and_uninstall_on_the_real_api_server(
    stack: LocalStack, admin_api: Any, release_namespace: str, tmp_path: Path
) -> None:
    namespace = release_namespace
    fleet = yaml.safe_load(FLEET_EXAMPLE.read_text())
    out = release(stack, "install", namespace, FLEET_EXAMPLE).stdout
    assert f"kubectl -n {namespace} create job --from=cronjob/cellar-backup-" in out  # NOTES.txt
    cronjobs, backups, roles = installed(admin_api, namespace)
    assert len(cronjobs) == 8
    assert backups == set(fleet["backups"])
    assert roles == {"cellar-backup", "cellar-archive", "cellar-restore"}
    minute, hour = spread(namespace, "orders")
    assert cronjobs["cellar-backup-orders"] == f"{minute} {hour} * * *"

    # A schedule changed and a database added.
    fleet["backups"]["orders"]["schedule"] = "45 3 * * *"
    fleet["backups"]["payments"] = {"spec": {"database": {"secretRef": {"name": "payments-db-app"}}}}
    release(stack, "upgrade", namespace, write_values(tmp_path, fleet))
    cronjobs, backups, _ = installed(admin_api, namespace)
    assert cronjobs["cellar-backup-orders"] == "45 3 * * *"
    assert "cellar-backup-payments" in cronjobs
    assert "payments" in backups
    role = client.RbacAuthorizationV1Api(admin_api).read_namespaced_role("cellar-backup", namespace)
    assert "payments-db-app" in {n for rule in role.rules for n in (rule.resource_names or [])}
    stored = client.CustomObjectsApi(admin_api).get_namespaced_custom_object(
        "cellar.dev", "v1alpha1", namespace, "databasebackups", "orders"
    )
    assert stored["spec"]["staleAfter"] == "30h"  # the new schedule's period is a day too

    helm("uninstall", "cellar", "--namespace", namespace, kubeconfig=stack.kubeconfig)
    cronjobs, backups, roles = installed(admin_api, namespace)
    assert cronjobs == {}
    assert roles == set()
    assert backups == set(fleet["backups"]), "the resources and their history stay"
    crds = client.ApiextensionsV1Api(admin_api).list_custom_resource_definition().items
    assert {"databasebackups.cellar.dev", "databaserestores.cellar.dev", "tablearchives.cellar.dev"} <= {
        c.metadata.name for c in crds
    }


def test_a_crd_that_gained_a_field_reaches_the_cluster_by_the_documented_apply(
    stack: LocalStack, admin_api: Any, release_namespace: str, tmp_path: Path
) -> None:
    """Helm never upgrades crds/: the README's `kubectl apply --server-side --force-conflicts -f crds/` does."""
    namespace = release_namespace
    newer = tmp_path / "cellar"
    shutil.copytree(CHART, newer)
    crd_file = newer / "crds" / "databasebackups.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["note"] = {"type": "string", "description": "A field a newer chart added."}
    crd_file.write_text(yaml.safe_dump(crd))
    values_schema = json.loads((newer / "values.schema.json").read_text())  # generated from the same source
    values_schema["properties"]["backups"]["additionalProperties"]["properties"]["spec"]["properties"]["note"] = {
        "type": "string"
    }
    (newer / "values.schema.json").write_text(json.dumps(values_schema))
    older = {
        "defaults": {"storage": STORAGE},
        "backups": {"orders": {"spec": {"database": {"secretRef": {"name": "db"}}}}},
    }
    release(stack, "install", namespace, write_values(tmp_path, older, "older.yaml"))
    older["backups"]["orders"]["spec"]["note"] = "from the newer chart"  # what a user of the newer chart writes
    values_file = write_values(tmp_path, older)

    def note() -> Any:
        return (
            client.CustomObjectsApi(admin_api)
            .get_namespaced_custom_object("cellar.dev", "v1alpha1", namespace, "databasebackups", "orders")["spec"]
            .get("note")
        )

    kubectl = [str(stack.binaries["kubectl"]), f"--kubeconfig={stack.kubeconfig}"]
    try:
        upgraded = release(stack, "upgrade", namespace, values_file, newer, check=False)
        # The old CRD stays: the server drops the unknown field, or refuses it (strict field validation).
        assert upgraded.returncode == 0 or "note" in upgraded.stderr, upgraded.stderr
        assert note() is None
        applied = subprocess.run(
            [*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(newer / "crds")],
            capture_output=True,
            text=True,
        )
        assert applied.returncode == 0, applied.stderr
        subprocess.run(
            [*kubectl, "wait", "--for=condition=Established", "crd/databasebackups.cellar.dev", "--timeout=60s"],
            check=True,
            capture_output=True,
        )
        release(stack, "upgrade", namespace, values_file, newer)
        assert note() == "from the newer chart"
    finally:
        restored = subprocess.run(
            [*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR)],
            capture_output=True,
            text=True,
        )
        assert restored.returncode == 0, restored.stderr
