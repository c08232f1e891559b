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
from email import policy
from pathlib import Path

from inboxd import logs
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


def _say(text: str = "") -> None:
    print(textwrap.fill(text, 88) if text else "")


def _show(title: str, raw: bytes) -> None:
    msg = email.message_from_bytes(raw, policy=policy.default)
    print(f"  ┌─ {title}")
    print(f"  │ Van: {msg['From']}")
    print(f"  │ Aan: {msg['To']}")
    print(f"  │ Onderwerp: {msg['Subject']}")
    body = msg.get_body(preferencelist=("plain",))
    text = body.get_content() if body is not None else ""
    for line in text.strip().splitlines()[:14]:
        print(f"  │ {line}")
    attachments = [p.get_content_type() for p in msg.iter_attachments()]
    if attachments:
        print(f"  │ [bijlage: {', '.join(attachments)}]")
    print("  └─")


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
    logbuf = io.StringIO()
    logs.configure("json", "info", stream=logbuf)
    try:
        from inboxd.crypto import generate_key_file

        for sub in ("new", "cur", "tmp"):
            (root / "vreemdverhaal" / sub).mkdir(parents=True, exist_ok=True)
        generate_key_file(root / "master-key")
        (root / "inboxd.toml").write_text(CONFIG.format(root=root))
        _say(
            f"Een wegwerpwereld in {root}: een Maildir als mailbox vreemdverhaal@gemeente.example, een map per ontvanger voor wat inboxd verstuurt, een nieuwe hoofdsleutel."
        )
        _say()
        _say(
            "1. Een collega aan de balie meldt wat ze zag. (Het woord "
            + MARKER
            + " staat in onderwerp en tekst, zodat we het straks kunnen zoeken.)"
        )
        deliver(root, "vreemdverhaal", SIGNAL.encode())
        # deliver() wrote into root/vreemdverhaal/new: the signals mailbox itself.
        _once(root)
        left = list((root / "vreemdverhaal" / "new").iterdir()) + list(
            (root / "vreemdverhaal" / "cur").iterdir()
        )
        _say(
            f"   inboxd heeft het signaal versleuteld opgeslagen en het origineel uit de mailbox verwijderd ({len(left)} berichten over)."
        )
        _say()
        _say("2. De collega krijgt een ontvangstbevestiging — met referentie, zonder de inhoud:")
        ack = _inbox(root, REPORTER)
        _show("bevestiging aan de melder", ack[-1])
        assert MARKER.encode() not in ack[-1], "the acknowledgement must not repeat the signal"
        _say()
        _say(
            "3. Beide aandachtsfunctionarissen krijgen een triageverzoek, met de sleutel in het onderwerp en het origineel als bijlage:"
        )
        request = _inbox(root, FUNCTIONARIS)[-1]
        _show("triageverzoek aan a.jansen", request)
        _say()
        _say(
            "4. A. Jansen antwoordt vanuit Outlook, boven het geciteerde verzoek: KEDO en VORM arbeid."
        )
        deliver(root, "vreemdverhaal", _reply(request, "KEDO\r\nVORM arbeid"))
        _once(root)
        _once(root)
        _show("bevestiging aan de functionaris", _inbox(root, FUNCTIONARIS)[-2])
        _say()
        _say("5. KEDO ontvangt het signaal, ongewijzigd als bijlage:")
        kedo = _inbox(root, "intake-kedo@gemeente.example")
        _show("doorgezet naar KEDO", kedo[-1])
        _say(
            f"   Het woord {MARKER} zit in wat KEDO ontving: {'ja' if MARKER.encode() in kedo[-1] else 'NEE'}."
        )
        _say()
        _say("6. De collega krijgt een algemene terugkoppeling, zonder details:")
        feedback = _inbox(root, REPORTER)[-1]
        _show("terugkoppeling aan de melder", feedback)
        _say("   en de functionarissen horen dat het signaal is verwijderd:")
        _show("afgehandeld", _inbox(root, FUNCTIONARIS)[-1])
        _say()
        _say("7. Het bewijs: nergens bij het meldpunt staat nog iets van het signaal.")
        from inboxd import config
        from inboxd.crypto import Keyring
        from inboxd.store import SqliteStore

        cfg = config.load(str(root / "inboxd.toml"))
        store = SqliteStore(cfg.state_dir, Keyring.from_files(cfg.crypto.key_files))
        open_count = sum(store.counts_by_state().values())
        import datetime as dt

        from inboxd.admin import stats_table

        year = dt.datetime.now(dt.UTC).year
        table = stats_table(store.stats_rows(year), store.stats_rows(year - 1), year, 0)
        store.close()
        state_bytes = _everything_under(root / "state")
        mailbox_bytes = _everything_under(root / "vreemdverhaal")
        checks = [
            ("open signalen in de opslag", str(open_count), open_count == 0),
            (
                f"'{MARKER}' in de opslag (ruwe bytes, WAL incl.)",
                "nee" if MARKER.encode() not in state_bytes else "JA",
                MARKER.encode() not in state_bytes,
            ),
            (
                f"'{MARKER}' in de mailbox vreemdverhaal",
                "nee" if MARKER.encode() not in mailbox_bytes else "JA",
                MARKER.encode() not in mailbox_bytes,
            ),
            (
                f"'{MARKER}' of het adres van de melder in de logs",
                "nee"
                if (MARKER in logbuf.getvalue() or REPORTER in logbuf.getvalue()) is False
                else "JA",
                MARKER not in logbuf.getvalue() and REPORTER not in logbuf.getvalue(),
            ),
            (
                f"'{MARKER}' in bevestiging of terugkoppeling",
                "nee" if all(MARKER.encode() not in m for m in _inbox(root, REPORTER)) else "JA",
                all(MARKER.encode() not in m for m in _inbox(root, REPORTER)),
            ),
        ]
        for label, value, ok in checks:
            print(f"   {'✔' if ok else '✘'} {label}: {value}")
        _say()
        _say(
            "Wat overblijft zijn anonieme tellingen (inboxd stats): maand × bron × vorm × uitkomst."
        )
        print(textwrap.indent(table, "   "))
        return 0 if all(ok for *_, ok in checks) else 1
    finally:
        logs.configure("json", "info")
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
