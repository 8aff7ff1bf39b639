"""Read-speed benchmark: the reader and the Volatility layer against a raw image, side by side.

    python benchmarks/bench_reads.py          # 4 GiB guest for the reader, 1 GiB for the layer
    python benchmarks/bench_reads.py --ram-gib 1 --layer-gib 0.25     # a quick run

It writes, in ``--workdir``, a raw-RamBlock .vmrs, an XPRESS-RamBlock .vmrs and a raw image
of the same guest RAM (RAM on both sides of a hole below 4 GiB), then prints ratios
measured in this one run (never absolute thresholds):

* opening time, for the full file and for one a quarter of its size (does not grow with RAM);
* sequential reads of all guest RAM with ``SavedStateDump.read_physical`` against plain
  Python file reads of the raw image, same chunk size (goal: >= 0.7x raw, >= 0.3x XPRESS);
* peak memory of each read run, in a child process, against the cache limit (goal:
  within the limit + 100 MB);
* reading every page through the Volatility layer against volatility3's own FileLayer
  over the raw image (goal: <= 1.5x the time for raw blocks, <= 3x for XPRESS).
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.container_writer import Blob, ContainerWriter  # noqa: E402
from tests.support.partition_writer import simple_partition  # noqa: E402
from tests.support.savedstate_writer import encode_block  # noqa: E402
from volatility3_vmrs.savedstate import memory as M  # noqa: E402
from volatility3_vmrs.savedstate import memory_map as MM  # noqa: E402

MIB = 1 << 20
POOL_BLOCKS = 16
HOLE_START = 3 << 30  # RAM below 3 GiB, the rest from 4 GiB up


def page_pool(seed: int = 7) -> List[bytes]:
    """Blocks of guest-like pages: zeros, fills, text, machine code, random data."""
    rng = random.Random(seed)
    code = Path(sys.executable).resolve().read_bytes()
    text = (Path(M.__file__).read_bytes() * 8)[: 64 * 4096]
    blocks = []
    for _ in range(POOL_BLOCKS):
        pages = []
        for _ in range(M.PAGES_PER_BLOCK):
            kind = rng.random()
            if kind < 0.30:
                pages.append(bytes(4096))
            elif kind < 0.35:
                pages.append(struct.pack("<Q", rng.getrandbits(64)) * 512)
            elif kind < 0.60:
                start = rng.randrange(0, len(text) - 4096)
                pages.append(text[start : start + 4096])
            elif kind < 0.90:
                start = rng.randrange(0, max(1, len(code) - 4096))
                pages.append((code[start : start + 4096] + bytes(4096))[:4096])
            else:
                pages.append(rng.randbytes(4096))
        blocks.append(b"".join(pages))
    return blocks


def layout(ram: int) -> List[Tuple[int, int]]:
    """(gpa, size) ranges: below the hole, then above 4 GiB."""
    low = min(ram, HOLE_START)
    ranges = [(0, low)]
    if ram > low:
        ranges.append((1 << 32, ram - low))
    return ranges


def real_pool(workdir: Path) -> Tuple[List[bytes], List[bytes]]:
    """1 MiB blocks of the committed real Linux guest's RAM, and their page streams."""
    from tests.fixtures.linux_guest import artefacts
    from tests.support.xpress_fast import compress_fast

    ram = b"".join(data for _, data in artefacts.read_elf_ram(artefacts.elf_path(workdir)))
    blocks = [ram[i : i + MIB] for i in range(0, len(ram) - MIB + 1, MIB)]
    return blocks, [stream_or_raw(block, compress_fast) for block in blocks]


def stream_or_raw(block: bytes, compressor=None) -> bytes:
    """The page stream of a block, or the raw block when the stream would not be shorter
    (a value of exactly 1 MiB is read as raw, as Hyper-V's writer intends)."""
    stream = encode_block(block, compressor=compressor)[0] if compressor else encode_block(block)[0]
    return stream if len(stream) < MIB else block


def write_files(
    workdir: Path, ram: int, tag: str, pool: Optional[Tuple[List[bytes], List[bytes]]] = None
) -> Dict[str, Path]:
    """The guest as raw and XPRESS .vmrs files and as a raw image; RamBlock ``n`` holds
    block ``n % len(pool)`` of the pool (the synthetic mix by default)."""
    if pool is None:
        blocks_pool = page_pool()
        pool = (blocks_pool, [stream_or_raw(block) for block in blocks_pool])
    pool_blocks, streams = pool
    blocks = ram // MIB
    _, blob = simple_partition(2)
    paths = {}
    for kind in ("raw", "xpress"):
        writer = ContainerWriter("openvmm")
        writer.set("/savedstate/VmVersion", 0x0A00)
        writer.set("/configuration/properties/version", 0x0A00)
        writer.set("/savedstate/savedVM/partition_state", blob, file_object=True)
        mbp = 0
        for number, (gpa, size) in enumerate(layout(ram)):
            record = MM.RAM_MEMORY_BLOCK.pack(
                saved_state_version=3,
                flags=0,
                page_count=size // 4096,
                mbp_index_start=mbp,
                gpa_index_start=gpa // 4096,
                virtual_node=0,
                ksr_block_id=0,
            )
            writer.set(f"/savedstate/RamMemoryBlock{number}", record, file_object=False)
            mbp += size // 4096
        source = pool_blocks if kind == "raw" else streams
        for number in range(blocks):
            value = source[number % len(source)]
            writer.set(
                f"/savedstate/RamBlock{number}",
                Blob(len(value), lambda value=value: iter((value,))),
            )
        paths[kind] = workdir / f"{tag}-{kind}.vmrs"
        writer.build_file(str(paths[kind]))
    paths["image"] = workdir / f"{tag}-ram.img"
    with open(paths["image"], "wb") as image:
        for number in range(blocks):
            image.write(pool_blocks[number % len(pool_blocks)])
    return paths


def real_guest_files(workdir: Path) -> Dict[str, Path]:
    """The committed real-kernel capture as an XPRESS .vmrs and as a raw image of its RAM."""
    from tests.fixtures.linux_guest import artefacts
    from tests.support.linux_guest import build_vmrs

    elf = artefacts.elf_path(workdir)
    paths = {"xpress": workdir / "linux-xpress.vmrs", "image": workdir / "linux-ram.img"}
    build_vmrs(elf, paths["xpress"], "xpress")
    with open(paths["image"], "wb") as image:
        for _, data in artefacts.read_elf_ram(elf):
            image.write(data)
    return paths


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def read_image(path: str, chunk: int) -> int:
    total = 0
    with open(path, "rb") as handle:
        while True:
            data = handle.read(chunk)
            if not data:
                return total
            total += len(data)


def read_vmrs(path: str, chunk: int) -> int:
    from volatility3_vmrs.savedstate import SavedStateDump

    total = 0
    with SavedStateDump(path) as dump:
        read = dump.read_physical
        for memory_range in dump.memory.ranges:
            # Ranges are multiples of the chunk sizes used here, as in the image loop.
            for gpa in range(memory_range.gpa_start, memory_range.gpa_end, chunk):
                total += len(read(gpa, chunk))
    return total


def child(kind: str, path: str, chunk: int) -> None:
    """Run one read in this (child) process and print seconds and memory."""
    import volatility3_vmrs.savedstate  # noqa: F401  (import cost outside the timing)
    from fuzz.runner import peak_rss_mb  # this process's own peak (VmHWM on Linux)

    baseline = peak_rss_mb()
    reader = read_image if kind == "image" else read_vmrs
    seconds, total = timed(reader, path, chunk)
    peak = peak_rss_mb()
    print(json.dumps({"seconds": seconds, "bytes": total, "peak_mib": peak, "base_mib": baseline}))


def run_child(kind: str, path: Path, chunk: int, repeats: int = 3) -> dict:
    """The median of ``repeats`` runs, each in a fresh process (the first also warms the
    OS page cache, so no run reads from disk while its rival reads from memory)."""
    results = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, str(path), str(chunk)],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    results.sort(key=lambda result: result["seconds"])
    return results[len(results) // 2]


def open_time(path: Path, repeats: int = 5) -> float:
    from volatility3_vmrs.savedstate import SavedStateDump

    best = float("inf")
    for _ in range(repeats):
        seconds, dump = timed(SavedStateDump, str(path))
        dump.close()
        best = min(best, seconds)
    return best


def layer_pages(path: Path, vmrs: bool) -> Tuple[float, int]:
    """Read every page through the Volatility layer (vmrs) or a FileLayer (raw image)."""
    import volatility3.framework.automagic  # noqa: F401
    from volatility3 import framework
    from volatility3.framework import contexts
    from volatility3.framework.automagic import stacker
    from volatility3.framework.layers import physical

    import volatility3_vmrs.layers

    framework.import_files(sys.modules["volatility3.framework.layers"])
    context = contexts.Context()
    context.config["FileLayer.location"] = path.resolve().as_uri()
    context.add_layer(physical.FileLayer(context, "FileLayer", "FileLayer"))
    if vmrs:
        names = stacker.LayerStacker.stack_layer(
            context, "FileLayer", stack_set=[volatility3_vmrs.layers.VmrsStacker]
        )
        layer = context.layers[names[0]]
        spans = [(r.gpa_start, r.gpa_end) for r in layer.dump.memory.ranges]
    else:
        layer = context.layers["FileLayer"]
        spans = [(0, layer.maximum_address + 1)]

    def every_page() -> int:
        count = 0
        for start, end in spans:
            for offset in range(start, end, 4096):
                layer.read(offset, 4096)
                count += 1
        return count

    return timed(every_page)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ram-gib", type=float, default=4.0)
    parser.add_argument("--layer-gib", type=float, default=1.0)
    parser.add_argument("--chunk", type=int, default=MIB)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vmrs-bench"))
    parser.add_argument("--child", nargs=3, metavar=("KIND", "PATH", "CHUNK"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    ram = int(args.ram_gib * (1 << 30)) // MIB * MIB
    print(
        f"writing a {ram / (1 << 30):.2f} GiB guest (raw, XPRESS, raw image) to {args.workdir} ..."
    )
    full = write_files(args.workdir, ram, "full")
    quarter = write_files(args.workdir, ram // 4 // MIB * MIB, "quarter")
    sizes = {kind: full[kind].stat().st_size / MIB for kind in ("raw", "xpress", "image")}
    print(
        f"  sizes: raw {sizes['raw']:.0f} MiB, XPRESS {sizes['xpress']:.0f} MiB, "
        f"image {sizes['image']:.0f} MiB"
    )

    print("\nopen (best of 5; reads only metadata, so it grows with the number of keys)")
    for kind in ("raw", "xpress"):
        big, small = open_time(full[kind]), open_time(quarter[kind])
        print(
            f"  {kind:6} {big * 1000:7.1f} ms for {ram / (1 << 30):.2f} GiB "
            f"({ram // MIB} RamBlock keys), {small * 1000:7.1f} ms for a quarter (goal <= 500 ms)"
        )

    for chunk in sorted({args.chunk, 4096}):
        print(f"\nsequential read of all guest RAM, {chunk} B reads, each in a fresh process")
        image = run_child("image", full["image"], chunk)
        speed_image = image["bytes"] / image["seconds"]
        print(f"  raw image file : {speed_image / MIB:8.1f} MiB/s")
        for kind, goal in (("raw", 0.7), ("xpress", 0.3)):
            result = run_child(kind, full[kind], chunk)
            assert result["bytes"] == image["bytes"], (result, image)
            speed = result["bytes"] / result["seconds"]
            extra = result["peak_mib"] - result["base_mib"]
            print(
                f"  .vmrs {kind:6}  : {speed / MIB:8.1f} MiB/s  ratio {speed / speed_image:.2f}x "
                f"(goal >= {goal}x)  peak memory +{extra:.0f} MiB "
                f"(cache limit {M.DEFAULT_CACHE_LIMIT_BLOCKS} MiB + 100 MiB allowed)"
            )

    print(f"\n{ram >> 30} GiB made of the real Linux guest's RAM blocks, 4096 B reads")
    real_big = write_files(args.workdir, ram, "realram", real_pool(args.workdir))
    image = run_child("image", real_big["image"], 4096)
    for kind, goal in (("raw", 0.7), ("xpress", 0.3)):
        result = run_child(kind, real_big[kind], 4096)
        assert result["bytes"] == image["bytes"]
        ratio = (result["bytes"] / result["seconds"]) / (image["bytes"] / image["seconds"])
        print(f"  .vmrs {kind:6}: ratio {ratio:.2f}x (goal >= {goal}x)")

    print("\nthe real Linux guest (tests/fixtures/linux_guest), XPRESS blocks, 4096 B reads")
    real = real_guest_files(args.workdir)
    image = run_child("image", real["image"], 4096)
    result = run_child("xpress", real["xpress"], 4096)
    assert result["bytes"] == image["bytes"]
    ratio = (result["bytes"] / result["seconds"]) / (image["bytes"] / image["seconds"])
    print(
        f"  raw image {image['bytes'] / image['seconds'] / MIB:8.1f} MiB/s, .vmrs XPRESS "
        f"{result['bytes'] / result['seconds'] / MIB:8.1f} MiB/s: ratio {ratio:.2f}x (goal >= 0.3x)"
    )

    layer_ram = int(args.layer_gib * (1 << 30)) // MIB * MIB
    print(f"\nevery page through the Volatility layer, {layer_ram / (1 << 30):.2f} GiB guest")
    small = write_files(args.workdir, layer_ram, "layer")
    base_seconds, base_pages = layer_pages(small["image"], vmrs=False)
    print(f"  FileLayer on the raw image: {base_seconds:6.2f} s for {base_pages} pages")
    for kind, goal in (("raw", 1.5), ("xpress", 3.0)):
        seconds, count = layer_pages(small[kind], vmrs=True)
        assert count == base_pages
        ratio = seconds / base_seconds
        print(f"  VmrsLayer {kind:6}    : {seconds:6.2f} s  ratio {ratio:.2f}x (goal <= {goal}x)")


if __name__ == "__main__":
    main()
