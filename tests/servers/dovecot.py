"""One private Dovecot for a test session: IMAP (implicit TLS and plain+STARTTLS on
loopback), LMTP on a unix socket for delivery, maildir in a temp dir.

It runs as a child of the test process (``dovecot -F``) in its own process group,
with its own ``base_dir``, so it never touches or needs the system Dovecot.
Mail processes run as the system user ``inboxd-vmail`` (Dovecot refuses root);
the user is created when missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.server
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from .tlsca import TlsFiles, pki

VMAIL_USER = "inboxd-vmail"

USERS: tuple[str, ...] = (
    "vreemdverhaal@gemeente.example",
    "melder@gemeente.example",
    "collega@gemeente.example",
    "buiten@extern.example",
    "a.jansen@gemeente.example",
    "b.devries@gemeente.example",
    "intake-kedo@gemeente.example",
    "informatieplein@riec.example",
    "inspectie@nla.example",
)


def password_for(address: str) -> str:
    """Every test user's password is ``pw-<localpart>``."""
    return "pw-" + address.split("@", 1)[0].lower()


def oauth2_token_for(address: str) -> str:
    """The bearer token Dovecot (XOAUTH2/OAUTHBEARER) and the relay (XOAUTH2) accept."""
    return "tok-" + address.split("@", 1)[0].lower()


class _TokenInfo(http.server.BaseHTTPRequestHandler):
    """Dovecot's oauth2 passdb asks ``GET /tokeninfo?access_token=<token>``."""

    tokens: dict[str, str] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        query = urllib.parse.urlsplit(self.path).query
        token = urllib.parse.parse_qs(query).get("access_token", [""])[0]
        user = self.tokens.get(token)
        body = json.dumps({"email": user} if user else {"error": "invalid_token"}).encode()
        self.send_response(200 if user else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class TokenInfoServer:
    """A loopback HTTP tokeninfo endpoint for the test users' bearer tokens."""

    def __init__(self, users: Iterable[str]) -> None:
        handler = type(
            "TokenInfo", (_TokenInfo,), {"tokens": {oauth2_token_for(u): u for u in users}}
        )
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/tokeninfo?access_token="
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_vmail_user() -> tuple[int, int]:
    """uid/gid of the unprivileged mail user, created (as a system user) if missing."""
    try:
        pw = pwd.getpwnam(VMAIL_USER)
    except KeyError:
        if os.geteuid() != 0:
            raise RuntimeError(
                f"system user {VMAIL_USER!r} is missing and we are not root to create it; "
                "run tests/install-and-test.sh as root once"
            ) from None
        # Another test session may create it at the same moment: re-check afterwards.
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                VMAIL_USER,
            ],
            check=False,
            capture_output=True,
        )
        pw = pwd.getpwnam(VMAIL_USER)
    return pw.pw_uid, pw.pw_gid


def _die_with_parent() -> None:
    # If the test process is killed hard (no teardown), Dovecot gets SIGTERM too.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def wait_until(
    condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll ``condition`` until true, or raise AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``, from /proc."""
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp …
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            found.append(int(entry.name))
    return found


class Dovecot:
    """A private Dovecot instance. ``start()``/``stop()`` may be repeated; the
    ports, users and mail stay the same across restarts."""

    def __init__(self, users: Iterable[str] = USERS) -> None:
        self.users = tuple(users)
        self.host = "127.0.0.1"
        self.imap_plain_port = free_port()
        self.imap_tls_port = free_port()
        # Short root so unix socket paths stay well under the ~100 byte limit.
        self.root = Path(tempfile.mkdtemp(prefix="dv-", dir="/tmp"))
        self.root.chmod(0o755)  # dovecot, dovenull and the mail user must traverse it
        self.base_dir = self.root / "run"
        self.lmtp_socket = str(self.base_dir / "lmtp")
        self.log_file = self.root / "dovecot.log"
        self.config_file = self.root / "dovecot.conf"
        self.mail_dir = self.root / "mail"
        # The suite's one CA (the fakes' too): one ca_file trusts every test server.
        self.tls: TlsFiles = pki().tls
        self.ca_file = pki().ca_file
        self._proc: subprocess.Popen[bytes] | None = None
        self.tokeninfo = TokenInfoServer(self.users)
        self.last_pgid: int | None = None  # process group of the last stopped instance
        self._write_config()

    # --- configuration -------------------------------------------------------

    def _write_config(self) -> None:
        uid, gid = ensure_vmail_user()
        self.mail_dir.mkdir()
        os.chown(self.mail_dir, uid, gid)
        state_dir = self.root / "state"
        state_dir.mkdir()
        passwd = self.root / "passwd"
        passwd.write_text(
            "".join(
                f"{u}:{{PLAIN}}{password_for(u)}:{uid}:{gid}::{self.mail_dir}/{u}::\n"
                for u in self.users
            )
        )
        passwd.chmod(0o644)  # read by the auth process, which runs as user dovecot
        oauth2_conf = self.root / "oauth2.conf"
        oauth2_conf.write_text(
            f"tokeninfo_url = {self.tokeninfo.url}\nusername_attribute = email\n"
            "timeout_msecs = 5000\n"
        )
        oauth2_conf.chmod(0o644)
        dh = "/usr/share/dovecot/dh.pem"
        dh_line = f"ssl_dh = <{dh}\n" if os.path.exists(dh) else ""
        self.config_file.write_text(
            f"""# Generated for one test session; see tests/servers/dovecot.py
instance_name = inboxd-test-{self.root.name}
base_dir = {self.base_dir}
state_dir = {state_dir}
log_path = {self.log_file}
protocols = imap lmtp
listen = 127.0.0.1
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
shutdown_clients = yes
verbose_proctitle = no

ssl = yes
ssl_cert = <{self.tls.cert_file}
ssl_key = <{self.tls.key_file}
{dh_line}
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2 oauthbearer
auth_failure_delay = 0
auth_cache_size = 0

# Hard delete must mean hard delete: no lazy_expunge, no other plugins.
mail_plugins =
# Every delivery is logged as an operator would log it: Message-ID (Dovecot's default)
# and Subject, so tests can check what a mail server's log holds.
deliver_log_format = msgid=%m subject="%s": %$
mail_location = maildir:~/Maildir
mail_fsync = never
mailbox_idle_check_interval = 1 secs

namespace inbox {{
  inbox = yes
  separator = /
}}

passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {oauth2_conf}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%Lu {passwd}
}}

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_plain_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imap_tls_port}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
}}
service doveadm {{
  inet_listener {{
    port = 0
  }}
}}

protocol imap {{
  imap_idle_notify_interval = 2 mins
}}
protocol lmtp {{
  postmaster_address = postmaster@gemeente.example
}}
"""
        )

    # --- process control -----------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Start (or restart) the instance and wait until IMAP and LMTP answer."""
        if self.running:
            return
        preexec = (
            _die_with_parent if threading.current_thread() is threading.main_thread() else None
        )
        self._proc = subprocess.Popen(
            ["dovecot", "-c", str(self.config_file), "-F"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=preexec,
        )
        deadline = time.monotonic() + timeout
        self._disable_auth_penalty(deadline)
        while not self._answers():
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"dovecot exited at start:\n{err}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dovecot did not answer within {timeout}s\n{self.log_tail()}")
            time.sleep(0.02)

    def _disable_auth_penalty(self, deadline: float) -> None:
        """Failed logins in one test must not slow down the next ones: anvil's auth
        penalty delays every login from an IP by 2, 4, 8 … s for 30 s after a
        failure, and no setting turns it off. The auth process connects to this
        socket once, when it starts (on the first login); if the socket is gone
        then, it silently runs without penalties. So remove it before anyone logs
        in. The master creates it at startup, before it accepts connections."""
        penalty_socket = self.base_dir / "anvil-auth-penalty"
        while not penalty_socket.exists():
            if self._proc is None or self._proc.poll() is not None or time.monotonic() > deadline:
                return  # start() reports the failure
            time.sleep(0.01)
        penalty_socket.unlink()

    def _answers(self) -> bool:
        for port in (self.imap_plain_port, self.imap_tls_port):
            try:
                socket.create_connection((self.host, port), timeout=1).close()
            except OSError:
                return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(self.lmtp_socket)
        except OSError:
            return False
        return True

    def stop(self, grace: float = 2.0) -> None:
        """Stop the instance; every client connection is cut. Never raises.

        SIGTERM goes to the whole process group at once (signalling only the master
        makes it wait for its children, 1–6 s here); whatever still runs after
        ``grace`` seconds is killed."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not group_members(pgid), timeout=grace, what="dovecot to stop")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()
        self._proc = None
        self.last_pgid = pgid
        # Make sure the ports really are closed before a restart or a fault test.
        with contextlib.suppress(AssertionError):
            wait_until(
                lambda: not self._port_open(self.imap_plain_port), timeout=5, what="port close"
            )

    def _port_open(self, port: int) -> bool:
        try:
            socket.create_connection((self.host, port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def destroy(self) -> None:
        """Stop and remove every file of this instance."""
        self.stop()
        with contextlib.suppress(Exception):
            self.tokeninfo.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no dovecot log)"

    # --- IMAP helpers (used by fixtures; real IMAP, not file fiddling) ---------

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    @contextlib.contextmanager
    def client(self, address: str) -> Iterator[IMAPClient]:
        """A logged-in IMAP connection for ``address`` over the plain loopback port."""
        c = IMAPClient(self.host, port=self.imap_plain_port, ssl=False, timeout=15)
        try:
            c.login(address, password_for(address))
            yield c
        finally:
            with contextlib.suppress(Exception):
                c.logout()

    def folders(self, client: IMAPClient) -> list[str]:
        return [name for flags, _delim, name in client.list_folders() if b"\\Noselect" not in flags]

    def _has_mail_on_disk(self, user: str) -> bool:
        """Cheap look at the maildir (read-only): any message file or folder?

        Skipping untouched users keeps the per-test reset fast; the actual
        removal still goes through IMAP so Dovecot's index stays right."""
        maildir = self.mail_dir / user / "Maildir"
        if not maildir.is_dir():
            return False
        for entry in os.scandir(maildir):
            if entry.is_dir() and entry.name.startswith("."):
                return True  # a Maildir++ folder
            if entry.name in ("cur", "new") and any(os.scandir(entry.path)):
                return True
        return False

    def reset(self) -> None:
        """Remove every message from every folder of every user, and every folder
        but INBOX. Expunging over IMAP keeps Dovecot's index consistent, so nothing
        comes back, and UIDVALIDITY/UIDs keep counting up as on a real server."""
        if not self.running:
            self.start()
        for user in self.users:
            if not self._has_mail_on_disk(user):
                continue
            with self.client(user) as c:
                names = [name for _f, _d, name in c.list_folders()]
                # Children before parents: Dovecot refuses to delete a folder with children.
                for name in sorted(
                    (n for n in names if n.upper() != "INBOX"), key=len, reverse=True
                ):
                    with contextlib.suppress(IMAPClientError):
                        c.delete_folder(name)
                for _f, _d, name in c.list_sub_folders():
                    if name.upper() != "INBOX":
                        with contextlib.suppress(IMAPClientError):
                            c.unsubscribe_folder(name)
                info = c.select_folder("INBOX")
                if int(info.get(b"EXISTS", 0)):
                    c.add_flags(c.search("ALL"), [b"\\Deleted"], silent=True)
                    c.expunge()
