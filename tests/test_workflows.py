"""A signal's life in the test process: intake, triage, the outbox and a signal's end,
built as ``inboxd once`` builds them (:func:`inboxd.app.build`), against the SQLite
store on an in-memory database, a keyring that was never a file, and the in-memory
mailbox and transport of :mod:`fakes.memory`. No root, no Dovecot, no relay, no state
directory: fast enough to run on every save. The same workflows against the
real servers are in ``test_triage.py`` and ``test_sender_evidence.py``.

Mail from staff arrives as the suite's relay would deliver it
(:func:`servers.smtp_relay.stamp`): with the relay's ``Authentication-Results`` on top,
``auth=pass`` for the account that logged in, or none.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fakes.memory import MemoryMailbox, MemoryTransport
from servers.smtp_relay import stamp
from world import (
    F1,
    F2,
    KEDO,
    MAILBOX,
    REPORTER,
    RIEC,
    Installation,
    TomlValue,
    assert_absent,
    body_text,
    config_text,
    dsn,
    imap_sections,
    marker,
    parse,
    reply,
    signal_mail,
)

from inboxd import logs
from inboxd.app import App, build
from inboxd.crypto import KEY_BYTES, Keyring, MasterKey, key_id_of
from inboxd.daemon import once
from inboxd.lifecycle import SignalState
from inboxd.references import find_references
from inboxd.sqlite_store import SqliteStore
from inboxd.store import Store
from inboxd.transport.base import SendError
from inboxd.triage import tokens_in

# Domains whose mail the relay takes only authenticated (it stamps spf=fail otherwise).
HOSTED = frozenset({"gemeente.example"})
# The Date of the test mails; the statistics count by the month a signal came in.
NOW = dt.datetime(2026, 11, 23, 10, 5, tzinfo=dt.UTC).timestamp()


def memory_keyring() -> Keyring:
    secret = os.urandom(KEY_BYTES)
    return Keyring([MasterKey(key_id_of(secret), secret)])


@dataclass
class Office(Installation):
    """inboxd as ``inboxd once`` runs it, with the mail servers replaced by memory."""

    root: Path
    mailbox: MemoryMailbox = field(default_factory=MemoryMailbox)
    transport: MemoryTransport = field(default_factory=MemoryTransport)
    log: io.StringIO = field(default_factory=io.StringIO)
    now: float = NOW
    # The keys and the store live in memory: the keyring holds a key that was never a
    # file, and the store is the daemon's own SQLite store on a database that is
    # never a file (one implementation of the store's rules, no copy to drift).
    keyring: Keyring = field(default_factory=memory_keyring)
    db: SqliteStore = field(init=False)

    def setup(self) -> Office:
        self.root.mkdir(parents=True, exist_ok=True)
        for name in ("imap-password", "smtp-password"):
            (self.root / name).write_text("unused: the servers are in memory\n")
            (self.root / name).chmod(0o600)
        self.write_config()
        logs.configure("json", "debug", stream=self.log)
        self.db = SqliteStore(None, self.keyring, clock=self.clock)
        return self

    def write_config(self, **options: TomlValue | None) -> None:
        """The suite's configuration (:func:`config_text`, ``options`` over its
        defaults); its IMAP and SMTP settings are never dialled, as ``build`` is
        given the mailbox and the transport."""
        sections = imap_sections(
            imap_port=1,
            smtp_port=1,
            ca=str(self.root / "unused-ca"),
            password_file=self.root / "imap-password",
            smtp_password_file=self.root / "smtp-password",
        )
        self.config_path.write_text(config_text(self.root, sections, **options))

    def close(self) -> None:
        self.db.close()

    def clock(self) -> float:
        return self.now

    def deliver(self, raw: bytes, *, login: str | None, mail_from: str) -> None:
        """``raw`` as the relay files it after a submission by ``login`` (or none)."""
        self.mailbox.deliver(stamp(raw, login, mail_from, HOSTED))

    def app(self) -> App:
        """The office as ``inboxd once`` assembles it, around the memory servers."""
        return build(
            self.cfg(),
            clock=self.clock,
            mailbox=self.mailbox,
            transport=self.transport,
            store=self.db,
            keyring=self.keyring,
        )

    def once(self) -> int:
        return once(self.app())

    def until_quiet(self, rounds: int = 6) -> None:
        for _ in range(rounds):
            assert self.once() == 0
            if not self.mailbox.messages and self.outbox_size() == 0:
                return

    def store(self) -> Store:
        """The store the rounds share, to read what they left (the office closes it)."""
        return self.db

    @contextlib.contextmanager
    def reading(self) -> Iterator[Store]:
        yield self.db

    def state_bytes(self) -> bytes:
        """Every byte the store holds: its database as it would be written to a file."""
        assert not (self.root / "state").exists(), "the in-memory store wrote to disk"
        return self.db._c.serialize()

    def by_state(self) -> dict[SignalState, int]:
        with self.reading() as s:
            return s.counts_by_state()

    def stats(self) -> list[dict[str, object]]:
        with self.reading() as s:
            return s.stats_rows(2026)

    def subjects(self, address: str) -> list[str]:
        return [str(parse(m)["Subject"]) for m in self.transport.to(address)]


@pytest.fixture
def office(tmp_path: Path) -> Iterator[Office]:
    office = Office(tmp_path / "office").setup()
    yield office
    office.close()


def new_signal(office: Office, mark: str) -> tuple[str, bytes]:
    office.deliver(signal_mail(mark), login=REPORTER, mail_from=REPORTER)
    assert office.once() == 0
    (request,) = office.transport.to(F1)
    ref = find_references(str(parse(request)["Subject"]), "VV")[0]
    return ref, request


def command(office: Office, raw: bytes, sender: str = F1) -> None:
    """A functionaris' reply, submitted from their own account, and all it causes."""
    office.deliver(raw, login=sender, mail_from=sender)
    office.until_quiet()


def assert_signal_gone(office: Office, mark: str) -> None:
    assert office.by_state() == {}
    assert office.mailbox.messages == {}, "the original and the command are expunged"
    assert_absent(mark, where="the store on disk", data=office.state_bytes())
    assert_absent(mark, where="the logs", data=office.log.getvalue())
    assert_absent(REPORTER, where="the logs", data=office.log.getvalue())
    for raw in office.transport.to(REPORTER):
        assert_absent(mark, where="what the reporter received", data=raw)


def test_build_wires_the_store_and_keyring_it_is_given(office: Office) -> None:
    store = office.store()
    app = build(
        office.cfg(),
        mailbox=office.mailbox,
        transport=office.transport,
        store=store,
        keyring=office.keyring,
    )
    assert app.store is store and app.keyring is office.keyring
    assert app.intake.store is store and app.intake.keyring is office.keyring
    assert app.outbox.store is store
    # The store was given, so the office closes it, not the app.
    app.close()
    assert store.outbox_size() == 0


def test_a_new_signal_is_acknowledged_and_triaged(office: Office) -> None:
    mark = marker()
    ref, request = new_signal(office, mark)

    (ack,) = office.transport.to(REPORTER)
    assert ref in str(parse(ack)["Subject"])
    assert_absent(mark, where="the acknowledgement", data=ack)
    for f in (F1, F2):
        (req,) = office.transport.to(f)
        assert str(parse(req)["Subject"]).startswith(f"Triageverzoek {ref}")
        assert mark in req.decode("utf-8", "replace"), "include_content = full"
        (token,) = tokens_in(body_text(req))
        assert token not in str(parse(req)["Subject"])
    assert {s.envelope.sender for s in office.transport.sent} <= {MAILBOX, ""}
    assert office.by_state() == {"queued": 1}
    # retain_in_mailbox = "queued": hard-deleted once encrypted and committed.
    assert office.mailbox.messages == {}
    assert_absent(mark, where="the store on disk", data=office.state_bytes())
    assert_absent(mark, where="the logs", data=office.log.getvalue())


def test_an_authenticated_reply_forwards_to_kedo_and_ends_the_signal(office: Office) -> None:
    mark = marker()
    ref, request = new_signal(office, mark)
    command(office, reply(request, "KEDO\nVORM arbeid"))

    (kedo,) = office.transport.to(KEDO)
    assert mark in kedo.decode("utf-8", "replace"), "KEDO receives the signal itself"
    fwd = parse(kedo)
    assert [p.get_content_type() for p in fwd.iter_attachments()] == ["message/rfc822"]
    assert ref in str(fwd["Subject"]) and "arbeid" in body_text(kedo)

    ack, feedback = office.transport.to(REPORTER)
    assert ref in str(parse(feedback)["Subject"]) and "doorgezet" in body_text(feedback)
    for f in (F1, F2):
        closed = [s for s in office.subjects(f) if s.startswith("Afgehandeld en verwijderd")]
        assert len(closed) == 1 and ref in closed[0], office.subjects(f)
    assert any(s.startswith("Uitgevoerd") for s in office.subjects(F1))
    assert office.transport.to(RIEC) == []

    assert_signal_gone(office, mark)
    assert office.stats() == [
        {"month": "2026-11", "source": "intern", "form": "arbeid", "outcome": "kedo", "count": 1}
    ]
    assert '"authenticated": true' in office.log.getvalue()


def test_afsluiten_ends_the_signal_without_forwarding(office: Office) -> None:
    mark = marker()
    ref, request = new_signal(office, mark)
    command(office, reply(request, "AFSLUITEN geen signaal van uitbuiting"))

    assert office.transport.to(KEDO) == [] and office.transport.to(RIEC) == []
    feedback = office.transport.to(REPORTER)[-1]
    assert ref in str(parse(feedback)["Subject"]) and "afgehandeld" in body_text(feedback)
    for f in (F1, F2):
        assert any(s.startswith("Afgehandeld en verwijderd") for s in office.subjects(f))
    assert_signal_gone(office, mark)
    (row,) = office.stats()
    assert row["outcome"] == "afgesloten" and row["count"] == 1


def test_a_question_and_the_reporters_answer(office: Office) -> None:
    mark = marker()
    ref, request = new_signal(office, mark)
    command(office, reply(request, "VRAAG Weet u het huisnummer nog?"))

    question = office.transport.to(REPORTER)[-1]
    assert ref in str(parse(question)["Subject"]) and "huisnummer" in body_text(question)
    assert office.by_state() == {"waiting_info": 1}

    answer_mark = marker()
    answer = signal_mail(
        answer_mark, subject=f"RE: Vraag over uw signaal {ref}", body=f"Nummer 12. {answer_mark}\n"
    )
    office.deliver(answer, login=REPORTER, mail_from=REPORTER)
    office.until_quiet()
    assert office.by_state() == {"queued": 1}
    (notice,) = [
        m for m in office.transport.to(F1) if str(parse(m)["Subject"]).startswith("Aanvulling")
    ]
    assert answer_mark in body_text(notice)
    token = tokens_in(body_text(request))[0]
    assert token in body_text(notice) and token not in str(parse(notice)["Subject"])

    # A reply to the notice (its quoted body carries the token) is a command too.
    command(office, reply(notice, "KEDO"))
    (kedo,) = office.transport.to(KEDO)
    assert len(list(parse(kedo).iter_attachments())) == 2, "original and follow-up"
    assert answer_mark.encode() in kedo
    assert_signal_gone(office, mark)
    assert_absent(answer_mark, where="the store on disk", data=office.state_bytes())


def test_a_forward_refused_for_now_is_retried_and_only_then_ends_the_signal(
    office: Office,
) -> None:
    mark = marker()
    _, request = new_signal(office, mark)
    office.transport.refuse[KEDO] = [SendError("451 4.3.0 try again later", temporary=True)]
    office.deliver(reply(request, "KEDO"), login=F1, mail_from=F1)
    assert office.once() == 0

    assert len(office.transport.refused) == 1 and office.transport.to(KEDO) == []
    assert office.by_state() == {"forwarding": 1}, "open until KEDO has it"
    assert office.stats() == []
    office.now += 3600  # past the outbox's back-off
    office.until_quiet()
    assert len(office.transport.to(KEDO)) == 1
    assert_signal_gone(office, mark)
    assert office.stats()[0]["outcome"] == "kedo"


@pytest.mark.parametrize("forgery", ["unauthenticated", "forged_trusted_field", "other_account"])
def test_a_forged_reply_is_refused(office: Office, forgery: str) -> None:
    mark = marker()
    ref, request = new_signal(office, mark)
    raw = reply(request, "KEDO")
    if forgery == "unauthenticated":
        # The functionaris' own envelope sender without a login: the relay says spf=fail.
        office.deliver(raw, login=None, mail_from=F1)
    elif forgery == "forged_trusted_field":
        # A pass written by the forger under the relay's id is stripped by the relay.
        head = f"Authentication-Results: relay.gemeente.example; auth=pass smtp.auth={F1}\r\n"
        office.deliver(head.encode() + raw, login=None, mail_from="forger@evil.example")
    else:
        office.deliver(raw, login="buiten@extern.example", mail_from=F1)
    office.until_quiet()

    assert office.transport.to(KEDO) == [], "the forged command was carried out"
    assert office.by_state() == {"queued": 1}
    (answer,) = [
        s for s in office.transport.to(F1) if str(parse(s)["Subject"]).startswith("Niet uitgevoerd")
    ]
    assert "niet worden bevestigd als afkomstig uit uw eigen mailbox" in body_text(answer)
    assert '"reason": "unverified"' in office.log.getvalue()
    assert office.mailbox.messages == {}, "the forged command mail is deleted once handled"
    assert office.stats() == []
    s = office.store().signal_by_ref(ref)
    assert s is not None and s.state == "queued" and not s.destinations


def test_a_forward_named_again_after_every_destination_accepted_ends_the_signal(
    office: Office,
) -> None:
    """A drill goes to both functionarissen; F1's copy is refused for good (the signal
    is marked failed), F2's is accepted, so RIEC has it. Naming RIEC again queues
    nothing, as RIEC is done: the signal ends then, instead of waiting in
    ``forwarding`` for a forward that was never queued."""
    mark = marker()
    office.deliver(
        signal_mail(mark, sender=F1, subject=f"[TEST] oefening {mark}"), login=F1, mail_from=F1
    )
    assert office.once() == 0
    (request,) = [
        m for m in office.transport.to(F1) if str(parse(m)["Subject"]).startswith("Triageverzoek")
    ]
    office.transport.refuse[F1] = [SendError("550 5.1.1 mailbox unavailable", temporary=False)]
    command(office, reply(request, "RIEC"))
    assert len(office.transport.refused) == 1
    assert office.by_state() == {"forwarding_failed": 1}, "F1's copy was given up"

    command(office, reply(request, "RIEC"))
    assert office.by_state() == {}, "every destination named has the signal: it ends"
    assert any(s.startswith("Afgehandeld en verwijderd") for s in office.subjects(F2))
    assert office.transport.to(RIEC) == [], "a drill never reaches the real destination"


def test_a_forward_naming_only_done_destinations_keeps_a_failed_one_visible(
    office: Office,
) -> None:
    """KEDO refuses for good, RIEC accepts. Naming RIEC again queues nothing: the
    signal stays ``forwarding_failed`` (KEDO still lacks it) rather than claiming to be
    on its way; naming KEDO again forwards it and ends the signal."""
    mark = marker()
    _, request = new_signal(office, mark)
    office.transport.refuse[KEDO] = [SendError("550 5.1.1 no such user", temporary=False)]
    command(office, reply(request, "KEDO RIEC"))
    assert len(office.transport.to(RIEC)) == 1 and office.transport.to(KEDO) == []
    assert office.by_state() == {"forwarding_failed": 1}

    command(office, reply(request, "RIEC"))
    assert office.by_state() == {"forwarding_failed": 1}, "nothing is on its way"
    assert len(office.transport.to(RIEC)) == 1, "RIEC is not sent the signal twice"

    command(office, reply(request, "KEDO"))
    assert len(office.transport.to(KEDO)) == 1
    assert_signal_gone(office, mark)


def test_a_forward_refused_for_good_alerts_and_keeps_the_signal(office: Office) -> None:
    # The outbox tells triage (its outcomes) that the forward was given up.
    _, request = new_signal(office, marker())
    office.transport.refuse[KEDO] = [SendError("550 5.1.1 no such user", temporary=False)]
    command(office, reply(request, "KEDO"))

    assert office.transport.to(KEDO) == []
    assert office.by_state() == {"forwarding_failed": 1}
    alerts = [m for m in office.transport.to(F1) if "LET OP" in str(parse(m)["Subject"])]
    assert len(alerts) == 1 and "KEDO" in str(parse(alerts[0])["Subject"])


def test_a_bounce_of_a_forward_reopens_the_open_signal(office: Office) -> None:
    # Intake hands the automatic answer to triage (the reply handler's auto_answer).
    _, request = new_signal(office, marker())
    office.transport.refuse[KEDO] = [SendError("451 4.3.0 try again later", temporary=True)]
    office.deliver(reply(request, "KEDO RIEC"), login=F1, mail_from=F1)
    assert office.once() == 0
    (forward,) = office.transport.to(RIEC)
    assert office.by_state() == {"forwarding": 1}

    bounce = dsn(str(parse(forward)["Message-ID"]), RIEC)
    office.deliver(bounce, login=None, mail_from="mailer-daemon@gemeente.example")
    assert office.once() == 0
    assert office.by_state() == {"forwarding_failed": 1}, "a bounce reopens it"
    alerts = [m for m in office.transport.to(F1) if "LET OP" in str(parse(m)["Subject"])]
    assert len(alerts) == 1 and "RIEC" in str(parse(alerts[0])["Subject"])
    assert '"event": "forward.bounced"' in office.log.getvalue()


def test_a_command_replayed_after_the_dedup_window_of_a_signal_still_open_is_a_replay(
    office: Office,
) -> None:
    """The record that a command mail has acted lives as long as its signal, not only
    ``dedup_window``: a captured DKIM-signed reply re-sent on day 31, with its own
    command written in, must not act while the signal is still open."""
    mark = marker()
    _, request = new_signal(office, mark)
    raw = reply(request, "VORM arbeid")
    command(office, raw)
    assert office.by_state() == {"queued": 1}

    office.now += 31 * 86400
    with office.reading() as store:
        store.expire(office.now, 30 * 86400, 3600)
    replay = raw.replace(b"VORM arbeid", b"AFSLUITEN", 1)
    assert replay != raw
    command(office, replay)
    assert office.by_state() == {"queued": 1}, "the replay closed the signal"
    assert '"reason": "replayed"' in office.log.getvalue()


def triage_refs(office: Office, who: str) -> list[str]:
    """The references of the triage requests ``who`` received, in sending order."""
    subjects = [s for s in office.subjects(who) if s.startswith("Triageverzoek")]
    return [find_references(s, "VV")[0] for s in subjects]


def test_a_verified_colleague_held_in_a_flood_of_forged_senders_is_released_first(
    office: Office,
) -> None:
    """Forged senders, one signal each, spend a functionaris' hour and are held
    after it; a colleague's signal, its sender vouched for by our own server, is
    held after them. Turns and counts cannot tell them apart (one each, and the
    forged ones came first); the evidence does: the colleague's request is the first
    of the release."""
    office.write_config(notice_limit="4/h")
    forged = [f"aanvaller{i}@extern.example" for i in range(10)]
    for sender in forged:
        office.deliver(signal_mail(marker(), sender=sender), login=None, mail_from=sender)
    assert office.once() == 0
    assert len(triage_refs(office, F1)) == 4, "the functionaris' hour, then held"
    office.now += 60
    office.deliver(signal_mail(marker()), login=REPORTER, mail_from=REPORTER)
    assert office.once() == 0
    (ack,) = office.transport.to(REPORTER)
    ref = find_references(str(parse(ack)["Subject"]), "VV")[0]
    with office.reading() as store:
        assert store.flag_counts() == {"flood": 7, "flood_verified": 1}

    office.now += 3600
    assert office.once() == 0
    released = triage_refs(office, F1)[4:]
    assert len(released) == 4, "the next hour's budget"
    assert released[0] == ref, "the verified colleague before the forged senders"
    assert triage_refs(office, F2)[4:] == released
    with office.reading() as store:
        # Released, the mark goes with "flood": the request is no longer waiting.
        assert store.flag_counts() == {"flood": 3, "flood_delayed": 4}


def test_new_signals_leave_the_notice_reserve_for_signals_already_in_triage(
    office: Office,
) -> None:
    """With a tenth of a functionaris' hour left, a new signal is held instead of
    taking it, as a release would be: the reporter's follow-up to a signal already
    in triage still reaches the functionarissen."""
    office.write_config(notice_limit="10/h")
    mark = marker()
    office.deliver(signal_mail(mark), login=REPORTER, mail_from=REPORTER)
    assert office.once() == 0
    (ack,) = office.transport.to(REPORTER)
    ref = find_references(str(parse(ack)["Subject"]), "VV")[0]
    forged = [f"aanvaller{i}@extern.example" for i in range(9)]
    for sender in forged:
        office.deliver(signal_mail(marker(), sender=sender), login=None, mail_from=sender)
    assert office.once() == 0
    assert len(triage_refs(office, F1)) == 9, "the reserve of one notice is left"
    with office.reading() as store:
        assert store.flag_counts() == {"flood": 1}

    answer_mark = marker()
    answer = signal_mail(
        answer_mark, subject=f"RE: Ontvangen: uw signaal {ref}", body=f"Nog iets. {answer_mark}\n"
    )
    office.deliver(answer, login=REPORTER, mail_from=REPORTER)
    office.until_quiet()
    for f in (F1, F2):
        (notice,) = [s for s in office.subjects(f) if s.startswith("Aanvulling")]
        assert ref in notice
    assert '"reason": "rate_limited"' not in office.log.getvalue()
