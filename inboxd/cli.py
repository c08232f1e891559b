"""The command line: one clear line and an exit code for every failure, never a
traceback (2: usage or configuration, 3: connection or authentication)."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_CONFIG, EXIT_CONNECT = 0, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"inboxd: {message} (see 'inboxd --help')\n")
        raise SystemExit(EXIT_CONFIG)


# What the commands that ask the running service add to their description.
_ADMIN_NOTE = (
    " Asks the running service over its admin socket; without one, reads the "
    "state directory directly."
)


def _parser() -> _Parser:
    from inboxd import __version__

    common = _common_options()
    p = _Parser(prog="inboxd", description="The vreemdverhaal mailbox daemon.", parents=[common])
    p.add_argument("--version", action="version", version=f"inboxd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    commands = _Commands(sub, common)
    _service_commands(commands)
    _admin_commands(commands)
    _key_commands(commands)
    _document_commands(commands)
    _demo_command(commands)
    return p


def _common_options() -> _Parser:
    """The options every command takes, before and after its name. SUPPRESS: a
    command's parser must not reset what was given before it (argparse would put its
    own default over `inboxd --config X status`); the defaults: COMMON_DEFAULTS."""
    common = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file (default: $INBOXD_CONFIG or /etc/inboxd/inboxd.toml)",
    )
    common.add_argument("--log-format", choices=["json", "console"], help="default: json")
    common.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="default: info for run and once, warning for the others",
    )
    return common


# argparse's own type for a set of subcommands (typeshed names it; argparse does not export it).
_Actions = argparse._SubParsersAction


class _Commands:
    """Adds a command, or an action of a command, that takes the common options."""

    def __init__(self, sub: _Actions[_Parser], common: _Parser) -> None:
        self.sub = sub
        self.common = common

    def add(self, name: str, summary: str, description: str) -> _Parser:
        return self.action(self.sub, name, summary, description)

    def actions(self, parser: _Parser, dest: str) -> _Actions[_Parser]:
        actions = parser.add_subparsers(dest=dest, metavar="ACTION", parser_class=_Parser)
        actions.required = True
        return actions

    def action(
        self, actions: _Actions[_Parser], name: str, summary: str, description: str
    ) -> _Parser:
        parser: _Parser = actions.add_parser(
            name, parents=[self.common], help=summary, description=description
        )
        return parser


def _service_commands(commands: _Commands) -> None:
    commands.add(
        "run",
        "the daemon, in the foreground",
        "Run the daemon in the foreground (as systemd does): wait for mail, take it in, "
        "carry out commands, send what is due; SIGTERM finishes the message in hand.",
    )
    commands.add(
        "once",
        "everything due now, then exit",
        "Do everything that is due now (fetch, commands, forwards, deletions, reminders, "
        "digest) and exit: 0, or 3 when a server could not be reached (one line on stderr).",
    )
    commands.add(
        "check",
        "validate configuration and keys, log in to the servers",
        "Check the configuration, the master keys and certificates, and log in to the "
        "mailbox and the outgoing mail server; nothing is sent. Exit 0, 2 or 3.",
    )


def _admin_commands(commands: _Commands) -> None:
    st = commands.add(
        "status",
        "queue depth, oldest signal, last fetch/send/error",
        "Show signals per state, flags, the oldest open signal, the outbox, the last "
        "fetch, send and error, the master key ids and the version." + _ADMIN_NOTE,
    )
    st.add_argument("--json", action="store_true", help="one JSON object, for monitoring")
    stats = commands.add(
        "stats",
        "anonymous counts per year",
        "Anonymous counts of a year against the year before: per month, source, form, "
        "outcome and time to decision." + _ADMIN_NOTE,
    )
    stats.add_argument("--year", type=int, help="default: this year")
    stats.add_argument("--format", choices=["table", "csv", "json", "html"], default="table")
    stats.add_argument(
        "--suppress-below", type=int, default=0, metavar="N", help="show counts under N as <N"
    )
    stats.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    q = commands.add(
        "queue",
        "open signals (metadata) / audited purge",
        "The queue of open signals. Actions: 'list' shows their metadata (never "
        "content); 'purge REF --yes' deletes one for good, without forwarding or "
        "feedback, and audits it." + _ADMIN_NOTE,
    )
    qs = commands.actions(q, "queue_command")
    commands.action(
        qs,
        "list",
        "reference, state, age, flags, form, destinations of each open signal",
        "List the open signals: reference, state, age, flags, form, "
        "destinations, hold. Never content.",
    )
    purge = commands.action(
        qs,
        "purge",
        "delete one open signal for good (needs --yes; audited)",
        "Delete one open signal for good, without forwarding or feedback; it "
        "is counted with outcome 'verwijderd' and the action is audited.",
    )
    purge.add_argument("ref", help="the signal's reference, e.g. VV-7K3M-9QXF")
    purge.add_argument("--yes", action="store_true", help="really delete it")


def _key_commands(commands: _Commands) -> None:
    k = commands.add(
        "keys",
        "master keys: generate / rotate",
        "Master keys. Actions: 'generate --out PATH' writes a new key file (0600, never "
        "overwrites); 'rotate' re-wraps every data key under the newest configured key "
        "(asks the running service, which holds the keys).",
    )
    ks = commands.actions(k, "keys_command")
    gen = commands.action(
        ks,
        "generate",
        "write a new master key file (0600, never overwrites)",
        "Write a new master key to PATH (mode 0600); an existing file is never overwritten.",
    )
    gen.add_argument("--out", required=True, metavar="PATH")
    commands.action(
        ks,
        "rotate",
        "re-wrap every data key under the newest master key",
        "Re-wrap every data key under the newest master key in crypto.key_files, "
        "in small transactions; an interrupted rotation is simply run again." + _ADMIN_NOTE,
    )


def _document_commands(commands: _Commands) -> None:
    guide = commands.add(
        "guide",
        "the guide for reporters (melder) or the functionarissen's command card",
        "Print a guide for the people who use inboxd, from this configuration: "
        "'melder' for colleagues who report a signal, 'functionaris' for the command card.",
    )
    guide.add_argument("audience", choices=["melder", "functionaris"])
    guide.add_argument("--format", choices=["text", "html"], default="text")
    reg = commands.add(
        "privacy-register",
        "the processing-register entry (GDPR/AVG art. 30) from the configuration and the store",
        "Print the entry for the processing register (GDPR/AVG article 30): "
        "purposes, data subjects and data, recipients, retention as configured and as "
        "measured in the store, security measures. Nothing is decrypted.",
    )
    reg.add_argument("--format", choices=["text", "json"], default="text")
    for document in (guide, reg):
        document.add_argument(
            "--language", choices=["nl", "en"], help="default: the configured language"
        )
        document.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")


def _demo_command(commands: _Commands) -> None:
    demo = commands.add(
        "demo",
        "the life of a signal in a throw-away local world",
        "Show the whole life of a signal, narrated, in a local Maildir world of its own "
        "(no mail server, no configuration: --config is refused). The world is removed "
        "afterwards, unless --keep DIR builds it in DIR and keeps it to look at.",
    )
    demo.add_argument("--keep", metavar="DIR", help="build the demo world in DIR and keep it")


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"inboxd: {message}\n")
    return code


COMMON_DEFAULTS = {"config": None, "log_format": "json", "log_level": None}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    args = _parser().parse_args(argv)
    for key, value in COMMON_DEFAULTS.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    from inboxd import logs

    # The daemon's log lines are its output (journald); every other command prints for
    # a person on stdout, so its log lines go to stderr.
    daemon = args.command in ("run", "once")
    level = args.log_level or ("info" if daemon else "warning")
    logs.configure(args.log_format, level, sys.stdout if daemon else sys.stderr)
    from inboxd.config import ConfigError
    from inboxd.crypto import KeyFileError
    from inboxd.mailbox.base import MailboxError
    from inboxd.smime import CertificateError
    from inboxd.transport.base import SendError

    try:
        return _dispatch(args)
    except ConfigError as exc:
        return _fail(
            f"configuration error in {exc.path}: {exc.key + ': ' if exc.key else ''}{exc.problem}",
            EXIT_CONFIG,
        )
    except CertificateError as exc:
        return _fail(f"S/MIME: {exc}; fix the certificate path in the configuration", EXIT_CONFIG)
    except KeyFileError as exc:
        return _fail(f"master key {exc.path}: {exc.problem}; {exc.fix}", EXIT_CONFIG)
    except MailboxError as exc:
        return _fail(f"mailbox: {exc.reason}", EXIT_CONNECT)
    except SendError as exc:
        return _fail(f"smtp: {exc.reason}", EXIT_CONNECT)
    except KeyboardInterrupt:
        return 130
    except sqlite3.DatabaseError as exc:
        return _fail(
            f"the store in the configured state_dir cannot be used ({type(exc).__name__}); is it an inboxd store? check state_dir",
            EXIT_CONFIG,
        )
    except OSError as exc:
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        return _fail(
            f"cannot use{where} ({type(exc).__name__}: {exc.strerror or 'error'}); check the path and its permissions",
            EXIT_CONFIG,
        )
    except Exception as exc:
        # Last resort: still one line, and no message text that could quote mail.
        return _fail(
            f"unexpected {type(exc).__name__}; run again with --log-level debug and report it", 1
        )


def _dispatch(args: argparse.Namespace) -> int:
    from inboxd import config

    if args.command == "keys" and args.keys_command == "generate":
        return _keys_generate(Path(args.out))
    if args.command == "demo":
        from inboxd.demo import run_demo

        if args.config:
            return _fail(
                "demo builds a world of its own and takes no --config; use --keep DIR to "
                "keep that world, or 'inboxd once --config PATH' for yours",
                EXIT_CONFIG,
            )

        return run_demo(keep=args.keep)
    cfg = config.load(args.config)
    if args.command == "guide":
        from inboxd import documents, guides

        documents.write(guides.render(cfg, args.audience, args.format, args.language), args.out)
        return EXIT_OK
    if args.command == "check":
        return _check(cfg)
    if args.command in ("status", "stats", "queue", "privacy-register") or (
        args.command == "keys" and args.keys_command == "rotate"
    ):
        return _admin(cfg, args)
    import os

    from inboxd.app import build

    config.check_unit_directories(cfg, os.environ)
    app = build(cfg)
    if args.command == "once":
        from inboxd.daemon import once

        problems: list[str] = []
        code = once(app, problems)
        if problems:
            return _fail("; ".join(problems), code)
        return code
    from inboxd.daemon import Daemon

    return Daemon(app).run()


def _keys_generate(out: Path) -> int:
    from inboxd.crypto import generate_key_file

    try:
        key_id = generate_key_file(out)
    except FileExistsError:
        return _fail(
            f"{out} exists; a key file is never overwritten (choose another --out)", EXIT_CONFIG
        )
    except OSError as exc:
        return _fail(
            f"cannot write {out} ({type(exc).__name__}); check the folder exists and is writable",
            EXIT_CONFIG,
        )
    from inboxd.templates import shipped

    # No configuration here, so the shipped wording (text/admin.txt is the same for
    # every language).
    print(shipped("en").phrase("admin", "key_written", key_id=key_id, path=str(out)))
    return EXIT_OK


def _check(cfg: object) -> int:
    from inboxd.backends.connect import Backends, explain_failure, token_sources
    from inboxd.config import Config
    from inboxd.crypto import Keyring
    from inboxd.mailbox.base import MailboxError
    from inboxd.tokens import TokenError
    from inboxd.transport.base import SendError

    assert isinstance(cfg, Config)
    keyring = Keyring.from_files(cfg.crypto.key_files)
    print(f"configuration {cfg.source_path}: ok")
    print(
        f"master keys: {', '.join(k.key_id for k in keyring.keys)} (newest {keyring.newest.key_id})"
    )
    from inboxd.smime import load_certificate

    certs = [*cfg.triage.certificates.values()]
    certs += [d.certificate for d in cfg.destinations.values() if d.certificate]
    for path in certs:
        load_certificate(path)
    if certs:
        print(f"S/MIME certificates: {len(certs)} ok")
    # Tokens first: a refused secret is then named as such, not as a failed login.
    for section, token in token_sources(cfg):
        try:
            token()
        except TokenError as exc:
            return _fail(explain_failure(cfg, f"token:{section}", exc), EXIT_CONNECT)
        print(f"token for [{section}]: ok")
    backends = Backends(cfg)
    mailbox = backends.mailbox()
    try:
        mailbox.open()
        reach = mailbox.recoverable_items_reach()
    except MailboxError as exc:
        return _fail(explain_failure(cfg, "mailbox", exc), EXIT_CONNECT)
    finally:
        mailbox.close()
    print(f"mailbox ({cfg.mailbox.backend}): logged in")
    if reach is not None:
        parts = ", ".join(f"{place} {how}" for place, how in reach.items())
        print(
            f"Recoverable Items after a hard delete: {parts}; what inboxd cannot see there "
            'it cannot verify (see the README, "What hard delete means on your server")'
        )
    transport = backends.transport()
    try:
        transport.check()
    except SendError as exc:
        return _fail(explain_failure(cfg, "transport", exc), EXIT_CONNECT)
    finally:
        transport.close()
    note = {
        "graph": " (Mail.Send is proven by the first mail sent)",
        "ews": " (sending is proven by the first mail sent)",
    }.get(cfg.smtp.transport, "")
    print(f"outgoing mail ({cfg.smtp.transport}): ok, nothing sent{note}")
    return EXIT_OK


def _admin(cfg: object, args: argparse.Namespace) -> int:
    """Ask the running service over its admin socket; only when none is running, work
    on the state directory directly (which then needs root, and for a rotation the
    key files)."""
    from inboxd import control
    from inboxd.config import Config

    assert isinstance(cfg, Config)
    try:
        reply = control.call(cfg.admin.socket, control.request_of(args))
    except control.NotRunning:
        return _offline(cfg, args)
    except control.Unreachable as exc:
        return _fail(exc.reason, EXIT_CONNECT)
    sys.stderr.write(reply.stderr)
    if reply.code == EXIT_OK:
        _deliver(reply.stdout, args)
    else:
        sys.stdout.write(reply.stdout)
    return reply.code


def _deliver(text: str, args: argparse.Namespace) -> None:
    """stdout, or the file of ``--out`` — written here, by the admin's own shell, never
    by the service."""
    from inboxd import documents

    documents.write(text, getattr(args, "out", None))


def _offline(cfg: object, args: argparse.Namespace) -> int:
    import io
    import os

    from inboxd import admin
    from inboxd.app import open_store
    from inboxd.config import Config
    from inboxd.crypto import Keyring

    assert isinstance(cfg, Config)
    # Only a rotation decrypts anything; the other commands never need the key.
    rotating = args.command == "keys"
    keyring = Keyring.from_files(cfg.crypto.key_files) if rotating else Keyring.locked()
    store = open_store(cfg, keyring)
    out = io.StringIO()
    try:
        code = admin.dispatch(cfg, store, keyring, args, uid=os.getuid(), out=out, err=sys.stderr)
    finally:
        store.close()
    if code == EXIT_OK:
        _deliver(out.getvalue(), args)
    else:
        sys.stdout.write(out.getvalue())
    return code
