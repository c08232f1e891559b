"""Microsoft 365 mailbox over Microsoft Graph (app-only, httpx).

Keys are Graph message ids. New mail is found with a delta query on the folder
(``messages/delta``, ids and received times only); the ``@odata.deltaLink`` is
kept in memory and, when the daemon gives a path, in a small file written
atomically only after the last page of a round, so that a crash mid-paging leaves
the previous link. The first listing after :meth:`GraphMailbox.open` reports every
message in the folder, whatever the stored link says. An expired link (a 410, with
or without ``Location``, or a 400/404 ``syncStateNotFound``/``resyncRequired``)
means a round from the ``Location`` or from scratch, which lists everything anyway.

Throttling (429/503/504) is waited out as ``Retry-After`` says, bounded; a 401 is
answered by fetching a new token once. :class:`GraphClient` and the state-file
helpers are shared with :mod:`inboxd.transport.graph` and the EWS backend.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from inboxd.logs import get_logger
from inboxd.mailbox.base import MailboxError, MailboxItem
from inboxd.msauth import TokenError, TokenSource
from inboxd.throttle import Throttle

log = get_logger(__name__)

T = TypeVar("T")

DEFAULT_ENDPOINT = "https://graph.microsoft.com"
PAGE_SIZE = 100
MAX_RETRIES = 4
DELETIONS_PATH = "/mailFolders/recoverableitemsdeletions/messages"
MAX_DELTA_ROUNDS = 3  # delta rounds in one listing when links keep expiring
MAX_WAIT = 60.0  # seconds of Retry-After waited out inside one call, in total

# Indirection so tests can observe the waits without sleeping.
_sleep: Callable[[float], None] = time.sleep


# --- state file (also used by the EWS backend) ----------------------------------------


def write_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_state(path: str | None, scope: dict[str, str]) -> str | None:
    """The stored state, if the file exists and belongs to this mailbox and folder."""
    if not path:
        return None
    try:
        doc = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log.warning("mailbox.state_unreadable", backend=scope.get("backend"))
        return None
    if (
        not isinstance(doc, dict)
        or doc.get("scope") != scope
        or not isinstance(doc.get("state"), str)
    ):
        log.warning("mailbox.state_ignored", backend=scope.get("backend"))
        return None
    return str(doc["state"])


def store_state(path: str | None, scope: dict[str, str], state: str) -> None:
    if path:
        write_atomically(path, json.dumps({"version": 1, "scope": scope, "state": state}).encode())


# --- HTTP ------------------------------------------------------------------------------


class GraphFailure(Exception):
    """A Graph call failed; ``reason`` is a status and Graph error code, no content."""

    def __init__(
        self,
        reason: str,
        *,
        auth: bool,
        temporary: bool,
        status: int = 0,
        code: str = "",
        location: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.auth = auth
        self.temporary = temporary
        self.status = status
        self.code = code  # Graph's error code ("syncStateNotFound"), "" if none
        self.location = location  # a Location header the error came with
        self.retry_after = retry_after  # seconds the server asked to be left alone


def _error_code(resp: httpx.Response) -> str:
    try:
        doc = resp.json()
        code = doc.get("error", {}).get("code") if isinstance(doc, dict) else None
    except ValueError:
        code = None
    return str(code) if code else "-"


def _retry_after(resp: httpx.Response, attempt: int) -> float:
    value = resp.headers.get("Retry-After", "")
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return float(2**attempt)  # none given: 1, 2, 4, 8 s


class GraphClient:
    """Authenticated requests to ``{endpoint}/v1.0/users/{mailbox}``."""

    def __init__(
        self,
        mailbox: str,
        token: TokenSource,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        timeout: float = 30.0,
        ca_file: str | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        if not endpoint.startswith("https://"):
            raise ValueError("endpoint must be an https:// URL")
        if not mailbox:
            raise ValueError("mailbox (user id or principal name) is required")
        if ca_file and not os.path.isfile(ca_file):
            raise ValueError("ca_file does not exist")
        self.endpoint = endpoint.rstrip("/")
        self.base = f"{self.endpoint}/v1.0/users/{quote(mailbox, safe='@')}"
        self.host = urlsplit(self.endpoint).hostname or ""
        self._token = token
        self._timeout = timeout
        self._ca_file = ca_file
        self._http: httpx.Client | None = None
        self.throttle = throttle or Throttle()

    def _client(self) -> httpx.Client:
        if self._http is None:
            verify: ssl.SSLContext | bool = True
            if self._ca_file:
                verify = ssl.create_default_context(cafile=self._ca_file)
            self._http = httpx.Client(
                timeout=self._timeout,
                verify=verify,
                follow_redirects=False,
                headers={"User-Agent": "inboxd", "Accept": "application/json"},
            )
        return self._http

    def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            with contextlib.suppress(Exception):
                http.close()

    def url(self, path: str) -> str:
        return self.base + path

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        tolerate: tuple[int, ...] = (),
    ) -> httpx.Response:
        """Send one request; returns a response whose status is in ``ok`` or
        ``tolerate``; anything else raises :class:`GraphFailure`."""
        if not url.startswith(self.endpoint + "/"):
            # Links come from the server; the token goes nowhere but the endpoint.
            raise GraphFailure("link outside the Graph endpoint", auth=False, temporary=False)
        refreshed = False
        waited = 0.0
        attempt = 0
        while True:
            left = self.throttle.remaining()
            if left > 0:
                # The service asked to be left alone: nothing is sent before then.
                raise GraphFailure(
                    "HTTP 429 backing off", auth=False, temporary=True, retry_after=left
                )
            try:
                tok = self._token(force_refresh=refreshed)
            except TokenError as exc:
                raise GraphFailure(
                    exc.reason, auth=exc.permanent, temporary=not exc.permanent
                ) from None
            hdrs = {"Authorization": f"Bearer {tok}", **(headers or {})}
            try:
                resp = self._client().request(method, url, content=content, headers=hdrs)
            except httpx.HTTPError as exc:
                self.close()
                raise GraphFailure(type(exc).__name__, auth=False, temporary=True) from None
            status = resp.status_code
            if status in ok or status in tolerate:
                return resp
            code = _error_code(resp)
            resp.close()
            if status == 401 and not refreshed:
                refreshed = True
                log.info("graph.token_refresh", kind=what)
                continue
            retry_after: float | None = None
            if status in (429, 503, 504):
                delay = _retry_after(resp, attempt)
                if attempt < MAX_RETRIES and waited + delay <= MAX_WAIT:
                    log.info(
                        "graph.backoff", kind=what, delay=delay, code=status, attempt=attempt + 1
                    )
                    _sleep(delay)
                    waited += delay
                    attempt += 1
                    continue
                retry_after = self.throttle.hold(delay)
                log.warning("graph.throttled", kind=what, code=status, delay=round(retry_after))
            reason = f"HTTP {status} {code}"
            auth = status in (401, 403)
            temporary = status >= 500 or status in (408, 429)
            log.warning("graph.error", kind=what, code=status, reason=code)
            raise GraphFailure(
                reason,
                auth=auth,
                temporary=temporary,
                status=status,
                code="" if code == "-" else code,
                location=resp.headers.get("Location"),
                retry_after=retry_after,
            )

    def upload(self, url: str, data: bytes, *, chunk: int, hosts: frozenset[str]) -> None:
        """PUT ``data`` to an upload session's URL in byte ranges of at most
        ``chunk``. The URL carries its own token, so no Authorization header goes
        with it (https://learn.microsoft.com/en-us/graph/outlook-large-attachments);
        it must be https on the Graph host or one of ``hosts``."""
        parts = urlsplit(url)
        if parts.scheme != "https" or (parts.hostname or "") not in hosts | {self.host}:
            raise GraphFailure("upload URL outside Graph and Outlook", auth=False, temporary=False)
        total = len(data)
        for start in range(0, total, chunk):
            left = self.throttle.remaining()
            if left > 0:
                raise GraphFailure(
                    "HTTP 429 backing off", auth=False, temporary=True, retry_after=left
                )
            piece = data[start : start + chunk]
            end = start + len(piece) - 1
            try:
                resp = self._client().put(
                    url,
                    content=piece,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"bytes {start}-{end}/{total}",
                    },
                )
            except httpx.HTTPError as exc:
                self.close()
                raise GraphFailure(type(exc).__name__, auth=False, temporary=True) from None
            last = end + 1 == total
            if resp.status_code not in ((200, 201) if last else (200,)):
                code = _error_code(resp)
                status = resp.status_code
                held = None
                if status in (429, 503, 504):
                    held = self.throttle.hold(_retry_after(resp, 0))
                resp.close()
                log.warning("graph.error", kind="upload", code=status, reason=code)
                raise GraphFailure(
                    f"HTTP {status} {code}",
                    auth=status in (401, 403),
                    temporary=status >= 500 or status in (408, 429),
                    status=status,
                    code="" if code == "-" else code,
                    retry_after=held,
                )
            resp.close()


# Error codes that mean "this delta link is dead, synchronise again"
# (https://learn.microsoft.com/en-us/graph/delta-query-overview; SyncStateInvalid:
# a link made without the ImmutableId preference, alcionai/corso#3176).
_RESYNC_CODES = frozenset({"syncstatenotfound", "resyncrequired", "syncstateinvalid"})


def delta_expired(exc: GraphFailure) -> bool:
    """Whether a delta request failed because its link expired: a 410, or a 4xx
    (400 and 404 are both seen) with a resync code."""
    if exc.status == 410:
        return True
    return 400 <= exc.status < 500 and exc.code.lower() in _RESYNC_CODES


def odata_quote(value: str) -> str:
    """A string literal for ``$filter``."""
    return "'" + value.replace("'", "''") + "'"


# --- the mailbox -----------------------------------------------------------------------


class GraphMailbox:
    """A folder of a Microsoft 365 mailbox (see the module docstring).

    ``folder`` is a well-known folder name (``inbox``) or a folder id.
    """

    name = "graph"

    def __init__(
        self,
        tenant_id: str,
        client_id: str,
        mailbox: str,
        token: TokenSource,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        folder: str = "inbox",
        delta_state_path: str | None = None,
        timeout: float = 30.0,
        ca_file: str | None = None,
        poll_interval: float = 60.0,
        throttle: Throttle | None = None,
    ) -> None:
        self.client = GraphClient(
            mailbox, token, endpoint=endpoint, timeout=timeout, ca_file=ca_file, throttle=throttle
        )
        self.throttle = self.client.throttle
        self.folder = folder
        self.delta_state_path = delta_state_path
        self.poll_interval = poll_interval
        self._folder_path = f"/mailFolders/{quote(folder, safe='-_=')}"
        self._delta_link: str | None = None
        self._first = True
        self._open = False
        self._seen: set[str] = set()
        self._scope = {
            "backend": "graph",
            "endpoint": self.client.endpoint,
            "tenant": tenant_id,
            "client": client_id,
            "mailbox": mailbox.lower(),
            "folder": folder,
        }

    def __repr__(self) -> str:
        return f"GraphMailbox({self.client.host!r})"

    def _call(self, fn: Callable[[], T], what: str) -> T:
        with self._failures(what):
            return fn()

    @contextlib.contextmanager
    def _failures(self, what: str) -> Iterator[None]:
        try:
            yield
        except GraphFailure as exc:
            log.warning("mailbox.error", backend="graph", kind=what, error=exc.reason)
            raise MailboxError(
                f"graph {what}: {exc.reason}", auth=exc.auth, retry_after=exc.retry_after
            ) from None

    def _get_json(
        self, url: str, what: str, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        resp = self.client.request("GET", url, what=what, headers=headers)
        try:
            doc = resp.json()
        except ValueError:
            raise GraphFailure("response is not JSON", auth=False, temporary=True) from None
        if not isinstance(doc, dict):
            raise GraphFailure("response is not an object", auth=False, temporary=True)
        return doc

    # --- connection ---

    def open(self) -> None:
        self.close()

        def probe() -> None:
            try:
                self._get_json(self.client.url(self._folder_path + "?$select=id"), "open")
            except GraphFailure as exc:
                if exc.status in (400, 404):
                    # No such mailbox or folder: configuration, not a network blip.
                    raise GraphFailure(
                        exc.reason, auth=True, temporary=False, status=exc.status
                    ) from None
                raise

        self._call(probe, "open")
        self._open = True
        self._first = True
        self._seen = set()
        log.info("mailbox.open", backend="graph", host=self.client.host, folder=self.folder)

    def close(self) -> None:
        self._open = False
        self.client.close()

    def _require(self) -> None:
        if not self._open:
            raise MailboxError("graph: not open")

    # --- listing ---

    def list_new(self) -> list[str]:
        self._require()
        present: list[tuple[str, str]] = []
        link = self._delta_link
        if self._first:
            link = read_state(self.delta_state_path, self._scope)
            if link is not None and not link.startswith(self.client.endpoint + "/"):
                link = None
            if link is not None:
                present = self._call(self._list_all, "list")
        changes, new_link = self._call(lambda: self._delta(link), "delta")
        fresh: dict[str, str] = {}
        for key, received in present:
            if key not in self._seen:
                fresh.setdefault(key, received)
        for removed, key, received in changes:
            if removed:
                fresh.pop(key, None)
                self._seen.discard(key)
            elif key not in self._seen:
                fresh.setdefault(key, received)
        ordered = sorted(fresh, key=lambda k: fresh[k])  # ISO 8601 UTC sorts as text
        try:
            store_state(self.delta_state_path, self._scope, new_link)
        except OSError as exc:
            log.error("mailbox.state_write_failed", backend="graph", error=type(exc).__name__)
            raise MailboxError("graph: cannot write delta state") from None
        self._delta_link = new_link
        self._first = False
        self._seen.update(ordered)
        if ordered:
            log.info("mailbox.listed", backend="graph", count=len(ordered))
        return ordered

    def _delta(self, link: str | None) -> tuple[list[tuple[bool, str, str]], str]:
        """A delta round from ``link`` (from scratch when None). A link the service
        no longer honours, in any of the forms it uses, means a round from where
        the service says (a 410's ``Location``) or from scratch: that lists every
        message in the folder, and what was listed before is known by key, so
        nothing is lost and nothing is listed twice."""
        rounds = 0
        while True:
            rounds += 1
            try:
                return self._delta_round(link)
            except GraphFailure as exc:
                if not delta_expired(exc) or rounds >= MAX_DELTA_ROUNDS:
                    raise  # expired again and again: the next cycle tries anew
                restart = exc.location if exc.status == 410 else None
                if restart is not None and (
                    restart == link or not restart.startswith(self.client.endpoint + "/")
                ):
                    restart = None
                log.warning(
                    "mailbox.state_ignored",
                    backend="graph",
                    kind="delta_expired",
                    code=exc.status,
                    reason=exc.code or "-",
                    restart="location" if restart else "scratch",
                )
                link = restart

    def _delta_round(self, link: str | None) -> tuple[list[tuple[bool, str, str]], str]:
        """One delta round to its last page. Nothing is kept from an unfinished round."""
        url = link or self.client.url(
            self._folder_path + "/messages/delta?$select=id,receivedDateTime"
        )
        prefer = {"Prefer": f"odata.maxpagesize={PAGE_SIZE}"}
        out: list[tuple[bool, str, str]] = []
        while True:
            page = self._get_json(url, "delta", headers=prefer)
            for entry in page.get("value", []):
                key = entry.get("id")
                if not isinstance(key, str):
                    continue
                out.append(("@removed" in entry, key, str(entry.get("receivedDateTime") or "")))
            if "@odata.nextLink" in page:
                url = str(page["@odata.nextLink"])
                continue
            if "@odata.deltaLink" in page:
                return out, str(page["@odata.deltaLink"])
            raise GraphFailure("delta page without next or delta link", auth=False, temporary=True)

    def _list_all(self) -> list[tuple[str, str]]:
        url = self.client.url(
            self._folder_path
            + f"/messages?$select=id,receivedDateTime&$orderby=receivedDateTime%20asc&$top={PAGE_SIZE}"
        )
        out: list[tuple[str, str]] = []
        while True:
            page = self._get_json(url, "list")
            for entry in page.get("value", []):
                if isinstance(entry.get("id"), str):
                    out.append((entry["id"], str(entry.get("receivedDateTime") or "")))
            if "@odata.nextLink" not in page:
                return out
            url = str(page["@odata.nextLink"])

    # --- content ---

    def _message_url(self, key: str, suffix: str = "") -> str:
        return self.client.url(f"/messages/{quote(key, safe='-_=')}{suffix}")

    def fetch(self, keys: Sequence[str]) -> Iterator[MailboxItem]:
        self._require()
        for key in keys:
            with self._failures("fetch"):
                resp = self.client.request(
                    "GET", self._message_url(key, "/$value"), what="fetch", tolerate=(404,)
                )
            if resp.status_code == 404:
                continue
            yield MailboxItem(key, resp.content)

    def delete(self, keys: Sequence[str]) -> None:
        self._require()
        for key in keys:
            with self._failures("delete"):
                self.client.request(
                    "POST",
                    self._message_url(key, "/permanentDelete"),
                    what="delete",
                    ok=(200, 204),
                    tolerate=(404,),
                )
            self._seen.discard(key)
        log.info("mailbox.deleted", backend="graph", count=len(keys))

    def verify_deleted(self, keys: Sequence[str], message_ids: Sequence[str]) -> list[str]:
        """Keys of messages still there: any of ``keys`` that still answers, and any
        message with one of ``message_ids`` in any mail folder of the mailbox
        (``/messages``) or in Recoverable Items\\Deletions
        (``recoverableitemsdeletions``, where the app may read it).

        What ``permanentDelete`` keeps under single item recovery or a hold goes to
        Recoverable Items\\Purges, which Graph cannot read: every check says so
        (``mailbox.verify_limited``), so that nobody takes "verified" to cover it.
        """
        self._require()
        if not keys and not message_ids:
            return []
        log.info(
            "mailbox.verify_limited",
            backend="graph",
            folder="recoverable_items_purges",
            reason="not_readable_by_graph",
        )
        still: list[str] = []
        for key in keys:
            with self._failures("verify"):
                resp = self.client.request(
                    "GET", self._message_url(key, "?$select=id"), what="verify", tolerate=(404,)
                )
            if resp.status_code != 404:
                still.append(key)
        places = ["/messages", DELETIONS_PATH]
        for mid in message_ids:
            if not mid:
                continue
            flt = quote(f"internetMessageId eq {odata_quote(mid)}", safe="")
            for place in places:
                url = self.client.url(place + f"?$select=id&$filter={flt}")
                with self._failures("verify"):
                    resp = self.client.request("GET", url, what="verify", tolerate=(403, 404))
                if resp.status_code in (403, 404):
                    log.info(
                        "mailbox.verify_limited",
                        backend="graph",
                        folder="recoverable_items_deletions",
                        reason="not_permitted",
                    )
                    places = places[:1]
                    continue
                try:
                    found = resp.json().get("value", [])
                except (ValueError, AttributeError):
                    raise MailboxError("graph verify: response is not JSON") from None
                for entry in found:
                    item = entry.get("id") if isinstance(entry, dict) else None
                    if isinstance(item, str) and item not in still:
                        still.append(item)
        return still

    def recoverable_items_reach(self) -> dict[str, str]:
        """What ``inboxd check`` reports: which parts of Recoverable Items this app
        can look into after a hard delete (``readable``, ``not permitted``, or
        ``not readable by Graph``)."""
        self._require()
        with self._failures("check"):
            resp = self.client.request(
                "GET",
                self.client.url(DELETIONS_PATH + "?$select=id&$top=1"),
                what="check",
                tolerate=(403, 404),
            )
        deletions = "not permitted" if resp.status_code in (403, 404) else "readable"
        return {"Deletions": deletions, "Purges": "not readable by Graph"}

    def wait(self, timeout: float, stop: threading.Event) -> None:
        stop.wait(max(0.0, min(timeout, self.poll_interval)))
