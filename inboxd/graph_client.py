"""The Microsoft Graph client shared by the Graph mailbox and the Graph transport:
authenticated requests to one mailbox, throttling (429/503/504) waited out as
``Retry-After`` says, bounded, and beyond that handed to the shared back-off; a 401
answered by fetching a new token once; failures without mail content."""

from __future__ import annotations

import contextlib
import email.utils
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from inboxd.logs import get_logger
from inboxd.pace import Beat, rest
from inboxd.throttle import Throttle
from inboxd.tokens import TokenError, TokenSource

log = get_logger(__name__)

T = TypeVar("T")

DEFAULT_ENDPOINT = "https://graph.microsoft.com"
MAX_RETRIES = 4
MAX_WAIT = 60.0  # seconds of Retry-After waited out inside one call, in total

# Indirection so tests can observe the waits without sleeping.
_sleep: Callable[[float], None] = time.sleep


# --- HTTP ----------------------------------------------------------------------------


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


# Answers that mean "too many requests, come back later".
THROTTLED = (429, 503, 504)


def _failure(
    status: int, code: str, retry_after: float | None, location: str | None = None
) -> GraphFailure:
    """A refused request (``code``: Graph's error code, "-" for none)."""
    return GraphFailure(
        f"HTTP {status} {code}",
        auth=status in (401, 403),
        temporary=status >= 500 or status in (408, 429),
        status=status,
        code="" if code == "-" else code,
        location=location,
        retry_after=retry_after,
    )


@dataclass
class _Tries:
    """How far one request has got: a fresh token fetched, throttling waited out."""

    refreshed: bool = False
    throttled: int = 0
    waited: float = 0.0


class GraphConnection(TypedDict, total=False):
    """The keyword arguments of :class:`GraphClient`, which the Graph mailbox and
    the Graph transport take alike and hand on. ``throttle``: the one of the other
    side of the same account, so that a back-off holds for both."""

    endpoint: str
    timeout: float
    ca_file: str | None
    throttle: Throttle | None


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
        tries = _Tries()
        while True:
            resp = self._send(method, url, content, headers, refresh=tries.refreshed)
            if resp.status_code in ok or resp.status_code in tolerate:
                return resp
            code = _error_code(resp)
            resp.close()
            self._again_or_raise(resp, code, what, tries)

    def _not_held(self) -> None:
        left = self.throttle.remaining()
        if left > 0:
            # The service asked to be left alone: nothing is sent before then.
            raise GraphFailure("HTTP 429 backing off", auth=False, temporary=True, retry_after=left)

    def _send(
        self,
        method: str,
        url: str,
        content: bytes | None,
        headers: dict[str, str] | None,
        *,
        refresh: bool,
    ) -> httpx.Response:
        """One attempt, with a token (a fresh one with ``refresh``)."""
        self._not_held()
        try:
            tok = self._token(force_refresh=refresh)
        except TokenError as exc:
            raise GraphFailure(
                exc.reason, auth=exc.permanent, temporary=not exc.permanent
            ) from None
        hdrs = {"Authorization": f"Bearer {tok}", **(headers or {})}
        try:
            return self._client().request(method, url, content=content, headers=hdrs)
        except httpx.HTTPError as exc:
            self.close()
            raise GraphFailure(type(exc).__name__, auth=False, temporary=True) from None

    def _again_or_raise(self, resp: httpx.Response, code: str, what: str, tries: _Tries) -> None:
        """Return when the refused request is worth another attempt now: a 401 once
        with a fresh token, throttling waited out as the service asks (bounded).
        Otherwise raise its :class:`GraphFailure`, a longer back-off held in the
        shared throttle."""
        status = resp.status_code
        if status == 401 and not tries.refreshed:
            tries.refreshed = True
            log.info("graph.token_refresh", kind=what)
            return
        retry_after: float | None = None
        if status in THROTTLED:
            delay = _retry_after(resp, tries.throttled)
            if tries.throttled < MAX_RETRIES and tries.waited + delay <= MAX_WAIT:
                log.info(
                    "graph.backoff",
                    kind=what,
                    delay=delay,
                    code=status,
                    attempt=tries.throttled + 1,
                )
                _sleep(delay)
                tries.waited += delay
                tries.throttled += 1
                return
            retry_after = self.throttle.hold(delay)
            log.warning("graph.throttled", kind=what, code=status, delay=round(retry_after))
        log.warning("graph.error", kind=what, code=status, reason=code)
        raise _failure(status, code, retry_after, location=resp.headers.get("Location"))

    def upload(
        self, url: str, data: bytes, *, chunk: int, hosts: frozenset[str], beat: Beat = rest
    ) -> None:
        """PUT ``data`` to an upload session's URL in byte ranges of at most
        ``chunk``, with a ``beat`` between them. The URL carries its own token, so no Authorization header goes
        with it (https://learn.microsoft.com/en-us/graph/outlook-large-attachments);
        it must be https on the Graph host or one of ``hosts``."""
        parts = urlsplit(url)
        if parts.scheme != "https" or (parts.hostname or "") not in hosts | {self.host}:
            raise GraphFailure("upload URL outside Graph and Outlook", auth=False, temporary=False)
        total = len(data)
        for start in range(0, total, chunk):
            if start:
                beat()
            self._not_held()
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
                if status in THROTTLED:
                    held = self.throttle.hold(_retry_after(resp, 0))
                resp.close()
                log.warning("graph.error", kind="upload", code=status, reason=code)
                raise _failure(status, code, held)
            resp.close()


def odata_quote(value: str) -> str:
    """A string literal for ``$filter``."""
    return "'" + value.replace("'", "''") + "'"
