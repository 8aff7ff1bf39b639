"""Decompression speed of the XPRESS backends on compressed 4 KiB pages.

Run: python benchmarks/bench_xpress.py [--pages N] [--repeat R]

Pages are built with a fixed seed in several kinds (zeros, fill pattern, text, machine
code from the pyfwnt extension, random, mixed), compressed with the test compressor, and
decompressed by pyfwnt and by the pure-Python decoder. Speeds are MB/s of *output*
(decompressed bytes), the best of R runs; the ratio is compressed / original size.
"wrapped" is xpress.decompress() on the pyfwnt backend (argument checks, length check).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import Callable

# Run from a checkout without installing: the repository root holds both packages.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyfwnt

from tests.support.xpress_compress import compress
from volatility3_vmrs.savedstate import xpress

PAGE = 4096


def _pages(kind: str, count: int, rng: random.Random, blob: bytes) -> list[bytes]:
    words = b"the quick brown fox jumps over lazy dog RamBlock kernel driver".split()
    pages = []
    for _ in range(count):
        if kind == "zeros":
            page = bytes(PAGE)
        elif kind == "fill":
            page = rng.randbytes(8) * (PAGE // 8)
        elif kind == "text":
            page = b" ".join(rng.choice(words) for _ in range(PAGE // 3))[:PAGE]
        elif kind == "code":
            start = rng.randrange(0, len(blob) - PAGE)
            page = blob[start : start + PAGE]
        elif kind == "random":
            page = rng.randbytes(PAGE)
        else:  # mixed: a quarter each of zeros, code, text and random
            start = rng.randrange(0, len(blob) - PAGE)
            quarter = PAGE // 4
            page = (
                bytes(quarter)
                + blob[start : start + quarter]
                + b" ".join(rng.choice(words) for _ in range(quarter))[:quarter]
                + rng.randbytes(quarter)
            )
        pages.append(page)
    return pages


def _speed(decode: Callable[[bytes, int], bytes], streams: list[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for stream in streams:
            decode(stream, PAGE)
        best = min(best, time.perf_counter() - start)
    return len(streams) * PAGE / best / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=200, help="pages per kind")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best one counts")
    args = parser.parse_args()

    rng = random.Random(4096)
    with open(pyfwnt.__file__, "rb") as handle:
        blob = handle.read()
    kinds = ("zeros", "fill", "text", "code", "random", "mixed")
    print(f"{args.pages} pages per kind, best of {args.repeat}; MB/s of decompressed output")
    print(f"{'kind':8} {'ratio':>6} {'pyfwnt':>9} {'wrapped':>9} {'python':>9} {'factor':>7}")
    xpress.set_backend("pyfwnt")
    everything: list[bytes] = []
    for kind in kinds:
        pages = _pages(kind, args.pages, rng, blob)
        streams = [compress(page) for page in pages]
        for page, stream in zip(pages, streams):
            if xpress.decompress_pure(stream, PAGE) != page:  # a benchmark of wrong code is moot
                raise SystemExit(f"round trip failed for a {kind} page")
        everything += streams
        ratio = sum(map(len, streams)) / (len(pages) * PAGE)
        fast = _speed(pyfwnt.lzxpress_decompress, streams, args.repeat)
        wrapped = _speed(xpress.decompress, streams, args.repeat)
        slow = _speed(xpress.decompress_pure, streams, args.repeat)
        print(f"{kind:8} {ratio:6.3f} {fast:9.1f} {wrapped:9.1f} {slow:9.1f} {fast / slow:6.0f}x")
    ratio = sum(map(len, everything)) / (len(everything) * PAGE)
    fast = _speed(pyfwnt.lzxpress_decompress, everything, args.repeat)
    wrapped = _speed(xpress.decompress, everything, args.repeat)
    slow = _speed(xpress.decompress_pure, everything, args.repeat)
    print(f"{'all':8} {ratio:6.3f} {fast:9.1f} {wrapped:9.1f} {slow:9.1f} {fast / slow:6.0f}x")


if __name__ == "__main__":
    main()
