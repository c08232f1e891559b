"""The durable, encrypted store: what the core may ask of it.

Plain text there: references, states, timestamps, destinations, form, flags,
counters. Everything a person wrote or is (raw mail, addresses, subjects, follow-ups,
questions, outgoing mail) is sealed with a per-row data key that the keyring wraps.
Deleting a signal deletes its key, and the transaction that does it is followed at
once by shredding: no file of the state directory keeps a byte of it.

The core, the scheduler and the admin commands talk to :class:`Store` and
:class:`Transaction` only. :class:`inboxd.sqlite_store.SqliteStore` is the one
implementation, and :func:`inboxd.app.open_store` the one place that names it (a
PostgreSQL store for an active/standby pair could implement the same protocols).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from inboxd.lifecycle import OPEN_STATES, AnyMailKind, KeyStatus, SignalState


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
    """What the core, the jobs and the admin commands need from durable storage."""

    def transaction(self) -> AbstractContextManager[Transaction]: ...
    # intake
    def ref_in_use(self, ref: str) -> bool: ...
    def mailbox_key_status(self, keys: Sequence[str]) -> dict[str, KeyStatus]: ...
    def has_dedup(self, digests: Sequence[bytes]) -> bool: ...
    def held_summary(self) -> tuple[int, int, float, float] | None: ...
    def keys_to_expunge(self) -> list[str]: ...
    def inbound(self, limit_messages: int, limit_bytes: int) -> list[Inbound]: ...
    def inbound_count(self) -> int: ...
    def shred_pending(self) -> int:
        """Deletions committed and not yet made true on disk (a reader holds the
        shredding up): what ``status`` and the metrics show."""
        ...

    def mark_expunged(self, keys: Sequence[str]) -> None: ...
    # outbox
    def due_mail(self, now: float, limit: int = 100) -> list[DueMail]: ...
    def outbox_size(self) -> int: ...
    def mail_sent(
        self, mail: DueMail, now: float, then: Callable[[Transaction], None] | None = None
    ) -> None: ...
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
