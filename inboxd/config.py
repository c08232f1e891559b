"""The configuration file: TOML in, one validated plain object out.

Every way a configuration can be wrong ends in :class:`ConfigError`, which the CLI
prints as one line (file, key, what to do) with exit code 2. The ``[mailbox]`` and
``[smtp]`` models, one per backend, are in :mod:`inboxd.backends.settings`; the value
types and shared checks in :mod:`inboxd.config_values`.
"""

from __future__ import annotations

import grp
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator

from inboxd.backends.settings import (
    MAILBOX_MODELS,
    TRANSPORT_MODELS,
    EwsMailboxConfig,
    GraphMailboxConfig,
    ImapMailboxConfig,
    MailboxConfig,
    MaildirMailboxConfig,
    MicrosoftApp,
    SmtpConfig,
    SmtpTransportConfig,
)
from inboxd.config_values import (
    Address,
    ConfigError,
    Duration,
    PositiveDuration,
    Problem,
    Rate,
    Section,
    explain_error,
    is_loopback,
    parse_duration,
    parse_rate,
)
from inboxd.evidence import EvidencePolicy

# What callers import from here: the file's settings and how to read them.
__all__ = [
    "DEFAULT_PATH",
    "MAILBOX_MODELS",
    "RESERVED_DESTINATION_KEYS",
    "TRANSPORT_MODELS",
    "Config",
    "ConfigError",
    "EwsMailboxConfig",
    "GraphMailboxConfig",
    "ImapMailboxConfig",
    "MailboxConfig",
    "MaildirMailboxConfig",
    "MicrosoftApp",
    "SmtpConfig",
    "SmtpTransportConfig",
    "check_unit_directories",
    "constructed",
    "is_loopback",
    "load",
    "parse_duration",
    "parse_rate",
    "read_secret",
]

DEFAULT_PATH = "/etc/inboxd/inboxd.toml"

T = TypeVar("T")


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


class CryptoConfig(Section):
    key_files: list[str] = Field(min_length=1)
    """Master key files made with `inboxd keys generate`, newest last (rotation). Relative paths are read from `$CREDENTIALS_DIRECTORY`, else next to the configuration. A file readable by group or others is refused. Required."""


class ReportersConfig(Section):
    ack_domains: list[str] = []
    """Mail domains whose senders get an acknowledgement, questions and feedback (exact match; list subdomains too). inboxd never mails a reporter outside them."""
    ack_rate_limit: Rate = (10, 3600.0)
    """At most this many acknowledgements per sender, e.g. `"10/h"` (counted with a keyed hash; no address stored)."""


class SourceConfig(Section):
    addresses: list[Address] = []
    """Senders whose signals are counted under this source name in the statistics (e.g. `[sources.mma]` for Meld Misdaad Anoniem forwards). Other senders count as `intern` (in `ack_domains`) or `extern`."""


class TriageConfig(Section):
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


class DestinationConfig(Section):
    label: str
    """The name functionarissen and reports see, e.g. `KEDO (slachtofferspoor)`. Required."""
    address: Address
    """Where forwards go. Required."""
    certificate: str = ""
    """An S/MIME certificate (PEM): forwards to this destination are encrypted to it, never sent in clear."""
    test_address: Address | Literal[""] = ""
    """Where drills (`[TEST]`, `[OEFENING]`) go instead; empty means the functionarissen themselves."""


class MetricsConfig(Section):
    listen: str = "127.0.0.1:9464"
    """host:port of the Prometheus endpoint, e.g. `127.0.0.1:9464`."""

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError('write host:port, e.g. "127.0.0.1:9464" or "[::1]:9464"')
        return v


class AdminConfig(Section):
    socket: str = "/run/inboxd/admin.sock"
    """The running service's admin socket, in its `RuntimeDirectory=`: `inboxd status`, `stats`, `queue` and `keys rotate` reach the service here. Each instance its own (`/run/inboxd/<name>/admin.sock`)."""
    group: str = ""
    """Members of this group (a name or a gid) may use the admin socket besides root; empty: root only."""


class Config(Section):
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
        # In the order of the file's sections: the first problem is the one named.
        self.mailbox.check()
        self.smtp.check(self.mailbox)
        self.smtp.check_from()
        _evidence_configured(self)
        for addr in self.triage.certificates:
            if addr.lower() not in self.triage.functionarissen:
                raise Problem(
                    f"triage.certificates.{addr}",
                    "is not one of triage.functionarissen; certificates are keyed by a functionaris' address",
                )
        for key in self.destinations:
            if key in RESERVED_DESTINATION_KEYS:
                raise Problem(
                    f"destinations.{key}",
                    "this word is a command or a reply-header word; give the destination another key",
                )
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,30}", key):
                raise Problem(
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
            raise Problem(
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


def _evidence_configured(cfg: Config) -> None:
    """Commands need proof of who sent them; running without any is a choice made
    out loud, and only where no proof can exist."""
    t = cfg.triage
    for i in t.trusted_authserv_ids:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", i.strip()):
            raise Problem(
                "triage.trusted_authserv_ids",
                f"{i!r} is not an authserv-id; write your mail server's name as it appears in Authentication-Results",
            )
    if t.exchange_internal and cfg.mailbox.backend == "maildir":
        raise Problem(
            "triage.exchange_internal",
            "a local Maildir is not Exchange; remove it or use the imap, ews or graph backend",
        )
    policy = cfg.evidence_policy
    if not policy.has_source and not t.allow_unauthenticated:
        raise Problem(
            "triage.trusted_authserv_ids",
            "no source of sender evidence; set triage.trusted_authserv_ids to your mail server's authserv-id"
            " or triage.exchange_internal = true (Exchange), or triage.allow_unauthenticated = true"
            " where no evidence can exist (a local test)",
        )
    if policy.has_source and t.allow_unauthenticated:
        raise Problem(
            "triage.allow_unauthenticated",
            "cannot be true while trusted_authserv_ids or exchange_internal give sender evidence; remove it",
        )


_TAGS = {
    "mailbox": {m.model_fields["backend"].default for m in MAILBOX_MODELS},
    "smtp": {m.model_fields["transport"].default for m in TRANSPORT_MODELS},
}


def _without_tag(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """pydantic puts the chosen backend into an error's path (``mailbox.imap.port``);
    the file has no such level."""
    if len(loc) > 2 and loc[0] in _TAGS and loc[1] in _TAGS[loc[0]]:
        return (loc[0], *loc[2:])
    return loc


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
        first = exc.errors()[0]
        key, problem = explain_error({**first, "loc": _without_tag(first["loc"])})
        raise ConfigError(path, key, problem) from None
    except Problem as exc:
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
    _check_admin_socket(cfg)
    admin_gid(cfg)
    return cfg


# What sun_path holds on Linux: 108 bytes with the terminating NUL.
MAX_SOCKET_PATH = 107


def _check_admin_socket(cfg: Config) -> None:
    size = len(os.fsencode(cfg.admin.socket))
    if size > MAX_SOCKET_PATH:
        raise ConfigError(
            cfg.source_path,
            "admin.socket",
            f"the path is {size} bytes and a Unix socket's may be at most {MAX_SOCKET_PATH}; "
            "choose a shorter one (the default is /run/inboxd/admin.sock)",
        )


def admin_gid(cfg: Config) -> int | None:
    """``[admin] group`` as a gid; a group that does not exist is a configuration
    error (found when the configuration is loaded), not a silent "root only"."""
    name = cfg.admin.group
    if not name:
        return None
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(
            cfg.source_path,
            "admin.group",
            f"there is no group {name!r} on this system; create it (groupadd --system {name}) or remove the key",
        ) from None


def _resolve_paths(cfg: Config, base: Path) -> Config:
    """Paths in the file are relative to the file, so the example works from anywhere."""

    def rel(p: str) -> str:
        if not p:
            return p
        pp = Path(os.path.expandvars(p))
        return str(pp if pp.is_absolute() else (base / pp))

    def files(section: Section) -> dict[str, str]:
        # The backend's own paths (a Maildir's folder, a CA bundle), where it has them.
        keys = ("path", "ca_file")
        return {k: rel(getattr(section, k)) for k in keys if k in type(section).model_fields}

    mb = cfg.mailbox.model_copy(update=files(cfg.mailbox))
    smtp = cfg.smtp.model_copy(update=files(cfg.smtp))

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


def constructed(cfg: Config, section: str, make: Callable[[], T]) -> T:
    """Backend constructors check their settings with ValueError (https only, a CA
    file that exists, …): that is a configuration error, exit 2, not a crash."""
    try:
        return make()
    except ValueError as exc:
        raise ConfigError(cfg.source_path, section, str(exc)) from None
