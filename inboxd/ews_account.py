"""EWS account set-up, shared by the EWS mailbox and the EWS transport: the
settings, an exchangelib ``Account`` (fail-fast, one connection, a CA bundle per
host, OAuth2 tokens from our provider), and :func:`call`, which runs one operation:
throttling waited out, bounded, an OAuth token renewed once on 401, every failure an
:class:`EwsFailure` without mail content."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar
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
    ErrorNonExistentMailbox,
    ErrorServerBusy,
    EWSError,
    UnauthorizedError,
)
from exchangelib.protocol import BaseProtocol, Protocol
from exchangelib.transport import BASIC, NTLM, OAUTH2

from inboxd.logs import get_logger
from inboxd.throttle import Throttle
from inboxd.tokens import TokenError, TokenSource

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = get_logger(__name__)

AuthType = Literal["ntlm", "basic", "oauth2"]
T = TypeVar("T")

# Bounds on waiting out ErrorServerBusy inside one call. A longer BackOffMilliseconds
# (Exchange Online asks for minutes; exchangelib's own test fixtures use ~300 s)
# goes to the shared Throttle: no request until it ends, and the daemon's loop
# sleeps it out while it keeps the watchdog fed.
MAX_BUSY_RETRIES = 4
MAX_BUSY_WAIT = 10.0
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


class EwsLogin(TypedDict, total=False):
    """How to reach and log in to the account (see :class:`EwsSettings`)."""

    password: str | None
    auth_type: AuthType
    token: TokenSource | None
    primary_smtp_address: str | None
    ca_file: str | None
    timeout: float


class EwsAccount(EwsLogin, total=False):
    """The keyword arguments that set up an EWS account, taken alike by the EWS
    mailbox and the EWS transport. ``throttle``: the one of the other side of the
    same account, so that a back-off holds for both; None for one of its own."""

    throttle: Throttle | None


def settings_of(
    service_endpoint: str,
    username: str,
    throttle: Throttle | None = None,
    **login: Unpack[EwsLogin],
) -> EwsSettings:
    return EwsSettings(service_endpoint, username, **login, throttle=throttle or Throttle())


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
