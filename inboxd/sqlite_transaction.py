"""The SQLite store's writes: one transaction, and the reads it shares with the store.

Each row that holds anything a person wrote or is has a data key of its own, wrapped
by the keyring; its values are sealed under it (:mod:`inboxd.sealed_columns`).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from inboxd.crypto import Keyring, seal
from inboxd.lifecycle import (
    AnyMailKind,
    KeyStatus,
    MailKind,
    SignalState,
    check_transition,
    stored_kind,
)
from inboxd.sealed_columns import read_field, write_sealed
from inboxd.store import NewSignal, OutboxEntry, Signal, SignalUpdate, StoreError

# The tables whose rows each have a data key of their own.
KEYED_TABLES = ("signals", "outbox", "inbound")


def marks(n: int) -> str:
    return ",".join("?" * n)


def _listed(values: Iterable[str] | None) -> str | None:
    """A set of names as its column holds it: sorted, comma-separated."""
    return None if values is None else ",".join(sorted(values))


def known_kind(text: str) -> AnyMailKind | None:
    """A stored mail kind, or None for one no version of inboxd wrote."""
    try:
        return stored_kind(text)
    except ValueError:
        return None


def row_to_signal(row: sqlite3.Row) -> Signal:
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


class SqliteReads:
    """What a transaction and the store both read, on one connection."""

    def __init__(self, conn: sqlite3.Connection, keyring: Keyring) -> None:
        self._c = conn
        self.keyring = keyring

    def signal(self, signal_id: str) -> Signal | None:
        row = self._c.execute("SELECT * FROM signals WHERE id = ?", (signal_id,)).fetchone()
        return row_to_signal(row) if row else None

    def data_key(self, signal: Signal) -> bytes:
        row = self._c.execute(
            "SELECT key_id, wrapped_key FROM signals WHERE id = ?", (signal.id,)
        ).fetchone()
        if row is None:
            raise StoreError("signal is gone")
        return self.keyring.unwrap(row["key_id"], row["wrapped_key"], f"signal:{signal.id}")

    def read_field(self, signal: Signal, name: str) -> bytes | None:
        return read_field(self._c, signal.id, name, lambda: self.data_key(signal))

    def ref_closed(self, ref: str) -> bool:
        row = self._c.execute("SELECT closed_at FROM refs_used WHERE ref = ?", (ref,)).fetchone()
        return row is not None and row["closed_at"] is not None

    def set_meta(self, key: str, value: str) -> None:
        self._c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


class SqliteTransaction(SqliteReads):
    """Everything done through it commits together (:meth:`SqliteStore.transaction`)."""

    def __init__(self, conn: sqlite3.Connection, keyring: Keyring, now: float) -> None:
        super().__init__(conn, keyring)
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
        data_key = self.keyring.new_data_key()
        key_id, wrapped = self.keyring.wrap(data_key, f"signal:{s.id}")
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
            write_sealed(
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
        return row_to_signal(row)

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
        data_key = self.keyring.new_data_key()
        key_id, wrapped = self.keyring.wrap(data_key, f"inbound:{iid}")
        write_sealed(
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
        data_key = self.keyring.new_data_key()
        key_id, wrapped = self.keyring.wrap(data_key, f"outbox:{oid}")
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
        write_sealed(
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

    def pending_kinds(self, ref: str) -> list[AnyMailKind]:
        rows = self._c.execute("SELECT kind FROM outbox WHERE ref = ?", (ref,))
        return [kind for kind in (known_kind(r["kind"]) for r in rows) if kind is not None]

    def rewrap(self, table: str, row_id: str, key_id: str, wrapped: bytes) -> None:
        if table not in KEYED_TABLES:
            raise StoreError(f"{table} keeps no data keys")
        self._c.execute(
            f"UPDATE {table} SET key_id = ?, wrapped_key = ? WHERE id = ?",
            (key_id, wrapped, row_id),
        )
