"""The tables of the SQLite store, and what an older store gets when it is opened.

A store written by any earlier release opens unchanged: new tables and indexes are
created if missing, a column added since is added (``NULL`` for old rows), and data
kept the old way is brought into the new tables once.
"""

from __future__ import annotations

import sqlite3

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


def prepare(conn: sqlite3.Connection) -> None:
    """Create what is missing and bring an older store's rows up to date."""
    conn.executescript(_SCHEMA)
    # Stores made before the audit recorded the uid get the column (NULL for old rows).
    if "uid" not in {r[1] for r in conn.execute("PRAGMA table_info(audit)")}:
        conn.execute("ALTER TABLE audit ADD COLUMN uid INTEGER")
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
    )
    # Signals held before releases existed wait as well, under one unknown sender.
    conn.execute(
        "INSERT OR IGNORE INTO held_signals (signal_id, sender, at)"
        " SELECT id, X'', created_at FROM signals"
        " WHERE ',' || flags || ',' LIKE '%,flood,%'"
        " AND id NOT IN (SELECT signal_id FROM held_signals)"
    )
