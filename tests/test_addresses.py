from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inboxd.addresses import domain_of, header_safe, is_valid_addr_spec, parse_single_address

ACCEPTED = [
    ("a.jansen@gemeente.example", "a.jansen@gemeente.example"),
    ("A.Jansen@Gemeente.EXAMPLE", "a.jansen@gemeente.example"),
    ("<a.jansen@gemeente.example>", "a.jansen@gemeente.example"),
    ("Anna Jansen <a.jansen@gemeente.example>", "a.jansen@gemeente.example"),
    ("A. Jansen <a.jansen@gemeente.example>", "a.jansen@gemeente.example"),
    ('"Jansen, Anna" <a.jansen@gemeente.example>', "a.jansen@gemeente.example"),
    ("  <  a.jansen@gemeente.example  >  ", "a.jansen@gemeente.example"),
    ("root@host.example (Cron Daemon)", "root@host.example"),
    ("(note) Anna <anna@x.example> (werk)", "anna@x.example"),
    ("Anna\r\n <anna@x.example>", "anna@x.example"),
    ("Anna\n\t<anna@x.example>", "anna@x.example"),
    # display-name spoofing: the real addr-spec, never the display name
    ('"a.jansen@gemeente.example" <attacker@outsider.example>', "attacker@outsider.example"),
    (
        '"a.jansen@gemeente.example <a.jansen@gemeente.example>" <x@outsider.example>',
        "x@outsider.example",
    ),
    # encoded display names: decoded "@" and "," are harmless, we never use the name
    ("=?utf-8?q?Jans=C3=A9n=2C_A=2E?= <a@gemeente.example>", "a@gemeente.example"),
    ("=?utf-8?q?boss=40gemeente=2Eexample?= <a@outsider.example>", "a@outsider.example"),
    ("=?iso-8859-1?q?Ren=E9?= <rene@x.example>", "rene@x.example"),
    ("=?unknown-charset?q?x?= <rene@x.example>", "rene@x.example"),
    # RFC 6532 UTF-8 display name
    ("Renée Bakker <renee@x.example>", "renee@x.example"),
    # quoted local part, kept quoted
    ('"john doe"@x.example', '"john doe"@x.example'),
    ('John <"John.Doe"@X.example>', '"john.doe"@x.example'),
    # IDN domains come back as A-labels
    ("user@bücher.example", "user@xn--bcher-kva.example"),
    ("user@xn--bcher-kva.example", "user@xn--bcher-kva.example"),
    ("u@localhost", "u@localhost"),
    ("u+tag@sub.domain-with-dash.example", "u+tag@sub.domain-with-dash.example"),
]

REFUSED = [
    # CVE-2023-27043 shapes
    "victim@x.example)<attacker@y.example>",
    "victim@x.example) <attacker@y.example>",
    "a@b.example, c@d.example",
    "a@b.example; c@d.example",
    "<a@b.example>, <c@d.example>",
    "<a@b.example><c@d.example>",
    "<<a@b.example>>",
    "<a@b.example",
    "a@b.example>",
    "> a@b.example <",
    '"unbalanced <a@b.example>',
    "Anna (unbalanced <a@b.example>",
    "Anna) <a@b.example>",
    "x <a@b.example> y",
    "a@b.example <c@d.example>",  # unquoted @ in display name
    "alice@x.example@y.example",
    '"a@b.example"@c.example',  # a naive split at the first @ reads a@b.example
    '"a\\"b"@c.example',
    "a@b.example (c@d.example)",  # address-like comment
    "a@b.example (<c@d.example>)",
    "a@b.example ((((((deep)))))) ",
    # groups, routes, literals
    "unlisted-recipients:;",
    "undisclosed-recipients: a@b.example;",
    "<@route.example:a@b.example>",
    "a@[192.0.2.1]",
    "a@192.0.2.1",
    # controls
    "a@b.example\r\nBcc: c@d.example",
    "a@b.example\x00",
    "Anna\r<a@b.example>",
    "Anna\x85 <a@b.example>",
    "Anna\u2028<a@b.example>",
    # encoded-words that hide an address or a control
    "=?utf-8?q?boss_=3Cboss=40gemeente.example=3E?= <a@outsider.example>",
    "=?utf-8?b?PGJvc3NAZ2VtZWVudGUuZXhhbXBsZT4=?= <a@outsider.example>",
    "=?utf-8?q?Anna=0D=0ABcc:_x@y?= <a@b.example>",
    "=?utf-8?q?a=00?= <a@b.example>",
    "=?utf-8?q?x?=@b.example",  # encoded-word as local part
    # syntax
    "",
    "   ",
    "<>",
    "a",
    "@b.example",
    "a@",
    "a b@c.example",
    "a @ b.example",
    ".a@b.example",
    "a.@b.example",
    "a..b@c.example",
    "a@b..example",
    "a@b.example.",
    "a@-b.example",
    "a@b-.example",
    "a@b_c.example",
    "a@" + "x" * 64 + ".example",
    "x" * 65 + "@b.example",
    "a@" + ".".join(["abcdefghi"] * 26) + ".example",  # > 253
    "jösé@x.example",  # non-ASCII local part
    "a@xn--a.example",  # invalid A-label
    "a\\b@c.example",
    "[a]@b.example",
    '""@b.example',
    "a@b.example" + " " * 3000,
]


@pytest.mark.parametrize(("value", "expected"), ACCEPTED)
def test_accepted(value: str, expected: str) -> None:
    assert parse_single_address(value) == expected


@pytest.mark.parametrize("value", REFUSED)
def test_refused(value: str) -> None:
    assert parse_single_address(value) is None


def test_is_valid_addr_spec() -> None:
    assert is_valid_addr_spec("a.jansen@gemeente.example")
    assert is_valid_addr_spec("A.Jansen@Gemeente.example")
    assert is_valid_addr_spec("user@xn--bcher-kva.example")
    assert not is_valid_addr_spec("user@bücher.example")  # only the A-label form
    assert not is_valid_addr_spec("<a@b.example>")
    assert not is_valid_addr_spec("Anna <a@b.example>")
    assert not is_valid_addr_spec(" a@b.example")
    assert not is_valid_addr_spec("a@b.example (c)")
    assert not is_valid_addr_spec("a@b.example\n")
    assert not is_valid_addr_spec("")


def test_domain_of() -> None:
    assert domain_of("a.jansen@Gemeente.Example") == "gemeente.example"
    assert domain_of('"x"@a.example') == "a.example"
    assert domain_of("nothing") == ""
    assert domain_of("@b.example") == ""


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("VV-7K3M-9QXD ontvangen", True),
        ("tab\there", True),
        ("Renée — ✓", True),
        ("a\r\nBcc: x@y", False),
        ("a\nb", False),
        ("a\rb", False),
        ("a\x00b", False),
        ("a\x1bb", False),
        ("a\x7fb", False),
        ("a\x85b", False),
        ("a\u2028b", False),
        ("a\u2029b", False),
        ("a\udc80b", False),
    ],
)
def test_header_safe(value: str, safe: bool) -> None:
    assert header_safe(value) is safe


def _appears_literally(result: str, value: str) -> bool:
    lowered = value.lower()
    if result in lowered:
        return True
    # IDN: the local part and "@" appear; the domain came back as A-labels.
    local, _, domain = result.rpartition("@")
    return "xn--" in domain and f"{local}@" in lowered


_ADDRESSY = st.lists(
    st.sampled_from(list('abcAB.@<>"(),;:\\ \t\r\n=?_-0[]é\x00ü') + ["=?utf-8?q?", "?=", "=3C"]),
    max_size=40,
).map("".join)


_EMBEDDED = st.builds(
    lambda pre, addr, post: f"{pre}{addr}{post}",
    _ADDRESSY,
    st.sampled_from(["a@b.example", "<a@b.example>", "<A.B@C.example>", "x@bücher.example"]),
    _ADDRESSY,
)


@settings(max_examples=800, deadline=None)
@given(st.one_of(_ADDRESSY, _EMBEDDED, st.text(max_size=60)))
def test_property_result_is_valid_and_literal(value: str) -> None:
    result = parse_single_address(value)
    if result is not None:
        assert is_valid_addr_spec(result)
        assert _appears_literally(result, value)
        assert header_safe(result)


@settings(max_examples=300, deadline=None)
@given(
    st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,2}", fullmatch=True),
    st.from_regex(r"[a-z0-9]{1,10}(\.[a-z]{2,6}){1,2}", fullmatch=True),
    st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20),
)
def test_property_quoted_display_name_never_wins(local: str, domain: str, name: str) -> None:
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    assert parse_single_address(f'"{quoted}" <{local}@{domain}>') == f"{local}@{domain}"
