"""The ``smtp`` transport: :class:`inboxd.transport.smtp.SmtpTransport` from
``[smtp]``, the app token XOAUTH2 needs (``[smtp]``'s own app, else the
``[mailbox]`` app), and what a refused login means."""

from __future__ import annotations

import re

from inboxd.backends.microsoft import README, token_provider
from inboxd.backends.settings import SmtpTransportConfig
from inboxd.config import Config, constructed, read_secret
from inboxd.tokens import TokenSource
from inboxd.transport.base import Transport
from inboxd.transport.smtp import SmtpTransport

_SMTP_CODE = re.compile(r"refused (\d{3}(?: \d\.\d{1,3}\.\d{1,3})?)")


def tokens(cfg: Config, s: SmtpTransportConfig) -> list[tuple[str, TokenSource]]:
    return [("smtp", token_provider(cfg, "smtp"))] if s.auth == "xoauth2" else []


def transport(cfg: Config, s: SmtpTransportConfig) -> Transport:
    password = None
    if s.username and s.auth == "password":
        password = read_secret(cfg, s.password_file, s.password_env, "smtp.password_file")
    token = token_provider(cfg, "smtp") if s.auth == "xoauth2" else None
    return constructed(
        cfg,
        "smtp",
        lambda: SmtpTransport(
            s.host,
            s.effective_port,
            s.security,
            s.username or None,
            password,
            oauth2_token=token,
            ca_file=s.ca_file or None,
        ),
    )


def explain(s: SmtpTransportConfig, reason: str) -> str:
    if "login refused" not in reason:
        return f"outgoing mail ({s.transport}): {reason}"
    m = _SMTP_CODE.search(reason)
    code = f" ({m.group(1)})" if m else ""
    if s.auth == "xoauth2":
        return (
            f"SMTP refused the XOAUTH2 login of {s.username}{code}: grant the app SMTP.SendAsApp "
            "(admin consent), register it with New-ServicePrincipal, give it "
            f"Add-MailboxPermission -Identity {s.username} -User <service principal id> "
            f"-AccessRights FullAccess, and allow SMTP AUTH for the mailbox (Set-CASMailbox "
            f"{s.username} -SmtpClientAuthenticationDisabled $false); {README}"
        )
    return (
        f"SMTP refused the login of {s.username}{code}: check smtp.username and "
        'smtp.password_file; Exchange Online turns basic SMTP AUTH off: use auth = "xoauth2"'
    )
