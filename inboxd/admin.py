"""Administrator commands on the store: status, stats, queue, key rotation.

They run inside the daemon when an admin shell asks over the admin socket
(:mod:`inboxd.control`), or on the state directory directly when the service is not
running; either way they write to the ``out``/``err`` they are given and every call is
audited (action, time, uid; a reference at most)."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from inboxd.config import Config
from inboxd.crypto import DecryptError, Keyring
from inboxd.lifecycle import OPEN_STATES
from inboxd.logs import get_logger
from inboxd.statspage import change
from inboxd.store import Store
from inboxd.templates import Templates, shipped

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
    rows: list[dict[str, Any]],
    previous: list[dict[str, Any]],
    year: int,
    below: int,
    text: Templates | None = None,
) -> str:
    """The table `inboxd stats` prints, in the words of ``text/stats.txt`` (Dutch
    unless ``text`` says otherwise)."""
    text = text or shipped("nl")

    def row(name: str, width: int, now: int, before: int) -> str:
        counts = f"{suppress(now, below)!s:>8}{suppress(before, below)!s:>8}"
        return f"{name:<{width}}{counts}  {change(now, before, text)}"

    lines = [text.phrase("stats", "table_title", year=year, previous=year - 1), ""]
    t_now, t_prev = sum(r["count"] for r in rows), sum(r["count"] for r in previous)
    lines.append(row(text.phrase("stats", "total"), 24, t_now, t_prev))
    for key in ("source", "form", "outcome"):
        lines += ["", text.phrase("stats", "per", kind=key)]
        a, b = totals(rows, key), totals(previous, key)
        for name in sorted(set(a) | set(b)):
            lines.append("  " + row(name, 22, a.get(name, 0), b.get(name, 0)))
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
def action_of(args: argparse.Namespace) -> str:
    """The audited name of an admin command: "status", "queue purge", "keys rotate" …"""
    sub = getattr(args, f"{args.command}_command", None)
    return f"{args.command} {sub}" if sub else str(args.command)


def dispatch(
    cfg: Config,
    store: Store,
    keyring: Keyring,
    args: argparse.Namespace,
    *,
    uid: int,
    out: TextIO,
    err: TextIO,
    running: bool = False,
) -> int:
    """Run one admin command and audit it. ``running``: called by the daemon itself."""
    action = action_of(args)
    ref = None
    if action == "queue purge":
        from inboxd.references import normalise

        ref = normalise(args.ref, cfg.reference_prefix)
    code = _run(cfg, store, keyring, args, action, out, err, running)
    store.audit(action, ref, uid)
    if running:
        # In the service's journal too; a shell's own stderr is no record.
        log.info("admin.command", action=action, uid=uid, ref=ref, code=code)
    return code


@dataclass(frozen=True)
class _Call:
    """One admin command being run: what it works on and where it writes."""

    cfg: Config
    store: Store
    keyring: Keyring
    args: argparse.Namespace
    out: TextIO
    err: TextIO
    running: bool


def _run(
    cfg: Config,
    store: Store,
    keyring: Keyring,
    args: argparse.Namespace,
    action: str,
    out: TextIO,
    err: TextIO,
    running: bool,
) -> int:
    command = _COMMANDS.get(action)
    if command is None:
        err.write(f"inboxd: {action} is not an admin command\n")
        return 2
    return command(_Call(cfg, store, keyring, args, out, err, running))


def _status(call: _Call) -> int:
    from inboxd import __version__
    from inboxd.evidence import summary
    from inboxd.intake import status_snapshot

    snap = status_snapshot(call.store, time.time())
    # Only the daemon holds the keys; without it the ids are simply not known.
    snap["keys"] = [k.key_id for k in call.keyring.keys] if call.keyring.keys else None
    snap["version"] = __version__
    snap["service"] = "running" if call.running else "not running"
    snap["sender_evidence"] = summary(call.cfg.evidence_policy)
    if call.args.json:
        call.out.write(json.dumps(snap, sort_keys=True) + "\n")
    else:
        call.out.write(status_text(snap, _texts(call.cfg)) + "\n")
    return 0


def _stats(call: _Call) -> int:
    store, args = call.store, call.args
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
        text = _stats_page(call, rows, previous, year, today)
    else:
        text = stats_table(rows, previous, year, args.suppress_below, _texts(call.cfg)) + "\n"
    # --out is written by the command line, where the admin is, not by the service.
    call.out.write(text)
    return 0


def _stats_page(
    call: _Call,
    rows: list[dict[str, Any]],
    previous: list[dict[str, Any]],
    year: int,
    today: dt.datetime,
) -> str:
    from inboxd import statspage

    context = statspage.page_context(
        rows,
        previous,
        call.store.triage_time_rows(year),
        call.store.triage_time_rows(year - 1),
        year,
        call.args.suppress_below,
        call.cfg.language,
        today.strftime("%Y-%m-%d %H:%M UTC"),
        _texts(call.cfg),
    )
    return statspage.render(_texts(call.cfg), context)


def _privacy_register(call: _Call) -> int:
    from inboxd import register

    kept, now = call.store.retention(), time.time()
    if call.args.format == "json":
        text = json.dumps(register.as_json(call.cfg, kept, now), sort_keys=True) + "\n"
    else:
        text = register.render(call.cfg, kept, now, call.args.language)
    call.out.write(text)
    return 0


def _queue_list(call: _Call) -> int:
    text, now = _texts(call.cfg), time.time()
    signals = call.store.signals(OPEN_STATES)
    if not signals:
        call.out.write(text.phrase("admin", "queue_empty") + "\n")
    for s in signals:
        line = text.phrase(
            "admin",
            "queue_line",
            ref=s.ref,
            state=str(s.state),
            hours=int((now - s.created_at) // 3600),
            flags=sorted(s.flags),
            form=s.form,
            destinations=list(s.destinations),
            hold=bool(s.hold),
        )
        call.out.write(line + "\n")
    return 0


def _queue_purge(call: _Call) -> int:
    return purge(call.cfg, call.store, call.args.ref, call.args.yes, call.out, call.err)


def _keys_rotate(call: _Call) -> int:
    return rotate(call.store, call.keyring, call.out, call.err, _texts(call.cfg))


_COMMANDS: dict[str, Callable[[_Call], int]] = {
    "status": _status,
    "stats": _stats,
    "privacy-register": _privacy_register,
    "queue list": _queue_list,
    "queue purge": _queue_purge,
    "keys rotate": _keys_rotate,
}


def _texts(cfg: Config) -> Templates:
    """The wording: the configured language's, and for the commands' own lines
    ``text/admin.txt`` (the command line's language, shared by both)."""
    return Templates(cfg.language, cfg.templates_dir)


def status_text(snap: dict[str, Any], text: Templates | None = None) -> str:
    err = snap["last_error"]
    age = snap["oldest_open_seconds"]
    evidence = snap.get("sender_evidence")
    return (text or shipped("en")).phrase(
        "admin",
        "status",
        service=snap["service"],
        open=snap["open"],
        by_state=sorted(snap["by_state"].items()),
        flags=sorted(snap["flags"].items()),
        oldest=None if age is None else _age(int(age)),
        outbox=snap["outbox"],
        accepted=snap.get("accepted", 0),
        shred_pending=snap.get("shred_pending", 0),
        last_fetch=_when(snap["last_fetch"]),
        last_send=_when(snap["last_send"]),
        evidence=evidence,
        error_event=str(err.get("event") or "unknown") if err else None,
        error_at=_when(err.get("at")) if err else None,
        keys=snap["keys"],
        version=snap["version"],
    )


def _when(iso: object) -> str | None:
    """ "2027-01-15T08:00:00.5Z" → "2027-01-15 08:00 UTC"."""
    if not isinstance(iso, str) or not iso:
        return None
    try:
        at = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _age(seconds: int) -> tuple[int, int, int]:
    """Days, hours and minutes."""
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    return d, h, rem // 60


def purge(cfg: Config, store: Store, ref_text: str, yes: bool, out: TextIO, err: TextIO) -> int:
    from inboxd.references import normalise

    text = _texts(cfg)
    ref = normalise(ref_text, cfg.reference_prefix)
    if ref is None:
        err.write(f"inboxd: {text.phrase('admin', 'purge_bad_reference', text=repr(ref_text))}\n")
        return 2
    signal = store.signal_by_ref(ref)
    if signal is None:
        err.write(f"inboxd: {text.phrase('admin', 'purge_unknown', ref=ref)}\n")
        return 2
    if not yes:
        err.write(f"inboxd: {text.phrase('admin', 'purge_unconfirmed', ref=ref)}\n")
        return 2
    from inboxd.ending import End, Ending

    with store.transaction() as tx:
        Ending(cfg, store).end(tx, signal, End.PURGED)
    log.warning("queue.purged", ref=ref)
    out.write(text.phrase("admin", "purged", ref=ref) + "\n")
    return 0


# The AAD owner each table's data keys are wrapped for.
OWNERS = {"signals": "signal", "outbox": "outbox", "inbound": "inbound"}


def rotate(
    store: Store, keyring: Keyring, out: TextIO, err: TextIO, text: Templates | None = None
) -> int:
    """Re-wrap every data key under the newest master key, in small transactions:
    an interrupted rotation leaves every row readable and is simply run again."""
    newest = keyring.newest.key_id
    todo = [row for row in store.wrapped_keys() if row[2] != newest]
    done = 0
    unreadable: dict[str, int] = defaultdict(int)
    for i in range(0, len(todo), ROTATE_BATCH):
        with store.transaction() as tx:
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
                tx.rewrap(table, row_id, new_id, new_wrapped)
                done += 1
    store.checkpoint()
    left = [r for r in store.wrapped_keys() if r[2] != newest]
    log.info("keys.rotated", count=done, key_id=newest)
    text = text or shipped("en")
    out.write(text.phrase("admin", "rotated", done=done, key_id=newest, left=len(left)) + "\n")
    for key_id, n in sorted(unreadable.items()):
        unwrapped = text.phrase("admin", "rotate_unreadable", count=n, key_id=key_id)
        err.write(f"inboxd: {unwrapped}\n")
    return 0 if not left else 1
