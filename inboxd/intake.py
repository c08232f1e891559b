"""Intake: from the mailbox to the encrypted queue, then out of the mailbox.

Two steps, each one transaction per batch (one fsync for many messages):

1. **accept**: fetch → seal each message as it came → commit → hard-delete the
   originals. Nothing is parsed yet, so a message leaves the mailbox as fast as the
   server hands it over, and no message can hold the others up.
2. **process**: open what was accepted → parse → classify → a signal with its
   acknowledgement and triage requests (or a command, a follow-up, an automatic
   answer) → commit, in the same transaction that removes the accepted copy.

A crash anywhere loses nothing and doubles nothing: before the first commit the
message is in the mailbox; after it, the store holds it sealed and knows its key
(the expunge is finished on the next start); after the second, it is a signal.
With ``retain_in_mailbox = "forwarded"`` the key waits as ``accepted`` until step 2
decides whether the original stays.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from inboxd.classify import Context, Decision, Kind, classify, mentioned_ids, references_in
from inboxd.config import Config
from inboxd.crypto import Keyring, signal_token
from inboxd.dedup import without_trace
from inboxd.evidence import Evidence
from inboxd.lifecycle import KeyStatus, MailKind
from inboxd.logs import get_logger
from inboxd.mail_limits import (
    FLOOD_VERIFIED,
    LimitClass,
    budget,
    notice_reserve,
    release_order,
)
from inboxd.mailbox.base import Mailbox, MailboxItem, verify_deletion
from inboxd.mailer import Mailer, iso
from inboxd.outbox import AttachRef
from inboxd.pace import Beat, rest
from inboxd.parsing import ParsedMessage, parse_message, unreadable
from inboxd.references import new_reference
from inboxd.store import Inbound, NewSignal, Signal, SignalUpdate, Store, Transaction
from inboxd.templates import Templates

log = get_logger(__name__)

MAX_TRIAGE_TEXT = 200_000
BATCH_MESSAGES = 50
# Accepting costs little per message (no parsing), so a bigger batch spreads the
# commit, the fetch round trip and the UID EXPUNGE over more messages.
ACCEPT_BATCH_MESSAGES = 200
BATCH_BYTES = 32 * 1024 * 1024
# Deleted keys checked per call: each Message-ID costs a search in every folder.
VERIFY_SLICE = 100


@dataclass
class IntakeResult:
    listed: int = 0
    accepted: int = 0
    queued: int = 0
    duplicates: int = 0
    handled: int = 0
    expunged: int = 0


class ReplyHandler(Protocol):
    """Commands, follow-ups and automatic answers to our own mail (the triage
    module); in the same transaction as intake."""

    def handle(
        self, tx: Transaction, item: MailboxItem, msg: ParsedMessage, decision: Decision
    ) -> tuple[KeyStatus, str | None]:
        """The mailbox key's fate (expunge or retained) and the signal it belongs to."""
        ...

    def auto_answer(self, tx: Transaction, msg: ParsedMessage, decision: Decision) -> None:
        """What an automatic answer to one of our mails means (a forward's bounce)."""
        ...


def ack_skip_reason(msg: ParsedMessage, decision: Decision, cfg: Config) -> str | None:
    """Why a new signal gets no acknowledgement, or None when it gets one (the rate
    limit is the mailer's, like every automatic mail's)."""
    if "auto" in decision.flags:
        return "auto"
    if msg.from_addr is None:
        return "no_sender"
    if msg.from_addr in {cfg.from_address}:
        return "own_address"
    domain = msg.from_addr.rsplit("@", 1)[-1]
    if domain not in {d.lower() for d in cfg.reporters.ack_domains}:
        return "outside_ack_domains"
    if decision.quiet:
        return "answers_inboxd"
    return None


def _never() -> bool:
    """The default ``should_stop``: go on until the work is done."""
    return False


@dataclass(frozen=True)
class Pace:
    """How a long step makes way: ``beat`` is called between messages and between
    batches (the daemon feeds the systemd watchdog there), ``should_stop`` between
    batches."""

    should_stop: Callable[[], bool] = _never
    beat: Beat = rest


STEADY = Pace()


@dataclass
class Intake:
    cfg: Config
    store: Store
    keyring: Keyring
    mailbox: Mailbox
    mailer: Mailer
    templates: Templates
    clock: Callable[[], float]
    replies: ReplyHandler
    batch_messages: int = BATCH_MESSAGES
    accept_batch_messages: int = ACCEPT_BATCH_MESSAGES
    batch_bytes: int = BATCH_BYTES
    _context_base: Context | None = field(default=None, init=False)
    # Message-IDs of messages listed but not yet deleted (retained ones stay until
    # their signal is deleted), and keys deleted but not yet verified. Memory only:
    # after a restart a leftover key is still verified, by key alone.
    _message_ids: dict[str, str] = field(default_factory=dict, init=False)
    _unverified: list[str] = field(default_factory=list, init=False)

    def context(self) -> Context:
        if self._context_base is None:
            self._context_base = Context(
                prefix=self.cfg.reference_prefix,
                functionarissen=frozenset(self.cfg.triage.functionarissen),
                own_addresses=frozenset({self.cfg.from_address}),
                ack_domains=frozenset(d.lower() for d in self.cfg.reporters.ack_domains),
                sources={k: frozenset(v.addresses) for k, v in self.cfg.sources.items()},
                evidence=self.cfg.evidence_policy,
            )
        return self._context_base

    def run_once(self, should_stop: Callable[[], bool] = _never, beat: Beat = rest) -> IntakeResult:
        """Both steps, at the :class:`Pace` ``should_stop`` and ``beat`` give."""
        pace = Pace(should_stop, beat)
        result = self.accept(pace=pace)
        self.process(result, pace)
        self._verify(beat)
        return result

    def accept(self, result: IntakeResult | None = None, pace: Pace = STEADY) -> IntakeResult:
        """Step 1: whatever is new in the mailbox, sealed and committed, then deleted."""
        result = result or IntakeResult()
        beat = pace.beat
        self._expunge(self.store.keys_to_expunge(), result)
        keys = self.mailbox.list_new()
        result.listed = len(keys)
        beat()
        known = self.store.mailbox_key_status(keys)
        fresh = [k for k in keys if k not in known]
        batch: list[MailboxItem] = []
        size = 0
        for item in self._fetch(fresh, beat):
            beat()
            batch.append(item)
            size += len(item.raw)
            if len(batch) >= self.accept_batch_messages or size >= self.batch_bytes:
                self._accept(batch, result)
                beat()
                batch, size = [], 0
                if pace.should_stop():
                    break
        if batch:
            self._accept(batch, result)
        self.store.set_meta("last_fetch", str(self.clock()))
        return result

    def _fetch(self, keys: Sequence[str], beat: Beat) -> Iterator[MailboxItem]:
        """``mailbox.fetch`` a slice of keys at a time: a backlog of thousands is sized
        and fetched in steps with a beat between them, not in one long go."""
        step = self.accept_batch_messages
        for i in range(0, len(keys), step):
            beat()
            yield from self.mailbox.fetch(keys[i : i + step], beat=beat)

    def _accept(self, items: list[MailboxItem], result: IntakeResult) -> None:
        status = (
            KeyStatus.ACCEPTED
            if self.cfg.mailbox.retain_in_mailbox == "forwarded"
            else KeyStatus.EXPUNGE
        )
        with self.store.transaction() as tx:
            for item in items:
                tx.accept(item.key, item.raw, status)
        result.accepted += len(items)
        self._expunge(self.store.keys_to_expunge(), result)

    def process(self, result: IntakeResult | None = None, pace: Pace = STEADY) -> IntakeResult:
        """Step 2: everything accepted (now or before a crash) becomes what it is."""
        result = result or IntakeResult()
        while True:
            pace.beat()
            batch = self.store.inbound(self.batch_messages, self.batch_bytes)
            if not batch:
                break
            self._commit(batch, result, pace.beat)
            if pace.should_stop():
                break
        return result

    def _verify(self, beat: Beat = rest) -> None:
        """Once per cycle rather than per batch: a backlog costs a few checks, not one
        folder walk per 50 messages; in slices with a beat between them."""
        keys, self._unverified = self._unverified, []
        for i in range(0, len(keys), VERIFY_SLICE):
            part = keys[i : i + VERIFY_SLICE]
            ids = [self._message_ids.pop(k) for k in part if k in self._message_ids]
            verify_deletion(self.mailbox, part, ids)
            beat()

    def _expunge(self, keys: Sequence[str], result: IntakeResult) -> None:
        if not keys:
            return
        self.mailbox.delete(keys)
        self.store.mark_expunged(keys)
        result.expunged += len(keys)
        self._unverified.extend(keys)

    def _commit(self, accepted: list[Inbound], result: IntakeResult, beat: Beat = rest) -> None:
        seen_digests: set[bytes] = set()
        with self.store.transaction() as tx:
            for a in accepted:
                beat()
                tx.processed(a.id)
                item = MailboxItem(a.mailbox_key, a.raw)
                try:
                    with tx.savepoint():
                        self._one(tx, item, seen_digests, result, a.received_at)
                except Exception as exc:
                    # A message that trips a bug must neither be lost nor block the
                    # queue: keep it raw, flagged, for a person to look at.
                    log.error(
                        "intake.unprocessable",
                        error=type(exc).__name__,
                        size=len(item.raw),
                        exc_info=True,
                    )
                    with tx.savepoint():
                        self._unprocessable(tx, item, result, a.received_at)
        self._expunge(self.store.keys_to_expunge(), result)

    def _unprocessable(
        self, tx: Transaction, item: MailboxItem, result: IntakeResult, received_at: float
    ) -> None:
        msg = unreadable(len(item.raw), "unprocessable")
        decision = Decision(Kind.SIGNAL, frozenset({"malformed", "unprocessable"}), source="extern")
        digest = self.keyring.dedup_digests(None, *without_trace(item.raw))[0]
        self.new_signal(tx, item, msg, decision, (digest,), received_at=received_at)
        result.queued += 1

    def _lookup_context(self, msg: ParsedMessage) -> Context:
        base = self.context()
        sent = self.store.sent_kinds(
            mentioned_ids(msg) + ((msg.message_id,) if msg.message_id else ())
        )
        open_reporters: dict[str, str | None] = {}
        for ref in references_in(msg, base.prefix):
            signal = self.store.signal_by_ref(ref)
            if signal is not None:
                reporter = self.store.read_field(signal, "reporter")
                open_reporters[ref] = reporter.decode() if reporter else None
        return Context(**{**base.__dict__, "sent": sent, "open_reporters": open_reporters})

    def _one(
        self,
        tx: Transaction,
        item: MailboxItem,
        seen: set[bytes],
        result: IntakeResult,
        received_at: float,
    ) -> None:
        """One accepted message becomes what it is: a duplicate (dropped), a new
        signal, or a reply or automatic answer handed to triage."""
        msg = parse_message(item.raw)
        if msg.message_id:
            self._message_ids[item.key] = msg.message_id
        # The same message delivered twice (other trace headers, same everything
        # else) is one; another message under a Message-ID seen before is its own.
        digests = self.keyring.dedup_digests(msg.message_id, *without_trace(item.raw))
        if digests[0] in seen or self.store.has_dedup(digests):
            self._duplicate(tx, item, msg, result)
            return
        seen.add(digests[0])
        decision, remember = self._decide(msg, digests[0])
        if decision.kind is Kind.SIGNAL:
            self.new_signal(tx, item, msg, decision, remember, received_at=received_at)
            result.queued += 1
            return
        if decision.kind in (Kind.COMMAND, Kind.FOLLOWUP):
            fate, signal_id = self.replies.handle(tx, item, msg, decision)
        else:
            fate, signal_id = self._auto_answer(tx, msg, decision), None
        for d in remember:
            tx.add_dedup(d, None, self.clock() + self.cfg.dedup_window)
        tx.record_key(item.key, fate, signal_id)
        result.handled += 1

    def _duplicate(
        self, tx: Transaction, item: MailboxItem, msg: ParsedMessage, result: IntakeResult
    ) -> None:
        tx.record_key(item.key, KeyStatus.EXPUNGE)
        result.duplicates += 1
        # A command delivered again acts once, and gets no answer: an identical
        # copy is a relay's retry or a loop, and answering a loop feeds it.
        command = msg.from_addr in self.context().functionarissen and bool(
            references_in(msg, self.cfg.reference_prefix)
        )
        log.info(
            "command.duplicate" if command else "signal.duplicate",
            size=msg.size,
            reason="redelivered",
        )

    def _decide(self, msg: ParsedMessage, digest: bytes) -> tuple[Decision, tuple[bytes, ...]]:
        """What the message is, and the dedup digests to remember it by."""
        id_digests = self.keyring.message_id_digests(msg.message_id) if msg.message_id else []
        decision = classify(msg, self._lookup_context(msg))
        if id_digests and decision.kind is Kind.SIGNAL and self.store.has_dedup(id_digests):
            decision = replace(decision, flags=decision.flags | {"message_id_reused"})
        log.info(
            "mail.received",
            kind=decision.kind.value,
            size=msg.size,
            flags=sorted(decision.flags),
            evidence=decision.evidence.value,
        )
        return decision, (digest, *id_digests[:1])

    def _auto_answer(self, tx: Transaction, msg: ParsedMessage, decision: Decision) -> KeyStatus:
        """Automatic answers to our own mail, and our own mail come back: nothing to
        keep, but never silently: the event says what it was."""
        answered = sorted({k for k, _ in decision.answers})
        log.info("mail.auto_answer", kind=decision.kind.value, mail_kind=",".join(answered) or None)
        self.replies.auto_answer(tx, msg, decision)
        return KeyStatus.EXPUNGE

    def new_reference(self) -> str:
        while True:
            ref = new_reference(self.cfg.reference_prefix)
            if not self.store.ref_in_use(ref):
                return ref

    def new_signal(
        self,
        tx: Transaction,
        item: MailboxItem | None,
        msg: ParsedMessage,
        decision: Decision,
        digests: Sequence[bytes],
        raw: bytes | None = None,
        *,
        received_at: float | None = None,
    ) -> Signal:
        raw_bytes = item.raw if item is not None else (raw or b"")
        ref = self.new_reference()
        flags = set(decision.flags)
        held_from = self._flooded(tx, msg)
        if held_from is not None:
            flags.add("flood")
            if decision.evidence is Evidence.VERIFIED:
                flags.add(FLOOD_VERIFIED)  # released before the unverified
        retain = self.cfg.mailbox.retain_in_mailbox == "forwarded"
        fields = {"raw": raw_bytes, "subject": msg.subject.encode()}
        if msg.from_addr:
            fields["reporter"] = msg.from_addr.encode()
        if msg.message_id:
            fields["message_id"] = msg.message_id.encode()
        signal = tx.add_signal(
            NewSignal(
                ref=ref,
                source=decision.source,
                flags=flags,
                size=msg.size,
                attachment_count=msg.attachment_count,
                fields=fields,
                received_at=self.clock() if received_at is None else received_at,
                dedup_digest=digests[0] if digests else None,
                mailbox_key=item.key if item is not None else None,
                retain=retain,
            )
        )
        for d in digests[1:]:
            tx.add_dedup(d, signal.id, None)
        log.info(
            "signal.queued", ref=ref, size=msg.size, flags=sorted(signal.flags), state=signal.state
        )
        self._acknowledge(tx, signal, msg, decision)
        if held_from is not None:
            tx.hold(held_from, signal.id)
            log.warning("triage_request.held", ref=ref, reason="flood")
        else:
            self.triage_requests(tx, signal, msg, tx.data_key(signal), related=decision.refs)
        return signal

    def _flooded(self, tx: Transaction, msg: ParsedMessage) -> bytes | None:
        """Counts the signal against its sender; the sender's digest when the signal
        is to be held without a triage request (the sender's hour is full, or a
        functionaris' is down to the reserve for signals already in triage), else
        None."""
        sender = self.keyring.sender_digest(msg.from_addr or "")
        n, window = budget(LimitClass.SIGNAL, self.cfg)
        recent = tx.mails_since(sender, LimitClass.SIGNAL.value, self.clock() - window, n)
        tx.record_mail(sender, LimitClass.SIGNAL.value)
        if recent >= n or self.mailer.notices_left(tx) <= notice_reserve(self.cfg):
            return sender
        return None

    def release_held(self, beat: Beat = rest) -> int:
        """Held signals get their triage request after all, those from verified
        senders first, then oldest first, senders taking turns
        (:func:`~inboxd.mail_limits.release_order`), as long as the
        sender's ``request_limit`` and every functionaris' ``notice_limit`` (less a
        reserve for notices about signals already in triage) have room. A released
        signal counts against its sender like a new one. Each release is one
        savepoint: its requests are queued and it leaves the queue together, or not at
        all (exactly once, whatever stops the process). Returns how many."""
        released = 0
        with self.store.transaction() as tx:
            held = tx.held_signals()
            room = self.mailer.notices_left(tx) - notice_reserve(self.cfg)
            n, window = budget(LimitClass.SIGNAL, self.cfg)
            since = self.clock() - window
            sender_room: dict[bytes, int] = {}
            verified = self._verified(tx, [i for i, _, _ in held]) if room > 0 else set()
            for signal_id, sender in release_order([(i, s) for i, s, _ in held], verified):
                if room <= 0:
                    break
                if sender not in sender_room:
                    sender_room[sender] = n - tx.mails_since(
                        sender, LimitClass.SIGNAL.value, since, n
                    )
                if sender_room[sender] <= 0:
                    continue
                beat()
                try:
                    with tx.savepoint():
                        self._release(tx, signal_id, sender)
                except _Suppressed:
                    # The budget check above said there was room: whatever took it,
                    # the request must not vanish; it waits for the next release.
                    log.warning("triage_request.release_stopped", reason="rate_limited")
                    break
                sender_room[sender] -= 1
                room -= 1
                released += 1
            left = len(held) - released
        if released:
            log.warning("flood.released", count=released, held=left)
        return released

    @staticmethod
    def _verified(tx: Transaction, signal_ids: Sequence[str]) -> set[str]:
        """The held signals whose sender evidence was verified when they came in."""
        return {
            i for i in signal_ids if (s := tx.signal(i)) is not None and FLOOD_VERIFIED in s.flags
        }

    def _release(self, tx: Transaction, signal_id: str, sender: bytes) -> None:
        signal = tx.signal(signal_id)
        tx.released(signal_id)
        if signal is None:
            return
        raw = tx.read_field(signal, "raw") or b""
        try:
            msg = parse_message(raw)
        except Exception:
            # It was queued as unprocessable: triaged as intake triaged such a one.
            msg = unreadable(len(raw), "unprocessable")
        # "flood" means "still waiting for its triage request" (status, digest);
        # the request itself says the signal came late, and why.
        signal = tx.update_signal(
            signal,
            SignalUpdate(flags=(signal.flags - {"flood", FLOOD_VERIFIED}) | {"flood_delayed"}),
        )
        queued = self.triage_requests(
            tx,
            signal,
            msg,
            tx.data_key(signal),
            related=references_in(msg, self.cfg.reference_prefix),
        )
        if None in queued:
            raise _Suppressed
        tx.record_mail(sender, LimitClass.SIGNAL.value)
        log.info("triage_request.released", ref=signal.ref)

    def _acknowledge(
        self, tx: Transaction, signal: Signal, msg: ParsedMessage, decision: Decision
    ) -> None:
        reason = ack_skip_reason(msg, decision, self.cfg)
        if reason is not None:
            log.info("ack.skipped", ref=signal.ref, reason=reason)
            return
        assert msg.from_addr is not None
        self.mailer.queue(
            tx,
            MailKind.ACK,
            "ack",
            msg.from_addr,
            {"ref": signal.ref},
            ref=signal.ref,
            answers=msg.message_id,
        )

    def triage_requests(
        self,
        tx: Transaction,
        signal: Signal,
        msg: ParsedMessage,
        data_key: bytes,
        related: tuple[str, ...] = (),
    ) -> list[str | None]:
        """One request per functionaris; their Message-IDs (None: not sent, over the
        budget)."""
        include = self.cfg.triage.include_content
        context = {
            "ref": signal.ref,
            "token": signal_token(data_key, signal.ref),
            "drill": "drill" in signal.flags,
            "received": iso(signal.created_at),
            "source": signal.source,
            "size": signal.size,
            "attachment_count": signal.attachment_count,
            "flags": sorted(signal.flags),
            # References the mail mentions: a follow-up to a signal already deleted
            # comes in as a new signal, and this is how triage sees the link.
            "related": [r for r in related if r != signal.ref],
            "destinations": [k.upper() for k in self.cfg.destinations],
            "include_content": include,
            "reporter": msg.from_addr or self.templates.phrase("mail", "unknown_sender"),
            "subject": msg.subject,
            "text": msg.text[:MAX_TRIAGE_TEXT] if include != "none" else "",
        }
        name = self.templates.phrase("mail", "signal_attachment")
        attach = (AttachRef(signal.ref, "raw", name),) if include == "full" else ()
        return [
            self.mailer.queue(
                tx,
                MailKind.TRIAGE_REQUEST,
                "triage_request",
                f,
                context,
                ref=signal.ref,
                attach=attach,
            )
            for f in self.cfg.triage.functionarissen
        ]


class _Suppressed(Exception):
    """A released signal's triage request was not queued: undo that release."""


def status_snapshot(store: Store, now: float) -> dict[str, object]:
    by_state = store.counts_by_state()
    oldest = store.oldest_open()

    def ts(key: str) -> str | None:
        v = store.get_meta(key)
        return (
            None
            if v is None
            else dt.datetime.fromtimestamp(float(v), dt.UTC).isoformat().replace("+00:00", "Z")
        )

    last_error_raw = store.get_meta("last_error")
    last_error = None
    if last_error_raw:
        e = json.loads(last_error_raw)
        last_error = {
            "event": e.get("event"),
            "at": dt.datetime.fromtimestamp(e.get("at", 0), dt.UTC)
            .isoformat()
            .replace("+00:00", "Z"),
        }
    return {
        "open": sum(by_state.values()),
        "by_state": by_state,
        "flags": store.flag_counts(),
        "oldest_open_seconds": None if oldest is None else round(now - oldest),
        "last_fetch": ts("last_fetch"),
        "last_send": ts("last_send"),
        "last_error": last_error,
        "outbox": store.outbox_size(),
        # Taken from the mailbox, sealed, not yet processed (a stop between the steps).
        "accepted": store.inbound_count(),
        # Deleted, but not yet shredded (a reader holds the store's log): the privacy
        # promise waits on it, so it is shown, not only logged.
        "shred_pending": store.shred_pending(),
    }
