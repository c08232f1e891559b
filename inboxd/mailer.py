"""inboxd's own mails: rendered from the templates, held to each recipient's budget
(:mod:`inboxd.mail_limits`), encrypted to a recipient with a certificate, and put in
the outbox of the transaction that decided them. Intake, triage, the end of a
signal and the timed jobs all send through one :class:`Mailer`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from inboxd.config import Config
from inboxd.crypto import Keyring
from inboxd.lifecycle import AnyMailKind
from inboxd.logs import get_logger
from inboxd.mail_limits import LimitClass, budget, limit_class
from inboxd.mails import Mail, is_msg_id, new_message_id
from inboxd.outbox import AttachRef, entry
from inboxd.store import Transaction
from inboxd.templates import Templates

log = get_logger(__name__)


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass
class Mailer:
    """Builds inboxd's own mails and puts them in the outbox of a transaction."""

    cfg: Config
    templates: Templates
    clock: Callable[[], float]
    keyring: Keyring

    @property
    def domain(self) -> str:
        return self.cfg.from_address.rsplit("@", 1)[-1]

    def queue(
        self,
        tx: Transaction,
        kind: AnyMailKind,
        template: str,
        to: str,
        context: dict[str, object],
        *,
        ref: str | None,
        answers: str | None = None,
        attach: tuple[AttachRef, ...] = (),
        quiet: bool = False,
    ) -> str | None:
        """The new mail's Message-ID, or None when it is not sent: ``quiet`` (it would
        answer an answer) or past the recipient's budget (``mail_limits``)."""
        if quiet:
            log.info("mail.suppressed", mail_kind=kind, ref=ref, reason="answers_inboxd")
            return None
        if not self.within_budget(tx, kind, to):
            log.warning("mail.suppressed", mail_kind=kind, ref=ref, reason="rate_limited")
            return None
        r = self.templates.render(template, context)
        # A sender's odd Message-ID is not worth losing the mail over: leave it out.
        answers_header = None if answers is not None and not is_msg_id(answers) else answers
        mail = Mail(
            sender=self.cfg.smtp.from_,
            to=to,
            subject=r.subject,
            body=r.body,
            message_id=new_message_id(self.domain),
            auto_submitted="auto-replied" if answers else "auto-generated",
            in_reply_to=answers_header,
            references=(answers_header,) if answers_header else (),
            date=self.clock(),
        )
        smime = None
        certificate = self.certificates.get(to.lower())
        if certificate:
            smime = (certificate, self.templates.phrase("mail", "secure_subject", ref=ref or ""))
        tx.enqueue(entry(kind, mail, self.cfg.from_address, ref, attach, smime))
        return mail.message_id

    def within_budget(self, tx: Transaction, kind: AnyMailKind, to: str) -> bool:
        """Counts the mail against ``to``'s budget when there is room for it."""
        cls = limit_class(kind)
        if cls is None:
            return True
        n, window = budget(cls, self.cfg)
        who = self.keyring.sender_digest(to)
        if tx.mails_since(who, cls.value, self.clock() - window, n) >= n:
            return False
        tx.record_mail(who, cls.value)
        return True

    def notices_left(self, tx: Transaction) -> int:
        """How many more notices every functionaris may get in this hour."""
        n, window = budget(LimitClass.NOTICE, self.cfg)
        since = self.clock() - window
        return min(
            (
                n - tx.mails_since(self.keyring.sender_digest(f), LimitClass.NOTICE.value, since, n)
                for f in self.cfg.triage.functionarissen
            ),
            default=n,
        )

    @property
    def certificates(self) -> dict[str, str]:
        """Recipients with an S/MIME certificate: everything sent to them is encrypted."""
        certs = {a.lower(): p for a, p in self.cfg.triage.certificates.items() if p}
        for d in self.cfg.destinations.values():
            if d.certificate:
                certs[d.address] = d.certificate
        return certs
