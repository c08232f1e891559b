"""The test servers themselves: if these fail, every other test is suspect."""

from __future__ import annotations

import smtplib
import ssl
import time

import pytest
from imapclient import IMAPClient
from servers import MailServer
from servers.dovecot import group_members

MSG = (
    b"From: melder@gemeente.example\r\nTo: vreemdverhaal@gemeente.example\r\n"
    b"Subject: t\r\n\r\nhallo\r\n"
)
BOX = "vreemdverhaal@gemeente.example"


def test_deliver_over_starttls_auth_and_read_over_imap_tls(mail: MailServer) -> None:
    mail.deliver(MSG, BOX)
    got = mail.wait_for_messages(BOX, 1)
    assert len(got) == 1
    assert got[0].endswith(MSG)
    # Read it again over implicit TLS, verifying the certificate for real.
    with IMAPClient(mail.imap_host, port=mail.imap_tls_port, ssl_context=mail.ssl_context()) as c:
        c.login(BOX, mail.password(BOX))
        c.select_folder("INBOX", readonly=True)
        assert len(c.search("ALL")) == 1
        caps = c.capabilities()
        assert b"IDLE" in caps and b"UIDPLUS" in caps


def test_submission_port_requires_starttls_then_auth(mail: MailServer) -> None:
    with smtplib.SMTP(mail.smtp_host, mail.smtp_port, timeout=10) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        assert not s.has_extn("auth")  # no AUTH before TLS
        code, _ = s.mail("melder@gemeente.example")
        assert code == 530
        s.rset()
        s.starttls(context=mail.ssl_context())
        s.ehlo()
        assert s.has_extn("auth")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("melder@gemeente.example", "wrong")
        s.login("melder@gemeente.example", mail.password("melder@gemeente.example"))
        s.sendmail("melder@gemeente.example", [BOX], MSG)
    assert mail.relay.accepted == 1
    rec = mail.relay.received[0]
    assert rec.raw == MSG and rec.tls and rec.login == "melder@gemeente.example"
    assert rec.rcpt_tos == (BOX,)


def test_smtps_and_plain_ports_and_xoauth2(mail: MailServer) -> None:
    with smtplib.SMTP_SSL(
        mail.smtp_host, mail.smtp_tls_port, context=mail.ssl_context(), timeout=10
    ) as s:
        user = "a.jansen@gemeente.example"
        token = mail.oauth2_token(user)
        s.ehlo()
        s.auth("XOAUTH2", lambda _=None: f"user={user}\x01auth=Bearer {token}\x01\x01")
        s.sendmail(user, [BOX], MSG)
    with smtplib.SMTP(mail.smtp_host, mail.smtp_plain_port, timeout=10) as s:
        s.ehlo()
        assert not s.has_extn("starttls") and not s.has_extn("auth")
        s.sendmail("", [BOX], MSG)  # null sender, as a bounce would have
    assert mail.relay.accepted == 2
    assert [r.login for r in mail.relay.received] == ["a.jansen@gemeente.example", None]
    assert len(mail.wait_for_messages(BOX, 2)) == 2


def test_wrong_ca_is_refused(mail: MailServer, tmp_path) -> None:
    from servers.tlsca import make_ca

    other_ca, _, _ = make_ca(tmp_path / "other")
    ctx = ssl.create_default_context(cafile=str(other_ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        IMAPClient(mail.imap_host, port=mail.imap_tls_port, ssl_context=ctx, timeout=5)


def test_unknown_recipient_refused(mail: MailServer) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        mail.deliver(MSG, "niemand@gemeente.example")
    assert info.value.recipients["niemand@gemeente.example"][0] == 550
    with smtplib.SMTP(mail.smtp_host, mail.smtp_plain_port, timeout=10) as s:
        s.ehlo()
        code, _ = s.mail("x@y.example")
        assert code == 250
        code, _ = s.rcpt("onbekend@extern.example")
        assert code == 550


def test_reset_empties_every_folder_and_nothing_comes_back(mail: MailServer) -> None:
    mail.deliver(MSG, [BOX, "collega@gemeente.example"])
    mail.append(BOX, MSG, folder="Archief/2026")
    mail.append(BOX, MSG, folder="Verwijderde items", flags=[b"\\Seen"])
    mail.append_many("a.jansen@gemeente.example", [MSG] * 5)
    before = mail.all_messages(BOX)
    assert {k: len(v) for k, v in before.items()} == {
        "INBOX": 1,
        "Archief/2026": 1,
        "Verwijderde items": 1,
    }
    with mail.imap(BOX) as c:
        uidnext_before = c.folder_status("INBOX", [b"UIDNEXT"])[b"UIDNEXT"]

    mail.reset()
    for user in (BOX, "collega@gemeente.example", "a.jansen@gemeente.example"):
        assert mail.all_messages(user) == {"INBOX": []}
    # A restart re-reads the maildir and index: expunged mail must stay gone.
    mail.stop_dovecot()
    mail.start_dovecot()
    assert mail.all_messages(BOX) == {"INBOX": []}
    # UIDs keep counting up, as on a real server (no UID reuse after a reset).
    mail.deliver(MSG, BOX)
    with mail.imap(BOX) as c:
        c.select_folder("INBOX")
        assert c.search("ALL")[0] >= uidnext_before


def test_stop_and_start_dovecot(mail: MailServer) -> None:
    mail.deliver(MSG, BOX)
    c = IMAPClient(mail.imap_host, port=mail.imap_plain_port, ssl=False, timeout=5)
    c.login(BOX, mail.password(BOX))
    c.select_folder("INBOX")
    mail.stop_dovecot()
    with pytest.raises((OSError, IMAPClient.Error, IMAPClient.AbortError)):
        c.noop()
    with pytest.raises(ConnectionRefusedError):
        IMAPClient(mail.imap_host, port=mail.imap_plain_port, ssl=False, timeout=5)
    mail.start_dovecot()
    assert len(mail.messages(BOX)) == 1  # same mail, same ports
    # No orphaned dovecot processes of this instance after stop.
    mail.stop_dovecot()
    assert mail.dovecot.last_pgid is not None
    assert group_members(mail.dovecot.last_pgid) == []
    mail.start_dovecot()


def _send_plain(mail: MailServer, rcpts: list[str]) -> None:
    with smtplib.SMTP(mail.smtp_host, mail.smtp_plain_port, timeout=10) as s:
        s.sendmail("melder@gemeente.example", rcpts, MSG)


def test_fault_switches(mail: MailServer) -> None:
    mail.fail_next(2, code=451, stage="data")
    for _ in range(2):
        with pytest.raises(smtplib.SMTPDataError) as info:
            _send_plain(mail, [BOX])
        assert info.value.smtp_code == 451
    _send_plain(mail, [BOX])
    assert mail.relay.accepted == 1 and mail.relay.refused == 2

    mail.fail_next(1, code=550, stage="rcpt")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as rinfo:
        _send_plain(mail, [BOX, "collega@gemeente.example"])
    assert {c for c, _ in rinfo.value.recipients.values()} == {550}

    mail.fail_next(1, code=554, stage="data")
    # Fixture deliveries pass by the fault untouched …
    mail.deliver(MSG, BOX)
    # … the code under test gets it.
    with pytest.raises(smtplib.SMTPDataError) as info:
        _send_plain(mail, [BOX])
    assert info.value.smtp_code == 554
    assert mail.relay.pending_faults == 0
    assert mail.relay.accepted == 1
    assert len(mail.messages(BOX)) == 2  # one via the relay test, one via deliver()


def test_fault_switches_cleared_by_reset(mail: MailServer) -> None:
    mail.fail_next(3)
    mail.reset()
    _send_plain(mail, [BOX])
    assert mail.relay.accepted == 1


def test_relay_stop_start(mail: MailServer) -> None:
    mail.stop_relay()
    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP(mail.smtp_host, mail.smtp_plain_port, timeout=5)
    mail.start_relay()
    _send_plain(mail, [BOX])
    assert mail.relay.accepted == 1


def test_wait_for_messages_times_out_with_clear_message(mail: MailServer) -> None:
    with pytest.raises(AssertionError, match="expected >= 1 message"):
        mail.wait_for_messages(BOX, 1, timeout=0.2)


def test_failed_logins_do_not_slow_down_later_logins(mail: MailServer) -> None:
    for _ in range(3):
        c = IMAPClient(mail.imap_host, port=mail.imap_plain_port, ssl=False, timeout=10)
        with pytest.raises(IMAPClient.Error):
            c.login(BOX, "wrong")
        c.logout()
    t0 = time.monotonic()
    with mail.imap(BOX):
        pass
    assert time.monotonic() - t0 < 1.0  # no anvil auth penalty (it would be 8 s here)


def test_the_fakes_pki_directory_is_removed_when_the_session_ends() -> None:
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    child = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(tests)!r})\n"
        "from fakes import pki\n"
        "ca = pki().ca_file\n"
        "assert os.path.exists(ca)\n"
        "print(os.path.dirname(ca))\n"
    )
    p = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    made = Path(p.stdout.strip())
    assert made.name.startswith("inboxd-pki-")
    assert not made.exists(), f"{made} left behind"
