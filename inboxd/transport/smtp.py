"""SMTP transport (smtplib): one verified connection reused for many sends, the
message bytes sent exactly as given, every refusal mapped to a content-free
:class:`SendError`.

Reasons carry the stage and the status codes only (``"RCPT refused: 550 5.1.1"``):
a server's text often repeats the recipient's address. Reasons for connection-level
trouble begin with ``"cannot connect"`` or ``"connection lost"``, which tells the
outbox to stop draining until the next round.
"""

from __future__ import annotations

import contextlib
import re
import select
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Literal

from inboxd.logs import get_logger
from inboxd.mailserver import Security, ServerAccount, login_with_token
from inboxd.pace import Beat, rest
from inboxd.transport.base import (
    Envelope,
    Message,
    SendError,
    Transport,
    message_size,
    pieces_of,
)

log = get_logger(__name__)

# A connection used within this many seconds is trusted without a NOOP: a NOOP per
# mail costs a round trip, and a server that closed a fresh connection is noticed at
# MAIL anyway (then the mail is retried once on a new connection).
NOOP_AFTER_IDLE = 5.0


# Pieces in which a message goes out after DATA.
DATA_CHUNK = 1024 * 1024
# How long one look for the server's answer to the data lasts before the next beat.
ANSWER_SLICE = 0.05
_DOT_AFTER_NEWLINE = re.compile(rb"(?<=\n)\.")


def dot_stuffed(message: Message, chunk: int = DATA_CHUNK) -> Iterator[bytes]:
    """The message (bytes, or pieces whose concatenation it is) as DATA sends it
    (RFC 5321 §4.5.2: a line starting with "." gets another), in writes of about
    ``chunk`` to ``2 * chunk`` bytes cut at a line end where possible. What
    smtplib's ``data()`` sends, without its two whole copies.

    Small pieces are gathered into one write and the end of data (a missing CRLF,
    then ".") travels in the last one: a small write after a small write meets
    Nagle's algorithm and the server's delayed ACK, ~40 ms per mail (measured: 23
    instead of 1,200 mails/s)."""
    parts = pieces_of(message)
    tail = b"".join(p[-2:] for p in parts)[-2:]
    ending = b".\r\n" if tail == b"\r\n" else b"\r\n.\r\n"
    pending: list[bytes] = []
    pending_size = 0
    at_line_start = True
    for part in parts:
        pos, size = 0, len(part)
        while pos < size:
            end = min(pos + chunk, size)
            if end < size:
                newline = part.rfind(b"\n", pos, end)
                if newline >= pos:
                    end = newline + 1
            piece = part[pos:end]
            stuffed = _DOT_AFTER_NEWLINE.sub(b"..", piece)
            if at_line_start and piece.startswith(b"."):
                stuffed = b"." + stuffed
            at_line_start = piece.endswith(b"\n")
            pos = end
            pending.append(stuffed)
            pending_size += len(stuffed)
            if pending_size >= chunk:
                yield b"".join(pending)
                pending, pending_size = [], 0
    pending.append(ending)
    yield b"".join(pending)


def send_data(conn: smtplib.SMTP, message: Message, beat: Beat = rest) -> tuple[int, bytes]:
    """``conn.data(message)``, streamed, with a ``beat`` after each piece and while
    the server has yet to answer."""
    code, reply = conn.docmd("data")
    if code != 354:
        raise smtplib.SMTPDataError(code, reply)
    for piece in dot_stuffed(message, DATA_CHUNK):
        conn.send(piece)
        beat()
    await_answer(conn, beat)
    return conn.getreply()


def await_answer(conn: smtplib.SMTP, beat: Beat) -> None:
    """Until the server's answer begins, looking in slices with a ``beat`` between
    them; as long as the socket's timeout lets one read block, then the connection
    is lost, as a timed-out read would have said. A server may check a large mail
    before it answers (a scan, a delivery): seconds in which the daemon is alive."""
    sock = conn.sock
    if sock is None:
        return  # getreply says the connection is gone
    timeout = sock.gettimeout()
    deadline = None if timeout is None else time.monotonic() + timeout
    while not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
        readable, _, _ = select.select([sock], [], [], ANSWER_SLICE)
        if readable:
            return
        beat()
        if deadline is not None and time.monotonic() >= deadline:
            conn.close()
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed: timed out")


class _Stale(Exception):
    """The reused connection was gone before MAIL was accepted."""


Stage = Literal["MAIL", "RCPT", "DATA"]

_ENHANCED = re.compile(rb"^\s*([245]\.\d{1,3}\.\d{1,3})\b")


# --- pure helpers ---------------------------------------------------------------


def status(code: int, text: bytes | str) -> str:
    """``"550 5.1.1"``: the reply code and the enhanced status code, no server text."""
    raw = text.encode("utf-8", "replace") if isinstance(text, str) else text
    m = _ENHANCED.match(raw or b"")
    return f"{code} {m.group(1).decode()}" if m else str(code)


def refusal(stage: Stage, code: int, text: bytes | str) -> SendError:
    """4xx (and anything not a proper 5xx) is worth retrying; 5xx is not."""
    return SendError(f"{stage} refused: {status(code, text)}", temporary=not 500 <= code <= 599)


def is_ascii(value: str) -> bool:
    return value.isascii()


def needs_8bitmime(message: Message) -> bool:
    # isascii() runs in C: a generator over the bytes took 1.6 s for 40 MiB.
    return not all(p.isascii() for p in pieces_of(message))


def xoauth2_string(username: str, token: str) -> str:
    return f"user={username}\x01auth=Bearer {token}\x01\x01"


# --- the shell -------------------------------------------------------------------


class SmtpTransport(Transport):
    name = "smtp"
    takes_pieces = True

    def __init__(
        self,
        host: str,
        port: int,
        security: Security,
        username: str | None = None,
        password: str | None = None,
        *,
        oauth2_token: Callable[..., str] | None = None,
        ca_file: str | None = None,
        timeout: float = 30.0,
        local_hostname: str | None = None,
    ) -> None:
        self.server = ServerAccount(
            host, port, security, username, password, oauth2_token, ca_file, timeout
        )
        if username and password is None and oauth2_token is None:
            raise ValueError("a username needs a password or an oauth2_token provider")
        self._local_hostname = local_hostname
        self._conn: smtplib.SMTP | None = None
        self._last_used = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SmtpTransport({self.server.where()})"

    # --- connection -------------------------------------------------------------------

    def _helo_name(self) -> str:
        if self._local_hostname is None:
            # smtplib would look this up on every connect (a DNS query each time).
            self._local_hostname = socket.getfqdn()
        return self._local_hostname

    def _fail(self, reason: str, exc: BaseException | None = None) -> SendError:
        self._drop()
        log.warning(
            "transport.error",
            transport=self.name,
            host=self.server.host,
            port=self.server.port,
            reason=reason,
            error=type(exc).__name__ if exc is not None else None,
        )
        return SendError(reason, temporary=True)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _connect(self) -> smtplib.SMTP:
        server = self.server
        ctx = server.tls_context()
        name = self._helo_name()
        conn: smtplib.SMTP
        try:
            if server.security == "tls":
                conn = smtplib.SMTP_SSL(
                    server.host,
                    server.port,
                    local_hostname=name,
                    timeout=server.timeout,
                    context=ctx,
                )
            else:
                conn = smtplib.SMTP(
                    server.host, server.port, local_hostname=name, timeout=server.timeout
                )
        except ssl.SSLCertVerificationError as exc:
            raise self._fail("cannot connect: certificate not trusted", exc) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise self._fail(f"cannot connect ({type(exc).__name__})", exc) from None
        self._conn = conn
        try:
            conn.ehlo()
            if server.security == "starttls":
                if not conn.has_extn("starttls"):
                    raise self._fail("cannot connect: server does not offer STARTTLS")
                conn.starttls(context=ctx)
                conn.ehlo()
        except ssl.SSLCertVerificationError as exc:
            raise self._fail("cannot connect: certificate not trusted", exc) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise self._fail(f"cannot connect ({type(exc).__name__})", exc) from None
        if server.username:
            self._login(conn, server.username)
        log.info(
            "transport.connected",
            transport=self.name,
            host=self.server.host,
            port=self.server.port,
            security=self.server.security,
        )
        return conn

    def _token(self, *, refresh: bool) -> str:
        try:
            return self.server.token(refresh=refresh)
        except Exception as exc:
            raise self._fail(
                f"cannot connect: no oauth2 token ({type(exc).__name__})", exc
            ) from None

    def _login(self, conn: smtplib.SMTP, username: str) -> None:
        try:
            if not conn.has_extn("auth"):
                raise self._fail("cannot connect: server offers no AUTH")
            if self.server.oauth2_token is not None:
                login_with_token(
                    lambda token: self._xoauth2(conn, username, token),
                    self._token,
                    smtplib.SMTPAuthenticationError,
                )
            else:
                assert self.server.password is not None
                conn.login(username, self.server.password)
        except smtplib.SMTPAuthenticationError as exc:
            raise self._fail(
                f"cannot connect: login refused {status(exc.smtp_code, exc.smtp_error)}", exc
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise self._fail(f"cannot connect: login failed ({type(exc).__name__})", exc) from None

    @staticmethod
    def _xoauth2(conn: smtplib.SMTP, username: str, token: str) -> None:
        def respond(challenge: bytes | None = None) -> str:
            # A challenge after the initial response is the server's error report;
            # the protocol wants an empty answer, after which it says 535.
            return xoauth2_string(username, token) if challenge is None else ""

        conn.auth("XOAUTH2", respond, initial_response_ok=True)

    def _connection(self) -> tuple[smtplib.SMTP, bool]:
        """The open connection — asked with a NOOP only when it has been idle a
        while — else a new one; and whether it is reused unchecked."""
        conn = self._conn
        if conn is not None:
            if time.monotonic() - self._last_used < NOOP_AFTER_IDLE:
                return conn, True
            try:
                code, _ = conn.noop()
                if code == 250:
                    return conn, False
            except (OSError, smtplib.SMTPException):
                pass
            self._drop()
        return self._connect(), False

    # --- the Transport interface ----------------------------------------------------------

    def size_limit(self) -> int | None:
        """The largest message the server takes (its ESMTP SIZE), None if it names
        none. Connects when not connected: it is asked right before a send."""
        with self._lock:
            conn, _ = self._connection()
            self._conn = conn
            value = conn.esmtp_features.get("size", "").strip()
            return int(value) if value.isdigit() and int(value) > 0 else None

    def send(self, envelope: Envelope, message: Message, *, beat: Beat = rest) -> None:
        """Also takes the message as pieces (``takes_pieces``)."""
        with self._lock:
            conn, unchecked = self._connection()
            try:
                self._transaction(conn, envelope, message, beat, stale_ok=unchecked)
            except _Stale:
                # The server had closed the connection before our MAIL: nothing of
                # this mail reached it, so one retry on a new connection cannot
                # send it twice.
                self._drop()
                self._transaction(self._connect(), envelope, message, beat, stale_ok=False)
            self._last_used = time.monotonic()

    def _transaction(
        self,
        conn: smtplib.SMTP,
        envelope: Envelope,
        message: Message,
        beat: Beat = rest,
        *,
        stale_ok: bool = False,
    ) -> None:
        mail_options: list[str] = []
        if conn.has_extn("size"):
            mail_options.append(f"SIZE={message_size(message)}")
        if needs_8bitmime(message) and conn.has_extn("8bitmime"):
            mail_options.append("BODY=8BITMIME")
        if not (is_ascii(envelope.sender) and is_ascii(envelope.recipient)):
            if not conn.has_extn("smtputf8"):
                raise SendError("MAIL refused: address needs SMTPUTF8", temporary=False)
            mail_options.append("SMTPUTF8")
        stage: Stage = "MAIL"
        try:
            code, text = conn.mail(envelope.sender, mail_options)
            if code in (421, -1) and stale_ok:
                raise _Stale  # the server timed our idle connection out
            if code != 250:
                raise self._refused(conn, stage, code, text)
            stage = "RCPT"
            code, text = conn.rcpt(envelope.recipient)
            if code not in (250, 251):
                raise self._refused(conn, stage, code, text)
            stage = "DATA"
            code, text = send_data(conn, message, beat)
            if code != 250:
                raise self._refused(conn, stage, code, text)
        except smtplib.SMTPDataError as exc:
            # DATA itself (the 354 step) was refused.
            raise self._refused(conn, "DATA", exc.smtp_code, exc.smtp_error) from None
        except smtplib.SMTPServerDisconnected as exc:
            if stale_ok and stage == "MAIL":
                raise _Stale from None
            raise self._fail(f"connection lost at {stage}", exc) from None
        except smtplib.SMTPResponseException as exc:
            raise self._refused(conn, stage, exc.smtp_code, exc.smtp_error) from None
        except (OSError, smtplib.SMTPException) as exc:
            if stale_ok and stage == "MAIL" and isinstance(exc, OSError):
                raise _Stale from None
            raise self._fail(f"connection lost at {stage} ({type(exc).__name__})", exc) from None

    def _refused(self, conn: smtplib.SMTP, stage: Stage, code: int, text: bytes | str) -> SendError:
        error = refusal(stage, code, text)
        if code == 421 or code < 0:
            # The server is closing the connection (or it is gone): start afresh next time.
            self._drop()
        else:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                conn.rset()
        log.warning(
            "transport.refused",
            transport=self.name,
            code=status(code, text),
            reason=stage,
        )
        return error

    def check(self) -> None:
        with self._lock:
            self._drop()
            conn = self._connect()
            self._conn = None
            with contextlib.suppress(Exception):
                conn.quit()
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.quit()
                with contextlib.suppress(Exception):
                    conn.close()
