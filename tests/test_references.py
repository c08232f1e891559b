"""References: ``VV-XXXX-XXXX``, Crockford base32 without I L O U, seven random
characters and a Damm check character over a totally anti-symmetric quasigroup of
order 32."""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inboxd.references import (
    ALPHABET,
    MAX_CANDIDATES,
    MAX_REFERENCES,
    QUASIGROUP,
    check_char,
    find_references,
    first_references,
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
    for pos in range(8):  # the check character is uniform too (a column is a permutation)
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


# -- the check character catches every single typo and every neighbour swap ----------
#
# Damm's theorem: with a quasigroup whose rows and columns are permutations (a Latin
# square), whose diagonal is 0 and which is totally anti-symmetric ((c*x)*y == (c*y)*x
# only when x == y), the check catches every single substitution and every swap of two
# neighbouring characters, the check character included. The first three tests prove
# those properties of the table in use over all of its entries; the last two check
# the consequence directly on references, over every position, every pair of
# characters and every interim value the characters before the typo can leave.


def test_quasigroup_is_a_latin_square_with_zero_diagonal() -> None:
    assert len(QUASIGROUP) == 32
    for x in range(32):
        assert sorted(QUASIGROUP[x]) == list(range(32)), f"row {x}"
        assert sorted(QUASIGROUP[y][x] for y in range(32)) == list(range(32)), f"column {x}"
        assert QUASIGROUP[x][x] == 0


def test_quasigroup_is_totally_anti_symmetric() -> None:
    q = QUASIGROUP
    clashes = [
        (c, x, y)
        for c in range(32)
        for x in range(32)
        for y in range(32)
        if x != y and q[q[c][x]][y] == q[q[c][y]][x]
    ]
    assert clashes == []


def test_check_char_is_damm_over_the_quasigroup() -> None:
    def damm(code: str) -> int:
        interim = 0
        for c in code:
            interim = QUASIGROUP[interim][value(c)]
        return interim

    assert check_char("0000000") == "0"
    assert check_char("7K3M9QX") == "F"
    for body in ("1234567", "ZZZZZZZ", "7K3M9QX", "0000001"):
        assert check_char(body) == ALPHABET[damm(body)]
        assert damm(body + check_char(body)) == 0


def _contexts(pos: int) -> list[str]:
    """Bodies that leave each of the 32 interim values before ``pos`` (one for pos 0).

    The character just before ``pos`` runs over the alphabet; since every column of the
    quasigroup is a permutation, that reaches every interim value."""
    if pos == 0:
        return ["Z7K3M9Q"]
    return ["7K3M9QX"[: pos - 1] + c + "7K3M9QX"[pos:] for c in ALPHABET]


def _code(body: str) -> str:
    return body + check_char(body)


def _read(code: str) -> str | None:
    return normalise(f"VV-{code[:4]}-{code[4:]}", "VV")


def test_every_single_substitution_is_caught_exhaustively() -> None:
    missed = []
    for pos in range(8):  # position 7 is the check character itself
        for body in _contexts(min(pos, 6)):
            code = _code(body)
            assert _read(code) is not None
            for wrong in ALPHABET:
                if wrong == code[pos]:
                    continue
                typo = code[:pos] + wrong + code[pos + 1 :]
                if _read(typo) is not None:
                    missed.append((code, typo))
    assert missed == []


def test_every_neighbour_swap_is_caught_exhaustively() -> None:
    missed = []
    for pos in range(6):  # swaps of two body characters
        for body in _contexts(pos):
            for a in ALPHABET:
                for b in ALPHABET:
                    if a != b:
                        code = _code(body[:pos] + a + b + body[pos + 2 :])
                        swapped = code[:pos] + b + a + code[pos + 2 :]
                        if _read(swapped) is not None:
                            missed.append((code, swapped))
    # The last body character and the check character: the check follows from the
    # body, and over all 32 interim values and all 32 last characters every pair
    # (last, check) occurs once.
    pairs = set()
    for body in _contexts(6):
        for a in ALPHABET:
            code = _code(body[:6] + a)
            pairs.add((a, code[7]))
            if a != code[7] and _read(code[:6] + code[7] + a) is not None:
                missed.append((code, code[:6] + code[7] + a))
    assert len(pairs) == 32 * 32
    assert missed == []


@given(bodies, st.integers(0, 7), st.integers(1, 31))
def test_single_substitution_is_caught_anywhere(body: str, pos: int, delta: int) -> None:
    code = _code(body)
    wrong = ALPHABET[(value(code[pos]) + delta) % 32]
    assert _read(code[:pos] + wrong + code[pos + 1 :]) is None


@given(bodies, st.integers(0, 6))
def test_neighbour_swap_is_caught_anywhere(body: str, pos: int) -> None:
    code = _code(body)
    if code[pos] == code[pos + 1]:
        return
    assert _read(code[:pos] + code[pos + 1] + code[pos] + code[pos + 2 :]) is None


def test_the_old_weighted_sum_missed_what_damm_catches() -> None:
    """The former check (weights 1..7 mod 32) took VV-0G00-0000 for a valid reference,
    one substitution away from VV-0000-0000."""
    assert _read("00000000") == "VV-0000-0000"
    assert _read("0G000000") is None


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


# -- bounded search ---------------------------------------------------------------


def distinct_references(n: int) -> list[str]:
    found: dict[str, None] = {}
    while len(found) < n:
        found[new_reference("VV")] = None
    return list(found)


def test_first_references_reads_the_subject_first_and_keeps_the_first_few() -> None:
    subject_refs = distinct_references(3)
    body_refs = distinct_references(20)
    subject = "Re: " + " ".join(subject_refs)
    body = " ".join([subject_refs[1], *body_refs, subject_refs[0]])
    assert first_references((subject, body), "VV") == [
        *subject_refs,
        *body_refs[: MAX_REFERENCES - 3],
    ]
    assert first_references((subject, body), "VV", limit=2) == subject_refs[:2]


def test_seventy_thousand_references_cost_a_moment() -> None:
    # De-duplicating on a list made this ~75 s; the search now stops at the limit.
    refs = distinct_references(70_000)
    text = " ".join(refs)
    t0 = time.monotonic()
    assert find_references(text, "VV") == refs[:MAX_REFERENCES]
    repeated = " ".join([refs[0]] * 70_000)
    assert find_references(repeated, "VV") == [refs[0]]
    assert time.monotonic() - t0 < 1.0


def test_look_alikes_are_checked_up_to_a_cap() -> None:
    good = distinct_references(1)[0]
    bad = good[:-1] + ALPHABET[(value(good[-1]) + 1) % 32]
    assert normalise(bad, "VV") is None
    assert find_references(" ".join([bad] * (MAX_CANDIDATES - 1) + [good]), "VV") == [good]
    t0 = time.monotonic()
    assert find_references(" ".join([bad] * 70_000 + [good]), "VV") == []
    assert time.monotonic() - t0 < 1.0
