"""Shared fixtures: real mail servers for the whole suite.

``mailserver`` (session scope) starts ONE private Dovecot (IMAP + LMTP, maildir in
``/tmp/dv-*``) and ONE aiosmtpd relay that delivers into it over LMTP. ``mail``
(function scope) first resets everything — every folder of every user emptied,
extra folders deleted, fault switches cleared, stopped servers started again — and
returns the same object. Use ``mail`` in tests; ``mailserver`` only where nothing is
changed. Type: ``from servers import MailServer``.

Users (password ``pw-<localpart>``, see ``mail.password(address)``)::

    vreemdverhaal@gemeente.example   the signals mailbox
    melder@gemeente.example, collega@gemeente.example     reporters
    buiten@extern.example                                 outside the ack domains
    a.jansen@gemeente.example, b.devries@gemeente.example functionarissen
    intake-kedo@gemeente.example, informatieplein@riec.example, inspectie@nla.example
                                                          destinations

Any other recipient is refused with 550 (Dovecot's own answer, at RCPT).

Connection facts (all on 127.0.0.1, ports chosen at start, certificate for
``localhost``/``127.0.0.1`` from a throw-away CA in ``mail.ca_file``):

- ``imap_host``, ``imap_tls_port`` (implicit TLS), ``imap_plain_port`` (plain and
  STARTTLS); IDLE, UIDPLUS, no lazy_expunge; AUTH PLAIN, LOGIN, XOAUTH2 and
  OAUTHBEARER (bearer token: ``mail.oauth2_token(address)``, checked by a loopback
  tokeninfo endpoint). Failed logins cause no delay for later tests.
- ``smtp_host``, ``smtp_port`` (STARTTLS, AUTH PLAIN/LOGIN/XOAUTH2 only after
  STARTTLS, AUTH required), ``smtp_tls_port`` (implicit TLS, AUTH required),
  ``smtp_plain_port`` (no TLS, no AUTH). XOAUTH2 token as for IMAP.

Methods:

- ``deliver(raw, to, mail_from="melder@gemeente.example", login=None)`` — real SMTP
  through the relay (a known sender authenticates over STARTTLS, as ``login`` if
  given; others use the plain port). The relay strips ``Authentication-Results``
  fields with its id (``servers.AUTHSERV_ID``) and stamps its own: ``auth=pass
  smtp.auth=<login>``, or ``auth=none`` (+ ``spf=fail`` for a hosted envelope domain).
  Mail from staff in the end-to-end tests goes through ``world.submit``.
  Dovecot prepends Return-Path/Delivered-To/Received. Raises smtplib errors on
  refusal. Fixture deliveries are not counted and never faulted.
- ``append(address, raw, folder="INBOX", flags=())``, ``append_many(address, raws,
  folder="INBOX")`` — IMAP APPEND/MULTIAPPEND, fast, bytes stored unchanged.
- ``messages(address, folder="INBOX") -> list[bytes]`` (oldest first),
  ``all_messages(address) -> dict[folder, list[bytes]]`` (every folder of
  ``LIST "" "*"``), ``wait_for_messages(address, count, timeout=10.0,
  folder="INBOX") -> list[bytes]`` (at least ``count``; AssertionError on timeout).
- ``imap(address)`` — context manager yielding a logged-in ``IMAPClient``.
- ``stop_dovecot()`` / ``start_dovecot()`` — same ports and mail after restart;
  ``stop_relay()`` / ``start_relay()`` likewise.
- ``fail_next(count=1, code=451, stage="data"|"rcpt")`` — the next ``count`` SMTP
  transactions from the code under test fail with ``code`` (4xx temporary, 5xx
  permanent). ``relay.accepted`` (int), ``relay.refused`` (int) and
  ``relay.received`` (list of ``Received(mail_from, rcpt_tos, raw, port, login,
  tls)``, raw = the exact bytes sent) describe what the code under test sent.
- Debugging: ``mail.dovecot.log_tail()`` (Dovecot's log), ``mail.dovecot.root`` (its
  temp dir under /tmp). ``mail.dovecot.log_file`` logs every delivery with its
  Message-ID and Subject, as a mail server's log would: tests check what it holds. Needs root (Dovecot runs mail processes as the system user
  ``inboxd-vmail``, created when missing).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Importable as ``servers`` whether or not tests/ becomes a package one day.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import MailServer  # noqa: E402
from world import World  # noqa: E402


@pytest.fixture(scope="session")
def mailserver() -> Iterator[MailServer]:
    server = MailServer.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def mail(mailserver: MailServer) -> MailServer:
    mailserver.reset()
    return mailserver


@pytest.fixture
def world(mail: MailServer, tmp_path: Path) -> World:
    """A configured inboxd against the reset servers (see ``world.World``); files
    that need another set-up define their own ``world``."""
    return World(mail, tmp_path / "w").setup()
