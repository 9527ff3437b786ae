"""Client-side encryption in the age format (https://age-encryption.org/v1), through pyrage.

cellar writes standard age files to X25519 recipients (`age1…` public keys), so that whoever holds an
identity (`AGE-SECRET-KEY-1…`) decrypts a backup with the stock `age -d`. The cipher and the format
are pyrage's (the Rust `age` crate); this module only streams bytes through it:

- EncryptingWriter: push-model encryption for a pipeline that is handed chunks (the dump), with
  memory bounded by a pipe and age's 64 KiB chunks.
- decrypt_stream: pull-model decryption of a stored object into a sink (the restore), which tells a
  key that does not match from an object that was cut short or altered.

Identities are registered for redaction as they are parsed; no message here ever quotes a key.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyrage

from common.errors import DecryptionFailed, InvalidSpec
from common.redact import register_secret
from common.secrets import Secrets
from common.spec import SecretKeyRef, SpecReader

FORMAT = "age"
EXTENSION = ".age"
RECIPIENT_PREFIX = "age1"
# Public keys printed in age's own README (https://github.com/FiloSottile/age#readme): copied into a spec, they
# encrypt backups to an identity no one has.
DOCUMENTATION_EXAMPLES = frozenset({"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"})
IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
# An age header with a few dozen recipients fits here; the restore checks the identity on it first.
HEADER_PROBE_BYTES = 64 * 1024


class CorruptedCiphertext(Exception):
    """The identity opened the object's header, but a later chunk did not authenticate: the object was
    cut short or altered (callers turn this into their own unsound-backup error)."""


def fingerprint(recipient: str) -> str:
    """A short, stable name of a recipient for manifests and messages (the key itself is public, but
    a fingerprint reads better and says nothing more)."""
    return "sha256:" + hashlib.sha256(recipient.encode()).hexdigest()[:16]


def parse_recipients(text: str, field: str) -> list[str]:
    """The recipients of a recipients file (age's `-R` format): one `age1…` key a line, `#` comments and
    blank lines skipped. Each is checked, so a typo fails the spec instead of the first backup."""
    recipients = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        recipients.append(check_recipient(line, f"{field} (line {number})"))
    return recipients


def check_recipient(text: str, field: str) -> str:
    value = text.strip()
    if value.startswith(IDENTITY_PREFIX):
        register_secret(value)
        raise InvalidSpec(
            f"{field}: this is an age identity (a private key), not a recipient; give its public key "
            "(`age-keygen -y key.txt` prints it) and keep the identity in a Secret"
        )
    if not value.startswith(RECIPIENT_PREFIX):
        raise InvalidSpec(f"{field}: not an age X25519 recipient; expected a public key starting with age1")
    if value in DOCUMENTATION_EXAMPLES:
        raise InvalidSpec(
            f"{field}: {value[:16]}… is the example public key of age's documentation; no one holds its identity, "
            "so backups encrypted to it could never be read. Give a public key of your own (age-keygen -o key.txt "
            "writes a key pair; age-keygen -y key.txt prints its public key)"
        )
    try:
        pyrage.x25519.Recipient.from_str(value)
    except Exception as exc:  # noqa: BLE001 (pyrage's RecipientError: a bad Bech32 string)
        raise InvalidSpec(f"{field}: {value[:12]}… is not a valid age recipient ({exc})") from None
    return value


@dataclass(frozen=True)
class Identities:
    """Parsed age identities (private keys), and their public keys' fingerprints for messages."""

    keys: tuple[Any, ...]
    fingerprints: tuple[str, ...]


def parse_identities(text: str, field: str) -> Identities:
    """The identities of an identity file (what `age-keygen` writes: comments and AGE-SECRET-KEY-1 lines).
    Every line is registered as a secret first, so that no error or log can quote it."""
    register_secret(text.strip())
    lines = [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.strip().startswith("#")
    ]
    for _, line in lines:
        register_secret(line)
    keys: list[Any] = []
    for number, line in lines:
        if not line.startswith(IDENTITY_PREFIX):
            raise InvalidSpec(
                f"{field}: line {number} of the identity is not an age X25519 identity (AGE-SECRET-KEY-1…); "
                "give the file age-keygen wrote"
            )
        try:
            keys.append(pyrage.x25519.Identity.from_str(line))
        except Exception:  # noqa: BLE001 (pyrage's IdentityError; its text is not quoted: it may hold the key)
            raise InvalidSpec(f"{field}: line {number} of the identity is not a valid age identity") from None
    if not keys:
        raise InvalidSpec(f"{field}: holds no age identity (AGE-SECRET-KEY-1…)")
    return Identities(tuple(keys), tuple(fingerprint(str(key.to_public())) for key in keys))


@dataclass(frozen=True)
class KeyRef:
    """A key of a Secret or a ConfigMap (`kind`), named in the spec at `field`."""

    kind: str  # "Secret" or "ConfigMap"
    name: str
    key: str
    field: str


@dataclass(frozen=True)
class EncryptionSpec:
    """spec.encryption: the age recipients every backup is encrypted to, and the identity the restore
    test decrypts with. Recipients are public keys: inline, or a recipients file in a ConfigMap or Secret."""

    recipients: tuple[str, ...] = ()
    recipients_from: KeyRef | None = None
    identity: SecretKeyRef | None = None


def parse_encryption_spec(reader: SpecReader) -> EncryptionSpec | None:
    if not reader.data:
        return None
    inline = tuple(
        check_recipient(text, f"{reader.path}.recipients[{index}]")
        for index, text in enumerate(reader.string_list("recipients"))
    )
    source: KeyRef | None = None
    if reader.has("recipientsFrom"):
        origin = reader.child("recipientsFrom")
        kinds = [key for key in ("configMapKeyRef", "secretKeyRef") if origin.has(key)]
        if len(kinds) != 1:
            raise InvalidSpec(f"{origin.path}: set exactly one of configMapKeyRef and secretKeyRef")
        ref = SecretKeyRef.parse(origin.child(kinds[0]))
        source = KeyRef("ConfigMap" if kinds[0] == "configMapKeyRef" else "Secret", ref.name, ref.key, ref.field)
    if not inline and source is None:
        raise InvalidSpec(
            f"{reader.path}: give at least one age recipient in recipients (an age1… public key) or recipientsFrom"
        )
    identity = SecretKeyRef.parse(reader.child("identitySecretRef")) if reader.has("identitySecretRef") else None
    return EncryptionSpec(inline, source, identity)


def resolve_recipients(secrets: Secrets, spec: EncryptionSpec) -> list[str]:
    """Every recipient the spec names: inline, then those of its recipients file."""
    recipients = list(spec.recipients)
    source = spec.recipients_from
    if source is not None:
        if source.kind == "ConfigMap":
            text = secrets.config_map_key(source.name, source.key, source.field)
        else:  # a recipients file is public; a Secret is only where the user keeps it
            text = secrets.named_key(source.name, source.key, source.field, sensitive=False)
        from_file = parse_recipients(text, f'{source.field}: {source.kind} "{source.name}" key "{source.key}"')
        if not from_file:
            raise InvalidSpec(
                f'{source.field}: {source.kind} "{source.name}" key "{source.key}" holds no age recipient'
            )
        recipients += from_file
    return list(dict.fromkeys(recipients))  # once each, in order


def resolve_keys(secrets: Secrets, spec: EncryptionSpec | None) -> tuple[list[str], Identities | None]:
    """What spec.encryption names, read: the recipients to encrypt to (none without encryption), and the
    identities to decrypt with (None unless identitySecretRef is set)."""
    if spec is None:
        return [], None
    identities = resolve_identities(secrets, spec.identity) if spec.identity else None
    return resolve_recipients(secrets, spec), identities


def resolve_identities(secrets: Secrets, ref: SecretKeyRef) -> Identities:
    """The identities in the Secret key `ref` names, registered for redaction as they are read."""
    return parse_identities(secrets.key(ref), ref.field)


def encrypt_bytes(data: bytes, recipients: Sequence[str]) -> bytes:
    """A whole age file of `data` (an archive object, a few MB: it is in memory already)."""
    return bytes(pyrage.encrypt(data, [pyrage.x25519.Recipient.from_str(r) for r in recipients]))


def decrypt_bytes(data: bytes, identities: Identities, *, what: str) -> bytes:
    """The plaintext of a whole age file; DecryptionFailed or CorruptedCiphertext as decrypt_stream."""
    out = bytearray()
    decrypt_stream([data], identities, out.extend, what=what)
    return bytes(out)


class _PipeReader:
    """The read end of a pipe as pyrage reads it (read(n) returning what is there, b"" at the end)."""

    def __init__(self, descriptor: int) -> None:
        self._descriptor = descriptor

    def read(self, size: int = -1) -> bytes:
        return os.read(self._descriptor, size if size > 0 else 1 << 20)


class _CallbackWriter:
    """A sink as the file pyrage writes to. pyrage wraps what a writer raises into its own error text;
    the original is kept here so that callers see the sink's own exception."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self._sink = sink
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        if self.error is not None:
            # pyrage writes again after a write raised (the same bytes, or the next): the sink must not see
            # them, or a decompressor behind it would take them as corruption and hide the first error.
            raise self.error
        try:
            self._sink(bytes(data))
        except BaseException as exc:
            self.error = exc
            raise
        return len(data)

    def flush(self) -> None:
        pass


class EncryptingWriter:
    """Encrypts what is written to it to `recipients` and hands the age file, in order, to `sink`.

    pyrage encrypts from a reader on a thread of its own; write() feeds it through a pipe, so memory
    stays bounded (the pipe's buffer and one age chunk) and a slow sink slows the writer down.
    `sink` is only ever called from that thread. close() ends the file; abort() abandons it.
    """

    def __init__(self, recipients: Sequence[str], sink: Callable[[bytes], None]) -> None:
        keys = [pyrage.x25519.Recipient.from_str(r) for r in recipients]
        read_end, self._write_end = os.pipe()
        self._error: BaseException | None = None
        self._closed = False

        def encrypt() -> None:
            writer = _CallbackWriter(sink)
            try:
                pyrage.encrypt_io(_PipeReader(read_end), writer, keys)
            except BaseException as exc:  # noqa: BLE001 (raised again on the writer's thread)
                self._error = writer.error or exc
            finally:
                os.close(read_end)  # a writer still writing gets EPIPE instead of blocking forever

        self._thread = threading.Thread(target=encrypt, name="age-encrypt", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._write_end, view) :]
        except BrokenPipeError:
            self._thread.join()
            self._raise_error()
            raise

    def close(self) -> None:
        """The end of the plaintext: age writes its last chunk; raises what the sink raised."""
        if not self._closed:
            self._closed = True
            os.close(self._write_end)
        self._thread.join()
        self._raise_error()

    def abort(self) -> None:
        """Stop without finishing the file (the upload it feeds is aborted by its owner)."""
        if not self._closed:
            self._closed = True
            os.close(self._write_end)  # the encrypting thread sees an end and stops
        self._thread.join(timeout=30)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error


def decrypt_stream(
    chunks: Iterable[bytes], identities: Identities, sink: Callable[[bytes], None], *, what: str
) -> None:
    """Decrypt the age file that `chunks` make up into `sink`, chunk by authenticated chunk.

    Raises DecryptionFailed when no identity opens the header (nothing reached the sink), and
    CorruptedCiphertext when a later chunk does not authenticate (the object was cut or altered; the
    chunks before it did reach the sink, so the caller must not commit what it made of them). What the
    sink or the chunks' source raises comes through unchanged.
    """
    reader, writer = _ChunkReader(chunks), _CallbackWriter(sink)
    try:
        pyrage.decrypt_io(reader, writer, list(identities.keys))
    except BaseException as exc:
        own = writer.error or reader.error  # the sink's or the store's, not age's
        if own is not None:
            raise own from None
        if isinstance(exc, pyrage.DecryptError) and "no matching keys" in str(exc).lower():
            raise DecryptionFailed(
                f"{what}: none of the identities given ({', '.join(identities.fingerprints)}) is a recipient "
                "of this object; give the identity of a key it was encrypted to"
            ) from None
        if isinstance(exc, pyrage.DecryptError | OSError):
            raise CorruptedCiphertext(f"{what}: not a whole, unaltered age file ({exc})") from None
        raise


class _ChunkReader:
    """Chunks as the file pyrage reads (read(n), a few KiB at a time). What the chunks' source raises is
    kept: pyrage would reword it."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = memoryview(b"")
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        if not self._buffer:
            try:
                self._buffer = memoryview(next(self._chunks, b""))
            except BaseException as exc:
                self.error = exc
                raise
        taken = self._buffer if size < 0 else self._buffer[:size]
        self._buffer = self._buffer[len(taken) :]
        return bytes(taken)
