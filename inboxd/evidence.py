"""Sender evidence: did the owner of the From address submit this mail?

The From header proves nothing. What does is what a server we trust stamped on the
mail as it received it:

- ``Authentication-Results`` (RFC 8601) fields whose authserv-id is one of
  ``[triage] trusted_authserv_ids``. A receiving server removes fields claiming its
  own id before it adds its own, so only the *topmost* fields count: reading stops
  at the first field that no trusted server would have written. A pass counts only
  when it is aligned with From (``auth`` for that mailbox, ``dmarc``/``dkim`` for
  From's own domain); comments never count; a fail, softfail, temperror or permerror
  outweighs every pass in the same field and below it.
- Exchange's ``X-MS-Exchange-Organization-AuthAs: Internal``: Exchange's header
  firewall removes ``X-MS-Exchange-Organization-*`` fields from mail that enters from
  untrusted sources, so the value is Exchange's own.

Plain functions on plain data; the shell passes in the parsed header values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import authres

_NEGATIVE = frozenset({"fail", "softfail", "temperror", "permerror"})
# A receiving chain stamps one field per trusted hop and method group; more than this
# many trusted fields on top is not a chain we know, and each costs parse time.
MAX_FIELDS = 8


class Evidence(StrEnum):
    VERIFIED = "verified"  # a trusted source vouches for the From address
    UNVERIFIED = "unverified"  # evidence is required and there is none
    NOT_REQUIRED = "not_required"  # allow_unauthenticated: nothing is checked


@dataclass(frozen=True)
class EvidencePolicy:
    trusted_authserv_ids: frozenset[str] = frozenset()
    exchange_internal: bool = False
    allow_unauthenticated: bool = False
    # Where ``smtp.auth`` may be a bare user name: only our own domains, so an
    # internal account cannot pass for an outside address with the same local part.
    local_domains: frozenset[str] = frozenset()

    @property
    def has_source(self) -> bool:
        return bool(self.trusted_authserv_ids) or self.exchange_internal


def summary(policy: EvidencePolicy) -> dict[str, object]:
    """What ``status`` shows: whether evidence is required and where it comes from."""
    sources = [f"authentication-results:{i}" for i in sorted(policy.trusted_authserv_ids)]
    if policy.exchange_internal:
        sources.append("exchange:authas-internal")
    return {"required": policy.has_source, "sources": sources}


def sender_evidence(
    from_addr: str | None,
    authentication_results: Sequence[str],
    exchange_auth_as: Sequence[str],
    policy: EvidencePolicy,
) -> Evidence:
    if not policy.has_source:
        return Evidence.NOT_REQUIRED if policy.allow_unauthenticated else Evidence.UNVERIFIED
    if from_addr is None or "@" not in from_addr:
        return Evidence.UNVERIFIED
    if policy.exchange_internal and exchange_internal(exchange_auth_as):
        return Evidence.VERIFIED
    if policy.trusted_authserv_ids and aligned_pass(
        from_addr, authentication_results, policy.trusted_authserv_ids, policy.local_domains
    ):
        return Evidence.VERIFIED
    return Evidence.UNVERIFIED


def exchange_internal(values: Sequence[str]) -> bool:
    """Every ``AuthAs`` field says Internal (a second, different one is not Exchange's)."""
    return bool(values) and all(v.strip().lower() == "internal" for v in values)


def aligned_pass(
    from_addr: str,
    fields: Sequence[str],
    trusted: frozenset[str],
    local_domains: frozenset[str] = frozenset(),
) -> bool:
    """A pass aligned with ``from_addr`` in the topmost trusted fields, with no
    negative result at or above it."""
    ids = {t.lower() for t in trusted}
    address = from_addr.lower()
    local, _, domain = address.rpartition("@")
    bare = local if domain in {d.lower() for d in local_domains} else None
    for value in fields[:MAX_FIELDS]:  # topmost first, as the server prepended them
        try:
            header = authres.AuthenticationResultsHeader.parse_value(value)
        except Exception:  # noqa: BLE001 - authres raises its own and stdlib errors
            return False  # no trusted server writes this: nothing below it counts
        if str(header.authserv_id).lower() not in ids:
            return False
        results = [(str(r.method).lower(), str(r.result).lower(), r) for r in header.results]
        if any(result in _NEGATIVE for _, result, _ in results):
            return False
        for method, result, r in results:
            if result == "pass" and _aligned(method, r, address, bare, domain):
                return True
    return False


def _prop(result: object, ptype: str, name: str) -> list[str]:
    return [
        str(p.value).strip().lower()
        for p in getattr(result, "properties", [])
        if str(p.type).lower() == ptype and str(p.name).lower() == name
    ]


def _aligned(method: str, result: object, address: str, bare: str | None, domain: str) -> bool:
    if method == "auth":
        # Servers that log bare user names write the local part alone.
        return any(v in (address, bare) for v in _prop(result, "smtp", "auth"))
    if method == "dmarc":
        return any(v == domain for v in _prop(result, "header", "from"))
    if method == "dkim":
        return any(v == domain for v in _prop(result, "header", "d"))
    return False
