"""Triage by mail end to end (docs/contract.md, "The life of a signal", steps 5–9), against the real Dovecot + relay."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from servers import MailServer
from world import (
    F1,
    F2,
    KEDO,
    MAILBOX,
    OUTSIDER,
    REPORTER,
    RIEC,
    World,
    as_submitted,
    assert_absent,
    body_text,
    dsn,
    marker,
    parse,
    reply,
    signal_mail,
    submit,
)

from inboxd.references import find_references
from inboxd.triage import MAX_TOKENS, tokens_in


def everything_in(mail: MailServer, address: str) -> bytes:
    return b"".join(m for msgs in mail.all_messages(address).values() for m in msgs)


def new_signal(world: World, mail: MailServer, mark: str, **kw: object) -> tuple[str, bytes]:
    submit(mail, signal_mail(mark, **kw), str(kw.get("sender", REPORTER)))  # type: ignore[arg-type]
    world.once()
    request = mail.wait_for_messages(F1, 1)[-1]
    ref = find_references(str(parse(request)["Subject"]), "VV")[0]
    return ref, request


def command(world: World, mail: MailServer, raw: bytes, sender: str = F1) -> None:
    world.command(raw, sender)


def stats(world: World) -> dict[str, Any]:
    out = world.cli("stats", "--format", "json", "--year", "2026")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def assert_signal_gone(world: World, mail: MailServer, mark: str) -> None:
    assert world.status()["open"] == 0
    assert_absent(mark, where="the store on disk", data=world.state_bytes())
    assert_absent(mark, where="the logs", data=world.log_text())
    assert_absent(REPORTER, where="the logs", data=world.log_text())
    assert_absent(mark, where="the vreemdverhaal mailbox", data=everything_in(mail, MAILBOX))
    assert_absent(mark, where="what the reporter received", data=everything_in(mail, REPORTER))


def test_full_life_to_kedo(world: World, mail: MailServer) -> None:
    mark = marker()
    ref, request = new_signal(world, mail, mark)
    command(world, mail, reply(request, "KEDO\nVORM arbeid"))

    kedo = mail.wait_for_messages(KEDO, 1)
    assert len(kedo) == 1
    assert mark in kedo[0].decode("utf-8", "replace"), "KEDO receives the signal itself"
    fwd = parse(kedo[0])
    assert [p.get_content_type() for p in fwd.iter_attachments()] == ["message/rfc822"]
    assert ref in str(fwd["Subject"])
    assert "arbeid" in body_text(kedo[0])

    reporter_mail = mail.wait_for_messages(REPORTER, 2)
    assert ref in str(parse(reporter_mail[-1])["Subject"])
    assert "doorgezet" in body_text(reporter_mail[-1])
    for f in (F1, F2):
        subjects = [str(parse(m)["Subject"]) for m in mail.messages(f)]
        assert any(s.startswith("Afgehandeld en verwijderd") and ref in s for s in subjects), (
            subjects
        )
    assert any(str(parse(m)["Subject"]).startswith("Uitgevoerd") for m in mail.messages(F1))

    assert_signal_gone(world, mail, mark)
    rows = stats(world)["rows"]
    assert rows == [
        {
            "month": rows[0]["month"],
            "source": "intern",
            "form": "arbeid",
            "outcome": "kedo",
            "count": 1,
        }
    ]  # type: ignore[index]


def _header_block(raw: bytes) -> bytes:
    return re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]


def _server_log_from(mail: MailServer, offset: int, needle: str, timeout: float = 10.0) -> str:
    """Dovecot's log from ``offset`` on, once it mentions ``needle`` (its log process
    writes a delivery's line shortly after the delivery)."""
    deadline = time.monotonic() + timeout
    while True:
        with mail.dovecot.log_file.open("rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
        if needle in text or time.monotonic() >= deadline:
            assert needle in text, f"{needle} not in Dovecot's log within {timeout}s"
            return text
        time.sleep(0.05)


def test_the_token_travels_in_the_body_only(world: World, mail: MailServer) -> None:
    """The token is in the triage request's body and nowhere a mail server logs or a
    message trace shows: no Subject, no Message-ID, In-Reply-To or References, no
    other header of any mail inboxd sent or received, not in Dovecot's delivery log
    (which holds each delivery's Message-ID and Subject) and not in inboxd's own log.
    A reply that quotes the request, as clients do, carries it back and works."""
    log_offset = mail.dovecot.log_file.stat().st_size
    mark = marker()
    ref, request = new_signal(world, mail, mark)
    token = tokens_in(body_text(request))[0]
    assert ref in str(parse(request)["Subject"])
    assert token not in str(parse(request)["Subject"])

    raw = reply(request, "KEDO\nVORM arbeid")
    assert token.encode() not in _header_block(raw), "the reply's headers do not carry it"
    assert token.encode() in raw, "the quoted request does"
    command(world, mail, raw)
    assert len(mail.wait_for_messages(KEDO, 1)) == 1, "the reply was carried out"
    assert world.status()["open"] == 0

    sent = mail.relay.received
    assert {r.rcpt_tos[0] for r in sent} >= {F1, F2, KEDO, REPORTER}
    for r in sent:
        assert_absent(
            token, where=f"the headers of a mail sent to {r.rcpt_tos}", data=_header_block(r.raw)
        )
    for address in (F1, F2, KEDO, REPORTER, MAILBOX):
        for folder, msgs in mail.all_messages(address).items():
            for m in msgs:
                assert_absent(token, where=f"a header in {address}/{folder}", data=_header_block(m))

    request_id = str(parse(request)["Message-ID"])
    server_log = _server_log_from(mail, log_offset, request_id)
    assert f'subject="Triageverzoek {ref}' in server_log, "the log holds subjects"
    assert_absent(token, where="Dovecot's delivery log", data=server_log)
    assert_absent(token, where="inboxd's log", data=world.log_text())


def test_two_destinations_at_once(world: World, mail: MailServer) -> None:
    mark = marker()
    _, request = new_signal(world, mail, mark)
    command(world, mail, reply(request, "RIEC KEDO\nVORM seksueel"))
    assert len(mail.wait_for_messages(KEDO, 1)) == 1
    assert len(mail.wait_for_messages(RIEC, 1)) == 1
    assert_signal_gone(world, mail, mark)
    assert stats(world)["rows"][0]["outcome"] == "kedo+riec"  # type: ignore[index]


def test_close_without_forwarding(world: World, mail: MailServer) -> None:
    mark = marker()
    _, request = new_signal(world, mail, mark)
    command(world, mail, reply(request, "AFSLUITEN geen signaal van uitbuiting"))
    assert mail.messages(KEDO) == [] and mail.messages(RIEC) == []
    feedback = mail.wait_for_messages(REPORTER, 2)[-1]
    assert "afgehandeld" in body_text(feedback)
    assert_signal_gone(world, mail, mark)
    assert stats(world)["rows"][0]["outcome"] == "afgesloten"  # type: ignore[index]


def test_question_answer_and_forward_with_the_follow_up(world: World, mail: MailServer) -> None:
    mark = marker()
    ref, request = new_signal(world, mail, mark)
    command(world, mail, reply(request, "VRAAG Weet u het huisnummer nog?"))
    question = mail.wait_for_messages(REPORTER, 2)[-1]
    assert "huisnummer" in body_text(question)
    assert world.status()["by_state"] == {"waiting_info": 1}
    answer_mark = marker()
    answer = signal_mail(
        answer_mark, subject=f"RE: Vraag over uw signaal {ref}", body=f"Nummer 12. {answer_mark}\n"
    )
    submit(mail, answer, REPORTER)
    world.until_quiet()
    assert world.status()["by_state"] == {"queued": 1}
    notice = [m for m in mail.messages(F1) if str(parse(m)["Subject"]).startswith("Aanvulling")]
    assert len(notice) == 1 and answer_mark in body_text(notice[0])
    names = [p.get_filename() for p in parse(notice[0]).iter_attachments()]
    assert names == ["aanvulling-1.eml"], "the follow-up's name from text/mail.txt"
    token = tokens_in(body_text(request))[0]
    assert token in body_text(notice[0]) and token not in str(parse(notice[0])["Subject"])
    # A reply to the notice itself (its quoted body carries the token) is a command.
    command(world, mail, reply(notice[0], "KEDO"))
    kedo = mail.wait_for_messages(KEDO, 1)[0]
    assert len(list(parse(kedo).iter_attachments())) == 2, "original and follow-up"
    names = [p.get_filename() for p in parse(kedo).iter_attachments()]
    assert names == ["signaal.eml", "aanvulling-1.eml"], "one name per original, as in the notice"
    assert answer_mark.encode() in kedo
    assert_signal_gone(world, mail, mark)
    assert_absent(answer_mark, where="the store on disk", data=world.state_bytes())


def test_a_long_question_in_a_format_flowed_reply_reaches_the_reporter_whole(
    world: World, mail: MailServer
) -> None:
    """Thunderbird wraps a long plain-text line at ~72 characters with a trailing
    space (format=flowed): the question is one line, not two."""
    _ref, request = new_signal(world, mail, marker())
    question = (
        "VRAAG Kunt u nog vertellen op welke dag van de week u de busjes bij het pand "
        "aan de Havenweg zag aankomen, en hoe laat ongeveer?"
    )
    wrapped = "VRAAG Kunt u nog vertellen op welke dag van de week u de busjes bij het \n"
    wrapped += "pand aan de Havenweg zag aankomen, en hoe laat ongeveer?"
    raw = reply(request, wrapped).replace(
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Type: text/plain; charset=utf-8; format=flowed",
    )
    command(world, mail, raw)
    asked = mail.wait_for_messages(REPORTER, 2)[-1]
    text = " ".join(body_text(asked).split())
    assert question[len("VRAAG ") :] in text, text
    assert world.status()["by_state"] == {"waiting_info": 1}
    assert _rejected(mail, F1) == []


def test_a_follow_up_too_big_for_the_mail_server_is_announced_without_it(
    world: World, mail: MailServer
) -> None:
    ref, request = new_signal(world, mail, marker())
    command(world, mail, reply(request, "VRAAG Heeft u een foto?"))
    mail.wait_for_messages(REPORTER, 2)
    answer_mark = marker()
    photo = bytes(range(256)) * 1200  # ~400 kB once base64-encoded
    answer = signal_mail(
        answer_mark,
        subject=f"RE: Vraag over uw signaal {ref}",
        attachments=[("foto.jpg", photo, "image/jpeg")],
    )
    mail.stop_relay()
    mail.relay.data_size_limit = 150_000
    mail.start_relay()
    try:
        # IMAP APPEND: the relay would refuse it too; stamped as it would have been.
        mail.append(MAILBOX, as_submitted(mail, answer, REPORTER))
        world.until_quiet()
        notices = [
            m for m in mail.messages(F1) if str(parse(m)["Subject"]).startswith("Aanvulling")
        ]
        assert len(notices) == 1, "announced, not lost to a 552"
        assert not list(parse(notices[0]).iter_attachments())
        assert "niet bijgevoegd" in body_text(notices[0])
    finally:
        mail.stop_relay()
        mail.relay.data_size_limit = 32 * 1024 * 1024
        mail.start_relay()
    assert world.status()["by_state"] == {"queued": 1}, "the answer is kept with the signal"
    assert_absent(answer_mark, where="the logs", data=world.log_text())


def test_no_feedback_and_hold(world: World, mail: MailServer) -> None:
    mark = marker()
    _, request = new_signal(world, mail, mark)
    command(world, mail, reply(request, "WACHT"))
    store = world.store()
    try:
        assert store.signals()[0].hold
    finally:
        store.close()
    command(world, mail, reply(request, "GEEN TERUGKOPPELING\nAFSLUITEN"))
    assert len(mail.messages(REPORTER)) == 1, "only the acknowledgement"
    assert world.status()["open"] == 0


def _rejected(mail: MailServer, address: str) -> list[bytes]:
    return [
        m for m in mail.messages(address) if str(parse(m)["Subject"]).startswith("Niet uitgevoerd")
    ]


@pytest.mark.parametrize(
    "case",
    [
        "no_token",
        "wrong_token",
        "other_signals_token",
        "token_in_subject_only",
        "quoted_only",
        "hidden_html",
        "unknown_destination",
        "address_destination",
        "conflict",
    ],
)
def test_forged_or_invalid_commands_do_nothing_and_are_answered(
    world: World, mail: MailServer, case: str
) -> None:
    mark = marker()
    ref, request = new_signal(world, mail, mark)
    token = tokens_in(body_text(request))[0]
    if case == "no_token":
        raw = reply(request, "KEDO", subject=f"RE: {ref}")
        raw = raw.replace(token.encode(), b"XXXX")
    elif case == "wrong_token":
        raw = reply(request, "KEDO").replace(token.encode(), b"AAAA-BBBB-CCCC-DDDD")
    elif case == "other_signals_token":
        mail.deliver(signal_mail(marker()), MAILBOX)
        world.once()
        other = [m for m in mail.messages(F1) if ref not in str(parse(m)["Subject"])][-1]
        other_token = tokens_in(body_text(other))[0]
        raw = reply(request, "KEDO").replace(token.encode(), other_token.encode())
    elif case == "token_in_subject_only":
        # Typed into the Subject, where mail servers log it: it does not count there.
        raw = reply(request, "KEDO", subject=f"RE: Triageverzoek {ref} {token}")
        head, sep, body = raw.partition(b"\r\n\r\n")
        raw = head + sep + body.replace(token.encode(), b"XXXX")
    elif case == "quoted_only":
        raw = reply(request, "Ik kijk er morgen naar.\n")
        raw = raw.replace(b"> ", b"> KEDO\r\n> ", 1) if b"> " in raw else raw
    elif case == "hidden_html":
        raw = reply(
            request, '<!-- KEDO --><span style="display:none">KEDO</span>Goed bericht', html=True
        )
    elif case == "unknown_destination":
        raw = reply(request, "POLITIE")
    elif case == "address_destination":
        raw = reply(request, "DOORZETTEN iemand@kwaadwillend.example")
    else:
        raw = reply(request, "KEDO\nAFSLUITEN")
    command(world, mail, raw)
    assert mail.messages(KEDO) == [] and mail.messages(RIEC) == []
    assert world.status()["open"] >= 1
    store = world.store()
    try:
        s = store.signal_by_ref(ref)
        assert s is not None and s.state == "queued" and not s.destinations
    finally:
        store.close()
    assert len(_rejected(mail, F1)) == 1, "the functionaris is told why"
    assert '"event": "command.rejected"' in world.log_text()
    assert mail.messages(MAILBOX) == [], "the command mail is deleted once handled"


def test_outsider_with_the_right_subject_is_never_a_command(world: World, mail: MailServer) -> None:
    _, request = new_signal(world, mail, marker())
    raw = reply(request, "KEDO", sender=OUTSIDER, display="Buiten")
    mail.deliver(raw, MAILBOX, mail_from=OUTSIDER)
    world.until_quiet()
    assert mail.messages(KEDO) == []
    assert world.status()["open"] == 2, "it is a new signal, not a command"


def test_display_name_spoofing_is_not_a_functionaris(world: World, mail: MailServer) -> None:
    _, request = new_signal(world, mail, marker())
    raw = reply(request, "KEDO", sender=OUTSIDER, display=F1)
    mail.deliver(raw, MAILBOX, mail_from=OUTSIDER)
    world.until_quiet()
    assert mail.messages(KEDO) == []
    assert world.status()["open"] == 2


def test_a_late_command_for_a_deleted_signal_gets_already_handled(
    world: World, mail: MailServer
) -> None:
    mark = marker()
    _, request = new_signal(world, mail, mark)
    command(world, mail, reply(request, "AFSLUITEN"))
    command(world, mail, reply(request, "KEDO"))
    assert mail.messages(KEDO) == []
    late = [m for m in mail.messages(F1) if str(parse(m)["Subject"]).startswith("Al afgehandeld")]
    assert len(late) == 1
    assert_absent(mark, where="the late answer", data=late[0])


def test_forward_retried_after_temporary_refusal(world: World, mail: MailServer) -> None:
    _, request = new_signal(world, mail, marker())
    submit(mail, reply(request, "KEDO"))
    world.once()  # takes in the command, queues the forward
    mail.fail_next(count=1, code=451)
    world.now += 1
    world.once()
    world.now += 3600
    world.until_quiet()
    assert len(mail.wait_for_messages(KEDO, 1)) == 1
    assert world.status()["open"] == 0


def test_forward_refused_permanently_alerts_and_keeps_the_signal(
    world: World, mail: MailServer
) -> None:
    _, request = new_signal(world, mail, marker())
    submit(mail, reply(request, "KEDO"))
    mail.fail_next(count=1, code=550)  # the forward is the first mail the command causes
    world.until_quiet()
    assert world.status()["by_state"] == {"forwarding_failed": 1}
    alerts = [m for m in mail.messages(F1) if "LET OP" in str(parse(m)["Subject"])]
    assert len(alerts) == 1
    assert mail.messages(KEDO) == []


def test_closing_after_a_partial_forward_counts_and_reports_what_was_forwarded(
    world: World, mail: MailServer
) -> None:
    mark = marker()
    _, request = new_signal(world, mail, mark)
    submit(mail, reply(request, "KEDO RIEC"))
    # The forwards go out in key order: KEDO's is refused for good, RIEC's accepted.
    mail.fail_next(count=1, code=550, stage="rcpt")
    world.until_quiet()
    assert world.status()["by_state"] == {"forwarding_failed": 1}
    assert mail.messages(KEDO) == [] and len(mail.messages(RIEC)) == 1
    command(world, mail, reply(request, "AFSLUITEN"))
    assert_signal_gone(world, mail, mark)
    assert stats(world)["rows"][0]["outcome"] == "riec"  # type: ignore[index]
    feedback = mail.wait_for_messages(REPORTER, 2)[-1]
    assert "doorgezet" in body_text(feedback), "the reporter hears it was passed on"
    closed = [m for m in mail.messages(F1) if "Afgehandeld" in str(parse(m)["Subject"])]
    assert len(closed) == 1 and "RIEC" in body_text(closed[0])


# -- S/MIME ------------------------------------------------------------------------


def _certificate(tmp: Path, address: str) -> tuple[Path, object, object]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.EMAIL_ADDRESS, address)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2026, 1, 1))
        .not_valid_after(dt.datetime(2036, 1, 1))
        .sign(key, hashes.SHA256())
    )
    path = tmp / f"{address}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def _decrypt(raw: bytes, cert: object, key: object) -> bytes:
    from cryptography.hazmat.primitives.serialization import pkcs7

    return pkcs7.pkcs7_decrypt_smime(raw, cert, key, [])  # type: ignore[arg-type]


def test_smime_triage_request_and_forward(world: World, mail: MailServer) -> None:
    f1_path, f1_cert, f1_key = _certificate(world.root, F1)
    kedo_path, kedo_cert, kedo_key = _certificate(world.root, KEDO)
    world.write_config(
        kedo_cert=str(kedo_path), extra=f'\n[triage.certificates]\n"{F1}" = "{f1_path}"\n'
    )
    assert world.cli("check").returncode == 0
    mark = marker()
    mail.deliver(signal_mail(mark), MAILBOX)
    world.once()
    request = mail.wait_for_messages(F1, 1)[0]
    outer = parse(request)
    assert outer.get_content_type() == "application/pkcs7-mime"
    assert_absent(mark, where="the encrypted triage request as sent", data=request)
    ref = find_references(str(outer["Subject"]), "VV")[0]
    token = tokens_in(body_text(mail.messages(F2)[0]))[0]
    assert token not in str(outer["Subject"]), "the outer subject is neutral"
    inner = _decrypt(request, f1_cert, f1_key)
    assert mark.encode() in inner and token.encode() in inner
    assert "message/rfc822" in [p.get_content_type() for p in parse(inner).walk()]
    # F2 has no certificate: a plain request, as before.
    assert parse(mail.messages(F2)[0]).get_content_type() == "multipart/mixed"

    # The functionaris replies from a client that quotes the decrypted text.
    decrypted_view = (
        f"From: {MAILBOX}\r\nSubject: Triageverzoek\r\nMessage-ID: {outer['Message-ID']}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body_text(inner)
    ).encode()
    command(world, mail, reply(decrypted_view, "KEDO", subject=f"RE: {outer['Subject']}"))
    forward = mail.wait_for_messages(KEDO, 1)[0]
    assert parse(forward).get_content_type() == "application/pkcs7-mime"
    assert_absent(mark, where="the encrypted forward as sent", data=forward)
    assert mark.encode() in _decrypt(forward, kedo_cert, kedo_key)
    assert ref in str(parse(forward)["Subject"])
    assert world.status()["open"] == 0


def test_unusable_certificate_stops_the_mail_instead_of_sending_it_in_clear(
    world: World, mail: MailServer
) -> None:
    broken = world.root / "broken.pem"
    broken.write_text("not a certificate")
    world.write_config(kedo_cert=str(broken))
    assert world.cli("check").returncode == 2
    mark = marker()
    _, request = new_signal(world, mail, mark)
    command(world, mail, reply(request, "KEDO"))
    assert mail.messages(KEDO) == []
    assert world.status()["by_state"] == {"forwarding_failed": 1}
    assert any("LET OP" in str(parse(m)["Subject"]) for m in mail.messages(F1))


# -- bounces, retained originals, drills ------------------------------------------


def test_bounce_of_a_forward_reopens_an_open_signal_and_alerts(
    world: World, mail: MailServer
) -> None:
    mark = marker()
    _, request = new_signal(world, mail, mark)
    submit(mail, reply(request, "KEDO RIEC"))
    # The forwards go out in key order: KEDO's is refused for now, RIEC's accepted,
    # so the signal stays open waiting for KEDO.
    mail.fail_next(count=1, code=451, stage="rcpt")
    world.once()
    riec_fwd = parse(mail.wait_for_messages(RIEC, 1)[0])["Message-ID"]
    assert mail.messages(KEDO) == []
    assert world.status()["by_state"] == {"forwarding": 1}
    mail.deliver(dsn(str(riec_fwd), RIEC), MAILBOX, mail_from="mailer-daemon@gemeente.example")
    world.now += 3600
    world.until_quiet()
    assert world.status()["by_state"] == {"forwarding_failed": 1}, "a bounce reopens it"
    assert len(mail.messages(KEDO)) == 1, "the retry to KEDO still lands"
    alerts = [m for m in mail.messages(F1) if "LET OP" in str(parse(m)["Subject"])]
    assert len(alerts) == 1 and "RIEC" in str(parse(alerts[0])["Subject"])
    assert '"event": "forward.bounced"' in world.log_text()
    # The functionaris sends it to RIEC again; then it is done and deleted.
    command(world, mail, reply(request, "RIEC"))
    assert len(mail.wait_for_messages(RIEC, 2)) == 2
    assert len(mail.messages(KEDO)) == 1, "KEDO got it once"
    assert_signal_gone(world, mail, mark)


def test_bounce_after_deletion_alerts_without_content(world: World, mail: MailServer) -> None:
    mark = marker()
    _, request = new_signal(world, mail, mark)
    command(world, mail, reply(request, "KEDO"))
    kedo_fwd = parse(mail.wait_for_messages(KEDO, 1)[0])["Message-ID"]
    mail.deliver(dsn(str(kedo_fwd), KEDO), MAILBOX, mail_from="mailer-daemon@gemeente.example")
    world.until_quiet()
    assert world.status()["open"] == 0, "a bounce is not a new signal"
    alerts = [m for m in mail.messages(F1) if "LET OP" in str(parse(m)["Subject"])]
    assert len(alerts) == 1
    assert_absent(mark, where="the alert", data=alerts[0])


def test_retained_originals_and_follow_ups_are_hard_deleted_with_the_signal(
    world: World, mail: MailServer
) -> None:
    world.write_config(retain="forwarded")
    mark = marker()
    ref, request = new_signal(world, mail, mark)
    mail.deliver(
        signal_mail(
            marker(), subject=f"RE: Ontvangen: uw signaal {ref}", body=f"Nog iets {mark}\n"
        ),
        MAILBOX,
    )
    world.once()
    assert len(mail.messages(MAILBOX)) == 2, "original and follow-up kept until the signal goes"
    command(world, mail, reply(request, "KEDO"))
    world.until_quiet()
    assert everything_in(mail, MAILBOX) == b"", "every copy is gone"
    assert_signal_gone(world, mail, mark)


def test_a_drill_runs_the_whole_life_to_the_test_address_and_is_not_counted(
    world: World, mail: MailServer
) -> None:
    world.write_config(kedo_test=F2)
    mark = marker()
    submit(mail, signal_mail(mark, sender=F1, subject=f"[OEFENING] proef {mark}"))
    world.once()
    request = [m for m in mail.wait_for_messages(F2, 1) if "OEFENING" in str(parse(m)["Subject"])][
        0
    ]
    command(world, mail, reply(request, "KEDO\nVORM overig"))
    assert mail.messages(KEDO) == [], "a drill never reaches the real destination"
    drill_forwards = [
        m for m in mail.messages(F2) if "Signaal mensenhandel" in str(parse(m)["Subject"])
    ]
    assert len(drill_forwards) == 1 and mark.encode() in drill_forwards[0]
    assert world.status()["open"] == 0
    assert stats(world)["rows"] == []


def test_follow_up_to_a_deleted_signal_is_a_new_signal_that_mentions_the_old_reference(
    world: World, mail: MailServer
) -> None:
    ref, request = new_signal(world, mail, marker())
    command(world, mail, reply(request, "AFSLUITEN"))
    mark = marker()
    mail.deliver(signal_mail(mark, subject=f"RE: Ontvangen: uw signaal {ref}"), MAILBOX)
    world.until_quiet()
    assert world.status()["open"] == 1
    requests = [
        m for m in mail.messages(F1) if str(parse(m)["Subject"]).startswith("Triageverzoek")
    ]
    new_request = requests[-1]
    assert ref not in str(parse(new_request)["Subject"]), "it has a reference of its own"
    assert f"Noemt:        {ref}" in body_text(new_request)


@pytest.mark.parametrize("include", ["text", "none"])
def test_include_content_text_and_none(world: World, mail: MailServer, include: str) -> None:
    world.write_config(include=include)
    mark = marker()
    mail.deliver(signal_mail(mark), MAILBOX)
    world.once()
    request = mail.wait_for_messages(F1, 1)[0]
    assert list(parse(request).iter_attachments()) == [], "the original is attached only with full"
    if include == "text":
        assert mark in body_text(request)
    else:
        assert_absent(mark, where="a triage request with include_content = none", data=request)


def test_status_and_help_answer_with_metadata_only(world: World, mail: MailServer) -> None:
    mark = marker()
    ref, request = new_signal(world, mail, mark)
    command(world, mail, reply(request, "STATUS\nHULP"))
    answer = [m for m in mail.messages(F1) if str(parse(m)["Subject"]).startswith("Uitgevoerd")][-1]
    text = body_text(answer)
    assert f"{ref}: queued" in text
    assert "KEDO" in text and "RIEC" in text, "HULP lists the destinations"
    assert_absent(mark, where="the STATUS/HULP answer", data=answer)
    assert world.status()["by_state"] == {"queued": 1}, "STATUS and HULP change nothing"


def test_tokens_are_read_up_to_a_limit_in_linear_time() -> None:
    # A forged command may carry thousands of look-alikes; de-duplicating them on a
    # list was quadratic (~80 s for 70,000).
    tokens = [
        f"{a}{b}{c}{d}-ABCD-EFGH-JKMN"
        for a in "0123"
        for b in "456789"
        for c in "ABCDEFGHJK"
        for d in "MNPQRSTVWXYZ"
    ]
    many = " ".join(tokens * 20)
    assert tokens_in("Re: x [sleutel 0000-1111-2222-3333]", many) == [
        "0000-1111-2222-3333",
        *tokens[: MAX_TOKENS - 1],
    ]
    assert tokens_in("abcd-efgh-jkmn-pqrs", "ABCD-EFGH-JKMN-PQRS", "abcd-efgh-jkmn-pqrs") == [
        "ABCD-EFGH-JKMN-PQRS"
    ]
