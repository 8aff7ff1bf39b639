"""The model's performance goals, measured side by side in one run.

    python benchmarks/bench_model.py [--runs 3] [--workdir /tmp/vmrs-bench-model]

1. Against what a user would otherwise load, the ELF core of the same RAM through
   Volatility's own ELF layer: a full physical scan (``banners.Banners``) and
   ``linux.pslist`` on the real Linux guest as a raw-block ``.vmrs`` and an XPRESS
   ``.vmrs``. Goals: scan <= 1.15x (XPRESS), <= 1.05x (raw); pslist <= 1.05x.
2. Opening a synthetic 64 GiB guest (65,536 RamBlocks, each a one-record fill stream) in
   a fresh process: seconds and the memory the open adds (VmHWM). Goals: <= 0.5 s,
   <= 64 MB.

Every figure is a median of ``--runs`` fresh-process runs, the files alternated; a
ratio is the median of the ratios of the rounds (wall clock; CPU time beside it).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.linux_guest import artefacts  # noqa: E402
from tests.support.container_writer import ContainerWriter  # noqa: E402
from tests.support.linux_guest import build_vmrs  # noqa: E402
from tests.support.partition_writer import build_partition_state, simple_partition  # noqa: E402
from tests.support.vol import vol_executable  # noqa: E402
from volatility3_vmrs.savedstate import memory as M  # noqa: E402
from volatility3_vmrs.savedstate import memory_map as MM  # noqa: E402

PLUGINS = ("banners.Banners", "linux.pslist")
GOALS = {
    ("banners.Banners", "xpress"): 1.15,
    ("banners.Banners", "raw"): 1.05,
    ("linux.pslist", "xpress"): 1.05,
    ("linux.pslist", "raw"): 1.05,
}
BLOCKS_64_GIB = 65_536


def vol_seconds(path: Path, plugin: str, cache: Path) -> Tuple[float, float]:
    """Wall-clock and CPU seconds (user + system of the child) of one ``vol`` run."""
    command = [vol_executable(), "-q", "--cache-path", str(cache), "-s", str(REPO / "symbols")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([*command, "-f", str(path), plugin], check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def synthetic_64_gib(path: Path) -> None:
    """One range of 64 GiB over 65,536 RamBlocks, each one multi-fill record."""
    writer = ContainerWriter("openvmm")
    desc, _ = simple_partition(1)
    writer.set("/savedstate/savedVM/partition_state", build_partition_state(desc))
    writer.set(
        "/savedstate/RamMemoryBlock0",
        MM.RAM_MEMORY_BLOCK.pack(
            saved_state_version=3,
            flags=0,
            page_count=BLOCKS_64_GIB * M.PAGES_PER_BLOCK,
            mbp_index_start=0,
            gpa_index_start=0,
            virtual_node=0,
            ksr_block_id=0,
        ),
        file_object=False,
    )
    for number in range(BLOCKS_64_GIB):
        stream = M.TAG_FIELD.pack(M.TAG_MULTI_FILL) + M.MULTI_FILL_RECORD.pack(
            number, M.PAGES_PER_BLOCK
        )
        writer.set(f"/savedstate/RamBlock{number}", stream, file_object=False)
    path.write_bytes(writer.build())


OPEN_CHILD = """
import json, sys, time
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
from volatility3_vmrs.savedstate import SavedStateDump
before = hwm()
start = time.perf_counter()
dump = SavedStateDump(sys.argv[1])
seconds = time.perf_counter() - start
assert len(dump.memory.map.blocks) == int(sys.argv[2])
print(json.dumps({"seconds": seconds, "added": hwm() - before}))
"""


def open_in_child(path: Path) -> Dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", OPEN_CHILD, str(path), str(BLOCKS_64_GIB)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vmrs-bench-model"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    cache = args.workdir / "cache"
    cache.mkdir(exist_ok=True)

    big = args.workdir / "synthetic-64gib.vmrs"
    if not big.exists():
        synthetic_64_gib(big)
    opens = [open_in_child(big) for _ in range(args.runs)]
    seconds = statistics.median(o["seconds"] for o in opens)
    added = statistics.median(o["added"] for o in opens) / 1e6
    print(
        f"open 64 GiB ({BLOCKS_64_GIB} RamBlocks, file {big.stat().st_size >> 20} MiB): "
        f"{seconds:.3f} s (goal <= 0.5 s), +{added:.1f} MB (goal <= 64 MB)"
    )

    elf = artefacts.elf_path(args.workdir)
    files = {"elf": elf}
    for variant in ("raw", "xpress"):
        files[variant] = args.workdir / f"guest-{variant}.vmrs"
        if not files[variant].exists():
            build_vmrs(elf, files[variant], variant)
    for path in files.values():  # warm Volatility's cache and the OS page cache
        vol_seconds(path, PLUGINS[1], cache)
    for plugin in PLUGINS:
        # Each round runs the ELF and both .vmrs files back to back; the ratio of a round
        # compares runs seconds apart, so the drift of a shared machine cancels out, and
        # the median over rounds drops the rounds a neighbour disturbed.
        ratios: Dict[str, List[float]] = {"raw": [], "xpress": []}
        cpu_ratios: Dict[str, List[float]] = {"raw": [], "xpress": []}
        walls: Dict[str, List[float]] = {name: [] for name in files}
        for _ in range(args.runs):
            measured = {name: vol_seconds(path, plugin, cache) for name, path in files.items()}
            for name, (wall, _cpu) in measured.items():
                walls[name].append(wall)
            for variant in ratios:
                ratios[variant].append(measured[variant][0] / measured["elf"][0])
                cpu_ratios[variant].append(measured[variant][1] / measured["elf"][1])
        elf = statistics.median(walls["elf"])
        for variant in ("raw", "xpress"):
            ratio = statistics.median(ratios[variant])
            cpu_ratio = statistics.median(cpu_ratios[variant])
            goal = GOALS[(plugin, variant)]
            verdict = "ok" if ratio <= goal else "OVER"
            print(
                f"{plugin:16} ELF {elf:6.2f} s  .vmrs {variant:6} "
                f"{statistics.median(walls[variant]):6.2f} s  ratio {ratio:.2f}x "
                f"(CPU {cpu_ratio:.2f}x; goal <= {goal}x) {verdict}"
            )


if __name__ == "__main__":
    main()
