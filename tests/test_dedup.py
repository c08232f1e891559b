"""The same message delivered twice is one: trace headers are left out of the dedup
HMAC, everything else is in it (pure functions; intake end to end in test_intake)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inboxd.crypto import Keyring, generate_key_file
from inboxd.dedup import HEADER_SCAN_MAX, is_trace_field, without_trace

MESSAGE = (
    b"From: Melder <melder@gemeente.example>\r\n"
    b"To: vreemdverhaal@gemeente.example\r\n"
    b"Subject: Signaal\r\n"
    b"Message-ID: <m1@gemeente.example>\r\n"
    b"Date: Mon, 23 Nov 2026 10:00:00 +0100\r\n"
    b"\r\n"
    b"Ik zag iets vreemds.\r\n"
)

TRACE_A = (
    b"Return-Path: <melder@gemeente.example>\r\n"
    b"Delivered-To: vreemdverhaal@gemeente.example\r\n"
    b"X-Original-To: vreemdverhaal@gemeente.example\r\n"
    b"Received: from mx1.gemeente.example (mx1 [10.0.0.1])\r\n"
    b"\tby mail.gemeente.example with LMTP id aaaa\r\n"
    b"\tfor <vreemdverhaal@gemeente.example>; Mon, 23 Nov 2026 10:00:01 +0100\r\n"
    b"Authentication-Results: mail.gemeente.example; dkim=pass header.d=gemeente.example\r\n"
    b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=gemeente.example; s=arc; b=AAAA\r\n"
    b"ARC-Message-Signature: i=1; a=rsa-sha256; b=BBBB\r\n"
    b"X-MS-Exchange-Organization-AuthAs: Internal\r\n"
    b"X-MS-Exchange-Transport-EndToEndLatency: 00:00:01.0000000\r\n"
)

TRACE_B = (
    b"Return-Path: <bounce-7@relay.example>\r\n"
    b"Delivered-To: vreemdverhaal@gemeente.example\r\n"
    b"Received: from mx2.gemeente.example (mx2 [10.0.0.2])\r\n"
    b" by mail.gemeente.example with LMTP id bbbb; Mon, 23 Nov 2026 10:05:09 +0100\r\n"
    b"Received: from relay.example by mx2.gemeente.example; Mon, 23 Nov 2026 10:05:08 +0100\r\n"
    b"X-MS-Exchange-Organization-Network-Message-Id: 1234-5678\r\n"
    b"ARC-Authentication-Results: i=1; relay.example; spf=pass\r\n"
)


def joined(raw: bytes) -> bytes:
    return b"".join(bytes(p) for p in without_trace(raw))


def test_trace_headers_with_their_folded_lines_are_left_out() -> None:
    assert joined(TRACE_A + MESSAGE) == MESSAGE
    assert joined(TRACE_B + MESSAGE) == MESSAGE
    assert joined(MESSAGE) == MESSAGE


def test_trace_headers_between_others_and_an_mbox_from_line_are_left_out() -> None:
    head, body = MESSAGE.split(b"\r\n\r\n", 1)
    first, rest = head.split(b"\r\n", 1)
    mixed = (
        b"From MAILER-DAEMON Mon Nov 23 10:00:00 2026\r\n"
        + first
        + b"\r\nX-Spam-Status: No, score=-1.0\r\n  tests=ALL_TRUSTED\r\n"
        + rest
        + b"\r\n\r\n"
        + body
    )
    assert joined(mixed) == MESSAGE


def test_everything_else_counts_headers_body_and_trace_like_text_in_the_body() -> None:
    other_subject = MESSAGE.replace(b"Subject: Signaal", b"Subject: Signaal 2")
    assert joined(other_subject) != joined(MESSAGE)
    body_received = MESSAGE + b"Received: this line is in the body\r\n"
    assert joined(body_received) == body_received
    # A header that merely looks like a trace name is not one.
    lookalike = b"X-Received-By-Hand: yes\r\n" + MESSAGE
    assert joined(lookalike) == lookalike


def test_lf_only_messages_and_messages_without_a_body() -> None:
    lf = MESSAGE.replace(b"\r\n", b"\n")
    trace = TRACE_A.replace(b"\r\n", b"\n")
    assert joined(trace + lf) == lf
    headers_only = TRACE_A + b"Subject: x\r\n"
    assert joined(headers_only) == b"Subject: x\r\n"
    assert joined(b"") == b""


def test_only_the_top_of_the_header_section_is_scanned() -> None:
    filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    n = HEADER_SCAN_MAX // len(filler) + 2
    raw = filler * n + b"Received: late\r\n\r\nbody\r\n"
    # Beyond the scan everything counts as content: nothing is lost, only kept.
    assert joined(raw) == raw
    huge_line = b"Subject: " + b"x" * (HEADER_SCAN_MAX + 10) + b"\r\n\r\nbody"
    assert joined(TRACE_A + huge_line) == huge_line


def test_the_body_is_handed_on_as_a_view_not_a_copy() -> None:
    raw = TRACE_A + MESSAGE + b"x" * (8 << 20)
    pieces = list(without_trace(raw))
    assert all(isinstance(p, memoryview) for p in pieces)
    assert sum(len(p) for p in pieces) == len(raw) - len(TRACE_A)


@pytest.mark.parametrize(
    "name",
    [
        "Received",
        "RECEIVED",
        "Return-Path",
        "Delivered-To",
        "X-Original-To",
        "Authentication-Results",
        "ARC-Seal",
        "X-MS-Exchange-Organization-SCL",
        "X-MS-Exchange-Transport-CrossTenantHeadersStamped",
    ],
)
def test_trace_field_names(name: str) -> None:
    assert is_trace_field(name)


@pytest.mark.parametrize(
    "name", ["From", "Subject", "Message-ID", "DKIM-Signature", "X-MS-Has-Attach", "Received-By"]
)
def test_not_trace_field_names(name: str) -> None:
    assert not is_trace_field(name)


@pytest.fixture
def ring(tmp_path: Path) -> Keyring:
    generate_key_file(tmp_path / "k")
    return Keyring.from_files([str(tmp_path / "k")])


def test_two_deliveries_have_one_digest_and_a_reused_id_another(ring: Keyring) -> None:
    a = ring.dedup_digests("<m1@gemeente.example>", *without_trace(TRACE_A + MESSAGE))
    b = ring.dedup_digests("<m1@gemeente.example>", *without_trace(TRACE_B + MESSAGE))
    assert a == b
    other = MESSAGE.replace(b"iets vreemds", b"iets anders")
    c = ring.dedup_digests("<m1@gemeente.example>", *without_trace(TRACE_A + other))
    assert c != a
    ids = ring.message_id_digests("<m1@gemeente.example>")
    assert ids == ring.message_id_digests("<m1@gemeente.example>")
    assert ids != ring.message_id_digests("<m2@gemeente.example>")
    assert not set(ids) & set(a), "id and content digests live apart"
    # Digests carry no content: 32 bytes, none of the message in them.
    assert all(len(d) == 32 for d in (*a, *ids))
