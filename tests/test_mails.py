"""Building outgoing mail (docs/contract.md, "Mails in and out"): well-formed, the right headers, no header
injection, originals attached byte for byte."""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inboxd.mails import Attachment, HeaderInjection, Mail, is_msg_id, new_message_id, render

ORIGINAL = (
    b"Return-Path: <melder@gemeente.example>\n"
    b"From: Melder <melder@gemeente.example>\n"
    b"To: vreemdverhaal@gemeente.example\n"
    b"Subject: zorgen over buren\n"
    b"Message-ID: <orig-1@gemeente.example>\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=us-ascii\n"
    b"\n"
    b"Er wonen 12 mensen in een huis.\n"
    b"-- \n"
    b"Melder\n"
)


def mail(**kw: Any) -> Mail:
    d: dict[str, Any] = {
        "sender": "Meldpunt vreemdverhaal <vreemdverhaal@gemeente.example>",
        "to": "a.jansen@gemeente.example",
        "subject": "Triageverzoek VV-7K3M-9QXD",
        "body": "Beste collega,\n\nEr is een signaal.\n",
        "message_id": "<inboxd.abc@gemeente.example>",
        "auto_submitted": "auto-generated",
        "date": 1_800_000_000.0,
    }
    d.update(kw)
    return Mail(**d)


def parse(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def text_of(part: Message) -> str:
    """Decoded text with line ends as Python reads them from CRLF wire format."""
    content = part.get_content()  # type: ignore[attr-defined]
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def all_defects(msg: Message) -> list[object]:
    return [d for part in msg.walk() for d in part.defects]


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def attachment_bodies(raw: bytes) -> list[bytes]:
    """The exact content of each body part after the first, split on the top-level
    boundary (the CRLF before a delimiter belongs to the delimiter, RFC 2046)."""
    m = re.search(rb'boundary="([^"]+)"', header_block(raw))
    assert m
    delim = b"\r\n--" + m.group(1)
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert body.startswith(b"--" + m.group(1) + b"\r\n")
    parts = ("\r\n" + body.decode("latin-1")).encode("latin-1").split(delim)
    assert parts[0] == b""
    assert parts[-1] == b"--\r\n"
    out = []
    for part in parts[2:-1]:
        assert part.startswith(b"\r\n")
        out.append(part[2:].split(b"\r\n\r\n", 1)[1])
    return out


# -- structure and headers --------------------------------------------------------


def test_plain_mail_parses_without_defects_and_has_all_headers() -> None:
    raw = render(mail())
    msg = parse(raw)
    assert all_defects(msg) == []
    assert msg["From"] == "Meldpunt vreemdverhaal <vreemdverhaal@gemeente.example>"
    assert msg["To"] == "a.jansen@gemeente.example"
    assert msg["Subject"] == "Triageverzoek VV-7K3M-9QXD"
    assert msg["Message-ID"] == "<inboxd.abc@gemeente.example>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert parsedate_to_datetime(msg["Date"]).timestamp() == 1_800_000_000.0
    assert msg["In-Reply-To"] is None and msg["References"] is None
    assert msg.get_content_type() == "text/plain"
    assert text_of(msg) == "Beste collega,\n\nEr is een signaal.\n"
    for name in ("From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted"):
        assert len(msg.get_all(name) or []) == 1, name


def test_answer_headers() -> None:
    raw = render(
        mail(
            auto_submitted="auto-replied",
            in_reply_to="<orig-1@gemeente.example>",
            references=("<older@x.example>", "<orig-1@gemeente.example>"),
        )
    )
    msg = parse(raw)
    assert all_defects(msg) == []
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<orig-1@gemeente.example>"
    assert msg["References"].split() == ["<older@x.example>", "<orig-1@gemeente.example>"]


def test_date_defaults_to_now() -> None:
    msg = parse(render(mail(date=None)))
    assert parsedate_to_datetime(msg["Date"]).tzinfo is not None


def test_new_message_id() -> None:
    ids = {new_message_id("gemeente.example") for _ in range(100)}
    assert len(ids) == 100
    for mid in ids:
        assert re.fullmatch(r"<inboxd\.[0-9a-f]{24}@gemeente\.example>", mid)


def test_body_lines_are_short_and_non_ascii_body_round_trips() -> None:
    body = "Één regel met ümlauts en een heel lange regel " + "x" * 2000 + "\n"
    raw = render(mail(body=body))
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert raw.isascii()
    msg = parse(raw)
    assert text_of(msg) == body


def test_output_uses_crlf_only() -> None:
    raw = render(mail(attachments=(Attachment(ORIGINAL),)))
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")


# -- header injection ---------------------------------------------------------------


FIELDS = ["sender", "to", "subject", "message_id", "in_reply_to", "auto_submitted"]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("bad", ["\r", "\n", "\r\n", "\0", "\x0b", "\x1b", "\x7f"])
def test_control_characters_in_headers_raise(field: str, bad: str) -> None:
    good = getattr(mail(), field) or "<x@gemeente.example>"
    value = good[:3] + bad + "Bcc: evil@x.example" + good[3:]
    with pytest.raises(HeaderInjection):
        render(mail(**{field: value}))


@pytest.mark.parametrize("bad", ["\r", "\n", "\0"])
def test_control_characters_in_references_and_filename_raise(bad: str) -> None:
    with pytest.raises(HeaderInjection):
        render(mail(references=("<a@b.example>", f"<c{bad}X-Evil: 1@d.example>")))
    with pytest.raises(HeaderInjection):
        render(mail(attachments=(Attachment(ORIGINAL, filename=f"a{bad}X-Evil: 1.eml"),)))


@given(st.text(max_size=40), st.sampled_from("\r\n\0"), st.text(max_size=40))
@settings(max_examples=50)
def test_any_subject_with_cr_lf_nul_raises(pre: str, bad: str, post: str) -> None:
    with pytest.raises(HeaderInjection):
        render(mail(subject=pre + bad + post))


# Python 3.11.7 lacks the CVE-2024-6923 fix: an RFC 2047 encoded CR LF in a value is
# decoded by the header parser and written out as a real line break (a new header).
ENCODED_CRLF = "=?utf-8?q?x=0D=0ABcc:_evil@attacker.example?="


def test_encoded_newline_in_in_reply_to_is_refused() -> None:
    try:
        raw = render(mail(in_reply_to=f"<{ENCODED_CRLF}@x.example>"))
    except HeaderInjection:
        return
    assert parse(raw)["Bcc"] is None


def test_encoded_newline_in_references_is_refused() -> None:
    try:
        raw = render(mail(references=("<a@b.example>", ENCODED_CRLF)))
    except HeaderInjection:
        return
    assert parse(raw)["Bcc"] is None


def test_encoded_newline_in_subject_is_refused() -> None:
    try:
        raw = render(mail(subject="Re: " + ENCODED_CRLF))
    except HeaderInjection:
        return
    assert parse(raw)["Bcc"] is None


def test_encoded_newline_in_display_name_raises_header_injection() -> None:
    with pytest.raises(HeaderInjection):
        render(mail(to=f"{ENCODED_CRLF} <a.jansen@gemeente.example>"))


def test_encoded_newline_never_yields_a_bcc_for_addresses() -> None:
    # Whatever the exception type, an address header must not grow a Bcc.
    try:
        raw = render(mail(to=f"{ENCODED_CRLF} <a.jansen@gemeente.example>"))
    except ValueError:
        return
    assert parse(raw)["Bcc"] is None


# -- non-ASCII headers ----------------------------------------------------------------


header_text = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
        min_size=1,
        max_size=120,
    )
    .map(lambda s: " ".join(s.split()))
    .filter(lambda s: s != "" and "=?" not in s)
)


@given(header_text)
@settings(max_examples=80)
def test_non_ascii_subject_is_encoded_and_round_trips(subject: str) -> None:
    raw = render(mail(subject=subject))
    head = header_block(raw)
    assert head.isascii()
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    msg = parse(raw)
    assert all_defects(msg) == []
    assert msg["Subject"] == subject


def test_dutch_subject_uses_rfc2047() -> None:
    subject = "Ontvangen: uw signaal VV-7K3M-9QXD — één vraag"
    raw = render(mail(subject=subject))
    assert b"=?utf-8?" in header_block(raw).lower()
    assert parse(raw)["Subject"] == subject


def test_non_ascii_display_name() -> None:
    raw = render(mail(sender="Meldpunt vreemdverhaal — gemeente <vreemdverhaal@gemeente.example>"))
    assert header_block(raw).isascii()
    msg = parse(raw)
    assert msg["From"].addresses[0].display_name == "Meldpunt vreemdverhaal — gemeente"
    assert msg["From"].addresses[0].addr_spec == "vreemdverhaal@gemeente.example"


# -- attachments -------------------------------------------------------------------------


def test_original_attached_byte_for_byte_as_message_rfc822() -> None:
    raw = render(mail(attachments=(Attachment(ORIGINAL),)))
    msg = parse(raw)
    assert all_defects(msg) == []
    assert msg.get_content_type() == "multipart/mixed"
    assert msg["MIME-Version"] == "1.0"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/rfc822"]
    assert text_of(parts[0]) == "Beste collega,\n\nEr is een signaal.\n"
    att = parts[1]
    assert att["Content-Transfer-Encoding"] == "7bit"
    assert att.get_filename() == "signaal.eml"
    assert att.get_content_disposition() == "attachment"
    inner = att.get_content()
    assert inner["Message-ID"] == "<orig-1@gemeente.example>"
    assert attachment_bodies(raw) == [crlf(ORIGINAL)]


def test_original_with_8bit_content() -> None:
    original = ORIGINAL.replace(b"us-ascii", b"utf-8").replace(
        b"12 mensen", "12 mensen, één kamer".encode()
    )
    raw = render(mail(attachments=(Attachment(original, filename="melding.eml"),)))
    msg = parse(raw)
    assert all_defects(msg) == []
    att = list(msg.iter_parts())[1]
    assert att.get_content_type() == "message/rfc822"
    assert att["Content-Transfer-Encoding"] == "8bit"
    assert att.get_filename() == "melding.eml"
    assert attachment_bodies(raw) == [crlf(original)]


def test_original_with_crlf_and_mixed_endings_keeps_its_content() -> None:
    original = crlf(ORIGINAL)  # already CRLF, ends with CRLF
    raw = render(mail(attachments=(Attachment(original),)))
    assert attachment_bodies(raw) == [original]
    mixed = b"Subject: a\r\nX: b\n\r\nline1\rline2\n"
    raw = render(mail(attachments=(Attachment(mixed),)))
    assert attachment_bodies(raw) == [crlf(mixed)]


def test_original_without_final_newline() -> None:
    original = ORIGINAL.rstrip(b"\n")
    raw = render(mail(attachments=(Attachment(original),)))
    (body,) = attachment_bodies(raw)
    assert body.startswith(crlf(original))
    assert body in (crlf(original), crlf(original) + b"\r\n")


def test_several_attachments_in_order() -> None:
    second = ORIGINAL.replace(b"orig-1", b"orig-2")
    raw = render(mail(attachments=(Attachment(ORIGINAL), Attachment(second, "aanvulling.eml"))))
    assert attachment_bodies(raw) == [crlf(ORIGINAL), crlf(second)]
    assert all_defects(parse(raw)) == []


@pytest.mark.parametrize(
    "original",
    [
        ORIGINAL.replace(b"12 mensen", b"12\x00mensen"),
        ORIGINAL.replace(b"Melder\n", b"M" * 999 + b"\n"),
        ORIGINAL + b"x" * 5000,
    ],
    ids=["nul", "long-line", "long-last-line"],
)
def test_original_that_cannot_travel_as_8bit_goes_as_base64_octet_stream(original: bytes) -> None:
    raw = render(mail(attachments=(Attachment(original),)))
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\x00" not in raw
    msg = parse(raw)
    assert all_defects(msg) == []
    att = list(msg.iter_parts())[1]
    assert att.get_content_type() == "application/octet-stream"
    assert att["Content-Transfer-Encoding"] == "base64"
    assert att.get_filename() == "signaal.eml"
    assert att.get_payload(decode=True) == original  # unchanged, not even line ends


@given(st.binary(max_size=3000))
@settings(max_examples=60)
def test_any_original_survives(original: bytes) -> None:
    raw = render(mail(attachments=(Attachment(original),)))
    msg = parse(raw)
    att = list(msg.iter_parts())[1]
    if att.get_content_type() == "application/octet-stream":
        assert att.get_payload(decode=True) == original
    else:
        (body,) = attachment_bodies(raw)
        c = crlf(original)
        assert body in (c, c + b"\r\n")


def test_boundary_never_occurs_in_an_attachment(monkeypatch: pytest.MonkeyPatch) -> None:
    seq = iter(["a" * 40, "b" * 40, "c" * 40])
    # The secrets module as inboxd.mails sees it.
    monkeypatch.setattr("inboxd.mails.secrets.token_hex", lambda n=None: next(seq))
    hostile = ORIGINAL + b"--inboxd-" + b"a" * 40 + b"\n" + b"inboxd-" + b"b" * 40 + b"--\n"
    raw = render(mail(attachments=(Attachment(hostile),)))
    assert b'boundary="inboxd-' + b"c" * 40 + b'"' in raw
    assert attachment_bodies(raw) == [crlf(hostile)]
    assert len(list(parse(raw).iter_parts())) == 2


def test_quote_in_filename_does_not_break_the_header() -> None:
    raw = render(mail(attachments=(Attachment(ORIGINAL, filename='a"; x="y.eml'),)))
    att = list(parse(raw).iter_parts())[1]
    assert att.get_content_type() == "message/rfc822"
    assert '"' not in (att.get_filename() or "")


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("<a@b.example>", True),
        ("<inboxd.0123abcd@gemeente.example>", True),
        ("<a b@c>", False),
        ("a@b.example", False),
        ("<a@b><c@d>", False),
        ("<=?utf-8?q?x?=@b>", False),
        ("<>", False),
        ("<" + "x" * 251 + ">", False),
    ],
)
def test_is_msg_id(value: str, ok: bool) -> None:
    assert is_msg_id(value) is ok


@pytest.mark.parametrize("bad", ["<a b@c>", "no-brackets@x.example", "<a@b> <c@d>", "<=?x?=@y>"])
def test_message_id_headers_must_be_plain_ids(bad: str) -> None:
    for field in ("in_reply_to", "message_id"):
        with pytest.raises(HeaderInjection):
            render(mail(**{field: bad}))
    if " " not in bad:  # References is a list of ids separated by spaces
        with pytest.raises(HeaderInjection):
            render(mail(references=("<ok@x.example>", bad)))


def test_pieces_are_the_rendered_mail_and_hold_the_original_itself() -> None:
    from inboxd.mails import render_pieces

    raw = b"From: a@b.example\r\nSubject: groot\r\n\r\n" + b"regel\r\n" * 50_000
    m = mail(attachments=(Attachment(raw=raw),), date=1_700_000_000.0, body="tekst")
    pieces = render_pieces(m)
    assert any(p is raw for p in pieces), "the original is a piece, not a copy of it"
    joined = b"".join(pieces)
    # render() picks a random boundary: compare with it taken out.
    boundary = re.search(rb'boundary="([^"]+)"', joined)
    assert boundary is not None
    again = render(m)
    other = re.search(rb'boundary="([^"]+)"', again)
    assert other is not None
    assert joined.replace(boundary.group(1), b"B") == again.replace(other.group(1), b"B")


def test_a_large_original_goes_to_a_piece_taking_transport_as_pieces() -> None:
    from fakes.memory import MemoryTransport

    from inboxd.outbox import PIECES_FROM, Outbox

    class Pieces(MemoryTransport):
        takes_pieces = True

    class Whole(MemoryTransport):
        pass

    big = b"Subject: x\r\n\r\n" + (b"y" * 76 + b"\r\n") * (PIECES_FROM // 78 + 10)
    small = b"Subject: x\r\n\r\nkort\r\n"

    def build(transport: object, raw: bytes) -> object:
        outbox = Outbox(None, transport, lambda: 0.0, 0.0, None)  # type: ignore[arg-type]
        return outbox._build(mail(date=1.0), (Attachment(raw=raw),), None)

    as_pieces = build(Pieces(), big)
    assert isinstance(as_pieces, list) and any(p is big for p in as_pieces)
    assert isinstance(build(Whole(), big), bytes)
    assert isinstance(build(Pieces(), small), bytes)
