"""A Microsoft 365 app's client credentials, shared by the backends that log in with
one (Graph, EWS oauth2, IMAP and SMTP XOAUTH2): where its keys come from, its token
provider, and what ``inboxd check`` says when the directory refuses it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from inboxd.backends.settings import (
    EwsMailboxConfig,
    ImapMailboxConfig,
    MicrosoftApp,
    SmtpTransportConfig,
)
from inboxd.config import Config, ConfigError, read_secret
from inboxd.msclouds import outlook_scope
from inboxd.tokens import TokenError, TokenSource

README = 'see the README, "Connect to Exchange / Microsoft 365"'
_HTTP_STATUS = re.compile(r"HTTP (\d{3})")


@dataclass(frozen=True)
class AppSource:
    section: str  # "mailbox" or "smtp": where the app's keys are written
    app: MicrosoftApp
    ca_file: str  # that section's trust setting verifies the authority too
    host: str  # the server an Outlook token is for ("" for Graph)


def app_source(cfg: Config, section: str) -> AppSource:
    """Where a section's app credentials come from: ``[smtp]`` without an app of its
    own uses the ``[mailbox]`` app (the same registration usually holds
    IMAP.AccessAsApp and SMTP.SendAsApp)."""
    smtp, mb = cfg.smtp, cfg.mailbox
    if (
        section == "smtp"
        and isinstance(smtp, SmtpTransportConfig)
        and (smtp.names_app or not isinstance(mb, MicrosoftApp))
    ):
        return AppSource("smtp", smtp, smtp.ca_file, smtp.host)
    assert isinstance(mb, MicrosoftApp), "the configuration check requires an app here"
    host = ""
    if isinstance(mb, ImapMailboxConfig):
        host = mb.host
    elif isinstance(mb, EwsMailboxConfig):
        host = mb.service_endpoint
    return AppSource("mailbox", mb, mb.ca_file, host)


def token_provider(cfg: Config, section: str, scope: str | None = None) -> TokenSource:
    """MSAL client credentials for Microsoft 365 (Graph, EWS OAuth2, IMAP/SMTP XOAUTH2).

    ``scope`` is ``graph_scope(endpoint)`` for Graph; for EWS, IMAP and SMTP (the
    default) the Outlook resource of the server's cloud (:mod:`inboxd.msclouds`). The
    ``ca_file`` of the section the app comes from also verifies the authority (one
    trust setting per section: a TLS-inspecting proxy sits in front of both, and so
    do the tests' fakes).
    """
    source = app_source(cfg, section)
    name, s = source.section, source.app
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
    try:
        # MSAL (and requests) load here, for a configuration that uses an app: an
        # IMAP or SMTP login with a password never pays their ~0.2 s of imports.
        from inboxd import msauth

        return msauth.TokenProvider(
            s.tenant_id,
            s.client_id,
            scope=scope or outlook_scope(source.host, s.authority),
            client_secret=secret,
            client_certificate_pem=certificate,
            authority=s.authority,
            ca_file=source.ca_file or None,
        )
    except ValueError as exc:
        # Our own words about the settings (never a secret): a configuration error.
        raise ConfigError(cfg.source_path, name, str(exc)) from None


def http_status(reason: str) -> int | None:
    m = _HTTP_STATUS.search(reason)
    return int(m.group(1)) if m else None


def explain_token(cfg: Config, section: str, exc: TokenError) -> str:
    source = app_source(cfg, section)
    name, s = source.section, source.app
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
