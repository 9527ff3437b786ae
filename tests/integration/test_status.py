"""Status writes through the status subresource of a real API server."""

from __future__ import annotations

import threading
import time
from typing import Any

from kubernetes import client

from common.conditions import find_condition
from common.invocation import Invocation
from common.kube import DATABASE_BACKUP, Kube, ResourceRef
from common.kube_client import connect
from common.runtime import Interrupts, RunContext
from tests.harness.stack import LocalStack
from tests.integration.test_resources import MINIMAL_BACKUP_SPEC


def _context(stack: LocalStack, namespace: str, name: str) -> RunContext:
    kube = Kube(connect(str(stack.kubeconfig)))
    ref = ResourceRef(DATABASE_BACKUP, namespace, name)
    invocation = Invocation(name=name, namespace=namespace, kubeconfig=None, dry_run=False)
    return RunContext("test", "run1", invocation, kube, ref, kube.get(ref), Interrupts())


def test_conditions_upsert_by_type_and_keep_transition_time(
    stack: LocalStack, namespace: str, create_resource: Any
) -> None:
    create_resource("DatabaseBackup", {"metadata": {"name": "s1"}, "spec": MINIMAL_BACKUP_SPEC})
    ctx = _context(stack, namespace, "s1")
    ctx.update_status([("Ready", "False", "NeverRun", "no backup yet")])
    first = find_condition(ctx.resource["status"]["conditions"], "Ready")
    assert first is not None
    time.sleep(1.1)  # lastTransitionTime has second precision
    ctx.update_status([("Ready", "False", "DumpFailed", "pg_dump failed")])
    conditions = ctx.resource["status"]["conditions"]
    assert [c["type"] for c in conditions] == ["Ready"]
    assert conditions[0]["reason"] == "DumpFailed"
    assert conditions[0]["lastTransitionTime"] == first["lastTransitionTime"]
    assert conditions[0]["observedGeneration"] == ctx.generation == 1
    time.sleep(1.1)
    ctx.update_status([("Ready", "True", "Completed", "ok")])
    assert ctx.resource["status"]["conditions"][0]["lastTransitionTime"] != first["lastTransitionTime"]


def test_conditions_written_by_others_survive(
    stack: LocalStack, admin_api: Any, namespace: str, create_resource: Any
) -> None:
    create_resource("DatabaseBackup", {"metadata": {"name": "s2"}, "spec": MINIMAL_BACKUP_SPEC})
    # Another controller (say, a policy engine) writes its own condition.
    client.CustomObjectsApi(admin_api).patch_namespaced_custom_object_status(
        "cellar.dev",
        "v1alpha1",
        namespace,
        "databasebackups",
        "s2",
        {
            "status": {
                "conditions": [
                    {
                        "type": "PolicyCompliant",
                        "status": "True",
                        "reason": "Checked",
                        "message": "ok",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ]
            }
        },
        _content_type="application/merge-patch+json",
    )
    ctx = _context(stack, namespace, "s2")
    ctx.update_status([("Ready", "True", "Completed", "ok")])
    stored = client.CustomObjectsApi(admin_api).get_namespaced_custom_object_status(
        "cellar.dev", "v1alpha1", namespace, "databasebackups", "s2"
    )
    types = {c["type"]: c for c in stored["status"]["conditions"]}
    assert set(types) == {"PolicyCompliant", "Ready"}
    assert types["PolicyCompliant"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_concurrent_writers_lose_no_update(stack: LocalStack, namespace: str, create_resource: Any) -> None:
    """Eight writers each add their own condition and bump a shared counter 5 times: every write lands."""
    create_resource("DatabaseBackup", {"metadata": {"name": "s3"}, "spec": MINIMAL_BACKUP_SPEC})
    writers, rounds = 8, 5
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            ctx = _context(stack, namespace, "s3")
            for round_number in range(rounds):
                ctx.update_status(
                    [(f"Writer{index}", "True", "Wrote", f"round {round_number}")],
                    compute=lambda status: {"backupsKept": int(status.get("backupsKept") or 0) + 1},
                )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    final = _context(stack, namespace, "s3").resource["status"]
    assert final["backupsKept"] == writers * rounds
    assert sorted(c["type"] for c in final["conditions"]) == sorted(f"Writer{i}" for i in range(writers))
    assert all(c["message"] == f"round {rounds - 1}" for c in final["conditions"])
