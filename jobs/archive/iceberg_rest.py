"""An Iceberg REST catalog (spec.iceberg.catalog.rest) through PyIceberg's RestCatalog: its credentials read from the
resource's Secrets, its properties built (uri, warehouse, prefix, a bearer token or OAuth2 client credentials, the
private CA), and its failures turned into cellar's errors, each naming the field to fix and never a secret.

The data files go to spec.storage with the resource's own keys (the s3.* FileIO properties iceberg_catalog.py
builds); the catalog server writes the metadata files with its own.
"""

from __future__ import annotations

import contextlib
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import CellarError, InvalidSpec, PermanentError, RetryableError
from common.reasons import Reason
from common.redact import redact
from common.secrets import Secrets
from jobs.archive.iceberg_settings import REST_FIELD, RestCatalogSpec

if TYPE_CHECKING:
    import requests


@dataclass(frozen=True)
class RestCredentials:
    """What spec.iceberg.catalog.rest's Secrets (and ConfigMap) hold; None where the spec names none."""

    token: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    ca_bundle_pem: str | None = None


def resolve_rest_credentials(secrets: Secrets, rest: RestCatalogSpec) -> RestCredentials:
    """Read the token or client credentials (registered for redaction) and the CA bundle (public)."""
    ca = rest.ca_bundle
    ca_pem = None
    if ca is not None:
        if ca.kind == "ConfigMap":
            ca_pem = secrets.config_map_key(ca.name, ca.key, ca.field)
        else:
            ca_pem = secrets.named_key(ca.name, ca.key, ca.field, sensitive=False)
        if "-----BEGIN CERTIFICATE-----" not in ca_pem:
            where = f'{ca.kind} "{ca.name}" key "{ca.key}"'
            raise InvalidSpec(f"{ca.field}: {where} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    oauth2 = rest.oauth2
    return RestCredentials(
        token=secrets.key(rest.bearer_token) if rest.bearer_token else None,
        client_id=secrets.key(oauth2.client_id) if oauth2 else None,
        client_secret=secrets.key(oauth2.client_secret) if oauth2 else None,
        ca_bundle_pem=ca_pem,
    )


def rest_catalog_properties(rest: RestCatalogSpec, credentials: RestCredentials, ca_path: str | None) -> dict[str, Any]:
    """PyIceberg RestCatalog's properties: the spec's extra ones under those cellar sets itself."""
    properties: dict[str, Any] = {**rest.properties, "uri": rest.uri}
    if rest.warehouse:
        properties["warehouse"] = rest.warehouse
    if rest.prefix:
        properties["prefix"] = rest.prefix
    if credentials.token:
        properties["token"] = credentials.token
    if rest.oauth2 is not None:
        properties["credential"] = f"{credentials.client_id}:{credentials.client_secret}"
        if rest.oauth2.scope:
            properties["scope"] = rest.oauth2.scope
        if rest.oauth2.token_endpoint:
            properties["oauth2-server-uri"] = rest.oauth2.token_endpoint
    if ca_path:
        properties["ssl"] = {"cabundle": ca_path}  # requests' `verify`: the private CA instead of the public ones
    return properties


def _ca_file(pem: str) -> str:
    # requests reads the CA from a file, each time it opens a connection: the file lives as long as the catalog.
    with tempfile.NamedTemporaryFile("w", prefix="cellar-iceberg-ca-", suffix=".pem", delete=False) as ca:
        ca.write(pem)
    return ca.name


def _session_class() -> type[requests.Session]:
    """requests' Session whose own CA bundle (PyIceberg's ssl.cabundle) wins over REQUESTS_CA_BUNDLE and
    CURL_CA_BUNDLE: requests lets those environment variables override `Session.verify` (psf/requests#3829), and
    platforms set them for their own CAs, which would hide the catalog's."""
    import requests

    class CatalogSession(requests.Session):
        cellar = True

        def merge_environment_settings(
            self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
        ) -> dict[str, Any]:
            settings: dict[str, Any] = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if verify is None and isinstance(self.verify, str):  # no choice per request: the session's CA
                settings["verify"] = self.verify
            return settings

    return CatalogSession


def open_rest_catalog(name: str, rest: RestCatalogSpec, credentials: RestCredentials, file_io: dict[str, str]) -> Any:
    """Reach the catalog (GET /v1/config, and the OAuth2 token exchange where configured) and return it."""
    import pyiceberg.catalog.rest
    from pyiceberg.catalog.rest import RestCatalog

    module: Any = pyiceberg.catalog.rest
    if not getattr(module.Session, "cellar", False):  # the sessions PyIceberg makes, once per process
        module.Session = _session_class()
    ca_path = _ca_file(credentials.ca_bundle_pem) if credentials.ca_bundle_pem else None
    try:
        with rest_failures(rest, "refused its configuration request (GET /v1/config)", opening=True):
            catalog = RestCatalog(name, **rest_catalog_properties(rest, credentials, ca_path), **file_io)
    except BaseException:
        if ca_path:
            Path(ca_path).unlink(missing_ok=True)
        raise
    if ca_path:
        weakref.finalize(catalog, Path(ca_path).unlink, missing_ok=True)
    return catalog


@contextlib.contextmanager
def rest_failures(rest: RestCatalogSpec, what: str, *, opening: bool = False) -> Iterator[None]:
    """Turn the catalog's failures within into cellar's errors. `opening`: the configuration request, where a
    refusal that is not about the credentials is about the warehouse."""
    try:
        yield
    except CellarError:
        raise
    except Exception as exc:
        failure = rest_failure(exc, rest, what, opening=opening)
        if failure is None:
            raise
        raise failure from None


def _detail(exc: BaseException) -> str:
    return redact(" ".join(str(exc).split()) or type(exc).__name__)[:500]


def rest_failure(exc: Exception, rest: RestCatalogSpec, what: str, *, opening: bool = False) -> CellarError | None:
    """cellar's error for a failure of the REST catalog, or None for one the caller handles (a lost commit race,
    a missing table)."""
    import requests

    if isinstance(exc, requests.exceptions.RequestException):
        return _transport_failure(exc, rest)
    return _answer_failure(exc, rest, what, opening=opening)


def _transport_failure(exc: Exception, rest: RestCatalogSpec) -> CellarError:
    """No answer: TLS refused (permanent until the CA is named) or no connection (the server may come back)."""
    import requests

    at = f"the Iceberg REST catalog at {rest.uri}"
    if isinstance(exc, requests.exceptions.SSLError):
        ca = f"{REST_FIELD}.caBundle" + ("" if rest.ca_bundle else " (none is set: the public CAs were tried)")
        return PermanentError(
            f"{REST_FIELD}.uri: TLS verification of {at} failed ({_detail(exc)}); name the CA that signed its "
            f"certificate in {ca}, or check that the host matches the certificate",
            reason=Reason.CATALOG_CERTIFICATE_REJECTED,
        )
    return RetryableError(
        f"{REST_FIELD}.uri: {at} could not be reached ({_detail(exc)})", reason=Reason.CATALOG_UNAVAILABLE
    )


def _answer_failure(exc: Exception, rest: RestCatalogSpec, what: str, *, opening: bool) -> CellarError | None:
    """An error answer: credentials refused, a privilege missing, the warehouse unknown, or the server failing."""
    from pyiceberg.exceptions import ForbiddenError, OAuthError, RESTError, UnauthorizedError

    at = f"the Iceberg REST catalog at {rest.uri}"
    if isinstance(exc, (UnauthorizedError, OAuthError)):
        return PermanentError(
            f"{at} refused the credentials ({_detail(exc)}); fix {rest.credential_keys()}",
            reason=Reason.CATALOG_ACCESS_DENIED,
        )
    if isinstance(exc, ForbiddenError):
        return PermanentError(
            f"{at} {what}: forbidden ({_detail(exc)}); the principal of {rest.credential_keys()} lacks a privilege "
            "on the warehouse, namespace or table",
            reason=Reason.CATALOG_ACCESS_DENIED,
        )
    if not isinstance(exc, RESTError):  # CommitStateUnknownException is one: the next run resolves the batch
        return None
    if opening and not _server_side(exc):
        named = repr(rest.warehouse) if rest.warehouse else "(none: the server's default)"
        return PermanentError(
            f"{REST_FIELD}.warehouse: {at} has no warehouse {named} or refused it ({_detail(exc)}); name one the "
            "server serves",
            reason=Reason.NOT_FOUND,
        )
    return RetryableError(f"{REST_FIELD}: {at} {what}: {_detail(exc)}", reason=Reason.CATALOG_UNAVAILABLE)


def _server_side(exc: Exception) -> bool:
    from pyiceberg.exceptions import ServerError, ServiceUnavailableError, TooManyRequestsError

    return isinstance(exc, (ServerError, ServiceUnavailableError, TooManyRequestsError))
