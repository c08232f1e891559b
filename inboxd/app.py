"""Assembly: configuration in, the running parts out (the only place that knows
which backend class goes with which setting)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from inboxd.config import Config, ConfigError, MailboxConfig, SmtpConfig, read_secret
from inboxd.crypto import Keyring
from inboxd.intake import Intake, Mailer
from inboxd.logs import get_logger
from inboxd.mailbox.base import Mailbox
from inboxd.msauth import TokenError, TokenSource
from inboxd.outbox import Outbox
from inboxd.sent_copies import keep_sent_copies, purge_sent_copies
from inboxd.store import SqliteStore, Store
from inboxd.templates import Templates
from inboxd.throttle import Throttle
from inboxd.transport.base import Transport
from inboxd.triage import Triage

log = get_logger(__name__)

T = TypeVar("T")

# Incremental-sync state of the Microsoft backends, under state_dir (no mail content:
# an opaque server token and the mailbox it belongs to).
EWS_SYNC_STATE = "ews-sync-state"
GRAPH_DELTA_STATE = "graph-delta-state"


def _app_section(cfg: Config, section: str) -> tuple[str, MailboxConfig | SmtpConfig]:
    """Where a section's app credentials come from: ``[smtp]`` without an app of its
    own uses the ``[mailbox]`` app (the same registration usually holds
    IMAP.AccessAsApp and SMTP.SendAsApp)."""
    if section == "smtp" and not cfg.smtp.names_app:
        return "mailbox", cfg.mailbox
    s: MailboxConfig | SmtpConfig = cfg.mailbox if section == "mailbox" else cfg.smtp
    return section, s


def _outlook_scope(cfg: Config, section: str, authority: str) -> str:
    """EWS, IMAP and SMTP tokens are for the Exchange Online of the server's cloud."""
    from inboxd.msclouds import outlook_scope

    mb = cfg.mailbox
    if section == "smtp":
        host = cfg.smtp.host
    else:
        host = mb.service_endpoint if mb.backend == "ews" else mb.host
    return outlook_scope(host, authority)


def _token_provider(cfg: Config, section: str, scope: str | None = None) -> TokenSource:
    """MSAL client credentials for Microsoft 365 (Graph, EWS OAuth2, IMAP/SMTP XOAUTH2).

    ``scope`` is ``graph_scope(endpoint)`` for Graph; for EWS, IMAP and SMTP (the
    default) the Outlook resource of the server's cloud (:mod:`inboxd.msclouds`). The ``ca_file`` of the section the app comes
    from also verifies the authority (one trust setting per section: a TLS-inspecting
    proxy sits in front of both, and so do the tests' fakes).
    """
    from inboxd import msauth

    name, s = _app_section(cfg, section)
    secret = None
    if s.client_secret_file or s.client_secret_env:
        secret = read_secret(
            cfg, s.client_secret_file, s.client_secret_env, f"{name}.client_secret_file"
        )
    certificate = None
    if s.client_certificate_file:
        certificate = read_secret(
            cfg, s.client_certificate_file, "", f"{name}.client_certificate_file"
        )
    ca_file = cfg.mailbox.ca_file if name == "mailbox" else cfg.smtp.ca_file
    try:
        return msauth.TokenProvider(
            s.tenant_id,
            s.client_id,
            scope=scope or _outlook_scope(cfg, name, s.authority),
            client_secret=secret,
            client_certificate_pem=certificate,
            authority=s.authority,
            ca_file=ca_file or None,
        )
    except ValueError as exc:
        # Our own words about the settings (never a secret): a configuration error.
        raise ConfigError(cfg.source_path, name, str(exc)) from None


def _mailbox_password(cfg: Config) -> str | None:
    mb = cfg.mailbox
    if mb.password_file or mb.password_env:
        return read_secret(cfg, mb.password_file, mb.password_env, "mailbox.password_file")
    return None


def _constructed(cfg: Config, section: str, make: Callable[[], T]) -> T:
    """Backend constructors check their settings with ValueError (https only, a CA
    file that exists, …): that is a configuration error, exit 2, not a crash."""
    try:
        return make()
    except ValueError as exc:
        raise ConfigError(cfg.source_path, section, str(exc)) from None


def make_mailbox(cfg: Config) -> Mailbox:
    mb = cfg.mailbox
    if mb.backend == "maildir":
        from inboxd.mailbox.maildir import MaildirMailbox

        return MaildirMailbox(mb.path, poll_interval=min(mb.poll_interval, 1.0))
    if mb.backend == "imap":
        from inboxd.mailbox.imap import ImapMailbox

        password = (
            read_secret(cfg, mb.password_file, mb.password_env, "mailbox.password_file")
            if mb.auth == "password"
            else None
        )
        token = _token_provider(cfg, "mailbox") if mb.auth == "xoauth2" else None
        return _constructed(
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
    if mb.backend == "ews":
        from inboxd.mailbox.ews import EwsMailbox

        oauth = mb.auth_type == "oauth2"
        password = None if oauth else _mailbox_password(cfg)
        token = _token_provider(cfg, "mailbox") if oauth else None
        return _constructed(
            cfg,
            "mailbox",
            lambda: EwsMailbox(
                mb.service_endpoint,
                mb.username,
                password=password,
                auth_type=mb.auth_type,
                token=token,
                folder="inbox",
                primary_smtp_address=mb.mailbox or None,
                ca_file=mb.ca_file or None,
                poll_interval=mb.poll_interval,
                sync_state_path=str(Path(cfg.state_dir) / EWS_SYNC_STATE),
            ),
        )
    from inboxd.mailbox.graph import GraphMailbox
    from inboxd.msauth import graph_scope

    token = _token_provider(cfg, "mailbox", scope=graph_scope(mb.endpoint))
    return _constructed(
        cfg,
        "mailbox",
        lambda: GraphMailbox(
            mb.tenant_id,
            mb.client_id,
            mb.mailbox,
            token,
            endpoint=mb.endpoint,
            # "INBOX" is the IMAP default of the setting; Graph's well-known name is "inbox".
            folder="inbox" if mb.folder.upper() == "INBOX" else mb.folder,
            delta_state_path=str(Path(cfg.state_dir) / GRAPH_DELTA_STATE),
            ca_file=mb.ca_file or None,
            poll_interval=mb.poll_interval,
        ),
    )


def make_transport(cfg: Config, mailbox: Mailbox | None = None) -> Transport:
    """The outgoing-mail transport. ``ews`` and ``graph`` send as the ``[mailbox]``
    account with its settings; each keeps a connection of its own and shares
    ``mailbox``'s throttle (a server's back-off)."""
    s = cfg.smtp
    if s.transport == "maildir":
        from inboxd.transport.maildir import MaildirTransport

        return MaildirTransport(s.path)
    if s.transport == "smtp":
        from inboxd.transport.smtp import SmtpTransport

        password = None
        if s.username and s.auth == "password":
            password = read_secret(cfg, s.password_file, s.password_env, "smtp.password_file")
        token = _token_provider(cfg, "smtp") if s.auth == "xoauth2" else None
        return _constructed(
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
    mb = cfg.mailbox
    # One account on one service: a back-off the server gave the mailbox holds for
    # the transport too (and the other way round).
    throttle = getattr(mailbox, "throttle", None) if mailbox is not None else None
    if not isinstance(throttle, Throttle):
        throttle = None
    if s.transport == "ews":
        from inboxd.transport.ews import EwsTransport

        oauth = mb.auth_type == "oauth2"
        password = None if oauth else _mailbox_password(cfg)
        ews_token = _token_provider(cfg, "mailbox") if oauth else None
        return _constructed(
            cfg,
            "mailbox",
            lambda: EwsTransport(
                mb.service_endpoint,
                mb.username,
                password=password,
                auth_type=mb.auth_type,
                token=ews_token,
                primary_smtp_address=mb.mailbox or None,
                ca_file=mb.ca_file or None,
                throttle=throttle,
            ),
        )
    from inboxd.msauth import graph_scope
    from inboxd.transport.graph import GraphTransport

    graph_token = _token_provider(cfg, "mailbox", scope=graph_scope(mb.endpoint))
    return _constructed(
        cfg,
        "mailbox",
        lambda: GraphTransport(
            mb.mailbox,
            graph_token,
            endpoint=mb.endpoint,
            ca_file=mb.ca_file or None,
            throttle=throttle,
        ),
    )


@dataclass
class App:
    cfg: Config
    keyring: Keyring
    store: Store
    mailbox: Mailbox
    transport: Transport
    intake: Intake
    outbox: Outbox
    clock: Callable[[], float]
    lock: threading.RLock = field(default_factory=threading.RLock)

    def close(self) -> None:
        # Graph: one more try at the Sent Items copies still awaited, so that the
        # end of ``inboxd once`` and a stopping daemon leave none behind.
        if self.transport.pending_copies():
            purge_sent_copies(self.transport, self.lock)
        self.mailbox.close()
        self.transport.close()
        self.store.close()


def build(
    cfg: Config,
    *,
    clock: Callable[[], float] = time.time,
    mailbox: Mailbox | None = None,
    transport: Transport | None = None,
    store: Store | None = None,
    keyring: Keyring | None = None,
) -> App:
    """Everything ``cfg`` names, wired. A test passes the parts it brings itself:
    mail servers, a store (then also the keyring it was opened with), a keyring."""
    if keyring is None:
        keyring = Keyring.from_files(cfg.crypto.key_files)
    if store is None:
        store = SqliteStore(cfg.state_dir, keyring, clock=clock)
    mb = mailbox or make_mailbox(cfg)
    tr = transport or make_transport(cfg, mb)
    templates = Templates(cfg.language, cfg.templates_dir)
    mailer = Mailer(cfg, templates, clock, keyring)
    triage = Triage(cfg=cfg, store=store, keyring=keyring, mailer=mailer, clock=clock)
    intake = Intake(
        cfg=cfg,
        store=store,
        keyring=keyring,
        mailbox=mb,
        mailer=mailer,
        clock=clock,
        replies=triage,
    )
    outbox = Outbox(store, tr, clock, cfg.triage.forward_retry_for, triage, templates=templates)
    keep_sent_copies(tr, store)
    return App(
        cfg=cfg,
        keyring=keyring,
        store=store,
        mailbox=mb,
        transport=tr,
        intake=intake,
        outbox=outbox,
        clock=clock,
    )


# --- inboxd check: which permission or credential is missing --------------------------

_HTTP_STATUS = re.compile(r"HTTP (\d{3})")
_SMTP_CODE = re.compile(r"refused (\d{3}(?: \d\.\d{1,3}\.\d{1,3})?)")
_README = 'see the README, "Connect to Exchange / Microsoft 365"'


def token_sources(cfg: Config) -> list[tuple[str, TokenSource]]:
    """The app tokens the configuration needs, as ``(section, provider)``: ``inboxd
    check`` asks for each first, so that a refused credential is named as such."""
    from inboxd.msauth import graph_scope

    mb, out = cfg.mailbox, []
    if mb.backend == "graph":
        out.append(("mailbox", _token_provider(cfg, "mailbox", scope=graph_scope(mb.endpoint))))
    elif (mb.backend == "ews" and mb.auth_type == "oauth2") or (
        mb.backend == "imap" and mb.auth == "xoauth2"
    ):
        out.append(("mailbox", _token_provider(cfg, "mailbox")))
    if cfg.smtp.transport == "smtp" and cfg.smtp.auth == "xoauth2":
        out.append(("smtp", _token_provider(cfg, "smtp")))
    return out


def explain_failure(cfg: Config, step: str, exc: Exception) -> str:
    """One line for ``inboxd check``: what failed and the likely missing permission
    or credential. ``step`` is ``token:<section>``, ``mailbox`` or ``transport``.
    Built from our own short reasons (status codes, error names), never mail content.
    """
    from inboxd.mailbox.base import MailboxError
    from inboxd.transport.base import SendError

    if isinstance(exc, TokenError):
        return _explain_token(cfg, step.removeprefix("token:"), exc)
    if isinstance(exc, MailboxError):
        return _explain_mailbox(cfg, exc.reason, exc.auth)
    if isinstance(exc, SendError):
        return _explain_transport(cfg, exc.reason)
    return f"{step}: {type(exc).__name__}"


def _explain_token(cfg: Config, section: str, exc: TokenError) -> str:
    name, s = _app_section(cfg, section)
    code = exc.code or ""
    cred = (
        f"{name}.client_certificate_file"
        if s.client_certificate_file
        else (f"{name}.client_secret_env" if s.client_secret_env else f"{name}.client_secret_file")
    )
    if not exc.permanent:
        return (
            f"no token from {s.authority} ({exc.reason}): check the network path to the "
            f"authority (proxy, firewall, {name}.ca_file) and try again"
        )
    known = {
        "AADSTS7000215": f"invalid client secret; put the secret's Value (not its Secret ID) in {cred}, or add a new secret under Certificates & secrets of app {s.client_id}",
        "AADSTS7000222": f"the client secret has expired; add a new one under Certificates & secrets of app {s.client_id} and put its Value in {cred}",
        "AADSTS700016": f"no application {s.client_id} in tenant {s.tenant_id}; check {name}.client_id and {name}.tenant_id (the app must be registered in this tenant)",
        "AADSTS90002": f"no tenant {s.tenant_id}; check {name}.tenant_id and {name}.authority",
        "AADSTS700027": f"the certificate in {cred} is not one uploaded to app {s.client_id} (Certificates & secrets)",
        "AADSTS700024": "the client assertion is not valid now; check the clock of this machine (NTP)",
        "AADSTS7000112": f"app {s.client_id} is disabled in the tenant; enable its enterprise application",
        "AADSTS500011": f"the resource is not in tenant {s.tenant_id}; check {name}.endpoint and {name}.authority (same cloud)",
        "AADSTS1002012": f"the scope was refused; check {name}.endpoint",
        "AADSTS70011": f"the scope was refused; check {name}.endpoint",
    }
    if code in known:
        return f"{code}: {known[code]}"
    return (
        f"{exc.reason}: the directory refused app {s.client_id}; check {name}.tenant_id, "
        f"{name}.client_id and {cred}"
    )


def _explain_mailbox(cfg: Config, reason: str, auth: bool) -> str:
    mb = cfg.mailbox
    if mb.backend == "maildir":
        return (
            f"mailbox (maildir): {reason}; check [mailbox] path: it must name an existing"
            " Maildir folder (with new/, cur/ and tmp/) this user may write"
        )
    if not auth:
        return (
            f"mailbox ({mb.backend}): {reason}; check the host and port, the network, and ca_file"
        )
    if mb.backend == "graph":
        where = f"/users/{mb.mailbox}/mailFolders/{'inbox' if mb.folder.upper() == 'INBOX' else mb.folder}"
        status = _status(reason)
        if status == 403:
            return (
                f"Graph answered 403 for {where}: grant Mail.ReadWrite to the app via RBAC for "
                f"Applications scoped to this mailbox (New-ManagementRoleAssignment -App "
                f'{mb.client_id} -Role "Application Mail.ReadWrite" -CustomResourceScope …); {_README}'
            )
        if status == 401:
            return (
                f"Graph answered 401 for {where}: the token was refused; check that mailbox.endpoint "
                f"and mailbox.authority are of the same cloud and that the app's service principal "
                f"is registered in Exchange (New-ServicePrincipal); {_README}"
            )
        if status in (400, 404):
            return (
                f"Graph answered {status} for {where}: no such mailbox or folder; set mailbox.mailbox "
                "to the Exchange Online mailbox's address (or user id) and mailbox.folder to inbox"
            )
        return f"Graph refused {where} ({reason}); {_README}"
    if mb.backend == "ews":
        address = mb.mailbox or mb.username
        oauth = mb.auth_type == "oauth2"
        rbac = (
            f"grant the app the role Application EWS.AccessAsApp via RBAC for Applications "
            f"scoped to this mailbox (and allow-list it for EWS: Exchange Online blocks EWS from "
            f"2026-10-01 and ends it on 2027-04-01); {_README}"
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
            return f"Exchange knows no mailbox {address}: set mailbox.mailbox to its primary SMTP address"
        if oauth:
            return (
                f"Exchange refused the app access to {address} ({reason.split(': ')[-1]}): {rbac}"
            )
        return (
            f"Exchange refused {mb.username} access to {address} ({reason.split(': ')[-1]}): "
            f"Add-MailboxPermission -Identity {address} -User {mb.username} -AccessRights FullAccess, "
            f"and check that EWS is on for it (Get-CASMailbox {address} | fl EWSEnabled)"
        )
    if mb.backend == "imap" and mb.auth == "xoauth2":
        return (
            f"IMAP refused the XOAUTH2 login of {mb.username} ({reason}): grant the app "
            "IMAP.AccessAsApp (admin consent), register it with New-ServicePrincipal and give "
            f"it Add-MailboxPermission -Identity {mb.username} -User <service principal id> "
            f"-AccessRights FullAccess; {_README}"
        )
    return f"mailbox ({mb.backend}) refused the login of {mb.username} ({reason}): check mailbox.username and mailbox.password_file"


def _explain_transport(cfg: Config, reason: str) -> str:
    s, mb = cfg.smtp, cfg.mailbox
    if s.transport == "graph":
        status = _status(reason)
        where = f"/users/{mb.mailbox}/mailFolders/sentitems"
        if status in (401, 403):
            return (
                f"Graph answered {status} for {where}: grant the app Application Mail.Send (to send) "
                "and Application Mail.ReadWrite (to delete the Sent Items copy) via RBAC for "
                f"Applications scoped to this mailbox; {_README}"
            )
        return f"outgoing mail (graph): {reason}"
    if s.transport == "ews":
        if "UnauthorizedError" in reason or "Denied" in reason:
            return _explain_mailbox(cfg, reason, True)
        return f"outgoing mail (ews): {reason}"
    if s.transport == "smtp" and "login refused" in reason:
        m = _SMTP_CODE.search(reason)
        code = f" ({m.group(1)})" if m else ""
        if s.auth == "xoauth2":
            return (
                f"SMTP refused the XOAUTH2 login of {s.username}{code}: grant the app SMTP.SendAsApp "
                "(admin consent), register it with New-ServicePrincipal, give it "
                f"Add-MailboxPermission -Identity {s.username} -User <service principal id> "
                f"-AccessRights FullAccess, and allow SMTP AUTH for the mailbox (Set-CASMailbox "
                f"{s.username} -SmtpClientAuthenticationDisabled $false); {_README}"
            )
        return (
            f"SMTP refused the login of {s.username}{code}: check smtp.username and "
            'smtp.password_file; Exchange Online turns basic SMTP AUTH off: use auth = "xoauth2"'
        )
    return f"outgoing mail ({s.transport}): {reason}"


def _status(reason: str) -> int | None:
    m = _HTTP_STATUS.search(reason)
    return int(m.group(1)) if m else None
