"""Starts the real servers cellar's tests and demo run against, on loopback, in a throwaway directory.

- etcd + kube-apiserver, flagged as controller-runtime's envtest does: TLS, RBAC authorization, an
  admin client certificate (O=system:masters), service-account signing keys for the TokenRequest API;
- PostgreSQL from Debian's packages (initdb as the `postgres` user when we are root);
- MinIO, built from source by build-servers.sh.

Nothing is skipped: a missing binary or a server that does not come up raises `StackError` saying
which and how to fix it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from cryptography.hazmat.primitives import serialization

from tests.harness.certificates import LOOPBACK_NAMES, Authority, new_key, write_certificate, write_key

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tests" / "harness" / "build-servers.sh"
S3_ACCESS_KEY = "cellar-test-access"
S3_SECRET_KEY = "cellar-test-secret-0123456789"
PG_SUPERUSER_PASSWORD = "cellar-test-superuser-pw"


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client for the local MinIO, with its root credentials (tests, demo, benchmarks)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        region_name="us-east-1",
    )


class StackError(RuntimeError):
    """A server could not be started; the message says which and what to do."""


def log(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def built_binaries(components: list[str] | None = None) -> dict[str, Path]:
    """Build (or find cached) etcd, MinIO and the Kubernetes servers (or `components`); name -> path."""
    try:
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT), *(components or [])], check=True, stdout=subprocess.PIPE, text=True
        )
    except subprocess.CalledProcessError as exc:
        raise StackError(
            f"building the test servers failed (exit {exc.returncode}); run {BUILD_SCRIPT} to see why"
        ) from exc
    paths = {}
    for line in result.stdout.splitlines():
        name, _, path = line.partition("=")
        if path:
            paths[name] = Path(path)
    return paths


MAJORS_SCRIPT = REPO / "tests" / "harness" / "postgres-majors.sh"
# The majors the version matrix runs against (tests/harness/postgres-majors.sh installs them).
PG_MAJORS = (14, 15, 16, 17, 18)


def postgres_majors(majors: list[int] | tuple[int, ...]) -> dict[int, Path]:
    """The bin directory of a real PostgreSQL install (server and client tools) of each major, installed
    and cached by postgres-majors.sh on first use."""
    try:
        result = subprocess.run(
            ["bash", str(MAJORS_SCRIPT), *map(str, majors)], check=True, stdout=subprocess.PIPE, text=True
        )
    except subprocess.CalledProcessError as exc:
        raise StackError(f"installing PostgreSQL {majors} failed (exit {exc.returncode}); run {MAJORS_SCRIPT}") from exc
    found = {}
    for line in result.stdout.splitlines():
        major, _, path = line.partition("=")
        if path:
            found[int(major)] = Path(path)
    return found


def postgres_bin(major: int | None = None) -> Path:
    """Debian's PostgreSQL (the default server), or the cached build of `major`."""
    if major is not None:
        return postgres_majors([major])[major]
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        found = shutil.which("initdb")
        if found:
            return Path(found).resolve().parent
        raise StackError(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: run tests/harness/setup.sh or "
            "apt-get install postgresql"
        )
    return candidates[-1].parent


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def spawn(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Process:
    """Start a server in its own session, its output in `log_dir`/`name`.log."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Process(name, popen, log_path)


def wait_for(what: str, check: Any, process: Process | None, timeout: float = 90.0) -> None:
    """Poll `check` until it is true; fail early if `process` exits, naming the last error and its log."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if process is not None and process.popen.poll() is not None:
            raise StackError(f"{what} exited with code {process.popen.returncode}:\n{process.tail()}")
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 (not ready yet; keep polling)
            last_error = str(exc)
        time.sleep(0.25)
    tail = process.tail() if process else ""
    raise StackError(f"{what} did not become ready within {timeout:.0f}s ({last_error})\n{tail}")


def _make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a serving certificate for 127.0.0.1 (and the cluster's service address), an admin client certificate
    and SA keys; RSA, as the kube-apiserver's service-account keys are."""
    authority = Authority.create("cellar-test-ca", key_kind="rsa")
    paths = {"ca.crt": write_certificate(directory / "ca.crt", authority.certificate)}
    for name, (cert, leaf_key) in {
        "serving": authority.issue("kube-apiserver", hosts=(*LOOPBACK_NAMES, "10.0.0.1")),
        "admin": authority.issue("cellar-admin", organization="system:masters", client=True),
    }.items():
        paths[f"{name}.crt"] = write_certificate(directory / f"{name}.crt", cert)
        paths[f"{name}.key"] = write_key(directory / f"{name}.key", leaf_key)
    sa_key = new_key("rsa")
    paths["sa.key"] = write_key(directory / "sa.key", sa_key)
    paths["sa.pub"] = directory / "sa.pub"
    paths["sa.pub"].write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return paths


@dataclass
class LocalStack:
    """The running servers and how to reach them."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cellar-stack-")))
    processes: list[Process] = field(default_factory=list)
    binaries: dict[str, Path] = field(default_factory=dict)
    kube_url: str = ""
    kubeconfig: Path = Path()
    certificates: dict[str, Path] = field(default_factory=dict)
    kube_version: str = ""
    pg_port: int = 0
    pg_major: int | None = None  # None: Debian's PostgreSQL
    pg_version: str = ""
    pg_bin: Path = Path()
    pg_data: Path = Path()
    s3_endpoint: str = ""
    _pg_started: bool = False

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self, *, kubernetes: bool = True, postgres: bool = True, s3: bool = True) -> LocalStack:
        try:
            if kubernetes or s3:
                self.binaries = built_binaries()
            if postgres:
                self.start_postgres()
            if s3:
                self.start_minio()
            if kubernetes:
                self.start_kubernetes()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        if self._pg_started:
            self._as_postgres(
                [str(self.pg_bin / "pg_ctl"), "stop", "-D", str(self.pg_data), "-m", "immediate"], check=False
            )
            self._pg_started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        process = spawn(name, argv, self.root, env)
        self.processes.append(process)
        return process

    def _binary(self, name: str) -> Path:
        path = self.binaries.get(name)
        if path is None or not path.exists():
            raise StackError(f"{name} binary missing; run {BUILD_SCRIPT} {name}")
        return path

    # ---- Kubernetes ----------------------------------------------------------------------------------
    def start_kubernetes(self) -> None:
        etcd_dir = self.root / "etcd"
        client_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{client_port}"
        etcd = self._spawn(
            "etcd",
            [
                str(self._binary("etcd")),
                "--name",
                "cellar",
                "--data-dir",
                str(etcd_dir),
                "--listen-client-urls",
                etcd_url,
                "--advertise-client-urls",
                etcd_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"cellar=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes",
                str(2 * 1024**3),
                "--log-level",
                "warn",
            ],
        )
        wait_for("etcd", lambda: urllib.request.urlopen(f"{etcd_url}/health", timeout=2).status == 200, etcd)

        certs_dir = self.root / "pki"
        certs_dir.mkdir()
        self.certificates = _make_certificates(certs_dir)
        port = free_port()
        self.kube_url = f"https://127.0.0.1:{port}"
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(self._binary("kube-apiserver")),
                f"--etcd-servers={etcd_url}",
                f"--cert-dir={certs_dir}",
                f"--secure-port={port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=RBAC",
                f"--tls-cert-file={self.certificates['serving.crt']}",
                f"--tls-private-key-file={self.certificates['serving.key']}",
                f"--client-ca-file={self.certificates['ca.crt']}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={self.certificates['sa.pub']}",
                f"--service-account-signing-key-file={self.certificates['sa.key']}",
                "--allow-privileged=true",
                "--kubelet-preferred-address-types=InternalIP",  # a test node's name is not in DNS
                "--v=1",
            ],
        )
        context = ssl.create_default_context(cafile=str(self.certificates["ca.crt"]))
        context.load_cert_chain(str(self.certificates["admin.crt"]), str(self.certificates["admin.key"]))

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.kube_url}/readyz", context=context, timeout=3) as response:
                return bool(response.status == 200)

        wait_for("kube-apiserver /readyz", ready, apiserver, timeout=180)
        with urllib.request.urlopen(f"{self.kube_url}/version", context=context, timeout=3) as response:
            self.kube_version = yaml.safe_load(response.read())["gitVersion"]
        self.kubeconfig = self.root / "admin.kubeconfig"
        self.kubeconfig.write_text(
            self.kubeconfig_for(
                user="cellar-admin",
                credentials={
                    "client-certificate": str(self.certificates["admin.crt"]),
                    "client-key": str(self.certificates["admin.key"]),
                },
            )
        )
        log(f"kube-apiserver {self.kube_version} ready at {self.kube_url}")

    def start_controller_manager(self) -> None:
        """kube-controller-manager with the CronJob and Job controllers, so CronJobs create Jobs and Jobs Pods."""
        self._start_control_plane_component(
            "kube-controller-manager",
            [
                # serviceaccount and root-ca-cert-publisher: what a Pod's token volume needs (the default
                # ServiceAccount, and the kube-root-ca.crt ConfigMap its ca.crt comes from); nodelifecycle: a
                # new node's not-ready taint is lifted once it is Ready.
                "--controllers=cronjob,job,serviceaccount,root-ca-cert-publisher,nodelifecycle",
                f"--root-ca-file={self.certificates['ca.crt']}",
                "--use-service-account-credentials=false",
            ],
        )

    def start_scheduler(self) -> None:
        """kube-scheduler, so Pods are bound to a (real) node."""
        self._start_control_plane_component("kube-scheduler", [])

    def _start_control_plane_component(self, name: str, flags: list[str]) -> None:
        port = free_port()
        process = self._spawn(
            name,
            [
                str(self._binary(name)),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                *flags,
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--v=1",
            ],
        )
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        def healthy() -> bool:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=3) as response:
                return bool(response.status == 200)

        wait_for(f"{name} /healthz", healthy, process, timeout=120)
        log(f"{name} ready on 127.0.0.1:{port}")

    def kubeconfig_for(self, *, user: str, credentials: dict[str, str], namespace: str = "default") -> str:
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "cellar",
                "clusters": [
                    {
                        "name": "cellar",
                        "cluster": {"server": self.kube_url, "certificate-authority": str(self.certificates["ca.crt"])},
                    }
                ],
                "users": [{"name": user, "user": credentials}],
                "contexts": [
                    {"name": "cellar", "context": {"cluster": "cellar", "user": user, "namespace": namespace}}
                ],
            }
        )

    # ---- PostgreSQL ----------------------------------------------------------------------------------
    def _as_postgres(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            # initdb and postgres refuse to run as root.
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, check=check, capture_output=True, text=True)

    def start_postgres(self) -> None:
        self.pg_bin = postgres_bin(self.pg_major)
        base = self.root / "pg"
        base.mkdir()
        self.pg_data = base / "data"
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise StackError("user 'postgres' missing: apt-get install postgresql creates it") from exc
            os.chmod(self.root, 0o755)
            os.chown(base, entry.pw_uid, entry.pw_gid)
        password_file = base / "pwfile"
        password_file.write_text(PG_SUPERUSER_PASSWORD + "\n")
        if os.geteuid() == 0:
            os.chown(password_file, entry.pw_uid, entry.pw_gid)
        result = self._as_postgres(
            [
                str(self.pg_bin / "initdb"),
                "-D",
                str(self.pg_data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={password_file}",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"initdb failed: {result.stderr.strip()}")
        self.pg_port = free_port()
        self._pg_ctl_start(self.pg_data, self.pg_port, "PostgreSQL")
        self._pg_started = True
        version = subprocess.run([str(self.pg_bin / "postgres"), "--version"], capture_output=True, text=True)
        self.pg_version = version.stdout.strip()
        log(f"{self.pg_version} ready on 127.0.0.1:{self.pg_port}")

    def pg_dsn(self, dbname: str = "postgres", user: str = "postgres", password: str = PG_SUPERUSER_PASSWORD) -> str:
        return f"host=127.0.0.1 port={self.pg_port} dbname={dbname} user={user} password={password}"

    def _pg_ctl_start(self, data: Path, port: int, what: str) -> None:
        """Start a server on `data` (its socket and log beside it). A standby needs max_connections at
        least the primary's, so both use these options."""
        options = (
            f"-p {port} -k {data.parent} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
            "-c shared_buffers=256MB"
        )
        server_log = data.parent / f"{data.name}.log"
        start = [str(self.pg_bin / "pg_ctl"), "start", "-D", str(data), "-w", "-t", "60", "-l", str(server_log)]
        result = self._as_postgres([*start, "-o", options], check=False)
        if result.returncode != 0:
            log_text = server_log.read_text(errors="replace") if server_log.exists() else ""
            raise StackError(f"{what} did not start: {result.stderr.strip()}\n{log_text[-2000:]}")

    @contextlib.contextmanager
    def standby(self) -> Iterator[str]:
        """A streaming hot standby of the PostgreSQL server (pg_basebackup -R), for as long as the block
        runs; yields its superuser DSN. It shows up in the primary's pg_stat_replication."""
        data = self.pg_data.parent / f"standby-{free_port()}"
        source = self.pg_dsn()
        backup = [str(self.pg_bin / "pg_basebackup"), "-D", str(data), "-d", source, "-R", "-X", "stream"]
        result = self._as_postgres([*backup, "--no-sync", "--checkpoint=fast"], check=False)
        if result.returncode != 0:
            raise StackError(f"pg_basebackup for a standby failed: {result.stderr.strip()}")
        port = free_port()
        self._pg_ctl_start(data, port, "the standby")
        try:
            yield self.pg_dsn().replace(f"port={self.pg_port}", f"port={port}")
        finally:
            self._as_postgres([str(self.pg_bin / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate"], check=False)
            shutil.rmtree(data, ignore_errors=True)

    @contextlib.contextmanager
    def tls(self) -> Iterator[str]:
        """TLS on the PostgreSQL server (besides plain connections) for as long as the block runs, with a
        self-signed certificate for 127.0.0.1; yields that certificate (the CA a client verifies it with)."""
        from tests.harness.certificates import self_signed

        certificate, key = self_signed("cellar test PostgreSQL", self.pg_data)
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            for path in (certificate, key):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        key.chmod(0o600)
        with psycopg.connect(self.pg_dsn(), autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET ssl_cert_file = '{certificate}'")
            conn.execute(f"ALTER SYSTEM SET ssl_key_file = '{key}'")
            conn.execute("ALTER SYSTEM SET ssl = on")
            conn.execute("SELECT pg_reload_conf()")
        try:
            wait_for("TLS on PostgreSQL", lambda: self._speaks_tls(certificate), None)
            yield certificate.read_text()
        finally:
            with psycopg.connect(self.pg_dsn(), autocommit=True) as conn:
                for setting in ("ssl", "ssl_cert_file", "ssl_key_file"):
                    conn.execute(f"ALTER SYSTEM RESET {setting}")
                conn.execute("SELECT pg_reload_conf()")

    def _speaks_tls(self, certificate: Path) -> bool:
        try:
            with psycopg.connect(f"{self.pg_dsn()} sslmode=verify-full sslrootcert={certificate}"):
                return True
        except psycopg.OperationalError:
            return False

    # ---- S3 (MinIO) ----------------------------------------------------------------------------------
    def start_minio(self) -> None:
        port, console = free_port(), free_port()
        data = self.root / "minio"
        data.mkdir()
        env = {
            **os.environ,
            "MINIO_ROOT_USER": S3_ACCESS_KEY,
            "MINIO_ROOT_PASSWORD": S3_SECRET_KEY,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            "MINIO_CI_CD": "1",
        }
        self.s3_endpoint = f"http://127.0.0.1:{port}"
        minio = self._spawn(
            "minio",
            [
                str(self._binary("minio")),
                "server",
                "--quiet",
                "--address",
                f"127.0.0.1:{port}",
                "--console-address",
                f"127.0.0.1:{console}",
                str(data),
            ],
            env=env,
        )

        def live() -> bool:
            try:
                with urllib.request.urlopen(f"{self.s3_endpoint}/minio/health/ready", timeout=2) as response:
                    return bool(response.status == 200)
            except urllib.error.HTTPError:
                return False

        wait_for("MinIO", live, minio)
        log(f"MinIO ready at {self.s3_endpoint}")
