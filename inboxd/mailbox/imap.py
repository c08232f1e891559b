"""IMAP mailbox backend (imapclient): UID-keyed listing, PEEK fetches, UID EXPUNGE
of exactly our messages, and IDLE for prompt pickup.

Keys are ``"<uidvalidity>:<uid>"``. The pure helpers at the top decide what to
list, how to batch and what counts as "new mail"; :class:`ImapMailbox` is the thin
shell that talks to the server and turns every failure into :class:`MailboxError`
without server text (a server's error message may quote a header).
"""

from __future__ import annotations

import contextlib
import imaplib
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from inboxd.logs import get_logger
from inboxd.mailbox.base import Mailbox, MailboxError, MailboxItem
from inboxd.mailserver import Security, ServerAccount, login_with_token
from inboxd.pace import Beat, rest
from inboxd.tokens import TokenError

log = get_logger(__name__)


FETCH_BATCH = 200  # bounded by FETCH_BATCH_BYTES too
FETCH_BATCH_BYTES = 4 * 1024 * 1024  # a bigger message comes alone, in parts
# A message bigger than this is fetched in parts of this size (BODY.PEEK[]<offset.n>)
# into one buffer: imaplib holds a whole literal two or three times over while it
# reads it, which for a 40 MB signal would be the daemon's peak memory.
FETCH_PART_BYTES = 4 * 1024 * 1024
UID_CHUNK = 500  # UIDs per command, to keep command lines short
IDLE_SLICE = 0.5  # seconds between looks at ``stop`` while idling

_DELETED = b"\\Deleted"
# What a server or a broken connection can make imapclient raise (SSLError and
# timeouts are OSErrors; imapclient's own errors are imaplib's; a malformed answer
# can end in ValueError/KeyError while parsing).
_ERRORS = (OSError, imaplib.IMAP4.error, ValueError, KeyError)
# What may go into a SEARCH argument as it is: printable ASCII without space and
# without IMAP specials. imapclient sends 7-bit arguments inline, so a CR/LF in an
# attacker's Message-ID would otherwise become a second IMAP command, and "{5}"
# could be read as a literal.
_SAFE_MESSAGE_ID = re.compile(r"[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|~]{1,250}")


# --- pure helpers ---------------------------------------------------------------


def make_key(uidvalidity: int, uid: int) -> str:
    return f"{uidvalidity}:{uid}"


def parse_key(key: str) -> tuple[int, int] | None:
    """``"<uidvalidity>:<uid>"`` → ints, or None for anything else."""
    left, sep, right = key.partition(":")
    if not sep or not left.isdigit() or not right.isdigit():
        return None
    return int(left), int(right)


def uids_for(keys: Iterable[str], uidvalidity: int) -> list[int]:
    """UIDs of the keys that belong to this UIDVALIDITY, in order, without repeats."""
    seen: set[int] = set()
    out: list[int] = []
    for key in keys:
        parsed = parse_key(key)
        if parsed is None or parsed[0] != uidvalidity or parsed[1] in seen:
            continue
        seen.add(parsed[1])
        out.append(parsed[1])
    return out


def new_uids(found: Iterable[int], last_uid: int | None) -> list[int]:
    """Sorted UIDs above ``last_uid``. ``UID SEARCH UID n:*`` always returns the
    newest message even when its UID is below n, hence the filter."""
    return sorted(uid for uid in set(found) if last_uid is None or uid > last_uid)


def batches(
    uids: Sequence[int],
    sizes: Mapping[int, int],
    max_count: int = FETCH_BATCH,
    max_bytes: int = FETCH_BATCH_BYTES,
) -> list[list[int]]:
    """Split ``uids`` (those present in ``sizes``) into fetch batches bounded by
    count and total size; a message larger than ``max_bytes`` goes alone."""
    out: list[list[int]] = []
    current: list[int] = []
    total = 0
    for uid in uids:
        if uid not in sizes:
            continue
        size = sizes[uid]
        if current and (len(current) >= max_count or total + size > max_bytes):
            out.append(current)
            current, total = [], 0
        current.append(uid)
        total += size
    if current:
        out.append(current)
    return out


T = TypeVar("T")


def chunks(items: Sequence[T], size: int = UID_CHUNK) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def has_new_mail(responses: Iterable[Any]) -> bool:
    """True when an untagged EXISTS or RECENT is among IDLE/NOOP responses."""
    return any(
        isinstance(r, tuple) and len(r) >= 2 and r[1] in (b"EXISTS", b"RECENT") for r in responses
    )


def says_bye(responses: Iterable[Any]) -> bool:
    return any(isinstance(r, tuple) and r and r[0] == b"BYE" for r in responses)


def searchable_message_id(message_id: str) -> str | None:
    """The Message-ID if it can go into a SEARCH safely, else None."""
    value = message_id.strip()
    return value if _SAFE_MESSAGE_ID.fullmatch(value) else None


def fetch_in_parts(client: IMAPClient, uid: int, part: int, beat: Beat = rest) -> bytearray | None:
    """The message's bytes, fetched ``part`` bytes at a time (RFC 3501 partial
    fetch) into one growing buffer; None when the message is gone. The buffer is
    returned as is: copying it into ``bytes`` would double the peak again. ``beat``
    comes between the parts: a 40 MiB message takes seconds to come in."""
    buf = bytearray()
    while True:
        if buf:
            beat()
        reply = client.fetch([uid], [f"BODY.PEEK[]<{len(buf)}.{part}>".encode()])
        chunk = next((v for k, v in reply.get(uid, {}).items() if k.startswith(b"BODY[]<")), None)
        if not isinstance(chunk, bytes):
            return buf if buf else None
        buf += chunk
        got = len(chunk)
        del reply, chunk
        if got < part:  # a short (or empty) part is the last one
            return buf


def any_message_id(ids: Sequence[str]) -> list[str]:
    """SEARCH criteria matching a message with any of these Message-IDs (IMAP's OR
    takes two keys, so n ids need n-1 ORs in front)."""
    keys: list[str] = ["OR"] * (len(ids) - 1)
    for mid in ids:
        keys += ["HEADER", "Message-ID", mid]
    return keys


def _error_reason(op: str, exc: BaseException) -> str:
    # Only the operation and the exception type: never the server's words.
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{op}: certificate not trusted (SSLCertVerificationError)"
    return f"{op} failed ({type(exc).__name__})"


# --- the shell -------------------------------------------------------------------


class ImapMailbox(Mailbox):
    """One folder on an IMAP server. Safe to call from several threads: a caller
    that needs the connection while :meth:`wait` idles ends the IDLE early."""

    name = "imap"

    def __init__(
        self,
        host: str,
        port: int,
        security: Security,
        username: str,
        password: str | None = None,
        *,
        oauth2_token: Callable[..., str] | None = None,
        folder: str = "INBOX",
        ca_file: str | None = None,
        use_idle: bool = True,
        poll_interval: float = 60.0,
        timeout: float = 30.0,
        idle_renew: float = 600.0,
    ) -> None:
        self.server = ServerAccount(
            host, port, security, username, password, oauth2_token, ca_file, timeout
        )
        if password is None and oauth2_token is None:
            raise ValueError("give a password or an oauth2_token provider")
        self.username = username
        self.folder = folder
        self.use_idle = use_idle
        self.poll_interval = poll_interval
        self.idle_renew = idle_renew
        self._client: IMAPClient | None = None
        self._caps: frozenset[bytes] = frozenset()
        self._uidvalidity: int | None = None
        self._last_uid: int | None = None  # None: the next list_new lists everything
        self._lock = threading.RLock()
        self._wanted = 0  # threads waiting for the connection while wait() idles
        self._wanted_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ImapMailbox({self.server.where()})"

    # --- connection ---------------------------------------------------------------

    @contextlib.contextmanager
    def _use(self) -> Iterator[None]:
        with self._wanted_lock:
            self._wanted += 1
        try:
            self._lock.acquire()
        finally:
            with self._wanted_lock:
                self._wanted -= 1
        try:
            yield
        finally:
            self._lock.release()

    def _drop(self) -> None:
        client, self._client = self._client, None
        self._last_uid = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.shutdown()

    def _fail(self, op: str, exc: BaseException, *, auth: bool = False) -> MailboxError:
        self._drop()
        reason = "login refused" if auth else _error_reason(op, exc)
        log.warning(
            "mailbox.error",
            backend=self.name,
            host=self.server.host,
            port=self.server.port,
            reason=reason,
            error=type(exc).__name__,
        )
        return MailboxError(reason, auth=auth)

    def _token(self, *, refresh: bool) -> str:
        try:
            return self.server.token(refresh=refresh)
        except Exception as exc:
            # A TokenError says whether retrying can help; other errors: assume not.
            permanent = exc.permanent if isinstance(exc, TokenError) else True
            self._drop()
            log.warning(
                "mailbox.error", backend=self.name, reason="oauth2 token", error=type(exc).__name__
            )
            raise MailboxError(f"no oauth2 token ({type(exc).__name__})", auth=permanent) from None

    def _connect(self) -> IMAPClient:
        server = self.server
        ctx = server.tls_context()
        try:
            if server.security == "tls":
                client = IMAPClient(
                    server.host, port=server.port, ssl=True, ssl_context=ctx, timeout=server.timeout
                )
            else:
                client = IMAPClient(
                    server.host, port=server.port, ssl=False, timeout=server.timeout
                )
        except _ERRORS as exc:
            raise self._fail("connect", exc) from None
        self._client = client
        try:
            if server.security == "starttls":
                if not client.has_capability("STARTTLS"):
                    self._drop()
                    log.warning("mailbox.error", backend=self.name, reason="no STARTTLS offered")
                    raise MailboxError("server does not offer STARTTLS")
                client.starttls(ctx)
        except _ERRORS as exc:
            raise self._fail("starttls", exc) from None
        self._login(client)
        return client

    def _login(self, client: IMAPClient) -> None:
        try:
            if self.server.oauth2_token is not None:
                login_with_token(
                    lambda token: client.oauth2_login(self.username, token), self._token, LoginError
                )
            else:
                assert self.server.password is not None
                client.login(self.username, self.server.password)
        except LoginError as exc:
            raise self._fail("login", exc, auth=True) from None
        except _ERRORS as exc:
            raise self._fail("login", exc) from None

    def _select(self, client: IMAPClient) -> int:
        info = client.select_folder(self.folder, readonly=False)
        uidvalidity = int(info[b"UIDVALIDITY"])
        if uidvalidity != self._uidvalidity:
            # Other UIDs now: whatever we listed before means nothing any more.
            self._last_uid = None
        self._uidvalidity = uidvalidity
        return uidvalidity

    def open(self) -> None:
        """Connect, log in and select the folder; a no-op while connected."""
        with self._use():
            if self._client is not None:
                return
            client = self._connect()
            try:
                self._caps = frozenset(c.upper() for c in client.capabilities())
                uidvalidity = self._select(client)
            except _ERRORS as exc:
                raise self._fail("select", exc) from None
            self._last_uid = None
            log.info(
                "mailbox.connected",
                backend=self.name,
                host=self.server.host,
                port=self.server.port,
                security=self.server.security,
                idle=self._idle_usable(),
                uidvalidity=uidvalidity,
            )
            if b"UIDPLUS" not in self._caps:
                log.warning("mailbox.no_uidplus", backend=self.name, host=self.server.host)

    def close(self) -> None:
        with self._use():
            client, self._client = self._client, None
            self._last_uid = None
            if client is not None:
                with contextlib.suppress(Exception):
                    client.logout()
                with contextlib.suppress(Exception):
                    client.shutdown()

    def _ready(self) -> tuple[IMAPClient, int]:
        if self._client is None:
            self.open()
        assert self._client is not None and self._uidvalidity is not None
        return self._client, self._uidvalidity

    def _idle_usable(self) -> bool:
        return self.use_idle and b"IDLE" in self._caps

    # --- the Mailbox interface --------------------------------------------------------

    def list_new(self) -> list[str]:
        with self._use():
            client, uidvalidity = self._ready()
            try:
                # Dovecot (like others) shows new mail to a session only after a sync;
                # without this NOOP the SEARCH would miss what just arrived.
                client.noop()
                if self._last_uid is None:
                    found = client.search("ALL")
                else:
                    found = client.search(["UID", f"{self._last_uid + 1}:*"])
            except _ERRORS as exc:
                raise self._fail("search", exc) from None
            uids = new_uids(found, self._last_uid)
            if uids:
                self._last_uid = max(uids[-1], self._last_uid or 0)
            elif self._last_uid is None:
                self._last_uid = 0
            return [make_key(uidvalidity, uid) for uid in uids]

    def fetch(self, keys: Sequence[str], *, beat: Beat = rest) -> Iterator[MailboxItem]:
        with self._use():
            client, uidvalidity = self._ready()
            wanted = uids_for(keys, uidvalidity)
            sizes: dict[int, int] = {}
            try:
                for chunk in chunks(wanted):
                    for uid, data in client.fetch(chunk, [b"RFC822.SIZE"]).items():
                        size = data.get(b"RFC822.SIZE")
                        if isinstance(size, int):
                            sizes[uid] = size
            except _ERRORS as exc:
                raise self._fail("fetch", exc) from None
        # The lock is not held across yields: the caller may delete between items.
        limit = min(FETCH_BATCH_BYTES, FETCH_PART_BYTES)
        for batch in batches(wanted, sizes, FETCH_BATCH, limit):
            with self._use():
                client, current = self._ready()
                if current != uidvalidity:
                    return
                try:
                    if len(batch) == 1 and sizes.get(batch[0], 0) > limit:
                        big = fetch_in_parts(client, batch[0], FETCH_PART_BYTES, beat)
                        data = {} if big is None else {batch[0]: {b"BODY[]": big}}
                    else:
                        data = client.fetch(batch, [b"BODY.PEEK[]"])
                except _ERRORS as exc:
                    raise self._fail("fetch", exc) from None
            for uid in batch:
                raw = data.get(uid, {}).get(b"BODY[]")
                if isinstance(raw, bytes | bytearray):
                    # A bytearray is used as bytes from here on (see MailboxItem).
                    yield MailboxItem(make_key(uidvalidity, uid), cast(bytes, raw))
                data.pop(uid, None)  # one big message in memory at a time, not two

    def delete(self, keys: Sequence[str]) -> None:
        with self._use():
            client, uidvalidity = self._ready()
            uids = uids_for(keys, uidvalidity)
            if len(uids) < len(keys):
                # Keys of an earlier UIDVALIDITY name nothing any more; never guess.
                log.info("mailbox.stale_keys", backend=self.name, count=len(keys) - len(uids))
            if not uids:
                return
            if b"UIDPLUS" not in self._caps:
                # A plain EXPUNGE would also remove what other clients marked \Deleted.
                log.error("mailbox.no_uidplus", backend=self.name, count=len(uids))
                raise MailboxError("server lacks UIDPLUS: refusing to expunge")
            try:
                for chunk in chunks(uids):
                    client.add_flags(chunk, [_DELETED], silent=True)
                    client.uid_expunge(chunk)
            except _ERRORS as exc:
                raise self._fail("expunge", exc) from None
            log.info("mailbox.expunged", backend=self.name, count=len(uids))

    def verify_deleted(self, keys: Sequence[str], message_ids: Sequence[str]) -> list[str]:
        """Folders in which any of these messages can still be found: by UID in our
        folder, and by ``HEADER Message-ID`` in every folder of ``LIST "" "*"`` (one
        ``SEARCH`` per folder and chunk, the ids joined with ``OR``)."""
        with self._use():
            client, uidvalidity = self._ready()
            uids = uids_for(keys, uidvalidity)
            ids = [m for m in (searchable_message_id(x) for x in message_ids) if m]
            if len(ids) < len(message_ids):
                # Left out rather than quoted: a Message-ID with CR/LF or quotes must
                # never reach the IMAP command line. Such a message is checked by UID.
                log.warning(
                    "mailbox.message_id_unsearchable",
                    backend=self.name,
                    count=len(message_ids) - len(ids),
                    reason="message_id_unsearchable",
                )
            found: list[str] = []
            try:
                for chunk in chunks(uids):
                    if set(client.search(["UID", ",".join(map(str, chunk))])) & set(chunk):
                        found.append(self.folder)
                        break
                if ids:
                    folders = [
                        name
                        for flags, _delim, name in client.list_folders()
                        if not {b"\\NOSELECT", b"\\NONEXISTENT"} & {f.upper() for f in flags}
                    ]
                    for name in folders:
                        client.select_folder(name, readonly=True)
                        if any(client.search(any_message_id(part)) for part in chunks(ids, 20)):
                            found.append(name)
                    self._select(client)
            except _ERRORS as exc:
                raise self._fail("verify", exc) from None
            return sorted(set(found))

    # --- waiting --------------------------------------------------------------------

    def wait(self, timeout: float, stop: threading.Event) -> None:
        if self._client is None or not self._idle_usable():
            stop.wait(max(0.0, min(timeout, self.poll_interval)))
            return
        deadline = time.monotonic() + max(0.0, timeout)
        with self._use():
            client = self._client
            if client is None:
                return
            try:
                self._idle_until(client, deadline, stop)
            except MailboxError:
                raise
            except _ERRORS as exc:
                raise self._fail("idle", exc) from None

    def _someone_waiting(self) -> bool:
        with self._wanted_lock:
            return self._wanted > 0

    def _idle_until(self, client: IMAPClient, deadline: float, stop: threading.Event) -> None:
        # Changes since our last command are reported by NOOP; IDLE only tells of later ones.
        _text, responses = client.noop()
        if has_new_mail(responses):
            return
        while not stop.is_set() and not self._someone_waiting() and time.monotonic() < deadline:
            client.idle()
            started = time.monotonic()
            new = False
            # The server may have sent EXISTS together with "+ idling"; it then sits
            # in a buffer that idle_check's poll() cannot see. DONE collects it.
            if not self._input_buffered(client):
                while True:
                    now = time.monotonic()
                    slice_ = min(IDLE_SLICE, deadline - now, started + self.idle_renew - now)
                    if slice_ <= 0 or stop.is_set() or self._someone_waiting():
                        break
                    responses = client.idle_check(timeout=slice_)
                    if says_bye(responses):
                        raise self._fail("idle", ConnectionAbortedError())
                    if has_new_mail(responses):
                        new = True
                        break
                    if not responses and time.monotonic() - now < slice_ / 2:
                        # poll() woke without a whole response, typically EOF:
                        # DONE below fails then, or we simply idle again.
                        break
            _text, responses = client.idle_done()
            if new or has_new_mail(responses):
                return
            if says_bye(responses):
                raise self._fail("idle", ConnectionAbortedError())

    def _input_buffered(self, client: IMAPClient) -> bool:
        """Whether bytes already sit in imaplib's read buffer or the TLS layer."""
        sock = client.socket()
        reader = getattr(client._imap, "file", None)
        if reader is None or not hasattr(reader, "peek"):
            return False
        sock.setblocking(False)
        try:
            return bool(reader.peek(1))
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError, InterruptedError):
            return False
        finally:
            sock.settimeout(self.server.timeout)
