"""Configuration loading (docs/configuration.md): every mistake is one ConfigError naming the file,
the key and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inboxd.config import (
    ConfigError,
    is_loopback,
    load,
    parse_duration,
    parse_rate,
    read_secret,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "inboxd.example.toml"
IMAP = REPO / "config" / "inboxd.imap.toml"

BASE = """\
state_dir = "state"

[mailbox]
backend = "maildir"
path = "mb"

[smtp]
transport = "maildir"
path = "out"
from = "Meldpunt <vreemdverhaal@gemeente.example>"

[crypto]
key_files = ["master-key"]

[triage]
functionarissen = ["a.jansen@gemeente.example"]
allow_unauthenticated = true
"""

IMAP_MAILBOX = """[mailbox]
backend = "imap"
host = "mail.gemeente.example"
username = "vreemdverhaal@gemeente.example"
password_file = "imap-password"
"""


def in_section(section: str, line: str, text: str = BASE) -> str:
    header = f"[{section}]\n"
    assert header in text
    return text.replace(header, header + line + "\n", 1)


def write(tmp_path: Path, text: str | bytes, name: str = "inboxd.toml") -> str:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return str(p)


def error_for(tmp_path: Path, text: str | bytes) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    err = info.value
    assert err.path == path
    assert path in str(err)
    assert err.problem
    return err


@pytest.fixture(autouse=True)
def _no_credentials_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("INBOXD_CONFIG", raising=False)


# -- the shipped examples -----------------------------------------------------------


def test_example_config_loads() -> None:
    cfg = load(str(EXAMPLE))
    assert cfg.source_path == str(EXAMPLE)
    assert cfg.mailbox.backend == "maildir"
    assert cfg.smtp.transport == "maildir"
    assert cfg.from_address == "vreemdverhaal@gemeente.example"
    assert set(cfg.destinations) == {"kedo", "riec", "nla"}
    assert cfg.triage.functionarissen == ["a.jansen@gemeente.example", "b.devries@gemeente.example"]
    assert cfg.mailbox.poll_interval == 1.0
    assert cfg.dedup_window == 30 * 86400
    assert cfg.reporters.ack_rate_limit == (10, 3600.0)


def test_imap_config_loads_without_its_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither the password files nor the key exist: loading must not need them.
    cfg = load(str(IMAP))
    assert cfg.mailbox.backend == "imap"
    assert cfg.mailbox.effective_port == 993
    assert cfg.smtp.transport == "smtp"  # a model per backend: the SMTP one has ports
    assert cfg.smtp.effective_port == 587
    assert cfg.mailbox.password_file == "imap-password"
    # Relative key files are next to the config file without $CREDENTIALS_DIRECTORY …
    assert cfg.crypto.key_files == [str(IMAP.parent / "master-key")]
    # … and under it with.
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = load(str(IMAP))
    assert cfg.crypto.key_files == [str(tmp_path / "master-key")]


def test_load_uses_inboxd_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, BASE)
    monkeypatch.setenv("INBOXD_CONFIG", path)
    assert load().source_path == path


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    cfg = load(write(sub, BASE))
    assert cfg.state_dir == str(sub / "state")
    assert cfg.mailbox.backend == "maildir" and cfg.smtp.transport == "maildir"
    assert cfg.mailbox.path == str(sub / "mb")
    assert cfg.smtp.path == str(sub / "out")
    assert cfg.crypto.key_files == [str(sub / "master-key")]


def test_defaults() -> None:
    cfg = load(str(EXAMPLE))
    assert cfg.triage.include_content == "full"
    assert cfg.triage.remind_after == 2 * 86400
    assert cfg.triage.forward_retry_for == 86400
    assert cfg.mailbox.retain_in_mailbox == "queued"


# -- errors: file level ----------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.path == path
    assert "not found" in info.value.problem
    assert "--config" in info.value.problem


def test_not_toml(tmp_path: Path) -> None:
    err = error_for(tmp_path, BASE + "[[[\n")
    assert err.key == ""
    assert "TOML" in err.problem
    assert "line" in err.problem


def test_not_utf8(tmp_path: Path) -> None:
    err = error_for(tmp_path, BASE.encode() + b'\nlabel = "\xff\xfe"\n')
    assert err.key == ""
    assert "UTF-8" in err.problem


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path))
    assert info.value.path == str(tmp_path)


# -- errors: keys ---------------------------------------------------------------------


def test_unknown_key_top_level(tmp_path: Path) -> None:
    err = error_for(tmp_path, "bogus = 1\n" + BASE)
    assert err.key == "bogus"
    assert "unknown key" in err.problem


@pytest.mark.parametrize("section", ["mailbox", "smtp", "crypto", "triage"])
def test_unknown_key_in_a_section(tmp_path: Path, section: str) -> None:
    err = error_for(tmp_path, in_section(section, "bogus = 1"))
    assert err.key == f"{section}.bogus"
    assert "unknown key" in err.problem


def test_unknown_key_in_a_named_section(tmp_path: Path) -> None:
    text = (
        BASE
        + '\n[destinations.kedo]\nlabel = "K"\naddress = "k@gemeente.example"\ncolour = "red"\n'
    )
    err = error_for(tmp_path, text)
    assert err.key == "destinations.kedo.colour"


def test_wrong_type_port(tmp_path: Path) -> None:
    err = error_for(tmp_path, in_section("mailbox", 'port = "x"'))
    assert err.key == "mailbox.port"
    assert "integer" in err.problem


def test_wrong_type_idle_string(tmp_path: Path) -> None:
    err = error_for(tmp_path, in_section("mailbox", 'idle = "yes"'))
    assert err.key == "mailbox.idle"


def test_wrong_type_port_bool(tmp_path: Path) -> None:
    err = error_for(tmp_path, in_section("mailbox", "port = true"))
    assert err.key == "mailbox.port"


def test_port_out_of_range(tmp_path: Path) -> None:
    err = error_for(tmp_path, in_section("smtp", "port = 70000"))
    assert err.key == "smtp.port"


def test_wrong_type_string_and_list(tmp_path: Path) -> None:
    assert (
        error_for(tmp_path, BASE.replace('state_dir = "state"', "state_dir = 5")).key == "state_dir"
    )
    err = error_for(tmp_path, BASE.replace('["master-key"]', '"master-key"'))
    assert err.key == "crypto.key_files"
    assert "list" in err.problem


def test_missing_required_functionarissen(tmp_path: Path) -> None:
    err = error_for(tmp_path, BASE.replace('functionarissen = ["a.jansen@gemeente.example"]', ""))
    assert err.key == "triage.functionarissen"
    assert "missing" in err.problem
    err = error_for(tmp_path, BASE.replace('["a.jansen@gemeente.example"]', "[]"))
    assert err.key == "triage.functionarissen"


def test_missing_required_section(tmp_path: Path) -> None:
    err = error_for(tmp_path, BASE.replace('[crypto]\nkey_files = ["master-key"]\n', ""))
    assert err.key == "crypto"
    assert "missing" in err.problem


def test_missing_from(tmp_path: Path) -> None:
    err = error_for(
        tmp_path, BASE.replace('from = "Meldpunt <vreemdverhaal@gemeente.example>"\n', "")
    )
    assert err.key == "smtp.from"


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("mailbox", "password"),
        ("smtp", "password"),
        ("mailbox", "client_secret"),
        ("smtp", "client_secret"),
    ],
)
def test_inline_secret_points_to_file_or_env(tmp_path: Path, section: str, key: str) -> None:
    err = error_for(tmp_path, in_section(section, f'{key} = "hunter2"'))
    assert err.key == f"{section}.{key}"
    assert f"{key}_file" in err.problem
    assert f"{key}_env" in err.problem
    assert "hunter2" not in str(err)


def test_bad_duration(tmp_path: Path) -> None:
    err = error_for(tmp_path, in_section("mailbox", 'poll_interval = "soon"'))
    assert err.key == "mailbox.poll_interval"
    assert '"30s"' in err.problem
    err = error_for(tmp_path, in_section("triage", 'remind_after = "2 days"'))
    assert err.key == "triage.remind_after"
    err = error_for(tmp_path, 'dedup_window = "30"\n' + BASE)
    assert err.key == "dedup_window"


def test_non_positive_duration(tmp_path: Path) -> None:
    err = error_for(tmp_path, in_section("mailbox", "poll_interval = -5"))
    assert err.key == "mailbox.poll_interval"


def test_bad_rate(tmp_path: Path) -> None:
    err = error_for(tmp_path, BASE + '\n[reporters]\nack_rate_limit = "lots"\n')
    assert err.key == "reporters.ack_rate_limit"
    assert '"10/h"' in err.problem


def test_bad_cron(tmp_path: Path) -> None:
    err = error_for(tmp_path, in_section("triage", 'digest_cron = "every morning"'))
    assert err.key == "triage.digest_cron"
    assert "cron" in err.problem
    err = error_for(tmp_path, in_section("triage", 'digest_cron = "0 9 * * 5-1"'))
    assert err.key == "triage.digest_cron"


@pytest.mark.parametrize("cron", ["0 9 * * 7", "0 9 * * 0", "30 8 * * 1-5", "0 9 * * sun"])
def test_crontab_sunday_as_7_or_0_is_accepted(tmp_path: Path, cron: str) -> None:
    """What the scheduler runs, the check accepts (APScheduler's own parser would
    refuse 7 and read 0 as Monday)."""
    assert load(write(tmp_path, in_section("triage", f'digest_cron = "{cron}"'))).triage


@pytest.mark.parametrize("listen", ["9464", "localhost:", ":9464", "127.0.0.1:99999", "a:b"])
def test_bad_metrics_listen(tmp_path: Path, listen: str) -> None:
    err = error_for(tmp_path, BASE + f'\n[metrics]\nlisten = "{listen}"\n')
    assert err.key == "metrics.listen"
    assert "host:port" in err.problem


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "[::1]:9100", "0.0.0.0:1"])
def test_good_metrics_listen(tmp_path: Path, listen: str) -> None:
    cfg = load(write(tmp_path, BASE + f'\n[metrics]\nlisten = "{listen}"\n'))
    assert cfg.metrics is not None and cfg.metrics.listen == listen


@pytest.mark.parametrize("section", ["mailbox", "smtp"])
def test_security_none_to_a_remote_host(tmp_path: Path, section: str) -> None:
    text = BASE.replace('[mailbox]\nbackend = "maildir"\npath = "mb"\n', IMAP_MAILBOX)
    text = text.replace('transport = "maildir"\npath = "out"', 'host = "smtp.gemeente.example"')
    err = error_for(tmp_path, in_section(section, 'security = "none"', text))
    assert err.key == f"{section}.security"
    assert "loopback" in err.problem
    assert '"tls"' in err.problem


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.53"])
def test_security_none_to_loopback_is_allowed(tmp_path: Path, host: str) -> None:
    text = BASE.replace(
        '[mailbox]\nbackend = "maildir"\npath = "mb"\n',
        IMAP_MAILBOX.replace("mail.gemeente.example", host) + 'security = "none"\n',
    )
    cfg = load(write(tmp_path, text))
    assert cfg.mailbox.backend == "imap"
    assert cfg.mailbox.security == "none"
    assert cfg.mailbox.effective_port == 143


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("mail.example") and not is_loopback("10.0.0.1")
    assert not is_loopback("localhost.evil.example")


def test_maildir_backend_without_path(tmp_path: Path) -> None:
    err = error_for(tmp_path, BASE.replace('path = "mb"\n', ""))
    assert err.key == "mailbox.path"
    assert "missing" in err.problem


def test_imap_without_password_source(tmp_path: Path) -> None:
    text = BASE.replace(
        '[mailbox]\nbackend = "maildir"\npath = "mb"\n',
        IMAP_MAILBOX.replace('password_file = "imap-password"\n', ""),
    )
    err = error_for(tmp_path, text)
    assert err.key == "mailbox.password_file"
    assert "password_env" in err.problem


@pytest.mark.parametrize("key", ["KEDO", "ke do", "1kedo", "kedo-riec"])
def test_bad_destination_key(tmp_path: Path, key: str) -> None:
    text = BASE + f'\n[destinations."{key}"]\nlabel = "x"\naddress = "x@gemeente.example"\n'
    err = error_for(tmp_path, text)
    assert err.key == f"destinations.{key}"
    assert "lower-case" in err.problem


def test_bad_destination_address(tmp_path: Path) -> None:
    text = BASE + '\n[destinations.kedo]\nlabel = "x"\naddress = "not an address"\n'
    err = error_for(tmp_path, text)
    assert err.key == "destinations.kedo.address"
    assert "e-mail address" in err.problem


@pytest.mark.parametrize(
    "addr",
    [
        "victim@x)<attacker@y>",  # CVE-2023-27043 shape
        "Jan <a@gemeente.example>",
        "a@gemeente.example\r\nBcc: x@y.example",
        "nobody",
        "a@b",
    ],
)
def test_bad_address_in_functionarissen(tmp_path: Path, addr: str) -> None:
    lit = addr.replace("\r", "\\r").replace("\n", "\\n")
    text = BASE.replace('["a.jansen@gemeente.example"]', f'["a.jansen@gemeente.example", "{lit}"]')
    err = error_for(tmp_path, text)
    assert err.key == "triage.functionarissen"
    assert "e-mail address" in err.problem


def test_addresses_are_lower_cased(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, BASE.replace("a.jansen@", "A.Jansen@")))
    assert cfg.triage.functionarissen == ["a.jansen@gemeente.example"]


def test_from_with_newline_is_refused(tmp_path: Path) -> None:
    text = BASE.replace(
        '"Meldpunt <vreemdverhaal@gemeente.example>"',
        '"Meldpunt <vreemdverhaal@gemeente.example>\\r\\nBcc: x@evil.example"',
    )
    err = error_for(tmp_path, text)
    assert err.key == "smtp.from"


def test_from_without_address_is_refused(tmp_path: Path) -> None:
    err = error_for(
        tmp_path, BASE.replace('"Meldpunt <vreemdverhaal@gemeente.example>"', '"nobody"')
    )
    assert err.key == "smtp.from"


def test_bad_reference_prefix_message_is_right(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'reference_prefix = "vv"\n' + BASE)
    assert err.key == "reference_prefix"
    assert "A-Z" in err.problem


def test_bad_choice(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'language = "de"\n' + BASE)
    assert err.key == "language"
    assert "'nl'" in err.problem and "'en'" in err.problem
    err = error_for(tmp_path, in_section("triage", 'include_content = "all"'))
    assert err.key == "triage.include_content"


@pytest.mark.parametrize("value", ['"pop3"', '["imap"]', "3", "{ name = 1 }"])
def test_a_backend_that_names_none(tmp_path: Path, value: str) -> None:
    err = error_for(tmp_path, BASE.replace('backend = "maildir"', f"backend = {value}"))
    assert err.key == "mailbox.backend"
    assert err.problem == "must be one of 'imap', 'ews', 'graph' or 'maildir'"
    err = error_for(tmp_path, BASE.replace('transport = "maildir"', f"transport = {value}"))
    assert err.key == "smtp.transport"
    assert err.problem == "must be one of 'smtp', 'maildir', 'ews' or 'graph'"


def test_a_key_of_another_backend_is_checked_and_ignored(tmp_path: Path) -> None:
    # Switching a section's backend keeps the file valid; a wrong value is still named.
    cfg = load(write(tmp_path, in_section("mailbox", 'host = "mail.gemeente.example"')))
    assert cfg.mailbox.backend == "maildir" and not hasattr(cfg.mailbox, "host")
    err = error_for(tmp_path, in_section("mailbox", "idle = 1"))
    assert err.key == "mailbox.idle"


def test_smtp_transport_must_match_backend(tmp_path: Path) -> None:
    err = error_for(tmp_path, BASE.replace('transport = "maildir"', 'transport = "graph"'))
    assert err.key == "smtp.transport"


# -- durations and rates -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("15m", 900),
        ("2d", 172800),
        ("1h30m", 5400),
        ("1w", 604800),
        (" 1h 30m ", 5400),
        ("1.5h", 5400),
        (45, 45),
        (2.5, 2.5),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["soon", "30", "", "30x", "s", "1h and 30m", "-5s", True, None, []]
)
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.integers(0, 10_000), st.sampled_from("smhdw"))
def test_duration_units(n: int, unit: str) -> None:
    factor = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_duration(f"{n}{unit}") == n * factor


@pytest.mark.parametrize(
    ("text", "rate"), [("10/h", (10, 3600.0)), ("5/15m", (5, 900.0)), ("1 / d", (1, 86400.0))]
)
def test_rates(text: str, rate: tuple[int, float]) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["lots", "10", "10/", "/h", "10/x", 10])
def test_bad_rates(text: object) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


# -- secrets ------------------------------------------------------------------------------


def test_read_secret_absolute_file(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, BASE))
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    assert read_secret(cfg, str(secret), "", "mailbox.password_file") == "s3cret"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_secret_file_others_may_read_is_refused_like_a_key_file(
    tmp_path: Path, mode: int
) -> None:
    cfg = load(write(tmp_path, BASE))
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(mode)
    with pytest.raises(ConfigError) as err:
        read_secret(cfg, str(secret), "", "mailbox.password_file")
    assert err.value.key == "mailbox.password_file"
    assert f"file mode {mode:04o} grants access to group or others" in err.value.problem
    assert f"run 'chmod 600 {secret}'" in err.value.problem
    assert "s3cret" not in str(err.value)


def test_read_secret_relative_under_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "imap-password").write_text("from-creds\n")
    (tmp_path / "imap-password").write_text("next-to-config\n")
    (creds / "imap-password").chmod(0o600)
    (tmp_path / "imap-password").chmod(0o600)
    cfg = load(write(tmp_path, BASE))
    assert read_secret(cfg, "imap-password", "", "mailbox.password_file") == "next-to-config"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_secret(cfg, "imap-password", "", "mailbox.password_file") == "from-creds"


def test_read_secret_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load(write(tmp_path, BASE))
    monkeypatch.setenv("INBOXD_TEST_PW", " from-env \n")
    assert read_secret(cfg, "", "INBOXD_TEST_PW", "mailbox.password_file") == "from-env"


def test_read_secret_env_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load(write(tmp_path, BASE))
    monkeypatch.delenv("INBOXD_TEST_PW", raising=False)
    with pytest.raises(ConfigError) as info:
        read_secret(cfg, "", "INBOXD_TEST_PW", "mailbox.password_file")
    assert info.value.key == "mailbox.password_env"
    assert "INBOXD_TEST_PW" in info.value.problem
    assert info.value.path == cfg.source_path


def test_read_secret_missing_file(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, BASE))
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as info:
        read_secret(cfg, str(missing), "", "smtp.password_file")
    assert info.value.key == "smtp.password_file"
    assert str(missing) in info.value.problem
    assert info.value.path == cfg.source_path
