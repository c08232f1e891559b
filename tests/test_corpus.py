"""Real-world and hostile messages (tests/data/corpus, see SOURCES.md there).

Every file must parse without an exception and quickly; for the files whose nature
we know, ``auto`` must be right: a bounce or auto-reply that is not recognised gets
an acknowledgement (mail loops), a person's mail that is taken for automatic gets
none — and, if it answers our mail, is deleted as an auto-answer.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from inboxd.parsing import MINOR_DEFECTS, parse_message

CORPUS = Path(__file__).parent / "data" / "corpus"
FILES = sorted(p for p in CORPUS.iterdir() if p.name != "SOURCES.md")

# Bounces (DSN and non-standard), auto-replies, read receipts, abuse reports.
AUTO = {
    # CPython's DSN samples
    "cpy_msg_05.txt",
    "cpy_msg_16.txt",
    "cpy_msg_25.txt",
    "cpy_msg_43.txt",
    # bounces: Postfix, Sendmail, Exim, qmail, Gmail, Office 365, Exchange, Domino, SES, …
    "flk_bounce_delayed.eml",
    "flk_bounce_delayed-broken.eml",
    "flk_bounce_gmail-invalid-address.eml",
    "flk_bounce_gmail-no-dns.eml",
    "flk_bounce_mailbox-full.eml",
    "flk_bounce_no-mx.eml",
    "flk_bounce_office365.eml",
    "flk_bounce_zed.eml",
    "flk_bounce_broken-mime.eml",
    "ssm_bsd_rfc3464-01.eml",
    "ssm_bsd_rfc3464-07.eml",
    "ssm_bsd_rfc3464-09.eml",
    "ssm_bsd_lhost-postfix-01.eml",
    "ssm_bsd_lhost-postfix-49.eml",
    "ssm_bsd_lhost-sendmail-01.eml",
    "ssm_bsd_lhost-exim-01.eml",
    "ssm_bsd_lhost-exim-05.eml",
    "ssm_bsd_lhost-qmail-01.eml",
    "ssm_bsd_lhost-office365-01.eml",
    "ssm_bsd_lhost-exchange2003-01.eml",
    "ssm_bsd_lhost-exchange2007-01.eml",
    "ssm_bsd_lhost-gmail-01.eml",
    "ssm_bsd_lhost-amazonses-01.eml",
    "ssm_bsd_lhost-domino-01.eml",
    "ssm_bsd_lhost-googlegroups-01.eml",
    "ssm_bsd_lhost-einsundeins-03.eml",
    "ssm_bsd_rhost-franceptt-01.eml",
    "ssm_dos_lhost-sendgrid-01.eml",
    "ssm_dos_lhost-exchange2007-01.eml",
    "ssm_mac_lhost-postfix-01.eml",
    "ssm_mac_lhost-exim-01.eml",
    "ssm_err_make-test-01.eml",
    "ssm_not_rb-issue-368-bug.eml",  # not a bounce, but Auto-Submitted: auto-replied
    "mkt_bounce.txt",
    "mkt_delivery-status.txt",
    "mkt_delivery-status-no-blank-line.txt",
    "mkt_delivery-status-multiple-blank-lines.txt",
    "rbm_multi_address_bounce1.eml",
    "rbm_report_422.eml",
    "ndm_delivery-status.eml",
    # RFC 3834 auto-replies: Auto-Submitted, Exchange OOF (rules loop), iCloud vacation
    "ssm_bsd_rfc3834-01.eml",
    "ssm_bsd_rfc3834-02.eml",
    "ssm_bsd_rfc3834-03.eml",
    "ssm_bsd_rfc3834-04.eml",
    "ssm_bsd_rfc3834-05.eml",
    "ssm_bsd_rfc3834-06.eml",
    # read receipts (MDN) and abuse reports (ARF)
    "flk_disposition-notification.eml",
    "mkt_disposition-notification.txt",
    "ssm_bsd_arf-01.eml",
    "ssm_bsd_arf-02.eml",
    "flk_complaint_aol.eml",
    "flk_complaint_yahoo.eml",
    "mkt_feedback-report.txt",
}

# Mail written by people in real MUAs (Outlook, Thunderbird, Eudora, Pine, …).
PERSONAL = {
    "cpy_msg_26.txt",
    "ssm_not_is-not-bounce-01.eml",
    "ssm_not_is-not-bounce-02.eml",
    "zbt_m1005.txt",
    "zbt_m2005.txt",
    "zbt_m3001.txt",
    "zbt_m4001.txt",
    "zbt_m0006.txt",
    "zbt_m1011.txt",
    "zbt_m4006.txt",
    "zbt_invalid-charset.txt",
    "tb_calendar_single-event.eml",
    "tb_calendar_cancel-single-event.eml",
    "tb_calendar_outlook-test-invite.eml",
    "tb_smime_alice.env.eml",
    "tb_smime_alice.dsig.SHA256.multipart.bad.eml",
    "tb_bad-charset.eml",
    "tb_23-HTML.eml",
    "mkt_tnef_ukr.eml",
    "mkt_simple-embedded-message.eml",
    "flk_signed.eml",
    "flk_8bitmime.eml",
    "flk_quoted-printable.eml",
    "flk_multi-received-headers.eml",
    "rbm_japanese_iso_2022.eml",
    "rbm_ks_c_5601-1987.eml",
    "rbm_two_from_in_message.eml",
    "rbm_empty_group_lists.eml",
}

# Broken MIME / headers that must come out flagged.
MALFORMED = {
    "cpy_msg_35.txt",  # no blank line between headers and body
    "flk_missing-final-boundary.eml",
    "flk_false-multipart.eml",
    "flk_mailformed-headers.eml",
    "mtl_double-boundary.msg",
    "mtl_double-content-type.msg",
    "mtl_in_badbound.msg",
    "stw_malformed_001.eml",
    "stw_malformed_002.eml",
    "stw_malformed_013.eml",
    "stw_malformed_016.eml",
    "stw_malformed_017.eml",
    "mkt_empty-multipart.txt",
    "spsc_mail_outlook_1",  # an Outlook .msg (OLE2), not MIME at all
    "rbm_raw_email_multiple_from.eml",
    "spsc_mail_test_19",  # From: alice@example.com <bob@example.com>
}

# (report_type, one reported Message-ID) for reports whose original we know.
REPORTS = {
    "flk_bounce_office365.eml": (
        "delivery-status",
        "<20171013111011.20866.254C2F3A4D7AA526@ninomail.com>",
    ),
    "ssm_bsd_lhost-office365-01.eml": ("delivery-status", "<FFFFFFFF.EEEEEEEE@example.ed.jp>"),
    "mkt_disposition-notification.txt": (
        "disposition-notification",
        "<199509192301.23456@example.org>",
    ),
    "cpy_msg_43.txt": ("delivery-status", "<edab.7804f5cb8070@python.org>"),
    "mkt_bounce.txt": (
        "delivery-status",
        "<44565655.JitbitHelpdesk.13439.691a0afc-a0a0-457c-8208-f20b7c4a4cb1@jitbit.com>",
    ),
    # text bounces: the original's Message-ID is quoted in the body
    "ssm_bsd_lhost-gmail-01.eml": (None, "<D992C2C3-F175-4C4D-97E2-53A90E4E5BF5@gmail.com>"),
    "ssm_bsd_lhost-qmail-01.eml": (None, "<000000000.9999999999999.JavaMail.postmaster@mailhub>"),
    "ssm_mac_lhost-exim-01.eml": (None, "<E1P1ce6-000Egt-GZ@e1.example.org>"),
}


def test_corpus_is_present() -> None:
    names = {p.name for p in FILES}
    assert len(FILES) >= 60
    assert AUTO | PERSONAL | MALFORMED | set(REPORTS) <= names
    assert not AUTO & PERSONAL


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_parses_quickly_without_exception(path: Path) -> None:
    raw = path.read_bytes()
    start = time.thread_time()
    m = parse_message(raw)
    assert time.thread_time() - start < 2
    assert m.size == len(raw)
    assert "\r" not in m.subject and "\n" not in m.subject
    assert m.malformed == any(d not in MINOR_DEFECTS for d in m.defects)
    assert not any(d.startswith("error:") for d in m.defects), m.defects


@pytest.mark.parametrize("name", sorted(AUTO))
def test_automatic_messages_are_auto(name: str) -> None:
    m = parse_message((CORPUS / name).read_bytes())
    assert m.auto and m.auto_reasons


@pytest.mark.parametrize("name", sorted(PERSONAL))
def test_personal_messages_are_not_auto(name: str) -> None:
    m = parse_message((CORPUS / name).read_bytes())
    assert not m.auto, m.auto_reasons
    assert m.reported_message_ids == ()


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_broken_messages_are_flagged(name: str) -> None:
    assert parse_message((CORPUS / name).read_bytes()).malformed


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_reports_name_the_original(name: str) -> None:
    report_type, original = REPORTS[name]
    m = parse_message((CORPUS / name).read_bytes())
    assert m.report_type == report_type
    assert original in m.reported_message_ids


def test_line_ending_variants_read_alike() -> None:
    bsd = parse_message((CORPUS / "ssm_bsd_lhost-postfix-01.eml").read_bytes())
    mac = parse_message((CORPUS / "ssm_mac_lhost-postfix-01.eml").read_bytes())
    assert (mac.subject, mac.from_addr, mac.message_id) == (
        bsd.subject,
        bsd.from_addr,
        bsd.message_id,
    )
    assert mac.text == bsd.text and mac.text
    assert mac.attachment_count == bsd.attachment_count == 1
    crlf = parse_message((CORPUS / "ssm_dos_lhost-exchange2007-01.eml").read_bytes())
    lf = parse_message((CORPUS / "ssm_bsd_lhost-exchange2007-01.eml").read_bytes())
    assert (crlf.subject, crlf.text, crlf.auto_reasons) == (lf.subject, lf.text, lf.auto_reasons)


def test_encrypted_and_tnef_are_attachments_without_text() -> None:
    env = parse_message((CORPUS / "tb_smime_alice.env.eml").read_bytes())
    assert env.attachment_count == 1 and env.text == ""
    tnef = parse_message((CORPUS / "zbt_m4006.txt").read_bytes())
    assert tnef.attachment_count == 1


def test_display_name_spoof_in_the_wild() -> None:
    # From: alice@example.com <bob@example.com> (unquoted "@" in the name): refused
    assert parse_message((CORPUS / "spsc_mail_test_19").read_bytes()).from_addr is None


def test_large_stress_file() -> None:
    raw = (CORPUS / "flk_torture.eml").read_bytes()
    start = time.thread_time()
    m = parse_message(raw)
    assert time.thread_time() - start < 1
    assert m.attachment_count > 5
