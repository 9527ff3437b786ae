"""The documents cellar stores share one verb pair and one version rule (common.documents)."""

from __future__ import annotations

import json

import pytest

from common.documents import StoredDocument
from common.errors import PermanentError
from common.ownership import Claim, Owner
from common.reasons import Reason
from jobs.archive.manifest import BatchManifest
from jobs.backup.catalog import Manifest


@pytest.mark.parametrize("kind", [Manifest, BatchManifest, Claim])
def test_every_stored_document_is_one(kind: type[StoredDocument]) -> None:
    assert issubclass(kind, StoredDocument)
    assert {"to_bytes", "read"} <= set(dir(kind))


@pytest.mark.parametrize(
    ("kind", "reason"), [(Manifest, Reason.UNSUPPORTED_MANIFEST), (BatchManifest, Reason.UNSUPPORTED_MANIFEST)]
)
def test_a_newer_format_is_refused_with_upgrade_advice(kind: type[StoredDocument], reason: Reason) -> None:
    with pytest.raises(PermanentError) as raised:
        kind.read(json.dumps({"formatVersion": 99}).encode(), "p/m.json")
    assert raised.value.reason == reason
    assert "p/m.json" in str(raised.value)
    assert "upgrade cellar" in str(raised.value)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [(Manifest, Reason.INVALID_MANIFEST), (BatchManifest, Reason.INVALID_MANIFEST), (Claim, Reason.PREFIX_IN_USE)],
)
@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'{"formatVersion": 1}'])
def test_what_is_not_such_a_document_is_refused_naming_its_key(
    kind: type[StoredDocument], reason: Reason, raw: bytes
) -> None:
    with pytest.raises(PermanentError) as raised:
        kind.read(raw, "s3://b/p/doc.json")
    assert raised.value.reason == reason
    assert "s3://b/p/doc.json" in str(raised.value)


def test_an_owner_record_reads_back_what_it_wrote() -> None:
    claim = Claim(
        Owner("DatabaseBackup", "shop", "orders", "u-1"),
        "2026-12-06T00:00:00Z",
        (Owner("DatabaseBackup", "shop", "orders", "u-0"),),
    )
    assert Claim.read(claim.to_bytes(), "k") == claim
