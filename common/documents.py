"""The JSON documents cellar stores beside what they describe (a backup's manifest, an archive batch's
manifest, a prefix's owner record), written and read through one verb pair with one version rule.

`to_bytes()` writes a document; `read(raw, key)` reads one back. A document whose `formatVersion` is newer
than this cellar reads is refused as UnsupportedManifest (upgrade cellar); bytes that are not JSON, or lack
or mistype a field, are refused with the document's own reason and message (`damaged`), naming the key.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Self

from common.errors import PermanentError
from common.reasons import Reason


class StoredDocument(ABC):
    """A document cellar writes to the store as JSON. Subclasses give their body, how they are built from
    one, and the newest format version they read (0: a document without versions)."""

    latest_version: ClassVar[int] = 0
    what: ClassVar[str] = "document"  # for messages: "manifest", "owner record"

    @abstractmethod
    def to_body(self) -> dict[str, Any]:
        """The document as JSON values."""

    @classmethod
    @abstractmethod
    def from_body(cls, body: dict[str, Any], key: str) -> Self:
        """The document from its JSON values; KeyError, TypeError and ValueError say it is damaged."""

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_body(), indent=2).encode("utf-8")

    @classmethod
    def read(cls, raw: bytes, key: str) -> Self:
        """The document stored under `key` (named in every refusal)."""
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise TypeError(f"its JSON is a {type(body).__name__}, not an object")
            version = int(body.get("formatVersion", 0))
        except (ValueError, TypeError) as exc:
            raise cls.damaged(key, exc, parsed=False) from None
        if cls.latest_version and version > cls.latest_version:
            raise PermanentError(
                f"{cls.what} {key} has format version {version}; this cellar reads up to {cls.latest_version}: "
                "upgrade cellar",
                reason=Reason.UNSUPPORTED_MANIFEST,
            )
        try:
            return cls.from_body(body, key)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise cls.damaged(key, exc, parsed=True) from None

    @classmethod
    def damaged(cls, key: str, error: Exception, *, parsed: bool) -> PermanentError:
        """The refusal of a document that cannot be read as one of this kind (`parsed`: it is a JSON object,
        whose fields are missing or of the wrong type)."""
        return PermanentError(
            f"{cls.what} {key} is not a valid cellar {cls.what} ({error}): it is damaged or not cellar's",
            reason=Reason.INVALID_MANIFEST,
        )
