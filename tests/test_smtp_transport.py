"""SmtpTransport against the real aiosmtpd relay (which delivers into Dovecot)."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import MailServer
from servers.line import Line
from servers.tlsca import make_ca

from inboxd.transport.base import Envelope, SendError
from inboxd.transport.smtp import SmtpTransport, dot_stuffed, needs_8bitmime, refusal, status

FROM = "vreemdverhaal@gemeente.example"
KEDO = "intake-kedo@gemeente.example"

# Things a careless transport would change: 8-bit bytes, a leading dot, odd header
# folding and spacing, a header smtplib/email would re-wrap, no Date, no Message-ID.
MESSAGE = (
    b"From: Meldpunt <vreemdverhaal@gemeente.example>\r\n"
    b"To: intake-kedo@gemeente.example\r\n"
    b"Subject:   =?utf-8?q?Doorgezet_signaal?=\r\n"
    b"X-Folded: een\r\n\ttwee\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Caf\xc3\xa9 aan de gracht.\r\n"
    b".begint met een punt\r\n"
    b"..twee punten\r\n"
    b"\r\n"
)


@pytest.fixture
def make_transport(mail: MailServer) -> Iterator[Callable[..., SmtpTransport]]:
    made: list[SmtpTransport] = []

    def make(security: str = "starttls", **kw: Any) -> SmtpTransport:
        port = {
            "starttls": mail.smtp_port,
            "tls": mail.smtp_tls_port,
            "none": mail.smtp_plain_port,
        }[security]
        kw.setdefault("ca_file", mail.ca_file)
        kw.setdefault("timeout", 5.0)
        kw.setdefault("local_hostname", "inboxd.test")
        if security != "none" and "oauth2_token" not in kw:
            kw.setdefault("username", FROM)
            kw.setdefault("password", mail.password(FROM))
        t = SmtpTransport(kw.pop("host", mail.smtp_host), kw.pop("port", port), security, **kw)  # type: ignore[arg-type]
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def test_status_and_refusal_keep_codes_only() -> None:
    assert status(550, b"5.1.1 <geheim@x.example> User doesn't exist") == "550 5.1.1"
    assert status(451, "Try later") == "451"
    e = refusal("RCPT", 550, b"5.1.1 <geheim@x.example> nope")
    assert not e.temporary and e.reason == "RCPT refused: 550 5.1.1"
    assert refusal("DATA", 451, b"4.3.0 busy").temporary
    assert refusal("MAIL", 421, b"4.3.2 bye").temporary
    assert refusal("DATA", -1, b"").temporary


def test_security_none_only_to_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        SmtpTransport("smtp.gemeente.example", 25, "none")
    SmtpTransport("127.0.0.1", 25, "none")
    with pytest.raises(ValueError):
        SmtpTransport("127.0.0.1", 25, "none", username="x")  # username without secret


@pytest.mark.parametrize("security", ["starttls", "tls", "none"])
def test_bytes_arrive_unchanged(
    mail: MailServer, make_transport: Callable[..., SmtpTransport], security: str
) -> None:
    t = make_transport(security)
    t.send(Envelope(FROM, KEDO), MESSAGE)
    assert mail.relay.accepted == 1
    rec = mail.relay.received[0]
    assert rec.raw == MESSAGE
    assert rec.rcpt_tos == (KEDO,) and rec.mail_from == FROM
    assert rec.tls is (security != "none")
    assert rec.login == (None if security == "none" else FROM)
    # And it really was delivered (Dovecot prepends its trace headers only).
    assert mail.wait_for_messages(KEDO, 1)[0].endswith(MESSAGE)


def test_one_connection_for_many_sends_and_null_sender(
    mail: MailServer, make_transport: Callable[..., SmtpTransport]
) -> None:
    t = make_transport("starttls")
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            t.send(Envelope(FROM, KEDO), MESSAGE)
        t.send(Envelope("", KEDO), MESSAGE)
    assert [e["event"] for e in logs].count("transport.connected") == 1
    assert mail.relay.accepted == 4
    assert mail.relay.received[-1].mail_from == ""


def test_reconnects_after_the_server_went_away(
    mail: MailServer, make_transport: Callable[..., SmtpTransport]
) -> None:
    t = make_transport("starttls")
    t.send(Envelope(FROM, KEDO), MESSAGE)
    mail.stop_relay()
    with pytest.raises(SendError) as info:
        t.send(Envelope(FROM, KEDO), MESSAGE)
    assert info.value.temporary and "connect" in info.value.reason
    mail.start_relay()
    t.send(Envelope(FROM, KEDO), MESSAGE)
    assert mail.relay.accepted == 2


def test_a_connection_closed_by_the_server_is_replaced_without_a_duplicate(
    mail: MailServer, make_transport: Callable[..., SmtpTransport]
) -> None:
    """A recently used connection is not asked with a NOOP first; when the server
    has dropped it meanwhile, MAIL fails, and that mail goes once over a new one."""
    t = make_transport("starttls")
    t.send(Envelope(FROM, KEDO), MESSAGE)
    mail.stop_relay()
    mail.start_relay()  # the old connection is gone, the server is back
    before = mail.relay.accepted
    with structlog.testing.capture_logs() as logs:
        t.send(Envelope(FROM, KEDO), MESSAGE)
    assert mail.relay.accepted == before + 1, "accepted once by the restarted relay"
    assert [e["event"] for e in logs].count("transport.connected") == 1


def test_noop_only_after_the_connection_was_idle(
    mail: MailServer, make_transport: Callable[..., SmtpTransport], monkeypatch: pytest.MonkeyPatch
) -> None:
    import inboxd.transport.smtp as smtp_mod

    t = make_transport("starttls")
    noops: list[int] = []
    real = smtplib.SMTP.noop

    def counting(self: smtplib.SMTP) -> tuple[int, bytes]:
        noops.append(1)
        return real(self)

    monkeypatch.setattr(smtplib.SMTP, "noop", counting)
    for _ in range(5):
        t.send(Envelope(FROM, KEDO), MESSAGE)
    assert noops == [], "no round trip per mail on a connection just used"
    monkeypatch.setattr(smtp_mod, "NOOP_AFTER_IDLE", 0.0)
    t.send(Envelope(FROM, KEDO), MESSAGE)
    assert noops == [1], "an idle connection is asked first"
    assert mail.relay.accepted == 6


@pytest.mark.parametrize(
    ("code", "stage", "temporary", "reason"),
    [
        (451, "data", True, "DATA refused: 451 4.3.0"),
        (554, "data", False, "DATA refused: 554 5.7.1"),
        (450, "rcpt", True, "RCPT refused: 450 4.3.0"),
        (550, "rcpt", False, "RCPT refused: 550 5.7.1"),
        (421, "data", True, "DATA refused: 421 4.3.0"),
    ],
)
def test_refusals_are_mapped(
    mail: MailServer,
    make_transport: Callable[..., SmtpTransport],
    code: int,
    stage: str,
    temporary: bool,
    reason: str,
) -> None:
    t = make_transport("starttls")
    mail.fail_next(1, code=code, stage=stage)  # type: ignore[arg-type]
    with pytest.raises(SendError) as info:
        t.send(Envelope(FROM, KEDO), MESSAGE)
    assert info.value.temporary is temporary
    assert info.value.reason == reason
    # The same transport goes on working (same connection, or a new one after 421).
    t.send(Envelope(FROM, KEDO), MESSAGE)
    assert mail.relay.accepted == 1
    assert len(mail.wait_for_messages(KEDO, 1)) == 1


def test_unknown_recipient_is_permanent_and_not_named(
    mail: MailServer, make_transport: Callable[..., SmtpTransport]
) -> None:
    t = make_transport("starttls")
    with pytest.raises(SendError) as info:
        t.send(Envelope(FROM, "geheim-slachtoffer@gemeente.example"), MESSAGE)
    assert not info.value.temporary
    assert info.value.reason == "RCPT refused: 550 5.1.1"
    t.send(Envelope(FROM, KEDO), MESSAGE)
    assert mail.relay.accepted == 1


def test_wrong_ca_refused(
    mail: MailServer, make_transport: Callable[..., SmtpTransport], tmp_path: Path
) -> None:
    other, _, _ = make_ca(tmp_path / "other")
    for security in ("starttls", "tls"):
        t = make_transport(security, ca_file=str(other))
        with pytest.raises(SendError) as info:
            t.send(Envelope(FROM, KEDO), MESSAGE)
        assert info.value.temporary and "certificate" in info.value.reason
    assert mail.relay.accepted == 0


def test_starttls_missing_is_refused_before_any_password(
    mail: MailServer, make_transport: Callable[..., SmtpTransport]
) -> None:
    # The plain port offers neither STARTTLS nor AUTH.
    t = make_transport("starttls", port=mail.smtp_plain_port)
    with pytest.raises(SendError) as info:
        t.send(Envelope(FROM, KEDO), MESSAGE)
    assert "STARTTLS" in info.value.reason
    assert mail.relay.accepted == 0


def test_wrong_password(mail: MailServer, make_transport: Callable[..., SmtpTransport]) -> None:
    t = make_transport("starttls", password="wrong")
    with pytest.raises(SendError) as info:
        t.send(Envelope(FROM, KEDO), MESSAGE)
    # Kept in the outbox: a password can be fixed without losing forwards.
    assert info.value.temporary
    assert info.value.reason == "cannot connect: login refused 535 5.7.8"
    with pytest.raises(SendError):
        t.check()


def test_xoauth2(mail: MailServer, make_transport: Callable[..., SmtpTransport]) -> None:
    calls: list[bool] = []

    def good(force_refresh: bool = False) -> str:
        calls.append(force_refresh)
        return mail.oauth2_token(FROM)

    t = make_transport("starttls", username=FROM, oauth2_token=good)
    t.send(Envelope(FROM, KEDO), MESSAGE)
    assert calls == [False]
    assert mail.relay.received[0].login == FROM

    bad_calls: list[bool] = []

    def bad(force_refresh: bool = False) -> str:
        bad_calls.append(force_refresh)
        return "verlopen"

    t2 = make_transport("tls", username=FROM, oauth2_token=bad)
    with pytest.raises(SendError) as info:
        t2.send(Envelope(FROM, KEDO), MESSAGE)
    assert bad_calls == [False, True]
    assert info.value.temporary and "login refused 535" in info.value.reason


def test_check(mail: MailServer, make_transport: Callable[..., SmtpTransport]) -> None:
    make_transport("starttls").check()
    make_transport("tls").check()
    make_transport("none").check()
    assert mail.relay.accepted == 0
    mail.stop_relay()
    with pytest.raises(SendError) as info:
        make_transport("none").check()
    assert "connect" in info.value.reason


def test_close_is_idempotent(make_transport: Callable[..., SmtpTransport]) -> None:
    t = make_transport("starttls")
    t.send(Envelope(FROM, KEDO), MESSAGE)
    t.close()
    t.close()
    t.send(Envelope(FROM, KEDO), MESSAGE)  # reconnects


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(
        st.sampled_from(
            [b"", b".", b"..", b".x", b"a.b", b"plain", b"\xc3\xa9t\xc3\xa9", b"x" * 40]
        ),
        max_size=40,
    ),
    ending=st.sampled_from([b"\r\n", b""]),
    chunk=st.integers(min_value=1, max_value=64),
)
def test_dot_stuffing_in_pieces_is_what_smtplib_sends(
    lines: list[bytes], ending: bytes, chunk: int
) -> None:
    message = b"\r\n".join(lines) + ending
    expected = smtplib._quote_periods(message)  # type: ignore[attr-defined]
    if expected[-2:] != b"\r\n":
        expected += b"\r\n"
    expected += b".\r\n"
    assert b"".join(dot_stuffed(message, chunk)) == expected


def test_a_large_message_with_dots_arrives_unchanged(
    mail: MailServer, make_transport: Callable[..., SmtpTransport], monkeypatch: pytest.MonkeyPatch
) -> None:
    import inboxd.transport.smtp as smtp_mod

    monkeypatch.setattr(smtp_mod, "DATA_CHUNK", 1000)  # many pieces, boundaries everywhere
    body = b"".join(b".%d line with a leading dot\r\n..twice\r\nplain\r\n" % i for i in range(500))
    message = MESSAGE.replace(b"\r\n\r\n", b"\r\n\r\n" + body, 1)
    t = make_transport("starttls")
    t.send(Envelope(FROM, KEDO), message)
    assert mail.relay.received[-1].raw == message


@pytest.mark.parametrize("message", [MESSAGE, MESSAGE.rstrip(b"\r\n"), b""])
def test_a_small_message_and_its_end_of_data_are_one_write(message: bytes) -> None:
    """A separate small write for the final "." after a small message waits for the
    server's delayed ACK (Nagle's algorithm): ~40 ms a mail."""
    pieces = list(dot_stuffed(message))
    assert len(pieces) == 1
    assert pieces[0].endswith(b"\r\n.\r\n")


def test_a_large_message_ends_in_its_last_piece() -> None:
    message = b"".join(b"line %d\r\n" % i for i in range(2000))
    pieces = list(dot_stuffed(message, 1000))
    assert len(pieces) > 10
    assert all(1000 <= len(p) < 2000 for p in pieces[:-1]), "about a chunk a write"
    assert pieces[-1].endswith(b"\r\n.\r\n") and not pieces[-1].startswith(b".\r\n")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"", False),
        (b"plain\r\n", False),
        (b"\x7f", False),
        (b"\x80", True),
        (b"caf\xc3\xa9", True),
    ],
)
def test_needs_8bitmime_for_any_byte_above_7f(message: bytes, expected: bool) -> None:
    assert needs_8bitmime(b"x" * 5000 + message) is expected


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.sampled_from([b"", b".", b"..", b".x", b"a.b", b"plain", b"x" * 40]), max_size=30
    ),
    ending=st.sampled_from([b"\r\n", b"", b"\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    chunk=st.integers(min_value=1, max_value=64),
)
def test_pieces_are_stuffed_as_their_concatenation(
    lines: list[bytes], ending: bytes, cuts: list[int], chunk: int
) -> None:
    message = b"\r\n".join(lines) + ending
    points = sorted({min(c, len(message)) for c in cuts})
    pieces = [message[a:b] for a, b in zip([0, *points], [*points, len(message)], strict=True)]
    assert b"".join(dot_stuffed(pieces, chunk)) == b"".join(dot_stuffed(message, chunk))


def test_small_pieces_go_out_as_one_write() -> None:
    pieces = [b"Subject: x\r\n", b"\r\n", b".begins with a dot\r\n", b"", b"end"]
    writes = list(dot_stuffed(pieces))
    assert writes == [b"Subject: x\r\n\r\n..begins with a dot\r\nend\r\n.\r\n"]


def test_a_message_in_pieces_arrives_as_their_concatenation(
    mail: MailServer, make_transport: Callable[..., SmtpTransport], monkeypatch: pytest.MonkeyPatch
) -> None:
    import inboxd.transport.smtp as smtp_mod

    monkeypatch.setattr(smtp_mod, "DATA_CHUNK", 1000)
    body = b"".join(b".%d caf\xc3\xa9\r\n" % i for i in range(3000))
    head, rest = MESSAGE.split(b"\r\n\r\n", 1)
    pieces = [head, b"\r\n\r\n", body, rest]
    t = make_transport("starttls")
    t.send(Envelope(FROM, KEDO), pieces)
    assert mail.relay.received[-1].raw == b"".join(pieces)


def test_beats_come_while_the_server_takes_its_time_to_answer_the_data(
    mail: MailServer, make_transport: Callable[..., SmtpTransport]
) -> None:
    """A server may scan or deliver a large mail before it answers the data: the
    transport waits for that answer in slices, with a beat between them."""
    line = Line(mail.smtp_plain_port, hold_after=b"\r\n.\r\n")
    beats = 0

    def beat() -> None:
        nonlocal beats
        beats += 1
        if beats == 10:
            line.release()

    try:
        t = make_transport("none", port=line.port)
        t.send(Envelope(FROM, KEDO), MESSAGE, beat=beat)
    finally:
        line.close()
    assert beats >= 10, "the answer was awaited with beats until it was let through"
    assert mail.relay.received[-1].raw == MESSAGE


def test_a_server_that_never_answers_the_data_loses_the_connection_at_its_timeout(
    mail: MailServer, make_transport: Callable[..., SmtpTransport]
) -> None:
    line = Line(mail.smtp_plain_port, hold_after=b"\r\n.\r\n")
    beats = 0

    def beat() -> None:
        nonlocal beats
        beats += 1

    try:
        t = make_transport("none", port=line.port, timeout=1.0)
        started = time.monotonic()
        with pytest.raises(SendError) as info:
            t.send(Envelope(FROM, KEDO), MESSAGE, beat=beat)
        took = time.monotonic() - started
    finally:
        line.close()
    assert info.value.temporary and info.value.reason == "connection lost at DATA"
    assert 1.0 <= took < 10.0, f"{took:.1f}s: the socket timeout bounds the wait"
    assert beats >= 5, "beats all along the wait"
