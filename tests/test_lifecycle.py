"""The life of a signal as data (inboxd/lifecycle.py): the states and the transitions
between them, the mailbox-key statuses and mail kinds, as the stores have always
spelled them."""

from __future__ import annotations

import itertools

import pytest

from inboxd.lifecycle import (
    OPEN_STATES,
    TRANSITIONS,
    IllegalTransition,
    KeyStatus,
    MailKind,
    SignalState,
    after_forward,
    check_transition,
    forward_destination,
    forward_kind,
    stored_kind,
)
from inboxd.mail_limits import UNLIMITED, LimitClass, limit_class


def reachable(start: SignalState) -> set[SignalState]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_stored_strings_stay_what_they_were() -> None:
    # Old stores hold these strings; renaming one would strand its signals.
    assert [s.value for s in SignalState] == [
        "queued",
        "waiting_info",
        "forwarding",
        "forwarding_failed",
    ]
    assert {k.value for k in KeyStatus} == {"accepted", "expunge", "retained", "expunged"}
    assert MailKind("triage_request") is MailKind.TRIAGE_REQUEST
    assert tuple(SignalState) == OPEN_STATES


def test_the_table_covers_every_state_and_every_state_is_reachable() -> None:
    assert set(TRANSITIONS) == set(SignalState)
    assert all(targets <= set(SignalState) for targets in TRANSITIONS.values())
    assert reachable(SignalState.QUEUED) == set(SignalState)
    # Only a follow-up answering a question sends a signal back to the queue.
    assert [s for s in SignalState if SignalState.QUEUED in TRANSITIONS[s]] == [
        SignalState.WAITING_INFO
    ]


@pytest.mark.parametrize(("old", "new"), list(itertools.product(SignalState, SignalState)))
def test_every_transition_is_allowed_or_raises_as_the_table_says(
    old: SignalState, new: SignalState
) -> None:
    if new in TRANSITIONS[old]:
        assert check_transition(old, new) is new
    else:
        with pytest.raises(IllegalTransition, match=f"from {old} to {new}"):
            check_transition(old, new)


def test_a_forward_kind_names_its_destination_and_only_a_forward_does() -> None:
    # The stored spelling stays "forward:<key>": mail queued before this still counts.
    assert forward_kind("kedo") == "forward:kedo"
    assert forward_destination("forward:kedo") == "kedo"
    assert forward_destination(forward_kind("riec")) == "riec"
    for kind in [*MailKind, "forward", "forward_alert", "forwarded:kedo", "ack:kedo"]:
        assert forward_destination(kind) is None, kind


def test_after_a_forward_command_the_signal_waits_only_for_what_is_on_its_way() -> None:
    S = SignalState
    assert after_forward(S.QUEUED, ["kedo"], [], ["kedo"]) is S.FORWARDING
    assert after_forward(S.FORWARDING_FAILED, ["kedo", "riec"], ["riec"], ["kedo"]) is (
        S.FORWARDING
    )
    # Nothing on its way and every destination done: the signal ends.
    assert after_forward(S.FORWARDING_FAILED, ["riec"], ["riec"], []) is None
    assert after_forward(S.FORWARDING, ["kedo", "riec"], ["kedo", "riec"], []) is None
    # Nothing on its way, a destination not done: the failure stays visible.
    assert after_forward(S.FORWARDING_FAILED, ["kedo", "riec"], ["riec"], []) is (
        S.FORWARDING_FAILED
    )


def test_a_stored_kind_reads_back_as_the_kind_that_was_stored() -> None:
    for kind in MailKind:
        assert stored_kind(str(kind)) is kind
    assert stored_kind("forward:kedo") == forward_kind("kedo")
    assert forward_destination(stored_kind("forward:kedo")) == "kedo"
    for text in ["", "forward", "reminder_extra", "k0", "ACK"]:
        with pytest.raises(ValueError):
            stored_kind(text)


def test_every_kind_has_a_budget_but_forwards_and_the_timed_mails() -> None:
    assert limit_class(forward_kind("kedo")) is None
    for kind in MailKind:
        cls = limit_class(kind)
        assert (cls is None) == (kind in UNLIMITED), kind
    assert limit_class(MailKind.ACK) is LimitClass.ACK
