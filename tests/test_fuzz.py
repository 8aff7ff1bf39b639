"""A short fuzz run of every target (about a minute in all) that fails on any finding.

The run is ``python -m fuzz`` in a child process, as documented in fuzz/README.md, so
its memory limit (RLIMIT_DATA) and SIGALRM watchdog cannot disturb the test process.
The harness itself is tested too: a planted bug, a hang and a memory blow-up must each
come out as a saved finding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fuzz.runner import Runner
from fuzz.seeds import Seed
from fuzz.targets import TARGETS, Target

REPO_ROOT = Path(__file__).resolve().parent.parent
SECONDS_PER_TARGET = 10  # six targets: ~60 s of fuzzing plus ~2 s building the seeds
MIN_INPUTS = {
    "container": 1000,
    "stream": 200,
    "partition": 2000,
    "file": 500,
    "plugins": 2,
    "legacy": 200,
}


def test_short_fuzz_run_finds_nothing(tmp_path):
    findings = tmp_path / "findings"
    stats_path = tmp_path / "stats.json"
    command = [
        sys.executable,
        "-m",
        "fuzz",
        "--target",
        "all",
        "--seconds",
        str(SECONDS_PER_TARGET),
        "--seed",
        str(int(time.time()) % 100_000),  # a new sample of inputs each run
        "--findings",
        str(findings),
        "--stats",
        str(stats_path),
        "--quiet",
    ]
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600
    )
    saved = sorted(str(p.relative_to(findings)) for p in findings.rglob("*.bin"))
    details = "\n".join(p.read_text()[:2000] for p in sorted(findings.rglob("*.txt"))[:5])
    assert result.returncode == 0, (
        f"fuzz findings {saved}\n{details}\nstdout:\n{result.stdout[-3000:]}\n"
        f"stderr:\n{result.stderr[-3000:]}"
    )
    stats = json.loads(stats_path.read_text())
    assert stats["findings"] == [] and not saved
    ran = {entry["target"]: entry for entry in stats["targets"]}
    assert set(ran) == set(TARGETS) >= set(MIN_INPUTS)
    for name, minimum in MIN_INPUTS.items():
        assert ran[name]["inputs"] >= minimum, ran[name]
    assert stats["peak_rss_mb"] < 1024


# --- the harness catches what it is meant to catch ----------------------------------------
SEEDS = [Seed("a", b"\x00" * 64, [(0, 8)]), Seed("b", b"\xff" * 64)]


def _runner(tmp_path: Path, **options: float) -> Runner:
    return Runner(tmp_path / "findings", log=False, **options)  # type: ignore[arg-type]


def test_unexpected_exception_is_a_saved_finding(tmp_path):
    def buggy(data: bytes) -> None:
        if data[:1] == b"\xff":
            raise IndexError("planted bug")

    runner = _runner(tmp_path)
    stats = runner.fuzz(Target("planted", buggy, "x", "test"), SEEDS, inputs=50)
    assert stats.findings == 1 and stats.inputs == 50
    (finding,) = runner.report.findings
    assert finding.kind == "exception" and "IndexError" in finding.signature
    assert Path(finding.path).read_bytes()[:1] == b"\xff"
    assert "planted bug" in Path(finding.path).with_suffix(".txt").read_text()


def test_vmrs_errors_are_expected_not_findings(tmp_path):
    from volatility3_vmrs.savedstate.errors import TruncatedError

    def refuses(data: bytes) -> None:
        raise TruncatedError("short", structure="test")

    runner = _runner(tmp_path)
    stats = runner.fuzz(Target("refuses", refuses, "x", "test"), SEEDS, inputs=20)
    assert stats.findings == 0 and stats.expected_errors == 20


def test_hang_is_a_finding(tmp_path):
    def slow(data: bytes) -> None:
        if data[:1] == b"\x00":
            time.sleep(1.0)

    runner = _runner(tmp_path, timeout=0.2)
    stats = runner.fuzz(Target("slow", slow, "x", "test"), SEEDS[:1], inputs=1)
    assert stats.findings == 1
    assert runner.report.findings[0].kind == "hang"


MEMORY_SCRIPT = """
import sys
from pathlib import Path
from fuzz.runner import Runner
from fuzz.seeds import Seed
from fuzz.targets import Target

def hungry(data):
    block = bytearray(96 * 1024 * 1024)
    block[::4096] = b"\\x01" * len(block[::4096])  # touch every page: RSS grows

runner = Runner(Path(sys.argv[1]), log=False, rss_growth_mb=48, timeout=30)
stats = runner.fuzz(Target("hungry", hungry, "x", "test"), [Seed("a", b"a")], inputs=1)
print(stats.findings, runner.report.findings[0].kind if runner.report.findings else "-")
"""


def test_memory_blow_up_is_a_finding(tmp_path):
    # A fresh interpreter: in this one the peak RSS may already be above what the
    # planted allocation reaches, and the peak is what the runner watches.
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "findings")],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "memory"], (result.stdout, result.stderr)


def test_every_seed_passes_its_targets():
    from fuzz.seeds import build_all

    corpora = build_all()
    assert all(corpora[name] for name in ("file", "stream", "partition", "legacy"))
    assert {"sample-bin-subset", "bin-shuffled-raw"} <= {seed.name for seed in corpora["legacy"]}
    names = {seed.name for seed in corpora["file"]}
    assert {"small-raw", "guest-long-hyperv-xpress-vtl01-4vp", "config-only"} <= names
    for target in TARGETS.values():
        for seed in corpora[target.corpus]:
            try:
                target.function(seed.data)
            except target.expected:
                assert target.name == "file" and (
                    seed.name.startswith("sample-") or seed.name == "config-only"
                ), seed.name
