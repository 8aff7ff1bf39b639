"""Wall time of stock Linux plugins on the XPRESS .vmrs against the memory ELF, side by side.

    python benchmarks/bench_linux_plugins.py [--runs 5] [--workdir /tmp/vmrs-bench-linux]

Builds the XPRESS-compressed .vmrs of the committed real Linux guest, warms Volatility's
cache, then times ``vol linux.pslist`` and ``vol linux.psaux`` on both files, alternating,
and prints medians and their ratio (goal: <= 1.2x the ELF).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.linux_guest import artefacts  # noqa: E402
from tests.support.linux_guest import build_vmrs  # noqa: E402
from tests.support.vol import vol_executable  # noqa: E402

PLUGINS = ("linux.pslist", "linux.psaux")


def vol_seconds(path: Path, plugin: str, cache: Path) -> float:
    command = [vol_executable(), "-q", "--cache-path", str(cache), "-s", str(REPO / "symbols")]
    start = time.perf_counter()
    subprocess.run([*command, "-f", str(path), plugin], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vmrs-bench-linux"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    cache = args.workdir / "cache"
    cache.mkdir(exist_ok=True)
    elf = artefacts.elf_path(args.workdir)
    vmrs = args.workdir / "guest-xpress.vmrs"
    build_vmrs(elf, vmrs, "xpress")
    print(f"ELF {elf.stat().st_size >> 20} MiB, XPRESS .vmrs {vmrs.stat().st_size >> 20} MiB")
    for path in (elf, vmrs):  # warm the cache (and the OS page cache)
        vol_seconds(path, PLUGINS[0], cache)
    for plugin in PLUGINS:
        times = {"elf": [], "vmrs": []}
        for _ in range(args.runs):
            times["elf"].append(vol_seconds(elf, plugin, cache))
            times["vmrs"].append(vol_seconds(vmrs, plugin, cache))
        elf_median = statistics.median(times["elf"])
        vmrs_median = statistics.median(times["vmrs"])
        print(
            f"{plugin:13} ELF {elf_median:6.2f} s   .vmrs (XPRESS) {vmrs_median:6.2f} s   "
            f"ratio {vmrs_median / elf_median:.2f}x (goal <= 1.2x; medians of {args.runs})"
        )


if __name__ == "__main__":
    main()
