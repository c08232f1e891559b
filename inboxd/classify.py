"""What an incoming message is: a pure decision on parsed data.

The shell looks up what the decision needs (which Message-IDs inboxd sent, which
references are open and who reported them) and passes it in ``Context``; nothing
here touches a server or the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from inboxd.evidence import Evidence, EvidencePolicy, sender_evidence
from inboxd.lifecycle import AnyMailKind, MailKind
from inboxd.parsing import WEAK_AUTO_REASONS, ParsedMessage
from inboxd.references import first_references

DRILL_PREFIXES = ("[test]", "[oefening]")

# inboxd's mails that ask for a reply: a reply to any other (acknowledgement,
# result, rejection, feedback, alert, forward …) is never answered by mail, so two
# automatic responders cannot keep each other going.
ASKS_FOR_REPLY = frozenset({MailKind.TRIAGE_REQUEST, MailKind.FOLLOWUP_NOTICE, MailKind.QUESTION})


class Kind(StrEnum):
    SIGNAL = "signal"  # a new signal (possibly flagged auto/malformed/drill)
    AUTO_ANSWER = "auto_answer"  # a bounce/auto-reply to mail inboxd sent: record and delete
    FOLLOWUP = "followup"  # the reporter adds to their open signal
    COMMAND = "command"  # from a functionaris, about a signal: authorise, then act
    LOOP = "loop"  # our own mail came back to us: record and delete


@dataclass(frozen=True)
class Context:
    prefix: str
    functionarissen: frozenset[str]
    own_addresses: frozenset[str]
    ack_domains: frozenset[str]
    sources: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Message-IDs of mail inboxd sent, among those this message mentions → (kind, ref)
    sent: Mapping[str, tuple[AnyMailKind, str | None]] = field(default_factory=dict)
    # For each reference the message carries that is open: the reporter's address
    open_reporters: Mapping[str, str | None] = field(default_factory=dict)
    evidence: EvidencePolicy = EvidencePolicy()


@dataclass(frozen=True)
class Decision:
    kind: Kind
    flags: frozenset[str] = frozenset()
    refs: tuple[str, ...] = ()  # references found (subject first, then body)
    answers: tuple[tuple[AnyMailKind, str | None], ...] = ()  # (kind, ref) of our mail it answers
    source: str = "extern"
    # Whether a trusted server vouches for the From address (commands, follow-ups and
    # drills act only on VERIFIED, or NOT_REQUIRED where the operator said so).
    evidence: Evidence = Evidence.UNVERIFIED
    quiet: bool = False  # it answers a mail of ours that asked for no reply: never answer it


def mentioned_ids(msg: ParsedMessage) -> tuple[str, ...]:
    """Message-IDs the message answers or reports, unique, in order (parsing bounds
    how many; a dict keeps the de-duplication linear)."""
    return tuple(dict.fromkeys((*msg.reported_message_ids, *msg.in_reply_to, *msg.references)))


def references_in(msg: ParsedMessage, prefix: str) -> tuple[str, ...]:
    """The first few references the message names, the subject's before the body's."""
    return tuple(first_references((msg.subject, msg.text), prefix))


def source_of(sender: str | None, ctx: Context) -> str:
    if sender:
        for name, addresses in ctx.sources.items():
            if sender in addresses:
                return name
        if sender.rsplit("@", 1)[-1] in ctx.ack_domains:
            return "intern"
    return "extern"


def is_drill(msg: ParsedMessage, ctx: Context) -> bool:
    return msg.from_addr in ctx.functionarissen and msg.subject.strip().lower().startswith(
        DRILL_PREFIXES
    )


def classify(msg: ParsedMessage, ctx: Context) -> Decision:
    refs = references_in(msg, ctx.prefix)
    source = source_of(msg.from_addr, ctx)
    flags: set[str] = set()
    if msg.malformed:
        flags.add("malformed")
    answers = tuple(ctx.sent[m] for m in mentioned_ids(msg) if m in ctx.sent)
    quiet = any(kind not in ASKS_FOR_REPLY for kind, _ in answers)
    own = msg.from_addr is not None and msg.from_addr in ctx.own_addresses
    if own and msg.message_id is not None and msg.message_id in ctx.sent:
        return Decision(Kind.LOOP, frozenset(flags), refs, answers, source, quiet=True)
    sender = msg.from_addr
    evidence = sender_evidence(
        sender, msg.authentication_results, msg.exchange_auth_as, ctx.evidence
    )
    trusted = evidence is not Evidence.UNVERIFIED
    followup_of = next(
        (
            r
            for r in refs
            if sender is not None and r in ctx.open_reporters and ctx.open_reporters[r] == sender
        ),
        None,
    )
    if not trusted:
        # Unverified, a "follow-up" is a new signal like any other: nothing is lost,
        # and nobody outside can add to a signal.
        followup_of = None
    if msg.auto:
        flags.add("auto")
        weak = set(msg.auto_reasons) <= WEAK_AUTO_REASONS
        if answers and weak and followup_of is not None:
            # Only markers a person's mail can carry too, from the reporter, about
            # their open signal: keep it with the signal rather than discard it.
            return Decision(
                Kind.FOLLOWUP, frozenset(flags), (followup_of,), answers, source, evidence, True
            )
        if answers:
            return Decision(
                Kind.AUTO_ANSWER, frozenset(flags), refs, answers, source, evidence, True
            )
        return Decision(Kind.SIGNAL, frozenset(flags), refs, (), source, evidence, True)
    if sender is not None and sender in ctx.functionarissen and refs:
        # Unverified, it is still a command: it is refused, and the functionaris told.
        return Decision(Kind.COMMAND, frozenset(flags), refs, answers, source, evidence, quiet)
    if followup_of is not None:
        return Decision(
            Kind.FOLLOWUP, frozenset(flags), (followup_of,), answers, source, evidence, quiet
        )
    # Unverified, a "drill" is a new signal like any other: nobody outside can steer
    # one away from a destination.
    if trusted and is_drill(msg, ctx):
        flags.add("drill")
    if quiet:
        flags.add("answers_inboxd")  # no acknowledgement now, no feedback at its end
    return Decision(Kind.SIGNAL, frozenset(flags), refs, (), source, evidence, quiet)
