"""``inboxd stats --format html``: the council's yearly question as one page.

Signals per month this year against the year before, the splits by source, form and
outcome, and the triage-time buckets — as inline SVG drawn from a template, with the
numbers in tables beside them. The page loads nothing from anywhere.

All geometry is computed here, as plain data; the template only places it. Small
cells are suppressed as in the other formats (``<N``). Where a group shows its total,
a lone small cell could be recovered by subtraction, so the smallest other cell is
hidden with it (shown as ``≥N``, which is all that is true of it). A hidden bar is
drawn as a dashed outline up to N.
The input is the anonymous statistics only; nothing on the page can point at a signal.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from inboxd.commands import Language
from inboxd.templates import TemplateError, Templates, shipped

TRIAGE_BUCKETS = ("<1d", "1-3d", "3-7d", ">=7d")
# Sources, forms and outcomes are shown in this order when present; others after them.
KNOWN_ORDER = {
    "source": ("intern", "extern", "mma"),
    "form": ("seksueel", "arbeid", "crimineel", "overig", "onbekend"),
    "outcome": (),
}


@dataclass(frozen=True)
class Cell:
    value: int
    suppressed: bool
    below: int
    # Hidden only so that a small neighbour cannot be recovered; its value is >= below.
    secondary: bool = False

    @property
    def shown(self) -> str:
        if not self.suppressed:
            return str(self.value)
        return f"≥{self.below}" if self.secondary else f"<{self.below}"

    @property
    def drawn(self) -> int:
        """The height a bar may show: the real value, or N for a suppressed cell."""
        return self.below if self.suppressed else self.value


def suppress_group(values: Sequence[int], below: int) -> list[Cell]:
    """Cells of one group whose total is published.

    Primary: 0 < value < below. Secondary: if exactly one cell is suppressed, the
    smallest other non-zero cell is too, or the total minus the rest would give it away.
    """
    hidden = {i for i, v in enumerate(values) if below and 0 < v < below}
    partner = None
    if len(hidden) == 1:
        rest = [(v, i) for i, v in enumerate(values) if i not in hidden and v > 0]
        if rest:
            partner = min(rest)[1]
    return [
        Cell(v, i in hidden or i == partner, below, secondary=i == partner)
        for i, v in enumerate(values)
    ]


def total_cell(value: int, below: int) -> Cell:
    return Cell(value, bool(below) and 0 < value < below, below)


def change(now: int, before: int, text: Templates | None = None) -> str:
    """The change against the year before, e.g. ``+20%``. When that year had none:
    the words of ``text/stats.txt``, or without ``text`` the fixed values the JSON
    report carries (``n.v.t.``, ``nieuw``)."""
    if before == 0:
        if text is None:
            return "n.v.t." if now == 0 else "nieuw"
        return text.phrase("stats", "change_none" if now == 0 else "change_new")
    return f"{(now - before) / before * 100:+.0f}%"


def change_text(now: Cell, before: Cell, language: Language, text: Templates | None = None) -> str:
    if now.suppressed or before.suppressed:
        return "–"
    return change(now.value, before.value, text or shipped(language))


# -- geometry ---------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    series: str  # "now" | "before"
    suppressed: bool
    title: str


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str
    anchor: str = "middle"


@dataclass(frozen=True)
class Frame:
    """A chart's size and the margins around its plot."""

    width: int
    height: int
    left: float
    top: float
    right: float
    bottom: float

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom

    def chart(
        self, bars: list[Bar], ticks: list[Tick], labels: list[Label], *, horizontal: bool
    ) -> Chart:
        return Chart(
            self.width,
            self.height,
            self.left,
            self.top,
            self.right,
            self.bottom,
            bars=tuple(bars),
            ticks=tuple(ticks),
            labels=tuple(labels),
            horizontal=horizontal,
        )


@dataclass(frozen=True)
class Chart(Frame):
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    labels: tuple[Label, ...]
    horizontal: bool


def nice_ticks(top: int) -> list[int]:
    """0 and a few round steps up to at least ``top`` (1, 2 or 5 × 10^k)."""
    top = max(top, 1)
    raw = top / 4
    mag = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    step = max(int(step), 1)
    return list(range(0, (math.ceil(top / step) + 1) * step, step))


def _value_axis(cells: Sequence[Cell], length: float) -> tuple[list[int], float]:
    """The round ticks of a value axis ``length`` long that holds every cell, and
    the length of one count on it."""
    ticks = nice_ticks(max([c.drawn for c in cells] + [1]))
    return ticks, length / ticks[-1]


def month_chart(
    now: Sequence[Cell], before: Sequence[Cell], months: Sequence[str], year: int
) -> Chart:
    f = Frame(720, 280, left=44.0, top=16.0, right=12.0, bottom=36.0)
    ticks, scale = _value_axis((*now, *before), f.plot_h)
    slot = f.plot_w / 12
    bar_w = slot * 0.36
    bars, labels = [], []
    for m in range(12):
        x0 = f.left + m * slot + slot * 0.12
        for offset, series, cells, y in (
            (0.0, "before", before, year - 1),
            (bar_w, "now", now, year),
        ):
            cell = cells[m]
            h = cell.drawn * scale
            bars.append(
                Bar(
                    x=round(x0 + offset, 1),
                    y=round(f.top + f.plot_h - h, 1),
                    w=round(bar_w, 1),
                    h=round(h, 1),
                    series=series,
                    suppressed=cell.suppressed,
                    title=f"{months[m]} {y}: {cell.shown}",
                )
            )
        labels.append(
            Label(round(f.left + m * slot + slot / 2, 1), f.height - f.bottom + 16, months[m])
        )
    ticks_at = [Tick(round(f.top + f.plot_h - t * scale, 1), str(t)) for t in ticks]
    return f.chart(bars, ticks_at, labels, horizontal=False)


def split_chart(
    names: Sequence[str], now: Sequence[Cell], before: Sequence[Cell], year: int
) -> Chart:
    row_h, bar_h = 34.0, 12.0
    top, bottom = 8.0, 26.0
    height = int(top + bottom + row_h * max(len(names), 1))
    f = Frame(720, height, left=150.0, top=top, right=60.0, bottom=bottom)
    ticks, scale = _value_axis((*now, *before), f.plot_w)
    bars, labels = [], []
    for i, name in enumerate(names):
        y0 = f.top + i * row_h + (row_h - 2 * bar_h) / 2
        labels.append(Label(f.left - 8, round(y0 + bar_h + 4, 1), name, "end"))
        for offset, series, cells, y in (
            (0.0, "now", now, year),
            (bar_h, "before", before, year - 1),
        ):
            cell = cells[i]
            w = cell.drawn * scale
            bars.append(
                Bar(
                    x=f.left,
                    y=round(y0 + offset, 1),
                    w=round(w, 1),
                    h=bar_h - 1,
                    series=series,
                    suppressed=cell.suppressed,
                    title=f"{name} {y}: {cell.shown}",
                )
            )
            labels.append(
                Label(
                    round(f.left + w + 4, 1), round(y0 + offset + bar_h - 2, 1), cell.shown, "start"
                )
            )
    ticks_at = [Tick(round(f.left + t * scale, 1), str(t)) for t in ticks]
    return f.chart(bars, ticks_at, labels, horizontal=True)


# -- the page ---------------------------------------------------------------------


def _by(rows: Iterable[Mapping[str, Any]], key: str) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in rows:
        out[str(r[key])] += int(r["count"])
    return dict(out)


def _order(kind: str, names: Iterable[str], now: Mapping[str, int]) -> list[str]:
    known = KNOWN_ORDER[kind]
    rest = sorted((n for n in names if n not in known), key=lambda n: (-now.get(n, 0), n))
    return [n for n in known if n in names] + rest


def outcome_name(outcome: str) -> str:
    """``kedo+riec`` → ``KEDO + RIEC`` (destination keys are the command words)."""
    if outcome in ("afgesloten", "verwijderd"):
        return outcome
    return " + ".join(part.upper() for part in outcome.split("+"))


@dataclass(frozen=True)
class Split:
    kind: str
    names: tuple[str, ...]
    now: tuple[Cell, ...]
    before: tuple[Cell, ...]
    chart: Chart


def _split(
    kind: str,
    rows: Sequence[Mapping[str, Any]],
    previous: Sequence[Mapping[str, Any]],
    year: int,
    below: int,
) -> Split:
    a, b = _by(rows, kind), _by(previous, kind)
    keys = _order(kind, set(a) | set(b), a)
    now = suppress_group([a.get(k, 0) for k in keys], below)
    before = suppress_group([b.get(k, 0) for k in keys], below)
    names = [outcome_name(k) if kind == "outcome" else k for k in keys]
    return Split(
        kind, tuple(names), tuple(now), tuple(before), split_chart(names, now, before, year)
    )


def _months(rows: Iterable[Mapping[str, Any]], year: int) -> list[int]:
    counts = [0] * 12
    for r in rows:
        y, m = str(r["month"]).split("-")
        if int(y) == year:
            counts[int(m) - 1] += int(r["count"])
    return counts


def month_names(text: Templates) -> tuple[str, ...]:
    """The twelve short month names of ``text/stats.txt``."""
    names = tuple(text.phrase("stats", "months").split())
    if len(names) != 12:
        raise TemplateError(f"template {text.language}/text/stats.txt: months must name 12")
    return names


def page_context(
    rows: Sequence[Mapping[str, Any]],
    previous: Sequence[Mapping[str, Any]],
    triage_now: Sequence[Mapping[str, Any]],
    triage_before: Sequence[Mapping[str, Any]],
    year: int,
    below: int,
    language: Language,
    generated: str,
    text: Templates | None = None,
) -> dict[str, Any]:
    """Everything the page shows, from the anonymous counts alone (``text``: the
    operator's wording, else the shipped one of ``language``)."""
    text = text or shipped(language)
    months = month_names(text)
    now_m = suppress_group(_months(rows, year), below)
    before_m = suppress_group(_months(previous, year - 1), below)
    total_now = total_cell(sum(int(r["count"]) for r in rows), below)
    total_before = total_cell(sum(int(r["count"]) for r in previous), below)
    t_now, t_before = _by(triage_now, "bucket"), _by(triage_before, "bucket")
    buckets = [*TRIAGE_BUCKETS, *sorted((set(t_now) | set(t_before)) - set(TRIAGE_BUCKETS))]
    tn = suppress_group([t_now.get(k, 0) for k in buckets], below)
    tb = suppress_group([t_before.get(k, 0) for k in buckets], below)
    return {
        "lang": language,
        "year": year,
        "previous": year - 1,
        "below": below,
        "generated": generated,
        "total_now": total_now,
        "total_before": total_before,
        "change": change_text(total_now, total_before, language, text),
        "months": months,
        "months_now": now_m,
        "months_before": before_m,
        "month_chart": month_chart(now_m, before_m, months, year),
        "splits": [_split(k, rows, previous, year, below) for k in ("source", "form", "outcome")],
        "triage": Split(
            "triage", tuple(buckets), tuple(tn), tuple(tb), split_chart(buckets, tn, tb, year)
        ),
        "empty": total_now.value == 0 and total_before.value == 0,
    }


def render(templates: Templates, context: Mapping[str, Any]) -> str:
    return templates.page("stats.html", context)
