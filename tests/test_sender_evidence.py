"""Sender evidence: a command, follow-up or drill counts only when a server we trust
vouches that the owner of the From address sent it.

The pure reading of Authentication-Results first, then each forgery tried against
the suite's real relay (which strips fields claiming its id and stamps its own, as a
receiving MTA with an authentication milter does) and Dovecot.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from servers import AUTHSERV_ID, MailServer
from world import (
    F1,
    KEDO,
    MAILBOX,
    REPORTER,
    World,
    body_text,
    marker,
    parse,
    reply,
    signal_mail,
    submit,
)

from inboxd.evidence import Evidence, EvidencePolicy, aligned_pass, sender_evidence
from inboxd.references import find_references

MX = "mx.gemeente.example"
TRUSTED = frozenset({MX})
LOCAL = frozenset({"gemeente.example"})


def ok(*fields: str, sender: str = F1) -> bool:
    return aligned_pass(sender, fields, TRUSTED, LOCAL)


# -- the reading, on plain data ------------------------------------------------------


def test_aligned_passes_count() -> None:
    assert ok(f"{MX}; auth=pass smtp.auth={F1}")
    assert ok(f"{MX}; auth=pass (PLAIN) smtp.auth=a.jansen"), "a bare user name of our domain"
    assert ok(f"{MX}; dmarc=pass header.from=gemeente.example")
    assert ok(f"{MX}; dkim=pass header.d=GEMEENTE.example header.s=sel")
    assert ok(f"{MX.upper()} 1; AUTH=PASS smtp.auth={F1.upper()}"), "ids and values are caseless"


def test_passes_for_someone_else_do_not_count() -> None:
    assert not ok(f"{MX}; auth=pass smtp.auth=buiten@extern.example")
    assert not ok(f"{MX}; auth=pass smtp.auth=b.devries@gemeente.example")
    assert not ok(f"{MX}; dkim=pass header.d=evil.example")
    assert not ok(f"{MX}; dkim=pass header.d=sub.gemeente.example")
    assert not ok(f"{MX}; dmarc=pass header.from=evil.example")
    assert not ok(f"{MX}; spf=pass smtp.mailfrom={F1}"), "SPF is about the envelope, not From"
    assert not ok(f"{MX}; arc=pass"), "a method that says nothing about From"
    # A bare user name only for our own domains: an account "melder" is not
    # melder@extern.example.
    assert not ok(f"{MX}; auth=pass smtp.auth=melder", sender="melder@extern.example")


def test_comments_never_count() -> None:
    assert not ok(f"{MX}; spf=fail (sender dkim=pass header.d=gemeente.example) smtp.mailfrom=x")
    assert not ok(f"{MX}; dkim=none (dkim=pass header.d=gemeente.example)")
    assert not ok(f"{MX}; auth=none (auth=pass smtp.auth={F1})")


def test_only_the_topmost_trusted_fields_count() -> None:
    pass_ = f"{MX}; auth=pass smtp.auth={F1}"
    assert not ok("other.example; none", pass_), "below a field no trusted server wrote"
    assert not ok("this is not a field", pass_)
    assert not ok("", pass_), "a field too long to keep whole"
    assert ok(f"{MX}; none", pass_), "several trusted fields on top all count"
    assert not ok(*[f"{MX}; none"] * 8, pass_), "a pass below eight trusted fields is not read"


def test_a_negative_result_outweighs_every_pass_below_it() -> None:
    pass_ = f"{MX}; auth=pass smtp.auth={F1}"
    for bad in ("fail", "softfail", "temperror", "permerror"):
        assert not ok(f"{MX}; spf={bad} smtp.mailfrom={F1}", pass_), bad
        assert not ok(f"{MX}; dkim={bad} header.d=gemeente.example; {pass_.split('; ')[1]}")
    assert ok(pass_, f"{MX}; dkim=fail header.d=gemeente.example"), "a pass above a fail stands"


def test_exchange_internal() -> None:
    policy = EvidencePolicy(exchange_internal=True)
    assert sender_evidence(F1, (), ("Internal",), policy) is Evidence.VERIFIED
    assert sender_evidence(F1, (), ("Anonymous",), policy) is Evidence.UNVERIFIED
    assert sender_evidence(F1, (), ("Internal", "Anonymous"), policy) is Evidence.UNVERIFIED
    assert sender_evidence(F1, (), (), policy) is Evidence.UNVERIFIED
    off = EvidencePolicy(trusted_authserv_ids=TRUSTED)
    assert sender_evidence(F1, (), ("Internal",), off) is Evidence.UNVERIFIED, "not configured"


def test_without_a_source_only_an_explicit_choice_lets_mail_through() -> None:
    assert sender_evidence(F1, (), (), EvidencePolicy()) is Evidence.UNVERIFIED
    allow = EvidencePolicy(allow_unauthenticated=True)
    assert sender_evidence(F1, (), (), allow) is Evidence.NOT_REQUIRED


# -- against the real relay and Dovecot --------------------------------------------


@pytest.fixture
def world(mail: MailServer, tmp_path: Path) -> World:
    # An upstream MX the relay receives from is trusted too: its fields sit below the
    # relay's own, as in a two-hop chain (MX with DKIM/DMARC → internal relay).
    w = World(mail, tmp_path / "w").setup()
    w.write_config(trusted=[AUTHSERV_ID, MX])
    return w


def new_signal(world: World, mail: MailServer) -> tuple[str, bytes]:
    mail.deliver(signal_mail(marker()), MAILBOX)
    world.once()
    request = mail.wait_for_messages(F1, 1)[-1]
    return find_references(str(parse(request)["Subject"]), "VV")[0], request


def rejections(mail: MailServer) -> list[bytes]:
    return [m for m in mail.messages(F1) if str(parse(m)["Subject"]).startswith("Niet uitgevoerd")]


def assert_refused_untouched(world: World, mail: MailServer) -> None:
    assert mail.messages(KEDO) == [], "the forged command was carried out"
    assert world.status()["by_state"] == {"queued": 1}
    (answer,) = rejections(mail)
    assert "niet worden bevestigd als afkomstig uit uw eigen mailbox" in body_text(answer)
    assert '"reason": "unverified"' in world.log_text()
    assert mail.messages(MAILBOX) == []


def forged(request: bytes, header: str, body: str = "KEDO") -> bytes:
    return (header + "\r\n").encode() + reply(request, body)


def test_an_authenticated_genuine_reply_is_carried_out(world: World, mail: MailServer) -> None:
    _, request = new_signal(world, mail)
    world.command(reply(request, "KEDO"))
    assert len(mail.wait_for_messages(KEDO, 1)) == 1
    assert world.status()["open"] == 0
    assert '"authenticated": true' in world.log_text()


def test_another_accounts_submission_is_refused(world: World, mail: MailServer) -> None:
    _, request = new_signal(world, mail)
    # The outsider logs in with their own account and writes From: functionaris.
    mail.deliver(reply(request, "KEDO"), MAILBOX, mail_from=F1, login="buiten@extern.example")
    world.until_quiet()
    assert_refused_untouched(world, mail)


def test_a_forged_field_with_the_relays_own_id_is_stripped(world: World, mail: MailServer) -> None:
    _, request = new_signal(world, mail)
    raw = forged(request, f"Authentication-Results: {AUTHSERV_ID}; auth=pass smtp.auth={F1}")
    mail.deliver(raw, MAILBOX, mail_from="forger@evil.example")
    world.until_quiet()
    assert_refused_untouched(world, mail)


def test_a_dkim_pass_for_another_domain_is_refused(world: World, mail: MailServer) -> None:
    _, request = new_signal(world, mail)
    raw = forged(request, f"Authentication-Results: {MX}; dkim=pass header.d=evil.example")
    mail.deliver(raw, MAILBOX, mail_from="forger@evil.example")
    world.until_quiet()
    assert_refused_untouched(world, mail)


def test_pass_inside_a_comment_is_refused(world: World, mail: MailServer) -> None:
    _, request = new_signal(world, mail)
    raw = forged(
        request,
        f"Authentication-Results: {MX}; spf=fail (sender dkim=pass header.d=gemeente.example)"
        " smtp.mailfrom=forger@evil.example",
    )
    mail.deliver(raw, MAILBOX, mail_from="forger@evil.example")
    world.until_quiet()
    assert_refused_untouched(world, mail)


def test_a_forged_pass_below_the_servers_fail_is_refused(world: World, mail: MailServer) -> None:
    _, request = new_signal(world, mail)
    # Unauthenticated with the functionaris' own envelope sender: the relay stamps
    # spf=fail on top (its domain's mail must come authenticated).
    raw = forged(request, f"Authentication-Results: {MX}; auth=pass smtp.auth={F1}")
    mail.deliver(raw, MAILBOX, mail_from=F1, login="")
    world.until_quiet()
    assert_refused_untouched(world, mail)


def test_the_upstream_servers_aligned_pass_is_enough(world: World, mail: MailServer) -> None:
    """The control for the forged cases: the same chain with a pass that *is*
    aligned, and nothing negative above it, is carried out."""
    _, request = new_signal(world, mail)
    raw = forged(request, f"Authentication-Results: {MX}; dkim=pass header.d=gemeente.example")
    mail.deliver(raw, MAILBOX, mail_from="forger@evil.example")
    world.until_quiet()
    assert len(mail.wait_for_messages(KEDO, 1)) == 1


def test_an_unverified_follow_up_is_a_new_signal(world: World, mail: MailServer) -> None:
    ref, request = new_signal(world, mail)
    world.command(reply(request, "VRAAG Welk adres?"))
    assert world.status()["by_state"] == {"waiting_info": 1}
    answer = signal_mail(marker(), subject=f"RE: Vraag over uw signaal {ref}")
    mail.deliver(answer, MAILBOX, mail_from="forger@evil.example")  # From: the reporter
    world.until_quiet()
    assert world.status()["by_state"] == {"waiting_info": 1, "queued": 1}, "nothing added"
    submit(mail, signal_mail(marker(), subject=f"RE: Vraag over uw signaal {ref}"), REPORTER)
    world.until_quiet()
    assert world.status()["by_state"] == {"queued": 2}, "the reporter's own reply is added"


def test_an_unverified_drill_is_a_real_signal(world: World, mail: MailServer) -> None:
    mark = marker()
    raw = signal_mail(mark, sender=F1, subject=f"[OEFENING] proef {mark}")
    mail.deliver(raw, MAILBOX, mail_from="forger@evil.example")
    world.until_quiet()
    assert world.status()["flags"].get("drill") is None, "not steered away as a drill"
    submit(mail, signal_mail(marker(), sender=F1, subject="[OEFENING] echt"), F1)
    world.until_quiet()
    assert world.status()["flags"].get("drill") == 1


# -- configuration ------------------------------------------------------------------


def test_a_configuration_without_evidence_is_refused(world: World) -> None:
    world.write_config(trusted=[])
    for command in (("check",), ("once",), ("run",)):
        out = world.cli(*command)
        assert out.returncode == 2, (command, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        for key in ("triage.trusted_authserv_ids", "exchange_internal", "allow_unauthenticated"):
            assert key in lines[0]
        assert "Traceback" not in out.stderr


def test_allow_unauthenticated_is_logged_and_shown(world: World, mail: MailServer) -> None:
    world.write_config(trusted=[], allow_unauthenticated=True)
    assert world.status()["sender_evidence"] == {"required": False, "sources": []}
    _, request = new_signal(world, mail)
    mail.deliver(reply(request, "KEDO"), MAILBOX, mail_from="forger@evil.example")
    world.until_quiet()
    assert len(mail.wait_for_messages(KEDO, 1)) == 1
    assert '"authenticated": false' in world.log_text()
    text = world.cli("status")
    assert "NOT verified" in text.stdout


def test_status_names_the_sources(world: World) -> None:
    assert world.status()["sender_evidence"] == {
        "required": True,
        "sources": [f"authentication-results:{MX}", f"authentication-results:{AUTHSERV_ID}"],
    }
