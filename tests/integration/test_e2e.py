"""End to end on a real node: cellar installed with `helm install` from its chart (a values file of two backups,
one sealed with age and one of a whole server, and one archive, with only the image registry and tag set), its
CronJobs fire on a real kube-controller-manager; kube-scheduler binds their Pods to a real kubelet, which runs
cellar's image (built from the project's wheel, tests/harness/image.py) as containers of containerd and runc, in a
namespace that admits only Pods of the restricted Pod Security profile.

- the backups and the archive succeed, their resources turn Ready, and the process in the container reports that
  it ran with a read-only root, a non-root UID in group 0, no capabilities, no_new_privs and a seccomp filter;
- a restore added under restores: by `helm upgrade` runs once as the ServiceAccount cellar-restore;
- a Job whose activeDeadlineSeconds passes mid-dump: the kubelet sends SIGTERM, the run records Interrupted, no
  object or multipart upload is left, and `kubectl describe pod` shows the termination message;
- `kubectl drain` evicts a backup mid-upload: SIGTERM, Interrupted, and the shipped podFailurePolicy ignores the
  failure (DisruptionTarget), so the Job runs it again, as an arbitrary UID in group 0, once the node is uncordoned;
- exit 3 fails its Job at once through podFailurePolicy; `kubectl create job --from=cronjob/...` backs up now.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import urllib3
import yaml
from kubernetes import client, watch

from tests.harness.chart import CHART, helm
from tests.harness.image import DOCKERFILES, IMAGE_TAG, image_name, layout_from_dockerfile
from tests.harness.image import build as build_images
from tests.harness.realnode import NODE_NAME, REPORT, RealNode
from tests.harness.stack import LocalStack, built_binaries, log
from tests.integration.archive_helpers import dsn, list_all
from tests.integration.backup_helpers import conditions, get_status
from tests.integration.cli_helpers import cellar
from tests.integration.environments import JobEnvironment

ARBITRARY_UID = 1000770000  # the kind of UID OpenShift's restricted SCC assigns, in group 0
KEEP = "cellar.dev/e2e-keep"  # a finalizer the test puts on a Pod so that it can still describe it


@pytest.fixture(scope="module")
def images() -> Iterator[Path]:
    """cellar's two images and the pause image, built from the project's wheel, as one OCI archive."""
    archive = Path(tempfile.mkdtemp(prefix="cellar-images-", dir="/tmp")) / "cellar-images.tar"
    build_images(archive)
    yield archive
    archive.unlink(missing_ok=True)
    archive.parent.rmdir()


@pytest.fixture(scope="module")
def node(stack: LocalStack, images: Path) -> Iterator[RealNode]:
    stack.start_controller_manager()
    stack.start_scheduler()
    real = RealNode(stack, images).start()
    try:
        yield real
    finally:
        real.stop()


def _read_oci(archive: Path) -> dict[str, tuple[dict[str, Any], list[dict[str, tarfile.TarInfo]]]]:
    """image name -> (config, each layer's entries by name), read back from the archive."""
    result = {}
    with tarfile.open(archive) as outer:

        def blob(digest: str) -> Any:
            return outer.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")

        index = json.load(outer.extractfile("index.json"))
        for descriptor in index["manifests"]:
            manifest = json.load(blob(descriptor["digest"]))
            layers = []
            for layer in manifest["layers"]:
                with tarfile.open(fileobj=blob(layer["digest"])) as entries:
                    layers.append({member.name: member for member in entries.getmembers()})
            config = json.load(blob(manifest["config"]["digest"]))
            result[descriptor["annotations"]["io.containerd.image.name"]] = (config, layers)
    return result


def test_the_image_is_laid_out_as_the_dockerfiles_say(images: Path) -> None:
    """What the kubelet runs is what the UBI Dockerfiles build, but for the base: the venv at the same path,
    owned by root and read-only for everyone else, without pip, the same USER, HOME, ENV and entrypoints."""
    read = _read_oci(images)
    shared_layers: set[tuple[str, ...]] = set()
    for title, dockerfile in DOCKERFILES.items():
        layout = layout_from_dockerfile(dockerfile)
        config, (base, venv) = read[image_name(title)]
        settings = config["config"]
        assert settings["User"] == layout.user
        assert settings["WorkingDir"] == layout.workdir
        assert settings["Entrypoint"] == layout.entrypoint
        assert settings["Cmd"] == layout.cmd
        assert {k: v for k, v in (e.split("=", 1) for e in settings["Env"])} == layout.env
        shared_layers.add(tuple(config["rootfs"]["diff_ids"]))
        members = list(venv.values())
        prefix = layout.venv.lstrip("/")
        assert all(m.name == prefix or m.name.startswith(prefix + "/") for m in members)
        for member in members:
            assert (member.uid, member.gid) == layout.venv_owner, member.name
            if not member.issym():
                assert member.mode == layout.venv_mode, (member.name, oct(member.mode))
        names = set(venv)
        assert f"{prefix}/bin/{layout.entrypoint[0]}" in names
        assert not any(name.startswith(f"{prefix}/bin/pip") for name in names), "pip is removed, as in the build"
        assert any(name.endswith(".pyc") for name in names), "byte-compiled: nothing is written at run time"
        assert base["./tmp"].mode == 0o1777  # the emptyDir mounted there takes this mode
        assert "./usr/lib/postgresql/15/bin/pg_dump" in base
    assert len(shared_layers) == 1, "both images share their layers, as the UBI images share their runtime stages"


def _values(env: JobEnvironment, **sections: Any) -> dict[str, Any]:
    """A values file as a user writes it, with the test's images, database and bucket."""
    return {
        "image": {"registry": image_name("cellar-backup").rsplit("/", 1)[0], "tag": IMAGE_TAG},
        "defaults": {
            "storage": {k: v for k, v in env.storage_spec.items() if k != "prefix"},  # each its own: <ns>/<name>
            "database": {"secretRef": {"name": "cellar-database"}, "sslMode": "disable"},
        },
        **sections,
    }


def _fleet(env: JobEnvironment, recipient: str) -> dict[str, Any]:
    """Two backups (the test's database sealed with age, and a whole server: its databases and roles) and one
    archive, each at the schedule a user leaves to the chart."""
    return {
        "backups": {
            "nightly": {"spec": {"encryption": {"recipients": [recipient]}}},
            "server": {
                "schedule": "@hourly",
                "spec": {
                    "databases": {"names": [env.database["dbname"], _second_database(env)]},
                    "globals": {"enabled": True, "noRolePasswords": True},
                },
            },
        },
        "archives": {
            "events": {
                "spec": {
                    "table": {"schema": "public", "name": "events"},
                    "timestampColumn": "created_at",
                    "olderThan": "30d",
                }
            }
        },
    }


def _second_database(env: JobEnvironment) -> str:
    """The other database of the whole-server backup: the test's role made it (it may create databases)."""
    return f"{env.database['dbname']}_b"


def _recipient(tmp_path: Path) -> str:
    """The public key of the identity the cluster fixture made (age-keygen -y)."""
    identity = tmp_path / "identity.txt"
    return subprocess.run(
        ["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True
    ).stdout.strip()


def helm_install(env: JobEnvironment, tmp_path: Path, verb: str, values: dict[str, Any], *flags: str) -> str:
    """`helm install` or `helm upgrade` of the chart into the test's namespace, as the README says."""
    values_file = tmp_path / f"values-{verb}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    return helm(
        verb,
        "cellar",
        str(CHART),
        "--namespace",
        env.namespace,
        "--values",
        str(values_file),
        *flags,
        kubeconfig=env.stack.kubeconfig,
    ).stdout


@pytest.fixture
def cluster(node: RealNode, job_env: JobEnvironment, tmp_path: Path) -> Iterator[JobEnvironment]:
    """The test's namespace made restricted, cellar installed into it with `helm install` (two backups, one of a
    whole server, a sealed one, one archive, and three backups the failure tests use), and the database and
    storage Secrets pointing where a Pod reaches the servers."""
    core = client.CoreV1Api(job_env.admin_api)
    core.patch_namespace(
        job_env.namespace,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    host, port = node.forward(int(job_env.database["port"]))
    job_env.create_secret("cellar-database", {**job_env.database, "host": host, "port": str(port)})
    job_env.create_secret("cellar-restore-target", {**job_env.database, "host": host, "port": str(port)})
    s3_port = int(job_env.stack.s3_endpoint.rsplit(":", 1)[1])
    s3_host, s3_forwarded = node.forward(s3_port)
    job_env.storage_spec["endpoint"] = f"http://{s3_host}:{s3_forwarded}"
    identity = tmp_path / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    job_env.create_secret("cellar-backup-identity", {"identity.txt": identity.read_text()})
    with psycopg.connect(dsn(job_env.database), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {_second_database(job_env)}")
    with psycopg.connect(dsn({**job_env.database, "dbname": _second_database(job_env)}), autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices AS SELECT g AS id FROM generate_series(1, 10) g")
    installed = helm_install(job_env, tmp_path, "install", _values(job_env, **_fleet(job_env, _recipient(tmp_path))))
    log(f"helm install:\n{installed}")
    yield job_env
    with psycopg.connect(dsn(job_env.database), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {_second_database(job_env)} WITH (FORCE)")


@functools.cache
def _kubectl_binary() -> Path:
    return built_binaries(["kubectl"])["kubectl"]


def kubectl(stack: LocalStack, *argv: str) -> str:
    binary = _kubectl_binary()
    result = subprocess.run(
        [str(binary), f"--kubeconfig={stack.kubeconfig}", *argv], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(argv)} failed: {result.stderr}")
    return result.stdout


def _wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _finished_job(batch: client.BatchV1Api, namespace: str, name: str) -> Any:
    job = batch.read_namespaced_job(name, namespace)
    types = {c.type: c for c in (job.status.conditions or []) if c.status == "True"}
    return job if ("Complete" in types or "Failed" in types) else None


def _pods_of(env: JobEnvironment, job: str) -> list[Any]:
    core = client.CoreV1Api(env.admin_api)
    return list(core.list_namespaced_pod(env.namespace, label_selector=f"job-name={job}").items)


def _logs_of(env: JobEnvironment, pods: list[Any]) -> str:
    """Each Pod's log, after how its container ended (exit code, reason, message): what a failed test shows."""
    return "\n".join(
        f"--- {pod.metadata.name} ({_ended(pod)}):\n"
        + kubectl(env.stack, "logs", "-n", env.namespace, pod.metadata.name)[-3000:]
        for pod in pods
    )


def _ended(pod: Any) -> str:
    terminated = _terminated(pod)
    if terminated is None:
        return f"phase {pod.status.phase}, not terminated"
    return f"exit {terminated.exit_code}, {terminated.reason}: {(terminated.message or '').strip()[:500]}"


def _terminated(pod: Any) -> Any:
    state = pod.status.container_statuses[0].state if pod.status.container_statuses else None
    return state.terminated if state else None


def _assert_ran_on_the_real_node(pod: Any) -> None:
    """The Pod ran as a container of the runtime on the real node, from cellar's image."""
    assert pod.spec.node_name == NODE_NAME
    status = pod.status.container_statuses[0]
    assert status.container_id.startswith("containerd://"), status.container_id
    assert status.image.startswith("localhost/cellar-e2e/"), status.image
    assert status.image_id.startswith("sha256:"), status.image_id
    terminated = status.state.terminated
    line = (
        f"pod {pod.metadata.name}: container {status.container_id} of {status.image} ({status.image_id}), "
        f"exit {terminated.exit_code} ({terminated.reason})"
    )
    log(line)
    REPORT.append(line)


def _run_started(env: JobEnvironment, pod: Any) -> dict[str, Any]:
    """The run's "run started" log line, through the API server and the kubelet (kubectl logs)."""
    lines = kubectl(env.stack, "logs", "-n", env.namespace, pod.metadata.name).splitlines()
    started = [json.loads(line) for line in lines if line.startswith("{") and '"run started"' in line]
    assert len(started) == 1, lines[:20]
    return dict(started[0])


def _cronjob_now(env: JobEnvironment, name: str) -> None:
    """The chart's CronJob `name`, scheduled every minute for the test."""
    client.BatchV1Api(env.admin_api).patch_namespaced_cron_job(name, env.namespace, {"spec": {"schedule": "* * * * *"}})


def _env_index(container: Any, name: str) -> int:
    indexes = [i for i, v in enumerate(container.env) if v.name == name]
    assert indexes, f"the CronJob names its resource in {name}"
    return indexes[0]


def _job_from_cronjob(
    env: JobEnvironment,
    name: str,
    resource: str,
    pod_finalizers: list[str] | None = None,
    run_as_user: int | None = None,
    **spec: Any,
) -> None:
    """A Job from the template of the chart's CronJob cellar-backup-nightly, for `resource`, with `spec` changed."""
    batch = client.BatchV1Api(env.admin_api)
    template = batch.read_namespaced_cron_job("cellar-backup-nightly", env.namespace).spec.job_template
    container = template.spec.template.spec.containers[0]
    container.env[_env_index(container, "CELLAR_RESOURCE_NAME")].value = resource
    template.spec.template.metadata.finalizers = pod_finalizers
    template.spec.template.spec.security_context.run_as_user = run_as_user
    for key, value in spec.items():
        setattr(template.spec, key, value)
    batch.create_namespaced_job(
        env.namespace, client.V1Job(metadata=client.V1ObjectMeta(name=name), spec=template.spec)
    )


class PodWatch(threading.Thread):
    """The last state the API server reported of each Pod matching `selector`, deleted ones included."""

    def __init__(self, env: JobEnvironment, selector: str) -> None:
        super().__init__(daemon=True)
        self.core = client.CoreV1Api(env.admin_api)
        self.namespace, self.selector = env.namespace, selector
        self.pods: dict[str, Any] = {}
        self.watch = watch.Watch()
        self.start()

    def run(self) -> None:
        events = self.watch.stream(
            self.core.list_namespaced_pod, self.namespace, label_selector=self.selector, timeout_seconds=900
        )
        # A stopped watch ends at its next event, or when the API server closes the stream (end of session).
        with contextlib.suppress(urllib3.exceptions.ProtocolError):
            for event in events:
                self.pods[event["object"].metadata.name] = event["object"]

    def stop(self) -> None:
        self.watch.stop()


def _release(env: JobEnvironment, pods: list[Any]) -> None:
    """Take the test's finalizer off Pods, so that their deletion completes."""
    core = client.CoreV1Api(env.admin_api)
    for pod in pods:
        core.patch_namespaced_pod(pod.metadata.name, env.namespace, {"metadata": {"finalizers": None}})


def _slow_backup(env: JobEnvironment, node: RealNode, name: str) -> str:
    """A DatabaseBackup `name` of about 24 MiB that zstd cannot shrink, and the Pods' link to the object store
    slowed to 256 KiB/s, so that its upload takes minutes; returns the toxiproxy proxy to undo it on."""
    _database_with(
        env,
        [
            "CREATE TABLE blobs AS SELECT g AS id, decode(string_agg(md5(g::text || ':' || h::text), ''), 'hex')"
            " AS body FROM generate_series(1, 3000) g, generate_series(1, 512) h GROUP BY g",
        ],
    )
    _backup_resource(env, name)
    proxy = f"pods-to-{int(env.stack.s3_endpoint.rsplit(':', 1)[1])}"
    node.proxy.add_toxic(proxy, "slow-uploads", "bandwidth", stream="upstream", rate=256)
    return proxy


def _database_with(env: JobEnvironment, statements: list[str]) -> None:
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _backup_resource(env: JobEnvironment, name: str, **spec: Any) -> None:
    env.create_resource(
        "DatabaseBackup",
        {
            "metadata": {"name": name},
            "spec": {
                "database": {"secretRef": {"name": "cellar-database"}, "sslMode": "disable"},
                "storage": env.storage_spec,
                **spec,
            },
        },
    )


def test_the_charts_cronjobs_run_the_image_on_a_real_node(cluster: JobEnvironment, tmp_path: Path) -> None:
    env = cluster
    batch = client.BatchV1Api(env.admin_api)
    _database_with(
        env,
        [
            "CREATE TABLE accounts AS SELECT g AS id, md5(g::text) AS name FROM generate_series(1, 1000) g",
            "CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, payload text)",
            "INSERT INTO events SELECT g, now() - interval '90 days' + g * interval '1 second', md5(g::text)"
            " FROM generate_series(1, 500) g",
            "INSERT INTO events SELECT g, now(), md5(g::text) FROM generate_series(501, 600) g",
        ],
    )
    for cronjob in ("cellar-backup-nightly", "cellar-backup-server", "cellar-archive-events"):
        _cronjob_now(env, cronjob)

    # The controller creates a Job at the next minute, the Job a Pod, the scheduler binds it, the kubelet runs it.
    for cronjob, kind, resource in (
        ("cellar-backup-nightly", "databasebackups", "nightly"),
        ("cellar-backup-server", "databasebackups", "server"),
        ("cellar-archive-events", "tablearchives", "events"),
    ):
        job = _wait(
            f"the first Job of {cronjob}",
            lambda c=cronjob: next(
                (j for j in batch.list_namespaced_job(env.namespace).items if j.metadata.name.startswith(c + "-")),
                None,
            ),
            150,
        )
        batch.patch_namespaced_cron_job(cronjob, env.namespace, {"spec": {"suspend": True}})
        finished = _wait(
            f"{job.metadata.name} to finish", lambda j=job: _finished_job(batch, env.namespace, j.metadata.name), 240
        )
        pods = _pods_of(env, job.metadata.name)
        assert finished.status.succeeded == 1, _logs_of(env, pods)
        assert len(pods) == 1, f"one Pod, not retried: {_logs_of(env, pods)}"
        pod = pods[0]
        assert conditions(get_status(env.admin_api, env.namespace, kind, resource))["Ready"]["status"] == "True"
        _assert_ran_on_the_real_node(pod)
        process = _run_started(env, pod)["identity"]
        log(f"{pod.metadata.name} ran with {json.dumps(process)}")
        assert process["uid"] == 1001, process  # the image's USER
        assert process["gid"] == 0, process  # group 0, as OpenShift runs it
        assert process["capabilities"] == "0000000000000000", process
        assert process["no_new_privs"] is True, process
        assert process["seccomp"] == "filter", process  # RuntimeDefault
        assert process["read_only_root"] is True, process
        assert _terminated(pod).exit_code == 0
    server = get_status(env.admin_api, env.namespace, "databasebackups", "server")["lastSuccessfulBackup"]
    assert sorted(server["databases"]) == sorted([env.database["dbname"], _second_database(env)]), server
    nightly = get_status(env.admin_api, env.namespace, "databasebackups", "nightly")["lastSuccessfulBackup"]
    assert nightly["key"].startswith(f"{env.namespace}/nightly/"), nightly  # the prefix the chart gave it
    sealed = env.s3.get_object(Bucket=env.bucket, Key=nightly["key"])["Body"].read(64)
    assert sealed.startswith(b"age-encryption.org/v1"), sealed[:32]
    with psycopg.connect(dsn(env.database)) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (100,)

    # A permanent failure (exit 3: the storage Secret lacks the key the spec names) fails its Job at once.
    _backup_resource(
        env,
        "broken",
        storage={
            **env.storage_spec,
            "credentials": {
                **env.storage_spec["credentials"],
                "secretAccessKey": {"name": "cellar-object-storage", "key": "no-such-key"},
            },
        },
    )
    _job_from_cronjob(env, "broken-now", "broken")
    failed = _wait("the broken Job to fail", lambda: _finished_job(batch, env.namespace, "broken-now"), 180)
    reasons = {c.type: c.reason for c in failed.status.conditions if c.status == "True"}
    assert reasons.get("Failed") == "PodFailurePolicy", reasons
    pods = _pods_of(env, "broken-now")
    assert len(pods) == 1, "exit 3 is not retried"
    terminated = _terminated(pods[0])
    _assert_ran_on_the_real_node(pods[0])
    assert terminated.exit_code == 3, terminated
    assert terminated.message.startswith("InvalidSpec"), terminated.message  # the termination log
    assert conditions(get_status(env.admin_api, env.namespace, "databasebackups", "broken"))["Ready"]["reason"] == (
        "InvalidSpec"
    )

    # A manual backup, as NOTES.txt says: kubectl create job --from=cronjob/cellar-backup-nightly.
    kubectl(env.stack, "create", "job", "-n", env.namespace, "backup-now", "--from=cronjob/cellar-backup-nightly")
    done = _wait("the manual Job", lambda: _finished_job(batch, env.namespace, "backup-now"), 180)
    assert done.status.succeeded == 1
    _assert_ran_on_the_real_node(_pods_of(env, "backup-now")[0])
    assert get_status(env.admin_api, env.namespace, "databasebackups", "nightly")["backupsKept"] == 2

    # A restore from restores:, added by helm upgrade: the chart's Job runs it once, as cellar-restore, the
    # one ServiceAccount that reads the restore target and the identity the sealed backup needs.
    copy = f"{env.database['dbname']}_copy"
    restores = {
        "nightly-copy": {
            "spec": {
                "backup": {"name": "nightly"},
                "target": {"secretRef": {"name": "cellar-restore-target"}, "dbname": copy, "sslMode": "disable"},
                "createDatabase": True,
                "decryption": {"identitySecretRef": {"name": "cellar-backup-identity", "key": "identity.txt"}},
            }
        }
    }
    fleet = _fleet(env, _recipient(tmp_path))
    # The test set the CronJobs' schedule and suspend with kubectl: Helm 4's server-side apply takes those fields
    # back only with --force-conflicts, as for a user who did the same (the README: suspend through the values).
    helm_install(env, tmp_path, "upgrade", _values(env, **fleet, restores=restores), "--force-conflicts")
    restored = _wait("the restore Job", lambda: _finished_job(batch, env.namespace, "cellar-restore-nightly-copy"), 240)
    pods = _pods_of(env, "cellar-restore-nightly-copy")
    assert restored.status.succeeded == 1, _logs_of(env, pods)
    _assert_ran_on_the_real_node(pods[0])
    assert pods[0].spec.service_account_name == "cellar-restore"
    status = get_status(env.admin_api, env.namespace, "databaserestores", "nightly-copy")
    assert conditions(status)["Succeeded"]["status"] == "True", status
    with psycopg.connect(dsn({**env.database, "dbname": copy})) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (1000,)


def test_a_deadline_mid_dump_sends_sigterm_and_leaves_nothing(cluster: JobEnvironment, node: RealNode) -> None:
    env = cluster
    batch = client.BatchV1Api(env.admin_api)
    proxy = _slow_backup(env, node, "slow")
    try:
        # The Pod is kept (a finalizer) so that it can still be described once the Job controller deletes it.
        _job_from_cronjob(env, "slow-now", "slow", pod_finalizers=[KEEP], active_deadline_seconds=40)
        failed = _wait("the deadline to fail the Job", lambda: _finished_job(batch, env.namespace, "slow-now"), 240)
        reasons = {c.type: c.reason for c in failed.status.conditions if c.status == "True"}
        assert reasons.get("Failed") == "DeadlineExceeded", reasons
        assert len(_pods_of(env, "slow-now")) == 1
        pod = _wait(
            "the container to end",
            lambda: next((p for p in _pods_of(env, "slow-now") if _terminated(p) is not None), None),
            120,
        )
        terminated = _terminated(pod)
        _assert_ran_on_the_real_node(pod)
        # The kubelet has removed the deleted Pod's container, and its log with it: the termination message,
        # which the process wrote on SIGTERM, is what is left, as on any cluster.
        assert terminated.exit_code == 143, terminated  # 128 + SIGTERM: cellar's exit code for Interrupted
        assert terminated.message.startswith("Interrupted"), terminated.message
        described = kubectl(env.stack, "describe", "pod", "-n", env.namespace, pod.metadata.name)
        log(f"kubectl describe pod {pod.metadata.name}:\n{described}")
        assert "Message:" in described, described
        assert "Interrupted: interrupted by SIGTERM" in described, described
        status = get_status(env.admin_api, env.namespace, "databasebackups", "slow")
        assert conditions(status)["Ready"]["reason"] == "Interrupted", status
    finally:
        node.proxy.remove_toxic(proxy, "slow-uploads")
        _release(env, _pods_of(env, "slow-now"))
    assert list_all(env.s3, env.bucket, "") == [], "no object is left"
    uploads = env.s3.list_multipart_uploads(Bucket=env.bucket).get("Uploads", [])
    assert uploads == [], "no multipart upload is left open"


def test_a_node_drain_interrupts_the_backup_and_the_job_runs_it_again(cluster: JobEnvironment, node: RealNode) -> None:
    """`kubectl drain` evicts the Pod mid-upload: SIGTERM, Interrupted, and the shipped podFailurePolicy ignores
    the failure (DisruptionTarget), so the Job runs a new Pod once the node is schedulable again."""
    env = cluster
    batch = client.BatchV1Api(env.admin_api)
    proxy = _slow_backup(env, node, "drained")
    seen = PodWatch(env, "job-name=drain-now")
    try:
        # backoffLimit 0: a failure that counted would fail the Job. The UID is one OpenShift would assign.
        _job_from_cronjob(env, "drain-now", "drained", run_as_user=ARBITRARY_UID, backoff_limit=0)
        _wait(
            "the backup to be dumping",
            lambda: (
                conditions(get_status(env.admin_api, env.namespace, "databasebackups", "drained"))
                .get("Progressing", {})
                .get("status")
                == "True"
            ),
            120,
        )
        kubectl(
            env.stack,
            "drain",
            NODE_NAME,
            "--pod-selector=job-name=drain-now",
            "--delete-emptydir-data",
            "--timeout=120s",
        )
        # kubectl drain returns once the evicted Pod is gone; the watch saw its last state.
        evicted = next(p for p in seen.pods.values() if p.metadata.deletion_timestamp and _terminated(p))
        assert _terminated(evicted).exit_code == 143, _terminated(evicted)
        disruption = {c.type: c for c in evicted.status.conditions}.get("DisruptionTarget")
        assert disruption is not None, evicted.status.conditions
        assert disruption.status == "True", disruption
        status = get_status(env.admin_api, env.namespace, "databasebackups", "drained")
        assert conditions(status)["Ready"]["reason"] == "Interrupted", status
        node.proxy.remove_toxic(proxy, "slow-uploads")
        kubectl(env.stack, "uncordon", NODE_NAME)
        done = _wait("the Job to run it again", lambda: _finished_job(batch, env.namespace, "drain-now"), 240)
        assert done.status.succeeded == 1, {c.type: c.reason for c in done.status.conditions}
        pods = _pods_of(env, "drain-now")
        assert len(pods) == 1, [p.metadata.name for p in pods]
        assert pods[0].metadata.name != evicted.metadata.name
        for pod in [evicted, *pods]:
            _assert_ran_on_the_real_node(pod)
        retried = next(pod for pod in pods if _terminated(pod).exit_code == 0)
        identity = _run_started(env, retried)["identity"]
        assert identity["uid"] == ARBITRARY_UID, identity
        assert identity["gid"] == 0, identity
    finally:
        kubectl(env.stack, "uncordon", NODE_NAME)
        with contextlib.suppress(urllib.error.HTTPError):  # removed above unless the test failed first
            node.proxy.remove_toxic(proxy, "slow-uploads")
        seen.stop()
    assert conditions(get_status(env.admin_api, env.namespace, "databasebackups", "drained"))["Ready"]["status"] == (
        "True"
    )
    assert env.s3.list_multipart_uploads(Bucket=env.bucket).get("Uploads", []) == [], "the evicted upload was aborted"


# ---- kubectl cellar on the real node. In this module, beside the tests above, so that they share its one node
# (a second node in the same session, after the first one's teardown, had its containers killed: exit 137).
# `kubectl cellar backup NAME --wait`, `list`, `restore --wait` and `logs` on the real node: the Jobs run
# cellar's image on the kubelet, the plugin follows their logs through the API server and exits with the
# container's exit code, a success's and a permanent failure's (the termination message, `<Reason>: ...`, is its
# last line); `logs` shows either run.


def test_backup_wait_follows_the_run_and_exits_with_its_code(
    cluster: JobEnvironment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = cluster
    kubeconfig = env.stack.kubeconfig
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts AS SELECT g AS id FROM generate_series(1, 100) g")
    ran = cellar(capsys, kubeconfig, "backup", "nightly", "--wait", "-n", env.namespace)
    assert ran.code == 0, ran.err
    assert '"run started"' in ran.out, ran.out[-2000:]  # the container's log, followed
    batch = client.BatchV1Api(env.admin_api)
    (job,) = batch.list_namespaced_job(env.namespace).items
    assert job.status.succeeded == 1
    stored: dict[str, Any] = client.CustomObjectsApi(env.admin_api).get_namespaced_custom_object(
        "cellar.dev", "v1alpha1", env.namespace, "databasebackups", "nightly"
    )
    assert stored["status"]["lastSuccessfulBackup"]["key"].startswith(f"{env.namespace}/nightly/")

    # `list`: a short Job under cellar-backup lists the backups in storage; its log is the listing alone.
    ran = cellar(capsys, kubeconfig, "list", "nightly", "-o", "json", "-n", env.namespace)
    assert ran.code == 0, ran.err
    (listed,) = json.loads(ran.out)["backups"]
    assert listed["key"] == stored["status"]["lastSuccessfulBackup"]["key"]
    assert listed["encrypted_to"], "nightly is sealed with age"
    assert [j.metadata.name for j in batch.list_namespaced_job(env.namespace).items] == [job.metadata.name], (
        "the listing Job is deleted once read"
    )

    # `restore --wait`: a DatabaseRestore run now as cellar-restore, once the release lets it read the target, the
    # age identity and the storage keys (extraSecrets.restore), into a new database of the same server.
    values = _values(env, **_fleet(env, _recipient(tmp_path)))
    values["extraSecrets"] = {"restore": ["cellar-restore-target", "cellar-backup-identity", "cellar-object-storage"]}
    helm_install(env, tmp_path, "upgrade", values)
    copy = f"{env.database['dbname']}_copy"
    restore = ["restore", "nightly", "--to", "cellar-restore-target", "--dbname", copy, "--create-database"]
    ran = cellar(capsys, kubeconfig, *restore, "--identity", "cellar-backup-identity:identity.txt", "--wait",
                 "-n", env.namespace)  # fmt: skip
    assert ran.code == 0, f"{ran.err}\n{ran.out[-6000:]}\n{_pods_and_logs(env)}"
    with psycopg.connect(dsn({**env.database, "dbname": copy})) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (100,)
    # A backup id that does not exist: the restore's own reason, one line, exit 3.
    missing = ["restore", "nightly", "--to", "cellar-restore-target", "--backup", "20000101T000000Z-none"]
    ran = cellar(capsys, kubeconfig, *missing, "--identity", "cellar-backup-identity:identity.txt", "--wait",
                 "-n", env.namespace)  # fmt: skip
    assert ran.code == 3, ran.err
    assert ran.err.splitlines()[-1].startswith("BackupNotFound: "), ran.err

    # A permanent failure: the spec names a key its Secret lacks. Exit 3, as the container's, at once (the
    # chart's podFailurePolicy fails the Job without a retry), and the run's reason on the last line.
    storage = {**stored["spec"]["storage"]}
    storage["credentials"] = {
        **storage["credentials"],
        "secretAccessKey": {"name": "cellar-object-storage", "key": "x"},
    }
    client.CustomObjectsApi(env.admin_api).patch_namespaced_custom_object(
        "cellar.dev", "v1alpha1", env.namespace, "databasebackups", "nightly", {"spec": {"storage": storage}}
    )
    ran = cellar(capsys, kubeconfig, "backup", "nightly", "--wait", "-n", env.namespace)
    assert ran.code == 3, ran.err
    assert ran.err.splitlines()[-1].startswith("InvalidSpec: "), ran.err

    # `logs`: the newest run's log (the failure), and with --previous the run before it (the success).
    ran = cellar(capsys, kubeconfig, "logs", "nightly", "-n", env.namespace)
    assert ran.code == 0, ran.err
    assert '"run failed"' in ran.out, ran.out[-2000:]
    ran = cellar(capsys, kubeconfig, "logs", "backup/nightly", "--previous", "-n", env.namespace)
    assert ran.code == 0, ran.err
    assert '"run finished"' in ran.out, _pods_and_logs(env)


def _pods_and_logs(env: JobEnvironment) -> str:
    """What a failed assertion on `logs` shows: each Pod of the namespace, its phase and its log's length."""
    core = client.CoreV1Api(env.admin_api)
    lines = []
    for pod in core.list_namespaced_pod(env.namespace).items:
        text = core.read_namespaced_pod_log(pod.metadata.name, env.namespace)
        why = f"{pod.status.reason}: {pod.status.message}" if pod.status.reason else ""
        lines.append(f"{pod.metadata.name} {pod.metadata.creation_timestamp} {pod.status.phase} {why} {len(text)} B")
    return "\n".join(lines)


def test_archive_and_unarchive_wait_on_the_real_node(
    cluster: JobEnvironment, capsys: pytest.CaptureFixture[str]
) -> None:
    env = cluster
    kubeconfig = env.stack.kubeconfig
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, payload text)")
        conn.execute(
            "INSERT INTO events SELECT g, now() - interval '90 days' + g * interval '1 second', md5(g::text)"
            " FROM generate_series(1, 300) g"
        )
        conn.execute("INSERT INTO events SELECT g, now(), md5(g::text) FROM generate_series(301, 350) g")
    ran = cellar(capsys, kubeconfig, "archive", "events", "--wait", "-n", env.namespace)
    assert ran.code == 0, ran.err
    with psycopg.connect(dsn(env.database)) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (50,)

    args = ["unarchive", "events", "--from", "2000-01-01", "--to", "2100-01-01", "--wait", "-n", env.namespace]
    ran = cellar(capsys, kubeconfig, *args)
    assert ran.code == 0, ran.err
    with psycopg.connect(dsn(env.database)) as conn:
        assert conn.execute("SELECT count(*) FROM events_unarchived").fetchone() == (300,)
