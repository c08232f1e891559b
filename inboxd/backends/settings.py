"""The ``[mailbox]`` and ``[smtp]`` sections: one model per backend, holding only the
keys that backend reads, each with the checks of its own settings.

``[mailbox] backend`` and ``[smtp] transport`` choose the model (a tagged union). A
key that belongs to another backend is type-checked as that backend would and then
ignored, as it always was: a file keeps working when its backend is switched, and a
wrong value is still named. A key no backend knows is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from inboxd.config_values import (
    ADDRESS,
    PositiveDuration,
    Problem,
    Section,
    explain_error,
    need,
    need_https,
    need_loopback_for_plain,
    need_secret,
)
from inboxd.msclouds import graph_refusal

Security = Literal["tls", "starttls", "none"]


# --- what several backends have in common --------------------------------------------


class MicrosoftApp(Section):
    """The client credentials of a Microsoft 365 app (Graph, EWS oauth2, IMAP and SMTP
    XOAUTH2)."""

    tenant_id: str = ""
    """The Microsoft Entra directory (tenant) id of the app."""
    client_id: str = ""
    """The application (client) id of the app."""
    client_secret_file: str = ""
    """A file holding the app's client secret (relative: under `$CREDENTIALS_DIRECTORY`). Exactly one of the secret or the certificate."""
    client_secret_env: str = ""
    """Instead of `client_secret_file`: an environment variable holding the client secret."""
    client_certificate_file: str = ""
    """A PEM file with the app's private key and certificate, instead of a client secret."""
    authority: str = "https://login.microsoftonline.com"
    """The Microsoft identity platform to get tokens from (override for national clouds and tests). Must be https."""

    @property
    def names_app(self) -> bool:
        return bool(
            self.tenant_id
            or self.client_id
            or self.client_secret_file
            or self.client_secret_env
            or self.client_certificate_file
        )

    def check_app(self, section: str, what: str) -> None:
        """Tenant, client and exactly one credential, from an https authority."""
        need(self.tenant_id, f"{section}.tenant_id", f"the directory (tenant) id for {what}")
        need(self.client_id, f"{section}.client_id", f"the application (client) id for {what}")
        has_secret = bool(self.client_secret_file or self.client_secret_env)
        if has_secret == bool(self.client_certificate_file):
            raise Problem(
                f"{section}.client_secret_file",
                "set exactly one credential: client_secret_file, client_secret_env or client_certificate_file",
            )
        need_https(self.authority, f"{section}.authority", loopback_http=False)


class Password(Section):
    username: str = ""
    """The account to log in as. For `[smtp]`, empty means no SMTP AUTH (a relay that trusts this host)."""
    password_file: str = ""
    """A file holding the password; a relative path is read from `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), else next to the configuration."""
    password_env: str = ""
    """Instead of `password_file`: the name of an environment variable holding the password."""


class ServerTrust(Section):
    ca_file: str = ""
    """An extra CA bundle (PEM) for a server with an internal certificate authority; it also verifies the app's token requests. Relative to the configuration file."""


class MailServer(Password, MicrosoftApp, ServerTrust):
    """What an IMAP server and an SMTP relay are reached with."""

    _PORTS: ClassVar[dict[str, int]]
    host: str = ""
    """The server's host name."""
    port: int | None = Field(None, ge=1, le=65535)
    """The port; empty means the usual one for `security` (IMAP: 993 for `tls`, 143 otherwise; SMTP: 465 for `tls`, 587 for `starttls`, 25 for `none`)."""
    security: Security = "tls"
    """`tls` (implicit TLS), `starttls`, or `none` (allowed for loopback hosts only; never tries STARTTLS)."""
    auth: Literal["password", "xoauth2"] = "password"
    """`password`, or `xoauth2` for Microsoft 365 (an app's client credentials, see `tenant_id`; `[smtp]` without an app of its own uses the `[mailbox]` app)."""

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else self._PORTS[self.security]

    @property
    def server(self) -> str:
        return self.host

    @property
    def protection(self) -> str:
        return self.security


class LocalFolder(Section):
    """A Maildir on this machine: the demo's and the tests' world."""

    path: str = ""
    """The Maildir folder: where signals are delivered (`[mailbox]`) or outgoing mail is dropped (`[smtp]`, demo only). Relative to the configuration file."""

    @property
    def server(self) -> str:
        return self.path

    @property
    def protection(self) -> str:
        return "local"


# --- [mailbox] ---------------------------------------------------------------------------


class MailboxBase(Section):
    backend: str
    """Where signals arrive: `imap`, `ews` (Exchange Server), `graph` (Microsoft 365) or `maildir` (a local folder, for the demo and tests)."""
    poll_interval: PositiveDuration = 60.0
    """How often to look for new mail where IDLE or notifications are not available (also the Graph delta interval)."""
    retain_in_mailbox: Literal["queued", "forwarded"] = "queued"
    """`queued`: the original is hard-deleted from the mailbox as soon as it is encrypted and committed; `forwarded`: it stays until the signal is deleted."""

    # Each backend also says, for the privacy register, where the mail is (``server``),
    # how it travels there (``protection``: the security setting, ``https`` or
    # ``local``) and whether a Microsoft 365 app reads it (``microsoft_app``).


class ImapMailboxConfig(MailboxBase, MailServer):
    """An IMAP server (Dovecot, Exchange, Microsoft 365 with `auth = "xoauth2"`)."""

    _PORTS: ClassVar[dict[str, int]] = {"tls": 993, "starttls": 143, "none": 143}
    backend: Literal["imap"] = "imap"
    """`imap`."""
    folder: str = "INBOX"
    """The folder signals are read from."""
    idle: bool = True
    """Use IMAP IDLE (new mail noticed within about a second) where the server offers it."""

    @property
    def microsoft_app(self) -> bool:
        return self.auth == "xoauth2"

    def check(self) -> None:
        need(self.host, "mailbox.host", "the IMAP server's host name")
        need(self.username, "mailbox.username", "the mailbox account to log in as")
        if self.auth == "password":
            need_secret(self.password_file, self.password_env, "mailbox.password_file")
        else:
            self.check_app("mailbox", "XOAUTH2")
        need_loopback_for_plain(self.security, self.host, "mailbox.security")


class EwsMailboxConfig(MailboxBase, Password, MicrosoftApp, ServerTrust):
    """Exchange Server through EWS: a service account (`ntlm`, `basic`) or an app (`oauth2`)."""

    backend: Literal["ews"] = "ews"
    """`ews`."""
    service_endpoint: str = ""
    """The EWS URL, e.g. `https://mail.gemeente.example/EWS/Exchange.asmx` (no autodiscover). Must be https."""
    auth_type: Literal["ntlm", "basic", "oauth2"] = "ntlm"
    """How to log in: `ntlm` or `basic` (`username` and a password, e.g. `DOMAIN\\user`), or `oauth2` (an app's client credentials)."""
    mailbox: str = ""
    """The mailbox's primary SMTP address (needed when `username` is `DOMAIN\\user`, and for oauth2 impersonation)."""
    folder: str = "INBOX"
    """Always the inbox: `inbox` (or the default `INBOX`)."""

    @property
    def address(self) -> str:
        return self.mailbox or self.username

    @property
    def server(self) -> str:
        return self.service_endpoint

    @property
    def protection(self) -> str:
        return "https"

    @property
    def microsoft_app(self) -> bool:
        return self.auth_type == "oauth2"

    def check(self) -> None:
        need(
            self.service_endpoint,
            "mailbox.service_endpoint",
            "the EWS URL, e.g. https://mail.example/EWS/Exchange.asmx",
        )
        need_https(self.service_endpoint, "mailbox.service_endpoint")
        if self.auth_type == "oauth2":
            self.check_app("mailbox", "EWS oauth2")
            why = "the app impersonates it"
        else:
            need(self.username, "mailbox.username", "the account to log in as")
            need_secret(self.password_file, self.password_env, "mailbox.password_file")
            why = "username is not an address"
        if "@" not in self.address:
            raise Problem(
                "mailbox.mailbox", f"missing; set it to the mailbox's primary SMTP address ({why})"
            )
        if self.folder.lower() != "inbox":
            raise Problem("mailbox.folder", 'the ews backend reads the inbox; set folder = "inbox"')


class GraphMailboxConfig(MailboxBase, MicrosoftApp, ServerTrust):
    """Microsoft 365 through Microsoft Graph, as an app with access to this one mailbox."""

    backend: Literal["graph"] = "graph"
    """`graph`."""
    mailbox: str = ""
    """The mailbox acted on: its address or user id. Required."""
    endpoint: str = "https://graph.microsoft.com"
    """The Microsoft Graph endpoint (override for tests and proxies). Must be https. The US Government and China endpoints are refused: Graph has no `permanentDelete` there; use `ews` or `imap` with XOAUTH2."""
    folder: str = "INBOX"
    """The mail folder signals are read from; the default `INBOX` is Graph's `inbox`."""

    @property
    def server(self) -> str:
        return self.endpoint

    @property
    def protection(self) -> str:
        return "https"

    @property
    def microsoft_app(self) -> bool:
        return True

    @property
    def graph_folder(self) -> str:
        # "INBOX" is the IMAP default of the setting; Graph's well-known name is "inbox".
        return "inbox" if self.folder.upper() == "INBOX" else self.folder

    def check(self) -> None:
        self.check_app("mailbox", "Microsoft Graph")
        need(self.mailbox, "mailbox.mailbox", "the signals mailbox's address (or user id)")
        need_https(self.endpoint, "mailbox.endpoint", loopback_http=False)
        refusal = graph_refusal(self.endpoint)
        if refusal is not None:
            raise Problem("mailbox.endpoint", refusal)


class MaildirMailboxConfig(MailboxBase, LocalFolder):
    """A local Maildir folder (the demo and tests; no sender evidence can exist there)."""

    backend: Literal["maildir"] = "maildir"
    """`maildir`."""

    @property
    def microsoft_app(self) -> bool:
        return False

    def check(self) -> None:
        need(self.path, "mailbox.path", "the Maildir folder signals are delivered to")


# --- [smtp] -------------------------------------------------------------------------------


class TransportBase(Section):
    transport: str
    """How mail is sent: `smtp`, `maildir` (a local folder, demo only), or `ews` / `graph` through the mailbox backend of the same name."""
    from_: str = Field("", alias="from")
    """The From of every mail inboxd sends, e.g. `Meldpunt vreemdverhaal <vreemdverhaal@gemeente.example>`. Required."""

    def check_from(self) -> None:
        need(
            self.from_,
            "smtp.from",
            'the From address, e.g. "Meldpunt <vreemdverhaal@gemeente.example>"',
        )
        m = re.fullmatch(r"\s*(?:[^<>\x00-\x1f\x7f]*<([^<>\s]+)>|([^<>\s]+))\s*", self.from_)
        if not m or not ADDRESS.match(m.group(1) or m.group(2)):
            raise Problem(
                "smtp.from",
                'must be an address, optionally with a name: "Meldpunt <vreemdverhaal@gemeente.example>"',
            )

    # ``server`` and ``protection`` as for the mailbox (the privacy register).


class SmtpTransportConfig(TransportBase, MailServer):
    """An SMTP relay or submission server."""

    _PORTS: ClassVar[dict[str, int]] = {"tls": 465, "starttls": 587, "none": 25}
    transport: Literal["smtp"] = "smtp"
    """`smtp`."""
    security: Security = "starttls"
    """`tls`, `starttls`, or `none` (loopback hosts only; never tries STARTTLS)."""

    def check(self, mailbox: MailboxConfig) -> None:
        need(self.host, "smtp.host", "the SMTP server's host name")
        need_loopback_for_plain(self.security, self.host, "smtp.security")
        if self.username and self.auth == "password":
            need_secret(self.password_file, self.password_env, "smtp.password_file")
        if self.auth == "xoauth2":
            need(self.username, "smtp.username", "the mailbox to send as (XOAUTH2 user)")
            if self.names_app:
                self.check_app("smtp", "XOAUTH2")
            elif isinstance(mailbox, MicrosoftApp) and (mailbox.tenant_id or mailbox.client_id):
                mailbox.check_app("mailbox", "XOAUTH2 for [smtp]")
            else:
                self.check_app("smtp", "XOAUTH2")


class _ThroughTheMailbox(TransportBase):
    """``ews`` and ``graph`` send as the ``[mailbox]`` account, with its settings."""

    @property
    def server(self) -> str:
        return ""  # the mailbox's own

    @property
    def protection(self) -> str:
        return "https"

    def check(self, mailbox: MailboxConfig) -> None:
        if mailbox.backend != self.transport:
            raise Problem(
                "smtp.transport", f'"{self.transport}" needs mailbox.backend = "{self.transport}"'
            )


class EwsTransportConfig(_ThroughTheMailbox):
    """Sends through EWS as the `[mailbox]` account, with its settings (needs `backend = "ews"`); no keys of its own."""

    transport: Literal["ews"] = "ews"
    """`ews`: sends as the `[mailbox]` account with its settings."""


class GraphTransportConfig(_ThroughTheMailbox):
    """Sends through Graph as the `[mailbox]` app and mailbox (needs `backend = "graph"`); no keys of its own."""

    transport: Literal["graph"] = "graph"
    """`graph`: sends as the `[mailbox]` account with its settings."""


class MaildirTransportConfig(TransportBase, LocalFolder):
    """Drops outgoing mail into a local folder (the demo's world)."""

    transport: Literal["maildir"] = "maildir"
    """`maildir`."""

    def check(self, mailbox: MailboxConfig) -> None:
        need(self.path, "smtp.path", "the folder outgoing mail is dropped into (demo only)")


# --- the tagged unions ---------------------------------------------------------------------

MAILBOX_MODELS: tuple[type[MailboxBase], ...] = (
    ImapMailboxConfig,
    EwsMailboxConfig,
    GraphMailboxConfig,
    MaildirMailboxConfig,
)
TRANSPORT_MODELS: tuple[type[TransportBase], ...] = (
    SmtpTransportConfig,
    MaildirTransportConfig,
    EwsTransportConfig,
    GraphTransportConfig,
)


@cache
def _checker(model: type[BaseModel], key: str) -> TypeAdapter[Any]:
    # The field's type with its validators and bounds (a FieldInfo is its own metadata).
    field = model.model_fields[key]
    kind: Any = Annotated[field.annotation, field]
    return TypeAdapter(kind, config=ConfigDict(strict=True))


def _chosen(
    section: str, tag: str, default: str, models: tuple[type[BaseModel], ...]
) -> Callable[[Any], Any]:
    """The section's table with the tag filled in and other backends' keys left out
    (after checking their values as their own backend would)."""
    by_tag = {m.model_fields[tag].default: m for m in models}
    owner: dict[str, type[BaseModel]] = {}
    for m in reversed(models):
        owner.update({(f.alias or name): m for name, f in m.model_fields.items()})

    def choose(data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {tag: default, **data}
        chosen = data[tag]
        model = by_tag.get(chosen) if isinstance(chosen, str) else None
        if model is None:
            return data  # the union names the tags it knows
        own = {f.alias or name for name, f in model.model_fields.items()}
        kept = {}
        for key, value in data.items():
            if key in own or key not in owner:
                kept[key] = value  # an unknown key stays, to be refused
                continue
            other = owner[key]
            name = next(n for n, f in other.model_fields.items() if (f.alias or n) == key)
            try:
                _checker(other, name).validate_python(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                err: dict[str, Any] = {**first, "loc": (section, key, *first["loc"])}
                raise Problem(*explain_error(err)) from None
        return kept

    return choose


MailboxConfig = Annotated[
    Annotated[
        ImapMailboxConfig | EwsMailboxConfig | GraphMailboxConfig | MaildirMailboxConfig,
        Field(discriminator="backend"),
    ],
    BeforeValidator(_chosen("mailbox", "backend", "imap", MAILBOX_MODELS)),
]
SmtpConfig = Annotated[
    Annotated[
        SmtpTransportConfig | MaildirTransportConfig | EwsTransportConfig | GraphTransportConfig,
        Field(discriminator="transport"),
    ],
    BeforeValidator(_chosen("smtp", "transport", "smtp", TRANSPORT_MODELS)),
]
