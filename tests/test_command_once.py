"""A command mail acts once: delivered again — by a relay's retry, a loop, a resend or
someone replaying a captured copy — it has no second effect, is logged
``command.duplicate``, and gets at most one short answer (none for a loop).

Against the suite's real relay and Dovecot: every delivery gets its own trace headers.
"""

from __future__ import annotations

import re

from servers import MailServer
from world import (
    F1,
    MAILBOX,
    REPORTER,
    World,
    body_text,
    marker,
    parse,
    reply,
    signal_mail,
    submit,
)


def new_request(world: World, mail: MailServer) -> bytes:
    mail.deliver(signal_mail(marker()), MAILBOX)
    world.once()
    return mail.wait_for_messages(F1, 1)[-1]


def answers(mail: MailServer, prefix: str) -> list[bytes]:
    return [m for m in mail.messages(F1) if str(parse(m)["Subject"]).startswith(prefix)]


def questions(mail: MailServer) -> list[bytes]:
    return [m for m in mail.messages(REPORTER) if "Vraag" in str(parse(m)["Subject"])]


def test_a_redelivered_command_acts_once_and_is_not_answered(
    world: World, mail: MailServer
) -> None:
    request = new_request(world, mail)
    raw = reply(request, "VRAAG Welk huisnummer?")
    world.command(raw)
    assert len(questions(mail)) == 1
    assert len(answers(mail, "Uitgevoerd")) == 1
    before = len(mail.messages(F1))
    for _ in range(4):  # a relay retrying, a forwarding loop: the same bytes again
        submit(mail, raw)
    world.until_quiet()
    assert len(questions(mail)) == 1, "the reporter was asked twice"
    assert len(mail.messages(F1)) == before, "a loop is never answered"
    assert world.log_text().count('"event": "command.duplicate"') == 4
    assert world.status()["by_state"] == {"waiting_info": 1}
    assert mail.messages(MAILBOX) == [], "the copies are deleted"


def test_a_replay_with_other_bytes_has_no_effect_and_one_short_answer(
    world: World, mail: MailServer
) -> None:
    request = new_request(world, mail)
    raw = reply(request, "VRAAG Welk huisnummer?")
    world.command(raw)
    before = len(mail.messages(F1))
    # Someone who captured the mail sends it again with their own command in it: the
    # same sender, the same Message-ID, other bytes.
    replay = re.sub(rb"VRAAG Welk huisnummer\?", b"AFSLUITEN", raw, count=1)
    assert replay != raw
    for _ in range(3):
        submit(mail, replay)
        world.until_quiet()
    assert world.status()["by_state"] == {"waiting_info": 1}, "the replay changed the signal"
    assert len(questions(mail)) == 1
    new = mail.messages(F1)[before:]
    assert len(new) == 1, "one short answer, however often it comes"
    assert "al eerder ontvangen" in body_text(new[0])
    log = world.log_text()
    assert log.count('"event": "command.duplicate"') == 3
    assert '"reason": "replayed"' in log


def test_a_new_mail_with_the_same_words_is_a_new_command(world: World, mail: MailServer) -> None:
    """Only the same mail counts as a duplicate: asking STATUS twice works twice."""
    request = new_request(world, mail)
    world.command(reply(request, "STATUS"))
    world.command(reply(request, "STATUS"))
    assert len(answers(mail, "Uitgevoerd")) == 2
    assert '"event": "command.duplicate"' not in world.log_text()
