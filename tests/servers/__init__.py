"""Real mail servers for the test suite: a throw-away CA, a private Dovecot and an
aiosmtpd relay that delivers into it over LMTP.

:class:`MailServer` bundles them; ``tests/conftest.py`` exposes it as the
``mailserver`` (session) and ``mail`` (per test, reset) fixtures and documents the API.
"""

from __future__ import annotations

import atexit
import contextlib
import smtplib
import ssl
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

from imapclient import IMAPClient

from .dovecot import USERS, Dovecot, password_for
from .smtp_relay import AUTHSERV_ID, FIXTURE_HELO, Received, Relay

__all__ = ["AUTHSERV_ID", "USERS", "MailServer", "Received", "password_for"]

_FETCH_BATCH = 200


class MailServer:
    """Dovecot + relay, started together. Addresses are the test users in ``USERS``."""

    def __init__(self) -> None:
        self.dovecot = Dovecot(USERS)
        self.relay = Relay(
            self.dovecot.lmtp_socket, self.dovecot.tls, {u: password_for(u) for u in USERS}
        )
        self.users: tuple[str, ...] = USERS
        self.imap_host = self.dovecot.host
        self.imap_tls_port = self.dovecot.imap_tls_port
        self.imap_plain_port = self.dovecot.imap_plain_port
        self.smtp_host = self.relay.host
        self.smtp_port = self.relay.port
        self.smtp_tls_port = self.relay.tls_port
        self.smtp_plain_port = self.relay.plain_port
        self.ca_file = self.dovecot.ca_file
        self.lmtp_socket = self.dovecot.lmtp_socket
        self._closed = False

    @classmethod
    def start(cls, attempts: int = 3) -> MailServer:
        """Start both servers. Ports are picked free but could be taken by another
        test session before we bind them: then try again on new ports."""
        for attempt in range(1, attempts + 1):
            server = cls()
            atexit.register(server.close)  # in case the session teardown never runs
            try:
                server.dovecot.start()
                server.relay.start()
            except (RuntimeError, OSError):
                server.close()
                if attempt == attempts:
                    raise
                continue
            except BaseException:
                server.close()
                raise
            return server
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop everything and remove the temp dir. Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.relay.stop()
        with contextlib.suppress(Exception):
            self.dovecot.destroy()

    # --- credentials --------------------------------------------------------

    def password(self, address: str) -> str:
        return password_for(address)

    def oauth2_token(self, address: str) -> str:
        """Bearer token Dovecot (XOAUTH2, OAUTHBEARER) and the relay (XOAUTH2) accept."""
        return self.relay.oauth2_token(address)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the test CA."""
        return ssl.create_default_context(cafile=self.ca_file)

    # --- putting mail in ----------------------------------------------------

    def deliver(
        self,
        raw: bytes,
        to: str | Sequence[str],
        mail_from: str = "melder@gemeente.example",
        *,
        login: str | None = None,
    ) -> None:
        """Send ``raw`` through the relay, really over SMTP. A known sender submits
        with STARTTLS + AUTH as itself (or as ``login``, another known account: the
        relay does not tie the envelope to the login); any other sender (or ``""``, a
        null sender) uses the plain port. Raises smtplib errors when a recipient is
        refused. The relay stamps ``Authentication-Results`` (see smtp_relay.py).

        Dovecot prepends ``Return-Path``, ``Delivered-To`` and ``Received`` on delivery.
        Not counted in ``relay.accepted`` and never hit by fault switches."""
        rcpts = [to] if isinstance(to, str) else list(to)
        user = login if login is not None else mail_from
        known = user.lower() in self.users
        port = self.smtp_port if known else self.smtp_plain_port
        with smtplib.SMTP(self.smtp_host, port, local_hostname=FIXTURE_HELO, timeout=30) as smtp:
            if known:
                smtp.starttls(context=self.ssl_context())
                smtp.login(user, self.password(user))
            refused = smtp.sendmail(mail_from, rcpts, raw)
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)

    @contextlib.contextmanager
    def imap(self, address: str) -> Iterator[IMAPClient]:
        """A logged-in imapclient connection (plain loopback port) for ``address``."""
        with self.dovecot.client(address) as client:
            yield client

    def append(
        self, address: str, raw: bytes, folder: str = "INBOX", flags: Iterable[bytes] = ()
    ) -> None:
        """IMAP APPEND: fast, bypasses SMTP (no headers added)."""
        with self.imap(address) as c:
            if folder.upper() != "INBOX" and not c.folder_exists(folder):
                c.create_folder(folder)
            c.append(folder, raw, flags=tuple(flags))

    def append_many(self, address: str, raws: Iterable[bytes], folder: str = "INBOX") -> None:
        """MULTIAPPEND in chunks: the fast way to build a backlog."""
        items = list(raws)
        with self.imap(address) as c:
            if folder.upper() != "INBOX" and not c.folder_exists(folder):
                c.create_folder(folder)
            for i in range(0, len(items), 500):
                c.multiappend(folder, items[i : i + 500])

    # --- reading mail back ----------------------------------------------------

    @staticmethod
    def _read_folder(c: IMAPClient, folder: str) -> list[bytes]:
        c.select_folder(folder, readonly=True)
        uids = sorted(c.search("ALL"))
        out: list[bytes] = []
        for i in range(0, len(uids), _FETCH_BATCH):
            batch = uids[i : i + _FETCH_BATCH]
            data = c.fetch(batch, [b"BODY.PEEK[]"])
            out.extend(data[uid][b"BODY[]"] for uid in batch if uid in data)
        c.unselect_folder()
        return out

    def messages(self, address: str, folder: str = "INBOX") -> list[bytes]:
        """Raw bytes of every message in ``folder``, oldest UID first ([] if absent)."""
        with self.imap(address) as c:
            if folder.upper() != "INBOX" and not c.folder_exists(folder):
                return []
            return self._read_folder(c, folder)

    def all_messages(self, address: str) -> dict[str, list[bytes]]:
        """Every selectable folder (``LIST "" "*"``) → its messages, empty ones included."""
        with self.imap(address) as c:
            names = [n for flags, _d, n in c.list_folders() if b"\\Noselect" not in flags]
            return {name: self._read_folder(c, name) for name in names}

    def wait_for_messages(
        self, address: str, count: int, timeout: float = 10.0, folder: str = "INBOX"
    ) -> list[bytes]:
        """Poll until ``folder`` holds at least ``count`` messages; return all of them.
        On timeout, AssertionError says how many there were and what they began with."""
        deadline = time.monotonic() + timeout
        found: list[bytes] = []
        while True:
            found = self.messages(address, folder)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        heads = [m.split(b"\r\n\r\n", 1)[0][-300:] for m in found]
        raise AssertionError(
            f"expected >= {count} message(s) in {address}/{folder} within {timeout}s, "
            f"found {len(found)}; their last header bytes: {heads!r}"
        )

    # --- faults -------------------------------------------------------------

    def stop_dovecot(self) -> None:
        self.dovecot.stop()

    def start_dovecot(self) -> None:
        self.dovecot.start()

    def stop_relay(self) -> None:
        self.relay.stop()

    def start_relay(self) -> None:
        self.relay.start()

    def fail_next(
        self,
        count: int = 1,
        *,
        code: int = 451,
        stage: Literal["rcpt", "data"] = "data",
        message: str | None = None,
    ) -> None:
        """See :meth:`Relay.fail_next`."""
        self.relay.fail_next(count, code=code, stage=stage, message=message)

    def reset(self) -> None:
        """Between tests: servers running again, every mailbox empty, no faults."""
        if not self.dovecot.running:
            self.dovecot.start()
        self.relay.reset()
        self.dovecot.reset()
