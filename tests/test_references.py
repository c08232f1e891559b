"""References (SPEC §4): ``VV-XXXX-XXXX``, Crockford base32 without I L O U, seven
random characters and a position-weighted check character (weights 1..7, mod 32)."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inboxd.references import (
    ALPHABET,
    check_char,
    find_references,
    new_reference,
    normalise,
)

REF_RE = re.compile(r"^VV-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$")
bodies = st.text(alphabet=ALPHABET, min_size=7, max_size=7)


def make(body: str, prefix: str = "VV") -> str:
    code = body + check_char(body)
    return f"{prefix}-{code[:4]}-{code[4:]}"


def value(c: str) -> int:
    return ALPHABET.index(c)


# -- alphabet and format ------------------------------------------------------


def test_alphabet_is_crockford_base32_without_ilou() -> None:
    assert len(ALPHABET) == 32
    assert len(set(ALPHABET)) == 32
    assert not set("ILOU") & set(ALPHABET)
    assert set(ALPHABET) == set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") - set("ILOU")


def test_check_char_is_weighted_sum_mod_32_per_spec() -> None:
    # Worked example from the definition: values 1..7 at weights 1..7.
    body = "1234567"
    expected = sum((i + 1) * int(c) for i, c in enumerate(body)) % 32  # 140 % 32 = 12
    assert check_char(body) == ALPHABET[expected] == "C"
    assert check_char("0000000") == "0"
    # The last position has weight 7: 7 * 1 = 7.
    assert check_char("0000001") == "7"


@given(bodies)
def test_check_char_matches_definition(body: str) -> None:
    assert check_char(body) == ALPHABET[sum((i + 1) * value(c) for i, c in enumerate(body)) % 32]


def test_ten_thousand_new_references_are_well_formed_and_valid() -> None:
    refs = [new_reference("VV") for _ in range(10_000)]
    for ref in refs:
        assert REF_RE.match(ref), ref
        assert normalise(ref, "VV") == ref


def test_new_reference_has_no_obvious_bias() -> None:
    """Chi-square per random position (31 degrees of freedom). The threshold 90
    corresponds to p ≈ 1e-7 per position: a failure means bias, not bad luck."""
    n = 10_000
    codes = [new_reference("VV").replace("-", "")[2:] for _ in range(n)]
    expected = n / 32
    for pos in range(8):  # the check character is uniform too (weight 1 at pos 0)
        counts = Counter(code[pos] for code in codes)
        assert set(counts) <= set(ALPHABET)
        chi2 = sum((counts.get(c, 0) - expected) ** 2 / expected for c in ALPHABET)
        assert chi2 < 90, (pos, chi2)


def test_new_references_do_not_collide_in_a_small_sample() -> None:
    # 2,000 out of 32**7: the birthday chance of a collision is ~6e-5.
    refs = {new_reference("VV") for _ in range(2_000)}
    assert len(refs) == 2_000


def test_new_reference_uses_the_given_prefix() -> None:
    ref = new_reference("MH")
    assert ref.startswith("MH-")
    assert normalise(ref, "MH") == ref
    assert normalise(ref, "VV") is None


# -- normalise ----------------------------------------------------------------


@given(bodies)
def test_normalise_reads_what_people_type(body: str) -> None:
    ref = make(body)
    code = ref[3:].replace("-", "")
    assert normalise(ref, "VV") == ref
    assert normalise(ref.lower(), "VV") == ref
    assert normalise("VV" + code, "VV") == ref
    assert normalise("vv" + code.lower(), "VV") == ref
    assert normalise(f"  VV {code[:4]} {code[4:]} ", "VV") == ref
    # Crockford reading: I and L are 1, O is 0.
    typed = code.replace("1", "I").replace("0", "O")
    assert normalise(f"VV-{typed[:4]}-{typed[4:]}", "VV") == ref
    typed = code.replace("1", "l")
    assert normalise(f"vv-{typed[:4]}-{typed[4:]}", "VV") == ref


def test_normalise_refuses_malformed_input() -> None:
    ref = make("7K3M9QX")
    assert normalise(ref, "VV") == ref
    code = ref[3:].replace("-", "")
    assert normalise("VV-" + code[:7], "VV") is None  # too short
    assert normalise("VV-" + code + "0", "VV") is None  # too long
    assert normalise("XX-" + code, "VV") is None  # other prefix
    assert normalise(code, "VV") is None  # no prefix
    assert normalise("", "VV") is None
    assert normalise("VV-7K3M-9QXU", "VV") is None  # U is not in the alphabet
    assert normalise("VV-7K3M-9QX*", "VV") is None


def _weight_kills(weight: int, delta: int) -> bool:
    """True when changing a value by ``delta`` at ``weight`` leaves the sum mod 32 unchanged."""
    return (weight * delta) % 32 == 0


@given(bodies, st.integers(0, 7), st.integers(1, 31))
def test_single_substitution_is_caught_where_the_weighting_allows(
    body: str, pos: int, delta: int
) -> None:
    ref = make(body)
    code = ref[3:].replace("-", "")
    wrong = ALPHABET[(value(code[pos]) + delta) % 32]
    typo = code[:pos] + wrong + code[pos + 1 :]
    result = normalise(f"VV-{typo[:4]}-{typo[4:]}", "VV")
    # Position 7 is the check character itself: any change there is caught.
    undetectable = pos < 7 and _weight_kills(pos + 1, delta)
    if undetectable:
        # The SPEC's weighting (1..7 mod 32) cannot see these: even weights times
        # a multiple of 32/gcd(weight, 32).
        assert result is not None and result != ref
    else:
        assert result is None


def test_which_substitutions_the_weighting_cannot_catch() -> None:
    """Documents the blind spots of weights 1..7 mod 32: position 2 (weight 2) misses
    a change by 16, position 4 (weight 4) by 8/16/24, position 6 (weight 6) by 16.
    Odd weights are invertible mod 32 and catch every substitution."""
    blind = {w: [d for d in range(1, 32) if _weight_kills(w, d)] for w in range(1, 8)}
    assert blind == {1: [], 2: [16], 3: [], 4: [8, 16, 24], 5: [], 6: [16], 7: []}
    # A concrete pair: '0' and 'G' (value 16) at the second position.
    a, b = make("0000000"), "VV-0G00-0000"
    assert normalise(a, "VV") == a
    assert normalise(b, "VV") == b  # a valid, different reference


@given(bodies, st.integers(0, 5))
def test_adjacent_transposition_in_the_body_is_caught(body: str, pos: int) -> None:
    # Swapping values a, b at weights i, i+1 changes the sum by a - b (never 0 mod 32).
    if body[pos] == body[pos + 1]:
        return
    swapped = body[:pos] + body[pos + 1] + body[pos] + body[pos + 2 :]
    code = swapped + check_char(body)
    assert normalise(f"VV-{code[:4]}-{code[4:]}", "VV") is None


# -- find_references ------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "Re: [{ref}] signaal",
        "AW: Antw: RE: {ref}",
        "Antw: Ontvangen: uw signaal {ref}",
        "Triageverzoek {ref} [sleutel ABCD-EFGH-JKMN-PQRS]",
        "({ref})",
        "{ref}.",
        "zie {ref}, graag",
        "ref:{ref}",
        "> {ref}\n",
    ],
)
def test_find_references_in_subjects_and_bodies(template: str) -> None:
    ref = make("7K3M9QX")
    assert find_references(template.format(ref=ref), "VV") == [ref]


def test_find_references_reads_sloppy_typing() -> None:
    ref = make("1010101")
    code = ref[3:].replace("-", "")
    sloppy = "vv " + code.replace("1", "l").replace("0", "o")[:4] + " " + code[4:].lower()
    assert find_references(f"Re: {sloppy} aanvulling", "VV") == [ref]
    assert find_references(f"Re: VV{code}", "VV") == [ref]


def test_find_references_not_inside_longer_tokens() -> None:
    ref = make("7K3M9QX")
    code = ref[3:]
    assert find_references(f"X{ref}", "VV") == []
    assert find_references(f"{ref}Z", "VV") == []
    assert find_references(f"{ref}0", "VV") == []
    assert find_references(f"AVV{code}", "VV") == []
    assert find_references(f"https://x.example/{ref}abc", "VV") == []


def test_find_references_skips_invalid_check_and_keeps_order_unique() -> None:
    a, b = make("7K3M9QX"), make("ABCDEFG")
    bad = a[:-1] + ALPHABET[(value(a[-1]) + 1) % 32]
    text = f"{b} and {bad} and {a.lower()} and {b} again"
    assert find_references(text, "VV") == [b, a]


def test_find_references_other_prefix() -> None:
    ref = make("7K3M9QX", "MH")
    assert find_references(f"Re: {ref}", "MH") == [ref]
    assert find_references(f"Re: {ref}", "VV") == []


@given(st.text(max_size=200))
def test_find_references_only_returns_canonical_valid_refs(text: str) -> None:
    for ref in find_references(text, "VV"):
        assert REF_RE.match(ref)
        assert normalise(ref, "VV") == ref


@given(bodies, st.text(max_size=40), st.text(max_size=40))
def test_find_references_finds_a_ref_between_separators(body: str, pre: str, post: str) -> None:
    ref = make(body)
    assert ref in find_references(f"{pre} {ref} {post}", "VV")
