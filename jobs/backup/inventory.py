"""The catalog as storage holds it: the complete backups of a resource, newest first, told apart from other
resources' backups and from leftovers (take_inventory), and the one backup a restore or verify names (find_backup).
What makes a backup complete is the layout in jobs.backup.catalog.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from common.errors import PermanentError
from common.reasons import Reason
from common.storage import ListedObject, ObjectStore
from jobs.backup.catalog import DATA_DIR, MANIFEST_DIR, QUARANTINE_DIR, Manifest

log = logging.getLogger(__name__)


@dataclass
class Inventory:
    """Complete backups of the resource, newest first, and objects that belong to no complete backup.
    `others` are complete backups other resources wrote under the prefix (before it had one owner): never
    listed, restored, thinned out or deleted here, and their objects are not leftovers."""

    backups: list[Manifest]
    orphan_data: list[ListedObject]
    broken_manifests: list[ListedObject]
    others: list[Manifest] = field(default_factory=list)


def take_inventory(store: ObjectStore, readable: frozenset[str], *, newest: str | None = None) -> Inventory:
    """List storage and sort it into the complete backups of the resources in `readable` (what
    common.ownership says the resource may read), other resources' backups, and leftovers.

    A manifest counts only when the object it names exists with the size it records; a data object
    no complete manifest names is a leftover of a crashed run (or of a half-done deletion). `newest`: the
    backup the run just wrote, which counts as the newest even where another ended in the same second.
    """
    data = {o.key: o for o in store.list_objects(store.key(DATA_DIR) + "/")}
    manifests = list(store.list_objects(store.key(MANIFEST_DIR) + "/"))
    rejected = {o.key.rsplit("/", 1)[-1] for o in store.list_objects(store.key(QUARANTINE_DIR) + "/")}
    backups: list[Manifest] = []
    broken: list[ListedObject] = []
    for listed in manifests:
        if listed.key.rsplit("/", 1)[-1] in rejected:
            broken.append(listed)  # quarantined; its manifest outlived the move (an object lock held it)
            continue
        try:
            manifest = Manifest.read(store.get_bytes(listed.key), listed.key)
        except PermanentError as exc:
            log.warning("ignoring unreadable manifest", extra={"key": listed.key, "error": str(exc)})
            broken.append(listed)
            continue
        expected = {key: size for d in manifest.dumps for key, size in d.object_sizes.items()}
        if manifest.globals:
            expected[manifest.globals.data_key] = manifest.globals.bytes_stored
        if any(key not in data or data[key].size != size for key, size in expected.items()):
            log.warning("manifest does not match its object", extra={"key": listed.key, "data_key": manifest.data_key})
            broken.append(listed)
            continue
        backups.append(manifest)
    named = {key for b in backups for key in b.object_keys}
    orphans = [o for key, o in data.items() if key not in named]
    # Newest first; `newest` (the run's own backup) before others that ended in the same second.
    backups.sort(key=lambda m: (m.end_time, m.backup_id == newest, m.backup_id), reverse=True)
    others = [m for m in backups if m.resource not in readable]
    if others:
        log.warning(
            "backups of other resources under this prefix are left alone",
            extra={"resources": sorted({m.resource for m in others}), "backups": len(others)},
        )
    return Inventory(
        backups=[m for m in backups if m.resource in readable],
        orphan_data=orphans,
        broken_manifests=broken,
        others=others,
    )


def find_backup(store: ObjectStore, readable: frozenset[str], key: str | None) -> Manifest:
    """The backup whose data key (or backup id) is `key`, or the newest complete one, of the resources in
    `readable`."""
    inventory = take_inventory(store, readable)
    others = f" ({len(inventory.others)} of other resources are left alone)" if inventory.others else ""
    if not inventory.backups:
        raise PermanentError(
            f"no complete backup under {store.url(store.key(MANIFEST_DIR))}/{others}",
            reason=Reason.BACKUP_NOT_FOUND,
        )
    if key is None:
        return inventory.backups[0]

    def named(manifest: Manifest) -> bool:
        return key in (manifest.backup_id, manifest.manifest_key, *(d.data_key for d in manifest.dumps))

    for manifest in inventory.backups:
        if named(manifest):
            return manifest
    foreign = next((m for m in inventory.others if named(m)), None)
    raise PermanentError(
        f"backup {key!r} in {store.url(store.key())} was written by {foreign.resource}, not by this "
        "resource: restore it through that DatabaseBackup"
        if foreign is not None
        else f"no complete backup with key {key!r} in {store.url(store.key())}; "
        "spec.backup.key must name the data object, the backup id or the manifest",
        reason=Reason.BACKUP_NOT_FOUND,
    )
