"""A real Iceberg REST catalog for the REST catalog tests: Apache Iceberg's own REST catalog test fixture
(org.apache.iceberg.rest.RESTCatalogServer, Maven Central's iceberg-open-api test-fixtures jar, the server of the
apache/iceberg-rest-fixture image) over a JDBC catalog in SQLite, writing metadata files to MinIO with S3FileIO.

Its classpath (iceberg-rest/pom.xml) is resolved by Maven once into ~/.cache/cellar/iceberg-rest/<version>/ and it
is started with `java -cp` only by the tests that ask for it. The fixture reads its catalog properties from
CATALOG_* environment variables (RCKUtils.environmentCatalogConfig: CATALOG_ dropped, `__` to `-`, `_` to `.`,
lower case; CATALOG_REST_PORT is its port). It listens on every interface (Jetty's Server(port)); the tests reach
it on 127.0.0.1.

The fixture checks no credentials and serves plain HTTP, so `CatalogGate` stands in front of it the way an
identity-aware gateway does: it terminates TLS with a certificate of a CA made for the test, serves the OAuth2
client-credentials exchange (RFC 6749 section 4.4) at /v1/oauth/tokens and /oauth2/token, requires a bearer token it
issued (or the static one) on every other request, answers 403 for a token without privileges, and serves one
warehouse name (GET /v1/config?warehouse=... of another is 404, as Polaris and Lakekeeper answer). What passes is
forwarded to the fixture unchanged.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.harness.certificates import Authority, write_certificate, write_key
from tests.harness.stack import REPO, S3_ACCESS_KEY, S3_SECRET_KEY, Process, StackError, free_port, log, spawn, wait_for

ICEBERG_VERSION = "1.10.0"  # the pom's iceberg.version
POM = REPO / "tests" / "harness" / "iceberg-rest" / "pom.xml"
MAIN_CLASS = "org.apache.iceberg.rest.RESTCatalogServer"


def fixture_classpath() -> str:
    """The fixture's jars, resolved from Maven Central on first use (about 125 MB) and cached."""
    cache = Path(os.environ.get("CELLAR_CACHE", Path.home() / ".cache" / "cellar")) / "iceberg-rest" / ICEBERG_VERSION
    done = cache / "resolved"
    if not done.exists():
        if shutil.which("mvn") is None or shutil.which("java") is None:
            raise StackError("the Iceberg REST catalog fixture needs Java 17 and Maven: apt-get install maven")
        log(f"resolving Apache Iceberg's REST catalog fixture {ICEBERG_VERSION} from Maven Central into {cache}")
        staging = cache.with_name(f"{ICEBERG_VERSION}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        result = subprocess.run(
            ["mvn", "-B", "-q", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={staging}/lib"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"Maven could not resolve {POM}:\n{result.stdout[-3000:]}")
        shutil.rmtree(cache, ignore_errors=True)
        staging.rename(cache)
        done.write_text(f"{len(list((cache / 'lib').glob('*.jar')))} jars\n")
        log(f"Iceberg REST catalog fixture cached: {done.read_text().strip()}")
    return str(cache / "lib" / "*")


class RestCatalogFixture:
    """Apache Iceberg's REST catalog server, its tables in SQLite, its metadata files written to MinIO."""

    def __init__(self, s3_endpoint: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cellar-iceberg-rest-"))
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.s3_endpoint = s3_endpoint
        self.process: Process | None = None

    def start(self) -> RestCatalogFixture:
        classpath = fixture_classpath()
        env = {
            **os.environ,
            "CATALOG_REST_PORT": str(self.port),
            "CATALOG_URI": f"jdbc:sqlite:{self.root / 'catalog.db'}",
            "CATALOG_JDBC_SCHEMA__VERSION": "V1",
            "CATALOG_WAREHOUSE": "s3://cellar-iceberg-rest-warehouse/",  # tables name their own location
            "CATALOG_IO__IMPL": "org.apache.iceberg.aws.s3.S3FileIO",
            "CATALOG_S3_ENDPOINT": self.s3_endpoint,
            "CATALOG_S3_PATH__STYLE__ACCESS": "true",
            "CATALOG_S3_ACCESS__KEY__ID": S3_ACCESS_KEY,
            "CATALOG_S3_SECRET__ACCESS__KEY": S3_SECRET_KEY,
            "CATALOG_CLIENT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }
        self.process = spawn(
            "iceberg-rest", ["java", "-Xmx384m", "-XX:+UseSerialGC", "-cp", classpath, MAIN_CLASS], self.root, env
        )

        def answers() -> bool:
            with urllib.request.urlopen(f"{self.uri}/v1/config", timeout=2) as response:
                return bool(response.status == 200)

        wait_for("the Iceberg REST catalog fixture", answers, self.process, timeout=180)
        log(f"Iceberg REST catalog fixture ready at {self.uri}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@dataclass
class GateCredentials:
    """What the gate accepts: a static bearer token, OAuth2 client credentials, a token that may do nothing."""

    bearer_token: str = "cellar-test-bearer-7f3a"
    client_id: str = "cellar-archiver"
    client_secret: str = "cellar-test-client-secret-91c2"
    forbidden_token: str = "cellar-test-no-privileges-5d1e"
    warehouse: str = "cellar"
    issued: set[str] = field(default_factory=set)
    scopes: list[str] = field(default_factory=list)  # the scope of each token request


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA made for the test and a certificate it signed for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    authority = Authority.create("cellar-test-catalog-ca")
    cert, key = authority.issue("iceberg-catalog")
    return (
        write_certificate(directory / "ca.pem", authority.certificate),
        write_certificate(directory / "cert.pem", cert),
        write_key(directory / "key.pem", key),
    )


TOKEN_PATHS = ("/v1/oauth/tokens", "/oauth2/token")
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "host", "authorization", "content-length"}


class _GateHandler(BaseHTTPRequestHandler):
    server: _GateServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the tests assert on what cellar reports, not on the gate's access log

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, kind: str, message: str) -> None:
        self._reply(status, {"error": {"message": message, "type": kind, "code": status}})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _token_exchange(self) -> None:
        form = {k: v[0] for k, v in parse_qs(self._body().decode()).items()}
        gate = self.server.credentials
        gate.scopes.append(form.get("scope", ""))
        if form.get("grant_type") != "client_credentials":
            self._reply(400, {"error": "unsupported_grant_type", "error_description": "client_credentials only"})
        elif (form.get("client_id"), form.get("client_secret")) != (gate.client_id, gate.client_secret):
            self._reply(401, {"error": "invalid_client", "error_description": "unknown client or wrong secret"})
        else:
            token = f"issued-{os.urandom(12).hex()}"
            gate.issued.add(token)
            self._reply(200, {"access_token": token, "token_type": "bearer", "expires_in": 3600})

    def _handle(self) -> None:
        path = urlsplit(self.path)
        if self.command == "POST" and path.path in TOKEN_PATHS:
            self._token_exchange()
            return
        gate = self.server.credentials
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        body = self._body()
        if token == gate.forbidden_token:
            self._error(403, "ForbiddenException", "the principal holds no privilege on this catalog")
        elif token != gate.bearer_token and token not in gate.issued:
            self._error(401, "NotAuthorizedException", "missing or unknown bearer token")
        elif path.path == "/v1/config" and parse_qs(path.query).get("warehouse", [gate.warehouse]) != [gate.warehouse]:
            self._error(404, "NotFoundException", "unable to find the warehouse")
        else:
            self._forward(body)

    def _forward(self, body: bytes) -> None:
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        upstream.request(self.command, self.path, body=body or None, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_HEADERS:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    do_GET = do_POST = do_HEAD = do_DELETE = _handle  # noqa: N815 (http.server's names)


class _GateServer(ThreadingHTTPServer):
    daemon_threads = True
    credentials: GateCredentials
    upstream_port: int


class CatalogGate:
    """TLS and credentials in front of the fixture (see the module's docstring)."""

    def __init__(self, upstream: RestCatalogFixture, credentials: GateCredentials | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cellar-catalog-gate-"))
        self.ca_path, cert, key = _certificates(self.root)
        self.credentials = credentials or GateCredentials()
        self.server = _GateServer(("127.0.0.1", 0), _GateHandler)
        self.server.credentials = self.credentials
        self.server.upstream_port = upstream.port
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.uri = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="catalog-gate", daemon=True)

    @property
    def ca_pem(self) -> str:
        return self.ca_path.read_text()

    def start(self) -> CatalogGate:
        self.thread.start()
        log(f"Iceberg REST catalog gate (TLS, OAuth2) at {self.uri}")
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
