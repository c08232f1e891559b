"""Plain and HTML must agree: a reply with both parts carries out commands only when
both parts give the same command list. Visually hidden HTML text (white on white,
1px fonts, zero-size or overflow-hidden boxes, off-screen or transparent text,
``<noscript>``, SVG text) is not removed by any HTML reading — the other part is what
exposes it.
"""

from __future__ import annotations

from email import policy
from email.message import EmailMessage

import pytest
from servers import MailServer
from world import F1, KEDO, MAILBOX, World, body_text, marker, parse, signal_mail, submit

from inboxd import commands as cmd
from inboxd.parsing import parse_message
from inboxd.triage import read_commands

DESTINATIONS = ("kedo", "riec", "nla")
QUOTE = "Van: Meldpunt <vreemdverhaal@gemeente.example>\nVerzonden: maandag\n\nHet verzoek"
HTML_QUOTE = '<div id="divRplyFwdMsg"><hr><b>Van:</b> Meldpunt</div><div>Het verzoek</div>'

# Text a reader does not see, in the ways mail HTML can hide it.
HIDDEN = [
    '<p style="color:#ffffff;background:#ffffff">{}</p>',
    '<p style="font-size:1px">{}</p>',
    '<div style="width:0;height:0;overflow:hidden">{}</div>',
    '<div style="max-height:0;overflow:hidden">{}</div>',
    '<p style="position:absolute;left:-9999px">{}</p>',
    '<p style="color:transparent">{}</p>',
    "<noscript>{}</noscript>",
    '<svg width="1" height="1"><text x="0" y="0">{}</text></svg>',
]


def reply(plain: str | None, html: str | None, **headers: str) -> bytes:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = f"A. Jansen <{F1}>"
    msg["To"] = MAILBOX
    msg["Subject"] = "RE: Triageverzoek"
    msg["Message-ID"] = f"<{marker()}@gemeente.example>"
    for k, v in headers.items():
        msg[k] = v
    if plain is not None:
        msg.set_content(plain + "\n\n" + QUOTE + "\n")
        if html is not None:
            msg.add_alternative(f"<html><body>{html}{HTML_QUOTE}</body></html>", subtype="html")
    else:
        assert html is not None
        msg.set_content(f"<html><body>{html}{HTML_QUOTE}</body></html>", subtype="html")
    return msg.as_bytes()


def read(raw: bytes) -> cmd.Parsed | None:
    return read_commands(parse_message(raw), DESTINATIONS)


def test_agreeing_parts_give_their_commands() -> None:
    parsed = read(reply("KEDO\nVORM arbeid", "<p>KEDO</p><p>VORM arbeid</p>"))
    assert parsed is not None and not parsed.errors
    assert set(parsed.commands) == {cmd.Forward(("kedo",)), cmd.SetForm(cmd.Form.ARBEID)}


def test_a_question_wrapped_differently_still_agrees() -> None:
    parsed = read(
        reply("VRAAG Weet u het huisnummer nog?", "<p>VRAAG Weet u het\nhuisnummer&nbsp;nog?</p>")
    )
    assert parsed is not None and not parsed.errors


@pytest.mark.parametrize("hiding", HIDDEN)
def test_a_command_hidden_in_the_html_is_a_disagreement(hiding: str) -> None:
    html = "<p>WACHT</p>" + hiding.format("KEDO")
    assert read(reply("WACHT", html)) is None


def test_a_command_only_in_the_plain_part_is_a_disagreement() -> None:
    assert read(reply("WACHT\nKEDO", "<p>WACHT</p>")) is None


def test_one_valid_part_and_one_invalid_is_a_disagreement() -> None:
    assert read(reply("KEDO", "<p>KEDO</p><p>VORM onzin</p>")) is None


def test_a_single_part_is_read_as_it_is() -> None:
    plain_only = read(reply("KEDO", None))
    assert plain_only is not None and plain_only.commands == (cmd.Forward(("kedo",)),)
    html_only = read(reply(None, "<p>KEDO</p>"))
    assert html_only is not None and html_only.commands == (cmd.Forward(("kedo",)),)


# -- against the real relay and Dovecot --------------------------------------------


def request_and_token(world: World, mail: MailServer) -> tuple[str, str]:
    mail.deliver(signal_mail(marker()), MAILBOX)
    world.once()
    request = mail.wait_for_messages(F1, 1)[-1]
    return str(parse(request)["Subject"]), body_text(request)


def multipart_reply(subject: str, quoted: str, plain: str, html: str) -> bytes:
    raw = reply(plain, html + f"<pre>{quoted}</pre>").replace(b"Het verzoek", quoted.encode(), 1)
    return raw.replace(b"Subject: RE: Triageverzoek", f"Subject: RE: {subject}".encode(), 1)


def test_parts_that_agree_are_carried_out(world: World, mail: MailServer) -> None:
    subject, quoted = request_and_token(world, mail)
    submit(mail, multipart_reply(subject, quoted, "KEDO", "<p>KEDO</p>"))
    world.until_quiet()
    assert len(mail.wait_for_messages(KEDO, 1)) == 1


def test_parts_that_disagree_are_refused_and_nothing_is_done(
    world: World, mail: MailServer
) -> None:
    subject, quoted = request_and_token(world, mail)
    html = '<p>WACHT</p><p style="color:#fff;background:#fff;font-size:1px">KEDO</p>'
    submit(mail, multipart_reply(subject, quoted, "WACHT", html))
    world.until_quiet()
    assert mail.messages(KEDO) == [], "the hidden KEDO was carried out"
    assert world.status()["by_state"] == {"queued": 1}
    assert "hold=no" in world.cli("queue", "list").stdout, "nor was the visible WACHT"
    rejected = [m for m in mail.messages(F1) if str(parse(m)["Subject"]).startswith("Niet uit")]
    assert len(rejected) == 1
    assert "zeggen iets anders" in body_text(rejected[0])
    assert '"reason": "parts_differ"' in world.log_text()
