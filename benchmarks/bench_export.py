"""Export speed: ``vmrs export --format raw`` against ``cp`` of a raw image of the same bytes.

    python benchmarks/bench_export.py                 # the 4 GiB guests of bench_reads.py
    python benchmarks/bench_export.py --ram-gib 1     # a quick run

Writes, in ``--workdir``, the 4 GiB benchmark guest of ``bench_reads.py`` (RAM below a
hole at 3 GiB and from 4 GiB up) twice: made of the real Linux guest's RAM blocks (the
real-memory mix) and of the synthetic page mix, each as a raw-RamBlock .vmrs, an
XPRESS-RamBlock .vmrs and a raw image of the same RAM. Then, in this one run, alternating
and each in a fresh process, it times ``cp IMAGE OUT`` and the raw export of each .vmrs
(the hole is left sparse, so both write the same 4 GiB of data; ``sync`` before each
run, outside the timing), and prints median
seconds, the ratio of speeds (goals: >= 0.7x cp for raw blocks, >= 0.3x for XPRESS) and
the export's peak memory (VmHWM) against the reader's cache limit + 100 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_reads import MIB, real_pool, write_files  # noqa: E402

from volatility3_vmrs.savedstate import memory as M  # noqa: E402

GOALS = {"raw": 0.7, "xpress": 0.3}


def child(path: str, out: str) -> None:
    """One raw export in this (child) process: seconds, bytes written, peak memory."""
    from fuzz.runner import peak_rss_mb
    from volatility3_vmrs.export import export_to_path
    from volatility3_vmrs.savedstate import SavedStateDump

    baseline = peak_rss_mb()
    start = time.perf_counter()
    with SavedStateDump(path) as dump:
        result = export_to_path(dump, "raw", out, inputs=[path])
    seconds = time.perf_counter() - start
    data = sum(memory_range.size for memory_range in result.ranges)
    print(
        json.dumps(
            {"seconds": seconds, "data": data, "peak_mib": peak_rss_mb(), "base_mib": baseline}
        )
    )


def run_export(path: Path, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(path), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cp(image: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["cp", str(image), str(out)], check=True)
    return time.perf_counter() - start


def measure(files: Dict[str, Path], out: Path, runs: int) -> None:
    times: Dict[str, List[float]] = {"cp": [], "raw": [], "xpress": []}
    peaks: Dict[str, float] = {"raw": 0.0, "xpress": 0.0}
    size = files["image"].stat().st_size
    for _ in range(runs):
        for kind in ("cp", "raw", "xpress"):
            if out.exists():
                out.unlink()
            os.sync()  # every run starts with no dirty pages of the previous one
            if kind == "cp":
                times["cp"].append(run_cp(files["image"], out))
                continue
            result = run_export(files[kind], out)
            assert result["data"] == size, (result, size)
            times[kind].append(result["seconds"])
            peaks[kind] = max(peaks[kind], result["peak_mib"] - result["base_mib"])
    out.unlink()
    cp = statistics.median(times["cp"])
    print(f"  cp of the raw image : {cp:6.2f} s  {size / cp / MIB:7.1f} MiB/s")
    for kind in ("raw", "xpress"):
        seconds = statistics.median(times[kind])
        print(
            f"  export, {kind:6} blocks: {seconds:6.2f} s  {size / seconds / MIB:7.1f} MiB/s  "
            f"ratio {cp / seconds:.2f}x cp (goal >= {GOALS[kind]}x)  "
            f"peak memory +{peaks[kind]:.0f} MiB "
            f"(cache limit {M.DEFAULT_CACHE_LIMIT_BLOCKS} MiB + 100 MiB allowed)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ram-gib", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vmrs-bench-export"))
    parser.add_argument("--child", nargs=2, metavar=("VMRS", "OUT"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    ram = int(args.ram_gib * (1 << 30)) // MIB * MIB
    out = args.workdir / "export.out"
    guests = (
        ("the real Linux guest's RAM blocks", "realram", lambda: real_pool(args.workdir)),
        ("the synthetic page mix", "full", lambda: None),
    )
    for label, tag, pool in guests:
        print(f"\n{ram / (1 << 30):.2f} GiB guest made of {label} (medians of {args.runs})")
        files = write_files(args.workdir, ram, tag, pool())
        sizes = ", ".join(f"{k} {files[k].stat().st_size / MIB:.0f} MiB" for k in files)
        print(f"  files: {sizes}")
        measure(files, out, args.runs)
        for path in files.values():
            os.unlink(path)


if __name__ == "__main__":
    main()
