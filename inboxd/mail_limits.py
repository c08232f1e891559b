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
   so are signals that arrive while a functionaris' notice budget is spent. The
   functionarissen get one notice with the count (no content) once the flood has
   been quiet for :data:`FLOOD_QUIET`, or an hour after it began if it goes on.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inboxd.config import Config

HOUR = 3600.0


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

_CLASSES = {
    "ack": LimitClass.ACK,
    "command_result": LimitClass.ANSWER,
    "command_rejected": LimitClass.ANSWER,
    "command_late": LimitClass.ANSWER,
    "feedback": LimitClass.REPORTER,
    "question": LimitClass.REPORTER,
    "triage_request": LimitClass.NOTICE,
    "followup_notice": LimitClass.NOTICE,
    "forward_alert": LimitClass.NOTICE,
    "triage_closed": LimitClass.NOTICE,
}
# No budget: forwards must all go; reminder, digest and flood notice are timed.
UNLIMITED = ("forward:", "reminder", "digest", "flood_notice")


def limit_class(kind: str) -> LimitClass | None:
    if kind.startswith(UNLIMITED):
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
