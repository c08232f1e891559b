"""(d) Start-up time of ``inboxd --help`` (the console script in the venv), and the
heaviest imports of ``inboxd --help`` and of ``inboxd once`` (``-X importtime``).

No mail server needed. Prints figures; asserts only that the command worked.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from world import REPO

pytestmark = pytest.mark.skipif(
    os.environ.get("INBOXD_BENCH") != "1",
    reason="benchmark: set INBOXD_BENCH=1 (and run pytest with -s to see the figures)",
)

RUNS = 10
TARGET = 0.5
INBOXD = Path(sys.executable).parent / "inboxd"


def import_times(args: list[str]) -> list[tuple[int, int, str]]:
    """(cumulative µs, self µs, module) from ``python -X importtime``, heaviest first,
    top-level packages only (nested lines are indented in its output)."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line.split("|")
        try:
            self_us, cumulative_us = int(parts[0].split(":")[1]), int(parts[1])
        except ValueError:
            continue  # the header line
        name = parts[2].rstrip()
        if not name.startswith("  "):  # only top-level imports: no double counting
            rows.append((cumulative_us, self_us, name.strip()))
    return sorted(rows, reverse=True)


def test_help_start_up_time(tmp_path: Path) -> None:
    assert INBOXD.exists(), f"{INBOXD} missing: pip install -e . in the venv"
    subprocess.run([str(INBOXD), "--help"], capture_output=True, timeout=30)  # warm caches
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        out = subprocess.run([str(INBOXD), "--help"], capture_output=True, text=True, timeout=30)
        times.append(time.perf_counter() - t)
        assert out.returncode == 0 and "once" in out.stdout, out.stderr
    bare = []
    for _ in range(RUNS):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], capture_output=True, timeout=30)
        bare.append(time.perf_counter() - t)

    # A config that does not exist: `once` imports what it needs, then fails to load.
    missing = str(tmp_path / "missing.toml")
    rows_help = import_times(["-m", "inboxd", "--help"])
    rows_once = import_times(["-m", "inboxd", "once", "--config", missing])

    med = statistics.median(times)
    print()
    print(f"(d) `inboxd --help` wall time over {RUNS} runs (subprocess, console script)")
    print(
        f"    median {med * 1000:6.0f} ms   min {min(times) * 1000:6.0f} ms   "
        f"max {max(times) * 1000:6.0f} ms   target < {TARGET * 1000:.0f} ms"
    )
    print(f"    bare `python -c pass`, median     {statistics.median(bare) * 1000:6.0f} ms")
    for label, rows in (("--help", rows_help), ("once (up to the config load)", rows_once)):
        print(f"    heaviest top-level imports of `inboxd {label}` (-X importtime, cumulative):")
        for cumulative, _self, name in rows[:8]:
            print(f"      {cumulative / 1000:7.1f} ms  {name}")
