"""The documentation inside the repository: the configuration reference matches the
models, nothing points outside the repository, links resolve, the licence is the
one pyproject declares."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from inboxd import configdoc
from inboxd.cli import _parser
from inboxd.config import MAILBOX_MODELS, TRANSPORT_MODELS, Config

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SKIP_DIRS = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def repository_text_files() -> list[Path]:
    out = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(p in SKIP_DIRS or p.endswith(".egg-info") for p in rel.parts):
            continue
        # The corpus is third-party mail kept byte for byte.
        if rel.parts[:3] == ("tests", "data", "corpus") and path.name != "SOURCES.md":
            continue
        if path.is_file() and path.suffix in {
            ".md",
            ".py",
            ".toml",
            ".txt",
            ".html",
            ".service",
            ".conf",
            ".sh",
            "",
        }:
            out.append(path)
    return out


def test_configuration_reference_matches_the_models() -> None:
    committed = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert committed == configdoc.render(), (
        "docs/configuration.md is out of date: run `python -m inboxd.configdoc --write`"
    )


def test_every_configuration_key_has_a_description() -> None:
    assert configdoc.undocumented() == [], (
        "add a docstring under each of these fields in inboxd/config.py (or inboxd/backends/settings.py), then run "
        "`python -m inboxd.configdoc --write`"
    )


def test_reference_lists_every_key_with_its_default() -> None:
    text = configdoc.render()
    for model in (*MAILBOX_MODELS, *TRANSPORT_MODELS):
        for name, field in model.model_fields.items():
            assert f"| `{field.alias or name}` |" in text
    # Durations are shown as written in the file, not as seconds.
    assert '| `dedup_window` | duration | `"30d"` |' in text
    assert '| `ack_rate_limit` | rate | `"10/h"` |' in text
    assert "`[destinations.<key>]`" in text
    assert "source_path" not in text  # internal, not a key


def test_a_field_without_docstring_is_reported() -> None:
    class Extra(Config):
        surprise: int = 0

    assert configdoc.undocumented(Extra) == ["surprise"]
    # The committed page no longer matches a model with a key more.
    assert "| `surprise` | integer | `0` |" in configdoc.render(Extra)
    assert configdoc.render(Extra) != (DOCS / "configuration.md").read_text(encoding="utf-8")


def test_configdoc_command_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert configdoc.main([]) == 0
    assert capsys.readouterr().out == configdoc.render()


# Built from pieces so that this file does not match itself.
FORBIDDEN = [re.compile(p) for p in ("SPEC" + r"\s*§", r"\.\./" + "shared", "SPEC" + r"\.md")]


def test_nothing_cites_an_outside_specification() -> None:
    files = repository_text_files()
    assert len(files) > 50
    offenders = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for pattern in FORBIDDEN:
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0)}")
    assert offenders == [], "refer to docs/ instead:\n" + "\n".join(offenders)


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize(
    "doc", ["README.md", "CHANGELOG.md", *sorted(p.name for p in DOCS.glob("*.md"))]
)
def test_relative_links_resolve_inside_the_repository(doc: str) -> None:
    path = ROOT / doc if (ROOT / doc).exists() else DOCS / doc
    text = path.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # an absolute URL
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        assert dest.is_relative_to(ROOT), f"{doc}: link {target} leaves the repository"
        assert dest.exists(), f"{doc}: link {target} points at nothing"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest.read_text(encoding="utf-8")), (
                f"{doc}: link {target}: no heading #{anchor} in {dest.name}"
            )


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_contract_lists_every_command() -> None:
    contract = (DOCS / "contract.md").read_text(encoding="utf-8")
    sub = next(a for a in _parser()._actions if a.dest == "command")
    commands = sorted(sub.choices)  # type: ignore[arg-type]
    assert "run" in commands
    missing = [c for c in commands if f"`inboxd {c}" not in contract]
    assert missing == [], "docs/contract.md, 'Command line', misses these commands"


def test_licence_is_the_eupl_pyproject_declares() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert meta["license"] == "EUPL-1.2"
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.lstrip().startswith("EUROPEAN UNION PUBLIC LICENCE v. 1.2")
    # The whole licence, not a stub: its last article and the appendix are there.
    assert "15. Applicable Law" in text
    assert "'Compatible Licences' according to Article 5 EUPL are:" in text
    assert len(text) > 13000


def test_changelog_has_an_unreleased_section() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(r"^## \[Unreleased\]$", text, re.M)
