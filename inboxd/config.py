"""The configuration file: TOML in, one validated plain object out.

Every way a configuration can be wrong ends in :class:`ConfigError`, which the CLI
prints as one line (file, key, what to do) with exit code 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from inboxd.evidence import EvidencePolicy
from inboxd.msclouds import graph_refusal

DEFAULT_PATH = "/etc/inboxd/inboxd.toml"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_ADDR = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_SECRET_KEYS = {"password", "client_secret", "secret", "token", "key"}


# Destination keys become command words: they must not collide with the commands or
# with the words a reply's quote header and destination lists are made of.
RESERVED_DESTINATION_KEYS = frozenset(
    [
        "doorzetten",
        "forward",
        "vorm",
        "type",
        "afsluiten",
        "close",
        "vraag",
        "ask",
        "wacht",
        "hold",
        "status",
        "hulp",
        "help",
        "geen",
        "no",
        "en",
        "and",
        "naar",
        "to",
        "van",
        "from",
        "op",
        "on",
        "at",
        "forwarded",
        "doorgestuurd",
        "aan",
        "cc",
        "bcc",
        "date",
        "datum",
        "onderwerp",
        "subject",
    ]
)


class ConfigError(Exception):
    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}" if key else f"{path}: {problem}")
        self.path = path
        self.key = key
        self.problem = problem


def parse_duration(value: Any) -> float:
    """``"30s"``, ``"15m"``, ``"2d"`` (also ``"1h30m"``) → seconds."""
    if isinstance(value, bool):
        raise ValueError('expected a duration like "30s", "15m" or "2d"')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError('a duration cannot be negative; write e.g. "30s"')
        return float(value)
    if not isinstance(value, str):
        raise ValueError('expected a duration like "30s", "15m" or "2d"')
    parts = re.fullmatch(r"\s*((?:\d+(?:\.\d+)?\s*[smhdw]\s*)+)", value)
    if not parts:
        raise ValueError(f'{value!r} is not a duration; write e.g. "30s", "15m", "2d"')
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", value):
        total += float(num) * _UNITS[unit]
    return total


def parse_rate(value: Any) -> tuple[int, float]:
    """``"10/h"`` → (10, 3600.0)."""
    if not isinstance(value, str):
        raise ValueError('expected a rate like "10/h"')
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*", value)
    if not m:
        raise ValueError(f'{value!r} is not a rate; write e.g. "10/h"')
    return int(m.group(1)), float(m.group(2) or 1) * _UNITS[m.group(3)]


def _address(value: Any) -> str:
    if not isinstance(value, str) or not _ADDR.match(value.strip()):
        raise ValueError(f"{value!r} is not an e-mail address (local@domain)")
    return value.strip().lower()


Duration = Annotated[float, BeforeValidator(parse_duration)]
# Where zero would mean a busy loop or an instant give-up.
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Rate = Annotated[tuple[int, float], BeforeValidator(parse_rate)]
Address = Annotated[str, BeforeValidator(_address)]


class _Section(BaseModel):
    # Each field's docstring is its description: docs/configuration.md is generated
    # from them (inboxd/configdoc.py), and a test keeps the two in step.
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True
    )


def is_loopback(host: str) -> bool:
    """The one test for "loopback only" (config checks and the backends share it)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class MailboxConfig(_Section):
    backend: Literal["imap", "ews", "graph", "maildir"] = "imap"
    """Where signals arrive: `imap`, `ews` (Exchange Server), `graph` (Microsoft 365) or `maildir` (a local folder, for the demo and tests)."""
    host: str = ""
    """The IMAP server's host name (imap)."""
    port: int | None = Field(None, ge=1, le=65535)
    """The IMAP port; empty means 993 for `tls`, 143 for `starttls` and `none`."""
    security: Literal["tls", "starttls", "none"] = "tls"
    """`tls` (implicit TLS), `starttls`, or `none` (allowed for loopback hosts only; never tries STARTTLS)."""
    ca_file: str = ""
    """An extra CA bundle (PEM) for a server with an internal certificate authority. Relative to the configuration file."""
    username: str = ""
    """The account to log in as (imap, ews with ntlm/basic)."""
    auth: Literal["password", "xoauth2"] = "password"
    """`password`, or `xoauth2` for Microsoft 365 (an app's client credentials, see `tenant_id`)."""
    password_file: str = ""
    """A file holding the password; a relative path is read from `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), else next to the configuration."""
    password_env: str = ""
    """Instead of `password_file`: the name of an environment variable holding the password."""
    folder: str = "INBOX"
    """The folder signals are read from (imap). The ews backend always reads the inbox."""
    idle: bool = True
    """Use IMAP IDLE (new mail noticed within about a second) where the server offers it."""
    poll_interval: PositiveDuration = 60.0
    """How often to look for new mail where IDLE or notifications are not available (also the Graph delta interval)."""
    retain_in_mailbox: Literal["queued", "forwarded"] = "queued"
    """`queued`: the original is hard-deleted from the mailbox as soon as it is encrypted and committed; `forwarded`: it stays until the signal is deleted."""
    path: str = ""
    """The Maildir folder signals are delivered to (maildir). Relative to the configuration file."""
    # Exchange (EWS): the URL of Exchange.asmx (no autodiscover).
    service_endpoint: str = ""
    """The EWS URL, e.g. `https://mail.gemeente.example/EWS/Exchange.asmx` (ews; no autodiscover). Must be https."""
    auth_type: Literal["ntlm", "basic", "oauth2"] = "ntlm"
    """How to log in to EWS: `ntlm`, `basic`, or `oauth2` (an app's client credentials)."""
    # Microsoft 365 app (Graph, EWS oauth2, IMAP XOAUTH2): client credentials.
    tenant_id: str = ""
    """The Microsoft Entra directory (tenant) id of the app (graph, ews oauth2, xoauth2)."""
    client_id: str = ""
    """The application (client) id of the app (graph, ews oauth2, xoauth2)."""
    client_secret_file: str = ""
    """A file holding the app's client secret (relative: under `$CREDENTIALS_DIRECTORY`). Exactly one of the secret or the certificate."""
    client_secret_env: str = ""
    """Instead of `client_secret_file`: an environment variable holding the client secret."""
    client_certificate_file: str = ""  # PEM: private key and certificate
    """A PEM file with the app's private key and certificate, instead of a client secret."""
    # The mailbox acted on: Graph's user (address or object id); for EWS its primary
    # SMTP address (needed when username is DOMAIN\user, and for oauth2 impersonation).
    mailbox: str = ""
    """The mailbox acted on: Graph's user (address or object id); for EWS its primary SMTP address (needed when `username` is `DOMAIN\\user`, and for oauth2 impersonation)."""
    authority: str = "https://login.microsoftonline.com"
    """The Microsoft identity platform to get tokens from (override for national clouds and tests). Must be https."""
    endpoint: str = "https://graph.microsoft.com"
    """The Microsoft Graph endpoint (override for tests and proxies). Must be https. The US Government and China endpoints are refused: Graph has no `permanentDelete` there; use `ews` or `imap` with XOAUTH2."""

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return {"tls": 993, "starttls": 143, "none": 143}[self.security]


class SmtpConfig(_Section):
    transport: Literal["smtp", "maildir", "ews", "graph"] = "smtp"
    """How mail is sent: `smtp`, `maildir` (a local folder, demo only), or `ews` / `graph` through the mailbox backend of the same name."""
    host: str = ""
    """The SMTP server's host name (smtp)."""
    port: int | None = Field(None, ge=1, le=65535)
    """The SMTP port; empty means 465 for `tls`, 587 for `starttls`, 25 for `none`."""
    security: Literal["tls", "starttls", "none"] = "starttls"
    """`tls`, `starttls`, or `none` (loopback hosts only; never tries STARTTLS)."""
    ca_file: str = ""
    """An extra CA bundle (PEM) for a relay with an internal certificate authority. Relative to the configuration file."""
    username: str = ""
    """The account to authenticate as; empty means no SMTP AUTH (a relay that trusts the host)."""
    auth: Literal["password", "xoauth2"] = "password"
    """`password`, or `xoauth2` for Microsoft 365."""
    password_file: str = ""
    """A file holding the SMTP password (relative: under `$CREDENTIALS_DIRECTORY`)."""
    password_env: str = ""
    """Instead of `password_file`: an environment variable holding the password."""
    from_: str = Field("", alias="from")
    """The From of every mail inboxd sends, e.g. `Meldpunt vreemdverhaal <vreemdverhaal@gemeente.example>`. Required."""
    path: str = ""
    """The folder outgoing mail is dropped into (maildir transport, demo only)."""
    # auth = "xoauth2": the app's client credentials. When [smtp] names no app at all
    # (no tenant_id, client_id or credential), the [mailbox] app is used, authority
    # included.
    tenant_id: str = ""
    """xoauth2: the app's tenant id. When `[smtp]` names no app at all, the `[mailbox]` app is used."""
    client_id: str = ""
    """xoauth2: the app's client id."""
    client_secret_file: str = ""
    """xoauth2: a file holding the app's client secret."""
    client_secret_env: str = ""
    """xoauth2: an environment variable holding the client secret."""
    client_certificate_file: str = ""
    """xoauth2: a PEM file with the app's private key and certificate."""
    authority: str = "https://login.microsoftonline.com"
    """xoauth2: the identity platform to get tokens from. Must be https."""

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return {"tls": 465, "starttls": 587, "none": 25}[self.security]

    @property
    def names_app(self) -> bool:
        return bool(
            self.tenant_id
            or self.client_id
            or self.client_secret_file
            or self.client_secret_env
            or self.client_certificate_file
        )


class CryptoConfig(_Section):
    key_files: list[str] = Field(min_length=1)
    """Master key files made with `inboxd keys generate`, newest last (rotation). Relative paths are read from `$CREDENTIALS_DIRECTORY`, else next to the configuration. A file readable by group or others is refused. Required."""


class ReportersConfig(_Section):
    ack_domains: list[str] = []
    """Mail domains whose senders get an acknowledgement, questions and feedback (exact match; list subdomains too). inboxd never mails a reporter outside them."""
    ack_rate_limit: Rate = (10, 3600.0)
    """At most this many acknowledgements per sender, e.g. `"10/h"` (counted with a keyed hash; no address stored)."""


class SourceConfig(_Section):
    addresses: list[Address] = []
    """Senders whose signals are counted under this source name in the statistics (e.g. `[sources.mma]` for Meld Misdaad Anoniem forwards). Other senders count as `intern` (in `ack_domains`) or `extern`."""


class TriageConfig(_Section):
    functionarissen: list[Address] = Field(min_length=1)
    """The addresses of the designated officers: they receive triage requests, reminders and the digest, and only they can give commands. Required, at least one."""
    include_content: Literal["full", "text", "none"] = "full"
    """What a triage request carries: `full` (text plus the original attached), `text` (the text only) or `none` (metadata only)."""
    request_limit: Rate = (10, 3600.0)
    """A sender's signals beyond this many, e.g. `"10/h"`, get no triage request of their own at once (a flood): they are queued as usual, flagged `flood`, the functionarissen get one notice with the count once the flood is over, and the held signals get their triage requests later, as this limit and `notice_limit` allow."""
    notice_limit: Rate = (60, 3600.0)
    """At most this many triage requests, follow-up notices, closings and alerts per functionaris, e.g. `"60/h"`; past it new signals are held as in a flood (their triage requests follow when the hour allows) and the other notices are not sent (logged)."""
    remind_after: PositiveDuration = 2 * 86400.0
    """Open signals older than this trigger a daily reminder to the functionarissen."""
    digest_cron: str = "0 9 * * mon-fri"
    """When the digest of open signals (reference, age, state; no content) goes out, as a crontab line in the daemon's local time zone."""
    trusted_authserv_ids: list[str] = []
    """The authserv-ids of your own receiving servers whose `Authentication-Results` count as evidence that a command, follow-up or drill really came from its From address (only the topmost fields, only passes aligned with From)."""
    exchange_internal: bool | None = None
    """Whether Exchange's `X-MS-Exchange-Organization-AuthAs: Internal` counts as that evidence. Default: true for the ews and graph backends, false otherwise; set it for IMAP only against Exchange."""
    allow_unauthenticated: bool = False
    """Act on commands without any sender evidence. Only where none can exist (a local Maildir try-out); refused together with a source of evidence."""
    forward_retry_for: PositiveDuration = 86400.0
    """How long a temporarily refused mail (a forward, say) is retried before it counts as failed."""
    # S/MIME: functionaris address → certificate file (PEM); mail to them is encrypted.
    certificates: dict[str, str] = {}
    """S/MIME certificates (PEM) of functionarissen, keyed by address: every mail to them is encrypted."""


class DestinationConfig(_Section):
    label: str
    """The name functionarissen and reports see, e.g. `KEDO (slachtofferspoor)`. Required."""
    address: Address
    """Where forwards go. Required."""
    certificate: str = ""
    """An S/MIME certificate (PEM): forwards to this destination are encrypted to it, never sent in clear."""
    test_address: Address | Literal[""] = ""
    """Where drills (`[TEST]`, `[OEFENING]`) go instead; empty means the functionarissen themselves."""


class MetricsConfig(_Section):
    listen: str = "127.0.0.1:9464"
    """host:port of the Prometheus endpoint, e.g. `127.0.0.1:9464`."""

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError('write host:port, e.g. "127.0.0.1:9464" or "[::1]:9464"')
        return v


class AdminConfig(_Section):
    socket: str = "/run/inboxd/admin.sock"
    """The running service's admin socket, in its `RuntimeDirectory=`: `inboxd status`, `stats`, `queue` and `keys rotate` reach the service here. Each instance its own (`/run/inboxd/<name>/admin.sock`)."""
    group: str = ""
    """Members of this group (a name or a gid) may use the admin socket besides root; empty: root only."""


class Config(_Section):
    state_dir: str = "/var/lib/inboxd"
    """The store (SQLite) lives here; systemd's `StateDirectory=inboxd`. Keep it out of ordinary backups (see the operations guide)."""
    language: Literal["nl", "en"] = "nl"
    """`nl` or `en`: the language of the mail templates and guides."""
    reference_prefix: str = Field("VV", pattern=r"^[A-Z]{1,6}$")
    """References look like `VV-7K3M-9QXF`; one to six capital letters."""
    templates_dir: str = ""
    """An optional folder with your own templates (`<language>/<name>.txt`), tried before the shipped ones."""
    dedup_window: Duration = 30 * 86400.0
    """How long content-free duplicate records outlive a deleted signal, so a re-delivered copy is not queued again."""
    mailbox: MailboxConfig
    """Where signals arrive."""
    smtp: SmtpConfig
    """How mail is sent."""
    crypto: CryptoConfig
    """The master keys."""
    reporters: ReportersConfig = ReportersConfig()
    """Who gets acknowledgements and feedback."""
    sources: dict[str, SourceConfig] = {}
    """Named groups of senders counted apart in the statistics."""
    triage: TriageConfig
    """The functionarissen and the timing of triage."""
    destinations: dict[str, DestinationConfig] = {}
    """Where signals can be forwarded; each key becomes a command word (`[destinations.kedo]` → `KEDO`)."""
    metrics: MetricsConfig | None = None
    """Optional: a Prometheus endpoint. Absent means none."""
    admin: AdminConfig = AdminConfig()
    """The admin socket through which an admin shell reaches the running service."""
    # Where the file was read from, so relative paths and messages can name it.
    source_path: str = Field("", exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        mb, smtp = self.mailbox, self.smtp
        if mb.backend == "imap":
            _need(mb.host, "mailbox.host", "the IMAP server's host name")
            _need(mb.username, "mailbox.username", "the mailbox account to log in as")
            if mb.auth == "password":
                _need_secret(mb.password_file, mb.password_env, "mailbox.password_file")
            else:
                _need_app(mb, "mailbox", "XOAUTH2")
            if mb.security == "none" and not is_loopback(mb.host):
                raise _Problem(
                    "mailbox.security",
                    'security = "none" is allowed only for loopback hosts; use "tls" or "starttls"',
                )
        elif mb.backend == "maildir":
            _need(mb.path, "mailbox.path", "the Maildir folder signals are delivered to")
        elif mb.backend == "ews":
            _need(
                mb.service_endpoint,
                "mailbox.service_endpoint",
                "the EWS URL, e.g. https://mail.example/EWS/Exchange.asmx",
            )
            _need_https(mb.service_endpoint, "mailbox.service_endpoint")
            if mb.auth_type == "oauth2":
                _need_app(mb, "mailbox", "EWS oauth2")
                if "@" not in (mb.mailbox or mb.username):
                    raise _Problem(
                        "mailbox.mailbox",
                        "missing; set it to the mailbox's primary SMTP address (the app impersonates it)",
                    )
            else:
                _need(mb.username, "mailbox.username", "the account to log in as")
                _need_secret(mb.password_file, mb.password_env, "mailbox.password_file")
                if "@" not in (mb.mailbox or mb.username):
                    raise _Problem(
                        "mailbox.mailbox",
                        "missing; set it to the mailbox's primary SMTP address (username is not an address)",
                    )
            if mb.folder.lower() != "inbox":
                raise _Problem(
                    "mailbox.folder", 'the ews backend reads the inbox; set folder = "inbox"'
                )
        elif mb.backend == "graph":
            _need_app(mb, "mailbox", "Microsoft Graph")
            _need(mb.mailbox, "mailbox.mailbox", "the signals mailbox's address (or user id)")
            _need_https(mb.endpoint, "mailbox.endpoint", loopback_http=False)
        if mb.backend == "graph" or smtp.transport == "graph":
            refusal = graph_refusal(mb.endpoint)
            if refusal is not None:
                raise _Problem("mailbox.endpoint", refusal)
        if smtp.transport == "smtp":
            _need(smtp.host, "smtp.host", "the SMTP server's host name")
            if smtp.security == "none" and not is_loopback(smtp.host):
                raise _Problem(
                    "smtp.security",
                    'security = "none" is allowed only for loopback hosts; use "tls" or "starttls"',
                )
            if smtp.username and smtp.auth == "password":
                _need_secret(smtp.password_file, smtp.password_env, "smtp.password_file")
            if smtp.auth == "xoauth2":
                _need(smtp.username, "smtp.username", "the mailbox to send as (XOAUTH2 user)")
                if smtp.names_app:
                    _need_app(smtp, "smtp", "XOAUTH2")
                elif mb.tenant_id or mb.client_id:
                    _need_app(mb, "mailbox", "XOAUTH2 for [smtp]")
                else:
                    _need_app(smtp, "smtp", "XOAUTH2")
        elif smtp.transport == "maildir":
            _need(smtp.path, "smtp.path", "the folder outgoing mail is dropped into (demo only)")
        elif smtp.transport != mb.backend:
            raise _Problem(
                "smtp.transport", f'"{smtp.transport}" needs mailbox.backend = "{smtp.transport}"'
            )
        _need(
            smtp.from_,
            "smtp.from",
            'the From address, e.g. "Meldpunt <vreemdverhaal@gemeente.example>"',
        )
        m = re.fullmatch(r"\s*(?:[^<>\x00-\x1f\x7f]*<([^<>\s]+)>|([^<>\s]+))\s*", smtp.from_)
        if not m or not _ADDR.match(m.group(1) or m.group(2)):
            raise _Problem(
                "smtp.from",
                'must be an address, optionally with a name: "Meldpunt <vreemdverhaal@gemeente.example>"',
            )
        _evidence_configured(self)
        for addr in self.triage.certificates:
            if addr.lower() not in self.triage.functionarissen:
                raise _Problem(
                    f"triage.certificates.{addr}",
                    "is not one of triage.functionarissen; certificates are keyed by a functionaris' address",
                )
        for key in self.destinations:
            if key in RESERVED_DESTINATION_KEYS:
                raise _Problem(
                    f"destinations.{key}",
                    "this word is a command or a reply-header word; give the destination another key",
                )
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,30}", key):
                raise _Problem(
                    f"destinations.{key}",
                    "destination keys are lower-case letters, digits and _ (they become commands like KEDO)",
                )
        try:
            import datetime as dt

            # The scheduler's own reading (crontab weekdays: 0 and 7 are Sunday), so
            # what passes here also runs there.
            from inboxd.crontab import cron_trigger

            cron_trigger(self.triage.digest_cron, dt.UTC)
        except ValueError:
            raise _Problem(
                "triage.digest_cron", 'not a cron expression; write e.g. "0 9 * * mon-fri"'
            ) from None
        return self

    @property
    def evidence_policy(self) -> EvidencePolicy:
        t = self.triage
        exchange = (
            t.exchange_internal
            if t.exchange_internal is not None
            else self.mailbox.backend in ("ews", "graph")
        )
        domains = {a.rsplit("@", 1)[1] for a in t.functionarissen}
        domains |= {d.lower() for d in self.reporters.ack_domains}
        return EvidencePolicy(
            trusted_authserv_ids=frozenset(i.strip().lower() for i in t.trusted_authserv_ids),
            exchange_internal=exchange,
            allow_unauthenticated=t.allow_unauthenticated,
            local_domains=frozenset(domains),
        )

    @property
    def from_address(self) -> str:
        m = re.search(r"<([^<>]+)>\s*$", self.smtp.from_)
        return (m.group(1) if m else self.smtp.from_).strip().lower()


class _Problem(ValueError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


def _evidence_configured(cfg: Config) -> None:
    """Commands need proof of who sent them; running without any is a choice made
    out loud, and only where no proof can exist."""
    t = cfg.triage
    for i in t.trusted_authserv_ids:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", i.strip()):
            raise _Problem(
                "triage.trusted_authserv_ids",
                f"{i!r} is not an authserv-id; write your mail server's name as it appears in Authentication-Results",
            )
    if t.exchange_internal and cfg.mailbox.backend == "maildir":
        raise _Problem(
            "triage.exchange_internal",
            "a local Maildir is not Exchange; remove it or use the imap, ews or graph backend",
        )
    policy = cfg.evidence_policy
    if not policy.has_source and not t.allow_unauthenticated:
        raise _Problem(
            "triage.trusted_authserv_ids",
            "no source of sender evidence; set triage.trusted_authserv_ids to your mail server's authserv-id"
            " or triage.exchange_internal = true (Exchange), or triage.allow_unauthenticated = true"
            " where no evidence can exist (a local test)",
        )
    if policy.has_source and t.allow_unauthenticated:
        raise _Problem(
            "triage.allow_unauthenticated",
            "cannot be true while trusted_authserv_ids or exchange_internal give sender evidence; remove it",
        )


def _need(value: str, key: str, what: str) -> None:
    if not value:
        raise _Problem(key, f"missing; set it to {what}")


def _need_app(section: MailboxConfig | SmtpConfig, name: str, what: str) -> None:
    """Client credentials of a Microsoft 365 app: tenant, client, one credential."""
    _need(section.tenant_id, f"{name}.tenant_id", f"the directory (tenant) id for {what}")
    _need(section.client_id, f"{name}.client_id", f"the application (client) id for {what}")
    has_secret = bool(section.client_secret_file or section.client_secret_env)
    if has_secret == bool(section.client_certificate_file):
        raise _Problem(
            f"{name}.client_secret_file",
            "set exactly one credential: client_secret_file, client_secret_env or client_certificate_file",
        )
    _need_https(section.authority, f"{name}.authority", loopback_http=False)


def _need_https(url: str, key: str, *, loopback_http: bool = True) -> None:
    # Credentials (passwords, NTLM, bearer tokens) never cross the wire in clear.
    m = re.fullmatch(r"(https?)://([^/:?#]+|\[[0-9a-fA-F:]+\])(?::\d+)?(?:[/?].*)?", url)
    host = m.group(2).strip("[]") if m else ""
    if not m or (m.group(1) == "http" and not (loopback_http and is_loopback(host))):
        raise _Problem(key, f"must be an https:// URL, not {url!r}")


def _need_secret(file: str, env: str, key: str) -> None:
    if not (file or env):
        raise _Problem(
            key,
            f"missing; set {key} (a file holding the secret) or {key.removesuffix('_file')}_env",
        )


def _key_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not isinstance(p, int)) or "(top level)"


def _explain(err: dict[str, Any]) -> tuple[str, str]:
    loc = tuple(err.get("loc", ()))
    key = _key_path(loc)
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        leaf = str(loc[-1]) if loc else ""
        if leaf in _SECRET_KEYS or leaf.endswith(("password", "secret")):
            return (
                key,
                f"secrets are never written in the configuration; use {leaf}_file (a file, e.g. under $CREDENTIALS_DIRECTORY) or {leaf}_env",
            )
        return key, "unknown key; remove it or check its spelling against the README"
    if kind == "missing":
        return key, "required key is missing; add it (see config/inboxd.example.toml)"
    if kind == "value_error":
        ctx = err.get("ctx", {})
        exc = ctx.get("error")
        if isinstance(exc, _Problem):
            return exc.key, exc.problem
        msg = str(exc) if exc is not None else err.get("msg", "invalid value")
        return key, msg
    if kind == "literal_error":
        return key, f"must be one of {err.get('ctx', {}).get('expected', '')}"
    msg = str(err.get("msg", "invalid value"))
    return key, msg[:1].lower() + msg[1:]


def load(path: str | None = None) -> Config:
    path = path or os.environ.get("INBOXD_CONFIG") or DEFAULT_PATH
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            path, "", "configuration file not found; pass --config PATH or set INBOXD_CONFIG"
        ) from None
    except PermissionError:
        raise ConfigError(
            path, "", "configuration file is not readable; check its permissions"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "configuration file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML ({exc}); fix the syntax there") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read configuration ({type(exc).__name__})") from None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        key, problem = _explain(dict(exc.errors()[0]))
        raise ConfigError(path, key, problem) from None
    except _Problem as exc:
        raise ConfigError(path, exc.key, exc.problem) from None
    base = Path(path).resolve().parent
    cfg = _resolve_paths(cfg.model_copy(update={"source_path": path}), base)
    if cfg.templates_dir:
        from inboxd.templates import Templates, override_problem

        showing = Templates(cfg.language, cfg.templates_dir).subjects_showing_token()
        if showing:
            raise ConfigError(
                path,
                "templates_dir",
                f"template {showing[0]} puts {{{{ token }}}} in its Subject line; mail "
                "servers log subjects, so the token belongs in the body only",
            )
        broken = override_problem(cfg.language, cfg.templates_dir)
        if broken:
            raise ConfigError(path, "templates_dir", broken)
    return cfg


def _resolve_paths(cfg: Config, base: Path) -> Config:
    """Paths in the file are relative to the file, so the example works from anywhere."""

    def rel(p: str) -> str:
        if not p:
            return p
        pp = Path(os.path.expandvars(p))
        return str(pp if pp.is_absolute() else (base / pp))

    mb = cfg.mailbox.model_copy(
        update={"path": rel(cfg.mailbox.path), "ca_file": rel(cfg.mailbox.ca_file)}
    )
    smtp = cfg.smtp.model_copy(
        update={"path": rel(cfg.smtp.path), "ca_file": rel(cfg.smtp.ca_file)}
    )

    def cred(p: str) -> str:
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        expanded = os.path.expandvars(p)
        if creds and not Path(expanded).is_absolute():
            return str(Path(creds) / expanded)
        return rel(p)

    crypto = cfg.crypto.model_copy(update={"key_files": [cred(k) for k in cfg.crypto.key_files]})
    triage = cfg.triage.model_copy(
        update={"certificates": {a.lower(): rel(p) for a, p in cfg.triage.certificates.items()}}
    )
    destinations = {
        k: d.model_copy(update={"certificate": rel(d.certificate)})
        for k, d in cfg.destinations.items()
    }
    return cfg.model_copy(
        update={
            "triage": triage,
            "destinations": destinations,
            "state_dir": rel(cfg.state_dir),
            "templates_dir": rel(cfg.templates_dir),
            "mailbox": mb,
            "smtp": smtp,
            "crypto": crypto,
            "admin": cfg.admin.model_copy(update={"socket": rel(cfg.admin.socket)}),
        }
    )


def check_unit_directories(cfg: Config, env: Mapping[str, str]) -> None:
    """Under systemd, state_dir and the admin socket must be where the unit's
    StateDirectory= and RuntimeDirectory= put them: elsewhere the sandbox makes them
    unwritable, and two instances of inboxd@.service could share one."""
    checks = (
        ("STATE_DIRECTORY", "state_dir", Path(cfg.state_dir), "{}"),
        ("RUNTIME_DIRECTORY", "admin.socket", Path(cfg.admin.socket).parent, "{}/admin.sock"),
    )
    for variable, key, path, fix in checks:
        given = [Path(d) for d in env.get(variable, "").split(":") if d]
        if given and path.resolve() not in {d.resolve() for d in given}:
            raise ConfigError(
                cfg.source_path,
                key,
                f"is not in this service's {variable} ({given[0]}); set it to"
                f' "{fix.format(given[0])}"',
            )


def read_secret(cfg: Config, file: str, env: str, key: str) -> str:
    """A secret from ``*_file`` (relative paths under $CREDENTIALS_DIRECTORY) or ``*_env``."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(
                cfg.source_path,
                key.removesuffix("_file") + "_env",
                f"environment variable {env} is not set",
            )
        return value.strip()
    path = Path(os.path.expandvars(file))
    if not path.is_absolute():
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        path = Path(creds) / path if creds else Path(cfg.source_path).resolve().parent / path
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            # As for key files: a secret others may read is refused, not merely used.
            raise ConfigError(
                cfg.source_path,
                key,
                f"{path}: file mode {stat.S_IMODE(mode):04o} grants access to group or others;"
                f" run 'chmod 600 {path}'",
            )
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            cfg.source_path,
            key,
            f"cannot read {path} ({type(exc).__name__}); check the path and permissions",
        ) from None
