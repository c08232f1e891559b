"""What an install from a wheel carries besides the code: the example configurations
and the systemd units under <prefix>/share/inboxd, as the install guide uses them."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_config_and_systemd_under_share_inboxd() -> None:
    data_files = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]["data-files"]
    for folder in ("config", "systemd"):
        shipped = {
            path.name
            for pattern in data_files.get(f"share/inboxd/{folder}", [])
            for path in REPO.glob(pattern)
        }
        present = {p.name for p in (REPO / folder).iterdir() if p.is_file()}
        assert present and shipped == present, (folder, present - shipped)
    guide = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for text in (guide, readme):
        assert "share=/opt/inboxd/share/inboxd" in text
        assert "$share/config/inboxd.imap.toml" in text
        assert "$share/systemd/inboxd.service" in text


def test_the_wheel_carries_every_template_where_templates_py_looks() -> None:
    data_files = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]["data-files"]
    shipped = set()
    for destination, patterns in data_files.items():
        for pattern in patterns:
            for path in REPO.glob(pattern):
                if path.is_relative_to(REPO / "templates"):
                    assert destination == f"share/inboxd/{path.parent.relative_to(REPO)}", path
                    shipped.add(path)
    present = {p for p in (REPO / "templates").rglob("*") if p.is_file()}
    assert present and not present - shipped, sorted(map(str, present - shipped))


def test_the_source_archive_carries_everything_the_repository_tracks() -> None:
    """MANIFEST.in names every top-level file and folder git tracks, so an sdist holds
    the documentation, the change log and the whole test suite, not only the code."""
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=False
    )
    if tracked.returncode != 0:  # an unpacked archive: what it holds is the list
        tops = {p.name for p in REPO.iterdir() if p.name not in {".git", ".venv"}}
    else:
        tops = {line.split("/")[0] for line in tracked.stdout.splitlines()}
    tops -= {".gitignore"}
    covered: set[str] = set()
    for line in (REPO / "MANIFEST.in").read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words and words[0] in {"include", "graft"}:
            covered.update(words[1:])
    assert tops and tops <= covered, sorted(tops - covered)
