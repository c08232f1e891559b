"""Intake end to end against the real Dovecot + SMTP relay (docs/contract.md, "The life of a signal", steps 1–5)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import hostile
import pytest
from servers import MailServer
from world import (
    F1,
    F2,
    MAILBOX,
    OUTSIDER,
    REPORTER,
    World,
    as_submitted,
    assert_absent,
    body_text,
    marker,
    parse,
    signal_mail,
    submit,
)

from inboxd.references import find_references


def everything_in(mail: MailServer, address: str) -> list[bytes]:
    return [m for msgs in mail.all_messages(address).values() for m in msgs]


def test_plain_signal_is_queued_acknowledged_triaged_and_gone(
    world: World, mail: MailServer
) -> None:
    mark = marker()
    raw = signal_mail(mark)
    mail.deliver(raw, MAILBOX)
    assert world.once() == 0

    assert everything_in(mail, MAILBOX) == [], "the original must be hard-deleted from every folder"
    status = world.status()
    assert status["open"] == 1 and status["by_state"] == {"queued": 1}

    ack = mail.wait_for_messages(REPORTER, 1)[0]
    a = parse(ack)
    refs = find_references(str(a["Subject"]), "VV")
    assert len(refs) == 1, a["Subject"]
    assert refs[0] in body_text(ack)
    assert a["Auto-Submitted"] == "auto-replied"
    assert a["X-Auto-Response-Suppress"] == "All"
    assert a["In-Reply-To"] == parse(raw)["Message-ID"]
    assert a["Message-ID"] and a["Message-ID"] != parse(raw)["Message-ID"]
    assert_absent(mark, where="the acknowledgement", data=ack)
    assert "Signaal over een adres" not in ack.decode("utf-8", "replace")

    for f in (F1, F2):
        req = mail.wait_for_messages(f, 1)[0]
        r = parse(req)
        assert refs[0] in str(r["Subject"])
        assert r["Auto-Submitted"] == "auto-generated"
        attached = [p for p in r.iter_attachments() if p.get_content_type() == "message/rfc822"]
        assert len(attached) == 1
        assert attached[0].get_filename() == "signaal.eml"  # from text/mail.txt
        # The original travels unchanged (line endings as on the wire).
        assert raw.replace(b"\r\n", b"\n") in req.replace(b"\r\n", b"\n")
        assert mark in body_text(req)

    assert_absent(mark, where="the logs", data=world.log_text())
    assert_absent(REPORTER, where="the logs", data=world.log_text())
    assert_absent(mark, where="the store on disk", data=world.state_bytes())
    assert_absent(REPORTER, where="the store on disk", data=world.state_bytes())
    assert '"event": "signal.queued"' in world.log_text()
    assert '"event": "mailbox.delete_verified"' in world.log_text()


def test_a_copy_left_in_another_folder_is_named_in_a_warning(
    world: World, mail: MailServer
) -> None:
    """A server-side rule (or a colleague) that copied the signal elsewhere defeats
    the hard delete: inboxd deletes only what it processed, and says where a copy is."""
    mark = marker()
    raw = signal_mail(mark)
    mail.deliver(raw, MAILBOX)
    mail.append(MAILBOX, raw, folder="Kopie")
    assert world.once() == 0
    assert mail.messages(MAILBOX) == []
    assert len(mail.messages(MAILBOX, folder="Kopie")) == 1
    events = [json.loads(line) for line in world.log_text().splitlines() if line.startswith("{")]
    warned = [e for e in events if e["event"] == "mailbox.delete_unverified"]
    assert [(e["folder"], e["reason"], e["level"]) for e in warned] == [
        ("Kopie", "found", "warning")
    ]
    assert not any(e["event"] == "mailbox.delete_verified" for e in events)
    assert_absent(mark, where="the logs", data=world.log_text())


def test_marker_in_display_name_subject_and_body_leaks_nowhere(
    world: World, mail: MailServer
) -> None:
    mark = marker()
    raw = signal_mail(
        mark,
        display=f"Piet {mark}",
        subject=f"Over {mark} =?utf-8?q?{mark}?=",
        body=f"tekst {mark}\n" * 50,
    )
    mail.deliver(raw, MAILBOX)
    world.once()
    ack = mail.wait_for_messages(REPORTER, 1)[0]
    assert_absent(mark, where="the acknowledgement", data=ack)
    assert_absent(mark, where="the logs", data=world.log_text())
    assert_absent(mark, where="the store on disk", data=world.state_bytes())
    assert_absent(mark, where="the signals mailbox", data=b"".join(everything_in(mail, MAILBOX)))
    assert_absent(mark, where="status --json", data=world.cli("status", "--json").stdout)


@pytest.mark.parametrize(
    "kind",
    ["html_only", "attachments", "forwarded_eml", "eight_bit", "broken_mime"],
)
def test_every_shape_is_queued_once_and_acknowledged(
    world: World, mail: MailServer, kind: str
) -> None:
    mark = marker()
    if kind == "html_only":
        raw = signal_mail(
            mark, html=f"<html><body><p>Outlook-achtig <b>{mark}</b></p></body></html>"
        )
    elif kind == "attachments":
        raw = signal_mail(
            mark,
            attachments=[
                ("foto.jpg", b"\xff\xd8\xff" + b"x" * 5000, "image/jpeg"),
                ("notitie.pdf", b"%PDF-1.4 " + mark.encode(), "application/pdf"),
            ],
        )
    elif kind == "forwarded_eml":
        inner = signal_mail(mark, sender="iemand@elders.example")
        raw = (
            signal_mail(mark, attachments=[("doorgestuurd.eml", inner, "message/rfc822")])
            if False
            else _forward_of(inner, mark)
        )
    elif kind == "eight_bit":
        raw = (
            f"From: M\xe9lder <{REPORTER}>\r\nTo: {MAILBOX}\r\nSubject: caf\xe9 {mark}\r\n"
            "Message-ID: <8bit-1@gemeente.example>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"Ge\xefnteresseerd? {mark}\r\n"
        ).encode("latin-1")
    else:
        raw = (
            f"From: {REPORTER}\r\nTo: {MAILBOX}\r\nSubject: kapot {mark}\r\n"
            'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="nooit"\r\n\r\n'
            f"--verkeerd\r\nContent-Type: text/plain; charset=x-onbekend\r\n\r\n{mark}\r\n"
        ).encode()
    mail.deliver(raw, MAILBOX)
    world.once()
    world.once()
    assert everything_in(mail, MAILBOX) == []
    status = world.status()
    assert status["open"] == 1
    if kind == "broken_mime":
        assert status["flags"].get("malformed") == 1
    assert len(mail.wait_for_messages(REPORTER, 1)) == 1
    assert len(mail.messages(REPORTER)) == 1, "acknowledged exactly once"
    assert_absent(mark, where="the acknowledgement", data=mail.messages(REPORTER)[0])
    assert_absent(mark, where="the store on disk", data=world.state_bytes())


def _forward_of(inner: bytes, mark: str) -> bytes:
    from email import policy
    from email.message import EmailMessage
    from email.parser import BytesParser

    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = REPORTER
    msg["To"] = MAILBOX
    msg["Subject"] = f"FW: doorgestuurd {mark}"
    msg["Message-ID"] = "<fw-1@gemeente.example>"
    msg.set_content("Zie bijgevoegd bericht.\n")
    msg.add_attachment(BytesParser(policy=policy.default).parsebytes(inner))
    return msg.as_bytes()


def test_automatic_mail_gets_triage_but_no_acknowledgement(world: World, mail: MailServer) -> None:
    mark = marker()
    raw = signal_mail(mark, headers={"Auto-Submitted": "auto-replied", "X-Autoreply": "yes"})
    mail.deliver(raw, MAILBOX)
    world.once()
    assert everything_in(mail, MAILBOX) == []
    status = world.status()
    assert status["open"] == 1 and status["flags"].get("auto") == 1
    assert len(mail.wait_for_messages(F1, 1)) == 1
    assert mail.messages(REPORTER) == []


def test_no_acknowledgement_outside_ack_domains_nor_beyond_the_rate_limit(
    world: World, mail: MailServer
) -> None:
    world.write_config(rate="2/h")
    mail.deliver(signal_mail(marker(), sender=OUTSIDER), MAILBOX, mail_from=OUTSIDER)
    for _ in range(3):
        mail.deliver(signal_mail(marker()), MAILBOX)
    world.once()
    assert world.status()["open"] == 4
    assert mail.messages(OUTSIDER) == []
    assert len(mail.wait_for_messages(REPORTER, 2)) == 2
    world.once()
    assert len(mail.messages(REPORTER)) == 2, (
        "the third acknowledgement within the hour is withheld"
    )
    assert '"reason": "rate_limited"' in world.log_text()
    assert '"reason": "outside_ack_domains"' in world.log_text()


def test_retain_until_forwarded_keeps_the_original_and_queues_it_once(
    world: World, mail: MailServer
) -> None:
    world.write_config(retain="forwarded")
    mail.deliver(signal_mail(marker()), MAILBOX)
    world.once()
    world.once()
    assert len(mail.messages(MAILBOX)) == 1
    assert world.status()["open"] == 1
    assert len(mail.messages(REPORTER)) == 1


def test_a_stop_between_accepting_and_processing_loses_nothing(
    world: World, mail: MailServer
) -> None:
    """Step 1 alone (fetch, seal, commit, delete) empties the mailbox; what it took
    is sealed on disk, and the next cycle turns it into signals, once each."""
    marks = [marker() for _ in range(3)]
    for m in marks:
        mail.deliver(signal_mail(m), MAILBOX)
    app = world.app()
    try:
        result = app.intake.accept()
    finally:
        app.store.close()
        app.mailbox.close()
        app.transport.close()
    assert (result.accepted, result.expunged, result.queued) == (3, 3, 0)
    assert everything_in(mail, MAILBOX) == []
    status = world.status()
    assert (status["accepted"], status["open"]) == (3, 0)
    for m in marks:
        assert_absent(m, where="the store on disk", data=world.state_bytes())
    assert mail.messages(REPORTER) == [], "no acknowledgement before processing"

    assert world.once() == 0
    status = world.status()
    assert (status["accepted"], status["open"]) == (0, 3)
    assert len(mail.wait_for_messages(REPORTER, 3)) == 3
    for m in marks:
        assert_absent(m, where="the store on disk", data=world.state_bytes())
        assert_absent(m, where="the logs", data=world.log_text())


def test_retain_until_forwarded_keeps_the_original_through_acceptance(
    world: World, mail: MailServer
) -> None:
    world.write_config(retain="forwarded")
    mail.deliver(signal_mail(marker()), MAILBOX)
    app = world.app()
    try:
        assert app.intake.accept().expunged == 0
        assert len(mail.messages(MAILBOX)) == 1, "accepted, but the original stays"
        assert app.intake.process().queued == 1
        assert app.intake.accept().expunged == 0
    finally:
        app.store.close()
        app.mailbox.close()
        app.transport.close()
    assert len(mail.messages(MAILBOX)) == 1, "retained until the signal is deleted"
    assert world.status()["open"] == 1


def test_a_signal_too_big_for_the_mail_server_still_reaches_triage_without_it(
    world: World, mail: MailServer
) -> None:
    """The relay advertises SIZE; a triage request that would exceed it goes without
    the original and says so, instead of failing (552) and never arriving."""
    mark = marker()
    photo = bytes(range(256)) * 1200  # ~300 kB once base64-encoded
    raw = signal_mail(mark, attachments=[("foto.jpg", photo, "image/jpeg")])
    mail.stop_relay()
    mail.relay.data_size_limit = 100_000
    mail.start_relay()
    try:
        mail.append(MAILBOX, raw)  # IMAP APPEND: the relay would refuse it too
        assert world.once() == 0
        for f in (F1, F2):
            req = mail.wait_for_messages(f, 1)[0]
            r = parse(req)
            assert not [p for p in r.iter_attachments()], "no original attached"
            text = body_text(req)
            assert "niet bijgevoegd" in text and "MB" in text
            assert len(req) < 100_000
        assert len(mail.wait_for_messages(REPORTER, 1)) == 1
    finally:
        mail.stop_relay()
        mail.relay.data_size_limit = 32 * 1024 * 1024
        mail.start_relay()
    assert '"event": "mail.attachment_left_out"' in world.log_text()
    assert '"event": "mail.failed"' not in world.log_text()
    assert_absent(mark, where="the logs", data=world.log_text())


def test_same_message_delivered_twice_is_queued_once(world: World, mail: MailServer) -> None:
    raw = signal_mail(marker())
    mail.append(MAILBOX, raw)
    mail.append(MAILBOX, raw)
    world.once()
    assert world.status()["open"] == 1
    assert everything_in(mail, MAILBOX) == []
    assert '"event": "signal.duplicate"' in world.log_text()


def close_reply(request: bytes) -> bytes:
    """A functionaris' AFSLUITEN in reply to a triage request, quoting it (the token is
    in its body)."""
    req = parse(request)
    quoted = "".join(f"> {line}\r\n" for line in body_text(request).splitlines())
    return (
        f"From: <{F1}>\r\nTo: {MAILBOX}\r\nSubject: RE: {req['Subject']}\r\n"
        f"Message-ID: <close-{marker()}@gemeente.example>\r\nIn-Reply-To: {req['Message-ID']}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nAFSLUITEN\r\n\r\n" + quoted
    ).encode()


REDELIVERY_TRACE = (
    b"Received: from mx2.gemeente.example (mx2 [10.0.0.2])\r\n"
    b"\tby relay.gemeente.example; Mon, 23 Nov 2026 10:05:08 +0100\r\n"
    b"X-Original-To: vreemdverhaal@gemeente.example\r\n"
    b"Authentication-Results: relay.gemeente.example; dkim=pass header.d=gemeente.example\r\n"
    b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=gemeente.example; b=AAAA\r\n"
    b"X-MS-Exchange-Organization-AuthAs: Internal\r\n"
    b"X-MS-Exchange-Transport-EndToEndLatency: 00:00:01.0000000\r\n"
)


def test_a_message_delivered_twice_with_other_trace_headers_is_one_signal(
    world: World, mail: MailServer
) -> None:
    """A relay retrying after a lost reply: two real deliveries (each with its own
    Return-Path, Delivered-To and Received from Dovecot), one with more trace headers,
    the second in a later cycle and again after the signal was closed."""
    mark = marker()
    raw = signal_mail(mark)
    mail.deliver(raw, MAILBOX)
    world.once()
    mail.deliver(REDELIVERY_TRACE + raw, MAILBOX)
    mail.deliver(raw, MAILBOX)
    world.once()
    assert world.status()["open"] == 1
    assert everything_in(mail, MAILBOX) == [], "the copies are hard-deleted too"
    assert world.log_text().count('"event": "signal.duplicate"') == 2
    assert len(mail.wait_for_messages(REPORTER, 1)) == 1
    world.until_quiet()
    assert len(mail.messages(REPORTER)) == 1, "one acknowledgement"
    assert len(mail.messages(F1)) == 1 and len(mail.messages(F2)) == 1, "one triage request each"
    assert_absent(mark, where="the store on disk", data=world.state_bytes())

    # Closed and deleted: the content-free record still knows it within dedup_window.
    request = mail.messages(F1)[0]
    submit(mail, close_reply(request))
    world.until_quiet()
    assert world.status()["open"] == 0
    world.now += 86400
    mail.deliver(REDELIVERY_TRACE + raw, MAILBOX)
    world.once()
    assert world.status()["open"] == 0, "a late redelivery is not a new signal"
    assert world.log_text().count('"event": "signal.duplicate"') == 3


def test_another_message_reusing_a_message_id_is_a_signal_of_its_own_and_flagged(
    world: World, mail: MailServer
) -> None:
    mid = "<hergebruikt-1@gemeente.example>"
    mail.deliver(signal_mail(marker(), message_id=mid), MAILBOX)
    world.once()
    mark = marker()
    mail.deliver(signal_mail(mark, message_id=mid, body="Een ander signaal.\n"), MAILBOX)
    world.once()
    status = world.status()
    assert status["open"] == 2
    assert status["flags"].get("message_id_reused") == 1
    assert '"event": "signal.duplicate"' not in world.log_text()
    requests = mail.wait_for_messages(F1, 2)
    flagged = [r for r in requests if "message_id_reused" in body_text(r)]
    assert len(flagged) == 1 and "Een ander signaal." in body_text(flagged[0])
    assert len(mail.wait_for_messages(REPORTER, 2)) == 2, "each is acknowledged"
    assert_absent(mark, where="the logs", data=world.log_text())


def test_smtp_refusing_temporarily_retries_the_acknowledgement(
    world: World, mail: MailServer
) -> None:
    mail.fail_next(count=3, code=451)
    mail.deliver(signal_mail(marker()), MAILBOX)
    world.once()
    assert world.status()["outbox"] >= 1, "refused mail stays in the outbox"
    world.now += 4 * 3600
    world.once()
    world.now += 4 * 3600
    world.once()
    assert len(mail.wait_for_messages(REPORTER, 1)) == 1
    assert world.status()["outbox"] == 0
    assert '"event": "mail.retry"' in world.log_text()


def test_once_exits_3_when_the_mailbox_is_unreachable(world: World, mail: MailServer) -> None:
    mail.stop_dovecot()
    try:
        result = world.cli("once")
    finally:
        mail.start_dovecot()
    assert result.returncode == 3
    assert "Traceback" not in result.stderr + result.stdout


def test_check_logs_in_and_sends_nothing(world: World, mail: MailServer) -> None:
    result = world.cli("check")
    assert result.returncode == 0, result.stderr
    assert "logged in" in result.stdout
    assert mail.relay.accepted == 0


def test_check_with_a_wrong_password_exits_3_with_one_line(world: World, mail: MailServer) -> None:
    (world.root / "imap-password").write_text("wrong\n")
    result = world.cli("check")
    assert result.returncode == 3
    # Log lines (JSON) go to stderr too; the answer for the person is one line.
    answer = [x for x in result.stderr.strip().splitlines() if not x.startswith("{")]
    assert len(answer) == 1, result.stderr
    assert not [x for x in result.stdout.splitlines() if x.startswith("{")], result.stdout
    assert "Traceback" not in result.stderr


CORPUS = Path(__file__).resolve().parent / "data" / "corpus"


def test_every_corpus_message_is_queued_once_and_nothing_is_lost(
    world: World, mail: MailServer
) -> None:
    files = sorted(p for p in CORPUS.iterdir() if p.is_file() and p.name != "SOURCES.md")
    assert len(files) > 50
    raws = [p.read_bytes() for p in files]
    mail.append_many(MAILBOX, raws)
    # What the server stores (it may normalise line endings, making some files equal).
    stored = mail.messages(MAILBOX)
    assert len(stored) == len(raws)
    world.write_config(rate="100000/h", include="none")
    assert world.once() == 0
    assert everything_in(mail, MAILBOX) == [], "every corpus message was taken in"
    status = world.status()
    # Identical stored messages are one signal (dedup); everything else one each.
    assert status["open"] == len(set(stored)), status
    assert status["flags"].get("auto", 0) > 10, "bounces and auto-replies are flagged"
    assert '"level": "error"' not in world.log_text()


def test_a_message_that_trips_a_bug_is_kept_flagged_and_does_not_block_the_rest(
    world: World, mail: MailServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inboxd.parsing import parse_message as real_parse

    poison = marker()

    def parse(raw: bytes):  # type: ignore[no-untyped-def]
        if poison.encode() in raw:
            raise RuntimeError("a bug in the parser")
        return real_parse(raw)

    monkeypatch.setattr("inboxd.intake.parse_message", parse)
    mail.append_many(MAILBOX, [signal_mail(marker()), signal_mail(poison), signal_mail(marker())])
    world.once()
    assert everything_in(mail, MAILBOX) == []
    status = world.status()
    assert status["open"] == 3
    assert status["flags"].get("unprocessable") == 1
    assert '"event": "intake.unprocessable"' in world.log_text()
    assert_absent(poison, where="the logs", data=world.log_text())
    requests = mail.wait_for_messages(F1, 3)
    assert any(poison.encode() in r for r in requests), "the raw message reaches triage"
    assert len(mail.messages(REPORTER)) == 2, "no acknowledgement without a trustworthy sender"


def test_a_failing_cycle_is_logged_and_the_daemon_goes_on(world: World, mail: MailServer) -> None:
    from inboxd.daemon import Daemon

    app = world.app()
    daemon = Daemon(app)

    def broken(should_stop: object = None) -> None:
        raise RuntimeError("boom")

    app.intake.run_once = broken  # type: ignore[assignment,method-assign]
    assert daemon.cycle() is False
    assert '"event": "cycle.failed"' in world.log_text()
    assert json.loads(app.store.get_meta("last_error") or "{}")["event"] == "cycle.failed"
    app.close()


def test_header_tricks_and_template_syntax_in_a_signal_stay_inert(
    world: World, mail: MailServer
) -> None:
    raw = (
        f'From: "{{{{7*7}}}} Melder" <{REPORTER}>\r\n'
        f"To: {MAILBOX}\r\n"
        "Subject: {{7*7}} =?utf-8?q?hallo=0D=0ABcc=3A_y=40evil=2Eexample?= {% raw %}\r\n"
        "Message-ID: <=?utf-8?q?a=0D=0ABcc=3A_z=40evil=2Eexample?=@x>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Body with {{ 7*7 }} and {% for x in range(3) %}loop{% endfor %}\r\n"
    ).encode()
    mail.deliver(raw, MAILBOX)
    world.once()
    ack = mail.wait_for_messages(REPORTER, 1)[0]
    a = parse(ack)
    assert a["Bcc"] is None and b"evil.example" not in ack
    # The reference is random and may hold "49" itself: look at the rest.
    subject = str(a["Subject"])
    for ref in find_references(subject, "VV"):
        subject = subject.replace(ref, "")
    assert "49" not in subject
    for request in mail.wait_for_messages(F1, 1):
        r = parse(request)
        assert r["Bcc"] is None
        text = body_text(request)
        assert "{{7*7}}" in text and "{{ 7*7 }}" in text, "user text is data, printed as written"
        assert "looplooploop" not in text
    assert not any("evil.example" in str(rec.rcpt_tos) for rec in mail.relay.received)


def test_an_encoded_newline_in_the_senders_name_gets_no_acknowledgement_but_is_queued(
    world: World, mail: MailServer
) -> None:
    raw = (
        f'From: "=?utf-8?q?Evil=0D=0ABcc=3A_x=40evil=2Eexample?=" <{REPORTER}>\r\n'
        f"To: {MAILBOX}\r\nSubject: gewoon\r\nMessage-ID: <enc-1@gemeente.example>\r\n\r\nTekst\r\n"
    ).encode()
    mail.deliver(raw, MAILBOX)
    world.once()
    assert world.status()["open"] == 1
    assert len(mail.wait_for_messages(F1, 1)) == 1
    assert mail.messages(REPORTER) == [], "an ambiguous sender is never answered"
    assert not any("evil.example" in str(rec.rcpt_tos) for rec in mail.relay.received)


# What one message may cost at most, parse to commit, in CPU time of the thread that
# takes it in (a plain 5 KB signal takes ~2 ms; before the bounds, the 70,000-reference
# mail took ~100 s and a forged command full of tokens as long). CPU time, not the wall
# clock: the cost of the work is what is bounded, and other processes on a loaded
# 2-core machine made a wall-clock bound fail at random.
MESSAGE_BOUND = 3.0


def test_hostile_shapes_each_cost_a_moment_and_every_one_is_queued(
    world: World, mail: MailServer
) -> None:
    mail.deliver(signal_mail(marker()), MAILBOX)
    assert world.once() == 0
    ref = find_references(str(parse(mail.wait_for_messages(REPORTER, 1)[0])["Subject"]), "VV")[0]
    shapes = hostile.shapes()
    # A forged command for an open signal: the reference is right, and the token is
    # sought among 70,000 look-alikes. Stamped as F1's own submission, so it gets past
    # the sender evidence to the token search whose cost is measured here.
    tokens = " ".join(f"{hostile.code(i)}-ABCD-EFGH-JKMN" for i in range(70_000)).encode()
    shapes["a forged command with 70,000 tokens"] = as_submitted(
        mail, hostile.mail(sender=F1, subject=f"Re: {ref}".encode(), body=tokens + b"\r\n"), F1
    )
    app = world.app()
    took: dict[str, float] = {}
    try:
        for name, raw in shapes.items():
            mail.append(MAILBOX, raw)
            t0 = time.thread_time()
            result = app.intake.run_once()
            took[name] = time.thread_time() - t0
            assert (result.accepted, result.queued + result.handled) == (1, 1), name
    finally:
        app.close()
    slow = {k: round(v, 2) for k, v in took.items() if v > MESSAGE_BOUND}
    assert not slow, f"one message took more than {MESSAGE_BOUND}s of CPU: {slow}"
    assert everything_in(mail, MAILBOX) == []
    status = world.status()
    assert status["open"] == 1 + len(shapes) - 1, "every shape but the command is a signal"
    assert '"reason": "token"' in world.log_text(), "the forged command was rejected"
