"""The ``maildir`` mailbox and transport (the demo's and the tests' local world):
their construction and what a failure means."""

from __future__ import annotations

from inboxd.backends.settings import MaildirMailboxConfig, MaildirTransportConfig
from inboxd.mailbox.base import Mailbox
from inboxd.mailbox.maildir import MaildirMailbox
from inboxd.transport.base import Transport
from inboxd.transport.maildir import MaildirTransport


def mailbox(mb: MaildirMailboxConfig) -> Mailbox:
    return MaildirMailbox(mb.path, poll_interval=min(mb.poll_interval, 1.0))


def transport(s: MaildirTransportConfig) -> Transport:
    return MaildirTransport(s.path)


def explain_mailbox(reason: str) -> str:
    return (
        f"mailbox (maildir): {reason}; check [mailbox] path: it must name an existing"
        " Maildir folder (with new/, cur/ and tmp/) this user may write"
    )
