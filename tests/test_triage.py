"""Triage by mail end to end (SPEC §3 steps 5–9), against the real Dovecot + relay."""

from __future__ import annotations

import json
from pathlib import Path

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
    assert_absent,
    body_text,
    marker,
    parse,
    signal_mail,
)

from inboxd.references import find_references
from inboxd.triage import tokens_in


@pytest.fixture
def world(mail: MailServer, tmp_path: Path) -> World:
    return World(mail, tmp_path / "w").setup()


def everything_in(mail: MailServer, address: str) -> bytes:
    return b"".join(m for msgs in mail.all_messages(address).values() for m in msgs)


def reply(
    request: bytes,
    body: str,
    *,
    sender: str = F1,
    display: str = "A. Jansen",
    subject: str | None = None,
    html: bool = False,
    extra_headers: str = "",
) -> bytes:
    """An Outlook-style reply: the new text on top, then the quoted request."""
    req = parse(request)
    quoted = body_text(request)
    subj = subject if subject is not None else f"RE: {req['Subject']}"
    head = (
        f'From: "{display}" <{sender}>\r\nTo: {MAILBOX}\r\nSubject: {subj}\r\n'
        f"Message-ID: <reply-{marker()}@gemeente.example>\r\nIn-Reply-To: {req['Message-ID']}\r\n"
        f"{extra_headers}MIME-Version: 1.0\r\n"
    )
    outlook_header = (
        "Van: Meldpunt vreemdverhaal <vreemdverhaal@gemeente.example>\r\n"
        "Verzonden: maandag 23 november 2026 10:13\r\n"
        f"Aan: {F1}\r\nOnderwerp: {req['Subject']}\r\n"
    )
    if html:
        html_body = (
            f"<html><body><div>{body.replace(chr(10), '<br>')}</div>"
            '<div id="divRplyFwdMsg"><hr><b>Van:</b> Meldpunt</div>'
            f"<div><pre>{quoted}</pre></div></body></html>"
        )
        return (
            head + "Content-Type: text/html; charset=utf-8\r\n\r\n" + html_body + "\r\n"
        ).encode()
    text = (
        body.replace("\n", "\r\n")
        + "\r\n\r\nMet vriendelijke groet,\r\nAnneke\r\n\r\n"
        + outlook_header
        + "\r\n"
        + quoted.replace("\n", "\r\n")
    )
    return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text + "\r\n").encode()


def new_signal(world: World, mail: MailServer, mark: str, **kw: object) -> tuple[str, bytes]:
    mail.deliver(signal_mail(mark, **kw), MAILBOX)  # type: ignore[arg-type]
    world.once()
    request = mail.wait_for_messages(F1, 1)[-1]
    ref = find_references(str(parse(request)["Subject"]), "VV")[0]
    return ref, request


def command(world: World, mail: MailServer, raw: bytes, sender: str = F1) -> None:
    mail.deliver(raw, MAILBOX, mail_from=sender)
    world.until_quiet()


def stats(world: World) -> dict[str, object]:
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
    mail.deliver(answer, MAILBOX)
    world.until_quiet()
    assert world.status()["by_state"] == {"queued": 1}
    notice = [m for m in mail.messages(F1) if str(parse(m)["Subject"]).startswith("Aanvulling")]
    assert len(notice) == 1 and answer_mark in body_text(notice[0])
    command(world, mail, reply(request, "KEDO"))
    kedo = mail.wait_for_messages(KEDO, 1)[0]
    assert len(list(parse(kedo).iter_attachments())) == 2, "original and follow-up"
    assert answer_mark.encode() in kedo
    assert_signal_gone(world, mail, mark)
    assert_absent(answer_mark, where="the store on disk", data=world.state_bytes())


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
    subject = f"RE: {parse(request)['Subject']}"
    token = tokens_in(subject)[0]
    if case == "no_token":
        raw = reply(request, "KEDO", subject=f"RE: {ref}")
        raw = raw.replace(token.encode(), b"XXXX")
    elif case == "wrong_token":
        raw = reply(request, "KEDO", subject=subject.replace(token, "AAAA-BBBB-CCCC-DDDD"))
        raw = raw.replace(token.encode(), b"AAAA-BBBB-CCCC-DDDD")
    elif case == "other_signals_token":
        mail.deliver(signal_mail(marker()), MAILBOX)
        world.once()
        other = [m for m in mail.messages(F1) if ref not in str(parse(m)["Subject"])][-1]
        other_token = tokens_in(str(parse(other)["Subject"]))[0]
        raw = reply(request, "KEDO", subject=subject.replace(token, other_token)).replace(
            token.encode(), other_token.encode()
        )
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


def test_authentication_results_required_when_trusted_ids_are_set(
    world: World, mail: MailServer
) -> None:
    world.write_config(trusted='["mx.gemeente.example"]')
    _, request = new_signal(world, mail, marker())
    command(
        world,
        mail,
        reply(
            request,
            "KEDO",
            extra_headers="Authentication-Results: mx.gemeente.example; dkim=fail\r\n",
        ),
    )
    assert mail.messages(KEDO) == []
    assert len(_rejected(mail, F1)) == 1
    command(
        world,
        mail,
        reply(
            request,
            "KEDO",
            extra_headers="Authentication-Results: mx.gemeente.example; dkim=pass header.d=gemeente.example\r\n",
        ),
    )
    assert len(mail.wait_for_messages(KEDO, 1)) == 1


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
    mail.deliver(reply(request, "KEDO"), MAILBOX, mail_from=F1)
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
    mail.deliver(reply(request, "KEDO"), MAILBOX, mail_from=F1)
    mail.fail_next(count=1, code=550)  # the forward is the first mail the command causes
    world.until_quiet()
    assert world.status()["by_state"] == {"forwarding_failed": 1}
    alerts = [m for m in mail.messages(F1) if "LET OP" in str(parse(m)["Subject"])]
    assert len(alerts) == 1
    assert mail.messages(KEDO) == []
