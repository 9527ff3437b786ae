"""Certificates the tests make for their own servers: a CA, and certificates it signs for loopback, written as PEM.
They are valid from an hour ago for two days: a run never outlives them, and a clock a little behind still
accepts them."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOOPBACK_NAMES = ("localhost", "127.0.0.1")


def new_key(kind: str = "ec") -> Any:
    """A private key: P-256 ("ec"), or RSA 2048 ("rsa") where a server insists on RSA."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def write_key(path: Path, key: Any) -> Path:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def write_certificate(path: Path, certificate: Any) -> Path:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def _builder(subject: Any, issuer: Any, public_key: Any) -> Any:
    from cryptography import x509

    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
    )


def _names(hosts: tuple[str, ...]) -> Any:
    from cryptography import x509

    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


@dataclass(frozen=True)
class Authority:
    """A test CA: its certificate and key. `issue` signs leaf certificates with it."""

    certificate: Any
    key: Any

    @classmethod
    def create(cls, common_name: str, *, key_kind: str = "ec", hosts: tuple[str, ...] = ()) -> Authority:
        """A self-signed CA; with `hosts`, also a serving certificate for them (a server may present the CA
        itself)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        key = new_key(key_kind)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        # Key usage and key identifiers as OpenSSL's strict verification (Python 3.13's default) asks of a CA.
        builder = (
            _builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        if hosts:
            builder = builder.add_extension(_names(hosts), critical=False)
        return cls(builder.sign(key, hashes.SHA256()), key)

    def issue(
        self,
        common_name: str,
        *,
        organization: str | None = None,
        hosts: tuple[str, ...] = LOOPBACK_NAMES,
        client: bool = False,
    ) -> tuple[Any, Any]:
        """(certificate, key) signed by this CA: a server's for `hosts`, or (`client`) a client's, whose
        organization a kube-apiserver reads as its group."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = new_key("rsa" if isinstance(self.key, _rsa_key_type()) else "ec")
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if organization:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        builder = _builder(x509.Name(attributes), self.certificate.subject, key.public_key()).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
        )
        if not client:
            builder = builder.add_extension(_names(hosts), critical=False)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


def _rsa_key_type() -> type:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.RSAPrivateKey


def self_signed(common_name: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed CA certificate for 127.0.0.1 and its key, written as cert.pem and key.pem into `directory`:
    a server that presents it is trusted by a client given the same file as its CA."""
    authority = Authority.create(common_name, hosts=("127.0.0.1",))
    return (
        write_certificate(directory / "cert.pem", authority.certificate),
        write_key(directory / "key.pem", authority.key),
    )
