"""A fake Microsoft Entra ID (AAD) v2.0 endpoint for the client-credentials grant.

Serves what MSAL asks for — the tenant's OpenID configuration and the token
endpoint (plus instance discovery, should anything ask) — with the JSON shapes and
AADSTS error bodies the real service returns. Tokens are JWT-shaped strings that
the resource fakes (EWS, Graph) check with :meth:`TokenServer.check`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.server
import json
import secrets
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from . import FakeHTTPServer


@dataclass
class IssuedToken:
    client_id: str
    audience: str
    expires_at: float
    revoked: bool = False


@dataclass
class TokenRequest:
    path: str
    form: dict[str, str]


@dataclass
class _State:
    tenant_id: str
    secrets: dict[str, str]
    certificates: dict[str, x509.Certificate]
    lifetime: int
    tokens: dict[str, IssuedToken] = field(default_factory=dict)
    requests: list[TokenRequest] = field(default_factory=list)
    discovery_requests: list[str] = field(default_factory=list)
    # next N token requests answer 503 (temporarily_unavailable)
    fail_next: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _aad_error(status: int, error: str, code: int, text: str) -> tuple[int, dict[str, Any]]:
    trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return status, {
        "error": error,
        "error_description": (
            f"AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {corr} Timestamp: {stamp}"
        ),
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "Microsoft-IIS/10.0"
    protocol_version = "HTTP/1.1"

    @property
    def state(self) -> _State:
        return self.server.fake.state  # type: ignore[attr-defined,no-any-return]

    @property
    def base(self) -> str:
        return self.server.fake.base_url  # type: ignore[attr-defined,no-any-return]

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        st = self.state
        st.discovery_requests.append(url.path)
        if url.path == "/common/discovery/instance":
            self._json(
                200,
                {
                    "tenant_discovery_endpoint": (
                        f"{self.base}/{st.tenant_id}/v2.0/.well-known/openid-configuration"
                    ),
                    "api-version": "1.1",
                    "metadata": [],
                },
            )
            return
        if parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            if parts[0] != st.tenant_id:
                self._json(
                    *_aad_error(
                        400,
                        "invalid_tenant",
                        90002,
                        f"Tenant '{parts[0]}' not found. Check to make sure you have the "
                        "correct tenant ID and are signing into the correct cloud.",
                    )
                )
                return
            t = f"{self.base}/{st.tenant_id}"
            self._json(
                200,
                {
                    "token_endpoint": f"{t}/oauth2/v2.0/token",
                    "token_endpoint_auth_methods_supported": [
                        "client_secret_post",
                        "private_key_jwt",
                        "client_secret_basic",
                    ],
                    "jwks_uri": f"{self.base}/{st.tenant_id}/discovery/v2.0/keys",
                    "response_modes_supported": ["query", "fragment", "form_post"],
                    "subject_types_supported": ["pairwise"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "response_types_supported": [
                        "code",
                        "id_token",
                        "code id_token",
                        "id_token token",
                    ],
                    "scopes_supported": ["openid", "profile", "email", "offline_access"],
                    "issuer": f"{t}/v2.0",
                    "request_uri_parameter_supported": False,
                    "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
                    "authorization_endpoint": f"{t}/oauth2/v2.0/authorize",
                    "device_authorization_endpoint": f"{t}/oauth2/v2.0/devicecode",
                    "http_logout_supported": True,
                    "frontchannel_logout_supported": True,
                    "end_session_endpoint": f"{t}/oauth2/v2.0/logout",
                    "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid"],
                    "kerberos_endpoint": f"{t}/kerberos",
                    "tenant_region_scope": "EU",
                    "cloud_instance_name": "microsoftonline.com",
                    "cloud_graph_host_name": "graph.windows.net",
                    "msgraph_host": "graph.microsoft.com",
                    "rbac_url": "https://pas.windows.net",
                },
            )
            return
        self._json(404, {"error": "not_found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length).decode()
        form = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
        st = self.state
        path = urllib.parse.urlsplit(self.path).path
        with st.lock:
            st.requests.append(TokenRequest(path, form))
            if st.fail_next:
                st.fail_next -= 1
                self._json(
                    *_aad_error(
                        503,
                        "temporarily_unavailable",
                        90033,
                        "A transient error has occurred. Please try again.",
                    )
                )
                return
        if path != f"/{st.tenant_id}/oauth2/v2.0/token":
            tenant = path.split("/")[1]
            self._json(*_aad_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found."))
            return
        self._json(*self._token(form))

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        st = self.state
        client_id = form.get("client_id", "")
        if form.get("grant_type") != "client_credentials":
            return _aad_error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        if client_id not in st.secrets and client_id not in st.certificates:
            return _aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{st.tenant_id}'.",
            )
        scope = form.get("scope", "")
        if len(scope.split()) != 1 or not scope.endswith("/.default"):
            return _aad_error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows "
                "must have a scope value with /.default suffixed to the resource identifier.",
            )
        if "client_secret" in form:
            if st.secrets.get(client_id) != form["client_secret"]:
                return _aad_error(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request "
                    "is the client secret value, not the client secret ID, for a secret added to "
                    f"app '{client_id}'.",
                )
        elif "client_assertion" in form:
            if not self._assertion_ok(client_id, form):
                return _aad_error(
                    401,
                    "invalid_client",
                    700027,
                    "Client assertion failed signature validation.",
                )
        else:
            return _aad_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' "
                "or 'client_secret'.",
            )
        audience = scope.rsplit("/.default", 1)[0]
        now = time.time()
        claims = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{st.tenant_id}/",
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + st.lifetime),
            "appid": client_id,
            "roles": ["full_access_as_app", "Mail.ReadWrite", "Mail.Send"],
            "tid": st.tenant_id,
        }
        token = ".".join(
            [
                _b64url(b'{"typ":"JWT","alg":"RS256"}'),
                _b64url(json.dumps(claims).encode()),
                _b64url(secrets.token_bytes(32)),
            ]
        )
        with st.lock:
            st.tokens[token] = IssuedToken(client_id, audience, now + st.lifetime)
        return 200, {
            "token_type": "Bearer",
            "expires_in": st.lifetime,
            "ext_expires_in": st.lifetime,
            "access_token": token,
        }

    def _assertion_ok(self, client_id: str, form: dict[str, str]) -> bool:
        cert = self.state.certificates.get(client_id)
        if cert is None:
            return False
        if form.get("client_assertion_type") != (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ):
            return False
        assertion = form["client_assertion"]
        header = jwt.get_unverified_header(assertion)
        sha256 = _b64url(cert.fingerprint(hashes.SHA256()))
        sha1 = _b64url(cert.fingerprint(hashes.SHA1()))  # noqa: S303 - what AAD uses for x5t
        # MSAL keeps the base64 padding, RFC 7515 would not: accept both.
        got256 = str(header.get("x5t#S256", "")).rstrip("=")
        got1 = str(header.get("x5t", "")).rstrip("=")
        if got256 != sha256 and got1 != sha1:
            return False
        try:
            claims = jwt.decode(
                assertion,
                key=cert.public_key(),  # type: ignore[arg-type]
                algorithms=["RS256", "PS256"],
                audience=f"{self.server.fake.base_url}/{self.state.tenant_id}/oauth2/v2.0/token",  # type: ignore[attr-defined]
                issuer=client_id,
            )
        except jwt.PyJWTError:
            return False
        return bool(claims.get("sub") == client_id)


class TokenServer(FakeHTTPServer):
    """``authority`` is what the code under test is configured with."""

    def __init__(
        self,
        *,
        tenant_id: str = "8f3e2b61-0c5d-4d1e-9a4f-2b7c6d5e4f30",
        secrets: dict[str, str] | None = None,
        certificates: dict[str, x509.Certificate] | None = None,
        lifetime: int = 3599,
    ) -> None:
        super().__init__(_Handler)
        self.state = _State(tenant_id, dict(secrets or {}), dict(certificates or {}), lifetime)

    @property
    def authority(self) -> str:
        return self.base_url

    @property
    def tenant_id(self) -> str:
        return self.state.tenant_id

    @property
    def token_requests(self) -> list[TokenRequest]:
        return list(self.state.requests)

    def set_lifetime(self, seconds: int) -> None:
        self.state.lifetime = seconds

    def fail_next(self, n: int) -> None:
        self.state.fail_next = n

    def revoke_all(self) -> None:
        """Tokens already handed out stop working (the client's cache does not know)."""
        with self.state.lock:
            for tok in self.state.tokens.values():
                tok.revoked = True

    def check(self, authorization: str | None, audience: str) -> bool:
        """Whether an ``Authorization`` header carries a live token for ``audience``."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        tok = self.state.tokens.get(authorization[7:])
        return bool(
            tok
            and not tok.revoked
            and tok.expires_at > time.time()
            and tok.audience.rstrip("/") == audience.rstrip("/")
        )


def thumbprint_sha1_hex(cert: x509.Certificate) -> str:
    return hashlib.sha1(cert.public_bytes(Encoding.DER)).hexdigest().upper()  # noqa: S324
