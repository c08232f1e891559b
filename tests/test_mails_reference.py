"""The fast ``mails.render`` (cached header folding, text part written directly)
must write exactly what the email package wrote before it: this is that earlier
``render``, kept as the reference, and hypothesis compares the two byte for byte."""

from __future__ import annotations

import secrets
from email import policy
from email.message import EmailMessage, MIMEPart

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inboxd import mails
from inboxd.mails import Attachment, Mail


def _set_headers(msg: EmailMessage, headers: list[tuple[str, str] | None]) -> None:
    for h in headers:
        if h is None:
            continue
        try:
            msg[h[0]] = mails._safe(h[0], h[1])
        except mails.HeaderInjection:
            raise
        except (ValueError, IndexError, TypeError):
            # The email package's own objections (an encoded CR/LF in a display
            # name, a broken address) mean the same thing here.
            raise mails.HeaderInjection(f"{h[0]} header value is not acceptable") from None


def reference_render(mail: Mail) -> bytes:
    headers: list[tuple[str, str] | None] = [
        ("From", mail.sender),
        ("To", mail.to),
        ("Subject", mail.subject),
        ("Date", mails.format_datetime_ts(mail.date)),
        ("Message-ID", mail.message_id),
        ("Auto-Submitted", mail.auto_submitted),
        ("X-Auto-Response-Suppress", "All"),
        ("Precedence", "bulk") if mail.auto_submitted == "auto-generated" else None,
    ]
    if mail.in_reply_to:
        headers.append(("In-Reply-To", mail.in_reply_to))
    if mail.references:
        headers.append(("References", " ".join(mail.references)))
    text = MIMEPart(policy=policy.SMTP)
    text.set_content(mail.body, charset="utf-8", cte="quoted-printable")
    if not mail.attachments:
        msg = EmailMessage(policy=policy.SMTP)
        _set_headers(msg, headers)
        msg.set_content(mail.body, charset="utf-8", cte="quoted-printable")
        return msg.as_bytes()
    boundary = "inboxd-" + secrets.token_hex(20)
    while any(boundary.encode() in a.raw for a in mail.attachments):
        boundary = "inboxd-" + secrets.token_hex(20)
    head = EmailMessage(policy=policy.SMTP)
    _set_headers(head, headers)
    head["MIME-Version"] = "1.0"
    head["Content-Type"] = f'multipart/mixed; boundary="{boundary}"'
    # Only the header block of ``head``: the body is assembled here so that the
    # originals go out exactly as they came in.
    header_block = head.as_bytes().split(b"\r\n" + b"\r\n", 1)[0] + b"\r\n" + b"\r\n"
    out = [header_block, b"--" + boundary.encode() + b"\r\n", text.as_bytes()]
    for att in mail.attachments:
        out += [b"\r\n" + b"--" + boundary.encode() + b"\r\n", mails._attachment_part(att)]
    out.append(b"\r\n" + b"--" + boundary.encode() + b"--" + b"\r\n")
    return b"".join(out)


def fixed_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets, "token_hex", lambda n=20: "0123456789" * 4)


header_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=0, max_size=120
)
names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters='<>"\\'),
    max_size=40,
)
bodies = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=3000)
ids = st.from_regex(r"<[a-z0-9.]{1,40}@[a-z0-9.]{1,30}>", fullmatch=True)


def both(mail: Mail) -> tuple[bytes | type, bytes | type]:
    out: list[bytes | type] = []
    for fn in (reference_render, mails.render):
        try:
            out.append(fn(mail))
        except mails.HeaderInjection:
            out.append(mails.HeaderInjection)
    return out[0], out[1]


@settings(max_examples=300, deadline=None)
@given(
    subject=header_text,
    display=names,
    body=bodies,
    answers=st.none() | ids,
    refs=st.lists(ids, max_size=4),
    auto=st.sampled_from(["auto-replied", "auto-generated"]),
    attach=st.lists(st.binary(max_size=300), max_size=2),
)
def test_fast_render_writes_what_the_email_package_wrote(
    subject: str,
    display: str,
    body: str,
    answers: str | None,
    refs: list[str],
    auto: str,
    attach: list[bytes],
) -> None:
    mail = Mail(
        sender=f'"{display}" <vreemdverhaal@gemeente.example>'
        if display
        else "vreemdverhaal@gemeente.example",
        to="a.jansen@gemeente.example",
        subject=subject,
        body=body,
        message_id=mails.new_message_id("gemeente.example"),
        auto_submitted=auto,
        in_reply_to=answers,
        references=tuple(refs),
        attachments=tuple(Attachment(a) for a in attach),
        date=1_795_000_000.0,
    )
    state = secrets.token_hex
    secrets.token_hex = lambda n=20: "0123456789" * 4  # type: ignore[assignment]
    try:
        expected, got = both(mail)
    finally:
        secrets.token_hex = state  # type: ignore[assignment]
    assert got == expected


def test_a_long_message_id_and_dutch_text_are_written_alike() -> None:
    mail = Mail(
        sender="Meldpunt vreemdverhaal <vreemdverhaal@gemeente.example>",
        to='"Müller, Zoë" <z.muller@gemeente.example>',
        subject="Terugkoppeling over uw signaal — café ‘De Hoek’ " * 3,
        body="Geachte heer/mevrouw,\n\nDank voor uw melding. ë ï ü\n" * 40,
        message_id="<" + "x" * 200 + "@gemeente.example>",
        auto_submitted="auto-replied",
        in_reply_to="<" + "y" * 200 + "@melder.example>",
        references=("<a@b>", "<" + "z" * 100 + "@c>"),
        date=1_795_000_000.0,
    )
    expected, got = both(mail)
    assert isinstance(got, bytes) and got == expected
