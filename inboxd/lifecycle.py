"""The life of a signal as plain data: its states, the transitions between them,
what becomes of a message's key in the mailbox, and the kinds of mail inboxd sends.

The values are the strings the store has always kept (``StrEnum``), so a store
written before these types existed reads the same. A signal's end is no state: it is
deleted (:mod:`inboxd.ending`) from whichever open state it is in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import NewType, TypeAlias


class SignalState(StrEnum):
    QUEUED = "queued"  # waiting for the functionarissen's commands
    WAITING_INFO = "waiting_info"  # VRAAG: a question to the reporter is out
    FORWARDING = "forwarding"  # DOORZETTEN: forwards queued, not all accepted yet
    FORWARDING_FAILED = "forwarding_failed"  # a forward bounced or was given up


# Every stored state is open: a closed signal is deleted, not kept in a state.
OPEN_STATES: tuple[SignalState, ...] = tuple(SignalState)

S = SignalState
# Which state a signal may move to from which. Forwards bounce or are given up
# whenever the destination's server says so, so FORWARDING_FAILED is reachable from
# every state; a follow-up from the reporter answers a question (WAITING_INFO →
# QUEUED) and is only filed otherwise; a command may forward again or ask again.
TRANSITIONS: Mapping[SignalState, frozenset[SignalState]] = {
    S.QUEUED: frozenset({S.WAITING_INFO, S.FORWARDING, S.FORWARDING_FAILED}),
    S.WAITING_INFO: frozenset({S.QUEUED, S.WAITING_INFO, S.FORWARDING, S.FORWARDING_FAILED}),
    S.FORWARDING: frozenset({S.WAITING_INFO, S.FORWARDING, S.FORWARDING_FAILED}),
    S.FORWARDING_FAILED: frozenset({S.WAITING_INFO, S.FORWARDING, S.FORWARDING_FAILED}),
}
del S


class IllegalTransition(ValueError):
    def __init__(self, old: SignalState, new: SignalState) -> None:
        super().__init__(f"a signal cannot go from {old} to {new}")
        self.old = old
        self.new = new


def check_transition(old: SignalState, new: SignalState) -> SignalState:
    """``new`` when a signal in ``old`` may move to it, else :class:`IllegalTransition`."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(old, new)
    return new


def after_forward(
    state: SignalState, wanted: Iterable[str], done: Iterable[str], on_the_way: Iterable[str]
) -> SignalState | None:
    """A signal's state once a forward command has queued what it could.

    ``FORWARDING`` while any forward is on its way; ``None`` (the signal ends) when
    every destination it names has accepted it, as when the last forward is
    accepted; otherwise the state it had: a destination given up stays failed until
    it is named again or the signal is closed, so a command that names only
    destinations already done never leaves a signal waiting for nothing.
    """
    if set(on_the_way):
        return SignalState.FORWARDING
    if set(wanted) <= set(done):
        return None
    return state


class KeyStatus(StrEnum):
    """What becomes of a message in the mailbox, by its key."""

    ACCEPTED = "accepted"  # sealed in the store; processing decides its fate
    EXPUNGE = "expunge"  # may leave the mailbox now
    RETAINED = "retained"  # stays until its signal is forwarded or ends
    EXPUNGED = "expunged"  # gone from the mailbox


class MailKind(StrEnum):
    """The kinds of mail inboxd sends; a forward's kind names its destination
    (:func:`forward_kind`)."""

    ACK = "ack"
    TRIAGE_REQUEST = "triage_request"
    FOLLOWUP_NOTICE = "followup_notice"
    QUESTION = "question"
    COMMAND_RESULT = "command_result"
    COMMAND_REJECTED = "command_rejected"
    COMMAND_LATE = "command_late"
    FEEDBACK = "feedback"
    FORWARD_ALERT = "forward_alert"
    TRIAGE_CLOSED = "triage_closed"
    REMINDER = "reminder"
    DIGEST = "digest"
    FLOOD_NOTICE = "flood_notice"


# The mail sent once a signal has ended (inboxd.ending): the last that the store
# holds about it, shredded once it has left the outbox.
AFTER_THE_END: frozenset[MailKind] = frozenset({MailKind.FEEDBACK, MailKind.TRIAGE_CLOSED})

# A forward's kind is "forward:<destination key>": one per destination, so the outbox
# can tell which destinations still wait and the sent mail which one accepted.
FORWARD = "forward"

ForwardKind = NewType("ForwardKind", str)
"""A forward's mail kind, made only by :func:`forward_kind` (or read back by
:func:`stored_kind`)."""

# What the outbox and the sent mail record as a mail's kind.
AnyMailKind: TypeAlias = MailKind | ForwardKind


def forward_kind(destination: str) -> ForwardKind:
    """The mail kind of a forward to ``destination`` (a key of the destinations)."""
    return ForwardKind(f"{FORWARD}:{destination}")


def forward_destination(kind: str) -> str | None:
    """The destination a forward's kind names; ``None`` for every other kind."""
    family, colon, destination = kind.partition(":")
    return destination if colon and family == FORWARD else None


def stored_kind(text: str) -> AnyMailKind:
    """The kind a stored string names; :class:`ValueError` when it names none (no
    version of inboxd stored it)."""
    destination = forward_destination(text)
    if destination is not None:
        return forward_kind(destination)
    return MailKind(text)
