"""Keys and envelopes.

Every signal (and every outbox entry) has its own random 256-bit data key; its
fields are sealed with AES-256-GCM, the associated data binding each ciphertext to
its owner and field so that a blob copied onto another row will not open. Data keys
are wrapped by a master key. Deleting a row's wrapped key makes its ciphertexts
unreadable even where a copy of a page survives somewhere.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from inboxd.references import ALPHABET

NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
# Pieces in which a large value is sealed into (or opened from) storage.
STREAM_CHUNK = 1024 * 1024


class KeyFileError(Exception):
    """A master key file is missing, unreadable, malformed or too open."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        super().__init__(f"{path}: {problem}; {fix}")
        self.path = path
        self.problem = problem
        self.fix = fix


class DecryptError(Exception):
    """A ciphertext did not open: wrong key, wrong owner or field, or tampered."""


@dataclass(frozen=True)
class MasterKey:
    key_id: str
    secret: bytes

    def __repr__(self) -> str:  # never print key material by accident
        return f"MasterKey({self.key_id})"


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def key_id_of(secret: bytes) -> str:
    return _derive(secret, b"inboxd key id v1")[:4].hex()


def generate_key_file(path: Path) -> str:
    """Write a new master key (base64 on one line, mode 0600); never overwrite."""
    secret = os.urandom(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, base64.b64encode(secret) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key_id_of(secret)


def load_key_file(path: str) -> MasterKey:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(
            path, "key file not found", "create it with 'inboxd keys generate --out PATH'"
        ) from None
    except OSError as exc:
        raise KeyFileError(
            path, f"cannot read key file ({type(exc).__name__})", "check the path and permissions"
        ) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            path,
            f"key file mode {stat.S_IMODE(st.st_mode):04o} grants access to group or others",
            f"run 'chmod 600 {path}'",
        )
    try:
        data = Path(path).read_bytes().strip()
        secret = base64.b64decode(data, validate=True)
    except (OSError, binascii.Error, ValueError):
        raise KeyFileError(
            path, "not a base64 key", "generate one with 'inboxd keys generate --out PATH'"
        ) from None
    if len(secret) != KEY_BYTES:
        raise KeyFileError(
            path,
            f"key is {len(secret)} bytes, expected {KEY_BYTES}",
            "generate one with 'inboxd keys generate --out PATH'",
        )
    return MasterKey(key_id=key_id_of(secret), secret=secret)


class Keyring:
    """The configured master keys; the newest (last listed) wraps new data keys."""

    def __init__(self, keys: list[MasterKey], *, locked: bool = False) -> None:
        if not keys and not locked:
            raise ValueError("at least one master key is needed")
        self.keys = list(keys)
        self.by_id = {k.key_id: k for k in keys}
        # Derived from the oldest key so that dedup records survive a rotation until
        # the oldest key is removed; lookups try every key.
        self._dedup_keys = [_derive(k.secret, b"inboxd dedup v1") for k in keys]
        self._message_id_keys = [_derive(k.secret, b"inboxd dedup message-id v1") for k in keys]
        self._sender_key = _derive(keys[0].secret, b"inboxd sender v1") if keys else b""

    @classmethod
    def from_files(cls, paths: list[str]) -> Keyring:
        return cls([load_key_file(p) for p in paths])

    @classmethod
    def locked(cls) -> Keyring:
        """No master key at all: for commands that decrypt nothing (status, stats,
        queue list/purge), so that they never need the key. Wrapping or unwrapping
        with it fails with :class:`DecryptError`."""
        return cls([], locked=True)

    @property
    def newest(self) -> MasterKey:
        if not self.keys:
            raise DecryptError("no master key loaded")
        return self.keys[-1]

    def new_data_key(self) -> bytes:
        return AESGCM.generate_key(bit_length=256)

    def wrap(self, data_key: bytes, owner: str) -> tuple[str, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        ct = AESGCM(self.newest.secret).encrypt(nonce, data_key, f"inboxd:wrap:{owner}".encode())
        return self.newest.key_id, nonce + ct

    def unwrap(self, key_id: str, wrapped: bytes, owner: str) -> bytes:
        master = self.by_id.get(key_id)
        if master is None:
            raise DecryptError(f"master key {key_id} is not configured")
        try:
            return AESGCM(master.secret).decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], f"inboxd:wrap:{owner}".encode()
            )
        except Exception:
            raise DecryptError("data key did not unwrap") from None

    def dedup_digests(self, message_id: str | None, *content: bytes | memoryview) -> list[bytes]:
        """HMACs of Message-ID + content (the pieces, joined) under every key: the
        first is the one to store."""
        out = []
        for key in reversed(self._dedup_keys):
            mac = hmac.new(
                key, (message_id or "").encode("utf-8", "replace") + b"\0", hashlib.sha256
            )
            for piece in content:
                mac.update(piece)
            out.append(mac.digest())
        return out

    def message_id_digests(self, message_id: str) -> list[bytes]:
        """HMACs of the Message-ID alone (under a key of their own, so they never meet
        a content digest): a different message reusing it is recognised."""
        mid = message_id.encode("utf-8", "replace")
        return [hmac.new(k, mid, hashlib.sha256).digest() for k in reversed(self._message_id_keys)]

    def command_digests(self, *parts: str) -> list[bytes]:
        """HMACs naming one command mail (its sender and Message-ID, see triage.py),
        under every dedup key; prefixed so they never meet a content digest."""
        data = b"command\0" + "\0".join(parts).encode("utf-8", "replace")
        return [hmac.new(k, data, hashlib.sha256).digest() for k in reversed(self._dedup_keys)]

    def sender_digest(self, address: str) -> bytes:
        """A keyed hash of a sender, for the acknowledgement rate limit (no address kept)."""
        if not self._sender_key:
            raise DecryptError("no master key loaded")
        return hmac.new(self._sender_key, address.lower().encode(), hashlib.sha256).digest()[:16]


def seal(data_key: bytes, owner: str, field: str, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(data_key).encrypt(nonce, plaintext, f"inboxd:{owner}:{field}".encode())


def open_sealed(data_key: bytes, owner: str, field: str, blob: bytes) -> bytes:
    try:
        return AESGCM(data_key).decrypt(
            blob[:NONCE_BYTES], blob[NONCE_BYTES:], f"inboxd:{owner}:{field}".encode()
        )
    except Exception:
        raise DecryptError(f"field {field} did not open") from None


def sealed_size(plain_size: int) -> int:
    return NONCE_BYTES + plain_size + TAG_BYTES


def seal_to(
    data_key: bytes, owner: str, field: str, plaintext: bytes, write: Callable[[bytes], object]
) -> None:
    """:func:`seal`, written piece by piece (nonce, ciphertext, tag) instead of
    returned: the same bytes, without a second and third copy of a large value."""
    nonce = os.urandom(NONCE_BYTES)
    enc = Cipher(algorithms.AES(data_key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(f"inboxd:{owner}:{field}".encode())
    write(nonce)
    view = memoryview(plaintext)
    for start in range(0, len(view), STREAM_CHUNK):
        write(enc.update(view[start : start + STREAM_CHUNK]))
    write(enc.finalize())
    write(enc.tag)


def open_from(
    data_key: bytes, owner: str, field: str, size: int, read: Callable[[int], bytes]
) -> bytes:
    """:func:`open_sealed` of a stored value of ``size`` bytes, read piece by piece.
    Nothing is returned unless the tag verifies."""
    if size < NONCE_BYTES + TAG_BYTES:
        raise DecryptError(f"field {field} did not open")
    nonce = read(NONCE_BYTES)
    dec = Cipher(algorithms.AES(data_key), modes.GCM(nonce)).decryptor()
    dec.authenticate_additional_data(f"inboxd:{owner}:{field}".encode())
    left = size - NONCE_BYTES - TAG_BYTES
    # Into a buffer of the final size whose getvalue() hands over that very bytes
    # object: a list of pieces joined at the end would hold the value twice.
    out = io.BytesIO()
    if left > 0:
        out.seek(left - 1)
        out.write(b"\0")
        out.seek(0)
    while left > 0:
        chunk = read(min(STREAM_CHUNK, left))
        if not chunk:
            raise DecryptError(f"field {field} did not open")
        out.write(dec.update(chunk))
        left -= len(chunk)
    try:
        dec.finalize_with_tag(read(TAG_BYTES))
    except (InvalidTag, ValueError):
        raise DecryptError(f"field {field} did not open") from None
    return out.getvalue()


TOKEN_CHARS = 16


def signal_token(data_key: bytes, reference: str) -> str:
    """The secret a functionaris' reply must carry: an HMAC of the reference under a
    key derived from the signal's own (master-wrapped) data key, so it cannot be
    guessed, survives key rotation, and dies with the signal."""
    token_key = _derive(data_key, b"inboxd token v1")
    digest = hmac.new(token_key, reference.encode(), hashlib.sha256).digest()
    n = int.from_bytes(digest[:10], "big")  # 80 bits → 16 base32 characters
    chars = "".join(ALPHABET[(n >> (5 * i)) & 31] for i in range(TOKEN_CHARS))
    return "-".join(chars[i : i + 4] for i in range(0, TOKEN_CHARS, 4))


def tokens_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
