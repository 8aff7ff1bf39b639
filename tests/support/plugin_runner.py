"""Run the installed, stock ``vol`` on a file and parse what the renderers print."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

# The stock ``vol`` console script of the interpreter running the tests.
# (``python -m volatility3.cli`` does not work with volatility3 2.28: no __main__.)
VOL_SCRIPT = Path(sys.executable).parent / "vol"
VOL = [sys.executable, str(VOL_SCRIPT)]


@dataclass
class VolResult:
    returncode: int
    stdout: str
    stderr: str

    def json_rows(self) -> List[Dict[str, Any]]:
        assert self.returncode == 0, f"vol failed ({self.returncode}):\n{self.stderr[-4000:]}"
        start = self.stdout.find("[")
        assert start >= 0, f"no JSON output:\n{self.stdout[-2000:]}\n{self.stderr[-2000:]}"
        return json.loads(self.stdout[start:])

    def csv_rows(self) -> List[Dict[str, str]]:
        assert self.returncode == 0, f"vol failed ({self.returncode}):\n{self.stderr[-4000:]}"
        start = self.stdout.find("TreeDepth,")
        assert start >= 0, f"no CSV output:\n{self.stdout[-2000:]}\n{self.stderr[-2000:]}"
        return list(csv.DictReader(io.StringIO(self.stdout[start:])))


def run_vol(
    cache: Path,
    file: Path,
    plugin: str,
    *args: str,
    renderer: str = "json",
    global_args: Sequence[str] = (),
    timeout: int = 600,
    cwd: Optional[Path] = None,
) -> VolResult:
    command = [
        *VOL,
        "-q",
        "-r",
        renderer,
        "--cache-path",
        str(cache),
        *global_args,
        "-f",
        str(file),
        plugin,
        *args,
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    # Never run from the checkout: the installed package must be the one imported.
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=str(cwd or cache),
    )
    return VolResult(proc.returncode, proc.stdout, proc.stderr)
