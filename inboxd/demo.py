"""``inboxd demo``: the whole life of a signal in a throw-away local world.

Everything is real except the network: a Maildir as the vreemdverhaal mailbox, a
Maildir per recipient for what inboxd sends, a fresh master key and store. The
narration shows what each person would see — and, at the end, that nothing of the
signal is left.
"""

from __future__ import annotations

import email
import io
import shutil
import tempfile
import textwrap
from dataclasses import dataclass
from email import policy
from pathlib import Path
from typing import Any

from inboxd import logs
from inboxd.templates import Templates, shipped
from inboxd.transport.maildir import deliver

MARKER = "ZEBRA-7731"
REPORTER = "collega@gemeente.example"
FUNCTIONARIS = "a.jansen@gemeente.example"

CONFIG = """\
state_dir = "{root}/state"
language = "nl"
reference_prefix = "VV"

[mailbox]
backend = "maildir"
path = "{root}/vreemdverhaal"

[smtp]
transport = "maildir"
path = "{root}/post"
from = "Meldpunt vreemdverhaal <vreemdverhaal@gemeente.example>"

[crypto]
key_files = ["{root}/master-key"]

[admin]
socket = "{root}/admin.sock"

[reporters]
ack_domains = ["gemeente.example"]

[triage]
functionarissen = ["a.jansen@gemeente.example", "b.devries@gemeente.example"]
# A Maildir on this machine: no mail server stamps who sent a reply, so the demo
# accepts commands without that evidence. Never in production.
allow_unauthenticated = true

[destinations.kedo]
label = "KEDO (slachtofferspoor)"
address = "intake-kedo@gemeente.example"

[destinations.riec]
label = "RIEC Informatieplein (daderspoor)"
address = "informatieplein@riec.example"
"""

SIGNAL = f"""\
From: Collega Balie <{REPORTER}>
To: vreemdverhaal@gemeente.example
Subject: Vreemde situatie bij inschrijving ({MARKER})
Message-ID: <demo-signal-1@gemeente.example>
Date: Mon, 23 Nov 2026 10:12:00 +0100
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Vanochtend kwamen drie mannen zich inschrijven op hetzelfde adres ({MARKER}).
Een andere man voerde het woord en hield hun paspoorten vast. Ze zeiden dat ze
in de kassen werken en geen loon krijgen tot hun schuld is afbetaald.
"""


# The demo's world speaks Dutch (its configuration says so); so does its narration.
LANGUAGE = "nl"


@dataclass(frozen=True)
class _World:
    """The demo's throw-away world: its folder, the narration's wording and what the
    daemon logged while it ran."""

    root: Path
    text: Templates
    logged: io.StringIO

    def phrase(self, macro: str, **values: Any) -> str:
        return self.text.phrase("demo", macro, **values)

    def say(self, macro: str = "", *, indent: bool = False, **values: Any) -> None:
        """One sentence of the narration (or, without a macro, an empty line)."""
        text = self.phrase(macro, **values) if macro else ""
        print(textwrap.fill(("   " if indent else "") + text, 88) if text else "")

    def show(self, title: str, raw: bytes) -> None:
        """A mail as its recipient would see it: headers, the start of the text and
        what is attached."""
        msg = email.message_from_bytes(raw, policy=policy.default)
        print(f"  ┌─ {self.phrase(title)}")
        print(f"  │ {self.phrase('mail_from')}: {msg['From']}")
        print(f"  │ {self.phrase('mail_to')}: {msg['To']}")
        print(f"  │ {self.phrase('mail_subject')}: {msg['Subject']}")
        body = msg.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        for line in text.strip().splitlines()[:14]:
            print(f"  │ {line}")
        attachments = [p.get_content_type() for p in msg.iter_attachments()]
        if attachments:
            print(f"  │ {self.phrase('attachments', types=attachments)}")
        print("  └─")

    def inbox(self, who: str) -> list[bytes]:
        return _inbox(self.root, who)

    def run_once(self) -> None:
        _once(self.root)


def _inbox(root: Path, who: str) -> list[bytes]:
    d = root / "post" / who / "new"
    return (
        [p.read_bytes() for p in sorted(d.iterdir(), key=lambda p: p.stat().st_mtime)]
        if d.is_dir()
        else []
    )


def _once(root: Path) -> None:
    from inboxd import config
    from inboxd.app import build
    from inboxd.daemon import once

    once(build(config.load(str(root / "inboxd.toml"))))


def _reply(request: bytes, body: str) -> bytes:
    req = email.message_from_bytes(request, policy=policy.default)
    part = req.get_body(preferencelist=("plain",))
    text = part.get_content() if part is not None else ""
    quoted = "\n".join("> " + line for line in text.splitlines())
    return (
        f"From: A. Jansen <{FUNCTIONARIS}>\r\n"
        "To: vreemdverhaal@gemeente.example\r\n"
        f"Subject: RE: {req['Subject']}\r\n"
        "Message-ID: <demo-reply-1@gemeente.example>\r\n"
        f"In-Reply-To: {req['Message-ID']}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}\r\n\r\nMet vriendelijke groet,\r\nAnneke Jansen\r\n\r\n"
        "Van: Meldpunt vreemdverhaal <vreemdverhaal@gemeente.example>\r\n"
        f"Verzonden: maandag 23 november 2026 10:13\r\nAan: {FUNCTIONARIS}\r\n"
        f"Onderwerp: {req['Subject']}\r\n\r\n{quoted}\r\n"
    ).encode()


def _everything_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def run_demo(keep: str | None = None) -> int:
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="inboxd-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    logged = io.StringIO()
    logs.configure("json", "info", stream=logged)
    try:
        world = _build_world(root, logged)
        _report(world)
        request = _acknowledge_and_ask(world)
        _decide(world, request)
        _end(world)
        return _prove(world)
    finally:
        logs.configure("json", "info")
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _build_world(root: Path, logged: io.StringIO) -> _World:
    """A Maildir for the mailbox, a fresh master key and the configuration."""
    from inboxd.crypto import generate_key_file

    for sub in ("new", "cur", "tmp"):
        (root / "vreemdverhaal" / sub).mkdir(parents=True, exist_ok=True)
    generate_key_file(root / "master-key")
    (root / "inboxd.toml").write_text(CONFIG.format(root=root))
    world = _World(root, shipped(LANGUAGE), logged)
    world.say("world", root=root)
    world.say()
    return world


def _report(world: _World) -> None:
    """1. A colleague mails a signal; inboxd takes it out of the mailbox."""
    world.say("signal_sent", marker=MARKER)
    deliver(world.root, "vreemdverhaal", SIGNAL.encode())
    # deliver() wrote into root/vreemdverhaal/new: the signals mailbox itself.
    world.run_once()
    mailbox = world.root / "vreemdverhaal"
    left = list((mailbox / "new").iterdir()) + list((mailbox / "cur").iterdir())
    world.say("signal_stored", indent=True, left=len(left))
    world.say()


def _acknowledge_and_ask(world: _World) -> bytes:
    """2 and 3. The acknowledgement, and the triage request it returns."""
    world.say("acknowledged")
    ack = world.inbox(REPORTER)
    world.show("acknowledgement", ack[-1])
    assert MARKER.encode() not in ack[-1], "the acknowledgement must not repeat the signal"
    world.say()
    world.say("requested")
    request = world.inbox(FUNCTIONARIS)[-1]
    world.show("request", request)
    world.say()
    return request


def _decide(world: _World, request: bytes) -> None:
    """4 and 5. The functionaris answers with commands; KEDO gets the signal."""
    world.say("replied")
    deliver(world.root, "vreemdverhaal", _reply(request, "KEDO\r\nVORM arbeid"))
    world.run_once()
    world.run_once()
    world.show("result", world.inbox(FUNCTIONARIS)[-2])
    world.say()
    world.say("forwarded")
    kedo = world.inbox("intake-kedo@gemeente.example")
    world.show("forward", kedo[-1])
    world.say("marker_forwarded", indent=True, marker=MARKER, found=MARKER.encode() in kedo[-1])
    world.say()


def _end(world: _World) -> None:
    """6. The general feedback, and the functionarissen's notice of the end."""
    world.say("fed_back")
    world.show("feedback", world.inbox(REPORTER)[-1])
    world.say("closed", indent=True)
    world.show("closing", world.inbox(FUNCTIONARIS)[-1])
    world.say()


def _prove(world: _World) -> int:
    """7. Nothing of the signal is left; only the anonymous counts are. 0 if so."""
    world.say("proof")
    open_count, table = _what_the_store_holds(world.root)
    state = _everything_under(world.root / "state")
    mailbox = _everything_under(world.root / "vreemdverhaal")
    logged = world.logged.getvalue()
    marker = MARKER.encode()
    checks = [
        (world.phrase("open_signals"), str(open_count), open_count == 0),
        _absent(world, "marker_in_store", marker not in state),
        _absent(world, "marker_in_mailbox", marker not in mailbox),
        _absent(world, "marker_in_logs", MARKER not in logged and REPORTER not in logged),
        _absent(world, "marker_in_mails", all(marker not in m for m in world.inbox(REPORTER))),
    ]
    for label, value, ok in checks:
        print(f"   {'✔' if ok else '✘'} {label}: {value}")
    world.say()
    world.say("what_is_left")
    print(textwrap.indent(table, "   "))
    return 0 if all(ok for *_, ok in checks) else 1


def _absent(world: _World, label: str, absent: bool) -> tuple[str, str, bool]:
    """One check of the proof: its label, the answer shown and whether it holds."""
    return world.phrase(label, marker=MARKER), world.phrase("found", found=not absent), absent


def _what_the_store_holds(root: Path) -> tuple[int, str]:
    """The number of open signals and this year's statistics table."""
    import datetime as dt

    from inboxd import config
    from inboxd.admin import stats_table
    from inboxd.app import open_store
    from inboxd.crypto import Keyring

    cfg = config.load(str(root / "inboxd.toml"))
    store = open_store(cfg, Keyring.from_files(cfg.crypto.key_files))
    try:
        open_count = sum(store.counts_by_state().values())
        year = dt.datetime.now(dt.UTC).year
        rows, previous = store.stats_rows(year), store.stats_rows(year - 1)
        table = stats_table(rows, previous, year, 0, shipped(LANGUAGE))
    finally:
        store.close()
    return open_count, table
