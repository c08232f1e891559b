"""How a long step makes way: the ``beat`` a step calls between its pieces.

The daemon feeds the systemd watchdog from its main loop only, so a step that takes
long (a backlog, one very large message fetched in parts or sent in pieces) must
tell it that work goes on. It is handed a beat explicitly, down to the adapter that
does the work; whoever has nobody to tell (``inboxd once``, a timed job, a test)
leaves the default, which does nothing.
"""

from __future__ import annotations

from collections.abc import Callable

Beat = Callable[[], None]


def rest() -> None:
    """The default beat: nobody to tell that work goes on."""
