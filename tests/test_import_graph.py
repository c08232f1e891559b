"""The import graph of inboxd points one way: no cycles, and the layers the README's
architecture section names are kept.

The graph is read from the source (the AST of every module), so it counts every
import the code can run: at the top, inside functions, and under ``TYPE_CHECKING``
too (a type that names the assembly is still a dependency on it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import inboxd

PACKAGE = Path(inboxd.__file__).parent


def module_name(path: Path) -> str:
    parts = ["inboxd", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The inboxd modules ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            # "from inboxd import commands" imports the module inboxd.commands.
            targets = [source, *(f"{source}.{a.name}" for a in node.names)]
        for target in targets:
            # "import inboxd.mailbox.imap" runs the packages above it too.
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(name, path, known) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def path_between(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """One chain of imports from ``start`` to ``goal`` (breadth first), or None."""
    came_from: dict[str, str | None] = {start: None}
    queue = [start]
    for v in queue:
        for w in sorted(graph[v]):
            if w not in came_from:
                came_from[w] = v
                queue.append(w)
    if goal not in came_from:
        return None
    chain: list[str] = []
    at: str | None = goal
    while at is not None:
        chain.append(at)
        at = came_from[at]
    return chain[::-1]


# (importer, what it must not reach, why). Each is checked through any chain of
# imports, not only a direct one: a detour through a third module is the same
# dependency.
LAYER_RULES = [
    ("inboxd.config", "inboxd.schedule", "settings sit at the bottom"),
    ("inboxd.config", "inboxd.app", "settings sit at the bottom"),
    ("inboxd.logs", "inboxd.metrics", "logging sits at the bottom"),
    ("inboxd.logs", "inboxd.app", "logging sits at the bottom"),
    ("inboxd.schedule", "inboxd.app", "jobs get their collaborators, not the assembly"),
    ("inboxd.metrics", "inboxd.app", "the endpoint gets its collaborators, not the assembly"),
    ("inboxd.triage", "inboxd.app", "triage gets its collaborators, not the assembly"),
    (
        "inboxd.transport.smtp",
        "inboxd.mailbox.imap",
        "TLS, connection and OAuth helpers live in inboxd.mailserver",
    ),
    (
        "inboxd.mailbox.imap",
        "inboxd.transport.smtp",
        "TLS, connection and OAuth helpers live in inboxd.mailserver",
    ),
    (
        "inboxd.transport.graph",
        "inboxd.mailbox.graph",
        "the Graph client is inboxd.graph_client, shared by both",
    ),
    (
        "inboxd.mailbox.graph",
        "inboxd.transport.graph",
        "the Graph client is inboxd.graph_client, shared by both",
    ),
    (
        "inboxd.transport.ews",
        "inboxd.mailbox.ews",
        "EWS account set-up is inboxd.ews_account, shared by both",
    ),
    (
        "inboxd.mailbox.ews",
        "inboxd.transport.ews",
        "EWS account set-up is inboxd.ews_account, shared by both",
    ),
    (
        "inboxd.transport.ews",
        "inboxd.transport.graph",
        "what both read from a message's headers is inboxd.transport.own_headers",
    ),
    (
        "inboxd.mailbox.ews",
        "inboxd.mailbox.graph",
        "the sync-state file is inboxd.sync_state, not the Graph backend's",
    ),
    # inboxd.parsing reaches every piece of the reading (inboxd.mime, inboxd.auto_rules).
    ("inboxd.parsing", "inboxd.store", "reading a mail is pure: no store"),
    ("inboxd.parsing", "inboxd.config", "reading a mail is pure: no settings"),
    ("inboxd.parsing", "inboxd.logs", "reading a mail is pure: no logging"),
    ("inboxd.parsing", "inboxd.mailbox", "reading a mail is pure: no mailbox"),
    # One home per backend: inboxd.backends.<name> builds an adapter from its settings;
    # the settings below know no adapter, the adapters know no settings file.
    (
        "inboxd.config",
        "inboxd.mailbox.base",
        "settings sit at the bottom: a backend's model knows no adapter",
    ),
    (
        "inboxd.config",
        "inboxd.transport.base",
        "settings sit at the bottom: a backend's model knows no adapter",
    ),
    (
        "inboxd.backends.settings",
        "inboxd.config",
        "the backend models sit below the file that holds them",
    ),
    ("inboxd.mailbox.imap", "inboxd.config", "an adapter takes plain arguments, no settings"),
    ("inboxd.transport.smtp", "inboxd.config", "an adapter takes plain arguments, no settings"),
    ("inboxd.mailbox.ews", "inboxd.config", "an adapter takes plain arguments, no settings"),
    ("inboxd.transport.graph", "inboxd.config", "an adapter takes plain arguments, no settings"),
    ("inboxd.mailbox.imap", "inboxd.backends.imap", "an adapter is built, it does not build"),
    ("inboxd.transport.smtp", "inboxd.backends.smtp", "an adapter is built, it does not build"),
    ("inboxd.mailbox.ews", "inboxd.backends.ews", "an adapter is built, it does not build"),
    ("inboxd.transport.ews", "inboxd.backends.ews", "an adapter is built, it does not build"),
    ("inboxd.mailbox.graph", "inboxd.backends.graph", "an adapter is built, it does not build"),
    ("inboxd.transport.graph", "inboxd.backends.graph", "an adapter is built, it does not build"),
    (
        "inboxd.backends.connect",
        "inboxd.app",
        "the backends are built for the assembly, not from it",
    ),
]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_is_read_from_every_module(graph: dict[str, set[str]]) -> None:
    # A reader that missed imports would pass every rule below: check it sees the
    # ones there are, including one inside a function and a relative one.
    assert len(graph) == len(list(PACKAGE.rglob("*.py")))
    assert "inboxd.config" in graph["inboxd.app"]
    assert "inboxd.cli" in graph["inboxd.__main__"]
    assert "inboxd.backends.imap" in graph["inboxd.backends.connect"]  # inside a method
    assert "inboxd.transport.base" in graph["inboxd.transport.smtp"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(toy) == [["a", "b", "c"]]
    assert path_between(toy, "d", "c") == ["d", "a", "b", "c"]


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    found = cycles(graph)
    assert not found, "import cycles (counting imports inside functions): " + "; ".join(
        " ".join(c) for c in found
    )


@pytest.mark.parametrize(("importer", "forbidden", "why"), LAYER_RULES)
def test_layers_point_one_way(
    graph: dict[str, set[str]], importer: str, forbidden: str, why: str
) -> None:
    assert importer in graph and forbidden in graph, "a module of the rule is gone: update it"
    chain = path_between(graph, importer, forbidden)
    assert chain is None, f"{importer} must not import {forbidden} ({why}): " + " → ".join(
        chain or []
    )


@pytest.mark.parametrize(
    "part", ["inboxd.triage", "inboxd.schedule", "inboxd.metrics", "inboxd.control"]
)
def test_a_part_that_fails_to_import_stops_the_start(part: str) -> None:
    # Without triage, officers' commands would be taken in as new signals; without
    # the scheduler, no reminder, digest or housekeeping: never a silent gap.
    probe = f"import sys; sys.modules[{part!r}] = None; import inboxd.daemon"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0, f"inboxd.daemon started without {part}"
    assert "ModuleNotFoundError" in done.stderr and part in done.stderr


# The core, the jobs and the admin commands talk to the Store protocol; only the
# assembly (inboxd.app.open_store) names the SQLite implementation.
STORE_USERS = [
    "inboxd.intake",
    "inboxd.triage",
    "inboxd.outbox",
    "inboxd.ending",
    "inboxd.schedule",
    "inboxd.metrics",
    "inboxd.admin",
    "inboxd.control",
    "inboxd.sent_copies",
]


@pytest.mark.parametrize("user", STORE_USERS)
def test_the_store_is_used_through_its_protocol(graph: dict[str, set[str]], user: str) -> None:
    assert user in graph, "a module of the rule is gone: update it"
    chain = path_between(graph, user, "inboxd.sqlite_store")
    assert chain is None, f"{user} must use inboxd.store.Store: " + " → ".join(chain or [])


def test_only_the_assembly_names_the_sqlite_store(graph: dict[str, set[str]]) -> None:
    assert {m for m, deps in graph.items() if "inboxd.sqlite_store" in deps} == {"inboxd.app"}
