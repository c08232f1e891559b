"""Exchange Server mailbox over EWS (exchangelib), with an explicit service endpoint.

Keys are EWS item ids. New mail is found with ``SyncFolderItems``; its sync state
is kept in memory and, when the daemon gives a path, in a small file written
atomically only once a sync ran to its end, so that a crash mid-paging leaves the
previous state. The first listing after :meth:`EwsMailbox.open` reports every
message in the folder (``FindItem``), whatever the stored state says: a crash
may have left messages that were listed but never queued.

exchangelib runs with its fail-fast policy; throttling (``ErrorServerBusy`` with the
server's back-off) is waited out here, bounded, and a 401 with an OAuth token is
answered by fetching a new token once.

The connection plumbing (:class:`EwsSettings`, :func:`connect`, :func:`call`) is
shared with :mod:`inboxd.transport.ews`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import requests
import requests.adapters
from exchangelib import (
    DELEGATE,
    IMPERSONATION,
    Account,
    Configuration,
    Credentials,
    FailFast,
    Identity,
)
from exchangelib.credentials import OAuth2AuthorizationCodeCredentials
from exchangelib.errors import (
    ErrorAccessDenied,
    ErrorImpersonateUserDenied,
    ErrorInvalidSyncStateData,
    ErrorItemNotFound,
    ErrorNonExistentMailbox,
    ErrorServerBusy,
    EWSError,
    UnauthorizedError,
)
from exchangelib.folders import DEEP, Folder, FolderCollection
from exchangelib.folders.known_folders import RecoverableItemsDeletions, RecoverableItemsPurges
from exchangelib.items import HARD_DELETE
from exchangelib.properties import CopiedEvent, CreatedEvent, ItemId, MovedEvent, NewMailEvent
from exchangelib.protocol import BaseProtocol, Protocol
from exchangelib.services import GetEvents
from exchangelib.transport import BASIC, NTLM, OAUTH2

from inboxd.logs import get_logger
from inboxd.mailbox.base import MailboxError, MailboxItem
from inboxd.mailbox.graph import read_state, store_state
from inboxd.msauth import TokenError, TokenSource
from inboxd.throttle import Throttle

log = get_logger(__name__)

AuthType = Literal["ntlm", "basic", "oauth2"]
T = TypeVar("T")

# Bounds on waiting out ErrorServerBusy inside one call. A longer BackOffMilliseconds
# (Exchange Online asks for minutes; exchangelib's own test fixtures use ~300 s)
# goes to the shared Throttle: no request until it ends, and the daemon's loop
# sleeps it out while it keeps the watchdog fed.
MAX_BUSY_RETRIES = 4
MAX_BUSY_WAIT = 10.0
# One MIME body per GetItem: a signal with attachments can be tens of MB, and
# exchangelib holds a whole response (base64) in memory while parsing it.
GET_CHUNK = 1
DELETE_CHUNK = 100
PAGE_SIZE = 100  # FindItem page / SyncFolderItems MaxChangesReturned (Exchange caps at 512)
# Pull notifications (see EwsMailbox.wait): how often GetEvents is asked, and how
# long the server keeps an unasked subscription (minutes; each GetEvents renews it).
NOTIFY_INTERVAL = 2.0
SUBSCRIPTION_MINUTES = 10
MAX_EVENT_ROUNDS = 20  # GetEvents per wait step while the server says MoreEvents
NOTIFY_EVENT_TYPES = ("NewMailEvent", "CreatedEvent", "MovedEvent", "CopiedEvent")
_NEW_MAIL = (NewMailEvent, CreatedEvent, MovedEvent, CopiedEvent)
# Where Exchange keeps what was deleted: soft deletes in Deletions, hard deletes
# under single item recovery or a hold in Purges (both distinguished folders).
_RECOVERABLE_PARTS: tuple[tuple[str, type[Folder]], ...] = (
    ("Deletions", RecoverableItemsDeletions),
    ("Purges", RecoverableItemsPurges),
)

# Indirection so tests can observe the waits without sleeping.
_sleep: Callable[[float], None] = time.sleep


# --- TLS: a CA bundle per EWS host ---------------------------------------------------

_CA_BUNDLES: dict[tuple[str, int], str] = {}
_CA_LOCK = threading.Lock()


class _CaBundleAdapter(requests.adapters.HTTPAdapter):
    """Verifies registered EWS hosts against their own CA bundle.

    exchangelib builds its sessions itself and offers ``BaseProtocol.HTTP_ADAPTER_CLS``
    as the hook; the bundle is chosen by host and port. It is applied whatever
    ``verify`` the session computed, because requests lets ``REQUESTS_CA_BUNDLE``
    replace a session's own setting.
    """

    @staticmethod
    def _verify_for(url: str | None, verify: Any) -> Any:
        if verify is False or not url:
            return verify
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return _CA_BUNDLES.get(((parts.hostname or "").lower(), port), verify)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, self._verify_for(url, verify), cert)

    def get_connection_with_tls_context(
        self, request: Any, verify: Any, proxies: Any = None, cert: Any = None
    ) -> Any:
        return super().get_connection_with_tls_context(
            request, self._verify_for(request.url, verify), proxies=proxies, cert=cert
        )


def _register_ca(endpoint: str, ca_file: str) -> None:
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with _CA_LOCK:
        current = BaseProtocol.HTTP_ADAPTER_CLS
        if current is not _CaBundleAdapter:
            if current is not requests.adapters.HTTPAdapter:
                raise ValueError("ca_file: another HTTP adapter is installed in exchangelib")
            BaseProtocol.HTTP_ADAPTER_CLS = _CaBundleAdapter
        _CA_BUNDLES[((parts.hostname or "").lower(), port)] = ca_file


# --- credentials ---------------------------------------------------------------------


class _TokenCredentials(OAuth2AuthorizationCodeCredentials):  # type: ignore[misc]
    """OAuth2 for exchangelib with tokens from our :class:`TokenSource`.

    exchangelib would fetch tokens itself from login.microsoftonline.com (a fixed
    URL); instead every new session takes the provider's current token. The token
    is marked as expiring in four minutes (the provider guarantees at least five),
    so exchangelib renews its session — and with it the token — in time.
    """

    SESSION_TOKEN_SECONDS = 240

    def __init__(self, token: TokenSource, identity: Any) -> None:
        super().__init__(identity=identity)
        self._token_source = token

    def session_params(self) -> dict[str, Any]:
        try:
            tok = self._token_source()
        except TokenError as exc:
            raise _TokenUnavailable(exc) from None
        return {
            "token": {
                "access_token": tok,
                "token_type": "Bearer",
                "expires_at": time.time() + self.SESSION_TOKEN_SECONDS,
            }
        }

    def refresh(self, session: Any) -> None:
        # The next session_params() call asks the provider, which renews as needed.
        return None

    def __repr__(self) -> str:
        return "_TokenCredentials(********)"


class _TokenUnavailable(Exception):
    def __init__(self, error: TokenError) -> None:
        super().__init__(error.reason)
        self.error = error


# --- connection ----------------------------------------------------------------------


@dataclass(frozen=True)
class EwsSettings:
    service_endpoint: str
    username: str
    password: str | None = None
    auth_type: AuthType = "ntlm"
    token: TokenSource | None = None
    primary_smtp_address: str | None = None
    ca_file: str | None = None
    timeout: float = 30.0
    throttle: Throttle = field(default_factory=Throttle, compare=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.service_endpoint)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("service_endpoint must be an https URL of Exchange.asmx")
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "::1", "localhost"):
            # Credentials (Basic, NTLM hashes, bearer tokens) would cross the wire in clear.
            raise ValueError("service_endpoint must use https (http only on loopback)")
        if self.auth_type in ("ntlm", "basic") and not self.password:
            raise ValueError(f"auth_type {self.auth_type} needs a password")
        if self.auth_type == "oauth2" and self.token is None:
            raise ValueError("auth_type oauth2 needs a token provider")
        if "@" not in self.address:
            raise ValueError("primary_smtp_address (or an address as username) is required")
        if self.ca_file:
            if not os.path.isfile(self.ca_file):
                raise ValueError("ca_file does not exist")
            _register_ca(self.service_endpoint, self.ca_file)

    @property
    def address(self) -> str:
        return self.primary_smtp_address or self.username

    @property
    def host(self) -> str:
        return urlsplit(self.service_endpoint).hostname or ""

    def __repr__(self) -> str:
        return (
            f"EwsSettings(service_endpoint={self.service_endpoint!r}, auth_type={self.auth_type!r})"
        )


def connect(settings: EwsSettings) -> Account:
    """An exchangelib Account for the mailbox; sends nothing yet."""
    credentials: Any
    access_type = DELEGATE
    if settings.auth_type == "oauth2":
        assert settings.token is not None
        # App-only tokens act on a mailbox by impersonation (EWS in Exchange Online).
        credentials = _TokenCredentials(
            settings.token, Identity(primary_smtp_address=settings.address)
        )
        access_type = IMPERSONATION
        auth = OAUTH2
    else:
        credentials = Credentials(settings.username, settings.password)
        auth = NTLM if settings.auth_type == "ntlm" else BASIC
    config = Configuration(
        service_endpoint=settings.service_endpoint,
        credentials=credentials,
        auth_type=auth,
        retry_policy=FailFast(),
        max_connections=1,
    )
    account = Account(
        settings.address,
        config=config,
        autodiscover=False,
        access_type=access_type,
        locale="en_US",
        default_timezone=None,
    )
    # Per instance: exchangelib's class default is 120 s.
    account.protocol.TIMEOUT = settings.timeout
    return account


def disconnect(account: Account | None) -> None:
    """Close pooled sessions and forget the cached protocol; never raises."""
    if account is None:
        return
    with contextlib.suppress(Exception):
        account.protocol.close()
    with contextlib.suppress(Exception):
        del Protocol[account.protocol.config]


def reset_sessions(account: Account) -> None:
    """Drop pooled sessions so that the next request builds one with a new token."""
    with contextlib.suppress(Exception):
        account.protocol.close()


def call(
    settings: EwsSettings,
    account: Account,
    fn: Callable[[], T],
    *,
    what: str,
) -> T:
    """Run one EWS operation: wait out throttling (bounded), renew an OAuth token
    once on 401, and turn every failure into an exception without mail content.

    Raises :class:`EwsFailure` carrying a short reason, ``auth`` and whether it is
    worth retrying soon.
    """
    busy_retries = 0
    waited = 0.0
    refreshed = False
    while True:
        left = settings.throttle.remaining()
        if left > 0:
            # The server asked to be left alone: nothing is sent before then.
            raise EwsFailure(
                "ErrorServerBusy (backing off)", auth=False, temporary=True, retry_after=left
            )
        try:
            return fn()
        except ErrorServerBusy as exc:
            delay = float(exc.back_off or 1.0)
            if busy_retries >= MAX_BUSY_RETRIES or waited + delay > MAX_BUSY_WAIT:
                held = settings.throttle.hold(delay)
                log.warning("ews.throttled", kind=what, delay=round(held), attempt=busy_retries)
                raise EwsFailure(
                    "ErrorServerBusy", auth=False, temporary=True, retry_after=held
                ) from None
            log.info("ews.backoff", kind=what, delay=delay, attempt=busy_retries + 1)
            _sleep(delay)
            waited += delay
            busy_retries += 1
        except UnauthorizedError:
            if settings.auth_type == "oauth2" and not refreshed and settings.token is not None:
                refreshed = True
                log.info("ews.token_refresh", kind=what)
                try:
                    settings.token(force_refresh=True)
                except TokenError as exc:
                    raise _token_failure(exc) from None
                reset_sessions(account)
                continue
            raise EwsFailure("UnauthorizedError", auth=True, temporary=False) from None
        except _TokenUnavailable as exc:
            raise _token_failure(exc.error) from None
        except (ErrorAccessDenied, ErrorImpersonateUserDenied, ErrorNonExistentMailbox) as exc:
            raise EwsFailure(type(exc).__name__, auth=True, temporary=False) from None
        except EWSError as exc:
            raise EwsFailure(type(exc).__name__, auth=False, temporary=True) from None
        except (requests.RequestException, OSError) as exc:
            raise EwsFailure(type(exc).__name__, auth=False, temporary=True) from None


class EwsFailure(Exception):
    def __init__(
        self, reason: str, *, auth: bool, temporary: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.auth = auth
        self.temporary = temporary
        self.retry_after = retry_after


def _token_failure(exc: TokenError) -> EwsFailure:
    return EwsFailure(exc.reason, auth=exc.permanent, temporary=not exc.permanent)


# --- the mailbox -----------------------------------------------------------------------


class EwsMailbox:
    """A folder of an Exchange mailbox over EWS (see the module docstring)."""

    name = "ews"

    def __init__(
        self,
        service_endpoint: str,
        username: str,
        *,
        password: str | None = None,
        auth_type: AuthType = "ntlm",
        token: TokenSource | None = None,
        folder: str = "inbox",
        primary_smtp_address: str | None = None,
        ca_file: str | None = None,
        poll_interval: float = 60.0,
        sync_state_path: str | None = None,
        timeout: float = 30.0,
        notifications: bool = True,
        throttle: Throttle | None = None,
    ) -> None:
        if folder.lower() != "inbox":
            # Only the distinguished inbox: a folder path would need FindFolder
            # walks and a name that survives renames.
            raise ValueError('the EWS backend reads the inbox (folder = "inbox")')
        self.settings = EwsSettings(
            service_endpoint=service_endpoint,
            username=username,
            password=password,
            auth_type=auth_type,
            token=token,
            primary_smtp_address=primary_smtp_address,
            ca_file=ca_file,
            timeout=timeout,
            throttle=throttle or Throttle(),
        )
        self.throttle = self.settings.throttle
        self.folder_name = "inbox"
        self.poll_interval = poll_interval
        self.sync_state_path = sync_state_path
        self.notifications = notifications
        self._notify_ok = notifications
        self._subscription: tuple[str, str] | None = None  # (id, watermark)
        self._account: Account | None = None
        self._folder: Folder | None = None
        self._sync_state: str | None = None
        self._first = True
        self._seen: set[str] = set()
        self._scope = {
            "backend": "ews",
            "endpoint": service_endpoint,
            "mailbox": self.settings.address.lower(),
            "folder": self.folder_name,
        }

    def __repr__(self) -> str:
        return f"EwsMailbox({self.settings.host!r})"

    # --- connection ---

    def open(self) -> None:
        self.close()
        account = connect(self.settings)
        try:
            folder = self._call(account, lambda: account.inbox, what="open")
        except MailboxError:
            disconnect(account)
            raise
        self._account, self._folder = account, folder
        # A new connection tries notifications again (the server may have been
        # restarted with them on); subscriptions expire by themselves, unasked.
        self._notify_ok = self.notifications
        self._subscription = None
        self._first = True
        self._seen = set()
        log.info("mailbox.open", backend="ews", host=self.settings.host, folder=self.folder_name)

    def close(self) -> None:
        account, self._account, self._folder = self._account, None, None
        disconnect(account)

    def _call(self, account: Account, fn: Callable[[], T], *, what: str) -> T:
        try:
            return call(self.settings, account, fn, what=what)
        except EwsFailure as exc:
            log.warning("mailbox.error", backend="ews", kind=what, error=exc.reason)
            raise MailboxError(
                f"ews {what}: {exc.reason}", auth=exc.auth, retry_after=exc.retry_after
            ) from None

    def _require(self) -> tuple[Account, Folder]:
        if self._account is None or self._folder is None:
            raise MailboxError("ews: not open")
        return self._account, self._folder

    # --- listing ---

    def list_new(self) -> list[str]:
        account, folder = self._require()
        present: list[tuple[str, Any]] = []
        state = self._sync_state
        if self._first:
            state = read_state(self.sync_state_path, self._scope)
            if state is not None:
                # What the last run may have listed without queueing is in the folder
                # still: list it all, then resume the incremental sync. (Without a
                # stored state the sync from scratch lists everything anyway.)
                present = self._call(account, lambda: self._find_all(folder), what="find")
        changes, new_state = self._call(account, lambda: self._sync(folder, state), what="sync")
        fresh: dict[str, Any] = {}
        for key, received in present:
            if key not in self._seen:
                fresh.setdefault(key, received)
        for kind, key, received in changes:
            if kind == "delete":
                fresh.pop(key, None)
                self._seen.discard(key)
            elif key not in self._seen:
                fresh.setdefault(key, received)
        # Oldest first; items without a received time keep the server's order.
        ordered = sorted(fresh, key=lambda k: (fresh[k] is None, fresh[k] or 0))
        if self.sync_state_path:
            try:
                store_state(self.sync_state_path, self._scope, new_state)
            except OSError as exc:
                log.error("mailbox.state_write_failed", backend="ews", error=type(exc).__name__)
                raise MailboxError("ews: cannot write sync state") from None
        self._sync_state = new_state
        self._first = False
        self._seen.update(ordered)
        if ordered:
            log.info("mailbox.listed", backend="ews", count=len(ordered))
        return ordered

    def _sync(self, folder: Folder, state: str | None) -> tuple[list[tuple[str, str, Any]], str]:
        """All changes since ``state`` (every item when None), and the new state.

        The generator is consumed to its end before anything is returned: only then
        has exchangelib the final sync state of the run. A state the server no
        longer accepts means a sync from scratch, which lists every item present.
        """
        try:
            return self._sync_once(folder, state)
        except ErrorInvalidSyncStateData:
            if state is None:
                raise
            log.warning("mailbox.state_ignored", backend="ews", kind="sync_state")
            return self._sync_once(folder, None)

    @staticmethod
    def _sync_once(folder: Folder, state: str | None) -> tuple[list[tuple[str, str, Any]], str]:
        folder.item_sync_state = state
        out: list[tuple[str, str, Any]] = []
        for change, item in folder.sync_items(
            sync_state=state,
            only_fields=["datetime_received"],
            max_changes_returned=PAGE_SIZE,
        ):
            if change == "delete":
                out.append(("delete", item.id, None))
            elif change == "read_flag_change":
                out.append(("update", item[0].id, None))
            else:
                out.append((change, item.id, getattr(item, "datetime_received", None)))
        new_state = folder.item_sync_state
        if not new_state:
            raise ErrorInvalidSyncStateData("no sync state in the response")
        return out, str(new_state)

    def _find_all(self, folder: Folder) -> list[tuple[str, Any]]:
        qs = folder.all().only("datetime_received").order_by("datetime_received")
        qs.page_size = PAGE_SIZE
        return [(item.id, item.datetime_received) for item in qs]

    # --- content ---

    def fetch(self, keys: Sequence[str]) -> Iterator[MailboxItem]:
        account, folder = self._require()
        for start in range(0, len(keys), GET_CHUNK):
            chunk = list(keys[start : start + GET_CHUNK])

            def get(chunk: list[str] = chunk) -> list[Any]:
                return list(
                    account.fetch(
                        ids=[ItemId(id=k) for k in chunk],
                        folder=folder,
                        only_fields=["mime_content"],
                        chunk_size=GET_CHUNK,
                    )
                )

            results = self._call(account, get, what="fetch")
            for key, result in zip(chunk, results, strict=True):
                if isinstance(result, ErrorItemNotFound):
                    continue
                if isinstance(result, Exception):
                    log.warning(
                        "mailbox.error", backend="ews", kind="fetch", error=type(result).__name__
                    )
                    raise MailboxError(
                        f"ews fetch: {type(result).__name__}",
                        auth=isinstance(result, ErrorAccessDenied),
                    )
                raw = result.mime_content
                if raw is None:
                    raise MailboxError("ews fetch: no MimeContent in the response")
                yield MailboxItem(key, bytes(raw))

    def delete(self, keys: Sequence[str]) -> None:
        account, _folder = self._require()
        failed: list[str] = []
        for start in range(0, len(keys), DELETE_CHUNK):
            chunk = list(keys[start : start + DELETE_CHUNK])

            def remove(chunk: list[str] = chunk) -> list[Any]:
                return list(
                    account.bulk_delete(
                        ids=[ItemId(id=k) for k in chunk],
                        delete_type=HARD_DELETE,
                        chunk_size=DELETE_CHUNK,
                    )
                )

            results = self._call(account, remove, what="delete")
            for key, result in zip(chunk, results, strict=True):
                if result is True or isinstance(result, ErrorItemNotFound):
                    self._seen.discard(key)
                else:
                    failed.append(type(result).__name__)
        if failed:
            log.warning(
                "mailbox.error", backend="ews", kind="delete", error=failed[0], count=len(failed)
            )
            raise MailboxError(
                f"ews delete: {failed[0]} ({len(failed)} not deleted)",
                auth=failed[0] == "ErrorAccessDenied",
            )
        log.info("mailbox.deleted", backend="ews", count=len(keys))

    def verify_deleted(self, keys: Sequence[str], message_ids: Sequence[str]) -> list[str]:
        """Keys of messages still there: any of ``keys`` that still exists, and any
        message whose Message-ID is one of ``message_ids`` in any mail folder or in
        Recoverable Items: Deletions (soft deletes) and Purges (where a hard delete
        lands while single item recovery or a hold is on). A part of Recoverable
        Items the account may not read is skipped and logged as
        ``mailbox.verify_limited``.
        """
        account, folder = self._require()
        still: list[str] = []
        for start in range(0, len(keys), DELETE_CHUNK):
            chunk = list(keys[start : start + DELETE_CHUNK])

            def probe(chunk: list[str] = chunk) -> list[Any]:
                return list(
                    account.fetch(
                        ids=[ItemId(id=k) for k in chunk],
                        folder=folder,
                        only_fields=["id"],
                        chunk_size=DELETE_CHUNK,
                    )
                )

            for key, result in zip(chunk, self._call(account, probe, what="verify"), strict=True):
                if isinstance(result, ErrorItemNotFound):
                    continue
                if isinstance(result, Exception):
                    raise MailboxError(f"ews verify: {type(result).__name__}")
                still.append(key)
        ids = [m for m in message_ids if m]
        if not ids:
            return still

        def mail_folders() -> list[Folder]:
            # Every folder under the mailbox's top (one FindFolder, deep): a rule or
            # a colleague may have filed a copy anywhere.
            found = FolderCollection(
                account=account, folders=[account.msg_folder_root]
            ).find_folders(depth=DEEP)
            return [
                f
                for f in found
                if isinstance(f, Folder)
                and (f.folder_class is None or f.folder_class.startswith("IPF.Note"))
            ]

        places: list[list[Folder]] = []
        everywhere = self._call(account, mail_folders, what="verify")
        for start in range(0, len(everywhere), 50):
            places.append(everywhere[start : start + 50])
        recoverable: list[Folder] = []
        for label, folder_cls in _RECOVERABLE_PARTS:
            part = self._recoverable_part(account, label, folder_cls)
            if part is not None:
                recoverable.append(part)
        for start in range(0, len(ids), 20):
            chunk_ids = ids[start : start + 20]
            for where in [*places, recoverable]:
                if not where:
                    continue

                def search(
                    where: list[Folder] = where, chunk_ids: list[str] = chunk_ids
                ) -> list[str]:
                    qs = FolderCollection(account=account, folders=where).filter(
                        message_id__in=chunk_ids
                    )
                    return [item.id for item in qs.only("id")]

                for key in self._call(account, search, what="verify"):
                    if key not in still:
                        still.append(key)
        return still

    def _recoverable_part(
        self, account: Account, label: str, folder_cls: type[Folder]
    ) -> Folder | None:
        try:
            return self._call(
                account,
                lambda: folder_cls.get_distinguished(root=account.root),
                what="verify",
            )
        except MailboxError as exc:
            if not exc.auth:
                raise
            # Not permitted to look there: say so (every time), check the rest.
            log.info(
                "mailbox.verify_limited",
                backend="ews",
                folder=f"recoverable_items_{label.lower()}",
                reason="not_permitted",
            )
            return None

    def recoverable_items_reach(self) -> dict[str, str]:
        """What ``inboxd check`` reports: which parts of Recoverable Items this
        account can look into after a hard delete."""
        account, _folder = self._require()
        reach: dict[str, str] = {}
        for label, folder_cls in _RECOVERABLE_PARTS:
            part = self._recoverable_part(account, label, folder_cls)
            reach[label] = "readable" if part is not None else "not permitted"
        return reach

    def wait(self, timeout: float, stop: threading.Event) -> None:
        """Until the server announces new mail, ``timeout`` passes or ``stop`` is set.

        With a pull subscription (``Subscribe`` + ``GetEvents`` every
        :data:`NOTIFY_INTERVAL` seconds: one small request, no SyncFolderItems) new
        mail is noticed within seconds. Pull rather than streaming: a streaming
        ``GetStreamingEvents`` holds a request open for whole minutes, which a
        SIGTERM could not interrupt. A server that refuses subscriptions (or a
        subscription that cannot be renewed) means polling every ``poll_interval``
        until the next reconnect, logged once as ``mailbox.notify_unavailable``.
        """
        if not self._notify_ok or self._account is None or self._folder is None:
            stop.wait(max(0.0, min(timeout, self.poll_interval)))
            return
        deadline = time.monotonic() + max(0.0, timeout)
        while not stop.is_set():
            if self._announced(self._account, self._folder):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not self._notify_ok:
                stop.wait(min(left, self.poll_interval))
                return
            stop.wait(min(NOTIFY_INTERVAL, left))

    def _announced(self, account: Account, folder: Folder) -> bool:
        """Whether new mail may be there: announced by an event, or a subscription
        was (re)made, and mail that came in before it would not be announced."""
        if self._subscription is None:
            try:
                sub_id, mark = call(
                    self.settings,
                    account,
                    lambda: folder.subscribe_to_pull(
                        event_types=NOTIFY_EVENT_TYPES, timeout=SUBSCRIPTION_MINUTES
                    ),
                    what="subscribe",
                )
            except EwsFailure as exc:
                self._notify_ok = False
                log.warning("mailbox.notify_unavailable", backend="ews", error=exc.reason)
                return False
            self._subscription = (str(sub_id), str(mark))
            return True
        sub_id, mark = self._subscription

        def poll() -> tuple[bool, str]:
            # Not Folder.get_events: with MoreEvents=true it asks again with the
            # same watermark, and the server answers the same events again. Each
            # request here carries the watermark of the last event received.
            found, latest = False, mark
            service = GetEvents(account=account)
            for _ in range(MAX_EVENT_ROUNDS):
                notification = service.get(subscription_id=sub_id, watermark=latest)
                for event in notification.events:
                    latest = event.watermark or latest
                    found = found or isinstance(event, _NEW_MAIL)
                if not notification.more_events or found:
                    break
            return found, latest

        try:
            found, latest = call(self.settings, account, poll, what="notify")
        except EwsFailure as exc:
            # Expired or forgotten (a server restart): subscribe afresh next time.
            log.info("mailbox.notify_renew", backend="ews", error=exc.reason)
            self._subscription = None
            return False
        self._subscription = (sub_id, latest)
        return found
