"""Master key files, data-key wrapping, sealed fields, tokens and keyed digests (docs/contract.md: "What is stored", "Command line")."""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inboxd.crypto import (
    KEY_BYTES,
    DecryptError,
    KeyFileError,
    Keyring,
    MasterKey,
    generate_key_file,
    key_id_of,
    load_key_file,
    open_from,
    open_sealed,
    seal,
    seal_to,
    sealed_size,
    signal_token,
    tokens_equal,
)
from inboxd.references import ALPHABET


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_key(path: Path, content: bytes, mode: int = 0o600) -> str:
    path.write_bytes(content)
    path.chmod(mode)
    return str(path)


@pytest.fixture
def ring(tmp_path: Path) -> Keyring:
    p = tmp_path / "k1"
    generate_key_file(p)
    return Keyring.from_files([str(p)])


# -- key files ------------------------------------------------------------------


def test_generate_writes_0600_base64_one_line(tmp_path: Path) -> None:
    p = tmp_path / "master-key"
    old = os.umask(0o000)  # even with a permissive umask
    try:
        key_id = generate_key_file(p)
    finally:
        os.umask(old)
    assert mode_of(p) == 0o600
    data = p.read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    secret = base64.b64decode(data.strip(), validate=True)
    assert len(secret) == KEY_BYTES
    key = load_key_file(str(p))
    assert key.key_id == key_id == key_id_of(secret)
    assert re.fullmatch(r"[0-9a-f]{8}", key_id)


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    p = tmp_path / "master-key"
    generate_key_file(p)
    before = p.read_bytes()
    with pytest.raises(FileExistsError):
        generate_key_file(p)
    assert p.read_bytes() == before


def test_generate_refuses_to_follow_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep me")
    link = tmp_path / "master-key"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        generate_key_file(link)
    assert target.read_bytes() == b"keep me"


def test_generated_keys_differ(tmp_path: Path) -> None:
    ids = {generate_key_file(tmp_path / f"k{i}") for i in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620, 0o602, 0o610, 0o601, 0o660, 0o666])
def test_load_refuses_keys_readable_by_group_or_others(tmp_path: Path, mode: int) -> None:
    p = tmp_path / "master-key"
    generate_key_file(p)
    p.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_key_file(str(p))
    err = info.value
    assert err.path == str(p)
    assert str(p) in str(err)
    assert f"chmod 600 {p}" in err.fix
    assert f"{mode:04o}" in err.problem


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_load_accepts_owner_only_modes(tmp_path: Path, mode: int) -> None:
    p = tmp_path / "master-key"
    generate_key_file(p)
    p.chmod(mode)
    assert load_key_file(str(p)).secret


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not base64 at all!!\n",
        b"%%%%\n",
        base64.b64encode(os.urandom(16)) + b"\n",  # too short
        base64.b64encode(os.urandom(33)) + b"\n",  # too long
        base64.b64encode(os.urandom(32))[:-2] + b"\n",  # truncated
        os.urandom(32),  # raw bytes, not base64
    ],
)
def test_load_refuses_malformed_keys(tmp_path: Path, content: bytes) -> None:
    p = write_key(tmp_path / "master-key", content)
    with pytest.raises(KeyFileError) as info:
        load_key_file(p)
    assert info.value.path == p
    assert "inboxd keys generate" in info.value.fix


def test_load_tolerates_surrounding_whitespace(tmp_path: Path) -> None:
    secret = os.urandom(32)
    p = write_key(tmp_path / "k", b"  " + base64.b64encode(secret) + b"\r\n\n")
    assert load_key_file(p).secret == secret


def test_load_missing_file(tmp_path: Path) -> None:
    p = str(tmp_path / "nope")
    with pytest.raises(KeyFileError) as info:
        load_key_file(p)
    assert info.value.path == p
    assert "not found" in info.value.problem


def test_master_key_repr_hides_the_secret(tmp_path: Path) -> None:
    p = tmp_path / "k"
    generate_key_file(p)
    key = load_key_file(str(p))
    for text in (repr(key), str(key)):
        assert base64.b64encode(key.secret).decode() not in text
        assert key.secret.hex() not in text
        assert key.key_id in text


def test_keyring_needs_a_key() -> None:
    with pytest.raises(ValueError):
        Keyring([])


# -- sealing --------------------------------------------------------------------


@settings(max_examples=50)
@given(st.binary(max_size=2000), st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_seal_open_round_trip(plain: bytes, owner: str, field: str) -> None:
    key = os.urandom(32)
    blob = seal(key, owner, field, plain)
    assert open_sealed(key, owner, field, blob) == plain
    if len(plain) >= 8:
        assert plain not in blob


def test_seal_uses_fresh_nonces() -> None:
    key = os.urandom(32)
    a, b = seal(key, "signal:1", "raw", b"same"), seal(key, "signal:1", "raw", b"same")
    assert a != b


def test_sealed_blob_is_bound_to_owner_and_field() -> None:
    key = os.urandom(32)
    blob = seal(key, "signal:aaa", "subject", b"geheim onderwerp")
    with pytest.raises(DecryptError):
        open_sealed(key, "signal:bbb", "subject", blob)  # moved to another row
    with pytest.raises(DecryptError):
        open_sealed(key, "signal:aaa", "reporter", blob)  # moved to another field
    with pytest.raises(DecryptError):
        open_sealed(os.urandom(32), "signal:aaa", "subject", blob)  # another key
    assert open_sealed(key, "signal:aaa", "subject", blob) == b"geheim onderwerp"


@given(st.data())
@settings(max_examples=60)
def test_any_tampering_is_detected(data: st.DataObject) -> None:
    key = os.urandom(32)
    blob = bytearray(seal(key, "signal:1", "raw", b"de inhoud van een signaal"))
    i = data.draw(st.integers(0, len(blob) - 1))
    bit = data.draw(st.integers(0, 7))
    blob[i] ^= 1 << bit
    with pytest.raises(DecryptError):
        open_sealed(key, "signal:1", "raw", bytes(blob))


def test_truncated_or_empty_blob_is_a_decrypt_error() -> None:
    key = os.urandom(32)
    blob = seal(key, "o", "f", b"abc")
    for bad in (b"", blob[:5], blob[:12], blob[:-1]):
        with pytest.raises(DecryptError):
            open_sealed(key, "o", "f", bad)


def test_decrypt_error_does_not_quote_plaintext_or_key() -> None:
    key = os.urandom(32)
    blob = seal(key, "signal:1", "subject", b"MARKER-subject")
    with pytest.raises(DecryptError) as info:
        open_sealed(key, "signal:2", "subject", blob)
    assert "MARKER" not in str(info.value)
    assert key.hex() not in str(info.value)


# -- wrapping and rotation ---------------------------------------------------------


def test_wrap_unwrap_round_trip(ring: Keyring) -> None:
    dk = ring.new_data_key()
    assert len(dk) == 32
    key_id, wrapped = ring.wrap(dk, "signal:1")
    assert key_id == ring.newest.key_id
    assert dk not in wrapped
    assert ring.unwrap(key_id, wrapped, "signal:1") == dk


def test_new_data_keys_are_random(ring: Keyring) -> None:
    assert len({ring.new_data_key() for _ in range(20)}) == 20


def test_wrapped_key_is_bound_to_its_owner(ring: Keyring) -> None:
    dk = ring.new_data_key()
    key_id, wrapped = ring.wrap(dk, "signal:1")
    with pytest.raises(DecryptError):
        ring.unwrap(key_id, wrapped, "signal:2")
    with pytest.raises(DecryptError):
        ring.unwrap(key_id, wrapped, "outbox:1")
    tampered = bytes([wrapped[0] ^ 1]) + wrapped[1:]
    with pytest.raises(DecryptError):
        ring.unwrap(key_id, tampered, "signal:1")


def test_unknown_key_id_is_a_decrypt_error(ring: Keyring) -> None:
    _, wrapped = ring.wrap(ring.new_data_key(), "signal:1")
    with pytest.raises(DecryptError):
        ring.unwrap("deadbeef", wrapped, "signal:1")


def test_rotation_newest_wraps_old_still_unwraps(tmp_path: Path) -> None:
    old_p, new_p = tmp_path / "old", tmp_path / "new"
    old_id = generate_key_file(old_p)
    new_id = generate_key_file(new_p)
    before = Keyring.from_files([str(old_p)])
    dk = before.new_data_key()
    kid, wrapped = before.wrap(dk, "signal:1")
    assert kid == old_id

    after = Keyring.from_files([str(old_p), str(new_p)])  # newest last
    assert after.newest.key_id == new_id
    assert after.unwrap(kid, wrapped, "signal:1") == dk
    kid2, wrapped2 = after.wrap(dk, "signal:1")
    assert kid2 == new_id
    assert after.unwrap(kid2, wrapped2, "signal:1") == dk
    # The old key alone cannot open what the new key wrapped.
    with pytest.raises(DecryptError):
        before.unwrap(kid2, wrapped2, "signal:1")
    # Dropping the old key makes its wrapped keys unreadable.
    only_new = Keyring.from_files([str(new_p)])
    with pytest.raises(DecryptError):
        only_new.unwrap(kid, wrapped, "signal:1")


# -- tokens ----------------------------------------------------------------------


TOKEN_RE = re.compile(rf"^[{ALPHABET}]{{4}}-[{ALPHABET}]{{4}}-[{ALPHABET}]{{4}}-[{ALPHABET}]{{4}}$")


def test_signal_token_format_and_determinism() -> None:
    dk = os.urandom(32)
    t = signal_token(dk, "VV-7K3M-9QX0")
    assert TOKEN_RE.match(t), t
    assert len(t.replace("-", "")) == 16
    assert signal_token(dk, "VV-7K3M-9QX0") == t
    assert tokens_equal(t, signal_token(bytes(dk), "VV-7K3M-9QX0"))


def test_signal_token_differs_across_refs_and_keys() -> None:
    dk1, dk2 = os.urandom(32), os.urandom(32)
    refs = [f"VV-AAAA-{i:04d}" for i in range(200)]
    tokens = {signal_token(dk1, r) for r in refs}
    assert len(tokens) == len(refs)
    assert all(signal_token(dk1, r) != signal_token(dk2, r) for r in refs[:20])


def test_signal_token_does_not_reveal_the_key() -> None:
    dk = os.urandom(32)
    t = signal_token(dk, "VV-7K3M-9QX0")
    assert dk.hex()[:8].upper() not in t


def test_tokens_equal() -> None:
    assert tokens_equal("ABCD-EFGH-JKMN-PQRS", "ABCD-EFGH-JKMN-PQRS")
    assert not tokens_equal("ABCD-EFGH-JKMN-PQRS", "ABCD-EFGH-JKMN-PQRT")
    assert not tokens_equal("ABCD-EFGH-JKMN-PQRS", "")


# -- keyed digests -------------------------------------------------------------------


def test_dedup_digests_one_per_key_newest_first(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    generate_key_file(a)
    generate_key_file(b)
    one = Keyring.from_files([str(a)])
    two = Keyring.from_files([str(a), str(b)])
    raw = b"From: x@y\r\n\r\nbody"
    d1 = one.dedup_digests("<m@x>", raw)
    d2 = two.dedup_digests("<m@x>", raw)
    assert len(d1) == 1 and len(d2) == 2
    assert all(len(d) == 32 for d in d1 + d2)
    # What was stored under the old key is still among the lookups after rotation.
    assert d1[0] == d2[1]
    assert d2[0] != d1[0]


def test_dedup_digests_depend_on_message_id_and_bytes(ring: Keyring) -> None:
    raw = b"Subject: a\r\n\r\nbody"
    base = ring.dedup_digests("<m@x>", raw)
    assert ring.dedup_digests("<m@x>", raw) == base
    assert ring.dedup_digests("<n@x>", raw) != base
    assert ring.dedup_digests(None, raw) != base
    assert ring.dedup_digests("<m@x>", raw + b" ") != base
    assert raw not in b"".join(base)


def test_dedup_digests_depend_on_the_key(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    generate_key_file(a)
    generate_key_file(b)
    raw = b"x"
    assert Keyring.from_files([str(a)]).dedup_digests("<m@x>", raw) != Keyring.from_files(
        [str(b)]
    ).dedup_digests("<m@x>", raw)


def test_sender_digest_is_stable_and_not_the_address(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    generate_key_file(a)
    generate_key_file(b)
    r1 = Keyring.from_files([str(a)])
    addr = "melder@gemeente.example"
    d = r1.sender_digest(addr)
    assert isinstance(d, bytes) and len(d) == 16
    assert addr.encode() not in d and b"melder" not in d
    assert r1.sender_digest(addr) == d
    assert r1.sender_digest("Melder@Gemeente.Example") == d  # case does not matter
    assert r1.sender_digest("collega@gemeente.example") != d
    # Stable across processes (a fresh Keyring from the same file) and across a
    # rotation that keeps the oldest key first, so the rate limit keeps counting.
    assert Keyring.from_files([str(a)]).sender_digest(addr) == d
    assert Keyring.from_files([str(a), str(b)]).sender_digest(addr) == d
    # Keyed: another key gives another digest.
    assert Keyring.from_files([str(b)]).sender_digest(addr) != d


def test_master_key_is_frozen() -> None:
    key = MasterKey("abcd", b"x" * 32)
    with pytest.raises(AttributeError):
        key.secret = b"y" * 32  # type: ignore[misc]


def _stream_seal(key: bytes, plain: bytes) -> bytes:
    out = bytearray()
    seal_to(key, "signal:x", "raw", plain, out.extend)
    return bytes(out)


def _reader(blob: bytes):  # type: ignore[no-untyped-def]
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        piece = blob[pos : pos + n]
        pos += len(piece)
        return piece

    return read


@settings(max_examples=50, deadline=None)
@given(plain=st.binary(max_size=5000), chunk=st.integers(min_value=1, max_value=700))
def test_sealing_in_pieces_is_the_same_format(plain: bytes, chunk: int) -> None:
    import inboxd.crypto as crypto_mod

    key = os.urandom(KEY_BYTES)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(crypto_mod, "STREAM_CHUNK", chunk)
        streamed = _stream_seal(key, plain)
        whole = seal(key, "signal:x", "raw", plain)
        opened = open_from(key, "signal:x", "raw", len(whole), _reader(whole))
    assert len(streamed) == sealed_size(len(plain))
    assert open_sealed(key, "signal:x", "raw", streamed) == plain
    assert opened == plain
    assert type(opened) is bytes  # hashable, immutable: what callers had before


def test_opening_in_pieces_refuses_tampering_and_the_wrong_owner() -> None:
    key = os.urandom(KEY_BYTES)
    blob = bytearray(_stream_seal(key, b"x" * 3000))
    with pytest.raises(DecryptError):
        open_from(key, "signal:y", "raw", len(blob), _reader(bytes(blob)))
    blob[500] ^= 1
    with pytest.raises(DecryptError):
        open_from(key, "signal:x", "raw", len(blob), _reader(bytes(blob)))
    with pytest.raises(DecryptError):
        open_from(key, "signal:x", "raw", 10, _reader(bytes(blob)))
