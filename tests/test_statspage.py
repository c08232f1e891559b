"""``inboxd stats --format html``: one self-contained page with inline SVG, small cells
suppressed (and not recoverable by subtraction), nothing that points at a signal —
and, where Debian's ``chromium`` is installed (tests/install-and-test.sh installs
it), a headless browser really draws it."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import pytest
from servers import MailServer
from test_stats import run_signals
from world import World

from inboxd import statspage
from inboxd.statspage import Cell, month_chart, nice_ticks, suppress_group
from inboxd.templates import SHIPPED, TemplateError, Templates, shipped

# -- the pure parts -----------------------------------------------------------------


def shown(cells: list[Cell]) -> list[str]:
    return [c.shown for c in cells]


def test_primary_and_secondary_suppression() -> None:
    # One small cell alone would be total minus the rest: its smallest neighbour goes too.
    assert shown(suppress_group([2, 10, 7, 0], 5)) == ["<5", "10", "≥5", "0"]
    # Two small cells hide each other already.
    assert shown(suppress_group([2, 3, 9], 5)) == ["<5", "<5", "9"]
    # Zero is not a small cell (it identifies nobody) and is never the partner.
    assert shown(suppress_group([0, 0, 1], 5)) == ["0", "0", "<5"]
    # No threshold, nothing hidden.
    assert shown(suppress_group([1, 2], 0)) == ["1", "2"]


def test_suppressed_bar_is_drawn_up_to_n_not_at_its_value() -> None:
    cell = suppress_group([1, 1, 30], 5)[0]
    assert cell.suppressed and cell.drawn == 5 and cell.value == 1


@pytest.mark.parametrize(
    ("top", "ticks"),
    [(0, [0, 1]), (7, [0, 2, 4, 6, 8]), (48, [0, 20, 40, 60]), (100, [0, 50, 100])],
)
def test_nice_ticks(top: int, ticks: list[int]) -> None:
    assert nice_ticks(top) == ticks


def test_month_chart_geometry() -> None:
    now = suppress_group([10, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 20], 3)  # two small: no partner
    before = suppress_group([5] * 12, 3)
    chart = month_chart(now, before, statspage.month_names(shipped("nl")), 2026)
    assert len(chart.bars) == 24
    base = chart.height - chart.bottom
    by_title = {b.title: b for b in chart.bars}
    jan, dec = by_title["jan 2026: 10"], by_title["dec 2026: 20"]
    assert dec.h == pytest.approx(2 * jan.h, abs=0.2)  # proportional
    for b in chart.bars:
        assert b.y + b.h == pytest.approx(base, abs=0.2)  # standing on the axis
        assert b.y >= chart.top - 0.1
    # The suppressed March bar (2 < 3) is an outline up to 3, not a bar of 2.
    mar = by_title["mrt 2026: <3"]
    assert mar.suppressed and mar.h == pytest.approx(3 / 10 * jan.h, abs=0.2)
    assert not any(b.title.endswith(": 2") for b in chart.bars)


def test_change_text() -> None:
    c = Cell
    assert statspage.change_text(c(12, False, 0), c(10, False, 0), "nl") == "+20%"
    assert statspage.change_text(c(3, False, 0), c(0, False, 0), "en") == "new"
    assert statspage.change_text(c(3, True, 5), c(10, False, 5), "nl") == "–"


# -- the page ----------------------------------------------------------------------


def row(month: str, source: str, form: str, outcome: str, count: int) -> dict[str, Any]:
    return {"month": month, "source": source, "form": form, "outcome": outcome, "count": count}


ROWS = [
    row("2026-01", "intern", "arbeid", "kedo", 12),
    row("2026-03", "intern", "seksueel", "kedo+riec", 7),
    row("2026-03", "extern", "crimineel", "afgesloten", 2),  # small: suppressed below 5
    row("2026-11", "mma", "onbekend", "riec", 9),
]
PREVIOUS = [
    row("2025-02", "intern", "arbeid", "kedo", 20),
    row("2025-07", "extern", "overig", "nla", 6),
]
TRIAGE = [
    {"month": "2026-01", "bucket": "<1d", "count": 20},
    {"month": "2026-03", "bucket": ">=7d", "count": 10},
]


def page(lang: Literal["nl", "en"] = "nl", below: int = 5) -> str:
    ctx = statspage.page_context(
        ROWS, PREVIOUS, TRIAGE, [], 2026, below, lang, "2026-12-06 10:00 UTC"
    )
    return statspage.render(Templates(lang), ctx)


EXTERNAL = re.compile(r"(?i)(https?:|//[a-z]|\bsrc=|\bhref=|<link|<script|@import|url\()")


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_page_is_self_contained(lang: Literal["nl", "en"]) -> None:
    html = page(lang)
    assert html.lstrip().startswith("<!DOCTYPE html>")
    assert EXTERNAL.search(html) is None
    assert html.count("<svg") == 5  # months, source, form, outcome, triage time
    assert "<title>" in html


def cells_of(html: str, head: str) -> list[list[str]]:
    """The rows of the table whose first header is ``head``."""
    table = re.search(rf"<table>\s*<thead><tr><th>{re.escape(head)}</th>.*?</table>", html, re.S)
    assert table, head
    return [
        re.findall(r"<td[^>]*>(.*?)</td>", r)
        for r in re.findall(r"<tr>(.*?)</tr>", table.group(0), re.S)[1:]
    ]


def test_page_numbers_and_suppression() -> None:
    html = page("nl", below=5)
    assert "<b>30</b>" in html and "<b>26</b>" in html  # totals 2026 and 2025
    assert "<b>+15%</b>" in html
    sources = {r[0]: r[1:] for r in cells_of(html, "bron")}
    assert sources["intern"] == ["19", "20"]
    # extern 2026 is 2 (< 5) and mma 9 its partner: both hidden, since the total 30 is
    # on the page; of mma only "at least 5" is said, which is true.
    assert sources["extern"] == ["&lt;5", "6"]
    assert sources["mma"] == ["≥5", "0"]
    outcomes = {r[0]: r[1:] for r in cells_of(html, "uitkomst")}
    assert "KEDO + RIEC" in outcomes and "afgesloten" in outcomes
    assert outcomes["afgesloten"][0] == "&lt;5"
    # A small count never appears as a bar's tooltip either.
    assert re.search(r"<title>[^<]*: 2</title>", html) is None
    triage = {r[0]: r[1:] for r in cells_of(html, "tijd")}
    assert triage["&lt;1d"] == ["20", "0"] and triage["&gt;=7d"] == ["10", "0"]


def test_empty_store_gives_a_page_not_an_error() -> None:
    ctx = statspage.page_context([], [], [], [], 2026, 5, "en", "now")
    html = statspage.render(Templates("en"), ctx)
    assert "No signals were counted" in html
    assert html.count("<svg") == 5


# -- end to end: real signals, then the page ------------------------------------------


@pytest.fixture
def world(mail: MailServer, tmp_path: Path) -> World:
    w = World(mail, tmp_path / "w").setup()
    w.now = 1_795_435_200.0  # 2026-11-23 12:00 UTC
    return w


def test_page_from_real_signals_carries_nothing_of_them(
    world: World, mail: MailServer, tmp_path: Path
) -> None:
    signals = run_signals(world, mail)
    out = tmp_path / "stats.html"
    p = world.cli("stats", "--format", "html", "--year", "2026", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    html = out.read_text(encoding="utf-8")
    for mark, ref in signals.values():
        assert mark not in html
        assert ref not in html
    for address in ("reporter@", "outsider@", "collega@", "functionaris"):
        assert address not in html
    assert "VV-" not in html
    # The four counted signals are there (the drill is not).
    assert re.search(r"<b>4</b>", html)
    stdout = world.cli("stats", "--format", "html", "--year", "2026", "--suppress-below", "5")
    assert stdout.returncode == 0
    assert "<b>&lt;5</b>" in stdout.stdout  # the total itself is small


# -- a real browser ---------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (tests/install-and-test.sh installs it)",
)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # root in CI; the page is our own, with no script
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-dev-shm-usage",  # containers often give /dev/shm only 64 MB
            f"--user-data-dir={tmp_path / 'profile'}",
            *args,
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )


def png_pixels(data: bytes) -> tuple[int, int, Counter[tuple[int, int, int]]]:
    """Width, height and a count of RGB colours of an 8-bit RGB(A) PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = depth = ctype = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert depth == 8 and ctype in (2, 6), (depth, ctype)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    colours: Counter[tuple[int, int, int]] = Counter()
    i = 0
    for _ in range(height):
        f, line = raw[i], bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 0xFF
            elif f == 2:
                line[x] = (line[x] + b) & 0xFF
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pred) & 0xFF
        colours.update(zip(line[0::bpp], line[1::bpp], line[2::bpp], strict=True))
        prev = line
    return width, height, colours


NOW_BLUE = (0x0B, 0x4F, 0x8A)  # rect.now in the page's style
BEFORE_BLUE = (0x9B, 0xB7, 0xD4)


@needs_chromium
def test_chromium_renders_the_page(tmp_path: Path) -> None:
    html_file = tmp_path / "stats.html"
    source = page("nl")
    html_file.write_text(source, encoding="utf-8")
    dom = chromium(tmp_path, "--dump-dom", html_file.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout.decode()
    assert text.count("<svg") == 5
    # Every bar was parsed into the DOM: 12 months and 3 + 5 + 5 + 4 split rows, twice.
    assert len(re.findall(r"<rect ", source)) == 24 + 2 * (3 + 5 + 5 + 4)
    assert len(re.findall(r"<rect ", text)) == 58
    shot = tmp_path / "shot.png"
    r = chromium(tmp_path, f"--screenshot={shot}", "--window-size=900,1400", html_file.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    width, height, colours = png_pixels(shot.read_bytes())
    assert (width, height) == (900, 1400)
    # The bars were painted: solid areas in both series' colours, not a blank page.
    assert colours[NOW_BLUE] > 2000, colours.most_common(5)
    assert colours[BEFORE_BLUE] > 2000, colours.most_common(5)


def test_an_operator_s_month_names_must_be_twelve(tmp_path: Path) -> None:
    ours = tmp_path / "text"
    ours.mkdir()
    shipped_text = (SHIPPED / "nl" / "text" / "stats.txt").read_text(encoding="utf-8")
    (ours / "stats.txt").write_text(shipped_text.replace(" dec{%", "{%"), encoding="utf-8")
    assert "nov{%" in (ours / "stats.txt").read_text(encoding="utf-8")
    with pytest.raises(TemplateError, match="12"):
        statspage.month_names(Templates("nl", str(tmp_path)))
    assert len(statspage.month_names(shipped("nl"))) == 12
