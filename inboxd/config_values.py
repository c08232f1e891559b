"""What every part of the configuration is made of: the error that names a key, the
value types (durations, rates, addresses), the strict section base, and the small
checks the sections share (a value is set, a URL is https, a secret has a source).

It sits below both :mod:`inboxd.config` (the file as a whole) and
:mod:`inboxd.backends.settings` (the ``[mailbox]`` and ``[smtp]`` model of each
backend), so that neither has to import the other's half.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
ADDRESS = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_SECRET_KEYS = {"password", "client_secret", "secret", "token", "key"}


class ConfigError(Exception):
    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}" if key else f"{path}: {problem}")
        self.path = path
        self.key = key
        self.problem = problem


class Problem(ValueError):
    """A check's finding about one key (the loader adds the file's path)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


def parse_duration(value: Any) -> float:
    """``"30s"``, ``"15m"``, ``"2d"`` (also ``"1h30m"``) → seconds."""
    if isinstance(value, bool):
        raise ValueError('expected a duration like "30s", "15m" or "2d"')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError('a duration cannot be negative; write e.g. "30s"')
        return float(value)
    if not isinstance(value, str):
        raise ValueError('expected a duration like "30s", "15m" or "2d"')
    parts = re.fullmatch(r"\s*((?:\d+(?:\.\d+)?\s*[smhdw]\s*)+)", value)
    if not parts:
        raise ValueError(f'{value!r} is not a duration; write e.g. "30s", "15m", "2d"')
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", value):
        total += float(num) * _UNITS[unit]
    return total


def parse_rate(value: Any) -> tuple[int, float]:
    """``"10/h"`` → (10, 3600.0)."""
    if not isinstance(value, str):
        raise ValueError('expected a rate like "10/h"')
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*", value)
    if not m:
        raise ValueError(f'{value!r} is not a rate; write e.g. "10/h"')
    return int(m.group(1)), float(m.group(2) or 1) * _UNITS[m.group(3)]


def parse_address(value: Any) -> str:
    if not isinstance(value, str) or not ADDRESS.match(value.strip()):
        raise ValueError(f"{value!r} is not an e-mail address (local@domain)")
    return value.strip().lower()


Duration = Annotated[float, BeforeValidator(parse_duration)]
# Where zero would mean a busy loop or an instant give-up.
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Rate = Annotated[tuple[int, float], BeforeValidator(parse_rate)]
Address = Annotated[str, BeforeValidator(parse_address)]


class Section(BaseModel):
    # Each field's docstring is its description: docs/configuration.md is generated
    # from them (inboxd/configdoc.py), and a test keeps the two in step.
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True
    )


def is_loopback(host: str) -> bool:
    """The one test for "loopback only" (config checks and the backends share it)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def need(value: str, key: str, what: str) -> None:
    if not value:
        raise Problem(key, f"missing; set it to {what}")


def need_https(url: str, key: str, *, loopback_http: bool = True) -> None:
    # Credentials (passwords, NTLM, bearer tokens) never cross the wire in clear.
    m = re.fullmatch(r"(https?)://([^/:?#]+|\[[0-9a-fA-F:]+\])(?::\d+)?(?:[/?].*)?", url)
    host = m.group(2).strip("[]") if m else ""
    if not m or (m.group(1) == "http" and not (loopback_http and is_loopback(host))):
        raise Problem(key, f"must be an https:// URL, not {url!r}")


def need_secret(file: str, env: str, key: str) -> None:
    if not (file or env):
        raise Problem(
            key,
            f"missing; set {key} (a file holding the secret) or {key.removesuffix('_file')}_env",
        )


def need_loopback_for_plain(security: str, host: str, key: str) -> None:
    if security == "none" and not is_loopback(host):
        raise Problem(
            key, 'security = "none" is allowed only for loopback hosts; use "tls" or "starttls"'
        )


def _one_of(tags: str) -> str:
    """pydantic's ``'a', 'b', 'c'`` as a literal's ``'a', 'b' or 'c'``."""
    first, sep, last = tags.rpartition(", ")
    return f"{first} or {last}" if sep else tags


def explain_error(err: dict[str, Any]) -> tuple[str, str]:
    """One pydantic error as (key, what to do). ``loc`` is the key's path in the file
    (a tagged union's tag already taken out)."""
    loc = tuple(err.get("loc", ()))
    key = ".".join(str(p) for p in loc if not isinstance(p, int)) or "(top level)"
    kind = err.get("type", "")
    ctx = err.get("ctx", {})
    if kind == "extra_forbidden":
        leaf = str(loc[-1]) if loc else ""
        if leaf in _SECRET_KEYS or leaf.endswith(("password", "secret")):
            return (
                key,
                f"secrets are never written in the configuration; use {leaf}_file (a file, e.g. under $CREDENTIALS_DIRECTORY) or {leaf}_env",
            )
        return key, "unknown key; remove it or check its spelling against the README"
    if kind == "missing":
        return key, "required key is missing; add it (see config/inboxd.example.toml)"
    if kind == "value_error":
        exc = ctx.get("error")
        if isinstance(exc, Problem):
            return exc.key, exc.problem
        msg = str(exc) if exc is not None else err.get("msg", "invalid value")
        return key, msg
    if kind == "literal_error":
        return key, f"must be one of {ctx.get('expected', '')}"
    if kind == "union_tag_invalid":
        # A [mailbox] backend or [smtp] transport that names no backend.
        return f"{key}.{ctx.get('discriminator', '').strip(chr(39))}", (
            f"must be one of {_one_of(ctx.get('expected_tags', ''))}"
        )
    msg = str(err.get("msg", "invalid value"))
    return key, msg[:1].lower() + msg[1:]
