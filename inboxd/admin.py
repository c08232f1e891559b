"""Administrator commands that work on the store alone: stats, queue, key rotation."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from inboxd import documents
from inboxd.config import Config
from inboxd.crypto import DecryptError, Keyring
from inboxd.logs import get_logger
from inboxd.store import OPEN_STATES, SqliteStore

log = get_logger(__name__)

# Data keys re-wrapped per transaction: an interruption loses at most one batch of work.
ROTATE_BATCH = 100


# -- statistics (pure) ---------------------------------------------------------
def totals(rows: Iterable[dict[str, Any]], key: str) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in rows:
        out[r[key]] += int(r["count"])
    return dict(sorted(out.items()))


def suppress(count: int, below: int) -> int | str:
    """Small cells are shown as ``<N`` so a published table cannot point at a person."""
    return f"<{below}" if below and 0 < count < below else count


def change(now: int, before: int) -> str:
    if before == 0:
        return "n.v.t." if now == 0 else "nieuw"
    return f"{(now - before) / before * 100:+.0f}%"


def stats_report(
    rows: list[dict[str, Any]], previous: list[dict[str, Any]], year: int, below: int
) -> dict[str, Any]:
    return {
        "year": year,
        "total": suppress(sum(int(r["count"]) for r in rows), below),
        "rows": [{**r, "count": suppress(int(r["count"]), below)} for r in rows],
        "previous_year": {
            "year": year - 1,
            "total": suppress(sum(int(r["count"]) for r in previous), below),
            "rows": [{**r, "count": suppress(int(r["count"]), below)} for r in previous],
        },
        "change": change(
            sum(int(r["count"]) for r in rows), sum(int(r["count"]) for r in previous)
        ),
    }


def stats_table(
    rows: list[dict[str, Any]], previous: list[dict[str, Any]], year: int, below: int
) -> str:
    lines = [f"Signalen {year} (vergeleken met {year - 1})", ""]
    t_now, t_prev = sum(r["count"] for r in rows), sum(r["count"] for r in previous)
    lines.append(
        f"{'totaal':<24}{suppress(t_now, below)!s:>8}{suppress(t_prev, below)!s:>8}  {change(t_now, t_prev)}"
    )
    for key, title in (("source", "bron"), ("form", "vorm"), ("outcome", "uitkomst")):
        lines += ["", f"per {title}:"]
        a, b = totals(rows, key), totals(previous, key)
        for name in sorted(set(a) | set(b)):
            lines.append(
                f"  {name:<22}{suppress(a.get(name, 0), below)!s:>8}{suppress(b.get(name, 0), below)!s:>8}  {change(a.get(name, 0), b.get(name, 0))}"
            )
    return "\n".join(lines)


def stats_csv(rows: list[dict[str, Any]], below: int) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["month", "source", "form", "outcome", "count"])
    for r in rows:
        w.writerow(
            [r["month"], r["source"], r["form"], r["outcome"], suppress(int(r["count"]), below)]
        )
    return buf.getvalue()


# -- commands -------------------------------------------------------------------
def dispatch(cfg: Config, store: SqliteStore, keyring: Keyring, args: argparse.Namespace) -> int:
    if args.command == "stats":
        today = dt.datetime.now(dt.UTC)
        year = args.year or today.year
        rows, previous = store.stats_rows(year), store.stats_rows(year - 1)
        if args.format == "json":
            report = stats_report(rows, previous, year, args.suppress_below)
            report["triage_time"] = store.triage_time_rows(year)
            text = json.dumps(report, sort_keys=True) + "\n"
        elif args.format == "csv":
            text = stats_csv(rows, args.suppress_below)
        elif args.format == "html":
            from inboxd import statspage
            from inboxd.templates import Templates

            context = statspage.page_context(
                rows,
                previous,
                store.triage_time_rows(year),
                store.triage_time_rows(year - 1),
                year,
                args.suppress_below,
                cfg.language,
                today.strftime("%Y-%m-%d %H:%M UTC"),
            )
            text = statspage.render(Templates(cfg.language, cfg.templates_dir), context)
        else:
            text = stats_table(rows, previous, year, args.suppress_below) + "\n"
        documents.write(text, args.out)
        return 0
    if args.command == "queue" and args.queue_command == "list":
        now = time.time()
        signals = store.signals(OPEN_STATES)
        if not signals:
            print("no open signals")
        for s in signals:
            age = int((now - s.created_at) // 3600)
            flags = ",".join(sorted(s.flags)) or "-"
            dests = ",".join(s.destinations) or "-"
            print(
                f"{s.ref}  {s.state:<18} {age:>5}h  flags={flags}  form={s.form or '-'}  destinations={dests}  hold={'yes' if s.hold else 'no'}"
            )
        return 0
    if args.command == "queue" and args.queue_command == "purge":
        return purge(cfg, store, args.ref, args.yes)
    if args.command == "keys" and args.keys_command == "rotate":
        return rotate(store, keyring)
    return 2


def purge(cfg: Config, store: SqliteStore, ref_text: str, yes: bool) -> int:
    from inboxd.references import normalise

    ref = normalise(ref_text, cfg.reference_prefix)
    if ref is None:
        sys.stderr.write(f"inboxd: {ref_text!r} is not a valid reference (check the characters)\n")
        return 2
    signal = store.signal_by_ref(ref)
    if signal is None:
        sys.stderr.write(f"inboxd: no open signal {ref}\n")
        return 2
    if not yes:
        sys.stderr.write(
            f"inboxd: this deletes {ref} for good, without forwarding or feedback; add --yes\n"
        )
        return 2
    from inboxd.triage import month_of, triage_bucket

    with store.transaction() as tx:
        if "drill" not in signal.flags:
            tx.count(
                month_of(signal.created_at),
                signal.source,
                signal.form or "onbekend",
                "verwijderd",
                triage_bucket(tx.now - signal.created_at),
            )
        tx.delete_signal(signal, tx.now + cfg.dedup_window)
        store.audit("purge", ref)
    store.checkpoint()
    log.warning("queue.purged", ref=ref)
    print(f"{ref} deleted; a copy still in the mailbox is expunged at the next run of the daemon")
    return 0


# The AAD owner each table's data keys are wrapped for.
OWNERS = {"signals": "signal", "outbox": "outbox", "inbound": "inbound"}


def rotate(store: SqliteStore, keyring: Keyring) -> int:
    """Re-wrap every data key under the newest master key, in small transactions:
    an interrupted rotation leaves every row readable and is simply run again."""
    newest = keyring.newest.key_id
    todo = [row for row in store.wrapped_keys() if row[2] != newest]
    done = 0
    unreadable: dict[str, int] = defaultdict(int)
    for i in range(0, len(todo), ROTATE_BATCH):
        with store.transaction():
            for table, row_id, key_id, wrapped in todo[i : i + ROTATE_BATCH]:
                owner = f"{OWNERS[table]}:{row_id}"
                try:
                    data_key = keyring.unwrap(key_id, wrapped, owner)
                except DecryptError:
                    # Its master key was removed (or the row damaged): say so and go on;
                    # the other rows must still be re-wrapped.
                    unreadable[key_id] += 1
                    continue
                new_id, new_wrapped = keyring.wrap(data_key, owner)
                store.rewrap(table, row_id, new_id, new_wrapped)
                done += 1
    store.audit("rotate", None)
    store.checkpoint()
    left = [r for r in store.wrapped_keys() if r[2] != newest]
    log.info("keys.rotated", count=done, key_id=newest)
    print(f"{done} data keys re-wrapped under {newest}; {len(left)} left under older keys")
    for key_id, n in sorted(unreadable.items()):
        sys.stderr.write(
            f"inboxd: {n} data keys under master key {key_id} could not be unwrapped;"
            f" add that key file to crypto.key_files (before the newest) and run again\n"
        )
    return 0 if not left else 1
