"""A fresh clone with nothing beside it runs the README's test collection.

Users who clone the project have no shared folder beside it: every sample the tests read must be in
the repository. The clone below lives in a directory of its own (no ``shared`` next to
it), ``VMRS_SAMPLES`` is unset, and the README's test command collects every test and
runs the ones that read the real samples.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _readme_test_command() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert block, "README has no sh block"
    lines = [line for line in block.group(1).splitlines() if "pytest" in line]
    assert lines, "README's first block has no test command"
    return lines[0]


def test_a_clone_with_nothing_beside_it_collects_and_reads_its_samples(tmp_path):
    git = shutil.which("git")
    assert git, "git is needed to clone the repository"
    clone = tmp_path / "lonely" / "volatility3-vmrs"
    subprocess.run(
        [git, "clone", "--quiet", str(REPO_ROOT), str(clone)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert not (clone.parent / "shared").exists()
    # The README's command ends in `python -m pytest -q`: run that pytest (this
    # interpreter has the test extra installed) in the clone.
    assert _readme_test_command().rstrip().endswith("-m pytest -q")
    environment = {k: v for k, v in os.environ.items() if k != "VMRS_SAMPLES"}
    environment["PYTHONPATH"] = str(clone)

    def pytest(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
            cwd=clone,
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
        )

    collected = pytest("--collect-only")
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    assert re.search(r"^\d+ tests collected", collected.stdout, re.M), collected.stdout[-500:]
    samples = pytest("tests/test_storage.py", "tests/test_cli.py", "-k", "sample or real")
    assert samples.returncode == 0, samples.stdout[-3000:] + samples.stderr[-3000:]
    assert re.search(r"\b\d+ passed", samples.stdout) and "error" not in samples.stdout.lower()
    needle = ".." + "/shared"  # spelled apart so this file does not match itself
    leaks = [
        str(path.relative_to(clone))
        for path in clone.rglob("*")
        if path.is_file()
        and path.suffix in (".py", ".md", ".toml", ".cfg")
        and needle in path.read_text(errors="replace")
    ]
    assert leaks == [], f"files that point users at {needle}: {leaks}"
