"""Faults between a job and a real server, scripted per test.

`FaultProxy` is an HTTP reverse proxy on loopback (plain, or TLS with a certificate it makes itself, for the
API server): every request goes to the real server unless the test's script answers it with a fault: an
error status with a body (S3's `503 SlowDown`, the API server's `429`), a connection reset after part of the
request was read, or a `200` whose body is cut short. It records every request and what it did with it.

`Toxiproxy` drives Shopify's toxiproxy (built from the Go module proxy) for TCP-level faults: latency,
bandwidth, connections reset.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.harness.certificates import self_signed
from tests.harness.stack import StackError, built_binaries, free_port


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with the query
    headers: dict[str, str]
    number: int  # 1 for the first request the proxy saw

    @property
    def is_upload_part(self) -> bool:
        return self.method == "PUT" and "partNumber=" in self.path and "uploadId=" in self.path


@dataclass(frozen=True)
class Respond:
    """Answer with this status and body instead of the server."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Reset:
    """Read `after_bytes` of the request's body, then drop the connection without an answer."""

    after_bytes: int = 0


@dataclass(frozen=True)
class Truncate:
    """Forward to the server, then send only `fraction` of its body (the headers promise all of it)."""

    fraction: float = 0.5


Fault = Respond | Reset | Truncate
Script = Callable[[Request], Fault | None]


def s3_error(status: int, code: str, message: str) -> Respond:
    body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return Respond(status, body.encode(), (("Content-Type", "application/xml"),))


def kube_error(status: int, reason: str, retry_after: int | None = None) -> Respond:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": status}
    headers = [("Content-Type", "application/json")]
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    return Respond(status, json.dumps(body).encode(), tuple(headers))


@dataclass
class Seen:
    request: Request
    fault: Fault | None


class _QuietServer(ThreadingHTTPServer):
    """A client hanging up a kept-alive connection is no error of the proxy's: say nothing of it."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionResetError | BrokenPipeError):
            super().handle_error(request, client_address)


@dataclass
class FaultProxy:
    upstream: str  # http://127.0.0.1:9000 or https://127.0.0.1:6443
    upstream_ca: str | None = None  # PEM file to trust the upstream's TLS with
    tls: bool = False  # serve TLS (with a certificate made here: `ca_file`)
    script: Script = lambda request: None
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = free_port()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.ca_file: Path | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def faults(self) -> list[Seen]:
        return [s for s in self.seen if s.fault is not None]

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                with proxy._lock:
                    request = Request(self.command, self.path, dict(self.headers.items()), len(proxy.seen) + 1)
                    fault = proxy.script(request)
                    proxy.seen.append(Seen(request, fault))
                if isinstance(fault, Reset):
                    self.rfile.read(min(fault.after_bytes, int(self.headers.get("Content-Length") or 0)))
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                body = self._body()
                if isinstance(fault, Respond):
                    self.send_response(fault.status)
                    for name, value in fault.headers:
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(fault.body)))
                    self.end_headers()
                    self.wfile.write(fault.body)
                    return
                status, headers, answer = proxy._forward(self.command, self.path, dict(self.headers.items()), body)
                self.send_response(status)
                length = str(len(answer))
                for name, value in headers:
                    if name.lower() == "content-length" and self.command == "HEAD":
                        length = value  # the size of the object a GET would send (PyArrow reads it from here)
                    elif name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", length)
                self.end_headers()
                if isinstance(fault, Truncate):
                    self.wfile.write(answer[: int(len(answer) * fault.fraction)])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(answer)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if not size:
                            break
                        chunks.append(chunk)
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = _handle  # noqa: N815 (http.server's names)

        self._server = _QuietServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        if self.tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            certificate, key = self._make_certificate()
            context.load_cert_chain(certificate, key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any, bytes]:
        target = urlsplit(self.upstream)
        connection: http.client.HTTPConnection
        if target.scheme == "https":
            context = ssl.create_default_context(cafile=self.upstream_ca)
            connection = http.client.HTTPSConnection(target.hostname or "", target.port, context=context, timeout=120)
        else:
            connection = http.client.HTTPConnection(target.hostname or "", target.port, timeout=120)
        # The Host header stays the client's: S3 signs it, and the server checks the signature against it.
        sent = {k: v for k, v in headers.items() if k.lower() not in ("transfer-encoding", "connection")}
        sent["Content-Length"] = str(len(body))
        try:
            connection.request(method, path, body=body if body or method in ("PUT", "POST") else None, headers=sent)
            answer = connection.getresponse()
            return answer.status, answer.getheaders(), answer.read()
        finally:
            connection.close()

    def _make_certificate(self) -> tuple[str, str]:
        directory = Path(tempfile.mkdtemp(prefix="cellar-fault-proxy-"))
        certificate, key = self_signed("cellar fault proxy", directory)
        self.ca_file = certificate
        return str(certificate), str(key)


class Toxiproxy:
    """toxiproxy-server on loopback and its HTTP API: proxies to real servers, and toxics on them."""

    def __init__(self) -> None:
        self.binary = built_binaries(["toxiproxy-server"])["toxiproxy-server"]
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Toxiproxy:
        self.process = subprocess.Popen(
            [str(self.binary), "-host", "127.0.0.1", "-port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.api}/version", timeout=2):  # plain text, not JSON
                    return self
            except OSError:
                time.sleep(0.2)
        raise StackError("toxiproxy-server did not answer in 30 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.api}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as answer:
            raw = answer.read()
        return json.loads(raw) if raw.strip() else None

    def proxy(self, name: str, upstream: str, *, host: str = "127.0.0.1", port: int | None = None) -> int:
        """A proxy to `upstream` (host:port) listening on `host` (a free port unless given); its port."""
        port = port or free_port()
        self._call("POST", "/proxies", {"name": name, "listen": f"{host}:{port}", "upstream": upstream})
        return port

    def add_toxic(self, proxy: str, name: str, kind: str, stream: str = "downstream", **attributes: Any) -> None:
        body = {"name": name, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes}
        self._call("POST", f"/proxies/{proxy}/toxics", body)

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")
