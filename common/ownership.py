"""One owner per storage prefix: the first run of a resource claims its prefix; any other resource is refused.

Two resources writing under one prefix delete each other's backups (retention sees the other's as its own
to thin out) and restore each other's databases ("the newest backup"). So the first run of a DatabaseBackup
writes `<prefix>/cellar-owner.json` naming the resource (kind, namespace, name, uid), and the first run of a
TableArchive `<prefix>/_cellar_owners/<schema>.<table>.json` (archives of several tables share a prefix by
design, one folder each, as a data lake lays them out; two of one table must not), with a conditional write
(If-None-Match: *) so that two first runs at once cannot both win. Every later run, of any resource, reads
it before writing anything; a run of another resource (a copied spec, or the same name re-created with a new
uid) is refused with `PrefixInUse` until a person hands the prefix over by annotating the new resource with
the owner's uid. The hand-over is a conditional write too (If-Match on the record's ETag), and the record keeps
every earlier owner, so the new owner keeps managing (and restoring) their backups.

Readers (list, restore, restore tests, retention) take only the backups their resource wrote, or an earlier
owner of its prefix wrote: `Claim.readable_by`. Unarchive writes nothing to the store and claims nothing: it
may load another TableArchive's archive of the same table (into another database).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from common.conditions import format_time
from common.documents import StoredDocument
from common.errors import CellarError, PermanentError
from common.reasons import Reason
from common.storage import ObjectStore

log = logging.getLogger(__name__)

OWNER_OBJECT = "cellar-owner.json"
ARCHIVE_OWNERS = "_cellar_owners"
TAKE_OVER_ANNOTATION = "cellar.dev/take-over-prefix"
# Manifests written before cellar recorded the resource in them belong to whoever owns the prefix.
UNRECORDED = ""


@dataclass(frozen=True)
class Owner:
    """The resource a prefix belongs to."""

    kind: str
    namespace: str
    name: str
    uid: str

    @property
    def resource(self) -> str:
        """What a backup's manifest records as the resource that wrote it."""
        return f"{self.namespace}/{self.name}"

    def describe(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name} (uid {self.uid})"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name, "uid": self.uid}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Owner:
        return cls(str(body["kind"]), str(body["namespace"]), str(body["name"]), str(body["uid"]))

    @classmethod
    def of(cls, kind: str, namespace: str, name: str, resource: Mapping[str, Any]) -> Owner:
        """The owner a custom resource (as the API server returned it) would be."""
        return cls(kind, namespace, name, str((resource.get("metadata") or {}).get("uid", "")))


def take_over_from(resource: Mapping[str, Any]) -> str:
    """The uid of the owner this resource is allowed to take its prefix over from ('' for none)."""
    annotations = (resource.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(TAKE_OVER_ANNOTATION, "")).strip()


@dataclass(frozen=True)
class Area:
    """What one owner owns: a DatabaseBackup's whole prefix, or one table's folder of a TableArchive prefix."""

    store: ObjectStore
    record_key: str  # the owner record's key
    where: str  # for messages: s3://bucket/prefix/ (or azure://, gs://; and the table)

    @classmethod
    def of_backups(cls, store: ObjectStore) -> Area:
        return cls(store, store.key(OWNER_OBJECT), store.url(store.key()) + "/")

    @classmethod
    def of_archive(cls, store: ObjectStore, relation: str) -> Area:
        return cls(
            store,
            store.key(ARCHIVE_OWNERS, f"{relation}.json"),
            f"{store.url(store.key(relation))}/ (the archive of {relation})",
        )


@dataclass(frozen=True)
class Claim(StoredDocument):
    """The prefix's owner record: who owns it since when, and who owned it before (newest first)."""

    what: ClassVar[str] = "owner record"

    owner: Owner
    claimed_at: str
    previous: tuple[Owner, ...] = ()

    def to_body(self) -> dict[str, Any]:
        return {
            "owner": self.owner.to_json(),
            "claimedAt": self.claimed_at,
            "previousOwners": [o.to_json() for o in self.previous],
        }

    @classmethod
    def from_body(cls, body: dict[str, Any], key: str) -> Claim:
        return cls(
            Owner.from_json(body["owner"]),
            str(body["claimedAt"]),
            tuple(Owner.from_json(o) for o in body.get("previousOwners", [])),
        )

    @classmethod
    def damaged(cls, key: str, error: Exception, *, parsed: bool) -> PermanentError:
        return PermanentError(
            f"{key} is not a cellar owner record ({error}); it says which resource owns this prefix. "
            "Delete it only if no other resource writes under the prefix: the next run claims the prefix anew",
            reason=Reason.PREFIX_IN_USE,
        )

    def handed_over_by(self, take_over: str) -> bool:
        """Whether a take-over annotation's value names this record's owner."""
        return bool(take_over) and take_over == self.owner.uid

    def readable_by(self, me: Owner, take_over: str = "") -> frozenset[str]:
        """The `resource` values of the manifests `me` may read and manage: its own, those of manifests written
        before cellar recorded one, and (when `me` owns the prefix, or may take it over) its earlier owners'."""
        mine = {me.resource, UNRECORDED}
        if self.owner == me or self.handed_over_by(take_over):
            mine |= {o.resource for o in (self.owner, *self.previous)}
        return frozenset(mine)


def readable_by(area: Area, me: Owner, take_over: str = "") -> frozenset[str]:
    """For readers that write nothing (list, restore): whose manifests `me` may read in `area`."""
    claim, _ = _read(area)
    return (claim or Claim(me, "")).readable_by(me, take_over)


@dataclass(frozen=True)
class Claimed:
    """What a run may read under its area (`Claim.readable_by`), and whether this run wrote the owner record."""

    readable: frozenset[str]
    fresh: bool = False


def claim_prefix(area: Area, me: Owner, *, take_over: str = "", dry_run: bool = False) -> Claimed:
    """Before a run writes anything: make sure `area` is `me`'s (claim it when it is no one's; hand it over
    when `take_over` names its owner's uid); refuse with PrefixInUse when it is another resource's. A dry run
    checks and writes nothing."""
    store, key = area.store, area.record_key
    for _ in range(5):  # a conditional write lost to a concurrent run: read what it wrote, and decide again
        claim, etag = _read(area)
        if claim is not None and claim.owner == me:
            return Claimed(claim.readable_by(me))
        if claim is not None and not claim.handed_over_by(take_over):
            raise PermanentError(_refusal(area, me, claim), reason=Reason.PREFIX_IN_USE)
        if dry_run:
            return Claimed((claim or Claim(me, "")).readable_by(me, take_over))
        now = format_time(datetime.now(UTC))
        if claim is None:
            written = Claim(me, now)
            if store.put_if(key, written.to_bytes(), etag=None):
                log.info("claimed the storage prefix", extra={"owner_record": key})
                return Claimed(written.readable_by(me), fresh=True)
        else:
            written = Claim(me, now, (claim.owner, *claim.previous))
            if store.put_if(key, written.to_bytes(), etag=etag):
                log.warning("took the storage prefix over", extra={"owner_record": key, "from": claim.owner.describe()})
                return Claimed(written.readable_by(me))
    raise PermanentError(f"{area.where}: its owner record {key} kept changing", reason=Reason.PREFIX_IN_USE)


@contextlib.contextmanager
def released_on_failure(area: Area, me: Owner, claimed: Claimed, contents: Sequence[str]) -> Iterator[None]:
    """A first run that fails leaves the prefix as it found it: the owner record it wrote goes again when
    nothing else is under `contents` (the key prefixes the run writes to). An earlier owner's record, or one
    whose prefix holds anything, stays."""
    try:
        yield
    except BaseException:
        if claimed.fresh:
            try:
                _release_if_unused(area, me, contents)
            except CellarError as exc:  # the run's own failure is what matters; a leftover record is harmless
                log.warning("could not remove the owner record of a failed first run", extra={"error": str(exc)})
        raise


def _release_if_unused(area: Area, me: Owner, contents: Sequence[str]) -> None:
    store = area.store
    if any(o.key != area.record_key for prefix in contents for o in store.list_objects(prefix)):
        return
    claim, _ = _read(area)
    if claim is not None and claim.owner == me:
        store.delete(area.record_key)
        log.info("removed the owner record of a failed first run", extra={"owner_record": area.record_key})


def _read(area: Area) -> tuple[Claim | None, str | None]:
    found = area.store.get_if_exists(area.record_key)
    if found is None:
        return None, None
    raw, etag = found
    return Claim.read(raw, area.store.url(area.record_key)), etag


def _refusal(area: Area, me: Owner, claim: Claim) -> str:
    owner = claim.owner
    recreated = (owner.kind, owner.namespace, owner.name) == (me.kind, me.namespace, me.name)
    why = (
        "a resource of this name that was deleted (this one was created anew, with another uid)"
        if recreated
        else "another resource"
    )
    return (
        f"{area.where} belongs to {owner.describe()} since {claim.claimed_at}, {why}; resources that share "
        "it delete and restore each other's data, so nothing was written. "
        f"Give this {me.kind} a spec.storage.prefix of its own, or, if {owner.namespace}/{owner.name} no longer "
        f"writes there and this resource is to take its data over: kubectl annotate {me.kind.lower()} "
        f"{me.name} -n {me.namespace} {TAKE_OVER_ANNOTATION}={owner.uid}"
    )
