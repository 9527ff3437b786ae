"""What a resource's Secrets and ConfigMaps hold, read through the Kubernetes seam: `Secrets` is the one way to
them for a run (the resource's own namespace), and resolves the database and object-storage settings a spec
names. Every value read from a Secret is registered for redaction; host, port, database and user stay
readable in messages, since people need them to fix a connection."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import unquote, urlsplit

from common.errors import InvalidSpec
from common.kube import Kube
from common.redact import register_secret
from common.spec import DatabaseSpec, SecretKeyRef
from common.storage_spec import StorageSpec


class Secrets:
    """The Secrets and ConfigMaps of one namespace, as a run reads them."""

    def __init__(self, kube: Kube, namespace: str, application_name: str = "cellar") -> None:
        """`application_name`: what the sessions of the databases resolved here say they are."""
        self._kube = kube
        self.namespace = namespace
        self.application_name = application_name

    def key(self, ref: SecretKeyRef, *, sensitive: bool = True) -> str:
        """The value of a Secret key a spec names; `sensitive`: registered for redaction (default)."""
        return self._kube.read_secret_key(self.namespace, ref.name, ref.key, field=ref.field, sensitive=sensitive)

    def named_key(self, name: str, key: str, field: str, *, sensitive: bool = True) -> str:
        return self._kube.read_secret_key(self.namespace, name, key, field=field, sensitive=sensitive)

    def config_map_key(self, name: str, key: str, field: str) -> str:
        return self._kube.read_config_map_key(self.namespace, name, key, field=field)

    def database(self, spec: DatabaseSpec) -> DatabaseSettings:
        """How to connect: the spec's overrides over what its Secret holds."""
        secret = self._kube.read_secret(self.namespace, spec.secret_name, field=f"{spec.field}.secretRef")
        return replace(resolve_database(spec, secret), application_name=self.application_name)

    def storage_credentials(self, spec: StorageSpec) -> StorageCredentials:
        def read(ref: SecretKeyRef | None, *, sensitive: bool = True) -> str | None:
            return None if ref is None else self.key(ref, sensitive=sensitive)

        azure, gcs = spec.azure_blob, spec.gcs
        return StorageCredentials(
            read(spec.access_key_id),
            read(spec.secret_access_key),
            read(spec.session_token),
            read(spec.endpoint_ca, sensitive=False),  # a CA certificate is public
            azure_account_key=read(azure.account_key) if azure else None,
            azure_sas_token=read(azure.sas_token) if azure else None,
            gcs_service_account_json=read(gcs.service_account_key) if gcs else None,
        )


def _from_uri(spec: DatabaseSpec, uri: str) -> dict[str, str]:
    """The connection settings a Secret's `uri` key holds (none without one); its password is registered for
    redaction."""
    if not uri:
        return {}
    parts = urlsplit(uri)
    if parts.scheme not in ("postgres", "postgresql"):
        raise InvalidSpec(f'{spec.field}.secretRef: Secret "{spec.secret_name}" key uri must start with postgresql://')
    register_secret(unquote(parts.password or ""))
    found = {
        "host": parts.hostname or "",
        "port": str(parts.port or ""),
        "dbname": unquote(parts.path.lstrip("/")),
        "username": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
    }
    return {key: value for key, value in found.items() if value}


@dataclass(frozen=True)
class DatabaseSettings:
    """Everything needed to connect; `password` never leaves this process except to libpq."""

    host: str
    port: int
    dbname: str
    user: str
    password: str
    ssl_mode: str
    ssl_root_cert: str | None
    connect_timeout: int
    # What its sessions say they are (pg_stat_activity): set once, where a run resolves its Secrets.
    application_name: str = "cellar"

    def describe(self) -> str:
        """Where we connect, for messages (no password)."""
        return f"database {self.dbname!r} on {self.host}:{self.port} as {self.user!r}"


def resolve_database(spec: DatabaseSpec, secret: Mapping[str, str]) -> DatabaseSettings:
    """Combine the spec's overrides with the Secret's keys (CloudNativePG layout, or a `uri`).

    The password (and a uri, which holds it) is registered for redaction; host, port, database and
    user stay readable in messages, since people need them to fix a connection.
    """
    for sensitive in ("password", "uri", "pgpass", "jdbc-uri"):
        register_secret(secret.get(sensitive))
    from_uri = _from_uri(spec, secret.get("uri") or "")

    def pick(*keys: str) -> str | None:
        for key in keys:
            if secret.get(key):
                return secret[key]
            if from_uri.get(key):
                return from_uri[key]
        return None

    host = spec.host or pick("host")
    user = pick("username", "user")
    password = pick("password")
    dbname = spec.dbname or pick("dbname", "database")
    port_text = str(spec.port) if spec.port else (pick("port") or "5432")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidSpec(f'{spec.field}: Secret "{spec.secret_name}" key port is not a TCP port number')
    if host and user and password and dbname:
        return DatabaseSettings(
            host=host,
            port=int(port_text),
            dbname=dbname,
            user=user,
            password=password,
            ssl_mode=spec.ssl_mode,
            ssl_root_cert=secret.get("sslrootcert") or None,
            connect_timeout=spec.connect_timeout,
        )
    missing = [
        name
        for name, value in (("host", host), ("username", user), ("password", password), ("dbname", dbname))
        if not value
    ]
    raise InvalidSpec(
        f'{spec.field}: Secret "{spec.secret_name}" lacks {", ".join(missing)} (give them as Secret keys '
        f"host/port/dbname/username/password or as a uri key; host and dbname may also be set in the spec)"
    )


@dataclass(frozen=True)
class StorageCredentials:
    """What spec.storage's Secrets hold: S3 keys and CA, an Azure account key or SAS token, a GCS service
    account key (JSON). None where the spec names none."""

    access_key_id: str | None
    secret_access_key: str | None
    session_token: str | None
    ca_bundle_pem: str | None
    azure_account_key: str | None = None
    azure_sas_token: str | None = None
    gcs_service_account_json: str | None = None
