"""From configuration to the running backends: which backend module builds the
``[mailbox]`` and the ``[smtp]`` side, which app tokens the configuration needs, and
which module explains a failure of ``inboxd check``. Each backend's own knowledge is
in its module (:mod:`inboxd.backends.imap`, ``smtp``, ``ews``, ``graph``,
``maildir``); this one only chooses, and imports a backend's module (and with it
its libraries: exchangelib, MSAL) only when the configuration names it."""

from __future__ import annotations

from inboxd.backends.microsoft import explain_token
from inboxd.backends.settings import (
    EwsMailboxConfig,
    GraphMailboxConfig,
    ImapMailboxConfig,
    MaildirTransportConfig,
    SmtpTransportConfig,
)
from inboxd.config import Config
from inboxd.mailbox.base import Mailbox, MailboxError
from inboxd.throttle import Throttle
from inboxd.tokens import TokenError, TokenSource
from inboxd.transport.base import SendError, SentCopies, Transport


class Backends:
    """The configured mailbox and transport, each built when first asked for.

    ``ews`` and ``graph`` send as the ``[mailbox]`` account with its settings; each
    side keeps a connection of its own, and both get the one :class:`Throttle` made
    here: a back-off the server gave the mailbox holds for the transport too (and
    the other way round).
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.throttle = Throttle()

    def mailbox(self) -> Mailbox:
        cfg, mb = self.cfg, self.cfg.mailbox
        if isinstance(mb, ImapMailboxConfig):
            from inboxd.backends import imap

            return imap.mailbox(cfg, mb)
        if isinstance(mb, EwsMailboxConfig):
            from inboxd.backends import ews

            return ews.mailbox(cfg, mb, self.throttle)
        if isinstance(mb, GraphMailboxConfig):
            from inboxd.backends import graph

            return graph.mailbox(cfg, mb, self.throttle)
        from inboxd.backends import maildir

        return maildir.mailbox(mb)

    def transport(self, copies: SentCopies | None = None) -> Transport:
        """``copies``: where a transport that files copies of sent mail (Graph) keeps
        those still to be deleted; none for ``inboxd check``, which sends nothing."""
        cfg, s, mb = self.cfg, self.cfg.smtp, self.cfg.mailbox
        if isinstance(s, SmtpTransportConfig):
            from inboxd.backends import smtp

            return smtp.transport(cfg, s)
        if isinstance(s, MaildirTransportConfig):
            from inboxd.backends import maildir

            return maildir.transport(s)
        # The configuration check holds "ews" and "graph" to the mailbox of the same name.
        if isinstance(mb, EwsMailboxConfig):
            from inboxd.backends import ews

            return ews.transport(cfg, mb, self.throttle)
        from inboxd.backends import graph

        assert isinstance(mb, GraphMailboxConfig), s.transport
        return graph.transport(cfg, mb, self.throttle, copies)


def token_sources(cfg: Config) -> list[tuple[str, TokenSource]]:
    """The app tokens the configuration needs, as ``(section, provider)``: ``inboxd
    check`` asks for each first, so that a refused credential is named as such."""
    mb, s = cfg.mailbox, cfg.smtp
    out: list[tuple[str, TokenSource]] = []
    if isinstance(mb, GraphMailboxConfig):
        from inboxd.backends import graph

        out += graph.tokens(cfg, mb)
    elif isinstance(mb, EwsMailboxConfig):
        from inboxd.backends import ews

        out += ews.tokens(cfg, mb)
    elif isinstance(mb, ImapMailboxConfig):
        from inboxd.backends import imap

        out += imap.tokens(cfg, mb)
    if isinstance(s, SmtpTransportConfig):
        from inboxd.backends import smtp

        out += smtp.tokens(cfg, s)
    return out


def explain_failure(cfg: Config, step: str, exc: Exception) -> str:
    """One line for ``inboxd check``: what failed and the likely missing permission
    or credential. ``step`` is ``token:<section>``, ``mailbox`` or ``transport``.
    Built from our own short reasons (status codes, error names), never mail content.
    """
    if isinstance(exc, TokenError):
        return explain_token(cfg, step.removeprefix("token:"), exc)
    if isinstance(exc, MailboxError):
        return _explain_mailbox(cfg, exc.reason, exc.auth)
    if isinstance(exc, SendError):
        return _explain_transport(cfg, exc.reason)
    return f"{step}: {type(exc).__name__}"


def _explain_mailbox(cfg: Config, reason: str, auth: bool) -> str:
    mb = cfg.mailbox
    if mb.backend == "maildir":
        from inboxd.backends import maildir

        return maildir.explain_mailbox(reason)
    if not auth:
        return (
            f"mailbox ({mb.backend}): {reason}; check the host and port, the network, and ca_file"
        )
    if isinstance(mb, GraphMailboxConfig):
        from inboxd.backends import graph

        return graph.explain_login(mb, reason)
    if isinstance(mb, EwsMailboxConfig):
        from inboxd.backends import ews

        return ews.explain_login(mb, reason)
    from inboxd.backends import imap

    assert isinstance(mb, ImapMailboxConfig), mb.backend
    return imap.explain_login(mb, reason)


def _explain_transport(cfg: Config, reason: str) -> str:
    s, mb = cfg.smtp, cfg.mailbox
    if isinstance(s, SmtpTransportConfig):
        from inboxd.backends import smtp

        return smtp.explain(s, reason)
    if s.transport == "graph" and isinstance(mb, GraphMailboxConfig):
        from inboxd.backends import graph

        return graph.explain_transport(mb, reason)
    if s.transport == "ews" and isinstance(mb, EwsMailboxConfig):
        from inboxd.backends import ews

        return ews.explain_transport(mb, reason)
    return f"outgoing mail ({s.transport}): {reason}"
