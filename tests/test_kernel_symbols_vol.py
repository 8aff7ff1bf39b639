"""The stock ``vol`` on the real Linux guest with no ISF at hand: the pack's automagic.

Each input gets a fresh Volatility cache, no ``-s``, and its own ``VMRS_SYMBOLS_DIR``:
its first run makes the ISF from the guest's memory; the rows must be exactly those the
same plugin gives with the committed ISF (``-s symbols``, runs shared with the other
real-guest modules). To keep CI time in check, every plugin of the list runs on the
XPRESS ``.vmrs``; the raw ``.vmrs`` and the ELF run ``linux.pslist`` (the run that makes
their ISF) - the ISF made from memory is byte-identical to the committed one
(``test_kernel_symbols.py``), so the other combinations would repeat the same proof.
"""

from __future__ import annotations

import json
import lzma
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from tests.fixtures.linux_guest import artefacts
from tests.support.linux_guest import E2E_PLUGINS
from tests.support.vol import run_vol, vol_json
from volatility3_vmrs.kernel.store import SYMBOLS_DIR_ENV

PLUGINS = [
    *E2E_PLUGINS,
    "linux.sockstat",
    "linux.lsof",
    "linux.mountinfo",
    "linux.check_syscall",
    "linux.malfind",
]
MADE = "made one from the guest's BTF and kallsyms"


def _rows(proc: subprocess.CompletedProcess) -> List[Any]:
    start = proc.stdout.find("[")
    assert start >= 0, f"no JSON output:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return json.loads(proc.stdout[start:])


@pytest.fixture(scope="module")
def inputs(linux_guest_vmrs, linux_guest_elf) -> Dict[str, Path]:
    return {
        "xpress": linux_guest_vmrs["xpress"],
        "raw": linux_guest_vmrs["raw"],
        "elf": linux_guest_elf,
    }


@pytest.fixture(scope="module")
def auto(inputs, tmp_path_factory):
    """(stderr, rows) of every run without an ISF; per input a fresh cache and ISF dir."""
    base = tmp_path_factory.mktemp("auto_symbols")
    user_s = base / "user-symbols"  # a -s directory: it must stay untouched
    user_s.mkdir()
    runs: Dict[Tuple[str, str], Tuple[str, List[Any]]] = {}
    setups = {}
    for name in inputs:
        cache, isf_dir = base / f"cache-{name}", base / f"isf-{name}"
        cache.mkdir()
        setups[name] = (cache, {SYMBOLS_DIR_ENV: str(isf_dir)})

    def one(name: str, plugin: str) -> Tuple[str, List[Any]]:
        cache, env = setups[name]
        extra = ["-s", str(user_s)] if name == "raw" else []
        proc = run_vol(
            ["-r", "json", *extra, "-f", str(inputs[name]), plugin], cache=cache, env=env
        )
        return proc.stderr, _rows(proc)

    firsts = [(name, "linux.pslist") for name in inputs]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for job, result in zip(firsts, pool.map(lambda job: one(*job), firsts)):
            runs[job] = result
        rest = [("xpress", plugin) for plugin in PLUGINS[1:]]
        for job, result in zip(rest, pool.map(lambda job: one(*job), rest)):
            runs[job] = result
    return runs, setups, user_s


@pytest.fixture(scope="module")
def committed(inputs, linux_guest_symbols, vol_cache):
    """Rows with the committed ISF (the runs other modules make are shared)."""

    def rows(name: str, plugin: str) -> List[Any]:
        args = ["-s", str(linux_guest_symbols), "-f", str(inputs[name]), plugin]
        return vol_json(args, cache=vol_cache)

    jobs = [("xpress", plugin) for plugin in PLUGINS] + [("raw", PLUGINS[0]), ("elf", PLUGINS[0])]
    rows(*jobs[0])  # the first run builds the cache: alone
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda job: rows(*job), jobs[1:]))
    return rows


@pytest.mark.parametrize("name", ["xpress", "raw", "elf"])
def test_first_run_makes_the_isf_and_gives_the_committed_rows(name, auto, committed):
    runs, setups, _user_s = auto
    stderr, rows = runs[(name, "linux.pslist")]
    assert rows == committed(name, "linux.pslist")
    lines = [line for line in stderr.splitlines() if MADE in line]
    assert len(lines) == 1, stderr[-3000:]
    isf_dir = Path(setups[name][1][SYMBOLS_DIR_ENV])
    made = sorted(isf_dir.rglob("*.json.gz"))
    assert len(made) == 1 and str(made[0]) in lines[0]
    assert "Traceback" not in stderr


@pytest.mark.parametrize("plugin", PLUGINS[1:])
def test_later_runs_use_the_isf_made_and_match(plugin, auto, committed):
    runs, _setups, _user_s = auto
    stderr, rows = runs[("xpress", plugin)]
    assert MADE not in stderr
    assert rows == committed("xpress", plugin)


def test_user_symbol_directory_is_never_written(auto):
    _runs, _setups, user_s = auto
    assert list(user_s.iterdir()) == []


def test_isf_made_is_the_committed_isf(auto):
    _runs, setups, _user_s = auto
    made = next(Path(setups["elf"][1][SYMBOLS_DIR_ENV]).rglob("*.json.gz"))
    import gzip

    assert gzip.decompress(made.read_bytes()) == lzma.decompress(artefacts.isf_path().read_bytes())


def btf2isf_command() -> List[str]:
    return [str(Path(sys.executable).with_name("vmrs-btf2isf"))]


def test_from_image_on_a_vmrs(inputs, tmp_path):
    out = tmp_path / "from-image.json"
    proc = subprocess.run(
        [*btf2isf_command(), "--from-image", str(inputs["xpress"]), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == lzma.decompress(artefacts.isf_path().read_bytes())
    assert "Linux 6.1.0-56-cloud-amd64" in proc.stderr
    assert "KASLR slide 0x2ea00000 (kallsyms, confirmed by IDTR base)" in proc.stderr


@pytest.fixture(scope="module")
def btf_zeroed_elf(linux_guest_elf, tmp_path_factory) -> Path:
    """A copy of the guest's ELF with the kernel's BTF blob zeroed."""
    btf = lzma.decompress(artefacts.BTF_XZ.read_bytes())
    path = tmp_path_factory.mktemp("no_btf") / "no-btf.elf"
    shutil.copyfile(linux_guest_elf, path)
    with open(path, "r+b") as f:
        data = f.read()
        at = data.find(btf[:4096])
        assert at > 0 and data.find(btf[:4096], at + 1) < 0
        f.seek(at)
        f.write(bytes(len(btf)))
    return path


def test_zeroed_btf_vol_says_why_in_one_line(btf_zeroed_elf, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {SYMBOLS_DIR_ENV: str(tmp_path / "isf")}
    proc = run_vol(["-f", str(btf_zeroed_elf), "linux.pslist"], cache=cache, env=env, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "vmrs:" in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "no kernel BTF (magic 0xEB9F)" in lines[0] and "dwarf2json" in lines[0]
    assert not (tmp_path / "isf").exists()


def test_zeroed_btf_btf2isf_says_why_in_one_line(btf_zeroed_elf, tmp_path):
    proc = subprocess.run(
        [*btf2isf_command(), "--from-image", str(btf_zeroed_elf), "-o", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("vmrs-btf2isf: error: no kernel BTF (magic 0xEB9F)")
    assert not (tmp_path / "x.json").exists()
