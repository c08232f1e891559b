"""The ``imap`` mailbox backend: :class:`inboxd.mailbox.imap.ImapMailbox` from
``[mailbox]``, the app token XOAUTH2 needs, and what a refused login means."""

from __future__ import annotations

from inboxd.backends.microsoft import README, token_provider
from inboxd.backends.settings import ImapMailboxConfig
from inboxd.config import Config, constructed, read_secret
from inboxd.mailbox.base import Mailbox
from inboxd.mailbox.imap import ImapMailbox
from inboxd.tokens import TokenSource


def tokens(cfg: Config, mb: ImapMailboxConfig) -> list[tuple[str, TokenSource]]:
    return [("mailbox", token_provider(cfg, "mailbox"))] if mb.auth == "xoauth2" else []


def mailbox(cfg: Config, mb: ImapMailboxConfig) -> Mailbox:
    password = (
        read_secret(cfg, mb.password_file, mb.password_env, "mailbox.password_file")
        if mb.auth == "password"
        else None
    )
    token = token_provider(cfg, "mailbox") if mb.auth == "xoauth2" else None
    return constructed(
        cfg,
        "mailbox",
        lambda: ImapMailbox(
            mb.host,
            mb.effective_port,
            mb.security,
            mb.username,
            password,
            oauth2_token=token,
            folder=mb.folder,
            ca_file=mb.ca_file or None,
            use_idle=mb.idle,
            poll_interval=mb.poll_interval,
        ),
    )


def explain_login(mb: ImapMailboxConfig, reason: str) -> str:
    if mb.auth == "xoauth2":
        return (
            f"IMAP refused the XOAUTH2 login of {mb.username} ({reason}): grant the app "
            "IMAP.AccessAsApp (admin consent), register it with New-ServicePrincipal and give "
            f"it Add-MailboxPermission -Identity {mb.username} -User <service principal id> "
            f"-AccessRights FullAccess; {README}"
        )
    return f"mailbox ({mb.backend}) refused the login of {mb.username} ({reason}): check mailbox.username and mailbox.password_file"
