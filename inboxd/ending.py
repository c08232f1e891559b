"""The end of a signal: the one place that ends one, whichever way it ends.

Every destination accepted (a drill's end too), ``AFSLUITEN``, ``queue purge``: each
calls :meth:`Ending.end` inside the transaction that decided it. There it counts the
statistics (never a drill), queues the reporter's feedback and the functionarissen's
``triage_closed`` (not for a purge), and deletes the rows and the data key, marking
the mailbox copies for expunge. When that transaction commits, the store shreds
(:mod:`inboxd.shredding`) and only then logs ``signal.deleted``; a
process killed in between is shredded for at its next start.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from inboxd.config import Config
from inboxd.lifecycle import MailKind
from inboxd.mailer import Mailer
from inboxd.store import Signal, Store, Transaction


class End(enum.Enum):
    FORWARDED = "forwarded"  # every destination accepted the forward
    CLOSED = "closed"  # AFSLUITEN
    PURGED = "purged"  # an administrator's ``queue purge``


def month_of(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m")


def triage_bucket(seconds: float) -> str:
    days = seconds / 86400
    if days < 1:
        return "<1d"
    if days < 3:
        return "1-3d"
    if days < 7:
        return "3-7d"
    return ">=7d"


def outcome_of(end: End, destinations: Sequence[str]) -> str:
    """The statistics' outcome: the destinations joined with ``+``, ``afgesloten``
    or ``verwijderd``."""
    if end is End.PURGED:
        return "verwijderd"
    return "+".join(sorted(destinations)) if destinations else "afgesloten"


def within_ack_domains(cfg: Config, address: str) -> bool:
    """inboxd mails a reporter only inside ``reporters.ack_domains``."""
    return address.rsplit("@", 1)[-1] in {d.lower() for d in cfg.reporters.ack_domains}


@dataclass(frozen=True)
class Ending:
    cfg: Config
    store: Store
    # None for an administrator's purge without the service: it sends nothing (and
    # holds no master key to seal a mail with).
    mailer: Mailer | None = None

    def end(self, tx: Transaction, signal: Signal, end: End) -> None:
        """Everything but the shredding, in ``tx``; the store shreds on commit."""
        # What was passed on is what counts: a signal closed after some destination
        # accepted it (another refused it for good) was forwarded there, not "closed".
        destinations = {
            End.FORWARDED: signal.destinations,
            End.CLOSED: signal.done_destinations,
            End.PURGED: (),
        }[end]
        outcome = outcome_of(end, destinations)
        if "drill" not in signal.flags:
            tx.count(
                month_of(signal.created_at),
                signal.source,
                signal.form or "onbekend",
                outcome,
                triage_bucket(tx.now - signal.created_at),
            )
        if end is not End.PURGED:
            self._notify(tx, signal, outcome, destinations)
        tx.delete_signal(signal, tx.now + self.cfg.dedup_window, outcome)

    def _notify(
        self, tx: Transaction, signal: Signal, outcome: str, destinations: Sequence[str]
    ) -> None:
        mailer = self.mailer
        assert mailer is not None, "a signal that ends by triage has a mailer"
        reporter_raw = self.store.read_field(signal, "reporter")
        reporter = reporter_raw.decode() if reporter_raw else None
        if (
            reporter is not None
            and not signal.no_feedback
            and "auto" not in signal.flags
            and "answers_inboxd" not in signal.flags
            and within_ack_domains(self.cfg, reporter)
        ):
            template = "feedback_forwarded" if destinations else "feedback_closed"
            mailer.queue(tx, MailKind.FEEDBACK, template, reporter, {"ref": signal.ref}, ref=None)
        for f in self.cfg.triage.functionarissen:
            mailer.queue(
                tx,
                MailKind.TRIAGE_CLOSED,
                "triage_closed",
                f,
                {
                    "ref": signal.ref,
                    "outcome": outcome,
                    "destinations": [d.upper() for d in destinations],
                },
                ref=None,
            )
