"""A configured inboxd against the test mail servers: the shared setup of the
end-to-end tests (the servers themselves come from ``conftest.py``)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from servers import AUTHSERV_ID, MailServer
from servers.smtp_relay import stamp

from inboxd import config, logs
from inboxd.app import App, build
from inboxd.crypto import Keyring, generate_key_file
from inboxd.store import SqliteStore

MAILBOX = "vreemdverhaal@gemeente.example"
REPORTER = "melder@gemeente.example"
OUTSIDER = "buiten@extern.example"
F1 = "a.jansen@gemeente.example"
F2 = "b.devries@gemeente.example"
KEDO = "intake-kedo@gemeente.example"
RIEC = "informatieplein@riec.example"
NLA = "inspectie@nla.example"
REPO = Path(__file__).resolve().parent.parent

CONFIG = """\
state_dir = "{root}/state"
language = "{language}"
reference_prefix = "VV"

[mailbox]
backend = "imap"
host = "127.0.0.1"
port = {imap_port}
security = "tls"
ca_file = "{ca}"
username = "{mailbox}"
password_file = "{root}/imap-password"
idle = {idle}
poll_interval = "{poll}"
retain_in_mailbox = "{retain}"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "starttls"
ca_file = "{ca}"
username = "{mailbox}"
password_file = "{root}/smtp-password"
from = "Meldpunt vreemdverhaal <{mailbox}>"

[crypto]
key_files = ["{root}/master-key"]

[reporters]
ack_domains = ["gemeente.example"]
ack_rate_limit = "{rate}"

[sources.mma]
addresses = ["meldingen@meldmisdaadanoniem.example"]

[triage]
functionarissen = ["{f1}", "{f2}"]
include_content = "{include}"
trusted_authserv_ids = {trusted}
allow_unauthenticated = {allow_unauthenticated}
forward_retry_for = "{retry_for}"
request_limit = "{request_limit}"
notice_limit = "{notice_limit}"

[destinations.kedo]
label = "KEDO (slachtofferspoor)"
address = "{kedo}"
certificate = "{kedo_cert}"
test_address = "{kedo_test}"

[destinations.riec]
label = "RIEC Informatieplein (daderspoor)"
address = "{riec}"

[destinations.nla]
label = "Nederlandse Arbeidsinspectie"
address = "{nla}"

[admin]
socket = "{root}/admin.sock"
"""


def config_text(root: Path, *, imap_port: int, smtp_port: int, ca: str, **options: Any) -> str:
    """The suite's one configuration: :data:`CONFIG` with its defaults, ``options``
    overriding them (``extra`` is appended as more TOML)."""
    o = {
        "language": "nl",
        "idle": "true",
        "poll": "60s",
        "retain": "queued",
        "rate": "10/h",
        "include": "full",
        # The suite's relay stamps Authentication-Results as the mail server does.
        "trusted": f'["{AUTHSERV_ID}"]',
        "allow_unauthenticated": "false",
        "retry_for": "24h",
        "request_limit": "10/h",
        "notice_limit": "60/h",
        "kedo_cert": "",
        "kedo_test": "",
        "extra": "",
        **options,
    }
    return CONFIG.format(
        root=root,
        imap_port=imap_port,
        smtp_port=smtp_port,
        ca=ca,
        mailbox=MAILBOX,
        f1=F1,
        f2=F2,
        kedo=KEDO,
        riec=RIEC,
        nla=NLA,
        **o,
    ) + str(o["extra"])


def marker() -> str:
    return "MRK" + uuid.uuid4().hex[:12].upper()


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


@dataclass
class World:
    mail: MailServer
    root: Path
    options: dict[str, Any] = field(default_factory=dict)
    log: io.StringIO = field(default_factory=io.StringIO)
    now: float = field(default_factory=time.time)

    @property
    def config_path(self) -> Path:
        return self.root / "inboxd.toml"

    def write_config(self, **overrides: Any) -> None:
        self.options.update(overrides)
        self.config_path.write_text(
            config_text(
                self.root,
                imap_port=self.mail.imap_tls_port,
                smtp_port=self.mail.smtp_port,
                ca=self.mail.ca_file,
                **self.options,
            )
        )

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

    def cfg(self) -> config.Config:
        return config.load(str(self.config_path))

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

    def store(self) -> SqliteStore:
        cfg = self.cfg()
        return SqliteStore(cfg.state_dir, Keyring.from_files(cfg.crypto.key_files))

    def outbox_size(self) -> int:
        s = self.store()
        try:
            return s.outbox_size()
        finally:
            s.close()

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

    def state_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in (self.root / "state").rglob("*") if p.is_file())

    def log_text(self) -> str:
        return self.log.getvalue()


def assert_absent(mark: str, *, where: str, data: bytes | str) -> None:
    needle_b = mark.encode()
    hay = data if isinstance(data, bytes) else data.encode()
    assert needle_b not in hay, f"marker {mark} found in {where}"
    assert needle_b.lower() not in hay.lower(), f"marker {mark} (case-folded) found in {where}"
