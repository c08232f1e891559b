"""Mail templates: Jinja2 in a sandbox, subject on the first line.

A template file looks like::

    Subject: Ontvangen: uw signaal {{ ref }}

    Beste collega, …

Pages that are not mails (the guides, the statistics page) live in
``<language>/pages/`` and are rendered whole by :meth:`Templates.page`; ``.html``
pages are autoescaped like HTML mail parts.

Short texts that are not whole mails (the lines of a command's answer, a note the
outbox adds) are macros in ``<language>/text/<name>.txt``, called by
:meth:`Templates.phrase`; an operator rewords them by copying the file into their
``templates_dir`` (all of a file's macros together).

Values are data, never templates: a subject or a question that reads ``{{7*7}}`` is
printed as written. Templates never see a signal's subject or content unless the
caller passes it on purpose (only triage requests and forwards do). A signal's token
is refused in a Subject (an operator's own template included): subjects are logged by
mail servers, the token goes in the body.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

SHIPPED = Path(__file__).resolve().parent.parent / "templates"
INSTALLED = Path(sys.prefix) / "share" / "inboxd" / "templates"


class TemplateError(Exception):
    pass


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str


def search_path(language: str, override_dir: str = "") -> list[str]:
    dirs = []
    if override_dir:
        dirs.append(Path(override_dir) / language)
        dirs.append(Path(override_dir))
    for base in (SHIPPED, INSTALLED):
        if (base / language).is_dir():
            dirs.append(base / language)
    # What both languages share (the pages' style sheet), after them.
    for base in (SHIPPED, INSTALLED):
        if (base / "common").is_dir():
            dirs.append(base / "common")
    return [str(d) for d in dirs]


class Templates:
    def __init__(self, language: str, override_dir: str = "") -> None:
        self.language = language
        self.env = ImmutableSandboxedEnvironment(
            loader=FileSystemLoader(search_path(language, override_dir)),
            undefined=StrictUndefined,
            autoescape=lambda name: bool(name and name.endswith(".html")),
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def render(self, name: str, context: Mapping[str, Any]) -> Rendered:
        try:
            text = self.env.get_template(f"{name}.txt").render(**context)
        except Exception as exc:
            raise TemplateError(
                f"template {self.language}/{name}.txt failed ({type(exc).__name__})"
            ) from None
        head, sep, body = text.partition("\n\n")
        if not sep or not head.lower().startswith("subject:") or "\n" in head.strip():
            raise TemplateError(
                f"template {self.language}/{name}.txt must start with a 'Subject:' line and a blank line"
            )
        subject = head.split(":", 1)[1].strip()
        token = context.get("token")
        if token and str(token).lower() in subject.lower():
            # Subjects end up in mail-server logs and message traces; the token travels
            # in the body only (README, "Where the token travels").
            raise TemplateError(
                f"template {self.language}/{name}.txt puts the signal's token in the "
                "Subject; it belongs in the body only"
            )
        return Rendered(subject=subject, body=body.lstrip("\n"))

    def subjects_showing_token(self) -> list[str]:
        """Mail templates whose Subject line uses ``token``: refused when the
        configuration is loaded, so an operator's template cannot put it where mail
        servers log it (``render`` refuses the rendered result as well)."""
        assert self.env.loader is not None
        found = []
        for name in self.env.loader.list_templates():
            if not name.endswith(".txt") or "/" in name:  # pages/… are documents
                continue
            source, _, _ = self.env.loader.get_source(self.env, name)
            try:
                used = meta.find_undeclared_variables(self.env.parse(source.split("\n", 1)[0]))
            except TemplateSyntaxError:
                continue  # rendering it names the template
            if "token" in used:
                found.append(f"{self.language}/{name}")
        return sorted(found)

    def subject(self, name: str, context: Mapping[str, Any]) -> str:
        """Only the subject line of a mail template, e.g. to show it in a guide."""
        try:
            assert self.env.loader is not None
            source, _, _ = self.env.loader.get_source(self.env, f"{name}.txt")
            head = source.split("\n", 1)[0]
            text = self.env.from_string(head).render(**context)
        except Exception as exc:
            raise TemplateError(
                f"template {self.language}/{name}.txt failed ({type(exc).__name__})"
            ) from None
        return text.split(":", 1)[1].strip()

    def phrase(self, name: str, macro: str, **values: Any) -> str:
        """The text of one macro in ``text/<name>.txt``, without a trailing newline
        (a multi-line macro gives its lines joined by newlines)."""
        try:
            module = self.env.get_template(f"text/{name}.txt").module
            return str(getattr(module, macro)(**values)).rstrip("\n")
        except Exception as exc:
            raise TemplateError(
                f"template {self.language}/text/{name}.txt failed in {macro} ({type(exc).__name__})"
            ) from None

    def page(self, name: str, context: Mapping[str, Any]) -> str:
        """A whole document from ``pages/<name>`` (e.g. ``guide_melder.html``)."""
        try:
            return self.env.get_template(f"pages/{name}").render(**context)
        except Exception as exc:
            raise TemplateError(
                f"template {self.language}/pages/{name} failed ({type(exc).__name__})"
            ) from None


def override_problem(language: str, override_dir: str) -> str | None:
    """What is wrong with an operator's own templates, as one line naming the file,
    or None. Checked when the configuration is loaded: a template that fails at
    render time would cost the very mail it words (the acknowledgement, a triage
    request), so it is refused before inboxd starts.

    Each file in ``override_dir`` (``<language>/`` first, then the folder itself: as
    :func:`search_path` finds them) must replace a shipped template of that name,
    parse, use only the values inboxd gives that template (those the shipped one
    uses), start a mail with its ``Subject:`` line, and for ``text/<name>.txt``
    define every macro of the shipped file with the same arguments.
    """
    ours = Templates(language)
    assert ours.env.loader is not None
    shipped_names = set(ours.env.loader.list_templates())
    seen: set[str] = set()
    for base in (Path(override_dir) / language, Path(override_dir)):
        for path in _override_files(base):
            name = path.relative_to(base).as_posix()
            if name in seen:
                continue
            seen.add(name)
            problem = _override_file_problem(ours, shipped_names, name, path)
            if problem:
                return f"template {path}: {problem}"
    return None


def _override_files(base: Path) -> list[Path]:
    """The files an operator's folder can replace: mails, short texts and pages."""
    if not base.is_dir():
        return []
    found = [*base.glob("*.txt"), *base.glob("text/*.txt"), *base.glob("pages/*")]
    return sorted(p for p in found if p.is_file())


def _override_file_problem(
    ours: Templates, shipped_names: set[str], name: str, path: Path
) -> str | None:
    if name not in shipped_names:
        return "inboxd has no template of this name (a misspelt file would never be used)"
    try:
        source = path.read_text(encoding="utf-8")
        tree = ours.env.parse(source)
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot be read ({type(exc).__name__})"
    except TemplateSyntaxError as exc:
        return f"line {exc.lineno}: {exc.message}"
    assert ours.env.loader is not None
    original = ours.env.parse(ours.env.loader.get_source(ours.env, name)[0])
    if name.startswith("text/"):
        return _missing_macro(tree, original)
    unknown = sorted(
        meta.find_undeclared_variables(tree) - meta.find_undeclared_variables(original)
    )
    if unknown:
        return (
            f"uses {{{{ {unknown[0]} }}}}, which inboxd does not give this template; "
            "use only the values the shipped one uses"
        )
    if "/" not in name and not source.lower().startswith("subject:"):
        return "a mail template must start with its 'Subject:' line and a blank line"
    return None


def _missing_macro(tree: nodes.Template, original: nodes.Template) -> str | None:
    def macros(t: nodes.Template) -> dict[str, tuple[str, ...]]:
        return {m.name: tuple(a.name for a in m.args) for m in t.find_all(nodes.Macro)}

    have, need = macros(tree), macros(original)
    for macro, args in sorted(need.items()):
        if macro not in have:
            return f"lacks the macro {macro}({', '.join(args)}); copy it from the shipped file"
        if have[macro] != args:
            return f"the macro {macro} must take ({', '.join(args)})"
    return None


@functools.cache
def shipped(language: str) -> Templates:
    """The shipped templates of a language, for callers without a configuration."""
    return Templates(language)
