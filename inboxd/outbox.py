"""The durable outbox: every mail inboxd sends is committed first, sent after.

An entry holds the mail's fields (sealed by the store) and *references* to the
signal data it attaches, so a triage request or a forward does not keep a second
copy of a large original; the attachment is read from the signal when the mail
goes out. The Message-ID is fixed at enqueue time, so a retry after a crash is the
same mail. A crash between the server's acceptance and the deletion of the entry
sends that one mail twice: the only duplicate window, and a documented one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

from inboxd.lifecycle import AFTER_THE_END, FORWARD, AnyMailKind, MailKind, forward_destination
from inboxd.logs import get_logger
from inboxd.mails import Attachment, HeaderInjection, Mail, render, render_pieces
from inboxd.pace import Beat, rest
from inboxd.smime import CertificateError, encrypt, load_certificate
from inboxd.store import DueMail, OutboxEntry, Store, Transaction
from inboxd.templates import TemplateError, Templates, shipped
from inboxd.transport.base import Envelope, Message, SendError, Transport, message_size

log = get_logger(__name__)

# Attachments larger than this (together) go to a transport that takes pieces as
# pieces (see ``transport.base.Message``); smaller mails are joined as before.
PIECES_FROM = 1024 * 1024


# Mails to the functionarissen that attach what came in: better without the
# attachment (they can still act on the reference) than not at all. A forward is
# not among them: without the signal it is pointless, so it fails and alerts.
LEAVE_OUT_WHEN_TOO_BIG = (MailKind.TRIAGE_REQUEST, MailKind.FOLLOWUP_NOTICE)

# What a stored entry that cannot become a mail raises (a header that would inject,
# an unusable certificate, a broken template or payload): failed, never retried.
UNBUILDABLE = (HeaderInjection, CertificateError, TemplateError, ValueError, KeyError, TypeError)


@dataclass(frozen=True)
class AttachRef:
    ref: str
    field: str
    filename: str


def entry(
    kind: AnyMailKind,
    mail: Mail,
    bounce_to: str,
    ref: str | None,
    attach: tuple[AttachRef, ...] = (),
    smime: tuple[str, str] | None = None,
) -> OutboxEntry:
    """``smime``: (certificate file, neutral outer subject) to encrypt the mail to."""
    body = asdict(mail)
    body["attachments"] = []
    payload = json.dumps(
        {
            "mail": body,
            "attach": [asdict(a) for a in attach],
            "smime": list(smime) if smime else None,
        }
    ).encode()
    return OutboxEntry(
        kind=kind,
        ref=ref,
        message_id=mail.message_id,
        sender=bounce_to,
        recipient=mail.to,
        payload=payload,
    )


def decode(payload: bytes) -> tuple[Mail, tuple[AttachRef, ...], tuple[str, str] | None]:
    data = json.loads(payload)
    m = data["mail"]
    m["references"] = tuple(m["references"])
    m["attachments"] = ()
    smime = data.get("smime")
    return (
        Mail(**m),
        tuple(AttachRef(**a) for a in data["attach"]),
        (smime[0], smime[1]) if smime else None,
    )


def reply_code(reason: str) -> str:
    """Only the status codes of a server's answer: the text can name the recipient."""
    import re

    m = re.search(r"\b([245]\d\d)\b(?:[ -]+([245]\.\d{1,3}\.\d{1,3}))?", reason)
    if not m:
        return "no-code"
    return " ".join(g for g in m.groups() if g)


def stops_the_round(exc: SendError) -> bool:
    """A temporary failure of the connection (or a server's request to be left
    alone): the rest of the round would fail the same way, or must not be tried."""
    reason = exc.reason.lower()
    return "connect" in reason or "unreachable" in reason or exc.retry_after is not None


def backoff(attempts: int) -> float:
    """1 min, 2, 4 … capped at an hour, with jitter so retries do not march in step."""
    return float(min(60.0 * 2**attempts, 3600.0) * random.uniform(0.8, 1.2))


@dataclass
class DrainResult:
    sent: int = 0
    retry: int = 0
    failed: int = 0
    unreachable: bool = False
    # Mail sent after its signal ended left the outbox: the round ends with a shred.
    after_the_end: bool = False


class Outcomes(Protocol):
    """Who hears how a mail left the outbox (triage: a forward accepted or given up)."""

    def mail_sent(self, tx: Transaction, due: DueMail) -> None:
        """Inside the transaction that removes ``due`` from the outbox."""
        ...

    def mail_given_up(self, due: DueMail, reason: str) -> None:
        """After ``due`` failed for good (unbuildable, refused, or out of retries)."""
        ...


class Outbox:
    def __init__(
        self,
        store: Store,
        transport: Transport,
        clock: Callable[[], float],
        retry_for: float,
        outcomes: Outcomes,
        templates: Templates | None = None,
    ) -> None:
        # The note on a left-out original (text/outbox.txt).
        self.templates = templates or shipped("nl")
        self.store = store
        self.transport = transport
        self.clock = clock
        self.retry_for = retry_for
        self.outcomes = outcomes

    def _attachments(self, refs: tuple[AttachRef, ...]) -> tuple[Attachment, ...]:
        out = []
        for a in refs:
            signal = self.store.signal_by_ref(a.ref)
            if signal is None:
                continue
            raw = self.store.read_field(signal, a.field)
            if raw is not None:
                out.append(Attachment(raw=raw, filename=a.filename))
        return tuple(out)

    def _build(
        self, mail: Mail, attachments: tuple[Attachment, ...], smime: tuple[str, str] | None
    ) -> Message:
        full = Mail(**{**asdict(mail), "attachments": attachments})
        if (
            smime is None
            and self.transport.takes_pieces
            and sum(len(a.raw) for a in attachments) > PIECES_FROM
        ):
            # Pieces: the transport sends the original from the bytes it was read
            # into, instead of from a second, joined copy of it.
            return render_pieces(full)
        data = render(full)
        if smime is not None:
            # Encrypted or not at all: a certificate that cannot be used stops the
            # mail, it never goes out in the clear instead.
            data = encrypt(data, [load_certificate(smime[0])], smime[1])
        return data

    def _too_big(self, data: Message) -> bool:
        try:
            limit = self.transport.size_limit()
        except SendError:
            return False  # the send itself will say what is wrong
        return limit is not None and message_size(data) > limit

    def drain(
        self,
        limit: int = 1000,
        should_stop: Callable[[], bool] = lambda: False,
        beat: Beat = rest,
    ) -> DrainResult:
        """Send what is due, up to ``limit`` mails. ``beat`` is called before each
        mail and, by the transport, while a large one goes out (the daemon feeds the
        systemd watchdog there)."""
        result = DrainResult()
        try:
            self._drain(result, limit, should_stop, beat)
        finally:
            if result.after_the_end:
                # A signal's feedback and closing note, once out of the outbox, are
                # shredded as the signal was: once a round, not once a mail.
                self.store.shred()
        return result

    def _drain(
        self, result: DrainResult, limit: int, should_stop: Callable[[], bool], beat: Beat
    ) -> None:
        while not should_stop():
            due = self.store.due_mail(self.clock(), limit=min(limit, 50))
            if not due:
                return
            for mail in due:
                beat()
                if should_stop():
                    return
                if not self._send_one(mail, result, beat):
                    # The server is unreachable: the rest would fail the same way.
                    return
                limit -= 1
                if limit <= 0:
                    return

    def _send_one(self, due: DueMail, result: DrainResult, beat: Beat = rest) -> bool:
        """Build and send one due mail and record the outcome; False when the rest
        of the round would fail the same way (or, throttled, must not be tried)."""
        now = self.clock()
        try:
            data = self._message_for(due)
        except UNBUILDABLE as exc:
            self._unbuildable(due, exc, result)
            return True
        try:
            # Pieces are only built for a transport with ``takes_pieces``.
            envelope = Envelope(sender=due.sender, recipient=due.recipient)
            self.transport.send(envelope, data, beat=beat)
        except SendError as exc:
            expired = now - due.created_at >= self.retry_for
            if exc.temporary and not expired:
                return self._retry_later(due, exc, now, result)
            self._failed(due, exc, now, result)
            return True
        self._sent(due, result)
        return True

    def _message_for(self, due: DueMail) -> Message:
        mail, refs, smime = decode(due.payload)
        data = self._build(mail, self._attachments(refs), smime)
        if refs and due.kind in LEAVE_OUT_WHEN_TOO_BIG and self._too_big(data):
            size = message_size(data)
            del data  # not two large mails in memory at once
            return self._without_attachments(due, mail, smime, size)
        return data

    def _without_attachments(
        self, due: DueMail, mail: Mail, smime: tuple[str, str] | None, size: int
    ) -> Message:
        """The functionarissen must hear of the signal even when the server will
        not carry the original: without it, and saying so."""
        note = self.templates.phrase(
            "outbox", "too_big_note", megabytes=max(1, round(size / 1_000_000))
        )
        body = f"{mail.body}\n\n{note}\n"
        data = self._build(Mail(**{**asdict(mail), "body": body}), (), smime)
        log.warning("mail.attachment_left_out", mail_kind=due.kind, ref=due.ref, size=size)
        return data

    def _unbuildable(self, due: DueMail, exc: Exception, result: DrainResult) -> None:
        log.error("mail.unbuildable", mail_kind=due.kind, ref=due.ref, error=type(exc).__name__)
        self.store.mail_failed(due, None, type(exc).__name__)
        self._given_up(due, type(exc).__name__, result)

    def _retry_later(self, due: DueMail, exc: SendError, now: float, result: DrainResult) -> bool:
        """Queue the mail again after its back-off; False when the server itself is
        the trouble."""
        # Never before the server's own back-off ends (Retry-After).
        delay = max(backoff(due.attempts), exc.retry_after or 0.0)
        self.store.mail_failed(due, now + delay, reply_code(exc.reason))
        log.warning(
            "mail.retry",
            mail_kind=due.kind,
            ref=due.ref,
            attempt=due.attempts + 1,
            delay=round(delay),
            code=reply_code(exc.reason),
        )
        result.retry += 1
        connection = stops_the_round(exc)
        if connection:
            result.unreachable = True
        self.store.set_meta("last_error", json.dumps({"event": "mail.retry", "at": now}))
        return not connection

    def _failed(self, due: DueMail, exc: SendError, now: float, result: DrainResult) -> None:
        self.store.mail_failed(due, None, reply_code(exc.reason))
        log.error(
            "mail.failed",
            mail_kind=due.kind,
            ref=due.ref,
            attempt=due.attempts + 1,
            code=reply_code(exc.reason),
        )
        self.store.set_meta("last_error", json.dumps({"event": "mail.failed", "at": now}))
        self._given_up(due, exc.reason, result)

    def _given_up(self, due: DueMail, reason: str, result: DrainResult) -> None:
        result.failed += 1
        result.after_the_end |= due.kind in AFTER_THE_END
        self.outcomes.mail_given_up(due, reason)

    def _sent(self, due: DueMail, result: DrainResult) -> None:
        self.store.mail_sent(due, self.clock(), then=lambda tx: self.outcomes.mail_sent(tx, due))
        result.after_the_end |= due.kind in AFTER_THE_END
        family = FORWARD if forward_destination(due.kind) is not None else due.kind
        log.info(f"{family}.sent", mail_kind=due.kind, ref=due.ref)
        result.sent += 1
