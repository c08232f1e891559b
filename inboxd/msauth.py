"""OAuth2 access tokens for Microsoft 365 (Graph, EWS, IMAP/SMTP XOAUTH2).

App-only tokens by the client-credentials grant, through MSAL. MSAL keeps the token
in its in-memory cache and treats a token that expires within five minutes as
expired, so a caller always gets one that is good for at least that long; a
server that refuses a token anyway (revoked, clock skew) is answered by asking
again with ``force_refresh=True``.

The authority is configurable (national clouds, and tests, which must never reach
Microsoft): instance discovery against login.microsoftonline.com is switched off,
MSAL only fetches ``<authority>/<tenant>/v2.0/.well-known/openid-configuration``
and then the token endpoint named there.
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any

import msal
import requests
from msal.exceptions import MsalServiceError

from inboxd.logs import get_logger
from inboxd.tokens import TokenError

log = get_logger(__name__)

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
# IMAP, SMTP and EWS in Exchange Online all accept tokens for this resource.
OUTLOOK_SCOPE = "https://outlook.office365.com/.default"

# AAD errors that will not go away by asking again: wrong secret or certificate,
# unknown application or tenant, no consent for the scope.
_PERMANENT_ERRORS = frozenset(
    {
        "invalid_client",
        "unauthorized_client",
        "invalid_scope",
        "invalid_request",
        "invalid_grant",
        "access_denied",
        "consent_required",
    }
)
_AADSTS = re.compile(r"AADSTS(\d{4,8})")
_CERT_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----")


def graph_scope(endpoint: str) -> str:
    """The ``.default`` scope of a Graph endpoint (national clouds have their own)."""
    return endpoint.rstrip("/") + "/.default"


class TokenProvider:
    """Client-credentials access tokens for one application, tenant and scope.

    Give either ``client_secret`` or ``client_certificate_pem`` (a PEM holding the
    private key and its certificate; with ``thumbprint`` the SHA-1 thumbprint as
    registered, else MSAL derives the SHA-256 one from the certificate).
    ``ca_file`` replaces the system CA bundle for the authority's TLS.
    """

    def __init__(
        self,
        tenant_id: str,
        client_id: str,
        *,
        scope: str = OUTLOOK_SCOPE,
        client_secret: str | None = None,
        client_certificate_pem: str | None = None,
        thumbprint: str | None = None,
        authority: str = DEFAULT_AUTHORITY,
        ca_file: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if (client_secret is None) == (client_certificate_pem is None):
            raise ValueError("give exactly one of client_secret and client_certificate_pem")
        if not tenant_id or "/" in tenant_id:
            raise ValueError("tenant_id must be a tenant GUID or domain")
        if not authority.startswith("https://"):
            raise ValueError("authority must be an https:// URL")
        if ca_file and not os.path.isfile(ca_file):
            raise ValueError("ca_file does not exist")
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.scope = scope
        self.authority = authority.rstrip("/")
        self._credential = _credential(client_secret, client_certificate_pem, thumbprint)
        self._ca_file = ca_file
        self._timeout = timeout
        self._app: msal.ConfidentialClientApplication | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        # The credential stays out of every repr, traceback and log line.
        return f"TokenProvider(tenant_id={self.tenant_id!r}, client_id={self.client_id!r})"

    def __call__(self, force_refresh: bool = False) -> str:
        with self._lock:
            app = self._application()
            if force_refresh:
                # acquire_token_for_client has no force_refresh: forget the cached
                # token (this app holds only its own) so that a new one is fetched.
                cache = app.token_cache
                for entry in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
                    cache.remove_at(entry)
            try:
                result: dict[str, Any] | None = app.acquire_token_for_client(scopes=[self.scope])
            except (requests.RequestException, MsalServiceError) as exc:
                # Network trouble, or a 5xx from the directory.
                raise TokenError(
                    f"token endpoint unavailable ({type(exc).__name__})", permanent=False
                ) from None
            except json.JSONDecodeError:
                # Not an answer from AAD at all (a proxy's error page).
                raise TokenError("token endpoint gave no JSON", permanent=False) from None
            except (ValueError, TypeError) as exc:
                # The private key could not sign the client assertion.
                raise TokenError(
                    f"client credential not usable ({type(exc).__name__})", permanent=True
                ) from None
        if result and "access_token" in result:
            if result.get("token_source") == "identity_provider":
                log.info("msauth.token", kind="new", seconds=int(result.get("expires_in", 0)))
            return str(result["access_token"])
        raise _error_from_result(result or {})

    def _application(self) -> msal.ConfidentialClientApplication:
        if self._app is not None:
            return self._app
        http = requests.Session()
        try:
            # Construction already fetches the OIDC metadata; done lazily so that a
            # directory outage surfaces as a TokenError at the first use, not at start.
            app = msal.ConfidentialClientApplication(
                self.client_id,
                client_credential=self._credential,
                authority=f"{self.authority}/{self.tenant_id}",
                validate_authority=False,
                instance_discovery=False,
                http_client=_Http(http, self._timeout, self._ca_file),
            )
        except requests.RequestException as exc:
            raise TokenError(
                f"authority unreachable ({type(exc).__name__})", permanent=False
            ) from None
        except ValueError as exc:
            # MSAL says ValueError when the tenant's metadata is refused (unknown
            # tenant: AADSTS90002) or the key cannot be loaded.
            # MSAL re-raises without the server's words; they are in the context.
            code = _first_code(str(exc)) or _first_code(str(exc.__context__ or ""))
            aadsts = f"AADSTS{code}" if code else None
            if "authority" in str(exc) or aadsts:
                reason = "authority refused the tenant" + (f" ({aadsts})" if aadsts else "")
            else:
                reason = f"client credential not usable ({type(exc).__name__})"
            raise TokenError(reason, permanent=True, code=aadsts) from None
        self._app = app
        return app


class _Http:
    """requests.Session with our timeout and CA bundle on every request.

    MSAL passes no timeout when given an http_client. The CA bundle goes with each
    request because requests lets ``REQUESTS_CA_BUNDLE`` override ``Session.verify``.
    """

    def __init__(self, session: requests.Session, timeout: float, ca_file: str | None) -> None:
        self._session = session
        self._timeout = timeout
        self._verify: str | bool = ca_file or True

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        kwargs["verify"] = self._verify
        return self._session.get(url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        kwargs["verify"] = self._verify
        return self._session.post(url, **kwargs)

    def close(self) -> None:
        self._session.close()


def _credential(
    secret: str | None, pem: str | None, thumbprint: str | None
) -> str | dict[str, str]:
    if secret is not None:
        if not secret:
            raise ValueError("client_secret is empty")
        return secret
    assert pem is not None
    if "PRIVATE KEY-----" not in pem:
        raise ValueError("client certificate PEM holds no private key")
    cred: dict[str, str] = {"private_key": pem}
    if thumbprint:
        cred["thumbprint"] = thumbprint.replace(":", "").upper()
    else:
        certs = _CERT_BLOCK.findall(pem)
        if not certs:
            raise ValueError("client certificate PEM holds no certificate and no thumbprint given")
        cred["public_certificate"] = certs[0]
    return cred


def _first_code(text: str) -> str | None:
    m = _AADSTS.search(text)
    return m.group(1) if m else None


def _error_from_result(result: dict[str, Any]) -> TokenError:
    error = str(result.get("error") or "unknown_error")
    codes = result.get("error_codes") or []
    code = str(codes[0]) if codes else _first_code(str(result.get("error_description", "")))
    aadsts = f"AADSTS{code}" if code else None
    # Only the error name and its code: the description can quote the app's name.
    reason = f"token refused: {error}" + (f" ({aadsts})" if aadsts else "")
    permanent = error in _PERMANENT_ERRORS
    return TokenError(reason, permanent=permanent, code=aadsts)
