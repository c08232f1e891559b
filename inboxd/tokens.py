"""What an OAuth2 token is to the adapters that log in with one: a source to ask for
a current bearer token (or a new one), and the error when none can be had.

Kept apart from :mod:`inboxd.msauth` (MSAL, the Microsoft directory) so that the IMAP
mailbox and the SMTP transport can tell a lasting refusal from a passing one without
loading MSAL where no Microsoft 365 login is configured.
"""

from __future__ import annotations

from typing import Protocol


class TokenError(Exception):
    """No token could be had.

    ``permanent`` means the directory refused the credentials or the request (exit 3,
    no quick retry); otherwise it was the network or an overloaded service. The
    message names the AAD error and code (``AADSTS7000215``), never a secret.
    """

    def __init__(self, reason: str, *, permanent: bool, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.code = code


class TokenSource(Protocol):
    """What the backends need: a current bearer token, or a new one on demand."""

    def __call__(self, force_refresh: bool = False) -> str: ...
