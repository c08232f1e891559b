"""No runaway automatic mail, end to end against the real Dovecot + relay: naive
auto-responders on a functionaris' and on a reporter's mailbox for a simulated hour
(the clock is injected; no real hour passes), floods from one sender, and the
per-recipient budgets."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from servers import MailServer
from world import (
    F1,
    F2,
    KEDO,
    MAILBOX,
    REPORTER,
    World,
    assert_absent,
    body_text,
    marker,
    parse,
    reply,
    signal_mail,
    submit,
)

from inboxd.mail_limits import ANSWER_PER_HOUR, FLOOD_QUIET
from inboxd.references import find_references

OTHER = "collega@gemeente.example"
STEP = 300.0  # five simulated minutes per round
HOUR_ROUNDS = 12


def auto_reply(original: bytes, responder: str, *, marked: bool) -> bytes:
    """What a naive out-of-office sends: an answer to everything, quoting it.
    ``marked``: with only the markers the issue names (Exchange's agent header and a
    Dutch subject); unmarked: nothing at all that says it is automatic."""
    o = parse(original)
    subject = f"{'Automatisch antwoord' if marked else 'RE'}: {o['Subject']}"
    extra = "X-MS-Exchange-Generated-Message-Source: Mailbox Rules Agent\r\n" if marked else ""
    quoted = "\r\n".join("> " + line for line in body_text(original).splitlines())
    return (
        f"From: <{responder}>\r\nTo: {MAILBOX}\r\nSubject: {subject}\r\n"
        f"Message-ID: <oof-{marker()}@gemeente.example>\r\n"
        f"In-Reply-To: {o['Message-ID']}\r\nReferences: {o['Message-ID']}\r\n{extra}"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Ik ben afwezig tot maandag.\r\n\r\n{quoted}\r\n"
    ).encode()


def sent_to(mail: MailServer) -> Counter[str]:
    """Every mail inboxd handed to the relay, by recipient."""
    return Counter(r for t in mail.relay.received for r in t.rcpt_tos)


def run_hour(
    world: World, mail: MailServer, responders: dict[str, bool], answered: set[str] | None = None
) -> int:
    """An hour in rounds of five minutes: inboxd does what is due, then every
    responder answers every mail it has not answered yet (``answered``: the
    Message-IDs it answered before). Returns the replies sent."""
    answered = set() if answered is None else answered
    replies = 0
    for _ in range(HOUR_ROUNDS):
        world.now += STEP
        world.once()
        for address, marked in responders.items():
            for m in mail.messages(address):
                mid = str(parse(m)["Message-ID"])
                if mid in answered:
                    continue
                answered.add(mid)
                mail.deliver(auto_reply(m, address, marked=marked), MAILBOX, mail_from=address)
                replies += 1
    return replies


def close_reply(request: bytes) -> bytes:
    r = parse(request)
    return (
        f"From: <{F1}>\r\nTo: {MAILBOX}\r\nSubject: RE: {r['Subject']}\r\n"
        f"Message-ID: <close-{marker()}@gemeente.example>\r\nIn-Reply-To: {r['Message-ID']}\r\n"
        "Content-Type: text/plain\r\n\r\nAFSLUITEN\r\n\r\n"
        + "\r\n".join("> " + line for line in body_text(request).splitlines())
        + "\r\n"
    ).encode()


def events(world: World, name: str) -> list[dict[str, object]]:
    out = []
    for line in world.log_text().splitlines():
        if line.startswith("{"):
            e = json.loads(line)
            if e["event"] == name:
                out.append(e)
    return out


@pytest.mark.parametrize("marked", [True, False], ids=["marked", "unmarked"])
def test_a_naive_auto_responder_on_a_functionaris_mailbox_for_an_hour(
    world: World, mail: MailServer, marked: bool
) -> None:
    """The issue's case: a functionaris' out-of-office and one forged command mail
    made 65 rejections in 40 s. Now: a handful in an hour, then silence."""
    mark = marker()
    mail.deliver(signal_mail(mark), MAILBOX)
    world.once()
    request = mail.wait_for_messages(F1, 1)[0]
    ref = find_references(str(parse(request)["Subject"]), "VV")[0]
    forged = (
        f"From: <{F1}>\r\nTo: {MAILBOX}\r\nSubject: RE: Triageverzoek {ref}\r\n"
        f"Message-ID: <forged-{marker()}@extern.example>\r\n"
        "Content-Type: text/plain\r\n\r\nKEDO\r\n"
    ).encode()
    mail.deliver(forged, MAILBOX)

    replies = run_hour(world, mail, {F1: marked})

    sent = sent_to(mail)
    # Triage request, the forged mail's rejection, and (unmarked) one rejection of
    # the out-of-office that answered the triage request; never one per reply.
    assert sent[F1] == (2 if marked else 3), sent
    assert sent[F2] == 1, sent
    assert sent[REPORTER] == 1, sent
    assert replies == sent[F1], "the responder answered each of them once, and that ended it"
    assert world.status()["open"] == 1, "the signal is still there, untouched"
    if not marked:
        quiet = events(world, "mail.suppressed")
        assert quiet and {e["reason"] for e in quiet} == {"answers_inboxd"}
    assert_absent(mark, where="the logs", data=world.log_text())


@pytest.mark.parametrize("marked", [True, False], ids=["marked", "unmarked"])
def test_a_naive_auto_responder_on_a_reporter_mailbox_for_an_hour(
    world: World, mail: MailServer, marked: bool
) -> None:
    """Acknowledgement, out-of-office, then a functionaris closes the signal: the
    feedback's out-of-office is no new conversation either."""
    mark = marker()
    mail.deliver(signal_mail(mark), MAILBOX)
    world.once()
    request = mail.wait_for_messages(F1, 1)[0]
    answered: set[str] = set()
    run_hour(world, mail, {REPORTER: marked}, answered)
    mail.deliver(close_reply(request), MAILBOX, mail_from=F1)
    run_hour(world, mail, {REPORTER: marked}, answered)

    sent = sent_to(mail)
    assert sent[REPORTER] == 2, f"acknowledgement and feedback only: {sent}"
    # Triage request, result, closing, and for the unmarked responder a follow-up
    # notice (its answer to the ack is kept with the signal) and one triage request
    # for its answer to the feedback (a new signal: kept, never answered).
    assert (sent[F1], sent[F2]) == ((3, 2) if marked else (5, 4)), sent
    if marked:
        assert world.status()["open"] == 0
    else:
        status = world.status()
        assert status["open"] == 1, "the answer to the feedback is kept as a signal"
        assert status["flags"] == {"answers_inboxd": 1}, status
        skipped = [e for e in events(world, "ack.skipped") if e["reason"] == "answers_inboxd"]
        assert len(skipped) == 1
        # Closed too: still no feedback, so the responder has nothing to answer.
        requests = [m for m in mail.messages(F1) if "Triageverzoek" in str(parse(m)["Subject"])]
        mail.deliver(close_reply(requests[-1]), MAILBOX, mail_from=F1)
        run_hour(world, mail, {REPORTER: marked}, answered)
        assert world.status()["open"] == 0
        assert sent_to(mail)[REPORTER] == 2


def test_each_marker_the_issue_names_makes_a_signal_without_acknowledgement(
    world: World, mail: MailServer
) -> None:
    """Kept and triaged like any signal (flagged ``auto``), never acknowledged."""
    marked = [
        signal_mail(
            marker(), headers={"X-MS-Exchange-Generated-Message-Source": "Mailbox Rules Agent"}
        ),
        signal_mail(marker(), headers={"X-Autogenerated": "Reply"}),
        signal_mail(marker(), headers={"List-Unsubscribe": "<mailto:uit@lijst.example>"}),
        signal_mail(marker(), headers={"List-Id": "<lijst.gemeente.example>"}),
        signal_mail(marker(), subject="Automatisch antwoord: Overleg"),
        signal_mail(marker(), subject="Afwezig: Overleg"),
        signal_mail(marker(), subject="Out of Office: Overleg"),
    ]
    mail.append_many(MAILBOX, marked)
    world.once()
    status = world.status()
    assert status["open"] == len(marked)
    assert status["flags"].get("auto") == len(marked), status
    assert sent_to(mail)[F1] == len(marked), "each is triaged"
    assert sent_to(mail)[REPORTER] == 0, "none is acknowledged"
    assert len(events(world, "ack.skipped")) == len(marked)


def test_a_reporters_real_answer_with_only_a_weak_marker_is_kept(
    world: World, mail: MailServer
) -> None:
    """Not swallowed: an answer to the acknowledgement from the reporter's own
    account, about the open signal, that merely carries List-Unsubscribe (a mailing
    tool's habit) is a follow-up like any other; the same with Exchange's agent header
    is an automatic answer, recorded and deleted."""
    mail.deliver(signal_mail(marker()), MAILBOX)
    world.once()
    ack = mail.wait_for_messages(REPORTER, 1)[0]
    a = parse(ack)
    ref = find_references(str(a["Subject"]), "VV")[0]

    def answer(extra: str, text: str) -> bytes:
        return (
            f"From: <{REPORTER}>\r\nTo: {MAILBOX}\r\nSubject: RE: {a['Subject']}\r\n"
            f"Message-ID: <antw-{marker()}@gemeente.example>\r\nIn-Reply-To: {a['Message-ID']}\r\n"
            f"{extra}Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
        ).encode()

    submit(mail, answer("List-Unsubscribe: <mailto:uit@lijst.example>\r\n", "Nog iets."), REPORTER)
    world.once()
    followups = events(world, "signal.followup")
    assert [e["ref"] for e in followups] == [ref]
    submit(
        mail,
        answer("X-MS-Exchange-Generated-Message-Source: Mailbox Rules Agent\r\n", "Afwezig."),
        REPORTER,
    )
    world.once()
    assert len(events(world, "signal.followup")) == 1
    assert [e["kind"] for e in events(world, "mail.auto_answer")] == ["auto_answer"]
    assert world.status()["open"] == 1
    assert sent_to(mail)[REPORTER] == 1, "neither is answered"


def test_a_flood_from_one_sender_is_queued_whole_and_announced_once(
    world: World, mail: MailServer
) -> None:
    per_sender = world.cfg().triage.request_limit[0]
    assert per_sender == 10, "the default, as the README says"
    marks = [marker() for _ in range(30)]
    mail.append_many(MAILBOX, [signal_mail(m) for m in marks])
    world.once()

    status = world.status()
    assert status["open"] == 30, "nothing is lost"
    held = 30 - per_sender
    assert status["flags"].get("flood") == held
    sent = sent_to(mail)
    assert sent[F1] == per_sender and sent[F2] == per_sender, sent
    assert sent[REPORTER] == 10, "acknowledgements stop at ack_rate_limit (10/h)"
    assert len(events(world, "triage_request.held")) == held

    # The notice waits until the flood has been quiet a while, then comes once.
    world.now += FLOOD_QUIET / 2
    world.once()
    assert sent_to(mail)[F1] == per_sender
    world.now += FLOOD_QUIET
    world.once()
    world.now += FLOOD_QUIET
    world.once()
    sent = sent_to(mail)
    assert sent[F1] == per_sender + 1 and sent[F2] == per_sender + 1, sent
    notice = mail.wait_for_messages(F1, per_sender + 1)[-1]
    n = parse(notice)
    assert str(held) in str(n["Subject"]) and str(held) in body_text(notice)
    assert not list(n.iter_attachments()), "a count, no content"
    for m in marks:
        assert_absent(m, where="the flood notice", data=notice)
        assert_absent(m, where="the logs", data=world.log_text())
    assert [e["count"] for e in events(world, "flood.noticed")] == [held]


def test_the_limits_are_the_configured_ones(world: World, mail: MailServer) -> None:
    world.write_config(request_limit="2/h", notice_limit="3/h")
    mail.append_many(MAILBOX, [signal_mail(marker()) for _ in range(3)])
    mail.append_many(MAILBOX, [signal_mail(marker(), sender=OTHER) for _ in range(2)])
    world.once()
    status = world.status()
    assert status["open"] == 5
    # The reporter's third is over request_limit; the other sender's second finds
    # the functionarissen's notice_limit spent (2 + 1 triage requests each).
    assert status["flags"].get("flood") == 2, status
    assert sent_to(mail)[F1] == 3 and sent_to(mail)[F2] == 3


def test_answers_to_one_functionaris_stop_at_the_hours_budget(
    world: World, mail: MailServer
) -> None:
    mail.deliver(signal_mail(marker()), MAILBOX)
    world.once()
    request = mail.wait_for_messages(F1, 1)[0]
    ref = find_references(str(parse(request)["Subject"]), "VV")[0]
    tries = ANSWER_PER_HOUR + 5
    bad = [
        (
            f"From: <{F1}>\r\nTo: {MAILBOX}\r\nSubject: RE: Triageverzoek {ref}\r\n"
            f"Message-ID: <try-{i}-{marker()}@gemeente.example>\r\n"
            "Content-Type: text/plain\r\n\r\nKEDO\r\n"
        ).encode()
        for i in range(tries)
    ]
    mail.append_many(MAILBOX, bad)
    world.once()
    assert sent_to(mail)[F1] == 1 + ANSWER_PER_HOUR
    limited = [e for e in events(world, "mail.suppressed") if e["reason"] == "rate_limited"]
    assert len(limited) == 5 and {e["mail_kind"] for e in limited} == {"command_rejected"}
    assert len(events(world, "command.rejected")) == tries, "each is still handled and logged"
    # An hour later the budget is back.
    world.now += 3601
    mail.append_many(MAILBOX, bad[:1])
    world.once()
    assert sent_to(mail)[F1] == 1 + ANSWER_PER_HOUR, "the same mail again is a duplicate"
    mail.append_many(MAILBOX, [bad[0].replace(b"Message-ID: <try-0", b"Message-ID: <later-0")])
    world.once()
    assert sent_to(mail)[F1] == 2 + ANSWER_PER_HOUR


def triage_requests_to(mail: MailServer, who: str) -> list[str]:
    """The references of the triage requests inboxd sent ``who``, in sending order."""
    return [
        find_references(str(parse(t.raw)["Subject"]), "VV")[0]
        for t in mail.relay.received
        if who in t.rcpt_tos and "Triageverzoek" in str(parse(t.raw)["Subject"])
    ]


def test_held_signals_get_their_triage_request_later_within_the_budgets(
    world: World, mail: MailServer
) -> None:
    """A flood from one sender past request_limit: the held signals' requests follow,
    hour by hour, never more than the sender's limit (nor a functionaris' budget)
    in any hour, each exactly once."""
    per_sender, _ = world.cfg().triage.request_limit
    per_functionaris, _ = world.cfg().triage.notice_limit
    marks = [marker() for _ in range(30)]
    mail.append_many(MAILBOX, [signal_mail(m) for m in marks])
    start = world.now
    world.once()
    assert world.status()["flags"].get("flood") == 30 - per_sender
    arrivals: list[tuple[float, int]] = [(world.now, len(triage_requests_to(mail, F1)))]
    while world.now < start + 4 * 3600:
        world.now += 600
        world.once()
        arrivals.append((world.now, len(triage_requests_to(mail, F1))))
    new = [(t, n - arrivals[i - 1][1]) for i, (t, n) in enumerate(arrivals) if i]
    for t, _ in new:
        in_hour = sum(k for u, k in new if t - 3600 <= u <= t)
        assert in_hour <= min(per_sender, per_functionaris), (t - start, new)
    assert sum(k for t, k in new if t <= start + 3600) == 0, "the sender's hour was full"
    for f in (F1, F2):
        refs = triage_requests_to(mail, f)
        assert len(refs) == 30 and len(set(refs)) == 30, "each signal's request, once"
    status = world.status()
    assert status["open"] == 30
    assert status["flags"] == {"flood_delayed": 30 - per_sender}, status
    assert len(events(world, "triage_request.released")) == 30 - per_sender
    assert not [e for e in events(world, "mail.suppressed") if e["mail_kind"] == "triage_request"]
    for m in marks:
        assert_absent(m, where="the logs", data=world.log_text())


def test_a_colleagues_signal_held_by_an_attackers_flood_is_released_first(
    world: World, mail: MailServer
) -> None:
    """Forged senders spend the functionarissen's hour; a colleague's signal that
    arrives next is held. In the first release it goes before the attacker's
    remaining mails, and a functionaris can forward it by replying as usual."""
    world.write_config(request_limit="2/h", notice_limit="6/h")
    attackers = [f"aanvaller{i}@extern.example" for i in range(3)]
    mail.append_many(
        MAILBOX, [signal_mail(marker(), sender=a) for a in attackers for _ in range(4)]
    )
    world.once()
    assert len(triage_requests_to(mail, F1)) == 6, "two per forged sender, then the budget"
    world.now += 60
    mark = marker()
    mail.deliver(signal_mail(mark), MAILBOX)
    world.once()
    ack = mail.wait_for_messages(REPORTER, 1)[0]
    ref = find_references(str(parse(ack)["Subject"]), "VV")[0]
    status = world.status()
    assert status["flags"].get("flood") == 7, "six of the attacker's and the colleague's"
    assert ref not in triage_requests_to(mail, F1)

    # The flood notice comes while the budget is still spent: a count, no content.
    world.now += FLOOD_QUIET
    world.once()
    notices = [t.raw for t in mail.relay.received if "LET OP" in str(parse(t.raw)["Subject"])]
    assert len(notices) == 2, "one per functionaris"
    for n in notices:
        assert "7" in str(parse(n)["Subject"])
        assert_absent(mark, where="the flood notice", data=n)
    assert len(triage_requests_to(mail, F1)) == 6, "nothing released within the hour"

    # The first release: the colleague's signal first, then the attacker's, turn
    # by turn, as many as a functionaris' hour allows.
    world.now = world.now - FLOOD_QUIET - 60 + 3600 + 1
    world.once()
    released = triage_requests_to(mail, F1)[6:]
    assert released[0] == ref, released
    assert len(released) == 6, "the functionaris' budget, not one more"
    assert triage_requests_to(mail, F2)[6:] == released
    status = world.status()
    assert status["flags"] == {"flood": 1, "flood_delayed": 6}, status
    request = next(
        t.raw
        for t in mail.relay.received
        if F1 in t.rcpt_tos and ref in str(parse(t.raw)["Subject"])
    )
    assert mark in body_text(request), "a normal triage request, with the content"

    world.command(reply(request, "KEDO"))
    forwarded = mail.wait_for_messages(KEDO, 1)
    assert len(forwarded) == 1 and mark.encode() in forwarded[0]

    # The attacker's last one follows in the next hour.
    world.now += 3601
    world.once()
    assert len(triage_requests_to(mail, F1)) == 13
    assert world.status()["flags"] == {"flood_delayed": 6}
    assert not [e for e in events(world, "mail.suppressed") if e["mail_kind"] == "triage_request"]
    assert_absent(mark, where="the logs", data=world.log_text())


def test_a_verified_colleague_goes_before_a_flood_spread_over_forged_senders(
    world: World, mail: MailServer
) -> None:
    """Ten forged senders, one signal each, spend a functionaris' hour and six are
    held; the colleague's signal, submitted through the relay from their own account,
    is held after them. Each sender has one held signal, so turns and counts cannot
    put the colleague first: the relay's verified evidence does."""
    world.write_config(notice_limit="4/h")
    forged = [f"aanvaller{i}@extern.example" for i in range(10)]
    mail.append_many(MAILBOX, [signal_mail(marker(), sender=a) for a in forged])
    world.once()
    assert len(triage_requests_to(mail, F1)) == 4
    world.now += 60
    mail.deliver(signal_mail(marker()), MAILBOX)
    world.once()
    ack = mail.wait_for_messages(REPORTER, 1)[0]
    ref = find_references(str(parse(ack)["Subject"]), "VV")[0]
    assert world.status()["flags"] == {"flood": 7, "flood_verified": 1}

    world.now += 3600
    world.once()
    released = triage_requests_to(mail, F1)[4:]
    assert len(released) == 4 and released[0] == ref, released
    assert world.status()["flags"] == {"flood": 3, "flood_delayed": 4}


def test_a_release_cut_short_releases_nothing_and_the_next_releases_each_once(
    world: World, mail: MailServer
) -> None:
    """A release is one transaction: a process that dies in the middle of one (here:
    an exception between two signals, where SIGKILL would leave the same
    uncommitted transaction) has queued no request and released no signal; the
    next release sends each request once."""
    world.write_config(request_limit="2/h")
    mail.append_many(MAILBOX, [signal_mail(marker()) for _ in range(5)])
    world.once()
    world.now += 3601

    class Killed(Exception):
        pass

    beats = 0

    def die_at_the_second() -> None:
        nonlocal beats
        beats += 1
        if beats == 2:
            raise Killed

    app = world.app()
    try:
        with pytest.raises(Killed):
            app.intake.release_held(beat=die_at_the_second)
        assert app.store.outbox_size() == 0
    finally:
        app.close()
    assert world.status()["flags"] == {"flood": 3}
    world.once()
    world.now += 3601
    world.once()
    for f in (F1, F2):
        refs = triage_requests_to(mail, f)
        assert len(refs) == 5 and len(set(refs)) == 5, refs
    assert world.status()["flags"] == {"flood_delayed": 3}
