"""Drills (docs/contract.md, "The life of a signal", step 9): a ``[TEST]``/``[OEFENING]`` signal from a functionaris runs
the whole life, is forwarded to the destination's ``test_address`` or else to the
functionarissen themselves — never to the real destination — and is never counted."""

from __future__ import annotations

import datetime as dt
import json

from servers import MailServer
from world import (
    F1,
    F2,
    KEDO,
    NLA,
    REPORTER,
    RIEC,
    World,
    marker,
    parse,
    reply,
    signal_mail,
    submit,
)

from inboxd.references import find_references


def year_of(world: World) -> str:
    """The year the signals were counted in (the injected clock's)."""
    return str(dt.datetime.fromtimestamp(world.now, dt.UTC).year)


def with_subject(mail: MailServer, address: str, prefix: str) -> list[bytes]:
    return [
        m for m in mail.messages(address) if str(parse(m)["Subject"]).strip().startswith(prefix)
    ]


def drill(
    world: World, mail: MailServer, mark: str, subject: str, sender: str = F1
) -> tuple[str, bytes]:
    submit(mail, signal_mail(mark, sender=sender, subject=subject), sender)
    world.once()
    (request,) = [m for m in with_subject(mail, F1, "Triageverzoek") if mark.encode() in m]
    return find_references(str(parse(request)["Subject"]), "VV")[0], request


def counted(world: World) -> list[dict[str, object]]:
    out = world.cli("stats", "--format", "json", "--year", year_of(world))
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, object]] = json.loads(out.stdout)["rows"]
    return rows


def no_real_destination_got_anything(mail: MailServer) -> None:
    for real in (KEDO, RIEC, NLA):
        assert mail.messages(real) == [], f"a drill reached {real}"


def test_without_test_address_the_functionarissen_get_the_forward(
    world: World, mail: MailServer
) -> None:
    mark = marker()
    ref, request = drill(world, mail, mark, f"[TEST] proefsignaal {mark}")
    assert "[OEFENING]" in str(parse(request)["Subject"])
    submit(mail, reply(request, "RIEC\nVORM crimineel"))
    world.until_quiet()
    no_real_destination_got_anything(mail)
    for f in (F1, F2):
        (fwd,) = with_subject(mail, f, "Signaal mensenhandel")
        assert ref in str(parse(fwd)["Subject"]) and "[OEFENING]" in str(parse(fwd)["Subject"])
        assert mark.encode() in fwd, "the drill carries the signal, as a real forward would"
        assert len(with_subject(mail, f, "Afgehandeld en verwijderd")) == 1
    assert len(with_subject(mail, F1, "Terugkoppeling")) == 1, "the drill's reporter hears back"
    assert world.status()["open"] == 0
    assert counted(world) == []


def test_with_test_address_per_destination(world: World, mail: MailServer) -> None:
    world.write_config(kedo_test=F2)
    mark = marker()
    _, request = drill(world, mail, mark, f"[oefening] kleine letters {mark}")
    submit(mail, reply(request, "KEDO RIEC"))
    world.until_quiet()
    no_real_destination_got_anything(mail)
    f1 = with_subject(mail, F1, "Signaal mensenhandel")
    f2 = with_subject(mail, F2, "Signaal mensenhandel")
    assert ["RIEC" in str(parse(m)["Subject"]) for m in f1] == [True], "RIEC has no test address"
    assert sorted("KEDO" in str(parse(m)["Subject"]) for m in f2) == [False, True]
    assert world.status()["open"] == 0
    assert counted(world) == []


def test_a_drill_is_done_only_when_every_functionaris_accepted_it(
    world: World, mail: MailServer
) -> None:
    _, request = drill(world, mail, marker(), "[TEST] retry")
    submit(mail, reply(request, "NLA"))
    mail.fail_next(count=1, code=451)  # the first of the two drill copies waits
    world.once()
    assert world.status()["by_state"] == {"forwarding": 1}, "one copy still to go"
    world.now += 3600
    world.until_quiet()
    assert world.status()["open"] == 0
    assert len(with_subject(mail, F1, "Signaal mensenhandel")) == 1
    assert len(with_subject(mail, F2, "Signaal mensenhandel")) == 1
    no_real_destination_got_anything(mail)
    assert counted(world) == []


def test_test_subject_from_anyone_else_is_a_real_signal(world: World, mail: MailServer) -> None:
    mark = marker()
    _, request = drill(world, mail, mark, f"[TEST] echt {mark}", sender=REPORTER)
    assert "[OEFENING]" not in str(parse(request)["Subject"])
    submit(mail, reply(request, "KEDO"))
    world.until_quiet()
    assert len(mail.messages(KEDO)) == 1
    assert [(r["source"], r["outcome"], r["count"]) for r in counted(world)] == [
        ("intern", "kedo", 1)
    ]
