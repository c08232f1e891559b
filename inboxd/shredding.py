"""Shredding: making a signal's deletion true in every file of the state directory.

``secure_delete`` zeroes a deleted row where it lies, but not the copies SQLite
leaves when it moves rows between pages (the unused middle of a page keeps them),
nor the old page images in the write-ahead log. So, after a deletion commits: VACUUM
rewrites every page from the live rows alone, and a TRUNCATE checkpoint copies the
result into the database file and cuts the log to zero bytes. Only then is each
deletion logged as ``signal.deleted`` and its entry in ``unshredded`` forgotten.

A checkpoint cannot finish while another connection reads an older snapshot: it is
retried for a while and then left for the next try (after the next deletion, the
scheduler's ``shred`` job, closing the store, or the next start) with a
``store.shred_pending`` warning. An in-memory database has no log: VACUUM is all
there is to do.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from inboxd.logs import get_logger

log = get_logger(__name__)

# How long shredding may wait for readers that keep the log from being emptied
# (another connection's open read, a command-line process) before it is left to
# the next try: the daemon's loop must not stall on it.
SHRED_WAIT = 1.0
_SHRED_BUSY_MS = 100

# (reference, outcome) of a deletion that has committed and is not yet shredded.
Owed = list[tuple[str, str]]

# The reason of an ``unshredded`` entry that is no signal: an outbox entry sent (or
# given up) after its signal ended — the reporter's feedback, the functionarissen's
# closing note. It is the last thing the store held about the signal (the reporter's
# address, sealed), so it is shredded as the signal was; it is no deletion of a
# signal to log.
SENT_AFTER_THE_END = "sent_after_the_end"


def shred(
    conn: sqlite3.Connection,
    transaction: Callable[[], AbstractContextManager[object]],
    *,
    empty_the_log: bool,
    wait: float = SHRED_WAIT,
) -> bool:
    """Shred what ``unshredded`` lists, then log and forget it. True when nothing is
    left to shred; never raises. ``empty_the_log``: False only for an in-memory
    database, which has no write-ahead log to empty."""
    owed = _owed(conn)
    if owed is None:
        return False
    if not owed:
        return True
    started = time.monotonic()
    if not _rewrite(conn, len(owed), empty_the_log=empty_the_log, deadline=started + wait):
        return False
    _log_deleted(owed, started)
    _forget(conn, transaction, owed)
    return True


def _owed(conn: sqlite3.Connection) -> Owed | None:
    try:
        return [
            (r[0], r[1]) for r in conn.execute("SELECT ref, reason FROM unshredded ORDER BY rowid")
        ]
    except sqlite3.Error as exc:
        log.error("store.shred_pending", error=type(exc).__name__)
        return None


def _rewrite(conn: sqlite3.Connection, count: int, *, empty_the_log: bool, deadline: float) -> bool:
    """VACUUM once, then empty the log, retrying while readers hold it up; a short
    busy wait meanwhile, so that each try returns soon."""
    (previous_busy_ms,) = conn.execute("PRAGMA busy_timeout").fetchone()
    conn.execute(f"PRAGMA busy_timeout = {_SHRED_BUSY_MS}")
    try:
        vacuumed = False
        while True:
            try:
                if not vacuumed:
                    conn.execute("VACUUM")
                    vacuumed = True
                if not empty_the_log or _log_emptied(conn):
                    return True
            except sqlite3.Error as exc:
                if not _busy(exc):
                    # A statement of this connection still running ("SQL statements
                    # in progress"), a full disk: waiting here would not help.
                    log.warning("store.shred_pending", count=count, error=type(exc).__name__)
                    return False
            if time.monotonic() >= deadline:
                log.warning("store.shred_pending", count=count, reason="busy")
                return False
            time.sleep(0.02)  # a checkpoint that returns busy at once must not spin
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(previous_busy_ms)}")


def _log_emptied(conn: sqlite3.Connection) -> bool:
    """Every frame of the log is in the database file and the log is cut to zero."""
    busy, frames, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return bool(busy == 0 and frames == 0)


def _busy(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _log_deleted(owed: Owed, started: float) -> None:
    duration_ms = round((time.monotonic() - started) * 1000)
    for ref, outcome in owed:
        if outcome == SENT_AFTER_THE_END:
            continue
        log.info(
            "signal.deleted", ref=ref, state="deleted", reason=outcome, duration_ms=duration_ms
        )


def _forget(
    conn: sqlite3.Connection,
    transaction: Callable[[], AbstractContextManager[object]],
    owed: Owed,
) -> None:
    try:
        with transaction():
            conn.executemany("DELETE FROM unshredded WHERE ref = ?", [(ref,) for ref, _ in owed])
    except sqlite3.Error as exc:
        # Shredded all the same; the next call shreds again and logs them again.
        log.warning("store.shred_pending", count=len(owed), error=type(exc).__name__)
