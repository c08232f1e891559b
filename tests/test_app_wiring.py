"""From configuration to running backends (inboxd.app) for Exchange and Microsoft 365,
and what ``inboxd check`` says when a permission or credential is missing: all
against the local fakes of EWS, Graph and Entra ID."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakes import captured_logs, pki
from fakes.ews_server import EwsServer
from fakes.graph_server import GraphServer
from fakes.token_server import TokenServer
from servers import MailServer
from world import (
    F1,
    MAILBOX,
    TomlValue,
    config_text,
    ews_sections,
    graph_sections,
    maildir_sections,
    sections,
    signal_mail,
)

from inboxd import cli, config, graph_client
from inboxd import daemon as daemon_module
from inboxd.app import build
from inboxd.backends.connect import Backends, token_sources
from inboxd.backends.ews import SYNC_STATE as EWS_SYNC_STATE
from inboxd.backends.graph import DELTA_STATE as GRAPH_DELTA_STATE
from inboxd.config import ConfigError
from inboxd.crypto import generate_key_file
from inboxd.daemon import once
from inboxd.mailbox.ews import EwsMailbox
from inboxd.mailbox.graph import GraphMailbox
from inboxd.msauth import OUTLOOK_SCOPE, TokenProvider, graph_scope
from inboxd.sent_copies import purge_sent_copies
from inboxd.transport.base import Envelope, SendError
from inboxd.transport.ews import EwsTransport
from inboxd.transport.graph import GraphTransport
from inboxd.transport.smtp import SmtpTransport

CLIENT, SECRET = "3b9f0c1d-2e4a-4f6b-8c7d-9e0f1a2b3c4d", "wiring~secret.0123456789abcdef"
FROM = f"Meldpunt vreemdverhaal <{MAILBOX}>"


@dataclass
class Setup:
    root: Path

    def write(self, mailbox: str) -> Path:
        """The suite's configuration with these [mailbox] and [smtp] sections."""
        if not (self.root / "master-key").exists():
            generate_key_file(self.root / "master-key")
        path = self.root / "inboxd.toml"
        path.write_text(config_text(self.root, mailbox))
        return path

    def secret(self, name: str, value: str) -> str:
        p = self.root / name
        p.write_text(value + "\n")
        p.chmod(0o600)
        return str(p)

    def cfg(self, sections: str) -> config.Config:
        return config.load(str(self.write(sections)))


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


@pytest.fixture
def aad() -> Iterator[TokenServer]:
    with TokenServer(secrets={CLIENT: SECRET}, certificates={CLIENT: pki().client_cert}) as t:
        yield t


@pytest.fixture
def graph(aad: TokenServer) -> Iterator[GraphServer]:
    with GraphServer(aad, mailbox=MAILBOX) as g:
        yield g
        assert g.protocol_errors == []


def graph_toml(
    setup: Setup,
    aad: TokenServer,
    graph: GraphServer,
    *,
    secret: str = SECRET,
    credential: dict[str, str] | None = None,
    tenant: str | None = None,
) -> str:
    return graph_sections(
        tenant_id=tenant or aad.tenant_id,
        client_id=CLIENT,
        authority=aad.authority,
        endpoint=graph.endpoint,
        **(credential or {"client_secret_file": setup.secret("graph-secret", secret)}),
    )


def ews_toml(
    setup: Setup,
    srv: EwsServer,
    *,
    auth_type: str = "basic",
    password: str | None = None,
    aad: TokenServer | None = None,
    secret: str = SECRET,
) -> str:
    if auth_type == "oauth2":
        assert aad is not None
        creds = {
            "tenant_id": aad.tenant_id,
            "client_id": CLIENT,
            "client_secret_file": setup.secret("ews-secret", secret),
            "authority": aad.authority,
        }
    else:
        pw = setup.secret("ews-password", password or srv.state.password)
        creds = {"username": srv.state.username, "password_file": pw}  # DOMAIN\user
    return ews_sections(service_endpoint=srv.url, auth_type=auth_type, **creds)


def run_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    # In process (the fakes live here); logging is restored afterwards.
    with captured_logs():
        code = cli.main(["check", "--config", str(path)])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- wiring ---------------------------------------------------------------------------


def test_graph_mailbox_and_transport_from_the_mailbox_section(
    setup: Setup, aad: TokenServer, graph: GraphServer
) -> None:
    cfg = setup.cfg(graph_toml(setup, aad, graph))
    backends = Backends(cfg)
    mb = backends.mailbox()
    tr = backends.transport()
    assert isinstance(mb, GraphMailbox) and isinstance(tr, GraphTransport)
    assert mb.delta_state_path == str(Path(cfg.state_dir) / GRAPH_DELTA_STATE)
    assert mb.folder == "inbox"  # the setting's IMAP default "INBOX" maps to Graph's name
    assert tr.client.base == mb.client.base == f"{graph.endpoint}/v1.0/users/{MAILBOX}"
    # One account on one service: a back-off given to either side holds for both.
    assert tr.client.throttle is mb.client.throttle is backends.throttle

    graph.deliver(signal_mail("GRAPHWIRE"))
    assert once(build(cfg, mailbox=mb, transport=tr)) == 0
    # Tokens were asked for Graph's own scope (national clouds: their endpoint's).
    scopes = {r.form.get("scope") for r in aad.token_requests}
    assert scopes == {graph_scope(graph.endpoint)}
    assert (Path(cfg.state_dir) / GRAPH_DELTA_STATE).is_file()
    assert graph.folder("inbox") == [] and graph.folder("sentitems") == []
    assert len(graph.state.sent) == 3  # acknowledgement + two triage requests


def test_graph_with_a_certificate_credential(
    setup: Setup, aad: TokenServer, graph: GraphServer
) -> None:
    pem = setup.secret("app.pem", pki().client_pem)
    cfg = setup.cfg(graph_toml(setup, aad, graph, credential={"client_certificate_file": pem}))
    mb = Backends(cfg).mailbox()
    mb.open()
    mb.close()
    form = aad.token_requests[-1].form
    assert "client_assertion" in form and "client_secret" not in form


def test_ews_basic_mailbox_and_transport(setup: Setup) -> None:
    with EwsServer(auth="basic") as srv:
        cfg = setup.cfg(ews_toml(setup, srv))
        backends = Backends(cfg)
        mb = backends.mailbox()
        tr = backends.transport()
        assert isinstance(mb, EwsMailbox) and isinstance(tr, EwsTransport)
        # [mailbox] mailbox is the primary SMTP address; username is DOMAIN\user.
        assert mb.settings.address == tr.settings.address == MAILBOX
        assert tr.settings.throttle is mb.settings.throttle is backends.throttle
        assert mb.settings.username == srv.state.username
        assert mb.sync_state_path == str(Path(cfg.state_dir) / EWS_SYNC_STATE)
        srv.deliver(signal_mail("EWSWIRE"))
        assert once(build(cfg, mailbox=mb, transport=tr)) == 0
        assert srv.items == {}
        assert [s.disposition for s in srv.sent] == ["SendOnly"] * 3
        assert (Path(cfg.state_dir) / EWS_SYNC_STATE).is_file()
        assert srv.protocol_errors == []


def test_ews_oauth2_impersonates_the_mailbox_with_an_outlook_token(
    setup: Setup, aad: TokenServer
) -> None:
    with EwsServer(auth="oauth2", tokens=aad) as srv:
        cfg = setup.cfg(ews_toml(setup, srv, auth_type="oauth2", aad=aad))
        srv.deliver(signal_mail("EWSOAUTH"))
        assert once(build(cfg)) == 0
        assert srv.items == {} and len(srv.sent) == 3
        assert {r.form.get("scope") for r in aad.token_requests} == {OUTLOOK_SCOPE}
        assert srv.protocol_errors == []  # ExchangeImpersonation header present


def test_ews_ntlm(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    with EwsServer(auth="ntlm") as srv:
        monkeypatch.setenv("NTLM_USER_FILE", srv.ntlm_user_file(str(setup.root)))
        cfg = setup.cfg(ews_toml(setup, srv, auth_type="ntlm"))
        key = srv.deliver(signal_mail("EWSNTLM"))
        app = build(cfg)
        app.mailbox.open()
        assert app.mailbox.list_new() == [key]
        app.close()
        assert srv.state.auth_failures >= 1  # the NTLM challenge round trip happened


def test_smtp_xoauth2_uses_the_mailbox_app_unless_smtp_names_its_own(
    setup: Setup, aad: TokenServer
) -> None:
    imap = {
        "backend": "imap",
        "host": "127.0.0.1",
        "username": MAILBOX,
        "auth": "xoauth2",
        "tenant_id": aad.tenant_id,
        "client_id": CLIENT,
        "client_secret_file": setup.secret("app-secret", SECRET),
        "authority": aad.authority,
        "ca_file": pki().ca_file,
    }
    smtp = {"host": "127.0.0.1", "username": MAILBOX, "auth": "xoauth2", "from": FROM}
    cfg = setup.cfg(sections(imap, smtp))
    tr = Backends(cfg).transport()
    assert isinstance(tr, SmtpTransport)
    provider = tr.server.oauth2_token
    assert isinstance(provider, TokenProvider)
    assert (provider.tenant_id, provider.client_id, provider.scope) == (
        aad.tenant_id,
        CLIENT,
        OUTLOOK_SCOPE,
    )
    sources = dict(token_sources(cfg))
    assert set(sources) == {"mailbox", "smtp"}
    sources["smtp"]()  # a real client-credentials grant at the fake directory
    assert aad.token_requests[-1].form["client_id"] == CLIENT
    assert aad.token_requests[-1].form["scope"] == OUTLOOK_SCOPE

    other = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    own = {
        **smtp,
        "tenant_id": aad.tenant_id,
        "client_id": other,
        "client_secret_file": setup.secret("smtp-secret", "x"),
        "authority": aad.authority,
    }
    tr2 = Backends(setup.cfg(sections(imap, own))).transport()
    assert isinstance(tr2, SmtpTransport)
    assert isinstance(tr2.server.oauth2_token, TokenProvider)
    assert tr2.server.oauth2_token.client_id == other


def test_purge_of_sent_items_copies_filed_late(
    setup: Setup, aad: TokenServer, graph: GraphServer
) -> None:
    cfg = setup.cfg(graph_toml(setup, aad, graph))
    app = build(cfg)
    graph.hold_sent_copies()  # Exchange files the copy a moment after the 202
    mail = f"From: {MAILBOX}\r\nTo: {F1}\r\nMessage-ID: <late@x>\r\nSubject: t\r\n\r\nx\r\n"
    app.transport.send(Envelope(MAILBOX, F1), mail.encode())
    graph.file_held_copies()
    assert len(graph.folder("sentitems")) == 1
    assert purge_sent_copies(app.transport, app.lock) == 0
    assert graph.folder("sentitems") == []

    # And a copy still awaited when the app closes (end of once, daemon stop) goes too.
    app.transport.send(Envelope(MAILBOX, F1), mail.replace("late@x", "late2@x").encode())
    graph.file_held_copies()
    app.close()
    assert graph.folder("sentitems") == []


def test_a_copy_filed_after_the_process_ended_is_purged_by_the_next_one(
    setup: Setup, aad: TokenServer, graph: GraphServer
) -> None:
    cfg = setup.cfg(graph_toml(setup, aad, graph))
    app = build(cfg)
    graph.hold_sent_copies()
    mail = f"From: {MAILBOX}\r\nTo: {F1}\r\nMessage-ID: <after@x>\r\nSubject: t\r\n\r\nx\r\n"
    app.transport.send(Envelope(MAILBOX, F1), mail.encode())
    app.close()  # tries once more: Exchange has not filed it yet
    graph.file_held_copies()  # ... and files it after the process is gone
    assert len(graph.folder("sentitems")) == 1

    app2 = build(cfg)  # a restart: no network at build, the awaited id comes back
    try:
        # The immutable id of the message and its Message-ID, nothing else.
        [entry] = app2.transport.pending_copies()
        assert entry.endswith(" <after@x>") and " " not in entry.removesuffix(" <after@x>")
        assert (
            purge_sent_copies(app2.transport, app2.lock) == 0
        )  # what the daemon's 5-minute job runs
        assert graph.folder("sentitems") == []
    finally:
        app2.close()
    app3 = build(cfg)  # nothing left to wait for, and that is remembered too
    try:
        assert app3.transport.pending_copies() == []
    finally:
        app3.close()


def test_the_daemon_purges_sent_copies_every_five_minutes(
    setup: Setup, aad: TokenServer, graph: GraphServer
) -> None:
    import datetime as dt
    import threading

    from inboxd import schedule

    app = build(setup.cfg(graph_toml(setup, aad, graph)))
    sched = schedule.start_scheduler(app.jobs, threading.Event())
    try:
        job = sched.get_job("purge_sent")
        assert job is not None
        assert job.trigger.interval == dt.timedelta(minutes=5)
    finally:
        sched.shutdown(wait=True)
        app.close()


def test_purge_is_a_no_op_for_other_transports(setup: Setup) -> None:
    box = setup.root / "box"
    for sub in ("new", "cur", "tmp"):
        (box / sub).mkdir(parents=True)
    cfg = setup.cfg(maildir_sections(box, setup.root / "out"))
    app = build(cfg)
    assert purge_sent_copies(app.transport, app.lock) == 0
    app.close()


# --- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "key"),
    [
        # DOMAIN\user is no address, and no [mailbox] mailbox says which one.
        (lambda t: t.replace(f'mailbox = "{MAILBOX}"\n', ""), "mailbox.mailbox"),
        (
            lambda t: t.replace('service_endpoint = "https://', 'service_endpoint = "http://'),
            "mailbox.service_endpoint",
        ),
        (lambda t: t.replace('folder = "inbox"', 'folder = "Signalen"'), "mailbox.folder"),
        (lambda t: t.replace('auth_type = "basic"', 'auth_type = "oauth2"'), "mailbox.tenant_id"),
    ],
)
def test_ews_configuration_errors_name_the_key(setup: Setup, change: object, key: str) -> None:
    text = ews_sections(
        service_endpoint="https://mail.gemeente.example/EWS/Exchange.asmx",
        username="GEMEENTE\\svc-inboxd",
        password_file="/run/credentials/inboxd.service/ews-password",
    )
    setup.cfg(text)  # the unchanged text is valid
    assert callable(change)
    with pytest.raises(ConfigError) as err:
        setup.cfg(change(text))
    assert err.value.key == key


def test_graph_needs_exactly_one_credential(
    setup: Setup, aad: TokenServer, graph: GraphServer
) -> None:
    both = graph_toml(setup, aad, graph).replace(
        "client_secret_file", 'client_certificate_file = "/x.pem"\nclient_secret_file'
    )
    with pytest.raises(ConfigError) as err:
        setup.cfg(both)
    assert err.value.key == "mailbox.client_secret_file"
    none = "\n".join(
        line
        for line in graph_toml(setup, aad, graph).splitlines()
        if not line.startswith("client_secret_file")
    )
    with pytest.raises(ConfigError):
        setup.cfg(none)


def test_a_missing_ca_file_is_a_configuration_error_not_a_crash(
    setup: Setup, aad: TokenServer, graph: GraphServer
) -> None:
    text = graph_toml(setup, aad, graph).replace(pki().ca_file, str(setup.root / "nope.pem"))
    with pytest.raises(ConfigError) as err:
        Backends(setup.cfg(text)).mailbox()
    assert "ca_file" in err.value.problem


# --- inboxd check ------------------------------------------------------------------------


def test_check_graph_ok(
    setup: Setup, aad: TokenServer, graph: GraphServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_check(setup.write(graph_toml(setup, aad, graph)), capsys)
    assert code == 0, err
    assert "token for [mailbox]: ok" in out
    assert "mailbox (graph): logged in" in out
    assert "outgoing mail (graph): ok, nothing sent" in out
    assert graph.state.sent == []
    # What it can and cannot see of a hard delete: Graph never reads Purges.
    assert (
        "Recoverable Items after a hard delete: Deletions readable, Purges not readable by Graph"
        in out
    )
    graph.state.recoverable_readable = False
    _code, out, _err = run_check(setup.write(graph_toml(setup, aad, graph)), capsys)
    assert "Deletions not permitted, Purges not readable by Graph" in out


def test_check_ews_says_which_parts_of_recoverable_items_it_sees(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    with EwsServer(auth="basic") as srv:
        srv.state.purges_readable = False
        code, out, err = run_check(setup.write(ews_toml(setup, srv)), capsys)
    assert code == 0, err
    assert "Recoverable Items after a hard delete: Deletions readable, Purges not permitted" in out


def test_check_graph_403_names_mail_readwrite(
    setup: Setup, aad: TokenServer, graph: GraphServer, capsys: pytest.CaptureFixture[str]
) -> None:
    graph.fail("folder", 403)
    code, _out, err = run_check(setup.write(graph_toml(setup, aad, graph)), capsys)
    assert code == 3
    # The backend's own warning log lines go to stderr too; the answer is one line.
    lines = [line for line in err.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1
    assert f"Graph answered 403 for /users/{MAILBOX}/mailFolders/inbox" in lines[0]
    assert "Mail.ReadWrite" in lines[0] and "RBAC for Applications" in lines[0]


def test_check_graph_403_on_sent_items_names_mail_send(
    setup: Setup, aad: TokenServer, graph: GraphServer, capsys: pytest.CaptureFixture[str]
) -> None:
    graph.fail("folder", 403, after=1)  # the inbox probe passes, Sent Items is refused
    code, out, err = run_check(setup.write(graph_toml(setup, aad, graph)), capsys)
    assert code == 3
    assert "mailbox (graph): logged in" in out
    assert f"/users/{MAILBOX}/mailFolders/sentitems" in err and "Mail.Send" in err


def test_check_graph_wrong_secret(
    setup: Setup, aad: TokenServer, graph: GraphServer, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = "not-the-secret~0123456789"
    code, out, err = run_check(setup.write(graph_toml(setup, aad, graph, secret=wrong)), capsys)
    assert code == 3
    assert err.startswith("inboxd: AADSTS7000215: invalid client secret")
    assert "mailbox.client_secret_file" in err
    assert wrong not in err + out and SECRET not in err + out
    assert len(err.strip().splitlines()) == 1


def test_check_graph_unknown_tenant(
    setup: Setup, aad: TokenServer, graph: GraphServer, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = graph_toml(setup, aad, graph, tenant="0b0b0b0b-0000-4000-8000-000000000000")
    code, _out, err = run_check(setup.write(toml), capsys)
    assert code == 3
    assert "AADSTS90002" in err and "mailbox.tenant_id" in err


def test_check_graph_401_even_after_a_new_token(
    setup: Setup, aad: TokenServer, graph: GraphServer, capsys: pytest.CaptureFixture[str]
) -> None:
    graph.fail("folder", 401, times=2)
    code, _out, err = run_check(setup.write(graph_toml(setup, aad, graph)), capsys)
    assert code == 3
    assert "Graph answered 401" in err and "New-ServicePrincipal" in err


def test_check_ews_wrong_password(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    with EwsServer(auth="basic") as srv:
        toml = ews_toml(setup, srv, password="Wrong-pa55word!")
        code, out, err = run_check(setup.write(toml), capsys)
    assert code == 3
    assert f"Exchange answered 401 at {srv.url}" in err
    assert "wrong mailbox.username or password" in err
    assert "Wrong-pa55word!" not in err + out


def test_check_ews_access_denied_names_mailbox_permission(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    with EwsServer(auth="basic") as srv:
        srv.fail("GetFolder", "access_denied")
        code, _out, err = run_check(setup.write(ews_toml(setup, srv)), capsys)
    assert code == 3
    assert "ErrorAccessDenied" in err
    assert f"Add-MailboxPermission -Identity {MAILBOX}" in err


def test_check_ews_oauth2_denied_names_ews_access_as_app(
    setup: Setup, aad: TokenServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with EwsServer(auth="oauth2", tokens=aad) as srv:
        srv.fail("GetFolder", "access_denied")
        code, out, err = run_check(
            setup.write(ews_toml(setup, srv, auth_type="oauth2", aad=aad)), capsys
        )
    assert code == 3
    assert "token for [mailbox]: ok" in out
    assert "Application EWS.AccessAsApp" in err


def test_check_ews_oauth2_wrong_secret(
    setup: Setup, aad: TokenServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with EwsServer(auth="oauth2", tokens=aad) as srv:
        toml = ews_toml(setup, srv, auth_type="oauth2", aad=aad, secret="wrong~secret")
        code, _out, err = run_check(setup.write(toml), capsys)
    assert code == 3
    assert err.startswith("inboxd: AADSTS7000215")
    assert srv.calls == [], "nothing was sent to Exchange with a refused credential"


def test_check_ews_unreachable_is_exit_3_without_a_permission_hint(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    with EwsServer(auth="basic") as srv:
        srv.fail("GetFolder", "drop", times=3)
        code, _out, err = run_check(setup.write(ews_toml(setup, srv)), capsys)
    assert code == 3
    assert "Add-MailboxPermission" not in err and "mailbox (ews)" in err


def test_check_imap_and_smtp_xoauth2_refused_name_the_exchange_permissions(
    setup: Setup, aad: TokenServer, mail: MailServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # The real Dovecot and relay accept XOAUTH2, but not tokens of this (fake) tenant:
    # what Exchange Online does for an app without IMAP.AccessAsApp / SMTP.SendAsApp.
    app = {
        "tenant_id": aad.tenant_id,
        "client_id": CLIENT,
        "client_secret_file": setup.secret("app-secret", SECRET),
        "authority": aad.authority,
    }
    imap: dict[str, TomlValue] = {
        "backend": "imap",
        "host": "127.0.0.1",
        "port": mail.imap_tls_port,
        "username": MAILBOX,
        "ca_file": mail.ca_file,
    }
    imap_xoauth2 = {**imap, "auth": "xoauth2", **app}
    pw = setup.secret("password", mail.password(MAILBOX))
    imap_password = {**imap, "password_file": pw}
    smtp: dict[str, TomlValue] = {
        "host": "127.0.0.1",
        "port": mail.smtp_port,
        "security": "starttls",
        "ca_file": mail.ca_file,
        "username": MAILBOX,
        "from": FROM,
    }
    # One CA signed the fake directory and the mail servers: one ca_file trusts both.
    assert mail.ca_file == pki().ca_file
    code, out, err = run_check(
        setup.write(sections(imap_xoauth2, {**smtp, "password_file": pw})), capsys
    )
    assert code == 3
    assert "token for [mailbox]: ok" in out
    assert f"IMAP refused the XOAUTH2 login of {MAILBOX}" in err and "IMAP.AccessAsApp" in err

    smtp_xoauth2 = {**smtp, "auth": "xoauth2", **app}
    code, out, err = run_check(setup.write(sections(imap_password, smtp_xoauth2)), capsys)
    assert code == 3
    assert "mailbox (imap): logged in" in out and "token for [smtp]: ok" in out
    assert f"SMTP refused the XOAUTH2 login of {MAILBOX}" in err and "SMTP.SendAsApp" in err


# --- a server's back-off reaches the daemon's loop -----------------------------------


def test_a_long_back_off_holds_every_request_while_the_watchdog_is_fed(
    setup: Setup,
    aad: TokenServer,
    graph: GraphServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Shortened to test time: what is waited inside a call, and the loop's wait.
    monkeypatch.setattr(graph_client, "MAX_WAIT", 0.2)
    monkeypatch.setattr(daemon_module, "MAX_WAIT", 0.25)
    with tempfile.TemporaryDirectory(dir="/tmp") as short:
        sock_path = os.path.join(short, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
        monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping due every 0.05 s
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        app = build(setup.cfg(graph_toml(setup, aad, graph)))
        d = daemon_module.Daemon(app)
        try:
            assert d.cycle()
            graph.fail("delta", 429, retry_after="2")  # longer than a call waits
            assert not d.cycle()
            assert d.backoff == 2.0
            # The transport shares the back-off: it sends nothing either.
            with pytest.raises(SendError) as ei:
                app.transport.check()
            assert ei.value.temporary and ei.value.retry_after is not None
            before = len(graph.requests)
            while True:  # empty the socket
                try:
                    sock.recv(64)
                except BlockingIOError:
                    break
            started = time.monotonic()
            d.pause(d.backoff)
            assert time.monotonic() - started >= 1.9
            assert len(graph.requests) == before, "a request went out during the back-off"
            pings = 0
            while True:
                try:
                    pings += sock.recv(64) == b"WATCHDOG=1"
                except BlockingIOError:
                    break
            assert pings >= 6, pings  # 2 s in waits of 0.25 s, a ping after each
            assert d.cycle()  # after it: back to work
            assert len(graph.requests) > before
        finally:
            app.close()
            sock.close()


def test_a_send_refused_with_a_long_back_off_waits_for_it_and_stops_the_drain(
    setup: Setup, aad: TokenServer, graph: GraphServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graph_client, "MAX_WAIT", 0.2)
    app = build(setup.cfg(graph_toml(setup, aad, graph)))
    d = daemon_module.Daemon(app)
    try:
        graph.deliver(signal_mail("backoff"))
        graph.fail("create", 429, retry_after="120")
        with captured_logs() as buf:
            assert d.cycle()  # taken in; the acknowledgement and triage wait
        logs = [json.loads(line) for line in buf.getvalue().splitlines()]
        retries = [e for e in logs if e["event"] == "mail.retry"]
        assert len(retries) == 1, "the drain went on asking a throttled service"
        assert retries[0]["delay"] >= 120
        assert [r.route for r in graph.requests].count("create") == 1
    finally:
        app.close()


@pytest.mark.parametrize(
    "endpoint", ["https://graph.microsoft.us", "https://microsoftgraph.chinacloudapi.cn"]
)
def test_graph_in_a_cloud_without_permanent_delete_is_refused_by_name(
    setup: Setup, aad: TokenServer, graph: GraphServer, endpoint: str
) -> None:
    text = graph_toml(setup, aad, graph).replace(graph.endpoint, endpoint)
    with pytest.raises(ConfigError) as err:
        setup.cfg(text)
    assert err.value.key == "mailbox.endpoint"
    assert "permanentDelete" in err.value.problem and 'backend = "ews"' in err.value.problem


def test_ews_oauth2_in_us_government_asks_for_an_outlook_us_token(
    setup: Setup, aad: TokenServer
) -> None:
    with EwsServer(auth="oauth2", tokens=aad) as srv:
        text = ews_toml(setup, srv, auth_type="oauth2", aad=aad).replace(
            f'authority = "{aad.authority}"', 'authority = "https://login.microsoftonline.us"'
        )
        cfg = setup.cfg(text)
    provider = dict(token_sources(cfg))["mailbox"]
    assert isinstance(provider, TokenProvider)
    assert provider.scope == "https://outlook.office365.us/.default"
