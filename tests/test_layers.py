"""The five layers of inboxd, as the README's architecture section draws them: every
module belongs to exactly one, and imports only from its own layer or one below
(through any chain of imports, counting those inside functions and under
``TYPE_CHECKING``). A new module fails here until it is given its layer."""

from __future__ import annotations

import pytest
from test_import_graph import import_graph, modules

# Bottom to top. The names are module paths below ``inboxd``.
LAYERS: dict[str, tuple[str, ...]] = {
    # Plain data in, plain data out: no settings, no store, no server.
    "core": (
        "addresses",
        "auto_rules",
        "classify",
        "commands",
        "crontab",
        "dedup",
        "evidence",
        "lifecycle",
        "mails",
        "mime",
        "mime.bodies",
        "mime.charsets",
        "mime.defects",
        "mime.field_values",
        "mime.headers",
        "mime.message_ids",
        "mime.walk",
        "msclouds",
        "pace",
        "parsing",
        "references",
        "replytext",
        "smime",
        "templates",
        "throttle",
    ),
    # What everything else is configured and logged with.
    "settings": (
        "backends",
        "backends.settings",
        "config",
        "config_values",
        "event_counts",
        "logs",
    ),
    # The world outside, each behind a small protocol: the store, the mailbox and
    # transport backends and what they share, keys, systemd.
    "adapters": (
        "backends.connect",
        "backends.ews",
        "backends.graph",
        "backends.imap",
        "backends.maildir",
        "backends.microsoft",
        "backends.smtp",
        "crypto",
        "ews_account",
        "graph_client",
        "mailbox",
        "mailbox.base",
        "mailbox.ews",
        "mailbox.graph",
        "mailbox.imap",
        "mailbox.maildir",
        "mailserver",
        "msauth",
        "sdnotify",
        "sealed_columns",
        "sent_copies",
        "shredding",
        "sqlite_store",
        "sqlite_transaction",
        "store",
        "store_schema",
        "sync_state",
        "tokens",
        "transport",
        "transport.base",
        "transport.ews",
        "transport.graph",
        "transport.maildir",
        "transport.own_headers",
        "transport.smtp",
    ),
    # The life of a signal, over the protocols: intake, triage, the outbox, the end,
    # the timed jobs, and the documents made from the settings and the store.
    "services": (
        "ending",
        "guides",
        "intake",
        "mail_limits",
        "mailer",
        "outbox",
        "register",
        "schedule",
        "statspage",
        "triage",
    ),
    # The one assembly and the ways in: the daemon, the command line, the admin
    # socket, the metrics endpoint, the demo.
    "entry points": (
        "__main__",
        "admin",
        "app",
        "cli",
        "configdoc",
        "control",
        "daemon",
        "demo",
        "documents",
        "metrics",
    ),
}


def layer_of() -> dict[str, int]:
    out = {"inboxd": 0}  # the package's own __init__ holds nothing but its docstring
    for level, names in enumerate(LAYERS.values()):
        for name in names:
            assert f"inboxd.{name}" not in out, f"{name} is in two layers"
            out[f"inboxd.{name}"] = level
    return out


def test_every_module_has_exactly_one_layer() -> None:
    found, given = set(modules()), set(layer_of())
    assert not found - given, f"modules without a layer: {sorted(found - given)}"
    assert not given - found, f"layers name modules that are gone: {sorted(given - found)}"


def test_the_layers_are_written_in_the_readme_as_here() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for name in LAYERS:
        assert f"**{name}**" in readme, f"the README's architecture section lacks {name}"


def upward(graph: dict[str, set[str]], level: dict[str, int], layer: int) -> list[str]:
    """The imports of ``layer``'s modules that reach a layer above it."""
    return [
        f"{m} imports {d}"
        for m in sorted(graph)
        if level.get(m) == layer
        for d in sorted(graph[m])
        if level.get(d, -1) > layer
    ]


@pytest.mark.parametrize("layer", list(LAYERS))
def test_a_layer_imports_only_its_own_and_those_below(layer: str) -> None:
    found = upward(import_graph(), layer_of(), list(LAYERS).index(layer))
    assert not found, f"{layer} reaches up: " + "; ".join(found)


def test_the_check_finds_an_upward_import() -> None:
    toy = {"low": {"high"}, "high": {"low", "mid"}, "mid": set()}
    level = {"low": 0, "mid": 1, "high": 2}
    assert upward(toy, level, 0) == ["low imports high"]
    assert upward(toy, level, 2) == []


def test_the_readme_names_every_module() -> None:
    """The module table is complete: each module by its file, or a package's by the
    package and its name (``mailbox/`` (``imap``, …))."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Architecture") : readme.index("## Configuration")]
    missing = []
    for name in layer_of():
        parts = name.split(".")[1:]
        if (
            not parts
            or parts[-1] in {"__main__"}
            or len(parts) == 1
            and parts[0]
            in {
                "mime",
                "mailbox",
                "transport",
                "backends",
            }
        ):
            continue
        if len(parts) == 1:
            found = f"`{parts[0]}.py`" in section
        else:
            found = f"`{parts[0]}/{parts[1]}.py`" in section or (
                f"`{parts[0]}/`" in section and f"`{parts[1]}`" in section
            )
        if not found:
            missing.append(name)
    assert not missing, f"not in the README's module table: {missing}"
