"""The defects a reading collects, and the guard that turns a failing stage into one.

A defect is a stable code, never content: ``error:<stage>:<ExceptionType>`` for
anything unexpected, the others named where they are found.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

MAX_DEFECTS = 50

T = TypeVar("T")


class Defects:
    """Ordered, unique, bounded list of codes."""

    def __init__(self) -> None:
        self.codes: list[str] = []

    def add(self, code: str) -> None:
        if code not in self.codes and len(self.codes) < MAX_DEFECTS:
            self.codes.append(code)


def guard(defects: Defects, stage: str, default: T, fn: Callable[[], T]) -> T:
    """Run one stage; an unexpected exception becomes a defect, never a crash."""
    try:
        return fn()
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - the contract is "never raise"
        defects.add(f"error:{stage}:{type(exc).__name__}")
        return default
