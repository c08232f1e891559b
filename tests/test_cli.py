"""The command line as an operator meets it (docs/contract.md, "Command line"): ``python -m inboxd`` in a
subprocess; every failure is one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "inboxd.example.toml"


def _env(env: dict[str, str] | None) -> dict[str, str]:
    drop = ("INBOXD_CONFIG", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET")
    e = {k: v for k, v in os.environ.items() if k not in drop}
    e.update(env or {})
    return e


def start(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "inboxd", *args],
        cwd=cwd,
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(p: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = p.communicate(timeout=60)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return finish(start(*args, cwd=cwd, env=env))


def one_error_line(p: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert "Traceback" not in p.stderr, p.stderr
    assert "Traceback" not in p.stdout, p.stdout
    assert p.returncode == code, (p.returncode, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("inboxd: ")
    return lines[0]


def make_world(tmp_path: Path) -> Path:
    """The example configuration pointed at a temp dir, with a fresh master key."""
    from inboxd.crypto import generate_key_file

    text = EXAMPLE.read_text(encoding="utf-8").replace("/tmp/inboxd-example", str(tmp_path))
    (tmp_path / "inboxd.toml").write_text(text, encoding="utf-8")
    (tmp_path / "vreemdverhaal" / "new").mkdir(parents=True)
    generate_key_file(tmp_path / "master-key")
    return tmp_path


@pytest.fixture
def world(tmp_path: Path) -> Path:
    return make_world(tmp_path)


# -- usage ------------------------------------------------------------------------------


def test_help(tmp_path: Path) -> None:
    p = run("--help", cwd=tmp_path)
    assert p.returncode == 0
    for command in ("run", "once", "check", "status", "stats", "queue", "keys", "demo"):
        assert command in p.stdout


def test_unknown_command(tmp_path: Path) -> None:
    line = one_error_line(run("frobnicate", cwd=tmp_path))
    assert "frobnicate" in line


def test_no_command(in_process: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    one_error_line(in_process())


def test_unknown_option(in_process: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    line = one_error_line(in_process("status", "--frob"))
    assert "--frob" in line


# -- keys generate -------------------------------------------------------------------------


def test_keys_generate(tmp_path: Path) -> None:
    out = tmp_path / "master-key"
    p = run("keys", "generate", "--out", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert str(out) in p.stdout
    content = out.read_bytes()
    assert content.strip() not in p.stdout.encode()  # the key is never printed

    again = run("keys", "generate", "--out", str(out), cwd=tmp_path)
    line = one_error_line(again)
    assert str(out) in line
    assert out.read_bytes() == content


def test_keys_generate_into_missing_folder(
    tmp_path: Path, in_process: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    out = tmp_path / "no" / "such" / "dir" / "key"
    line = one_error_line(in_process("keys", "generate", "--out", str(out)))
    assert str(out) in line
    assert not out.exists()


def test_keys_generate_needs_out(
    in_process: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    one_error_line(in_process("keys", "generate"))


# -- configuration errors ---------------------------------------------------------------------


def test_status_missing_config(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    line = one_error_line(run("status", "--config", str(missing), cwd=tmp_path))
    assert str(missing) in line


def test_config_from_environment(
    world: Path,
    in_process: Callable[..., subprocess.CompletedProcess[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INBOXD_CONFIG", str(world / "inboxd.toml"))
    p = in_process("status", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["open"] == 0


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


CONFIG_ERRORS: list[tuple[str, str, str, str]] = [
    # (id, old, new, what the line must name)
    ("unknown-top", 'language = "nl"', 'language = "nl"\nbogus = 1', "bogus"),
    ("unknown-section", 'backend = "maildir"', 'backend = "maildir"\nbogus = 1', "mailbox.bogus"),
    ("wrong-type", 'poll_interval = "1s"', 'poll_interval = "1s"\nport = "x"', "mailbox.port"),
    (
        "missing-required",
        'functionarissen = ["a.jansen@gemeente.example", "b.devries@gemeente.example"]',
        "",
        "triage.functionarissen",
    ),
    (
        "inline-secret",
        'backend = "maildir"',
        'backend = "maildir"\npassword = "hunter2"',
        "password_file",
    ),
    ("bad-duration", 'poll_interval = "1s"', 'poll_interval = "soon"', "mailbox.poll_interval"),
    ("bad-rate", 'ack_rate_limit = "10/h"', 'ack_rate_limit = "lots"', "reporters.ack_rate_limit"),
    (
        "bad-cron",
        'digest_cron = "0 9 * * mon-fri"',
        'digest_cron = "every morning"',
        "triage.digest_cron",
    ),
    (
        "security-none",
        'backend = "maildir"',
        'backend = "imap"\nhost = "mail.example"\nusername = "u"\npassword_file = "p"\nsecurity = "none"',
        "mailbox.security",
    ),
    ("maildir-without-path", 'path = "{tmp}/vreemdverhaal"', "", "mailbox.path"),
    ("bad-destination-key", "[destinations.kedo]", '[destinations."KE DO"]', "destinations.KE DO"),
    (
        "bad-address",
        '"b.devries@gemeente.example"]',
        '"victim@x)<attacker@y>"]',
        "triage.functionarissen",
    ),
    ("not-toml", 'language = "nl"', "language = ", "TOML"),
]


@pytest.fixture
def in_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """``inboxd.cli.main`` in this process (a subprocess start costs ~0.4 s; the
    matrix below would take seconds). An uncaught exception fails the test."""
    import logging

    import structlog

    from inboxd.cli import main

    for k in ("INBOXD_CONFIG", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET"):
        monkeypatch.delenv(k, raising=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    try:
        yield call
    finally:
        structlog.reset_defaults()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


@pytest.mark.parametrize(
    ("old", "new", "names"), [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS]
)
def test_each_config_error_is_one_line_exit_2(
    world: Path,
    in_process: Callable[..., subprocess.CompletedProcess[str]],
    old: str,
    new: str,
    names: str,
) -> None:
    cfg = world / "inboxd.toml"
    text = cfg.read_text(encoding="utf-8")
    cfg.write_text(_edit(text, old.replace("{tmp}", str(world)), new), encoding="utf-8")
    line = one_error_line(in_process("status", "--config", str(cfg)))
    assert str(cfg) in line
    assert names in line
    assert "hunter2" not in line


@pytest.mark.parametrize("command", ["check", "once", "status"])
def test_a_template_with_the_token_in_its_subject_is_refused(
    world: Path, in_process: Callable[..., subprocess.CompletedProcess[str]], command: str
) -> None:
    own = world / "own" / "nl"
    own.mkdir(parents=True)
    (own / "triage_request.txt").write_text(
        "Subject: Triageverzoek {{ ref }} [sleutel {{ token }}]\n\n{{ token }}\n", encoding="utf-8"
    )
    cfg = world / "inboxd.toml"
    text = cfg.read_text(encoding="utf-8")
    cfg.write_text(f'templates_dir = "{world / "own"}"\n' + text, encoding="utf-8")
    line = one_error_line(in_process(command, "--config", str(cfg)))
    assert str(cfg) in line and "templates_dir" in line
    assert "nl/triage_request.txt" in line and "body" in line
    # The token in the body is what the shipped templates do: accepted.
    (own / "triage_request.txt").write_text(
        "Subject: Triageverzoek {{ ref }}\n\nsleutel {{ token }}\n", encoding="utf-8"
    )
    assert in_process("status", "--config", str(cfg)).returncode == 0


def test_a_template_that_would_fail_its_mail_is_refused_at_start(
    world: Path, in_process: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """A value inboxd does not give the acknowledgement would make every
    acknowledgement fail to render: refused when the configuration is loaded."""
    ours = world / "own" / "nl"
    ours.mkdir(parents=True)
    (ours / "ack.txt").write_text("Subject: Ontvangen {{ ref }}\n\n{{ melder }}\n", "utf-8")
    cfg = world / "inboxd.toml"
    cfg.write_text(f'templates_dir = "{world / "own"}"\n' + cfg.read_text("utf-8"), "utf-8")
    result = in_process("check", "--config", str(cfg))
    line = one_error_line(result)
    assert result.returncode == 2
    assert str(cfg) in line and "templates_dir" in line and "nl/ack.txt" in line
    assert "{{ melder }}" in line


def test_a_config_error_in_a_real_process(world: Path) -> None:
    cfg = world / "inboxd.toml"
    cfg.write_text("bogus = 1\n" + cfg.read_text(encoding="utf-8"), encoding="utf-8")
    line = one_error_line(run("status", "--config", str(cfg), cwd=world))
    assert str(cfg) in line and "bogus" in line


def test_not_utf8_config(
    world: Path, in_process: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    cfg = world / "inboxd.toml"
    cfg.write_bytes(cfg.read_bytes() + b"\n# \xff\xfe\n")
    line = one_error_line(in_process("status", "--config", str(cfg)))
    assert "UTF-8" in line


def test_key_file_too_open_in_a_real_process(world: Path) -> None:
    key = world / "master-key"
    key.chmod(0o644)
    line = one_error_line(run("keys", "rotate", "--config", str(world / "inboxd.toml"), cwd=world))
    assert f"chmod 600 {key}" in line


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_key_file_too_open(
    world: Path, in_process: Callable[..., subprocess.CompletedProcess[str]], mode: int
) -> None:
    key = world / "master-key"
    key.chmod(mode)
    line = one_error_line(in_process("keys", "rotate", "--config", str(world / "inboxd.toml")))
    assert f"chmod 600 {key}" in line


def test_key_file_missing(
    world: Path, in_process: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    (world / "master-key").unlink()
    line = one_error_line(in_process("keys", "rotate", "--config", str(world / "inboxd.toml")))
    assert str(world / "master-key") in line
    assert "keys generate" in line


def test_key_file_garbage(
    world: Path, in_process: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    key = world / "master-key"
    key.write_text("not a key\n")
    key.chmod(0o600)
    line = one_error_line(in_process("keys", "rotate", "--config", str(world / "inboxd.toml")))
    assert str(key) in line


def test_unusable_state_dir_is_one_line(
    world: Path, in_process: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    cfg = world / "inboxd.toml"
    (world / "not-a-dir").write_text("x")
    text = cfg.read_text(encoding="utf-8")
    cfg.write_text(_edit(text, f'state_dir = "{world}/state"', f'state_dir = "{world}/not-a-dir"'))
    one_error_line(in_process("status", "--config", str(cfg)))


def test_corrupt_store_is_one_line(
    world: Path, in_process: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    (world / "state").mkdir(mode=0o700)
    (world / "state" / "inboxd.sqlite3").write_bytes(b"this is not a database" * 100)
    one_error_line(in_process("status", "--config", str(world / "inboxd.toml")))


# -- status ---------------------------------------------------------------------------------------


STATUS_KEYS = {
    "open",
    "by_state",
    "flags",
    "oldest_open_seconds",
    "last_fetch",
    "last_send",
    "last_error",
}


def test_status_json_on_a_fresh_state(world: Path) -> None:
    p = run("status", "--json", "--config", str(world / "inboxd.toml"), cwd=world)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    snap = json.loads(p.stdout)
    assert set(snap) >= STATUS_KEYS
    assert snap["open"] == 0
    assert snap["by_state"] == {} and snap["flags"] == {}
    assert snap["oldest_open_seconds"] is None
    assert snap["last_fetch"] is None and snap["last_send"] is None and snap["last_error"] is None
    state = world / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for f in state.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f.name


def test_status_shows_counts_but_no_content(world: Path) -> None:
    from inboxd.crypto import Keyring
    from inboxd.sqlite_store import SqliteStore
    from inboxd.store import NewSignal

    marker = f"MARKER{uuid.uuid4().hex}"
    store = SqliteStore(world / "state", Keyring.from_files([str(world / "master-key")]))
    try:
        with store.transaction() as tx:
            tx.add_signal(
                NewSignal(
                    ref="VV-AAAA-AAAA",
                    source="intern",
                    flags={"auto"},
                    size=10,
                    attachment_count=0,
                    fields={"reporter": f"{marker}@x.example".encode(), "subject": marker.encode()},
                    received_at=1_000_000.0,
                )
            )
            tx.set_meta("last_fetch", "1800000000")
    finally:
        store.close()
    p = run("status", "--json", "--config", str(world / "inboxd.toml"), cwd=world)
    assert p.returncode == 0, p.stderr
    assert marker not in p.stdout and marker not in p.stderr
    snap = json.loads(p.stdout)
    assert snap["open"] == 1
    assert snap["by_state"] == {"queued": 1}
    assert snap["flags"] == {"auto": 1}
    assert isinstance(snap["oldest_open_seconds"], int) and snap["oldest_open_seconds"] > 0
    assert snap["last_fetch"].startswith("2027-01-15T")
    text = run("status", "--config", str(world / "inboxd.toml"), cwd=world)
    assert text.returncode == 0
    assert "queued: 1" in text.stdout
    assert marker not in text.stdout


# -- the rough edges a new user hit ---------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    from inboxd import __version__

    p = run("--version", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"inboxd {__version__}\n"


def _subparsers(parser: object) -> dict[str, object]:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_command_and_action_describes_itself() -> None:
    from inboxd.cli import _parser

    commands = _subparsers(_parser())
    assert {"run", "once", "check", "status", "stats", "queue", "keys", "demo"} <= set(commands)
    for name, parser in commands.items():
        assert getattr(parser, "description", None), f"inboxd {name} --help has no description"
        for action, sub in _subparsers(parser).items():
            assert getattr(sub, "description", None), f"inboxd {name} {action} --help"


@pytest.mark.parametrize(
    ("command", "actions"), [("queue", ("list", "purge")), ("keys", ("generate", "rotate"))]
)
def test_help_lists_the_actions(tmp_path: Path, command: str, actions: tuple[str, ...]) -> None:
    p = run(command, "--help", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    listed = re.findall(r"^    (\w+) +\S", p.stdout, re.MULTILINE)
    assert listed == list(actions), p.stdout
    for action in actions:
        assert f"'{action}" in p.stdout, "the description names each action too"


def test_demo_refuses_a_config(tmp_path: Path) -> None:
    line = one_error_line(run("demo", "--config", str(tmp_path / "x.toml"), cwd=tmp_path))
    assert "--keep DIR" in line
    assert not (tmp_path / "x.toml").exists()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "`inboxd demo [--keep DIR]`" in readme


def test_demo_narrates_the_life_of_a_signal_and_proves_it_gone(tmp_path: Path) -> None:
    kept = tmp_path / "demo"
    p = run("demo", "--keep", str(kept), cwd=tmp_path)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "✘" not in p.stdout
    # The narration, from templates/nl/text/demo.txt: every step, every mail shown,
    # every check of the proof, and what is left.
    for step in range(1, 8):
        assert re.search(rf"^{step}\. ", p.stdout, re.MULTILINE), step
    assert p.stdout.count("  ┌─ ") == 6 and p.stdout.count("  │ Onderwerp: ") == 6
    assert p.stdout.count("   ✔ ") == 5
    assert "Het woord ZEBRA-7731 zit in wat KEDO ontving: ja." in p.stdout
    assert "per uitkomst:" in p.stdout
    assert (kept / "inboxd.toml").is_file(), "--keep keeps the world"


def test_once_reports_a_failure_in_one_line(world: Path) -> None:
    """A Maildir that is not there: one line naming the path, not "host and port";
    the log lines stay on stdout for the journal."""
    shutil.rmtree(world / "vreemdverhaal")
    p = run("once", "--config", str(world / "inboxd.toml"), cwd=world)
    assert p.returncode == 3, p.stderr
    line = one_error_line(p, code=3)
    assert str(world / "vreemdverhaal") in line and "[mailbox] path" in line
    assert "host and port" not in line
    assert all(json.loads(x) for x in p.stdout.splitlines()), "stdout: log lines only"


def test_check_prints_people_text_and_logs_to_stderr(world: Path) -> None:
    for sub in ("cur", "tmp"):
        (world / "vreemdverhaal" / sub).mkdir()
    p = run("check", "--config", str(world / "inboxd.toml"), "--log-level", "info", cwd=world)
    assert p.returncode == 0, p.stderr
    assert "mailbox (maildir): logged in" in p.stdout
    assert not [x for x in p.stdout.splitlines() if x.startswith("{")], p.stdout
    assert [json.loads(x) for x in p.stderr.splitlines()], "the log lines went to stderr"
    shutil.rmtree(world / "vreemdverhaal")
    missing = run("check", "--config", str(world / "inboxd.toml"), cwd=world)
    line = one_error_line(missing, code=3)
    assert str(world / "vreemdverhaal") in line and "host and port" not in line


def test_status_shows_the_last_error_in_words(world: Path) -> None:
    from inboxd.crypto import Keyring
    from inboxd.sqlite_store import SqliteStore

    store = SqliteStore(world / "state", Keyring.locked())
    try:
        store.set_meta("last_error", json.dumps({"event": "cycle.failed", "at": 1_800_000_000}))
    finally:
        store.close()
    p = run("status", "--config", str(world / "inboxd.toml"), cwd=world)
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("last error:"))
    assert line == (
        "last error: a fetch/send cycle failed at 2027-01-15 08:00 UTC"
        " (cycle.failed; see the service's log)"
    )
    assert "{" not in p.stdout


def test_every_shell_block_that_reads_a_secret_is_marked_bash() -> None:
    """`read -s` is bash, not POSIX sh."""
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        blocks = re.findall(r"^```(\w*)\n(.*?)^```", doc.read_text(encoding="utf-8"), re.M | re.S)
        for lang, body in blocks:
            if re.search(r"\bread -\w*s", body):
                assert lang == "bash", f"{doc.name}: a block with read -s is marked {lang!r}"


def test_the_imap_example_documents_the_smtp_ca_file() -> None:
    import tomllib

    text = (REPO / "config" / "inboxd.imap.toml").read_text(encoding="utf-8")
    assert "ca_file" in tomllib.loads(text)["smtp"]
    assert "| `ca_file` |" in (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "{cfg}", "status", "--json"],
        ["status", "--config", "{cfg}", "--json"],
        ["--config", "/elsewhere.toml", "status", "--config", "{cfg}", "--json"],
    ],
)
def test_common_options_before_or_after_the_command(
    world: Path, in_process: Callable[..., subprocess.CompletedProcess[str]], argv: list[str]
) -> None:
    """`inboxd --config X status` used to drop X silently (the command's own default
    won) and read /etc/inboxd/inboxd.toml: with several instances, another one's."""
    cfg = str(world / "inboxd.toml")
    p = in_process(*[a.replace("{cfg}", cfg) for a in argv])
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["open"] == 0
    missing = world / "missing.toml"
    line = one_error_line(in_process("--config", str(missing), "stats"))
    assert str(missing) in line
    from inboxd.cli import parse

    assert parse(["--log-level", "debug", "queue", "list"]).log_level == "debug"
    assert parse(["queue", "list"]).log_level is None
    assert parse(["queue", "list"]).log_format == "json"
