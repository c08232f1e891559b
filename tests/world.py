"""A configured inboxd against the test mail servers: the shared setup of the
end-to-end tests (the servers themselves come from ``conftest.py``), and the suite's
one configuration builder (:func:`config_text`), which every set-up uses, fakes and
in-process ones included."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from servers import AUTHSERV_ID, MailServer
from servers.smtp_relay import stamp
from servers.tlsca import pki

from inboxd import config, logs
from inboxd.app import App, build
from inboxd.crypto import Keyring, generate_key_file
from inboxd.sqlite_store import SqliteStore
from inboxd.store import Store

MAILBOX = "vreemdverhaal@gemeente.example"
REPORTER = "melder@gemeente.example"
OUTSIDER = "buiten@extern.example"
F1 = "a.jansen@gemeente.example"
F2 = "b.devries@gemeente.example"
KEDO = "intake-kedo@gemeente.example"
RIEC = "informatieplein@riec.example"
NLA = "inspectie@nla.example"
REPO = Path(__file__).resolve().parent.parent

FROM = f"Meldpunt vreemdverhaal <{MAILBOX}>"

TomlValue = str | int | bool | Path | Sequence[str]


def _toml_string(value: str) -> str:
    # JSON's escapes are TOML's too; raw non-ASCII, as JSON's surrogate pairs are not.
    return json.dumps(value, ensure_ascii=False)


def toml_lines(keys: Mapping[str, TomlValue | None]) -> str:
    """``key = value`` lines; a key whose value is None is left out (its default)."""
    out = []
    for key, value in keys.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, str | Path):
            text = _toml_string(str(value))
        else:
            text = "[" + ", ".join(_toml_string(v) for v in value) + "]"
        out.append(f"{key} = {text}\n")
    return "".join(out)


def sections(mailbox: Mapping[str, TomlValue | None], smtp: Mapping[str, TomlValue | None]) -> str:
    """The ``[mailbox]`` and ``[smtp]`` sections of :func:`config_text`."""
    return f"\n[mailbox]\n{toml_lines(mailbox)}\n[smtp]\n{toml_lines(smtp)}"


def imap_sections(
    *,
    imap_port: int,
    smtp_port: int,
    ca: str,
    password_file: str | Path,
    smtp_password_file: str | Path | None = None,
    **mailbox: TomlValue | None,
) -> str:
    """IMAP in, SMTP out, as the signals mailbox on the suite's Dovecot and relay
    (``mailbox``: more ``[mailbox]`` keys)."""
    return sections(
        {
            "backend": "imap",
            "host": "127.0.0.1",
            "port": imap_port,
            "security": "tls",
            "ca_file": ca,
            "username": MAILBOX,
            "password_file": password_file,
            **mailbox,
        },
        {
            "host": "127.0.0.1",
            "port": smtp_port,
            "security": "starttls",
            "ca_file": ca,
            "username": MAILBOX,
            "password_file": smtp_password_file or password_file,
            "from": FROM,
        },
    )


def maildir_sections(box: Path, out: Path, **mailbox: TomlValue | None) -> str:
    """A local Maildir in, ``transport = "maildir"`` out."""
    return sections(
        {"backend": "maildir", "path": box, **mailbox},
        {"transport": "maildir", "path": out, "from": FROM},
    )


def graph_sections(
    *,
    tenant_id: str,
    client_id: str,
    authority: str,
    endpoint: str,
    ca_file: str | None = None,
    **mailbox: TomlValue | None,
) -> str:
    """Microsoft Graph in and out (``mailbox``: the credential, e.g.
    ``client_secret_file``, and more keys); the suite's CA unless ``ca_file``."""
    return sections(
        {
            "backend": "graph",
            "tenant_id": tenant_id,
            "client_id": client_id,
            **mailbox,
            "mailbox": MAILBOX,
            "authority": authority,
            "endpoint": endpoint,
            "ca_file": ca_file or pki().ca_file,
        },
        {"transport": "graph", "from": FROM},
    )


def ews_sections(
    *,
    service_endpoint: str,
    auth_type: str = "basic",
    ca_file: str | None = None,
    **mailbox: TomlValue | None,
) -> str:
    """Exchange Web Services in and out (``mailbox``: the credentials and more keys);
    the suite's CA unless ``ca_file``."""
    return sections(
        {
            "backend": "ews",
            "service_endpoint": service_endpoint,
            "auth_type": auth_type,
            **mailbox,
            "mailbox": MAILBOX,
            "ca_file": ca_file or pki().ca_file,
            "folder": "inbox",
        },
        {"transport": "ews", "from": FROM},
    )


# The options of :func:`config_text` and the suite's values for them. None leaves
# the key out: inboxd's default.
DEFAULTS: dict[str, TomlValue | None] = {
    "language": "nl",
    "rate": "10/h",
    "include": "full",
    # The suite's relay stamps Authentication-Results as the mail server does.
    "trusted": [AUTHSERV_ID],
    "allow_unauthenticated": False,
    "retry_for": "24h",
    "request_limit": "10/h",
    "notice_limit": "60/h",
    "kedo_cert": "",
    "kedo_test": "",
    "extra": "",
}


def config_text(root: Path, mailbox: str, **options: TomlValue | None) -> str:
    """The suite's one configuration, in ``root``: the ``[mailbox]`` and ``[smtp]``
    sections ``mailbox`` (:func:`imap_sections`, :func:`maildir_sections`,
    :func:`graph_sections`, :func:`ews_sections` or a test's own), the rest with
    :data:`DEFAULTS`, ``options`` overriding them (``extra`` is appended as more TOML)."""
    unknown = set(options) - set(DEFAULTS)
    assert not unknown, f"config_text has no option {sorted(unknown)}"
    o = {**DEFAULTS, **options}
    top = {"state_dir": f"{root}/state", "language": o["language"], "reference_prefix": "VV"}
    tables: dict[str, dict[str, TomlValue | None]] = {
        "crypto": {"key_files": [f"{root}/master-key"]},
        "reporters": {"ack_domains": ["gemeente.example"], "ack_rate_limit": o["rate"]},
        "sources.mma": {"addresses": ["meldingen@meldmisdaadanoniem.example"]},
        "triage": {
            "functionarissen": [F1, F2],
            "include_content": o["include"],
            "trusted_authserv_ids": o["trusted"],
            "allow_unauthenticated": o["allow_unauthenticated"],
            "forward_retry_for": o["retry_for"],
            "request_limit": o["request_limit"],
            "notice_limit": o["notice_limit"],
        },
        "destinations.kedo": {
            "label": "KEDO (slachtofferspoor)",
            "address": KEDO,
            "certificate": o["kedo_cert"],
            "test_address": o["kedo_test"],
        },
        "destinations.riec": {"label": "RIEC Informatieplein (daderspoor)", "address": RIEC},
        "destinations.nla": {"label": "Nederlandse Arbeidsinspectie", "address": NLA},
        "admin": {"socket": f"{root}/admin.sock"},
    }
    rest = "".join(f"\n[{name}]\n{toml_lines(keys)}" for name, keys in tables.items())
    return toml_lines(top) + mailbox + rest + str(o["extra"] or "")


def marker() -> str:
    return "MRK" + uuid.uuid4().hex[:12].upper()


def dsn(original_message_id: str, recipient: str) -> bytes:
    """A delivery status notification for ``recipient`` about the mail with
    ``original_message_id``, as a relay's MAILER-DAEMON sends it."""
    return (
        "From: Mail Delivery System <MAILER-DAEMON@gemeente.example>\r\n"
        f"To: {MAILBOX}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <dsn-{marker()}@gemeente.example>\r\nAuto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.gemeente.example\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        "--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {original_message_id}\r\nSubject: Signaal\r\n\r\n"
        "--b1--\r\n"
    ).encode()


def signal_mail(
    mark: str = "",
    *,
    sender: str = REPORTER,
    display: str | None = None,
    subject: str | None = None,
    body: str | None = None,
    html: str | None = None,
    attachments: list[tuple[str, bytes, str]] | None = None,
    headers: dict[str, str] | None = None,
    message_id: str | None = None,
) -> bytes:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = f'"{display if display is not None else "Melder " + mark}" <{sender}>'
    msg["To"] = MAILBOX
    msg["Subject"] = subject if subject is not None else f"Signaal over een adres {mark}"
    msg["Message-ID"] = message_id or f"<{uuid.uuid4().hex}@gemeente.example>"
    msg["Date"] = "Mon, 23 Nov 2026 10:00:00 +0100"
    for k, v in (headers or {}).items():
        msg[k] = v
    if html is not None and body is None:
        msg.set_content(html, subtype="html")
    else:
        msg.set_content(body if body is not None else f"Ik zag iets vreemds. Kenmerk {mark}.\n")
        if html is not None:
            msg.add_alternative(html, subtype="html")
    for name, data, ctype in attachments or []:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


def submit(mail: MailServer, raw: bytes, sender: str = F1) -> None:
    """Mail as the sender's own mail client sends it: submitted to the relay logged in
    as ``sender``, so the relay stamps ``auth=pass smtp.auth=<sender>`` — the sender
    evidence every command, follow-up and drill needs."""
    assert sender.lower() in mail.users, f"{sender} has no account on the test server"
    mail.deliver(raw, MAILBOX, mail_from=sender, login=sender)


_EXCHANGE_ORG = re.compile(rb"(?im)^x-ms-exchange-organization-[^:]*:.*(?:\r?\n[ \t].*)*\r?\n")


def exchange_delivery(raw: bytes, *, internal: bool) -> bytes:
    """``raw`` as Exchange files it in a mailbox: its header firewall drops every
    ``X-MS-Exchange-Organization-*`` field the sender wrote, and transport stamps
    ``AuthAs`` — Internal for a sender Exchange authenticated, Anonymous otherwise."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    head = _EXCHANGE_ORG.sub(b"", head + b"\r\n").removesuffix(b"\r\n")
    stamp = b"X-MS-Exchange-Organization-AuthAs: " + (b"Internal" if internal else b"Anonymous")
    return stamp + b"\r\n" + head + sep + body


def as_submitted(mail: MailServer, raw: bytes, sender: str) -> bytes:
    """The bytes :func:`submit` would deliver, for a test that must bypass the relay
    (IMAP APPEND of a mail the relay would refuse)."""
    return stamp(raw, sender, sender, mail.relay.hosted_domains)


def reply(
    request: bytes,
    body: str,
    *,
    sender: str = F1,
    display: str = "A. Jansen",
    subject: str | None = None,
    html: bool = False,
    extra_headers: str = "",
) -> bytes:
    """An Outlook-style reply: the new text on top, then the quoted request."""
    req = parse(request)
    quoted = body_text(request)
    subj = subject if subject is not None else f"RE: {req['Subject']}"
    head = (
        f'From: "{display}" <{sender}>\r\nTo: {MAILBOX}\r\nSubject: {subj}\r\n'
        f"Message-ID: <reply-{marker()}@gemeente.example>\r\nIn-Reply-To: {req['Message-ID']}\r\n"
        f"{extra_headers}MIME-Version: 1.0\r\n"
    )
    outlook_header = (
        "Van: Meldpunt vreemdverhaal <vreemdverhaal@gemeente.example>\r\n"
        "Verzonden: maandag 23 november 2026 10:13\r\n"
        f"Aan: {F1}\r\nOnderwerp: {req['Subject']}\r\n"
    )
    if html:
        html_body = (
            f"<html><body><div>{body.replace(chr(10), '<br>')}</div>"
            '<div id="divRplyFwdMsg"><hr><b>Van:</b> Meldpunt</div>'
            f"<div><pre>{quoted}</pre></div></body></html>"
        )
        return (
            head + "Content-Type: text/html; charset=utf-8\r\n\r\n" + html_body + "\r\n"
        ).encode()
    text = (
        body.replace("\n", "\r\n")
        + "\r\n\r\nMet vriendelijke groet,\r\nAnneke\r\n\r\n"
        + outlook_header
        + "\r\n"
        + quoted.replace("\n", "\r\n")
    )
    return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text + "\r\n").encode()


def parse(raw: bytes) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(raw)  # type: ignore[return-value]


def body_text(raw: bytes) -> str:
    m = parse(raw)
    part = m.get_body(preferencelist=("plain",))
    return part.get_content() if part is not None else ""  # type: ignore[no-any-return]


class Installation:
    """inboxd configured in ``root`` (``root/inboxd.toml``, its state in
    ``root/state``), and what a test reads back from it: one definition for
    :class:`World`, the in-process office of ``test_workflows.py`` and the contract
    tests."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "inboxd.toml"

    def cfg(self) -> config.Config:
        return config.load(str(self.config_path))

    def store(self) -> Store:
        """The store as a fresh process opens it (the caller closes it)."""
        cfg = self.cfg()
        return SqliteStore(cfg.state_dir, Keyring.from_files(cfg.crypto.key_files))

    @contextlib.contextmanager
    def reading(self) -> Iterator[Store]:
        """:meth:`store`, closed after the ``with`` block."""
        s = self.store()
        try:
            yield s
        finally:
            s.close()

    def outbox_size(self) -> int:
        with self.reading() as s:
            return s.outbox_size()

    def state_bytes(self) -> bytes:
        """Every file of the state directory, concatenated: for markers that must be
        absent (the store holds them encrypted or not at all)."""
        return b"".join(p.read_bytes() for p in (self.root / "state").rglob("*") if p.is_file())


@dataclass
class World(Installation):
    mail: MailServer
    root: Path
    options: dict[str, Any] = field(default_factory=dict)
    log: io.StringIO = field(default_factory=io.StringIO)
    now: float = field(default_factory=time.time)

    def write_config(self, **overrides: Any) -> None:
        """The suite's configuration (:func:`config_text`) against its servers; the
        options stay for the next call. ``idle``, ``poll`` and ``retain`` are
        ``[mailbox]`` settings, the others :data:`DEFAULTS`."""
        self.options.update(overrides)
        options = dict(self.options)
        mailbox = {
            "idle": options.pop("idle", True),
            "poll_interval": options.pop("poll", "60s"),
            "retain_in_mailbox": options.pop("retain", "queued"),
        }
        sections = imap_sections(
            imap_port=self.mail.imap_tls_port,
            smtp_port=self.mail.smtp_port,
            ca=self.mail.ca_file,
            password_file=self.root / "imap-password",
            smtp_password_file=self.root / "smtp-password",
            **mailbox,
        )
        self.config_path.write_text(config_text(self.root, sections, **options))

    def setup(self) -> World:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        generate_key_file(self.root / "master-key")
        for name in ("imap-password", "smtp-password"):
            p = self.root / name
            p.write_text(self.mail.password(MAILBOX) + "\n")
            p.chmod(0o600)
        self.write_config()
        logs.configure("json", "debug", stream=self.log)
        return self

    def clock(self) -> float:
        return self.now

    def app(self) -> App:
        return build(self.cfg(), clock=self.clock)

    def command(self, raw: bytes, sender: str = F1) -> None:
        """A functionaris' reply, submitted as they would (see :func:`submit`), and
        everything it causes carried out."""
        submit(self.mail, raw, sender)
        self.until_quiet()

    def once(self) -> int:
        from inboxd.daemon import once

        return once(self.app())

    def until_quiet(self, rounds: int = 6) -> None:
        """Run ``once`` until nothing is left to do (mail in, outbox out)."""
        for _ in range(rounds):
            self.once()
            if not self.mail.messages(MAILBOX) and self.outbox_size() == 0:
                return

    def status(self) -> dict[str, Any]:
        out = self.cli("status", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "inboxd", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )

    def log_text(self) -> str:
        return self.log.getvalue()


def assert_absent(mark: str, *, where: str, data: bytes | str) -> None:
    needle_b = mark.encode()
    hay = data if isinstance(data, bytes) else data.encode()
    assert needle_b not in hay, f"marker {mark} found in {where}"
    assert needle_b.lower() not in hay.lower(), f"marker {mark} (case-folded) found in {where}"
