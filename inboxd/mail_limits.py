"""How much automatic mail inboxd may send, to whom: the brakes on a mail loop.

Three brakes, each a plain decision here; the store keeps only keyed hashes of
addresses and times (no content) for as long as the window:

1. **Per recipient, over time.** Every mail kind belongs to a class with a budget per
   recipient per hour; past it the mail is not queued (``mail.suppressed``). Only
   forwards (a destination must get every signal a functionaris forwarded) and the
   timed reminder and digest (at most daily by their schedule) have none.
2. **No answer to an answer.** A mail that answers one of inboxd's own mails,
   other than the three that ask for a reply (triage request, follow-up notice,
   question), gets no acknowledgement, result, rejection or "already handled" back
   (``classify.Decision.quiet``).
3. **Floods.** A sender's first ``triage.request_limit`` signals (10 an hour) get a
   triage request each; the next are queued as usual, flagged ``flood``, without one;
   so are signals that arrive while a functionaris' notice budget is spent down to
   its reserve. The functionarissen get one notice with the count (no content) once
   the flood has been quiet for :data:`FLOOD_QUIET`, or an hour after it began if it
   goes on.
   A held signal gets its triage request later (:func:`release_order`), a few at a
   time, as the sender's and every functionaris' budget allow: none is lost to triage.
   Signals whose sender evidence was verified are released before all others, so
   a flood from forged senders, however many, cannot crowd out a colleague. Intake
   and release alike leave a reserve of each functionaris' notices unspent
   (:func:`notice_reserve`) for the notices about signals already in triage.
"""

from __future__ import annotations

from collections.abc import Container, Hashable, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

from inboxd.lifecycle import AnyMailKind, MailKind, forward_destination

if TYPE_CHECKING:
    from inboxd.config import Config

HOUR = 3600.0
T = TypeVar("T")
S = TypeVar("S", bound=Hashable)


class LimitClass(StrEnum):
    ACK = "ack"  # the acknowledgement: reporters.ack_rate_limit
    ANSWER = "answer"  # result, rejection, "already handled" to a functionaris
    REPORTER = "reporter"  # feedback and questions to a reporter
    NOTICE = "notice"  # triage requests, follow-up notices, alerts, closings
    SIGNAL = "signal"  # not a mail: new signals per sender, for the flood brake


ANSWER_PER_HOUR = 20
REPORTER_PER_HOUR = 20
FLOOD_QUIET = 600.0
FLOOD_NOTICE_EVERY = HOUR
# The flag of a held signal whose sender evidence was verified: the fact, no address.
# It goes with ``flood`` when the signal is released; a signal without it (as every
# signal held before it existed) counts as unverified.
FLOOD_VERIFIED = "flood_verified"

_CLASSES: dict[str, LimitClass] = {
    MailKind.ACK: LimitClass.ACK,
    MailKind.COMMAND_RESULT: LimitClass.ANSWER,
    MailKind.COMMAND_REJECTED: LimitClass.ANSWER,
    MailKind.COMMAND_LATE: LimitClass.ANSWER,
    MailKind.FEEDBACK: LimitClass.REPORTER,
    MailKind.QUESTION: LimitClass.REPORTER,
    MailKind.TRIAGE_REQUEST: LimitClass.NOTICE,
    MailKind.FOLLOWUP_NOTICE: LimitClass.NOTICE,
    MailKind.FORWARD_ALERT: LimitClass.NOTICE,
    MailKind.TRIAGE_CLOSED: LimitClass.NOTICE,
}
# No budget: forwards must all go; reminder, digest and flood notice are timed.
UNLIMITED = (MailKind.REMINDER, MailKind.DIGEST, MailKind.FLOOD_NOTICE)


def limit_class(kind: AnyMailKind) -> LimitClass | None:
    if forward_destination(kind) is not None or kind in UNLIMITED:
        return None
    # A kind added later without a class gets the functionarissen's budget rather
    # than none: an unlimited automatic mail is the bug this module exists for.
    return _CLASSES.get(kind, LimitClass.NOTICE)


def budget(cls: LimitClass, cfg: Config) -> tuple[int, float]:
    """(how many, per how many seconds) for one recipient (or, ``SIGNAL``, sender)."""
    return {
        LimitClass.ACK: cfg.reporters.ack_rate_limit,
        LimitClass.ANSWER: (ANSWER_PER_HOUR, HOUR),
        LimitClass.REPORTER: (REPORTER_PER_HOUR, HOUR),
        LimitClass.NOTICE: cfg.triage.notice_limit,
        LimitClass.SIGNAL: cfg.triage.request_limit,
    }[cls]


def longest_window(cfg: Config) -> float:
    """How long the per-recipient records must live."""
    return max(budget(c, cfg)[1] for c in LimitClass)


def flood_notice_due(first_held: float, last_held: float, now: float) -> bool:
    return now - last_held >= FLOOD_QUIET or now - first_held >= FLOOD_NOTICE_EVERY


def release_order(
    held: Sequence[tuple[T, S]], verified: Container[T] = frozenset()
) -> list[tuple[T, S]]:
    """The order in which held signals get their triage request: ``held`` is (signal,
    sender), oldest first; ``verified`` the signals whose sender evidence was
    verified. Those go before all the others: forged senders can be many, a trusted
    server's word cannot be forged. Within each part senders take turns — each
    sender's oldest, then each sender's second, … — and within a turn the senders
    with the fewest held go first (then the one held longest). So a colleague's one
    signal, held because a flood spent the functionarissen's budget, does not wait
    behind thousands of one sender's, nor behind a flood spread over many forged
    senders."""
    return _turns([h for h in held if h[0] in verified]) + _turns(
        [h for h in held if h[0] not in verified]
    )


def _turns(held: Sequence[tuple[T, S]]) -> list[tuple[T, S]]:
    queues: dict[S, list[tuple[T, S]]] = {}
    for item in held:
        queues.setdefault(item[1], []).append(item)
    # dicts keep insertion order: ties on count go to the sender held first.
    senders = sorted(queues, key=lambda s: len(queues[s]))
    out: list[tuple[T, S]] = []
    for turn in range(max((len(q) for q in queues.values()), default=0)):
        out.extend(queues[s][turn] for s in senders if turn < len(queues[s]))
    return out


def notice_reserve(cfg: Config) -> int:
    """Notices neither a new signal nor a release may spend in a functionaris' hour:
    follow-up notices, closings and alerts about signals already in triage must
    still get through when a flood has taken the rest."""
    return cfg.triage.notice_limit[0] // 10
