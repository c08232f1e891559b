"""Connecting to a mail server over IMAP or SMTP: the security modes, the TLS
context, and an OAuth2 access token from its provider. One home for what the IMAP
mailbox and the SMTP transport share, so that both check and connect alike."""

from __future__ import annotations

import inspect
import ssl
from collections.abc import Callable
from typing import Literal

from inboxd.config import is_loopback

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
