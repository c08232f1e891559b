"""Triage by mail: the functionarissen's commands, the reporter's follow-ups and
forwarding, up to the moment a signal ends (that itself is :mod:`inboxd.ending`).

Authorisation before anything else (as Zulip checks the address token before
trusting a mail): the sender must be a configured functionaris (exact addr-spec), a
server we trust must vouch that the owner of that address sent it (evidence.py), the
mail must carry the reference *and* that signal's token (in its body), and the signal
must be open. Only then is the reply text parsed, and then all-or-nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from inboxd import commands as cmd
from inboxd.classify import Decision
from inboxd.config import Config
from inboxd.crypto import Keyring, signal_token, tokens_equal
from inboxd.ending import End, Ending, within_ack_domains
from inboxd.evidence import Evidence
from inboxd.lifecycle import (
    OPEN_STATES,
    KeyStatus,
    MailKind,
    SignalState,
    after_forward,
    forward_destination,
    forward_kind,
)
from inboxd.logs import get_logger
from inboxd.mailbox.base import MailboxItem
from inboxd.mailer import Mailer, iso
from inboxd.outbox import AttachRef
from inboxd.parsing import ParsedMessage
from inboxd.replytext import reply_text
from inboxd.store import DueMail, Signal, SignalUpdate, Store, Transaction
from inboxd.templates import Templates

log = get_logger(__name__)

TOKEN_RE = re.compile(
    r"(?<![0-9A-Za-z])([0-9A-Za-z]{4}-[0-9A-Za-z]{4}-[0-9A-Za-z]{4}-[0-9A-Za-z]{4})(?![0-9A-Za-z])"
)
_READ_AS = str.maketrans("ILO", "110")


# A reply carries its signal's token once or twice (subject, quoted request); a mail
# with thousands of look-alikes is only read for the first few.
MAX_TOKENS = 20


def tokens_in(*texts: str) -> list[str]:
    """The first :data:`MAX_TOKENS` distinct tokens, normalised, in order (a dict keeps
    the de-duplication linear)."""
    out: dict[str, None] = {}
    for t in texts:
        for m in TOKEN_RE.finditer(t[:2_000_000]):
            out[m.group(1).upper().translate(_READ_AS)] = None
            if len(out) >= MAX_TOKENS:
                return list(out)
    return list(out)


def read_commands(msg: ParsedMessage, destinations: Collection[str]) -> cmd.Parsed | None:
    """The commands of a reply; ``None`` when its text and HTML parts disagree.

    A mail with both a text/plain and a text/html part shows one or the other, and a
    functionaris sees only one: text that is invisible in the HTML (white on white,
    a 1px font, an off-screen box) could carry a command they never saw in their
    plain view, or the other way round. So both are read, and the commands count
    only when both give the same list. A part on its own is read as it is (the
    HTML without its hidden elements and comments, see replytext.py).
    """
    html = msg.html if msg.html is not None and msg.html.strip() else None
    plain = msg.text if not msg.text_from_html and msg.text.strip() else None
    from_plain = (
        cmd.parse_commands(
            reply_text(plain, None, flowed=msg.text_flowed, delsp=msg.text_delsp), destinations
        )
        if plain is not None or html is None
        else None
    )
    from_html = cmd.parse_commands(reply_text(None, html), destinations) if html else None
    if from_plain is None:
        assert from_html is not None
        return from_html
    if from_html is None:
        return from_plain
    if _same(from_plain, from_html):
        return from_plain
    return None


def _same(a: cmd.Parsed, b: cmd.Parsed) -> bool:
    """The same commands, read the same way: equal up to white space in free text
    (one part may wrap a question the other keeps on one line), and both valid or
    both not."""

    return [c.comparable() for c in a.commands] == [c.comparable() for c in b.commands] and bool(
        a.errors
    ) == bool(b.errors)


class Triage:
    def __init__(
        self,
        *,
        cfg: Config,
        store: Store,
        keyring: Keyring,
        mailer: Mailer,
        templates: Templates,
        ending: Ending,
        clock: Callable[[], float],
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.keyring = keyring
        self.mailer = mailer
        self.templates = templates
        self.ending = ending
        self.clock = clock
        self.lang = cfg.language

    # -- intake hooks ---------------------------------------------------------
    def handle(
        self, tx: Transaction, item: MailboxItem, msg: ParsedMessage, decision: Decision
    ) -> tuple[KeyStatus, str | None]:
        if decision.kind.value == "followup":
            return self.followup(tx, item, msg, decision.refs[0], decision.evidence)
        return self.command(tx, msg, decision), None

    def auto_answer(self, tx: Transaction, msg: ParsedMessage, decision: Decision) -> None:
        for kind, ref in decision.answers:
            dest = forward_destination(kind)
            if dest is None or ref is None:
                continue
            if not msg.report_type or msg.report_type != "delivery-status":
                continue
            signal = self.store.signal_by_ref(ref)
            if signal is not None:
                done = tuple(d for d in signal.done_destinations if d != dest)
                tx.update_signal(
                    signal,
                    SignalUpdate(state=SignalState.FORWARDING_FAILED, done_destinations=done),
                )
            log.error(
                "forward.bounced",
                ref=ref,
                destination=dest,
                state=SignalState.FORWARDING_FAILED if signal else "deleted",
            )
            self._alert(tx, ref, dest, "bounced", still_open=signal is not None)

    # -- follow-ups -------------------------------------------------------------
    def followup(
        self,
        tx: Transaction,
        item: MailboxItem,
        msg: ParsedMessage,
        ref: str,
        evidence: Evidence,
    ) -> tuple[KeyStatus, str]:
        signal = self.store.signal_by_ref(ref)
        assert signal is not None
        n = sum(1 for f in tx.field_names(signal) if f.startswith("followup:")) + 1
        tx.add_field(signal, f"followup:{n}", item.raw)
        if signal.state is SignalState.WAITING_INFO:
            signal = tx.update_signal(signal, SignalUpdate(state=SignalState.QUEUED))
        log.info(
            "signal.followup",
            ref=ref,
            count=n,
            size=msg.size,
            state=signal.state,
            authenticated=evidence is Evidence.VERIFIED,
        )
        context = {
            "ref": ref,
            "token": signal_token(tx.data_key(signal), ref),
            "number": n,
            "received": iso(self.clock()),
            "include_content": self.cfg.triage.include_content,
            "text": msg.text[:200_000] if self.cfg.triage.include_content != "none" else "",
        }
        attach = (
            (AttachRef(ref, f"followup:{n}", self._followup_name(n)),)
            if self.cfg.triage.include_content == "full"
            else ()
        )
        for f in self.cfg.triage.functionarissen:
            self.mailer.queue(
                tx, MailKind.FOLLOWUP_NOTICE, "followup_notice", f, context, ref=ref, attach=attach
            )
        keep = self.cfg.mailbox.retain_in_mailbox == "forwarded"
        return (KeyStatus.RETAINED if keep else KeyStatus.EXPUNGE), signal.id

    # -- commands ---------------------------------------------------------------
    def _reject(
        self,
        tx: Transaction,
        msg: ParsedMessage,
        quiet: bool,
        ref: str | None,
        reason: str,
        lines: Sequence[str] = (),
    ) -> KeyStatus:
        assert msg.from_addr is not None
        log.warning("command.rejected", ref=ref, reason=reason)
        self.mailer.queue(
            tx,
            MailKind.COMMAND_REJECTED,
            "command_rejected",
            msg.from_addr,
            {"ref": ref or "", "reason": reason, "lines": list(lines)},
            ref=None,
            answers=msg.message_id,
            quiet=quiet,
        )
        return KeyStatus.EXPUNGE

    def command(self, tx: Transaction, msg: ParsedMessage, decision: Decision) -> KeyStatus:
        """Authorise, parse, apply, answer; a refusal at any step is answered there
        and nothing of the mail is carried out."""
        signal = self._authorise(tx, msg, decision)
        if signal is None:
            return KeyStatus.EXPUNGE
        parsed = self._parse(tx, msg, decision, signal)
        if parsed is None:
            return KeyStatus.EXPUNGE
        applied = self._apply(tx, signal, parsed.commands)
        self._answer(tx, msg, decision, parsed, applied)
        return KeyStatus.EXPUNGE

    def _authorise(self, tx: Transaction, msg: ParsedMessage, decision: Decision) -> Signal | None:
        """The open signal this mail may command, or ``None`` once refused."""
        store = self.store
        ref = decision.refs[0]
        if self._seen_before(tx, msg, ref):
            return None
        if decision.evidence is Evidence.UNVERIFIED:
            # Before the reference is even looked up: a forger learns nothing.
            self._reject(tx, msg, decision.quiet, ref, "unverified")
            return None
        signal = store.signal_by_ref(ref)
        if signal is None:
            if store.ref_in_use(ref):
                self._late(tx, msg, decision, ref)
            else:
                self._reject(tx, msg, decision.quiet, ref, "unknown_reference")
            return None
        expected = signal_token(tx.data_key(signal), ref)
        # The body only: the token is never in a Subject (README, "Where the token travels").
        found = tokens_in(msg.text, msg.html or "")
        if not any(tokens_equal(t, expected) for t in found):
            self._reject(tx, msg, decision.quiet, ref, "token")
            return None
        if signal.state not in OPEN_STATES:
            self._reject(tx, msg, decision.quiet, ref, "closed")
            return None
        return signal

    def _late(self, tx: Transaction, msg: ParsedMessage, decision: Decision, ref: str) -> None:
        log.info("command.late", ref=ref)
        assert msg.from_addr is not None
        self.mailer.queue(
            tx,
            MailKind.COMMAND_LATE,
            "command_late",
            msg.from_addr,
            {"ref": ref},
            ref=None,
            answers=msg.message_id,
            quiet=decision.quiet,
        )

    def _parse(
        self, tx: Transaction, msg: ParsedMessage, decision: Decision, signal: Signal
    ) -> cmd.Parsed | None:
        """The commands, all of them valid and possible, or ``None`` once refused."""
        ref, quiet = signal.ref, decision.quiet
        if "text-truncated" in msg.defects:
            # Commands are all-or-nothing; a reply we could not read whole is refused.
            self._reject(tx, msg, quiet, ref, "too_long")
            return None
        parsed = read_commands(msg, self.cfg.destinations.keys())
        if parsed is None:
            self._reject(tx, msg, quiet, ref, "parts_differ")
            return None
        if parsed.errors:
            lines = [cmd.explain(e, self.lang, self.templates) for e in parsed.errors]
            self._reject(tx, msg, quiet, ref, "invalid", lines)
            return None
        if any(isinstance(c, cmd.Ask) for c in parsed.commands) and self._reporter(signal) is None:
            self._reject(tx, msg, quiet, ref, "no_reporter")
            return None
        return parsed

    def _reporter(self, signal: Signal) -> str | None:
        """The reporter's address, when inboxd may mail it."""
        reporter = self.store.read_field(signal, "reporter")
        if reporter is None or not self._may_mail(reporter.decode()):
            return None
        return reporter.decode()

    def _help_lines(self) -> list[str]:
        labels = {k: d.label for k, d in self.cfg.destinations.items()}
        return cmd.help_lines(labels, self.lang, self.templates)

    def _apply(self, tx: Transaction, signal: Signal, commands: Sequence[cmd.Command]) -> _Effects:
        effects = _Effects(
            tx, signal, self.mailer, self._reporter, self._status_lines, self._help_lines
        )
        for c in commands:
            c.apply(effects)
        if effects.forwarding is not None:
            effects.signal, effects.forwarded = self._forward(
                tx, effects.signal, effects.forwarding
            )
        if effects.signal.hold and not any(isinstance(c, cmd.Hold) for c in commands):
            # WACHT holds "until the next command".
            effects.signal = tx.update_signal(effects.signal, SignalUpdate(hold=False))
        return effects

    def _answer(
        self,
        tx: Transaction,
        msg: ParsedMessage,
        decision: Decision,
        parsed: cmd.Parsed,
        applied: _Effects,
    ) -> None:
        signal = applied.signal
        assert msg.from_addr is not None
        done = [cmd.describe(c, self.lang, self.templates) for c in parsed.commands if c.reported]
        self.mailer.queue(
            tx,
            MailKind.COMMAND_RESULT,
            "command_result",
            msg.from_addr,
            {
                "ref": signal.ref,
                "done": done,
                "extra": applied.extra,
                "ignored": list(parsed.ignored),
            },
            ref=None,
            answers=msg.message_id,
            quiet=decision.quiet,
        )
        log.info(
            "command.accepted",
            ref=signal.ref,
            count=len(parsed.commands),
            state=signal.state,
            authenticated=decision.evidence is Evidence.VERIFIED,
        )
        if applied.closing:
            self.ending.end(tx, signal, End.CLOSED)
        elif applied.forwarded:
            self.ending.end(tx, signal, End.FORWARDED)

    def _seen_before(self, tx: Transaction, msg: ParsedMessage, ref: str) -> bool:
        """A command mail acts once. The same mail delivered again byte for byte (a
        relay's retry, a loop) never gets this far (intake's dedup); this catches the
        same sender's same Message-ID with other bytes — a resend, or a replay by
        someone who captured it — whatever became of the first. One short answer
        for the first such copy, none after: a loop cannot make a mail storm."""
        assert msg.from_addr is not None
        keyring, store = self.keyring, self.store
        # Without a Message-ID the visible content names the mail instead.
        name = (
            (msg.from_addr, msg.message_id)
            if msg.message_id
            else (msg.from_addr, "", msg.subject, msg.text, msg.html or "")
        )
        seen = keyring.command_digests(*name)
        # Kept while the signal is open and dedup_window after it ends, as intake's
        # records are: a captured command replayed on day 31 of a signal still open is
        # a replay all the same (a DKIM signature would still pass).
        signal = store.signal_by_ref(ref)
        owner, expires = (
            (signal.id, None)
            if signal is not None
            else (None, self.clock() + self.cfg.dedup_window)
        )
        if not store.has_dedup(seen):
            tx.add_dedup(seen[0], owner, expires)
            return False
        answered = keyring.command_digests("answered", *name)
        log.warning("command.duplicate", ref=ref, reason="replayed")
        if not store.has_dedup(answered):
            tx.add_dedup(answered[0], owner, expires)
            self.mailer.queue(
                tx,
                MailKind.COMMAND_REJECTED,
                "command_rejected",
                msg.from_addr,
                {"ref": ref, "reason": "duplicate", "lines": []},
                ref=None,
                answers=msg.message_id,
            )
        return True

    def _status_lines(self, s: Signal) -> list[str]:
        text = self.templates.phrase(
            "commands",
            "status",
            ref=s.ref,
            state=s.state,
            received=iso(s.created_at),
            hours=int((self.clock() - s.created_at) // 3600),
            form=s.form or "",
            destinations=", ".join(d.upper() for d in s.destinations),
            done=", ".join(d.upper() for d in s.done_destinations),
            hold=bool(s.hold),
        )
        return text.split("\n")

    def _may_mail(self, address: str) -> bool:
        return within_ack_domains(self.cfg, address)

    def _followup_name(self, number: int) -> str:
        """The file name a follow-up's original is attached under."""
        return self.templates.phrase("mail", "followup_attachment", number=number)

    # -- forwarding ---------------------------------------------------------------
    def _forward(
        self, tx: Transaction, signal: Signal, destinations: Sequence[str]
    ) -> tuple[Signal, bool]:
        """Queue the forwards not yet done or on their way; the signal, and whether
        every destination it names already has it (then the command ends it)."""
        drill = "drill" in signal.flags
        wanted = sorted(set(signal.destinations) | set(destinations))
        attach = [AttachRef(signal.ref, "raw", self.templates.phrase("mail", "signal_attachment"))]
        attach += [
            AttachRef(signal.ref, f, self._followup_name(int(f.removeprefix("followup:"))))
            for f in tx.field_names(signal)
            if f.startswith("followup:")
        ]
        pending = set(tx.pending_kinds(signal.ref))
        for key in destinations:
            if key in signal.done_destinations or forward_kind(key) in pending:
                continue
            dest = self.cfg.destinations[key]
            targets = [dest.address]
            if drill:
                targets = (
                    [dest.test_address]
                    if dest.test_address
                    else list(self.cfg.triage.functionarissen)
                )
            for to in targets:
                self.mailer.queue(
                    tx,
                    forward_kind(key),
                    "forward",
                    to,
                    {
                        "ref": signal.ref,
                        "label": dest.label,
                        "form": signal.form or "-",
                        "drill": drill,
                        "followups": len(attach) - 1,
                    },
                    ref=signal.ref,
                    attach=tuple(attach),
                )
            log.info("forward.queued", ref=signal.ref, destination=key)
        kinds = tx.pending_kinds(signal.ref)
        on_the_way = {d for d in map(forward_destination, kinds) if d is not None}
        state = after_forward(signal.state, wanted, signal.done_destinations, on_the_way)
        changed = state if state is not None and state != signal.state else None
        signal = tx.update_signal(signal, SignalUpdate(state=changed, destinations=wanted))
        return signal, state is None

    def mail_sent(self, tx: Transaction, due: DueMail) -> None:
        """Called inside the transaction that removes ``due`` from the outbox."""
        key = forward_destination(due.kind)
        if key is None or due.ref is None:
            return
        signal = self.store.signal_by_ref(due.ref)
        if signal is None:
            return
        if any(k == due.kind for k in tx.pending_kinds(due.ref)):
            return  # drills to several functionarissen: the last one completes it
        done = sorted(set(signal.done_destinations) | {key})
        signal = tx.update_signal(signal, SignalUpdate(done_destinations=done))
        log.info("forward.accepted", ref=signal.ref, destination=key)
        if set(signal.destinations) <= set(done) and signal.state is SignalState.FORWARDING:
            self.ending.end(tx, signal, End.FORWARDED)

    def mail_given_up(self, due: DueMail, reason: str) -> None:
        dest = forward_destination(due.kind)
        if dest is None or due.ref is None:
            return
        with self.store.transaction() as tx:
            signal = self.store.signal_by_ref(due.ref)
            if signal is not None:
                tx.update_signal(signal, SignalUpdate(state=SignalState.FORWARDING_FAILED))
            self._alert(tx, due.ref, dest, "failed", still_open=signal is not None)

    def _alert(self, tx: Transaction, ref: str, dest: str, what: str, *, still_open: bool) -> None:
        label = self.cfg.destinations[dest].label if dest in self.cfg.destinations else dest
        for f in self.cfg.triage.functionarissen:
            self.mailer.queue(
                tx,
                MailKind.FORWARD_ALERT,
                "forward_alert",
                f,
                {
                    "ref": ref,
                    "destination": dest.upper(),
                    "label": label,
                    "what": what,
                    "still_open": still_open,
                },
                ref=None,
            )


@dataclass
class _Effects:
    """What the commands of one accepted mail do to its signal (commands.CommandEffects).

    A forward is queued and a close carried out after the other commands (``_apply``,
    ``_answer``); STATUS and HULP add lines to the answer."""

    tx: Transaction
    signal: Signal
    mailer: Mailer
    reporter: Callable[[Signal], str | None]
    status_lines: Callable[[Signal], list[str]]
    help_lines: Callable[[], list[str]]
    extra: list[str] = field(default_factory=list)
    forwarding: tuple[str, ...] | None = None
    forwarded: bool = False  # every destination named has the signal: it ends
    closing: bool = False

    def set_form(self, form: cmd.Form) -> None:
        self.signal = self.tx.update_signal(self.signal, SignalUpdate(form=form.value))

    def hold(self) -> None:
        self.signal = self.tx.update_signal(self.signal, SignalUpdate(hold=True))

    def no_feedback(self) -> None:
        self.signal = self.tx.update_signal(self.signal, SignalUpdate(no_feedback=True))

    def ask(self, question: str) -> None:
        reporter = self.reporter(self.signal)
        assert reporter is not None  # checked in Triage._parse
        tx, signal = self.tx, self.signal
        n = sum(1 for f in tx.field_names(signal) if f.startswith("question:")) + 1
        tx.add_field(signal, f"question:{n}", question.encode())
        self.signal = tx.update_signal(
            signal, SignalUpdate(state=SignalState.WAITING_INFO, hold=False)
        )
        self.mailer.queue(
            tx,
            MailKind.QUESTION,
            "question",
            reporter,
            {"ref": signal.ref, "question": question},
            ref=signal.ref,
        )

    def forward(self, destinations: tuple[str, ...]) -> None:
        self.forwarding = destinations

    def close(self, reason: str) -> None:
        self.closing = True

    def status(self) -> None:
        self.extra += self.status_lines(self.signal)

    def help(self) -> None:
        self.extra += self.help_lines()
