"""age encryption in streams: what cellar writes is a standard age file (read back here by pyrage's own
one-shot decrypt; the integration tests read it with the stock `age` command), bad keys in a spec fail
with a message that names the field and never quotes a private key."""

from __future__ import annotations

import os
import threading
from typing import Any

import pyrage
import pytest

from common.encryption import (
    CorruptedCiphertext,
    EncryptingWriter,
    decrypt_stream,
    fingerprint,
    parse_encryption_spec,
    parse_identities,
    parse_recipients,
)
from common.errors import DecryptionFailed, InvalidSpec
from common.redact import forget_all_secrets, redact
from common.spec import SpecReader
from jobs.backup.settings import parse_backup_spec, parse_restore_spec


@pytest.fixture
def keys() -> tuple[Any, str]:
    identity = pyrage.x25519.Identity.generate()
    return identity, str(identity.to_public())


def encrypt_in_pieces(recipients: list[str], pieces: list[bytes]) -> bytes:
    received = bytearray()
    threads: set[str] = set()

    def sink(data: bytes) -> None:
        threads.add(threading.current_thread().name)
        received.extend(data)

    writer = EncryptingWriter(recipients, sink)
    for piece in pieces:
        writer.write(piece)
    writer.close()
    assert threads == {"age-encrypt"}  # the sink is only ever called from the encrypting thread
    return bytes(received)


def test_writer_makes_a_standard_age_file_of_what_it_is_given(keys: tuple[Any, str]) -> None:
    identity, recipient = keys
    plaintext = os.urandom(3 * 1024 * 1024 + 17)
    pieces = [plaintext[i : i + 700_000] for i in range(0, len(plaintext), 700_000)]
    encrypted = encrypt_in_pieces([recipient], pieces)
    assert encrypted.startswith(b"age-encryption.org/v1\n")
    assert len(encrypted) > len(plaintext)
    assert pyrage.decrypt(encrypted, [identity]) == plaintext


def test_writer_to_two_recipients_opens_with_either(keys: tuple[Any, str]) -> None:
    identity, recipient = keys
    other = pyrage.x25519.Identity.generate()
    encrypted = encrypt_in_pieces([recipient, str(other.to_public())], [b"rows"])
    assert pyrage.decrypt(encrypted, [identity]) == b"rows"
    assert pyrage.decrypt(encrypted, [other]) == b"rows"


def test_a_sink_failure_reaches_the_writer(keys: tuple[Any, str]) -> None:
    _, recipient = keys

    def failing_sink(_: bytes) -> None:
        raise RuntimeError("the upload failed")

    def write_a_lot() -> None:
        writer = EncryptingWriter([recipient], failing_sink)
        for _ in range(64):  # more than a pipe holds: the writer sees the broken pipe
            writer.write(os.urandom(1 << 20))
        writer.close()

    with pytest.raises(RuntimeError, match="the upload failed"):
        write_a_lot()


def test_decrypt_stream_tells_a_wrong_key_from_a_damaged_object(keys: tuple[Any, str]) -> None:
    identity, recipient = keys
    plaintext = os.urandom(400_000)
    encrypted = encrypt_in_pieces([recipient], [plaintext])
    mine = parse_identities(str(identity), "spec.key")
    out = bytearray()
    decrypt_stream([encrypted], mine, out.extend, what="obj")
    assert bytes(out) == plaintext

    stranger = parse_identities(str(pyrage.x25519.Identity.generate()), "spec.key")
    reached: list[bytes] = []
    with pytest.raises(DecryptionFailed, match="none of the identities given"):
        decrypt_stream([encrypted], stranger, reached.append, what="obj")
    assert reached == []  # nothing reached the sink with the wrong key

    altered = bytearray(encrypted)
    altered[300_000] ^= 1
    with pytest.raises(CorruptedCiphertext):
        decrypt_stream([bytes(altered)], mine, lambda _: None, what="obj")
    with pytest.raises(CorruptedCiphertext):
        decrypt_stream([encrypted[:-100]], mine, lambda _: None, what="obj")


def test_a_sink_that_failed_is_not_written_again(keys: tuple[Any, str]) -> None:
    """pyrage writes again after a write raised; the sink sees nothing more, and its own error comes out (a
    decompressor fed the retried bytes would report corruption instead: a partial restore of an encrypted
    backup failed so when pg_restore closed its input after the table of contents)."""
    identity, recipient = keys
    encrypted = encrypt_in_pieces([recipient], [os.urandom(200_000)])
    calls: list[int] = []

    def sink(data: bytes) -> None:
        calls.append(len(data))
        if len(calls) == 2:
            raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        decrypt_stream([encrypted], parse_identities(str(identity), "spec.key"), sink, what="obj")
    assert len(calls) == 2


def test_recipients_file_and_fingerprints(keys: tuple[Any, str]) -> None:
    _, recipient = keys
    text = f"# team keys\n\n{recipient}\n  {recipient}  \n"
    assert parse_recipients(text, "spec.encryption.recipientsFrom") == [recipient, recipient]
    assert fingerprint(recipient).startswith("sha256:")
    assert fingerprint(recipient) != fingerprint(recipient + "x")
    with pytest.raises(InvalidSpec, match=r"recipientsFrom \(line 2\): not an age X25519 recipient"):
        parse_recipients(f"{recipient}\nssh-ed25519 AAAA", "spec.encryption.recipientsFrom")


def test_a_private_key_given_as_recipient_is_refused_without_quoting_it(keys: tuple[Any, str]) -> None:
    identity, _ = keys
    secret = str(identity)
    with pytest.raises(InvalidSpec) as raised:
        parse_encryption_spec(SpecReader({"recipients": [secret]}, "spec.encryption"))
    assert "spec.encryption.recipients[0]: this is an age identity" in str(raised.value)
    assert secret not in str(raised.value)
    assert secret not in redact(f"leaked {secret}")
    forget_all_secrets()


def test_identities_are_registered_for_redaction_and_errors_never_quote_them(keys: tuple[Any, str]) -> None:
    identity, _ = keys
    secret = str(identity)
    parsed = parse_identities(f"# created: today\n# public key: x\n{secret}\n", "spec.decryption.identitySecretRef")
    assert len(parsed.keys) == 1
    assert parsed.fingerprints == (fingerprint(str(identity.to_public())),)
    assert secret not in redact(f"error near {secret}")
    broken = secret[:-3] + "QQQ"
    with pytest.raises(InvalidSpec) as raised:
        parse_identities(broken, "spec.decryption.identitySecretRef")
    assert "line 1 of the identity is not a valid age identity" in str(raised.value)
    assert broken not in str(raised.value)
    with pytest.raises(InvalidSpec, match="line 3 of the identity is not an age X25519 identity"):
        parse_identities(f"# a comment\n{secret}\nage1notaprivatekey\n", "spec.decryption.identitySecretRef")
    forget_all_secrets()


def backup_spec(**changes: Any) -> dict[str, Any]:
    reference = {"name": "s", "key": "k"}
    return {
        "database": {"secretRef": {"name": "db"}},
        "storage": {"bucket": "backups", "credentials": {"accessKeyId": reference, "secretAccessKey": reference}},
        **changes,
    }


def test_backup_spec_encryption(keys: tuple[Any, str]) -> None:
    _, recipient = keys
    settings = parse_backup_spec(backup_spec(encryption={"recipients": [recipient]}))
    assert settings.encryption is not None
    assert settings.encryption.recipients == (recipient,)
    assert parse_backup_spec(backup_spec()).encryption is None

    from_map = parse_backup_spec(
        backup_spec(encryption={"recipientsFrom": {"configMapKeyRef": {"name": "keys", "key": "recipients.txt"}}})
    ).encryption
    assert from_map is not None
    assert from_map.recipients_from is not None
    assert (from_map.recipients_from.kind, from_map.recipients_from.name) == ("ConfigMap", "keys")

    with pytest.raises(InvalidSpec, match=r"spec\.encryption: give at least one age recipient"):
        parse_backup_spec(backup_spec(encryption={"identitySecretRef": {"name": "id", "key": "key.txt"}}))
    with pytest.raises(InvalidSpec, match="recipientsFrom: set exactly one of"):
        parse_backup_spec(
            backup_spec(
                encryption={
                    "recipientsFrom": {
                        "configMapKeyRef": {"name": "a", "key": "k"},
                        "secretKeyRef": {"name": "b", "key": "k"},
                    }
                }
            )
        )
    with pytest.raises(InvalidSpec, match=r"spec.verify.enabled: .* spec.encryption.identitySecretRef"):
        parse_backup_spec(backup_spec(encryption={"recipients": [recipient]}, verify={"enabled": True}))


def test_restore_spec_decryption() -> None:
    base = {"backup": {"name": "nightly"}, "target": {"secretRef": {"name": "t"}}}
    assert parse_restore_spec(base).identity is None
    settings = parse_restore_spec({**base, "decryption": {"identitySecretRef": {"name": "id", "key": "key.txt"}}})
    assert settings.identity is not None
    assert (settings.identity.name, settings.identity.key) == ("id", "key.txt")
    with pytest.raises(InvalidSpec, match=r"spec.decryption.identitySecretRef: required"):
        parse_restore_spec({**base, "decryption": {"other": 1}})


def test_the_example_key_of_ages_documentation_is_refused_naming_the_field(keys: tuple[Any, str]) -> None:
    from jobs.backup.settings import parse_backup_spec

    example = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
    pyrage.x25519.Recipient.from_str(example)  # a valid key: only its being everyone's example is wrong
    spec = {
        "database": {"secretRef": {"name": "db"}},
        "storage": {"bucket": "some-bucket", "credentials": {"inheritFromIAMRole": True}},
        "encryption": {"recipients": [keys[1], example]},
    }
    with pytest.raises(InvalidSpec, match=r"^spec\.encryption\.recipients\[1\]: age1ql3z7hjy54pw… is the example"):
        parse_backup_spec(spec)
    with pytest.raises(InvalidSpec, match=r"recipientsFrom \(line 1\): .* is the example public key"):
        parse_recipients(f"{example}\n", "spec.encryption.recipientsFrom")
