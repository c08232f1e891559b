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
from collections.abc import Iterable
from typing import Any, TextIO

from inboxd.config import Config
from inboxd.crypto import DecryptError, Keyring
from inboxd.lifecycle import OPEN_STATES
from inboxd.logs import get_logger
from inboxd.store import SqliteStore

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
def action_of(args: argparse.Namespace) -> str:
    """The audited name of an admin command: "status", "queue purge", "keys rotate" …"""
    sub = getattr(args, f"{args.command}_command", None)
    return f"{args.command} {sub}" if sub else str(args.command)


def dispatch(
    cfg: Config,
    store: SqliteStore,
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


def _run(
    cfg: Config,
    store: SqliteStore,
    keyring: Keyring,
    args: argparse.Namespace,
    action: str,
    out: TextIO,
    err: TextIO,
    running: bool,
) -> int:
    if action == "status":
        from inboxd import __version__
        from inboxd.evidence import summary
        from inboxd.intake import status_snapshot

        snap = status_snapshot(store, time.time())
        # Only the daemon holds the keys; without it the ids are simply not known.
        snap["keys"] = [k.key_id for k in keyring.keys] if keyring.keys else None
        snap["version"] = __version__
        snap["service"] = "running" if running else "not running"
        snap["sender_evidence"] = summary(cfg.evidence_policy)
        out.write((json.dumps(snap, sort_keys=True) if args.json else status_text(snap)) + "\n")
        return 0
    if action == "stats":
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
        # --out is written by the command line, where the admin is, not by the service.
        out.write(text)
        return 0
    if action == "privacy-register":
        from inboxd import register

        kept, now = store.retention(), time.time()
        if args.format == "json":
            text = json.dumps(register.as_json(cfg, kept, now), sort_keys=True) + "\n"
        else:
            text = register.render(cfg, kept, now, args.language)
        out.write(text)
        return 0
    if action == "queue list":
        now = time.time()
        signals = store.signals(OPEN_STATES)
        if not signals:
            out.write("no open signals\n")
        for s in signals:
            age = int((now - s.created_at) // 3600)
            flags = ",".join(sorted(s.flags)) or "-"
            dests = ",".join(s.destinations) or "-"
            out.write(
                f"{s.ref}  {s.state:<18} {age:>5}h  flags={flags}  form={s.form or '-'}  destinations={dests}  hold={'yes' if s.hold else 'no'}\n"
            )
        return 0
    if action == "queue purge":
        return purge(cfg, store, args.ref, args.yes, out, err)
    if action == "keys rotate":
        return rotate(store, keyring, out, err)
    err.write(f"inboxd: {action} is not an admin command\n")
    return 2


def status_text(snap: dict[str, Any]) -> str:
    lines = [f"service: {snap['service']}", f"open signals: {snap['open']}"]
    for state, n in sorted(snap["by_state"].items()):
        lines.append(f"  {state}: {n}")
    if snap["flags"]:
        lines.append("flags: " + ", ".join(f"{k} {v}" for k, v in sorted(snap["flags"].items())))
    age = snap["oldest_open_seconds"]
    lines.append(f"oldest open: {'-' if age is None else _age(int(age))}")
    lines.append(f"outbox: {snap['outbox']}")
    lines.append(f"accepted, not yet processed: {snap.get('accepted', 0)}")
    lines.append(f"last fetch: {_when(snap['last_fetch']) or 'never'}")
    lines.append(f"last send: {_when(snap['last_send']) or 'never'}")
    evidence = snap.get("sender_evidence")
    if evidence is not None:
        lines.append(
            f"sender evidence: required ({', '.join(evidence['sources'])})"
            if evidence["required"]
            else "sender evidence: NOT verified (allow_unauthenticated = true): commands are taken on From alone"
        )
    err = snap["last_error"]
    lines.append(f"last error: {_error_text(err) if err else 'none'}")
    keys = snap["keys"]
    lines.append(
        f"master keys: {', '.join(keys)} (newest {keys[-1]})"
        if keys
        else "master keys: not loaded (only the running service holds them)"
    )
    lines.append(f"version: {snap['version']}")
    return "\n".join(lines)


# What the events stored as the last error mean, for a person reading `status`.
_ERROR_MEANING = {
    "mailbox.error": "the mailbox could not be reached or refused the login",
    "cycle.failed": "a fetch/send cycle failed",
}


def _error_text(err: dict[str, Any]) -> str:
    event = str(err.get("event") or "unknown")
    meaning = _ERROR_MEANING.get(event, event)
    return (
        f"{meaning} at {_when(err.get('at')) or 'an unknown time'} ({event}; see the service's log)"
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


def _age(seconds: int) -> str:
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    return f"{d}d {h}h {rem // 60}m" if d else f"{h}h {rem // 60}m"


def purge(
    cfg: Config, store: SqliteStore, ref_text: str, yes: bool, out: TextIO, err: TextIO
) -> int:
    from inboxd.references import normalise

    ref = normalise(ref_text, cfg.reference_prefix)
    if ref is None:
        err.write(f"inboxd: {ref_text!r} is not a valid reference (check the characters)\n")
        return 2
    signal = store.signal_by_ref(ref)
    if signal is None:
        err.write(f"inboxd: no open signal {ref}\n")
        return 2
    if not yes:
        err.write(
            f"inboxd: this deletes {ref} for good, without forwarding or feedback; add --yes\n"
        )
        return 2
    from inboxd.ending import End, Ending

    with store.transaction() as tx:
        Ending(cfg, store).end(tx, signal, End.PURGED)
    log.warning("queue.purged", ref=ref)
    out.write(
        f"{ref} deleted; a copy still in the mailbox is expunged at the next run of the daemon\n"
    )
    return 0


# The AAD owner each table's data keys are wrapped for.
OWNERS = {"signals": "signal", "outbox": "outbox", "inbound": "inbound"}


def rotate(store: SqliteStore, keyring: Keyring, out: TextIO, err: TextIO) -> int:
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
    store.checkpoint()
    left = [r for r in store.wrapped_keys() if r[2] != newest]
    log.info("keys.rotated", count=done, key_id=newest)
    out.write(f"{done} data keys re-wrapped under {newest}; {len(left)} left under older keys\n")
    for key_id, n in sorted(unreadable.items()):
        err.write(
            f"inboxd: {n} data keys under master key {key_id} could not be unwrapped;"
            f" add that key file to crypto.key_files (before the newest) and run again\n"
        )
    return 0 if not left else 1
