"""Each provider's failures as cellar's reasons: the Azure SDK's and Google's exceptions, translated with what
to fix (the real services' refusals are in tests/integration/test_stores.py; these are the ones an emulator
cannot produce, and the exact mapping)."""

from __future__ import annotations

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from botocore.exceptions import SSLError
from google.api_core import exceptions as api
from google.auth import exceptions as auth

from common.errors import CellarError, ConnectionFailed, Forbidden, PermanentError, RetryableError
from common.reasons import Reason
from common.storage.azure import translate_azure_error
from common.storage.errors import translate_storage_error
from common.storage.gcs import translate_gcs_error


def azure_error(kind: type[HttpResponseError], status: int, code: str) -> HttpResponseError:
    error = kind(message=f"{code} happened")
    error.status_code = status
    error.error_code = code  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    ("error", "kind", "reason", "says"),
    [
        (
            azure_error(ResourceNotFoundError, 404, "ContainerNotFound"),
            PermanentError,
            Reason.BUCKET_NOT_FOUND,
            "spec.storage.azureBlob.container",
        ),
        (
            azure_error(ClientAuthenticationError, 403, "AuthenticationFailed"),
            Forbidden,
            Reason.STORAGE_ACCESS_DENIED,
            "account key or SAS token",
        ),
        (
            azure_error(HttpResponseError, 403, "AuthorizationPermissionMismatch"),
            Forbidden,
            Reason.STORAGE_ACCESS_DENIED,
            "Storage Blob Data Contributor",
        ),
        (azure_error(HttpResponseError, 503, "ServerBusy"), RetryableError, Reason.UPLOAD_FAILED, "ServerBusy"),
        (
            azure_error(HttpResponseError, 400, "InvalidBlockList"),
            PermanentError,
            Reason.UPLOAD_REJECTED,
            "InvalidBlockList",
        ),
        (ServiceRequestError("connection refused"), ConnectionFailed, Reason.STORAGE_UNAVAILABLE, "cannot reach Azure"),
    ],
)
def test_azure_failures(error: Exception, kind: type[CellarError], reason: Reason, says: str) -> None:
    translated = translate_azure_error(error, "cannot write", "azure://acme1/backups/p/k")
    assert type(translated) is kind
    assert translated.reason == reason
    assert says in str(translated)
    assert "azure://acme1/backups/p/k" in str(translated)


@pytest.mark.parametrize(
    ("error", "kind", "reason", "says"),
    [
        (
            api.NotFound("The specified bucket does not exist."),
            PermanentError,
            Reason.BUCKET_NOT_FOUND,
            "spec.storage.gcs.bucket",
        ),
        (api.NotFound("No such object: b/k"), PermanentError, Reason.UPLOAD_REJECTED, "No such object"),
        (
            api.Forbidden("cellar@acme.iam does not have storage.objects.create"),
            Forbidden,
            Reason.STORAGE_ACCESS_DENIED,
            "roles/storage.objectAdmin",
        ),
        (auth.RefreshError("invalid_grant"), Forbidden, Reason.STORAGE_ACCESS_DENIED, "service account key"),
        (api.TooManyRequests("rateLimitExceeded"), RetryableError, Reason.UPLOAD_FAILED, "429"),
        (api.ServiceUnavailable("backendError"), RetryableError, Reason.UPLOAD_FAILED, "503"),
        (
            requests.ConnectionError("refused"),
            ConnectionFailed,
            Reason.STORAGE_UNAVAILABLE,
            "cannot reach Google Cloud Storage",
        ),
    ],
)
def test_gcs_failures(error: Exception, kind: type[CellarError], reason: Reason, says: str) -> None:
    translated = translate_gcs_error(error, "cannot write", "gs://b/p/k")
    assert type(translated) is kind
    assert translated.reason == reason
    assert says in str(translated)
    assert "gs://b/p/k" in str(translated)


def test_workload_identity_without_its_settings_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.secrets import StorageCredentials
    from common.spec import SpecReader
    from common.storage import open_store
    from common.storage_spec import StorageSpec

    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # no metadata server here: google.auth must not wait for one
    monkeypatch.setenv("CLOUDSDK_CONFIG", "/nonexistent")
    nothing = StorageCredentials(None, None, None, None)
    azure = {"account": "acme1", "container": "c-1", "credentials": {"workloadIdentity": True}}
    gcs = {"bucket": "b-1", "credentials": {"workloadIdentity": True}}
    for provider, block, says in (
        ("AzureBlob", {"azureBlob": azure}, "podLabels"),
        ("GCS", {"gcs": gcs}, "iam.gke.io"),
    ):
        spec = StorageSpec.parse(SpecReader({"provider": provider, **block}, "spec.storage"))
        with pytest.raises(Forbidden) as refused:
            open_store(spec, nothing)
        assert refused.value.reason == Reason.STORAGE_ACCESS_DENIED
        assert says in str(refused.value)


def test_a_service_account_key_is_read_from_its_secret_and_a_malformed_one_is_refused() -> None:
    """The key signs its own token requests (no request is made here); what is not a key says so."""
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from common.errors import InvalidSpec
    from common.redact import redact
    from common.secrets import StorageCredentials
    from common.spec import SpecReader
    from common.storage import open_store
    from common.storage.gcs import GcsStore
    from common.storage_spec import StorageSpec

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    key = {
        "type": "service_account",
        "project_id": "acme-prod",
        "private_key_id": "0123",
        "private_key": pem,
        "client_email": "cellar@acme-prod.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    block = {"bucket": "b-1", "credentials": {"serviceAccountKey": {"name": "gcs", "key": "key.json"}}}
    spec = StorageSpec.parse(SpecReader({"provider": "GCS", "gcs": block}, "spec.storage"))
    store = open_store(spec, StorageCredentials(None, None, None, None, gcs_service_account_json=json.dumps(key)))
    assert isinstance(store, GcsStore)
    assert store.url("k") == "gs://b-1/k"
    assert pem.splitlines()[1] not in redact(pem)  # the private key is registered as a secret
    with pytest.raises(
        InvalidSpec, match=r"spec\.storage\.gcs\.credentials\.serviceAccountKey: the Secret key does not"
    ):
        open_store(spec, StorageCredentials(None, None, None, None, gcs_service_account_json="not json"))


@pytest.mark.parametrize(
    ("error", "kind", "reason"),
    [
        (
            SSLError(
                endpoint_url="https://minio.internal:9000/archive",
                error="[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in chain",
            ),
            PermanentError,
            Reason.STORAGE_CERTIFICATE_REJECTED,
        ),
        (
            SSLError(endpoint_url="https://minio.internal:9000/archive", error="EOF occurred in violation of protocol"),
            ConnectionFailed,
            Reason.STORAGE_UNAVAILABLE,
        ),
    ],
)
def test_an_s3_endpoint_certificate_not_accepted_is_permanent_and_names_endpoint_ca(
    error: Exception, kind: type[CellarError], reason: Reason
) -> None:
    """A certificate the CA does not verify fails every attempt alike: permanent, naming what to set. A TLS
    connection cut short is a passing failure of the network."""
    translated = translate_storage_error(error, "cannot upload to", "archive", "orders/x.parquet")
    assert type(translated) is kind
    assert translated.reason == reason
    assert "s3://archive/orders/x.parquet" in str(translated)
    if reason == Reason.STORAGE_CERTIFICATE_REJECTED:
        assert "spec.storage.endpointCA" in str(translated)
