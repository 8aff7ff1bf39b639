"""Linux symbols made from the guest's memory: what the first run costs, side by side.

    python benchmarks/bench_symbols.py [--workdir /tmp/vmrs-bench-symbols] [--plugin linux.pslist]

One run of each (the machine is shared; see ``uptime`` printed first):

* on the XPRESS ``.vmrs`` of the committed real guest, ``vol <plugin>``
  - with the committed ISF (``-s symbols``) on a fresh Volatility cache ("ready, fresh":
    volatility3 validates the ISF and indexes it), then again ("ready, warm");
  - with no ISF, fresh cache and fresh ``VMRS_SYMBOLS_DIR`` ("first": the pack makes the
    ISF), then again ("cached");
  goals: first <= 2x ready (fresh, and warm reported too), cached <= 1.1x ready-warm;
* on the guest's ELF, our "first" run against ``pakunoda extract`` + ``vol -s`` with its
  ISF on a fresh cache (time to the first pslist rows; goal <= 0.5x). pakunoda is the
  ``bench`` extra (``pip install '.[bench]'``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.linux_guest import artefacts  # noqa: E402
from tests.support.linux_guest import build_vmrs  # noqa: E402
from tests.support.vol import vol_executable  # noqa: E402
from volatility3_vmrs.kernel.store import SYMBOLS_DIR_ENV  # noqa: E402


def timed(command: List[str], env: Optional[Dict[str, str]] = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def vol(cache: Path, image: Path, plugin: str, symbols: Optional[Path] = None) -> List[str]:
    command = [vol_executable(), "-q", "--cache-path", str(cache)]
    if symbols is not None:
        command += ["-s", str(symbols)]
    return [*command, "-f", str(image), plugin]


def fresh(base: Path, name: str) -> Path:
    path = base / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vmrs-bench-symbols"))
    parser.add_argument("--plugin", default="linux.pslist")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    elf = artefacts.elf_path(work)
    vmrs = work / "guest-xpress.vmrs"
    if not vmrs.exists():
        build_vmrs(elf, vmrs, "xpress")
    plugin = args.plugin

    ready_cache = fresh(work, "cache-ready")
    ready_fresh = timed(vol(ready_cache, vmrs, plugin, REPO / "symbols"))
    ready_warm = timed(vol(ready_cache, vmrs, plugin, REPO / "symbols"))
    auto_cache, auto_isf = fresh(work, "cache-auto"), fresh(work, "isf-auto")
    env = {SYMBOLS_DIR_ENV: str(auto_isf)}
    first = timed(vol(auto_cache, vmrs, plugin), env)
    cached = timed(vol(auto_cache, vmrs, plugin), env)
    print(f"XPRESS .vmrs, {plugin} (one run each)")
    print(f"  ISF ready, fresh cache  {ready_fresh:7.2f} s")
    print(f"  ISF ready, warm cache   {ready_warm:7.2f} s")
    print(
        f"  no ISF, first run       {first:7.2f} s   {first / ready_fresh:.2f}x ready-fresh, "
        f"{first / ready_warm:.2f}x ready-warm (goal <= 2x)"
    )
    print(f"  no ISF, later run       {cached:7.2f} s   {cached / ready_warm:.2f}x (goal <= 1.1x)")

    elf_cache, elf_isf = fresh(work, "cache-elf"), fresh(work, "isf-elf")
    ours = timed(vol(elf_cache, elf, plugin), {SYMBOLS_DIR_ENV: str(elf_isf)})
    pakunoda = shutil.which("pakunoda") or str(Path(sys.executable).with_name("pakunoda"))
    pak_dir = Path(tempfile.mkdtemp(prefix="pakunoda-", dir=work))
    extract = timed([pakunoda, "extract", "-q", str(elf), "-o", str(pak_dir / "pakunoda.json")])
    pak_cache = fresh(work, "cache-pakunoda")
    pak_vol = timed(vol(pak_cache, elf, plugin, pak_dir))
    total = extract + pak_vol
    print(f"ELF, time to the first {plugin} rows with no ISF at hand (one run each)")
    print(f"  vmrs automagic           {ours:7.2f} s")
    print(f"  pakunoda extract + vol   {total:7.2f} s  ({extract:.2f} + {pak_vol:.2f})")
    print(f"  ratio                    {ours / total:7.2f}x (goal <= 0.5x)")


if __name__ == "__main__":
    main()
