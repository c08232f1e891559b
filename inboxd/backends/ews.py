"""The ``ews`` backend (Exchange Server through EWS): the mailbox and the transport
from ``[mailbox]`` (both log in as that account), the app token oauth2 needs, and
what Exchange's refusals mean."""

from __future__ import annotations

from pathlib import Path

from inboxd.backends.microsoft import README, token_provider
from inboxd.backends.settings import EwsMailboxConfig
from inboxd.config import Config, constructed, read_secret
from inboxd.ews_account import EwsAccount
from inboxd.mailbox.base import Mailbox
from inboxd.mailbox.ews import EwsMailbox
from inboxd.throttle import Throttle
from inboxd.tokens import TokenSource
from inboxd.transport.base import Transport
from inboxd.transport.ews import EwsTransport

# Incremental-sync state under state_dir (no mail content: an opaque server token and
# the mailbox it belongs to).
SYNC_STATE = "ews-sync-state"


def tokens(cfg: Config, mb: EwsMailboxConfig) -> list[tuple[str, TokenSource]]:
    return [("mailbox", token_provider(cfg, "mailbox"))] if mb.auth_type == "oauth2" else []


def _account(cfg: Config, mb: EwsMailboxConfig, throttle: Throttle) -> EwsAccount:
    """What the mailbox and the transport log in with, alike: a password (ntlm,
    basic) or the app's token (oauth2), and the one throttle of the account."""
    password, token = None, None
    if mb.auth_type == "oauth2":
        token = token_provider(cfg, "mailbox")
    elif mb.password_file or mb.password_env:
        password = read_secret(cfg, mb.password_file, mb.password_env, "mailbox.password_file")
    return EwsAccount(
        password=password,
        auth_type=mb.auth_type,
        token=token,
        primary_smtp_address=mb.mailbox or None,
        ca_file=mb.ca_file or None,
        throttle=throttle,
    )


def mailbox(cfg: Config, mb: EwsMailboxConfig, throttle: Throttle) -> Mailbox:
    account = _account(cfg, mb, throttle)
    return constructed(
        cfg,
        "mailbox",
        lambda: EwsMailbox(
            mb.service_endpoint,
            mb.username,
            folder="inbox",
            poll_interval=mb.poll_interval,
            sync_state_path=str(Path(cfg.state_dir) / SYNC_STATE),
            **account,
        ),
    )


def transport(cfg: Config, mb: EwsMailboxConfig, throttle: Throttle) -> Transport:
    account = _account(cfg, mb, throttle)
    return constructed(
        cfg, "mailbox", lambda: EwsTransport(mb.service_endpoint, mb.username, **account)
    )


def explain_login(mb: EwsMailboxConfig, reason: str) -> str:
    address = mb.address
    oauth = mb.auth_type == "oauth2"
    rbac = (
        f"grant the app the role Application EWS.AccessAsApp via RBAC for Applications "
        f"scoped to this mailbox (and allow-list it for EWS: Exchange Online blocks EWS from "
        f"2026-10-01 and ends it on 2027-04-01); {README}"
    )
    if "UnauthorizedError" in reason:
        if oauth:
            return f"Exchange answered 401 at {mb.service_endpoint}: the app's token was refused; {rbac}"
        return (
            f"Exchange answered 401 at {mb.service_endpoint}: wrong mailbox.username or password, "
            f"or {mb.auth_type} is not enabled on the EWS virtual directory "
            "(Get-WebServicesVirtualDirectory | fl *Authentication*)"
        )
    if "ErrorNonExistentMailbox" in reason:
        return (
            f"Exchange knows no mailbox {address}: set mailbox.mailbox to its primary SMTP address"
        )
    if oauth:
        return f"Exchange refused the app access to {address} ({reason.split(': ')[-1]}): {rbac}"
    return (
        f"Exchange refused {mb.username} access to {address} ({reason.split(': ')[-1]}): "
        f"Add-MailboxPermission -Identity {address} -User {mb.username} -AccessRights FullAccess, "
        f"and check that EWS is on for it (Get-CASMailbox {address} | fl EWSEnabled)"
    )


def explain_transport(mb: EwsMailboxConfig, reason: str) -> str:
    if "UnauthorizedError" in reason or "Denied" in reason:
        return explain_login(mb, reason)
    return f"outgoing mail (ews): {reason}"
