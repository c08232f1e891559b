"""Where a generated document goes: stdout, or a file given with ``--out``.

A file is written beside its destination and renamed over it, so a reader (a web
server publishing the statistics page, say) never sees half a page.
"""

from __future__ import annotations

import sys
from pathlib import Path


def write(text: str, out: str | None) -> None:
    if not out:
        sys.stdout.write(text)
        return
    target = Path(out)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    sys.stderr.write(f"written to {target}\n")
