"""Run the installed stock ``vol`` the way an analyst does, from the tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple


def vol_executable() -> str:
    """The ``vol`` console script of the running interpreter's environment."""
    candidate = Path(sys.executable).with_name("vol")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("vol")
    assert found, "the stock `vol` command is not installed next to this Python"
    return found


def run_vol(
    args: Sequence[str],
    *,
    cache: Path,
    timeout: float = 900,
    check: bool = True,
    env: Optional[Dict[str, str]] = None,
) -> subprocess.CompletedProcess:
    """``vol -q --cache-path <cache> <args>``; fails with vol's stderr when it fails.

    ``env`` adds variables (e.g. ``VMRS_SYMBOLS_DIR``) to the environment of the run.
    """
    command = [vol_executable(), "-q", "--cache-path", str(cache), *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{' '.join(command)} failed:\n{proc.stderr[-4000:]}"
    return proc


_JSON_RUNS: Dict[Tuple[str, ...], List[Any]] = {}


def vol_json(
    args: Sequence[str],
    *,
    cache: Path,
    timeout: float = 900,
    env: Optional[Dict[str, str]] = None,
) -> List[Any]:
    """Rows of ``vol -r json``; the same run asked twice in one session runs once."""
    key = (str(cache), *args, *sorted((env or {}).items()))
    if key not in _JSON_RUNS:
        proc = run_vol(["-r", "json", *args], cache=cache, timeout=timeout, env=env)
        start = proc.stdout.find("[")
        assert start >= 0, f"no JSON output:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        _JSON_RUNS[key] = json.loads(proc.stdout[start:])
    return _JSON_RUNS[key]


def flatten(rows: List[Any]) -> List[Any]:
    """Tree rows (``__children``) as one list, parents first."""
    out = []
    for row in rows:
        out.append(row)
        out.extend(flatten(row.get("__children", [])))
    return out
