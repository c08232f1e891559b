"""The SQLite store (docs/contract.md: "The life of a signal", "What is stored"):
durable, encrypted at rest, nothing personal in plain text on disk."""

from __future__ import annotations

import io
import itertools
import json
import os
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inboxd import logs
from inboxd.crypto import DecryptError, Keyring, generate_key_file
from inboxd.lifecycle import TRANSITIONS, IllegalTransition, KeyStatus, MailKind, SignalState
from inboxd.sqlite_store import SqliteStore
from inboxd.store import DueMail, NewSignal, OutboxEntry, SignalUpdate


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    p = tmp_path / "master-key"
    generate_key_file(p)
    return Keyring.from_files([str(p)])


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "inboxd"


@pytest.fixture
def store(state_dir: Path, keyring: Keyring, clock: Clock) -> Iterator[SqliteStore]:
    s = SqliteStore(state_dir, keyring, clock=clock)
    try:
        yield s
    finally:
        s.close()


def new_signal(ref: str = "VV-AAAA-AAAA", **kw: object) -> NewSignal:
    defaults: dict[str, object] = {
        "ref": ref,
        "source": "intern",
        "flags": set(),
        "size": 100,
        "attachment_count": 0,
        "fields": {"raw": b"From: a@b\r\n\r\nhallo", "reporter": b"a@b", "subject": b"s"},
        "received_at": 1_800_000_000.0,
    }
    defaults.update(kw)
    return NewSignal(**defaults)  # type: ignore[arg-type]


def entry(recipient: str = "melder@gemeente.example", **kw: object) -> OutboxEntry:
    defaults: dict[str, object] = {
        "kind": "ack",
        "ref": "VV-AAAA-AAAA",
        "message_id": f"<inboxd.{uuid.uuid4().hex}@gemeente.example>",
        "sender": "vreemdverhaal@gemeente.example",
        "recipient": recipient,
        "payload": b"payload",
    }
    defaults.update(kw)
    return OutboxEntry(**defaults)  # type: ignore[arg-type]


def raw_files(state_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in state_dir.rglob("*") if p.is_file()}


def assert_not_on_disk(state_dir: Path, needle: bytes) -> None:
    files = raw_files(state_dir)
    assert files, "no files to search"
    for name, data in files.items():
        assert needle not in data, f"{needle!r} found in {name}"
        # Also not as UTF-16 (SQLite can store text that way).
        assert needle.decode().encode("utf-16-le") not in data, name


# -- setup ---------------------------------------------------------------------------


def test_pragmas(store: SqliteStore) -> None:
    c = store._c
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert c.execute("PRAGMA secure_delete").fetchone()[0] == 1
    assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_pragmas_from_a_second_connection(store: SqliteStore) -> None:
    # WAL is persistent in the file, whoever opens it.
    assert store.path is not None
    other = sqlite3.connect(store.path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


def test_state_dir_and_files_are_private(store: SqliteStore, state_dir: Path) -> None:
    with store.transaction() as tx:
        tx.add_signal(new_signal())
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    files = [p for p in state_dir.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"inboxd.sqlite3", "inboxd.sqlite3-wal"}
    for p in files:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o077 == 0, f"{p.name} has mode {mode:04o}"


def test_reopen_keeps_data(state_dir: Path, keyring: Keyring, clock: Clock) -> None:
    s = SqliteStore(state_dir, keyring, clock=clock)
    with s.transaction() as tx:
        sig = tx.add_signal(new_signal(fields={"subject": b"blijft"}))
    s.close()
    s2 = SqliteStore(state_dir, keyring, clock=clock)
    try:
        again = s2.signal_by_ref(sig.ref)
        assert again == sig
        assert s2.read_field(again, "subject") == b"blijft"
    finally:
        s2.close()


# -- signals and encryption -------------------------------------------------------------


def test_add_signal_plain_metadata(store: SqliteStore, clock: Clock) -> None:
    clock.t = 1_800_000_100.0
    with store.transaction() as tx:
        sig = tx.add_signal(
            new_signal(flags={"auto", "malformed"}, size=1234, attachment_count=2, source="mma")
        )
    assert sig.state == "queued"
    assert sig.flags == frozenset({"auto", "malformed"})
    assert sig.size == 1234 and sig.attachment_count == 2 and sig.source == "mma"
    assert sig.created_at == 1_800_000_000.0
    assert sig.updated_at == 1_800_000_100.0
    assert sig.key_id == store.keyring.newest.key_id
    assert store.signal_by_ref(sig.ref) == sig
    assert store.signals() == [sig]
    assert store.signal_by_ref("VV-ZZZZ-ZZZZ") is None


def test_fields_are_sealed_on_disk_and_readable_through_the_store(
    store: SqliteStore, state_dir: Path
) -> None:
    marker = f"MARKER{uuid.uuid4().hex}"
    fields = {
        "raw": f"From: {marker}@x.example\r\nSubject: {marker}\r\n\r\n{marker} body".encode(),
        "reporter": f"{marker}@x.example".encode(),
        "subject": f"Onderwerp {marker}".encode(),
    }
    with store.transaction() as tx:
        sig = tx.add_signal(new_signal(fields=fields))
    assert_not_on_disk(state_dir, marker.encode())
    for name, plain in fields.items():
        assert store.read_field(sig, name) == plain
    assert store.read_field(sig, "followup:1") is None
    store.checkpoint()
    assert_not_on_disk(state_dir, marker.encode())


def test_a_field_blob_moved_to_another_signal_does_not_open(store: SqliteStore) -> None:
    with store.transaction() as tx:
        a = tx.add_signal(new_signal("VV-AAAA-AAAA", fields={"subject": b"van a"}))
        b = tx.add_signal(new_signal("VV-BBBB-BBBB", fields={"subject": b"van b"}))
    blob = store._c.execute(
        "SELECT blob FROM signal_fields WHERE signal_id = ? AND name = 'subject'", (a.id,)
    ).fetchone()[0]
    store._c.execute(
        "UPDATE signal_fields SET blob = ? WHERE signal_id = ? AND name = 'subject'", (blob, b.id)
    )
    with pytest.raises(DecryptError):
        store.read_field(b, "subject")
    assert store.read_field(a, "subject") == b"van a"


def test_rolled_back_transaction_leaves_nothing(store: SqliteStore) -> None:
    with pytest.raises(RuntimeError), store.transaction() as tx:
        sig = tx.add_signal(
            new_signal("VV-CCCC-CCCC", dedup_digest=b"d" * 32, mailbox_key="1:42", retain=False)
        )
        tx.enqueue(entry())
        tx.record_mail(b"s" * 16, "ack")
        tx.hold(b"s" * 16, sig.id)
        tx.set_meta("last_fetch", "1")
        raise RuntimeError("crash in the middle")
    assert store.signal_by_ref("VV-CCCC-CCCC") is None
    assert not store.ref_in_use("VV-CCCC-CCCC")
    assert not store.has_dedup([b"d" * 32])
    assert store.mailbox_key_status(["1:42"]) == {}
    assert store.due_mail(2e9, 100) == []
    with store.transaction() as tx:
        assert tx.mails_since(b"s" * 16, "ack", 0) == 0
    assert store.held_summary() is None
    assert store.get_meta("last_fetch") is None
    # … and the store is usable afterwards.
    with store.transaction() as tx:
        tx.add_signal(new_signal("VV-CCCC-CCCC"))
    assert store.ref_in_use("VV-CCCC-CCCC")


def test_refs_are_unique(store: SqliteStore) -> None:
    with store.transaction() as tx:
        tx.add_signal(new_signal("VV-DDDD-DDDD"))
    assert store.ref_in_use("VV-DDDD-DDDD")
    assert not store.ref_in_use("VV-EEEE-EEEE")
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as tx:
        tx.add_signal(new_signal("VV-DDDD-DDDD"))
    assert len(store.signals()) == 1


def test_refs_stay_used_after_the_signal_is_gone(store: SqliteStore) -> None:
    with store.transaction() as tx:
        sig = tx.add_signal(new_signal("VV-FFFF-FFFF"))
    assert not store.ref_closed("VV-FFFF-FFFF")
    with store.transaction() as tx:
        tx.delete_signal(sig, dedup_until=9e9, reason="afgesloten")
    assert store.signal_by_ref("VV-FFFF-FFFF") is None
    assert store.ref_in_use("VV-FFFF-FFFF")
    assert store.ref_closed("VV-FFFF-FFFF")
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as tx:
        tx.add_signal(new_signal("VV-FFFF-FFFF"))


def test_delete_signal_leaves_nothing_readable(
    store: SqliteStore, state_dir: Path, keyring: Keyring, clock: Clock
) -> None:
    marker = f"MARKER{uuid.uuid4().hex}"
    digest = keyring.dedup_digests("<m@x>", b"raw")[0]
    with store.transaction() as tx:
        sig = tx.add_signal(
            new_signal(
                fields={"raw": marker.encode() * 50, "subject": marker.encode()},
                dedup_digest=digest,
                mailbox_key="5:1",
                retain=True,
            )
        )
        tx.add_field(sig, "followup:1", f"aanvulling {marker}".encode())
        tx.enqueue(entry(kind="triage_request", ref=sig.ref))
        tx.enqueue(entry(kind="ack", ref=sig.ref))
    assert store.read_field(sig, "followup:1") == f"aanvulling {marker}".encode()
    blobs = [r[0] for r in store._c.execute("SELECT blob FROM signal_fields")]
    wrapped = store._c.execute("SELECT wrapped_key FROM signals").fetchone()[0]
    assert store.keys_to_expunge() == []

    with store.transaction() as tx:
        tx.delete_signal(sig, dedup_until=clock.t + 30 * 86400, reason="afgesloten")
    store.checkpoint()

    assert store.signal_by_ref(sig.ref) is None
    assert store.read_field(sig, "subject") is None
    # The retained original must now be expunged from the mailbox.
    assert store.keys_to_expunge() == ["5:1"]
    # Dedup survives, content-free, until it expires.
    assert store.has_dedup([digest])
    store.expire(clock.t + 31 * 86400, dedup_window=30 * 86400, rate_window=3600)
    assert not store.has_dedup([digest])
    # The triage request (which would carry the content) is withdrawn; the ack is not.
    assert [d.kind for d in store.due_mail(clock.t, 10)] == ["ack"]
    for name, data in raw_files(state_dir).items():
        assert wrapped not in data, name
        for blob in blobs:
            assert blob not in data, name


def test_update_signal(store: SqliteStore, clock: Clock) -> None:
    with store.transaction() as tx:
        sig = tx.add_signal(new_signal())
    clock.t += 60
    with store.transaction() as tx:
        new = tx.update_signal(
            sig,
            SignalUpdate(
                state=SignalState.FORWARDING,
                destinations=("riec", "kedo"),
                hold=True,
                form="arbeid",
            ),
        )
    assert new.state == "forwarding"
    assert new.destinations == ("kedo", "riec")
    assert new.hold and new.form == "arbeid"
    assert new.updated_at == clock.t
    assert store.signal_by_ref(sig.ref) == new
    # The reference and the key are no parameter of update_signal (mypy refuses the
    # call; at run time it is a TypeError before anything is written).
    with pytest.raises(TypeError), store.transaction() as tx:
        tx.update_signal(sig, ref="VV-ZZZZ-ZZZZ")  # type: ignore[call-arg]
    with pytest.raises(TypeError), store.transaction() as tx:
        tx.update_signal(sig, key_id="x")  # type: ignore[call-arg]
    assert store.signal_by_ref(sig.ref) == new


def test_data_key_unwraps_after_rotation(
    tmp_path: Path, state_dir: Path, keyring: Keyring, clock: Clock
) -> None:
    s = SqliteStore(state_dir, keyring, clock=clock)
    with s.transaction() as tx:
        sig = tx.add_signal(new_signal(fields={"subject": b"oud"}))
    s.close()
    new = tmp_path / "new-key"
    generate_key_file(new)
    rotated = Keyring([*keyring.keys, *Keyring.from_files([str(new)]).keys])
    s2 = SqliteStore(state_dir, rotated, clock=clock)
    try:
        assert s2.read_field(sig, "subject") == b"oud"
        with s2.transaction() as tx:
            sig2 = tx.add_signal(new_signal("VV-GGGG-GGGG"))
        assert sig2.key_id == rotated.newest.key_id != sig.key_id
    finally:
        s2.close()


# -- mailbox keys and dedup ----------------------------------------------------------------


def test_mailbox_keys_lifecycle(store: SqliteStore) -> None:
    with store.transaction() as tx:
        tx.add_signal(new_signal("VV-AAAA-AAAA", mailbox_key="7:1"))
        tx.add_signal(new_signal("VV-BBBB-BBBB", mailbox_key="7:2", retain=True))
        tx.record_key("7:3", KeyStatus.EXPUNGE)
    assert store.mailbox_key_status(["7:1", "7:2", "7:3", "7:4"]) == {
        "7:1": "expunge",
        "7:2": "retained",
        "7:3": "expunge",
    }
    assert sorted(store.keys_to_expunge()) == ["7:1", "7:3"]
    store.mark_expunged(["7:1"])
    assert store.keys_to_expunge() == ["7:3"]
    assert store.mailbox_key_status(["7:1"]) == {"7:1": "expunged"}
    # A retained key can later be marked for expunge (signal deleted) without losing
    # its signal id.
    with store.transaction() as tx:
        tx.record_key("7:2", KeyStatus.EXPUNGE)
    row = store._c.execute("SELECT signal_id FROM mailbox_keys WHERE key = '7:2'").fetchone()
    assert row[0] is not None
    assert sorted(store.keys_to_expunge()) == ["7:2", "7:3"]


def test_mailbox_key_status_many_keys(store: SqliteStore) -> None:
    keys = [f"9:{i}" for i in range(1_234)]
    with store.transaction() as tx:
        for k in keys[::2]:
            tx.record_key(k, KeyStatus.EXPUNGED)
    status = store.mailbox_key_status(keys)
    assert set(status) == set(keys[::2])
    assert store.mailbox_key_status([]) == {}


def test_dedup_lookup(store: SqliteStore, keyring: Keyring) -> None:
    digests = keyring.dedup_digests("<m@x>", b"raw")
    assert not store.has_dedup(digests)
    with store.transaction() as tx:
        tx.add_signal(new_signal(dedup_digest=digests[0]))
    assert store.has_dedup(digests)
    assert store.has_dedup([b"other", digests[0]])
    assert not store.has_dedup(keyring.dedup_digests("<m@x>", b"raw2"))
    assert not store.has_dedup([])


# -- outbox --------------------------------------------------------------------------------


def test_outbox_round_trip(store: SqliteStore, clock: Clock) -> None:
    e = entry(payload=b"\x00binary\xff")
    with store.transaction() as tx:
        oid = tx.enqueue(e)
    due = store.due_mail(clock.t, 100)
    assert len(due) == 1
    d = due[0]
    assert (d.id, d.kind, d.ref, d.message_id, d.attempts) == (oid, "ack", e.ref, e.message_id, 0)
    assert (d.sender, d.recipient, d.payload) == (e.sender, e.recipient, e.payload)
    assert store.outbox_size() == 1


def test_outbox_envelope_and_payload_not_in_plain_text_on_disk(
    store: SqliteStore, state_dir: Path
) -> None:
    marker = uuid.uuid4().hex
    recipient = f"melder-{marker}@gemeente.example"
    with store.transaction() as tx:
        tx.enqueue(entry(recipient, payload=f"Body {marker}-payload".encode()))
    assert_not_on_disk(state_dir, marker.encode())
    assert store.due_mail(2e9, 10)[0].recipient == recipient


def test_due_mail_respects_not_before_order_and_limit(store: SqliteStore, clock: Clock) -> None:
    # The reference labels the entries: a kind is one of the kinds inboxd sends.
    t0 = clock.t
    clock.t = t0 - 1  # created first, due last
    with store.transaction() as tx:
        later = tx.enqueue(entry(ref="later"), not_before=t0 + 60)
    for i in range(3):
        clock.t = t0 + i
        with store.transaction() as tx:
            tx.enqueue(entry(ref=f"k{i}"))
    assert [d.ref for d in store.due_mail(t0 + 10, 100)] == ["k0", "k1", "k2"]
    assert [d.ref for d in store.due_mail(t0 + 10, 2)] == ["k0", "k1"]
    assert [d.ref for d in store.due_mail(t0 + 60, 100)] == ["later", "k0", "k1", "k2"]
    assert later in {d.id for d in store.due_mail(t0 + 60, 100)}


def test_mail_sent_moves_message_id_to_sent(store: SqliteStore, clock: Clock) -> None:
    e = entry(kind="triage_request", ref="VV-HHHH-HHHH")
    with store.transaction() as tx:
        tx.enqueue(e)
        tx.enqueue(entry(kind="ack"))
    due = store.due_mail(clock.t, 100)
    first = next(d for d in due if d.message_id == e.message_id)
    store.mail_sent(first, clock.t + 5)
    assert store.outbox_size() == 1
    assert e.message_id not in {d.message_id for d in store.due_mail(clock.t, 100)}
    assert store.sent_kinds([e.message_id, "<unknown@x>"]) == {
        e.message_id: ("triage_request", "VV-HHHH-HHHH")
    }
    assert float(store.get_meta("last_send") or 0) == clock.t + 5


def test_mail_failed_schedules_retry_or_drops(store: SqliteStore, clock: Clock) -> None:
    with store.transaction() as tx:
        tx.enqueue(entry(ref="a"))
        tx.enqueue(entry(ref="b"))
    a, b = sorted(store.due_mail(clock.t, 10), key=lambda d: d.ref or "")
    store.mail_failed(a, clock.t + 300, "451")
    assert [d.ref for d in store.due_mail(clock.t, 10)] == ["b"]
    retried = [d for d in store.due_mail(clock.t + 300, 10) if d.ref == "a"]
    assert len(retried) == 1 and retried[0].attempts == 1
    store.mail_failed(retried[0], clock.t + 900, "451")
    assert [d.attempts for d in store.due_mail(clock.t + 900, 10) if d.ref == "a"] == [2]
    store.mail_failed(b, None, "550")  # permanent: dropped
    assert store.outbox_size() == 1
    assert store.sent_kinds([b.message_id]) == {}
    assert store.get_meta("last_send") is None


def test_outbox_row_moved_does_not_open(store: SqliteStore, clock: Clock) -> None:
    with store.transaction() as tx:
        a = tx.enqueue(entry("a@gemeente.example"))
        b = tx.enqueue(entry("b@gemeente.example"))
    env = store._c.execute("SELECT envelope FROM outbox WHERE id = ?", (a,)).fetchone()[0]
    store._c.execute("UPDATE outbox SET envelope = ? WHERE id = ?", (env, b))
    # The moved blob does not open; that entry is set aside, the other still goes out.
    assert [m.id for m in store.due_mail(clock.t, 10)] == [a]
    assert [m.id for m in store.due_mail(clock.t + 60, 10)] == [a]


def test_a_kind_no_inboxd_wrote_is_set_aside_and_not_taken_for_ours(
    store: SqliteStore, clock: Clock
) -> None:
    with store.transaction() as tx:
        a = tx.enqueue(entry("a@gemeente.example", kind="triage_request"))
        b = tx.enqueue(entry("b@gemeente.example"))
    store._c.execute("UPDATE outbox SET kind = 'no_such_kind' WHERE id = ?", (b,))
    (due,) = store.due_mail(clock.t, 10)
    assert (due.id, due.kind) == (a, "triage_request") and due.kind is MailKind.TRIAGE_REQUEST
    assert [m.id for m in store.due_mail(clock.t + 60, 10)] == [a]
    store.mail_sent(due, clock.t)
    store._c.execute("UPDATE sent SET kind = 'no_such_kind'")
    assert store.sent_kinds([due.message_id]) == {}
    with store.transaction() as tx:
        assert tx.pending_kinds("VV-AAAA-AAAA") == []


def test_sent_mail_leaves_no_ciphertext(store: SqliteStore, state_dir: Path, clock: Clock) -> None:
    with store.transaction() as tx:
        oid = tx.enqueue(entry(payload=b"p" * 3000))
    env, msg = store._c.execute(
        "SELECT envelope, message FROM outbox WHERE id = ?", (oid,)
    ).fetchone()
    (due,) = store.due_mail(clock.t, 10)
    store.mail_sent(due, clock.t)
    store.checkpoint()
    for name, data in raw_files(state_dir).items():
        assert env not in data, name
        assert msg not in data, name


# -- acks, status, expiry ---------------------------------------------------------------------


def test_mails_since_counts_per_recipient_and_class(store: SqliteStore, clock: Clock) -> None:
    me, other = b"m" * 16, b"o" * 16
    for t in (100.0, 200.0, 300.0):
        clock.t = t
        with store.transaction() as tx:
            tx.record_mail(me, "ack")
    with store.transaction() as tx:
        tx.record_mail(other, "ack")
        tx.record_mail(me, "answer")
        # Inside the transaction that wrote them, too (a batch counts as it goes).
        assert tx.mails_since(me, "ack", 0) == 3
        assert tx.mails_since(me, "ack", 200) == 2
        assert tx.mails_since(me, "ack", 301) == 0
        assert tx.mails_since(other, "ack", 0) == 1
        assert tx.mails_since(me, "answer", 0) == 1
        assert tx.mails_since(me, "ack", 0, upto=2) == 2, "counted no further than asked"


def test_held_signals_are_summed_up_and_cleared(store: SqliteStore, clock: Clock) -> None:
    assert store.held_summary() is None
    ids = []
    for i, (t, who) in enumerate(((100.0, b"a" * 16), (150.0, b"a" * 16), (200.0, b"b" * 16))):
        clock.t = t
        with store.transaction() as tx:
            sig = tx.add_signal(new_signal(f"VV-HHHH-HHH{i}"))
            tx.hold(who, sig.id)
            ids.append(sig.id)
    assert store.held_summary() == (3, 2, 100.0, 200.0)
    with store.transaction() as tx:
        tx.clear_held(150.0)
    assert store.held_summary() == (1, 1, 200.0, 200.0)
    # The notice's count is cleared; the signals still wait for their release,
    # until they are released or deleted.
    with store.transaction() as tx:
        assert [h[0] for h in tx.held_signals()] == ids
        tx.released(ids[0])
        sig1 = tx.signal(ids[1])
        assert sig1 is not None
        tx.delete_signal(sig1, 0.0, "purged")
        assert tx.held_signals() == [(ids[2], b"b" * 16, 200.0)]


def test_counts_flags_and_oldest_open(store: SqliteStore) -> None:
    assert store.counts_by_state() == {}
    assert store.flag_counts() == {}
    assert store.oldest_open() is None
    with store.transaction() as tx:
        a = tx.add_signal(new_signal("VV-AAAA-AAAA", flags={"auto"}, received_at=1000.0))
        tx.add_signal(new_signal("VV-BBBB-BBBB", flags={"auto", "malformed"}, received_at=2000.0))
        tx.add_signal(new_signal("VV-CCCC-CCCC", received_at=3000.0))
    assert store.counts_by_state() == {"queued": 3}
    assert store.flag_counts() == {"auto": 2, "malformed": 1}
    assert store.oldest_open() == 1000.0
    b = store.signal_by_ref("VV-BBBB-BBBB")
    assert b is not None
    with store.transaction() as tx:
        tx.update_signal(b, SignalUpdate(state=SignalState.WAITING_INFO))
        tx.delete_signal(a, dedup_until=9e9, reason="afgesloten")
    assert store.counts_by_state() == {"queued": 1, "waiting_info": 1}
    assert store.flag_counts() == {"auto": 1, "malformed": 1}
    assert store.oldest_open() == 2000.0
    assert [s.ref for s in store.signals()] == ["VV-BBBB-BBBB", "VV-CCCC-CCCC"]
    assert [s.ref for s in store.signals((SignalState.WAITING_INFO,))] == ["VV-BBBB-BBBB"]


def test_meta(store: SqliteStore) -> None:
    assert store.get_meta("last_fetch") is None
    store.set_meta("last_fetch", "123.5")
    assert store.get_meta("last_fetch") == "123.5"
    with store.transaction() as tx:
        tx.set_meta("last_fetch", "124")
    assert store.get_meta("last_fetch") == "124"


def test_expire(store: SqliteStore, clock: Clock) -> None:
    day = 86400.0
    t0 = clock.t
    with store.transaction() as tx:
        tx.add_dedup(b"old" * 11, None, t0 + 1 * day)
        tx.add_dedup(b"new" * 11, None, t0 + 40 * day)
        tx.add_dedup(b"live" * 8, "sig", None)  # an open signal's record: no expiry
        tx.record_mail(b"a" * 16, "ack")
        tx.record_key("1:1", KeyStatus.EXPUNGED)
        tx.record_key("1:2", KeyStatus.EXPUNGE)
        tx.record_key("1:3", KeyStatus.RETAINED)
        tx.enqueue(entry(kind="ack", ref=None))
        tx.enqueue(entry(kind="triage_request", ref="VV-AAAA-AAAA"))
        tx.enqueue(entry(kind="triage_request", ref="VV-BBBB-BBBB"))
        tx.add_signal(new_signal(ref="VV-AAAA-AAAA"))
    for d in store.due_mail(t0, 10):
        store.mail_sent(d, t0)

    store.expire(t0 + 2 * day, dedup_window=30 * day, rate_window=3600)
    assert not store.has_dedup([b"old" * 11])
    assert store.has_dedup([b"new" * 11])
    assert store.has_dedup([b"live" * 8])
    with store.transaction() as tx:
        assert tx.mails_since(b"a" * 16, "ack", 0) == 0

    store.expire(t0 + 31 * day, dedup_window=30 * day, rate_window=3600)
    # Expunged mailbox keys are forgotten after the window; pending ones never.
    assert store.mailbox_key_status(["1:1", "1:2", "1:3"]) == {"1:2": "expunge", "1:3": "retained"}
    assert store.has_dedup([b"live" * 8])
    # Sent records without a reference, or whose signal is gone, go; those of an
    # open signal stay (replies to them must still be recognised while it lives).
    ids = [r[0] for r in store._c.execute("SELECT message_id FROM sent").fetchall()]
    kinds = store.sent_kinds(ids)
    assert sorted(k for k, _ in kinds.values()) == ["triage_request"]


def test_expire_keeps_looks_a_year_and_changes_for_good(store: SqliteStore, clock: Clock) -> None:
    day = 86400.0
    t0 = clock.t
    for action, ref in [
        ("status", None),
        ("stats", None),
        ("queue list", None),
        ("queue purge", "VV-AAAA-AAAA"),
        ("keys rotate", None),
        ("purge", "VV-BBBB-BBBB"),
    ]:
        store.audit(action, ref, 0)
    store.expire(t0 + 365 * day, dedup_window=30 * day, rate_window=3600)
    assert store._c.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 6
    store.expire(t0 + 367 * day, dedup_window=30 * day, rate_window=3600)
    kept = store._c.execute("SELECT action, ref FROM audit ORDER BY action").fetchall()
    assert [tuple(r) for r in kept] == [
        ("keys rotate", None),
        ("purge", "VV-BBBB-BBBB"),
        ("queue purge", "VV-AAAA-AAAA"),
    ]


def test_due_mail_type(store: SqliteStore, clock: Clock) -> None:
    with store.transaction() as tx:
        tx.enqueue(entry())
    (d,) = store.due_mail(clock.t, 1)
    assert isinstance(d, DueMail)


def test_a_large_value_goes_through_blob_io_sealed_and_comes_back_whole(
    store: SqliteStore, state_dir: Path
) -> None:
    """Over BIG_VALUE, fields and accepted mail are sealed into the row piece by
    piece (SQLite incremental blob I/O): same format, never plain on disk."""
    marker = b"GROOT-SIGNAAL-" + uuid.uuid4().hex.encode()
    big = (marker + b"\r\n" + os.urandom(4000)) * 700  # ~2.8 MB
    with store.transaction() as tx:
        s = tx.add_signal(new_signal(fields={"raw": big, "reporter": b"a@b"}))
        iid = tx.accept("1:7", big, KeyStatus.EXPUNGE)
    assert store.read_field(s, "raw") == big
    assert [a.raw for a in store.inbound(10, 10**9)] == [big]
    with store.transaction() as tx:
        tx.add_field(s, "raw", big[::-1])  # replaced, still big
        tx.processed(iid)
    assert store.read_field(s, "raw") == big[::-1]
    assert store.inbound(10, 10**9) == []
    store.checkpoint()
    for name, data in raw_files(state_dir).items():
        assert marker not in data, f"plain text in {name}"


# -- shredding -------------------------------------------------------------------------


def _secrets(store: SqliteStore, ref: str) -> list[bytes]:
    """The signal's wrapped data key and every sealed field, as they lie in the store."""
    row = store._c.execute("SELECT id, wrapped_key FROM signals WHERE ref = ?", (ref,)).fetchone()
    blobs = store._c.execute(
        "SELECT blob FROM signal_fields WHERE signal_id = ?", (row["id"],)
    ).fetchall()
    return [bytes(row["wrapped_key"])] + [bytes(b[0]) for b in blobs]


def _left(state_dir: Path, secrets: list[bytes]) -> list[str]:
    return [
        f"{name}: secret {i}"
        for name, data in raw_files(state_dir).items()
        for i, s in enumerate(secrets)
        if s in data
    ]


def _owed(store: SqliteStore) -> list[tuple[str, str]]:
    return [tuple(r) for r in store._c.execute("SELECT ref, reason FROM unshredded")]


def test_the_deleting_commit_shreds_every_file_of_the_state_directory(
    store: SqliteStore, state_dir: Path
) -> None:
    # A value big enough for incremental blob I/O, an accepted copy, and a
    # neighbour that stays: only the deleted signal's bytes must go.
    big = os.urandom(2 * 1024 * 1024)
    with store.transaction() as tx:
        inbound_id = tx.accept("7:1", b"From: a@b\r\n\r\n" + big, KeyStatus.EXPUNGE)
    inbound = [
        bytes(v) for v in store._c.execute("SELECT wrapped_key, raw FROM inbound").fetchone()
    ]
    with store.transaction() as tx:
        tx.processed(inbound_id)
        sig = tx.add_signal(
            new_signal(fields={"raw": big, "reporter": b"melder@gemeente.example", "subject": b"s"})
        )
        tx.add_field(sig, "followup:1", b"aanvulling")
        keep = tx.add_signal(new_signal("VV-BBBB-BBBB"))
    secrets = inbound + _secrets(store, sig.ref)
    kept = _secrets(store, keep.ref)
    assert _left(state_dir, secrets), "the bytes are on disk before the end"

    with store.transaction() as tx:
        tx.delete_signal(sig, dedup_until=9e9, reason="afgesloten")

    assert _left(state_dir, secrets) == []
    assert _owed(store) == [], "nothing left to shred"
    assert (state_dir / "inboxd.sqlite3-wal").stat().st_size < 64 * 1024, "the log was emptied"
    assert store.read_field(keep, "raw") == b"From: a@b\r\n\r\nhallo", "the other signal is whole"
    assert len(_left(state_dir, kept)) == len(kept)


def test_an_in_memory_store_keeps_the_same_rules_and_shreds_its_pages(
    tmp_path: Path, keyring: Keyring, clock: Clock
) -> None:
    # The in-process workflow tests' store: this SqliteStore on a database that is
    # never a file. It has no write-ahead log, so shredding is the VACUUM alone and
    # must not wait for a log to be emptied (it would wait in vain, then say pending).
    on_disk = set(tmp_path.rglob("*"))
    logged = io.StringIO()
    logs.configure("json", "debug", stream=logged)
    store = SqliteStore(None, keyring, clock=clock)
    try:
        assert store.path is None and store.in_memory
        assert store._c.execute("PRAGMA journal_mode").fetchone()[0] == "memory"
        with store.transaction() as tx:
            sig = tx.add_signal(new_signal(flags={"plain-marker-7f3a"}))
            keep = tx.add_signal(new_signal("VV-BBBB-BBBB"))
        secrets = [*_secrets(store, sig.ref), b"plain-marker-7f3a"]
        image = store._c.serialize()
        assert all(s in image for s in secrets), "the bytes are in the database before the end"
        with pytest.raises(IllegalTransition), store.transaction() as tx:
            tx.update_signal(sig, SignalUpdate(state=SignalState.QUEUED))

        with store.transaction() as tx:
            tx.delete_signal(sig, dedup_until=9e9, reason="afgesloten")

        image = store._c.serialize()
        assert [i for i, s in enumerate(secrets) if s in image] == []
        assert _owed(store) == [], "nothing left to shred"
        assert store.read_field(keep, "raw") == b"From: a@b\r\n\r\nhallo", "the other is whole"
    finally:
        store.close()
    events = [json.loads(line) for line in logged.getvalue().splitlines()]
    deleted = [e for e in events if e["event"] == "signal.deleted"]
    assert [(e["ref"], e["reason"]) for e in deleted] == [(sig.ref, "afgesloten")]
    assert not [e for e in events if e["event"] == "store.shred_pending"]
    assert set(tmp_path.rglob("*")) == on_disk, "the in-memory store wrote a file"


def test_a_reader_holds_the_shredding_up_and_the_next_start_finishes_it(
    state_dir: Path, keyring: Keyring, clock: Clock
) -> None:
    store = SqliteStore(state_dir, keyring, clock=clock)
    with store.transaction() as tx:
        sig = tx.add_signal(new_signal())
    secrets = _secrets(store, sig.ref)
    reader = sqlite3.connect(state_dir / "inboxd.sqlite3", isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM signals").fetchone() == (1,)

    with store.transaction() as tx:
        tx.delete_signal(sig, dedup_until=9e9, reason="afgesloten")
    # Committed, but not yet true on disk: owed, and the bytes are still there.
    assert store.signal_by_ref(sig.ref) is None
    assert _owed(store) == [(sig.ref, "afgesloten")]
    assert store.shred_pending() == 1, "status and the metrics show it"
    assert _left(state_dir, secrets)
    assert store.shred(wait=0.2) is False, "still held up"

    # The process dies (its connection is simply dropped, no close), the reader ends.
    store._c.close()
    reader.execute("ROLLBACK")
    reader.close()
    again = SqliteStore(state_dir, keyring, clock=clock)
    try:
        assert _owed(again) == [], "shredded while opening, before anything else"
        assert again.shred_pending() == 0
        assert _left(state_dir, secrets) == []
    finally:
        again.close()


def test_a_statement_of_its_own_still_running_leaves_the_shredding_for_later(
    store: SqliteStore, state_dir: Path
) -> None:
    with store.transaction() as tx:
        a = tx.add_signal(new_signal())
        tx.add_signal(new_signal("VV-BBBB-BBBB"))
    running = store._c.execute("SELECT ref FROM signals")
    running.fetchone()  # a cursor halfway: its statement is still active
    with store.transaction() as tx:
        tx.delete_signal(a, dedup_until=9e9, reason="afgesloten")  # must not raise
    assert _owed(store) == [(a.ref, "afgesloten")]
    running.fetchall()
    assert store.shred() is True
    assert _owed(store) == []


def test_signals_held_before_releases_existed_wait_for_one_too(
    state_dir: Path, keyring: Keyring, clock: Clock
) -> None:
    """A store from before the release list: its ``flood`` signals are put on it when
    it is opened (under one unknown sender), the others are not."""
    s = SqliteStore(state_dir, keyring, clock=clock)
    with s.transaction() as tx:
        held = tx.add_signal(new_signal("VV-OLDH-ELD1", flags={"flood"}))
        tx.add_signal(new_signal("VV-NOTH-ELD1", flags={"auto"}))
        tx.released(held.id)  # as if the list had not existed
    s.close()
    s2 = SqliteStore(state_dir, keyring, clock=clock)
    try:
        with s2.transaction() as tx:
            assert tx.held_signals() == [(held.id, b"", held.created_at)]
    finally:
        s2.close()


def test_update_signal_walks_only_the_transition_table(store: SqliteStore) -> None:
    # Every (from, to) pair, through the store: a signal is brought to ``old`` by
    # allowed steps, then asked to move to ``new``.
    paths = {SignalState.QUEUED: [SignalState.QUEUED]}
    todo = [SignalState.QUEUED]
    while todo:
        here = todo.pop(0)
        for nxt in sorted(TRANSITIONS[here]):
            if nxt not in paths:
                paths[nxt] = [*paths[here], nxt]
                todo.append(nxt)
    assert set(paths) == set(SignalState)
    for n, (old, new) in enumerate(itertools.product(SignalState, SignalState)):
        with store.transaction() as tx:
            sig = tx.add_signal(new_signal(f"VV-{n:04d}-WALK"))
            for step in paths[old][1:]:
                sig = tx.update_signal(sig, SignalUpdate(state=step))
        assert sig.state is old
        if new in TRANSITIONS[old]:
            with store.transaction() as tx:
                assert tx.update_signal(sig, SignalUpdate(state=new)).state is new
        else:
            with pytest.raises(IllegalTransition), store.transaction() as tx:
                tx.update_signal(sig, SignalUpdate(hold=True, state=new))
            # Nothing of the refused update stays.
            after = store.signal_by_ref(sig.ref)
            assert after is not None and after.state is old and not after.hold


def _outbox_secrets(store: SqliteStore, oid: str) -> list[bytes]:
    row = store._c.execute(
        "SELECT wrapped_key, envelope, message FROM outbox WHERE id = ?", (oid,)
    ).fetchone()
    return [bytes(v) for v in row]


def test_mail_sent_after_the_end_is_shredded_with_the_outbox_round(
    store: SqliteStore, state_dir: Path, keyring: Keyring, clock: Clock
) -> None:
    """The reporter's feedback and the closing note go out after the signal is
    deleted; their outbox rows (the reporter's address, sealed) are the last thing the
    store held about it. Once they left the outbox, the round that sent them shreds
    them as the signal was shredded, without a second ``signal.deleted``."""
    from fakes.memory import MemoryTransport

    from inboxd.mails import Mail
    from inboxd.outbox import Outbox, entry

    def mail(kind: MailKind, to: str) -> OutboxEntry:
        m = Mail(
            sender="vreemdverhaal@gemeente.example",
            to=to,
            subject="Terugkoppeling",
            body="Uw signaal is afgehandeld.",
            message_id=f"<inboxd.{uuid.uuid4().hex}@gemeente.example>",
            auto_submitted="auto-generated",
        )
        return entry(kind, m, "vreemdverhaal@gemeente.example", None)

    with store.transaction() as tx:
        feedback = tx.enqueue(mail(MailKind.FEEDBACK, "melder@gemeente.example"))
        closing = tx.enqueue(mail(MailKind.TRIAGE_CLOSED, "f1@gemeente.example"))
        ack = tx.enqueue(mail(MailKind.ACK, "ander@gemeente.example"), not_before=9e9)
    secrets = _outbox_secrets(store, feedback) + _outbox_secrets(store, closing)
    assert _left(state_dir, secrets), "the sealed entries are on disk while queued"

    class Outcomes:
        def mail_sent(self, tx: object, due: DueMail) -> None:
            pass

        def mail_given_up(self, due: DueMail, reason: str) -> None:
            pass

    transport = MemoryTransport()
    buf = io.StringIO()
    logs.configure("json", "debug", stream=buf)
    result = Outbox(store, transport, clock, 3600.0, Outcomes()).drain()
    assert result.sent == 2 and len(transport.sent) == 2

    assert _left(state_dir, secrets) == [], "the sent entries left bytes behind"
    assert _owed(store) == []
    assert '"signal.deleted"' not in buf.getvalue(), "no signal was deleted"
    assert all(_left(state_dir, [s]) for s in _outbox_secrets(store, ack)), "a queued one stays"
