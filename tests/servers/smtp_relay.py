"""A real SMTP server (aiosmtpd) on loopback that delivers into Dovecot over LMTP.

Three listeners share one handler:

- ``port``: submission style — STARTTLS offered, AUTH (PLAIN, LOGIN, XOAUTH2) only
  after STARTTLS, and required before MAIL;
- ``tls_port``: implicit TLS (SMTPS), AUTH required;
- ``plain_port``: no TLS, no AUTH (inboxd's ``security = "none"`` on loopback).

Recipients are checked against Dovecot at RCPT time (an LMTP probe), so an unknown
user gets Dovecot's own 550; DATA is delivered by one LMTP transaction per
recipient and Dovecot's answer is passed back.

Like a real MTA with an authentication milter (RFC 8601 §5), the relay removes every
``Authentication-Results`` field that claims its own id (:data:`AUTHSERV_ID`) and
puts its own on top: ``auth=pass smtp.auth=<login>`` for an authenticated
submission; ``auth=none`` otherwise, with ``spf=fail`` when the envelope sender is
in a domain the relay hosts (such mail must come authenticated). What is delivered
carries that field; :attr:`Received.raw` stays the bytes as sent.

Fault switches (:meth:`Relay.fail_next`) make the next N transactions fail at RCPT
or DATA with a chosen code. Transactions made by the test fixtures themselves (EHLO
name :data:`FIXTURE_HELO`) are neither faulted nor counted in :attr:`Relay.accepted`
/ :attr:`Relay.received`, so those describe only what the code under test sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import smtplib
import ssl
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from .dovecot import free_port, oauth2_token_for
from .tlsca import TlsFiles

FIXTURE_HELO = "fixture.deliver.invalid"
AUTHSERV_ID = "relay.gemeente.example"
_AR_NAME = b"authentication-results:"
_AUTHSERV = re.compile(rb"^\s*(?:\([^()]*\)\s*)*([^\s;()]+)")


def stamp(raw: bytes, login: str | None, mail_from: str, hosted: frozenset[str]) -> bytes:
    """``raw`` as the relay delivers it: forged fields with its id gone, its own on top."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    nl = b"\r\n" if sep == b"\r\n\r\n" or not sep else b"\n"
    fields: list[list[bytes]] = []
    for line in head.split(nl):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept = []
    for f in fields:
        if f[0].lower().startswith(_AR_NAME):
            value = b" ".join(f)[len(_AR_NAME) :]
            m = _AUTHSERV.match(value)
            if m and m.group(1).decode(errors="replace").lower() == AUTHSERV_ID:
                continue
        kept.append(nl.join(f))
    if login:
        result = f"auth=pass smtp.auth={login}"
    else:
        domain = mail_from.rpartition("@")[2].lower()
        result = "auth=none"
        if domain in hosted:
            result += f"; spf=fail smtp.mailfrom={mail_from}"
    own = f"Authentication-Results: {AUTHSERV_ID}; {result}".encode()
    return nl.join([own, *kept]) + (sep or nl + nl) + body


@dataclass(frozen=True)
class Received:
    """One accepted transaction, exactly as it came over the wire (dot-unstuffed)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    port: int
    login: str | None  # the authenticated user, if any
    tls: bool


@dataclass
class _Fault:
    stage: Literal["rcpt", "data"]
    reply: str


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: list[_Fault] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    fixture_received: list[Received] = field(default_factory=list)
    refused: int = 0


def _lmtp_probe(lmtp_socket: str, mail_from: str, rcpt: str) -> tuple[int, bytes]:
    with smtplib.LMTP(lmtp_socket, timeout=10) as lmtp:
        lmtp.ehlo_or_helo_if_needed()
        code, msg = lmtp.mail(mail_from)
        if code != 250:
            return code, msg
        return lmtp.rcpt(rcpt)


def _lmtp_deliver(
    lmtp_socket: str, mail_from: str, rcpts: tuple[str, ...], raw: bytes
) -> tuple[int, bytes]:
    """One LMTP transaction per recipient (smtplib reads only one DATA reply)."""
    with smtplib.LMTP(lmtp_socket, timeout=30) as lmtp:
        for rcpt in rcpts:
            try:
                lmtp.sendmail(mail_from, [rcpt], raw)
            except smtplib.SMTPRecipientsRefused as exc:
                code, msg = exc.recipients[rcpt]
                return code, msg
            except smtplib.SMTPResponseException as exc:
                err = exc.smtp_error
                return exc.smtp_code, err if isinstance(err, bytes) else err.encode()
    return 250, b"2.0.0 Delivered"


class _Handler:
    def __init__(self, relay: Relay, port: int, implicit_tls: bool) -> None:
        self.relay = relay
        self.port = port
        self.implicit_tls = implicit_tls

    @staticmethod
    def _is_fixture(session: Session) -> bool:
        return session.host_name == FIXTURE_HELO

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not self._is_fixture(session):
            fault = getattr(envelope, "_fault", None)
            if fault is None:
                with self.relay.state.lock:
                    faults = self.relay.state.faults
                    if faults and faults[0].stage == "rcpt":
                        fault = faults.pop(0)
                        envelope._fault = fault  # type: ignore[attr-defined]
                        self.relay.state.refused += 1
            if fault is not None:
                return fault.reply
        loop = asyncio.get_running_loop()
        code, msg = await loop.run_in_executor(
            None, _lmtp_probe, self.relay.lmtp_socket, envelope.mail_from or "", address
        )
        if code != 250:
            return f"{code} {msg.decode(errors='replace')}"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fixture = self._is_fixture(session)
        if not fixture:
            with self.relay.state.lock:
                faults = self.relay.state.faults
                if faults and faults[0].stage == "data":
                    self.relay.state.refused += 1
                    return faults.pop(0).reply
        raw = envelope.original_content or b""
        rcpts = tuple(envelope.rcpt_tos)
        auth = session.auth_data
        login = (
            auth.login.decode()
            if isinstance(auth, LoginPassword)
            else auth
            if isinstance(auth, str)
            else None
        )
        mail_from = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
        delivered = stamp(raw, login, mail_from, self.relay.hosted_domains)
        loop = asyncio.get_running_loop()
        code, msg = await loop.run_in_executor(
            None, _lmtp_deliver, self.relay.lmtp_socket, envelope.mail_from or "", rcpts, delivered
        )
        if code != 250:
            return f"{code} {msg.decode(errors='replace')}"
        rec = Received(
            # aiosmtpd reports the null sender as "<>"; "" is what a sender passes.
            mail_from=mail_from,
            rcpt_tos=rcpts,
            raw=raw,
            port=self.port,
            login=login,
            tls=self.implicit_tls or session.ssl is not None,
        )
        with self.relay.state.lock:
            (self.relay.state.fixture_received if fixture else self.relay.state.received).append(
                rec
            )
        return "250 2.0.0 OK queued"

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        """``user=<u>^Aauth=Bearer <token>^A^A``; tokens come from :meth:`Relay.oauth2_token`."""
        if len(args) == 2:
            blob: Any = args[1].encode()
        else:
            blob = await server.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        try:
            text = base64.b64decode(blob, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return AuthResult(success=False, handled=False)
        fields = dict(part.split("=", 1) for part in text.split("\x01") if "=" in part)
        user = fields.get("user", "").lower()
        token = fields.get("auth", "")
        if user in self.relay.passwords and token == "Bearer " + self.relay.oauth2_token(user):
            return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)


class _DropAiosmtpdNoise(logging.Filter):
    """Two warnings aiosmtpd logs on every connection: one wrong for implicit TLS,
    one about its own internal use of a deprecated attribute."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (
            msg.startswith("auth_required == True but auth_require_tls")
            or msg.startswith("Session.login_data is deprecated")
        )


logging.getLogger("mail.log").addFilter(_DropAiosmtpdNoise())


class _QuietController(Controller):
    """aiosmtpd warns about AUTH without STARTTLS; on implicit TLS that is wrong."""

    def factory(self) -> SMTP:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            smtp: SMTP = super().factory()  # type: ignore[no-untyped-call]
            return smtp


class Relay:
    """The three listeners and their shared state. Start once per session."""

    def __init__(self, lmtp_socket: str, tls: TlsFiles, passwords: Mapping[str, str]) -> None:
        self.host = "127.0.0.1"
        self.lmtp_socket = lmtp_socket
        self.passwords = {k.lower(): v for k, v in passwords.items()}
        self.hosted_domains = frozenset(a.rpartition("@")[2] for a in self.passwords)
        self.state = _State()
        self.port = free_port()
        self.tls_port = free_port()
        self.plain_port = free_port()
        self._tls = tls
        self._controllers: list[Controller] = []
        # What the relay advertises as SIZE and enforces (aiosmtpd's default);
        # a test may lower it around a stop()/start().
        self.data_size_limit = 32 * 1024 * 1024

    # --- authentication -----------------------------------------------------

    def oauth2_token(self, address: str) -> str:
        """The bearer token the relay accepts for ``address`` over XOAUTH2."""
        return oauth2_token_for(address)

    def _authenticator(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode(errors="replace").lower()
            if self.passwords.get(user) == auth_data.password.decode(errors="replace"):
                return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)

    # --- lifecycle ----------------------------------------------------------

    def _server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self._tls.cert_file), str(self._tls.key_file))
        return ctx

    def start(self) -> None:
        if self._controllers:
            return
        common: dict[str, Any] = {
            "hostname": self.host,
            "server_hostname": "relay.test",
            "authenticator": self._authenticator,
            "ready_timeout": 10.0,
            "data_size_limit": self.data_size_limit,
        }
        submission = Controller(
            _Handler(self, self.port, implicit_tls=False),
            port=self.port,
            tls_context=self._server_context(),
            require_starttls=False,
            auth_required=True,
            auth_require_tls=True,
            **common,
        )
        smtps = _QuietController(
            _Handler(self, self.tls_port, implicit_tls=True),
            port=self.tls_port,
            ssl_context=self._server_context(),
            auth_required=True,
            # The whole connection is TLS already; aiosmtpd only knows about STARTTLS.
            auth_require_tls=False,
            **common,
        )
        plain = Controller(
            _Handler(self, self.plain_port, implicit_tls=False),
            port=self.plain_port,
            auth_required=False,
            **common,
        )
        try:
            for controller in (submission, smtps, plain):
                controller.start()
                self._controllers.append(controller)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every listener (connections are cut). Never raises."""
        for controller in self._controllers:
            with contextlib.suppress(Exception):
                controller.stop()
        self._controllers = []

    @property
    def running(self) -> bool:
        return bool(self._controllers)

    # --- fault switches and records -------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        *,
        code: int = 451,
        stage: Literal["rcpt", "data"] = "data",
        message: str | None = None,
    ) -> None:
        """Make the next ``count`` transactions fail with ``code`` at ``stage``.

        4xx is temporary, 5xx permanent, as a client should read it. A transaction
        failed at RCPT fails for all its recipients."""
        if not 400 <= code <= 599:
            raise ValueError("fault codes are 4xx or 5xx")
        text = message or (
            "4.3.0 Try again later (test fault)" if code < 500 else "5.7.1 Rejected (test fault)"
        )
        with self.state.lock:
            self.state.faults.extend(_Fault(stage, f"{code} {text}") for _ in range(count))

    @property
    def pending_faults(self) -> int:
        with self.state.lock:
            return len(self.state.faults)

    @property
    def accepted(self) -> int:
        """Transactions accepted from the code under test (fixtures not counted)."""
        with self.state.lock:
            return len(self.state.received)

    @property
    def refused(self) -> int:
        """Transactions failed by a fault switch."""
        with self.state.lock:
            return self.state.refused

    @property
    def received(self) -> list[Received]:
        with self.state.lock:
            return list(self.state.received)

    def reset(self) -> None:
        with self.state.lock:
            self.state.faults.clear()
            self.state.received.clear()
            self.state.fixture_received.clear()
            self.state.refused = 0
        if not self.running:
            self.start()
