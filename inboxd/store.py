"""The durable, encrypted store (SQLite).

Plain text here: references, states, timestamps, destinations, form, flags,
counters. Everything a person wrote or is (raw mail, addresses, subjects, follow-ups,
questions, outgoing mail) is sealed with a per-row data key that the keyring wraps.
Deleting a signal deletes its key, and the transaction that does it is followed at
once by :meth:`SqliteStore.shred`: no file of the state directory keeps a byte of it.

The core talks to :class:`Store`; :class:`SqliteStore` is the one implementation
(a PostgreSQL store for an active/standby pair can implement the same protocol).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from inboxd.crypto import (
    DecryptError,
    Keyring,
    open_from,
    open_sealed,
    seal,
    seal_to,
    sealed_size,
)
from inboxd.lifecycle import (
    OPEN_STATES,
    AnyMailKind,
    KeyStatus,
    MailKind,
    SignalState,
    check_transition,
    stored_kind,
)
from inboxd.logs import get_logger

log = get_logger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signals (
    id TEXT PRIMARY KEY,
    ref TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    source TEXT NOT NULL,
    flags TEXT NOT NULL DEFAULT '',
    form TEXT NOT NULL DEFAULT '',
    destinations TEXT NOT NULL DEFAULT '',
    done_destinations TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL,
    attachment_count INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_reminder_at REAL,
    hold INTEGER NOT NULL DEFAULT 0,
    no_feedback INTEGER NOT NULL DEFAULT 0,
    key_id TEXT NOT NULL,
    wrapped_key BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS signal_fields (
    signal_id TEXT NOT NULL REFERENCES signals(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (signal_id, name)
);
CREATE TABLE IF NOT EXISTS refs_used (ref TEXT PRIMARY KEY, closed_at REAL);
CREATE TABLE IF NOT EXISTS inbound (
    id TEXT PRIMARY KEY,           -- accepted from the mailbox, not yet processed
    mailbox_key TEXT NOT NULL,
    received_at REAL NOT NULL,
    key_id TEXT NOT NULL,
    wrapped_key BLOB NOT NULL,
    raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS mailbox_keys (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,          -- accepted | expunge | retained | expunged
    signal_id TEXT,
    seen_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS mailbox_keys_status ON mailbox_keys(status);
CREATE TABLE IF NOT EXISTS dedup (digest BLOB PRIMARY KEY, signal_id TEXT, expires_at REAL);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    ref TEXT,
    message_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    key_id TEXT NOT NULL,
    wrapped_key BLOB NOT NULL,
    envelope BLOB NOT NULL,
    message BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(next_attempt_at);
CREATE TABLE IF NOT EXISTS sent (message_id TEXT PRIMARY KEY, kind TEXT NOT NULL, ref TEXT, sent_at REAL NOT NULL);
DROP TABLE IF EXISTS ack_log;
CREATE TABLE IF NOT EXISTS mail_log (recipient BLOB NOT NULL, class TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS mail_log_recipient ON mail_log(recipient, class, at);
CREATE TABLE IF NOT EXISTS held (sender BLOB NOT NULL, at REAL NOT NULL);
-- Signals still waiting for their triage request (a flood): the keyed hash of the
-- sender, to take turns over senders when they are released; gone with the signal.
CREATE TABLE IF NOT EXISTS held_signals (
    signal_id TEXT PRIMARY KEY REFERENCES signals(id) ON DELETE CASCADE,
    sender BLOB NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stats (
    month TEXT NOT NULL, source TEXT NOT NULL, form TEXT NOT NULL, outcome TEXT NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (month, source, form, outcome)
);
-- Admin actions: what, when, by which uid; a reference at most, never content.
CREATE TABLE IF NOT EXISTS audit (at REAL NOT NULL, action TEXT NOT NULL, ref TEXT, uid INTEGER);
CREATE TABLE IF NOT EXISTS triage_time (
    month TEXT NOT NULL, bucket TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (month, bucket)
);
-- Signals whose deletion has committed but whose old bytes may still be in a file of
-- the state directory: reference and outcome only, until shred() has made it true.
CREATE TABLE IF NOT EXISTS unshredded (ref TEXT PRIMARY KEY, reason TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Retention:
    """Counts and oldest times per kind of stored data; no content, no addresses."""

    open_signals: int
    oldest_open: float | None
    accepted: int
    oldest_accepted: float | None
    outbox: int
    oldest_outbox: float | None
    dedup_records: int
    dedup_last_expiry: float | None
    sent_ids: int
    oldest_sent_id: float | None
    references_closed: int
    first_reference_closed: float | None
    stats_rows: int
    stats_first_month: str | None
    stats_last_month: str | None
    stats_signals: int
    audit_entries: int
    first_audit: float | None
    ack_counters: int
    oldest_ack_counter: float | None


class WrappedKey(NamedTuple):
    """A data key as its row keeps it, wrapped by a master key (for rotation)."""

    table: str  # signals | outbox | inbound
    row_id: str
    key_id: str
    wrapped: bytes


@dataclass(frozen=True)
class Signal:
    id: str
    ref: str
    state: SignalState
    source: str
    flags: frozenset[str]
    form: str
    destinations: tuple[str, ...]
    done_destinations: tuple[str, ...]
    size: int
    attachment_count: int
    created_at: float
    updated_at: float
    last_reminder_at: float | None
    hold: bool
    no_feedback: bool
    key_id: str


@dataclass(frozen=True)
class OutboxEntry:
    """One mail to one recipient, sealed until it is sent. ``payload`` is whatever
    the outbox module needs to build the mail at send time (it stays opaque here)."""

    kind: AnyMailKind
    ref: str | None
    message_id: str
    sender: str
    recipient: str
    payload: bytes


@dataclass(frozen=True)
class DueMail:
    id: str
    kind: AnyMailKind
    ref: str | None
    message_id: str
    attempts: int
    created_at: float
    sender: str
    recipient: str
    payload: bytes


@dataclass(frozen=True)
class Inbound:
    """A message accepted from the mailbox (sealed on disk) and not yet processed."""

    id: str
    mailbox_key: str
    received_at: float
    raw: bytes


@dataclass
class NewSignal:
    ref: str
    source: str
    flags: set[str]
    size: int
    attachment_count: int
    fields: dict[str, bytes]  # raw, reporter, subject …: sealed on insert
    received_at: float
    dedup_digest: bytes | None = None
    mailbox_key: str | None = None
    retain: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class SignalUpdate:
    """What a transaction changes about a signal; ``None`` leaves a column alone. The
    reference, the source and the key are no field: they never change."""

    state: SignalState | None = None
    form: str | None = None
    destinations: Iterable[str] | None = None
    done_destinations: Iterable[str] | None = None
    hold: bool | None = None
    no_feedback: bool | None = None
    last_reminder_at: float | None = None
    flags: Iterable[str] | None = None


class StoreError(Exception):
    pass


class Transaction(Protocol):
    """One atomic unit of work: everything done through it commits together."""

    now: float

    def savepoint(self) -> AbstractContextManager[None]: ...
    def add_signal(self, signal: NewSignal) -> Signal: ...
    def data_key(self, signal: Signal) -> bytes: ...
    def update_signal(self, signal: Signal, change: SignalUpdate) -> Signal: ...
    def field_names(self, signal: Signal) -> list[str]: ...
    def add_field(self, signal: Signal, name: str, plain: bytes) -> None: ...
    def delete_signal(self, signal: Signal, dedup_until: float, reason: str) -> None: ...
    def count(
        self, month: str, source: str, form: str, outcome: str, triage_bucket: str
    ) -> None: ...
    def record_key(self, key: str, status: KeyStatus, signal_id: str | None = None) -> None: ...
    def accept(self, key: str, raw: bytes, status: KeyStatus) -> str: ...
    def processed(self, inbound_id: str) -> None: ...
    def add_dedup(self, digest: bytes, signal_id: str | None, expires_at: float | None) -> None: ...
    def enqueue(self, entry: OutboxEntry, *, not_before: float | None = None) -> str: ...
    def pending_kinds(self, ref: str) -> list[AnyMailKind]: ...
    def record_mail(self, recipient_digest: bytes, cls: str) -> None: ...
    def mails_since(
        self, recipient_digest: bytes, cls: str, since: float, upto: int = 1 << 30
    ) -> int: ...
    def hold(self, sender_digest: bytes, signal_id: str) -> None: ...
    def clear_held(self, upto: float) -> None: ...
    def held_signals(self) -> list[tuple[str, bytes, float]]: ...
    def released(self, signal_id: str) -> None: ...
    def signal(self, signal_id: str) -> Signal | None: ...
    def read_field(self, signal: Signal, name: str) -> bytes | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    # key rotation (admin)
    def rewrap(self, table: str, row_id: str, key_id: str, wrapped: bytes) -> None: ...


class Store(Protocol):
    """What the core needs from durable storage. :class:`SqliteStore` is the one
    implementation; a PostgreSQL store for an active/standby pair would be another."""

    def transaction(self) -> AbstractContextManager[Transaction]: ...
    # intake
    def ref_in_use(self, ref: str) -> bool: ...
    def mailbox_key_status(self, keys: Sequence[str]) -> dict[str, KeyStatus]: ...
    def has_dedup(self, digests: Sequence[bytes]) -> bool: ...
    def held_summary(self) -> tuple[int, int, float, float] | None: ...
    def keys_to_expunge(self) -> list[str]: ...
    def inbound(self, limit_messages: int, limit_bytes: int) -> list[Inbound]: ...
    def inbound_count(self) -> int: ...
    def mark_expunged(self, keys: Sequence[str]) -> None: ...
    # outbox
    def due_mail(self, now: float, limit: int = 100) -> list[DueMail]: ...
    def outbox_size(self) -> int: ...
    def mail_sent(self, mail: DueMail, now: float, then: Any = None) -> None: ...
    def mail_failed(self, mail: DueMail, next_attempt_at: float | None, error: str) -> None: ...
    def sent_kinds(
        self, message_ids: Iterable[str]
    ) -> dict[str, tuple[AnyMailKind, str | None]]: ...
    # signals
    def signals(self, states: Sequence[SignalState] = OPEN_STATES) -> list[Signal]: ...
    def signal_by_ref(self, ref: str) -> Signal | None: ...
    def read_field(self, signal: Signal, name: str) -> bytes | None: ...
    # status, statistics, upkeep
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def counts_by_state(self) -> dict[SignalState, int]: ...
    def flag_counts(self) -> dict[str, int]: ...
    def oldest_open(self) -> float | None: ...
    def stats_rows(self, year: int) -> list[dict[str, Any]]: ...
    def triage_time_rows(self, year: int) -> list[dict[str, Any]]: ...
    def retention(self) -> Retention: ...
    # admin: every command is audited; key rotation reads every wrapped data key
    def audit(self, action: str, ref: str | None, uid: int | None = None) -> None: ...
    def wrapped_keys(self) -> list[WrappedKey]: ...
    def checkpoint(self) -> None: ...
    def shred(self) -> bool: ...
    def vacuum(self) -> None: ...
    def expire(self, now: float, dedup_window: float, rate_window: float) -> None: ...
    def close(self) -> None: ...


# Audited admin actions that change something (a purge, a rotation; "purge"/"rotate"
# as stores before the admin socket named them) stay for good; the rest this long.
AUDIT_KEPT_FOR_GOOD = ("queue purge", "keys rotate", "purge", "rotate")
AUDIT_LOOKS_KEPT = 366 * 86400.0

# The tables whose rows each have a data key of their own.
KEYED_TABLES = ("signals", "outbox", "inbound")

# A sealed value bigger than this is written and read through SQLite's incremental
# blob I/O, a piece at a time: binding a 40 MB value makes SQLite copy it whole.
BIG_VALUE = 1024 * 1024


def _write_sealed(
    conn: sqlite3.Connection,
    table: str,
    column: str,
    sql: str,
    params: tuple[Any, ...],
    key: bytes,
    owner: str,
    field: str,
    plain: bytes,
) -> None:
    """Run ``sql`` — an INSERT whose last value is ``{blob}`` — with ``plain`` sealed
    as that value."""
    if len(plain) <= BIG_VALUE:
        conn.execute(sql.format(blob="?"), (*params, seal(key, owner, field, plain)))
        return
    cur = conn.execute(sql.format(blob="zeroblob(?)"), (*params, sealed_size(len(plain))))
    assert cur.lastrowid is not None
    with conn.blobopen(table, column, cur.lastrowid) as blob:
        seal_to(key, owner, field, plain, blob.write)


def _read_sealed(
    conn: sqlite3.Connection,
    table: str,
    column: str,
    rowid: int,
    size: int,
    key: bytes,
    owner: str,
    field: str,
) -> bytes:
    if size <= BIG_VALUE:
        row = conn.execute(f"SELECT {column} FROM {table} WHERE rowid = ?", (rowid,)).fetchone()
        return open_sealed(key, owner, field, row[0])
    with conn.blobopen(table, column, rowid, readonly=True) as blob:
        return open_from(key, owner, field, size, blob.read)


def _read_field(
    conn: sqlite3.Connection, signal_id: str, name: str, key: Callable[[], bytes]
) -> bytes | None:
    row = conn.execute(
        "SELECT rowid, length(blob) FROM signal_fields WHERE signal_id = ? AND name = ?",
        (signal_id, name),
    ).fetchone()
    if row is None:
        return None
    return _read_sealed(
        conn, "signal_fields", "blob", row[0], row[1], key(), f"signal:{signal_id}", name
    )


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _listed(values: Iterable[str] | None) -> str | None:
    """A set of names as its column holds it: sorted, comma-separated."""
    return None if values is None else ",".join(sorted(values))


def _known_kind(text: str) -> AnyMailKind | None:
    """A stored mail kind, or None for one no version of inboxd wrote."""
    try:
        return stored_kind(text)
    except ValueError:
        return None


def _row_to_signal(row: sqlite3.Row) -> Signal:
    return Signal(
        id=row["id"],
        ref=row["ref"],
        state=SignalState(row["state"]),
        source=row["source"],
        flags=frozenset(f for f in row["flags"].split(",") if f),
        form=row["form"],
        destinations=tuple(d for d in row["destinations"].split(",") if d),
        done_destinations=tuple(d for d in row["done_destinations"].split(",") if d),
        size=row["size"],
        attachment_count=row["attachment_count"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_reminder_at=row["last_reminder_at"],
        hold=bool(row["hold"]),
        no_feedback=bool(row["no_feedback"]),
        key_id=row["key_id"],
    )


class SqliteTransaction:
    def __init__(self, conn: sqlite3.Connection, keyring: Keyring, now: float) -> None:
        self._c = conn
        self._k = keyring
        self.now = now
        self.deleted = False  # a signal was deleted: shred after the commit

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction: one message's failure undoes only that message."""
        name = f"sp_{uuid.uuid4().hex[:12]}"
        self._c.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._c.execute(f"ROLLBACK TO {name}")
            self._c.execute(f"RELEASE {name}")
            raise
        self._c.execute(f"RELEASE {name}")

    def add_signal(self, s: NewSignal) -> Signal:
        data_key = self._k.new_data_key()
        key_id, wrapped = self._k.wrap(data_key, f"signal:{s.id}")
        flags = ",".join(sorted(s.flags))
        self._c.execute(
            "INSERT INTO signals (id, ref, state, source, flags, size, attachment_count, created_at,"
            " updated_at, key_id, wrapped_key) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                s.id,
                s.ref,
                SignalState.QUEUED,
                s.source,
                flags,
                s.size,
                s.attachment_count,
                s.received_at,
                self.now,
                key_id,
                wrapped,
            ),
        )
        self._c.execute("INSERT INTO refs_used (ref) VALUES (?)", (s.ref,))
        for name, plain in s.fields.items():
            _write_sealed(
                self._c,
                "signal_fields",
                "blob",
                "INSERT INTO signal_fields (signal_id, name, blob) VALUES (?,?,{blob})",
                (s.id, name),
                data_key,
                f"signal:{s.id}",
                name,
                plain,
            )
        if s.dedup_digest is not None:
            self.add_dedup(s.dedup_digest, s.id, None)
        if s.mailbox_key is not None:
            self.record_key(
                s.mailbox_key, KeyStatus.RETAINED if s.retain else KeyStatus.EXPUNGE, s.id
            )
        row = self._c.execute("SELECT * FROM signals WHERE id = ?", (s.id,)).fetchone()
        return _row_to_signal(row)

    def data_key(self, signal: Signal) -> bytes:
        row = self._c.execute(
            "SELECT key_id, wrapped_key FROM signals WHERE id = ?", (signal.id,)
        ).fetchone()
        return self._k.unwrap(row["key_id"], row["wrapped_key"], f"signal:{signal.id}")

    def record_key(self, key: str, status: KeyStatus, signal_id: str | None = None) -> None:
        # A key already expunged stays expunged: processing after acceptance may say
        # "expunge" again about a message that is long gone.
        self._c.execute(
            "INSERT INTO mailbox_keys (key, status, signal_id, seen_at) VALUES (?,?,?,?)"
            " ON CONFLICT(key) DO UPDATE SET status = CASE"
            " WHEN mailbox_keys.status = ? AND excluded.status = ?"
            " THEN ? ELSE excluded.status END,"
            " signal_id = COALESCE(excluded.signal_id, mailbox_keys.signal_id)",
            (
                key,
                KeyStatus(status),
                signal_id,
                self.now,
                KeyStatus.EXPUNGED,
                KeyStatus.EXPUNGE,
                KeyStatus.EXPUNGED,
            ),
        )

    def accept(self, key: str, raw: bytes, status: KeyStatus) -> str:
        """Seal a fetched message under its own data key and remember its mailbox key
        (``expunge`` when it may leave the mailbox now, ``accepted`` when processing
        decides). Parsing comes later, in :meth:`processed`'s transaction."""
        iid = uuid.uuid4().hex
        data_key = self._k.new_data_key()
        key_id, wrapped = self._k.wrap(data_key, f"inbound:{iid}")
        _write_sealed(
            self._c,
            "inbound",
            "raw",
            "INSERT INTO inbound (id, mailbox_key, received_at, key_id, wrapped_key, raw)"
            " VALUES (?,?,?,?,?,{blob})",
            (iid, key, self.now, key_id, wrapped),
            data_key,
            f"inbound:{iid}",
            "raw",
            raw,
        )
        self.record_key(key, status)
        return iid

    def processed(self, inbound_id: str) -> None:
        self._c.execute("DELETE FROM inbound WHERE id = ?", (inbound_id,))

    def add_dedup(self, digest: bytes, signal_id: str | None, expires_at: float | None) -> None:
        self._c.execute(
            "INSERT OR REPLACE INTO dedup (digest, signal_id, expires_at) VALUES (?,?,?)",
            (digest, signal_id, expires_at),
        )

    def enqueue(self, entry: OutboxEntry, *, not_before: float | None = None) -> str:
        oid = uuid.uuid4().hex
        data_key = self._k.new_data_key()
        key_id, wrapped = self._k.wrap(data_key, f"outbox:{oid}")
        envelope = json.dumps({"from": entry.sender, "to": entry.recipient}).encode()
        self._c.execute(
            "INSERT INTO outbox (id, kind, ref, message_id, created_at, next_attempt_at, key_id,"
            " wrapped_key, envelope, message) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                oid,
                entry.kind,
                entry.ref,
                entry.message_id,
                self.now,
                not_before if not_before is not None else self.now,
                key_id,
                wrapped,
                seal(data_key, f"outbox:{oid}", "envelope", envelope),
                seal(data_key, f"outbox:{oid}", "message", entry.payload),
            ),
        )
        return oid

    def record_mail(self, recipient_digest: bytes, cls: str) -> None:
        """One automatic mail (or, class ``signal``, one new signal) counted against
        a keyed hash of the address: no address, no content."""
        self._c.execute(
            "INSERT INTO mail_log (recipient, class, at) VALUES (?,?,?)",
            (recipient_digest, cls, self.now),
        )

    def mails_since(
        self, recipient_digest: bytes, cls: str, since: float, upto: int = 1 << 30
    ) -> int:
        """How many since ``since``, counted no further than ``upto`` (the budget):
        during a flood each check costs the budget, not the flood."""
        row = self._c.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM mail_log"
            " WHERE recipient = ? AND class = ? AND at >= ? LIMIT ?)",
            (recipient_digest, cls, since, upto),
        ).fetchone()
        return int(row[0])

    def hold(self, sender_digest: bytes, signal_id: str) -> None:
        """A signal queued without a triage request of its own (a flood): counted for
        the flood notice (``held``) and waiting for its release (``held_signals``)."""
        self._c.execute("INSERT INTO held (sender, at) VALUES (?,?)", (sender_digest, self.now))
        self._c.execute(
            "INSERT INTO held_signals (signal_id, sender, at) VALUES (?,?,?)",
            (signal_id, sender_digest, self.now),
        )

    def held_signals(self) -> list[tuple[str, bytes, float]]:
        """(signal id, sender digest, when held) of every signal still waiting for its
        triage request, oldest first."""
        return [
            (r["signal_id"], bytes(r["sender"]), float(r["at"]))
            for r in self._c.execute(
                "SELECT signal_id, sender, at FROM held_signals ORDER BY at, rowid"
            )
        ]

    def released(self, signal_id: str) -> None:
        self._c.execute("DELETE FROM held_signals WHERE signal_id = ?", (signal_id,))

    def clear_held(self, upto: float) -> None:
        self._c.execute("DELETE FROM held WHERE at <= ?", (upto,))

    # -- signal life (triage) ------------------------------------------------
    def signal(self, signal_id: str) -> Signal | None:
        row = self._c.execute("SELECT * FROM signals WHERE id = ?", (signal_id,)).fetchone()
        return _row_to_signal(row) if row else None

    def update_signal(self, signal: Signal, change: SignalUpdate) -> Signal:
        """Change what ``change`` gives; a state only along the transition table."""
        changes: dict[str, object] = {
            "form": change.form,
            "destinations": _listed(change.destinations),
            "done_destinations": _listed(change.done_destinations),
            "hold": change.hold,
            "no_feedback": change.no_feedback,
            "last_reminder_at": change.last_reminder_at,
            "flags": _listed(change.flags),
        }
        if change.state is not None:
            # The state as stored now, not as the caller last read it.
            current = self.signal(signal.id)
            if current is None:
                raise StoreError("signal is gone")
            changes["state"] = check_transition(current.state, SignalState(change.state))
        cols = [f"{k} = ?" for k, v in changes.items() if v is not None]
        values = [v for v in changes.values() if v is not None]
        cols.append("updated_at = ?")
        values.append(self.now)
        self._c.execute(f"UPDATE signals SET {', '.join(cols)} WHERE id = ?", (*values, signal.id))
        updated = self.signal(signal.id)
        assert updated is not None
        return updated

    def field_names(self, signal: Signal) -> list[str]:
        return [
            r["name"]
            for r in self._c.execute(
                "SELECT name FROM signal_fields WHERE signal_id = ? ORDER BY rowid", (signal.id,)
            )
        ]

    def add_field(self, signal: Signal, name: str, plain: bytes) -> None:
        _write_sealed(
            self._c,
            "signal_fields",
            "blob",
            "INSERT OR REPLACE INTO signal_fields (signal_id, name, blob) VALUES (?,?,{blob})",
            (signal.id, name),
            self.data_key(signal),
            f"signal:{signal.id}",
            name,
            plain,
        )

    def read_field(self, signal: Signal, name: str) -> bytes | None:
        return _read_field(self._c, signal.id, name, lambda: self.data_key(signal))

    def count(self, month: str, source: str, form: str, outcome: str, triage_bucket: str) -> None:
        self._c.execute(
            "INSERT INTO stats (month, source, form, outcome, count) VALUES (?,?,?,?,1)"
            " ON CONFLICT(month, source, form, outcome) DO UPDATE SET count = count + 1",
            (month, source, form, outcome),
        )
        self._c.execute(
            "INSERT INTO triage_time (month, bucket, count) VALUES (?,?,1)"
            " ON CONFLICT(month, bucket) DO UPDATE SET count = count + 1",
            (month, triage_bucket),
        )

    def delete_signal(self, signal: Signal, dedup_until: float, reason: str) -> None:
        """Everything about the signal goes: fields, key, row. What stays is the bare
        reference (so a late command gets "already handled"), content-free dedup
        records that expire, and mailbox keys still to be expunged. The store shreds
        when this transaction commits (``reason``, the outcome, is for its log)."""
        self._c.execute(
            "INSERT OR REPLACE INTO unshredded (ref, reason) VALUES (?, ?)", (signal.ref, reason)
        )
        self.deleted = True
        self._c.execute(
            "UPDATE mailbox_keys SET status = ? WHERE signal_id = ? AND status = ?",
            (KeyStatus.EXPUNGE, signal.id, KeyStatus.RETAINED),
        )
        self._c.execute(
            "UPDATE mailbox_keys SET signal_id = NULL WHERE signal_id = ?", (signal.id,)
        )
        self._c.execute(
            "UPDATE dedup SET signal_id = NULL, expires_at = ? WHERE signal_id = ?",
            (dedup_until, signal.id),
        )
        self._c.execute(
            "DELETE FROM outbox WHERE ref = ? AND kind != ?",
            (signal.ref, MailKind.ACK),
        )
        self._c.execute("DELETE FROM signal_fields WHERE signal_id = ?", (signal.id,))
        self._c.execute("DELETE FROM held_signals WHERE signal_id = ?", (signal.id,))
        self._c.execute("DELETE FROM signals WHERE id = ?", (signal.id,))
        # Only the day: a closing time to the second, kept for ever, would date each
        # signal's end long after everything else about it is gone.
        day = self.now - self.now % 86400
        self._c.execute("UPDATE refs_used SET closed_at = ? WHERE ref = ?", (day, signal.ref))

    def ref_closed(self, ref: str) -> bool:
        row = self._c.execute("SELECT closed_at FROM refs_used WHERE ref = ?", (ref,)).fetchone()
        return row is not None and row["closed_at"] is not None

    def pending_kinds(self, ref: str) -> list[AnyMailKind]:
        rows = self._c.execute("SELECT kind FROM outbox WHERE ref = ?", (ref,))
        return [kind for kind in (_known_kind(r["kind"]) for r in rows) if kind is not None]

    def set_meta(self, key: str, value: str) -> None:
        self._c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def rewrap(self, table: str, row_id: str, key_id: str, wrapped: bytes) -> None:
        if table not in KEYED_TABLES:
            raise StoreError(f"{table} keeps no data keys")
        self._c.execute(
            f"UPDATE {table} SET key_id = ?, wrapped_key = ? WHERE id = ?",
            (key_id, wrapped, row_id),
        )


# How long a connection waits for another one's lock before SQLite says "busy".
BUSY_TIMEOUT = 30.0
# How long shredding may wait for readers that keep the log from being emptied
# (another connection's open read, a command-line process) before it is left to
# the next try: the daemon's loop must not stall on it.
SHRED_WAIT = 1.0
_SHRED_BUSY_MS = 100


def _busy(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqliteStore:
    """SQLite in WAL mode with ``synchronous=FULL`` and ``secure_delete=ON``."""

    def __init__(self, state_dir: str | Path, keyring: Keyring, clock: Any = None) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = self.dir / "inboxd.sqlite3"
        self.keyring = keyring
        self.clock = clock or time.time
        old_umask = os.umask(0o077)
        try:
            self._c = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT
            )
        finally:
            os.umask(old_umask)
        self._c.row_factory = sqlite3.Row
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA secure_delete=ON",
            "PRAGMA foreign_keys=ON",
        ):
            self._c.execute(pragma)
        self._c.executescript(_SCHEMA)
        # Stores made before the audit recorded the uid get the column (NULL for old rows).
        if "uid" not in {r["name"] for r in self._c.execute("PRAGMA table_info(audit)")}:
            self._c.execute("ALTER TABLE audit ADD COLUMN uid INTEGER")
        self._c.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
        )
        # Signals held before releases existed wait as well, under one unknown sender.
        self._c.execute(
            "INSERT OR IGNORE INTO held_signals (signal_id, sender, at)"
            " SELECT id, X'', created_at FROM signals"
            " WHERE ',' || flags || ',' LIKE '%,flood,%'"
            " AND id NOT IN (SELECT signal_id FROM held_signals)"
        )
        # A process killed between a deletion's commit and its shredding left the
        # old bytes behind: they go before anything else is done with this store.
        self.shred()

    def close(self) -> None:
        try:
            self.shred(wait=5 * SHRED_WAIT)
            self._c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._c.close()

    @contextmanager
    def transaction(self) -> Iterator[SqliteTransaction]:
        self._c.execute("BEGIN IMMEDIATE")
        tx = SqliteTransaction(self._c, self.keyring, self.clock())
        try:
            yield tx
        except BaseException:
            self._c.execute("ROLLBACK")
            raise
        self._c.execute("COMMIT")
        if tx.deleted:
            self.shred()

    def shred(self, wait: float = SHRED_WAIT) -> bool:
        """Make the deletions that have committed true on disk, then log each one as
        ``signal.deleted``. True when nothing is left to shred.

        ``secure_delete`` zeroes a deleted row where it lies, but not the copies
        SQLite leaves when it moves rows between pages (the unused middle of a page
        keeps them), nor the old page images in the write-ahead log. So: VACUUM
        rewrites every page from the live rows alone, and a TRUNCATE checkpoint
        copies the result into the database file and cuts the log to zero bytes.
        That checkpoint cannot finish while another connection reads an older
        snapshot: it is retried for ``wait`` seconds, and then left for the next call
        (after the next deletion, the scheduler's ``shred`` job, ``close``, or the
        next start) with a ``store.shred_pending`` warning. Never raises.
        """
        try:
            owed = [
                (r["ref"], r["reason"])
                for r in self._c.execute("SELECT ref, reason FROM unshredded ORDER BY rowid")
            ]
        except sqlite3.Error as exc:
            log.error("store.shred_pending", error=type(exc).__name__)
            return False
        if not owed:
            return True
        started = time.monotonic()
        deadline = started + wait
        vacuumed = False
        self._c.execute(f"PRAGMA busy_timeout = {_SHRED_BUSY_MS}")
        try:
            while True:
                try:
                    if not vacuumed:
                        self._c.execute("VACUUM")
                        vacuumed = True
                    busy, frames, _ = self._c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                    if busy == 0 and frames == 0:
                        break
                except sqlite3.Error as exc:
                    if not _busy(exc):
                        # A statement of this connection still running ("SQL statements
                        # in progress"), a full disk: waiting here would not help.
                        log.warning(
                            "store.shred_pending", count=len(owed), error=type(exc).__name__
                        )
                        return False
                if time.monotonic() >= deadline:
                    log.warning("store.shred_pending", count=len(owed), reason="busy")
                    return False
                time.sleep(0.02)  # a checkpoint that returns busy at once must not spin
        finally:
            self._c.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        duration_ms = round((time.monotonic() - started) * 1000)
        for ref, outcome in owed:
            log.info(
                "signal.deleted", ref=ref, state="deleted", reason=outcome, duration_ms=duration_ms
            )
        try:
            with self.transaction():
                self._c.executemany(
                    "DELETE FROM unshredded WHERE ref = ?", [(ref,) for ref, _ in owed]
                )
        except sqlite3.Error as exc:
            # Shredded all the same; the next call shreds again and logs them again.
            log.warning("store.shred_pending", count=len(owed), error=type(exc).__name__)
        return True

    # -- intake -------------------------------------------------------------
    def ref_in_use(self, ref: str) -> bool:
        return (
            self._c.execute("SELECT 1 FROM refs_used WHERE ref = ?", (ref,)).fetchone() is not None
        )

    def ref_closed(self, ref: str) -> bool:
        row = self._c.execute("SELECT closed_at FROM refs_used WHERE ref = ?", (ref,)).fetchone()
        return row is not None and row["closed_at"] is not None

    def mailbox_key_status(self, keys: Sequence[str]) -> dict[str, KeyStatus]:
        out: dict[str, KeyStatus] = {}
        for i in range(0, len(keys), 500):
            chunk = list(keys[i : i + 500])
            q = "SELECT key, status FROM mailbox_keys WHERE key IN (" + _marks(len(chunk)) + ")"
            out.update({r["key"]: KeyStatus(r["status"]) for r in self._c.execute(q, chunk)})
        return out

    def has_dedup(self, digests: Sequence[bytes]) -> bool:
        return any(
            self._c.execute("SELECT 1 FROM dedup WHERE digest = ?", (d,)).fetchone() is not None
            for d in digests
        )

    def held_summary(self) -> tuple[int, int, float, float] | None:
        """Signals held without a triage request since the last flood notice: how
        many, from how many senders, the first and the last time."""
        row = self._c.execute(
            "SELECT COUNT(*), COUNT(DISTINCT sender), MIN(at), MAX(at) FROM held"
        ).fetchone()
        return None if not row[0] else (int(row[0]), int(row[1]), float(row[2]), float(row[3]))

    def keys_to_expunge(self) -> list[str]:
        return [
            r["key"]
            for r in self._c.execute(
                "SELECT key FROM mailbox_keys WHERE status = ?", (KeyStatus.EXPUNGE,)
            )
        ]

    def inbound(self, limit_messages: int, limit_bytes: int) -> list[Inbound]:
        """Accepted messages, oldest first, up to a count and a size (at least one).
        A row whose key cannot be unwrapped stays where it is and is logged."""
        out: list[Inbound] = []
        size = 0
        rows = self._c.execute(
            "SELECT rowid, id, mailbox_key, received_at, key_id, wrapped_key, length(raw) AS n"
            " FROM inbound ORDER BY received_at, rowid"
        ).fetchall()
        for r in rows:
            if out and (len(out) >= limit_messages or size + r["n"] > limit_bytes):
                break
            owner = f"inbound:{r['id']}"
            try:
                data_key = self.keyring.unwrap(r["key_id"], r["wrapped_key"], owner)
                raw = _read_sealed(
                    self._c, "inbound", "raw", r["rowid"], r["n"], data_key, owner, "raw"
                )
            except DecryptError as exc:
                log.error("intake.inbound_unreadable", key_id=r["key_id"], error=type(exc).__name__)
                continue
            out.append(Inbound(r["id"], r["mailbox_key"], r["received_at"], raw))
            size += r["n"]
        return out

    def inbound_count(self) -> int:
        return int(self._c.execute("SELECT COUNT(*) FROM inbound").fetchone()[0])

    def mark_expunged(self, keys: Sequence[str]) -> None:
        with self.transaction():
            self._c.executemany(
                "UPDATE mailbox_keys SET status = ? WHERE key = ?",
                [(KeyStatus.EXPUNGED, k) for k in keys],
            )

    # -- outbox -------------------------------------------------------------
    def due_mail(self, now: float, limit: int = 100) -> list[DueMail]:
        rows = self._c.execute(
            "SELECT * FROM outbox WHERE next_attempt_at <= ? ORDER BY created_at, rowid LIMIT ?",
            (now, limit),
        ).fetchall()
        out = []
        for r in rows:
            owner = f"outbox:{r['id']}"
            try:
                data_key = self.keyring.unwrap(r["key_id"], r["wrapped_key"], owner)
                env = json.loads(open_sealed(data_key, owner, "envelope", r["envelope"]))
                payload = open_sealed(data_key, owner, "message", r["message"])
                kind = stored_kind(r["kind"])
            except (DecryptError, ValueError) as exc:
                # One unreadable entry (its key removed before rotation finished, a
                # kind no inboxd wrote) must not hold up every other mail: set it
                # aside for an hour and say so.
                log.error(
                    "outbox.unreadable",
                    outbox_id=r["id"],
                    key_id=r["key_id"],
                    error=type(exc).__name__,
                )
                self._c.execute(
                    "UPDATE outbox SET next_attempt_at = ? WHERE id = ?", (now + 3600, r["id"])
                )
                continue
            out.append(
                DueMail(
                    id=r["id"],
                    kind=kind,
                    ref=r["ref"],
                    message_id=r["message_id"],
                    attempts=r["attempts"],
                    created_at=r["created_at"],
                    sender=env["from"],
                    recipient=env["to"],
                    payload=payload,
                )
            )
        return out

    def outbox_size(self) -> int:
        return int(self._c.execute("SELECT COUNT(*) AS n FROM outbox").fetchone()["n"])

    def mail_sent(self, mail: DueMail, now: float, then: Any = None) -> None:
        """The server accepted ``mail``: forget it, remember its Message-ID, and run
        ``then(tx)`` in the same transaction (a forward's destination counts as done
        exactly when its mail leaves the outbox)."""
        with self.transaction() as tx:
            self._c.execute("DELETE FROM outbox WHERE id = ?", (mail.id,))
            if then is not None:
                then(tx)
            self._c.execute(
                "INSERT OR REPLACE INTO sent (message_id, kind, ref, sent_at) VALUES (?,?,?,?)",
                (mail.message_id, mail.kind, mail.ref, now),
            )
            self._c.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_send', ?)", (str(now),)
            )

    def mail_failed(self, mail: DueMail, next_attempt_at: float | None, error: str) -> None:
        """Schedule a retry, or (``next_attempt_at`` None) give up and drop the entry."""
        with self.transaction():
            if next_attempt_at is None:
                self._c.execute("DELETE FROM outbox WHERE id = ?", (mail.id,))
            else:
                self._c.execute(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?",
                    (next_attempt_at, error, mail.id),
                )

    def sent_kinds(self, message_ids: Iterable[str]) -> dict[str, tuple[AnyMailKind, str | None]]:
        out: dict[str, tuple[AnyMailKind, str | None]] = {}
        for mid in message_ids:
            r = self._c.execute(
                "SELECT kind, ref FROM sent WHERE message_id = ?", (mid,)
            ).fetchone()
            kind = None if r is None else _known_kind(r["kind"])
            if kind is not None:
                out[mid] = (kind, r["ref"])
        return out

    # -- signals ------------------------------------------------------------
    def signals(self, states: Sequence[SignalState] = OPEN_STATES) -> list[Signal]:
        q = "SELECT * FROM signals WHERE state IN (" + _marks(len(states)) + ") ORDER BY created_at"
        return [_row_to_signal(r) for r in self._c.execute(q, list(states))]

    def signal_by_ref(self, ref: str) -> Signal | None:
        row = self._c.execute("SELECT * FROM signals WHERE ref = ?", (ref,)).fetchone()
        return _row_to_signal(row) if row else None

    def data_key(self, signal: Signal) -> bytes:
        row = self._c.execute(
            "SELECT key_id, wrapped_key FROM signals WHERE id = ?", (signal.id,)
        ).fetchone()
        if row is None:
            raise StoreError("signal is gone")
        return self.keyring.unwrap(row["key_id"], row["wrapped_key"], f"signal:{signal.id}")

    def read_field(self, signal: Signal, name: str) -> bytes | None:
        return _read_field(self._c, signal.id, name, lambda: self.data_key(signal))

    # -- status -------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        self._c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def counts_by_state(self) -> dict[SignalState, int]:
        return {
            SignalState(r["state"]): r["n"]
            for r in self._c.execute("SELECT state, COUNT(*) AS n FROM signals GROUP BY state")
        }

    def flag_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self._c.execute("SELECT flags FROM signals"):
            for f in r["flags"].split(","):
                if f:
                    out[f] = out.get(f, 0) + 1
        return out

    def oldest_open(self) -> float | None:
        q = (
            "SELECT MIN(created_at) AS t FROM signals WHERE state IN ("
            + _marks(len(OPEN_STATES))
            + ")"
        )
        row = self._c.execute(q, list(OPEN_STATES)).fetchone()
        return None if row["t"] is None else float(row["t"])

    def checkpoint(self) -> None:
        self._c.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def stats_rows(self, year: int) -> list[dict[str, Any]]:
        q = "SELECT month, source, form, outcome, count FROM stats WHERE month LIKE ? ORDER BY month, source, form, outcome"
        return [dict(r) for r in self._c.execute(q, (f"{year:04d}-%",))]

    def triage_time_rows(self, year: int) -> list[dict[str, Any]]:
        q = "SELECT month, bucket, count FROM triage_time WHERE month LIKE ? ORDER BY month, bucket"
        return [dict(r) for r in self._c.execute(q, (f"{year:04d}-%",))]

    def retention(self) -> Retention:
        """How long things are really kept, measured (for the processing register)."""

        def one(q: str) -> sqlite3.Row:
            row: sqlite3.Row = self._c.execute(q).fetchone()
            return row

        sig = one(
            "SELECT COUNT(*) AS n, MIN(created_at) AS t FROM signals WHERE state IN ("
            + ",".join(f"'{s}'" for s in OPEN_STATES)
            + ")"
        )
        inbound = one("SELECT COUNT(*) AS n, MIN(received_at) AS t FROM inbound")
        outbox = one("SELECT COUNT(*) AS n, MIN(created_at) AS t FROM outbox")
        dedup = one("SELECT COUNT(*) AS n, MAX(expires_at) AS t FROM dedup")
        sent = one("SELECT COUNT(*) AS n, MIN(sent_at) AS t FROM sent")
        refs = one("SELECT COUNT(*) AS n, MIN(closed_at) AS t FROM refs_used")
        stats = one(
            "SELECT COUNT(*) AS n, MIN(month) AS a, MAX(month) AS b, SUM(count) AS c FROM stats"
        )
        audit = one("SELECT COUNT(*) AS n, MIN(at) AS t FROM audit")
        # Rate counters of automatic mail (mail_limits) and signals held in a flood.
        acks = one(
            "SELECT COUNT(*) AS n, MIN(at) AS t FROM"
            " (SELECT at FROM mail_log UNION ALL SELECT at FROM held)"
        )
        return Retention(
            open_signals=int(sig["n"]),
            oldest_open=sig["t"],
            accepted=int(inbound["n"]),
            oldest_accepted=inbound["t"],
            outbox=int(outbox["n"]),
            oldest_outbox=outbox["t"],
            dedup_records=int(dedup["n"]),
            dedup_last_expiry=dedup["t"],
            sent_ids=int(sent["n"]),
            oldest_sent_id=sent["t"],
            references_closed=int(refs["n"]),
            first_reference_closed=refs["t"],
            stats_rows=int(stats["n"]),
            stats_first_month=stats["a"],
            stats_last_month=stats["b"],
            stats_signals=int(stats["c"] or 0),
            audit_entries=int(audit["n"]),
            first_audit=audit["t"],
            ack_counters=int(acks["n"]),
            oldest_ack_counter=acks["t"],
        )

    def audit(self, action: str, ref: str | None, uid: int | None = None) -> None:
        self._c.execute(
            "INSERT INTO audit (at, action, ref, uid) VALUES (?,?,?,?)",
            (self.clock(), action, ref, uid),
        )

    def wrapped_keys(self) -> list[WrappedKey]:
        """Every data key as its row keeps it, for rotation."""
        return [
            WrappedKey(table, r["id"], r["key_id"], r["wrapped_key"])
            for table in KEYED_TABLES
            for r in self._c.execute(f"SELECT id, key_id, wrapped_key FROM {table}")
        ]

    def vacuum(self) -> None:
        self._c.execute("VACUUM")
        self.checkpoint()

    def expire(self, now: float, dedup_window: float, rate_window: float) -> None:
        with self.transaction():
            self._c.execute(
                "DELETE FROM dedup WHERE expires_at IS NOT NULL AND expires_at < ?", (now,)
            )
            self._c.execute("DELETE FROM mail_log WHERE at < ?", (now - rate_window,))
            self._c.execute(
                # Remembered Message-IDs hold no content; they go with the dedup window,
                # except while their signal is open (replies to them must be recognised).
                "DELETE FROM sent WHERE sent_at < ?"
                " AND (ref IS NULL OR ref NOT IN (SELECT ref FROM signals))",
                (now - dedup_window,),
            )
            self._c.execute(
                "DELETE FROM mailbox_keys WHERE status = ? AND seen_at < ?",
                (KeyStatus.EXPUNGED, now - dedup_window),
            )
            # Looks (status, stats, lists — a monitor may ask every minute) are kept a
            # year; what changed something is kept for good.
            self._c.execute(
                "DELETE FROM audit WHERE at < ? AND action NOT IN ("
                + _marks(len(AUDIT_KEPT_FOR_GOOD))
                + ")",
                (now - AUDIT_LOOKS_KEPT, *AUDIT_KEPT_FOR_GOOD),
            )
