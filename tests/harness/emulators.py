"""The storage emulators the Azure Blob and GCS suites run against, on loopback: Microsoft's Azurite (npm
package `azurite`) and fsouza/fake-gcs-server (built from the Go module proxy), both installed and cached by
build-servers.sh; and the clients no one here wrote that read back what cellar wrote there: the Azure CLI and
gsutil, from PyPI.

fake-gcs-server serves plain HTTP to cellar and HTTPS (its own certificate) to gsutil, whose JSON API speaks
only HTTPS."""

from __future__ import annotations

import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.harness.stack import Process, built_binaries, free_port, log, spawn, wait_for

# Azurite's development account: the name and key Microsoft publishes for its emulator (not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Azurite:
    """Azurite's Blob service."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cellar-azurite-"))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"
        self.process: Process | None = None

    def start(self) -> Azurite:
        binary = built_binaries(["azurite"])["azurite-blob"]
        self.process = spawn(
            "azurite",
            [
                str(binary),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
                "--location",
                str(self.root / "data"),
                "--skipApiVersionCheck",  # the SDK may be newer than the emulator; the calls cellar makes are old
                "--loose",
                "--silent",
            ],
            self.root,
        )

        def live() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}?comp=list", timeout=2)
            except urllib.error.HTTPError:
                return True  # it answers (403: the request was not signed)
            return True

        wait_for("Azurite", live, self.process)
        log(f"Azurite ready at {self.endpoint}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    def service(self, endpoint: str | None = None) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(
            endpoint or self.endpoint, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
        )

    def az(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """The Azure CLI (`az storage ...`) against this Azurite."""
        binary = built_binaries(["az"])["az"]
        return subprocess.run(
            [str(binary), *args, "--connection-string", self.connection_string],
            capture_output=True,
            check=True,
            env={
                "AZURE_CONFIG_DIR": str(self.root / "az"),
                "PATH": "/usr/bin:/bin",
                "AZURE_CORE_COLLECT_TELEMETRY": "0",
            },
            timeout=120,
        )


class FakeGcs:
    """fake-gcs-server, in memory."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cellar-fake-gcs-"))
        self.port, self.tls_port = free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: Process | None = None

    def start(self) -> FakeGcs:
        binary = built_binaries(["fake-gcs-server"])["fake-gcs-server"]
        self.process = spawn(
            "fake-gcs-server",
            [
                str(binary),
                "-scheme",
                "both",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.tls_port),
                "-port-http",
                str(self.port),
                "-backend",
                "memory",
                # Resumable uploads continue at the URL the server gives: the plain one cellar uses.
                "-public-host",
                f"127.0.0.1:{self.port}",
                "-external-url",
                self.endpoint,
                "-log-level",
                "warn",
            ],
            self.root,
        )

        def live() -> bool:
            with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=2) as response:
                return bool(response.status == 200)

        wait_for("fake-gcs-server", live, self.process)
        log(f"fake-gcs-server ready at {self.endpoint} (TLS for gsutil on {self.tls_port})")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def client(self, endpoint: str | None = None) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="cellar",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": endpoint or self.endpoint},
        )

    def gsutil(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """gsutil against this server's TLS port (its JSON API speaks only HTTPS)."""
        binary = built_binaries(["gsutil"])["gsutil"]
        config = self.root / "boto.cfg"
        config.write_text(
            "[Credentials]\n"
            f"gs_json_host = 127.0.0.1\ngs_json_port = {self.tls_port}\n"
            f"gs_host = 127.0.0.1\ngs_port = {self.tls_port}\n"
            "[Boto]\nhttps_validate_certificates = False\nnum_retries = 1\n"
            "[GSUtil]\ndefault_project_id = cellar\nprefer_api = json\nsoftware_update_check_period = 0\n"
        )
        return subprocess.run(
            [str(binary), *args],
            capture_output=True,
            check=True,
            env={"BOTO_CONFIG": str(config), "PATH": "/usr/bin:/bin", "HOME": str(self.root)},
            timeout=120,
        )
