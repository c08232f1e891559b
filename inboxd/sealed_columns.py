"""Sealed values in SQLite columns: each sealed under its row's data key, for its
owner and field, so a blob moved to another row or column does not open.

A value bigger than :data:`BIG_VALUE` is written and read through SQLite's
incremental blob I/O, a piece at a time: binding a 40 MB value makes SQLite copy it
whole.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from inboxd.crypto import open_from, open_sealed, seal, seal_to, sealed_size

BIG_VALUE = 1024 * 1024


def write_sealed(
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


def read_sealed(
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


def read_field(
    conn: sqlite3.Connection, signal_id: str, name: str, key: Callable[[], bytes]
) -> bytes | None:
    """A signal's sealed field, opened; ``key`` is asked only when the field exists."""
    row = conn.execute(
        "SELECT rowid, length(blob) FROM signal_fields WHERE signal_id = ? AND name = ?",
        (signal_id, name),
    ).fetchone()
    if row is None:
        return None
    return read_sealed(
        conn, "signal_fields", "blob", row[0], row[1], key(), f"signal:{signal_id}", name
    )
