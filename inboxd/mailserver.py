"""Connecting to a mail server over IMAP or SMTP: the security modes, the TLS
context, and an OAuth2 access token from its provider. One home for what the IMAP
mailbox and the SMTP transport share, so that both check and connect alike."""

from __future__ import annotations

import inspect
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from inboxd.config_values import is_loopback

Security = Literal["tls", "starttls", "none"]


def check_security(host: str, security: str) -> None:
    """Raise ValueError unless ``security`` is a known mode; plain text only to a
    loopback host (a local relay or test server), never over a network."""
    if security not in ("tls", "starttls", "none"):
        raise ValueError(f"unknown security {security!r}")
    if security == "none" and not is_loopback(host):
        raise ValueError("security = 'none' is only allowed to a loopback host")


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """System CAs plus an optional extra bundle; hostname checked, TLS >= 1.2."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    return ctx


def oauth2_token(provider: Callable[..., str], *, refresh: bool) -> str:
    """A token from ``provider``; with ``refresh``, a fresh one where the provider can
    skip its cache (a cached token may have been revoked or expired early)."""
    if refresh and "force_refresh" in inspect.signature(provider).parameters:
        return provider(force_refresh=True)
    return provider()


@dataclass(frozen=True)
class ServerAccount:
    """Where an IMAP or SMTP server is and how to log in to it, checked once.

    Which credentials a backend needs is its own rule (IMAP always logs in, SMTP
    only with a username); the password and the token provider never show in a
    repr."""

    host: str
    port: int
    security: Security
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    oauth2_token: Callable[..., str] | None = field(default=None, repr=False)
    ca_file: str | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        check_security(self.host, self.security)

    def where(self) -> str:
        """For a backend's repr: host, port and security, nothing secret."""
        return f"host={self.host!r}, port={self.port}, security={self.security!r}"

    def tls_context(self) -> ssl.SSLContext:
        return tls_context(self.ca_file)

    def token(self, *, refresh: bool) -> str:
        """A token from the provider (see :func:`oauth2_token`); raises whatever
        the provider raises."""
        assert self.oauth2_token is not None
        return oauth2_token(self.oauth2_token, refresh=refresh)


def login_with_token(
    log_in: Callable[[str], None],
    token: Callable[..., str],
    refused: type[Exception],
) -> None:
    """``log_in`` with an OAuth2 token from ``token(refresh=...)``; when the server
    answers ``refused``, once more with a fresh token: a cached one may have been
    revoked or expired early."""
    try:
        log_in(token(refresh=False))
    except refused:
        log_in(token(refresh=True))
