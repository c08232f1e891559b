"""Assembly: configuration in, the running parts out (the only place that knows
which backend class goes with which setting)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from inboxd.config import Config, read_secret
from inboxd.crypto import Keyring
from inboxd.intake import Intake, Mailer
from inboxd.mailbox.base import Mailbox
from inboxd.msauth import TokenSource
from inboxd.outbox import Outbox
from inboxd.store import SqliteStore, Store
from inboxd.templates import Templates
from inboxd.transport.base import Transport


def _token_provider(cfg: Config, section: str, scope: str | None = None) -> TokenSource:
    """MSAL client credentials for Microsoft 365 (Graph, EWS OAuth2, IMAP/SMTP XOAUTH2)."""
    from inboxd import msauth

    s = getattr(cfg, section)
    secret = None
    if s.client_secret_file or s.client_secret_env:
        secret = read_secret(
            cfg, s.client_secret_file, s.client_secret_env, f"{section}.client_secret_file"
        )
    certificate = None
    if getattr(s, "client_certificate_file", ""):
        certificate = read_secret(
            cfg, s.client_certificate_file, "", f"{section}.client_certificate_file"
        )
    return msauth.TokenProvider(
        s.tenant_id,
        s.client_id,
        scope=scope or msauth.OUTLOOK_SCOPE,
        client_secret=secret,
        client_certificate_pem=certificate,
        authority=s.authority,
    )


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
        return ImapMailbox(
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
        )
    if mb.backend == "ews":
        from inboxd.mailbox.ews import EwsMailbox

        password = (
            read_secret(cfg, mb.password_file, mb.password_env, "mailbox.password_file")
            if (mb.password_file or mb.password_env)
            else None
        )
        return EwsMailbox(  # type: ignore[no-any-return]
            mb.service_endpoint,
            mb.username,
            password=password,
            auth_type=mb.auth_type,
            token=_token_provider(cfg, "mailbox") if mb.auth_type == "oauth2" else None,
            folder=mb.folder if mb.folder != "INBOX" else "inbox",
            ca_file=mb.ca_file or None,
            poll_interval=mb.poll_interval,
            sync_state_path=f"{cfg.state_dir}/ews-sync-state",
        )
    from inboxd.mailbox.graph import GraphMailbox

    return GraphMailbox(  # type: ignore[no-any-return]
        mb.tenant_id,
        mb.client_id,
        mb.mailbox,
        _token_provider(cfg, "mailbox", scope=mb.endpoint.rstrip("/") + "/.default"),
        endpoint=mb.endpoint,
        folder=mb.folder if mb.folder != "INBOX" else "inbox",
        delta_state_path=f"{cfg.state_dir}/graph-delta-state",
    )


def make_transport(cfg: Config, mailbox: Mailbox | None = None) -> Transport:
    s = cfg.smtp
    if s.transport == "maildir":
        from inboxd.transport.maildir import MaildirTransport

        return MaildirTransport(s.path)
    if s.transport == "smtp":
        from inboxd.transport.smtp import SmtpTransport

        password = None
        if s.username and s.auth == "password":
            password = read_secret(cfg, s.password_file, s.password_env, "smtp.password_file")
        return SmtpTransport(
            s.host,
            s.effective_port,
            s.security,
            s.username or None,
            password,
            oauth2_token=_token_provider(cfg, "smtp") if s.auth == "xoauth2" else None,
            ca_file=s.ca_file or None,
        )
    if s.transport == "ews":
        from inboxd.transport.ews import EwsTransport

        return EwsTransport.from_mailbox(mailbox)  # type: ignore[attr-defined,no-any-return]
    from inboxd.transport.graph import GraphTransport

    return GraphTransport.from_mailbox(mailbox)  # type: ignore[attr-defined,no-any-return]


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
        self.mailbox.close()
        self.transport.close()
        self.store.close()


def build(
    cfg: Config,
    *,
    clock: Callable[[], float] = time.time,
    mailbox: Mailbox | None = None,
    transport: Transport | None = None,
) -> App:
    keyring = Keyring.from_files(cfg.crypto.key_files)
    store = SqliteStore(cfg.state_dir, keyring, clock=clock)
    mb = mailbox or make_mailbox(cfg)
    tr = transport or make_transport(cfg, mb)
    templates = Templates(cfg.language, cfg.templates_dir)
    mailer = Mailer(cfg, templates, clock)
    intake = Intake(cfg=cfg, store=store, keyring=keyring, mailbox=mb, mailer=mailer, clock=clock)
    outbox = Outbox(store, tr, clock, cfg.triage.forward_retry_for)
    app = App(
        cfg=cfg,
        keyring=keyring,
        store=store,
        mailbox=mb,
        transport=tr,
        intake=intake,
        outbox=outbox,
        clock=clock,
    )
    try:
        from inboxd.triage import Triage

        triage = Triage(app)
        intake.replies = triage
        outbox.on_given_up = triage.mail_given_up
    except ImportError:
        pass
    return app
