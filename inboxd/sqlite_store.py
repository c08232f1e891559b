"""The store on SQLite: opening it, its transactions, and what the core, the scheduler
and the admin commands read from it.

SQLite in WAL mode with ``synchronous=FULL`` (a commit is on disk when it returns)
and ``secure_delete=ON``; what a deletion leaves behind elsewhere in the files is
shredded (:mod:`inboxd.shredding`). The tables are :mod:`inboxd.store_schema`'s.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from inboxd.crypto import DecryptError, Keyring, open_sealed
from inboxd.lifecycle import (
    AFTER_THE_END,
    OPEN_STATES,
    AnyMailKind,
    KeyStatus,
    SignalState,
    stored_kind,
)
from inboxd.logs import get_logger
from inboxd.sealed_columns import read_sealed
from inboxd.shredding import SENT_AFTER_THE_END, SHRED_WAIT, shred
from inboxd.sqlite_transaction import (
    KEYED_TABLES,
    SqliteReads,
    SqliteTransaction,
    known_kind,
    marks,
    row_to_signal,
)
from inboxd.store import DueMail, Inbound, Retention, Signal, Transaction, WrappedKey
from inboxd.store_schema import prepare

log = get_logger(__name__)

FILE_NAME = "inboxd.sqlite3"
# How long a connection waits for another one's lock before SQLite says "busy".
BUSY_TIMEOUT = 30.0

# Audited admin actions that change something (a purge, a rotation; "purge"/"rotate"
# as stores before the admin socket named them) stay for good; the rest this long.
AUDIT_KEPT_FOR_GOOD = ("queue purge", "keys rotate", "purge", "rotate")
AUDIT_LOOKS_KEPT = 366 * 86400.0


def _connect(path: Path | None) -> sqlite3.Connection:
    if path is None:
        return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        return sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT
        )
    finally:
        os.umask(old_umask)


class SqliteStore(SqliteReads):
    """SQLite in WAL mode with ``synchronous=FULL`` and ``secure_delete=ON``."""

    def __init__(
        self,
        state_dir: str | Path | None,
        keyring: Keyring,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """The store in ``state_dir``; ``None``: a database in this process's memory,
        gone when it is closed (for tests that must leave nothing on disk)."""
        self.dir = None if state_dir is None else Path(state_dir)
        self.path = None if self.dir is None else self.dir / FILE_NAME
        super().__init__(_connect(self.path), keyring)
        self.clock = clock or time.time
        self._c.row_factory = sqlite3.Row
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA secure_delete=ON",
            "PRAGMA foreign_keys=ON",
        ):
            self._c.execute(pragma)
        # An in-memory database has no write-ahead log (SQLite keeps its journal in
        # memory too): shredding rewrites its pages and has no log to empty. A file
        # always has its log emptied: if it were not in WAL mode after all, shredding
        # would stay pending and say so, rather than take the log's absence on trust.
        self.in_memory = self.path is None
        prepare(self._c)
        # A process killed between a deletion's commit and its shredding left the
        # old bytes behind: they go before anything else is done with this store.
        self.shred()

    def close(self) -> None:
        try:
            self.shred(wait=5 * SHRED_WAIT)
            self.checkpoint()
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
        ``signal.deleted``; True when nothing is left to shred (:mod:`inboxd.shredding`)."""
        return shred(self._c, self.transaction, empty_the_log=not self.in_memory, wait=wait)

    # -- intake -------------------------------------------------------------
    def ref_in_use(self, ref: str) -> bool:
        return (
            self._c.execute("SELECT 1 FROM refs_used WHERE ref = ?", (ref,)).fetchone() is not None
        )

    def mailbox_key_status(self, keys: Sequence[str]) -> dict[str, KeyStatus]:
        out: dict[str, KeyStatus] = {}
        for i in range(0, len(keys), 500):
            chunk = list(keys[i : i + 500])
            q = "SELECT key, status FROM mailbox_keys WHERE key IN (" + marks(len(chunk)) + ")"
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
                raw = read_sealed(
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

    def shred_pending(self) -> int:
        return int(self._c.execute("SELECT COUNT(*) FROM unshredded").fetchone()[0])

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

    def mail_sent(
        self, mail: DueMail, now: float, then: Callable[[Transaction], None] | None = None
    ) -> None:
        """The server accepted ``mail``: forget it, remember its Message-ID, and run
        ``then(tx)`` in the same transaction (a forward's destination counts as done
        exactly when its mail leaves the outbox)."""
        with self.transaction() as tx:
            self._c.execute("DELETE FROM outbox WHERE id = ?", (mail.id,))
            self._owe_shred_of(mail)
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
                self._owe_shred_of(mail)
            else:
                self._c.execute(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?",
                    (next_attempt_at, error, mail.id),
                )

    def _owe_shred_of(self, mail: DueMail) -> None:
        """An entry that left the outbox after its signal ended is shredded with the
        next :meth:`shred` (the outbox calls it after each round), so that nothing
        about an ended signal outlasts the round that sent its last mail."""
        if mail.kind in AFTER_THE_END:
            self._c.execute(
                "INSERT OR REPLACE INTO unshredded (ref, reason) VALUES (?, ?)",
                (f"outbox:{mail.id}", SENT_AFTER_THE_END),
            )

    def sent_kinds(self, message_ids: Iterable[str]) -> dict[str, tuple[AnyMailKind, str | None]]:
        out: dict[str, tuple[AnyMailKind, str | None]] = {}
        for mid in message_ids:
            r = self._c.execute(
                "SELECT kind, ref FROM sent WHERE message_id = ?", (mid,)
            ).fetchone()
            kind = None if r is None else known_kind(r["kind"])
            if kind is not None:
                out[mid] = (kind, r["ref"])
        return out

    # -- signals ------------------------------------------------------------
    def signals(self, states: Sequence[SignalState] = OPEN_STATES) -> list[Signal]:
        q = "SELECT * FROM signals WHERE state IN (" + marks(len(states)) + ") ORDER BY created_at"
        return [row_to_signal(r) for r in self._c.execute(q, list(states))]

    def signal_by_ref(self, ref: str) -> Signal | None:
        row = self._c.execute("SELECT * FROM signals WHERE ref = ?", (ref,)).fetchone()
        return row_to_signal(row) if row else None

    # -- status -------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

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
            + marks(len(OPEN_STATES))
            + ")"
        )
        row = self._c.execute(q, list(OPEN_STATES)).fetchone()
        return None if row["t"] is None else float(row["t"])

    def checkpoint(self) -> None:
        """Everything in the log into the database file, the log cut to zero bytes
        (nothing to do without a log: an in-memory database)."""
        if not self.in_memory:
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
                + marks(len(AUDIT_KEPT_FOR_GOOD))
                + ")",
                (now - AUDIT_LOOKS_KEPT, *AUDIT_KEPT_FOR_GOOD),
            )
