"""Guest-physical memory as the kernel symbol finder sees it: a read function and ranges."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

ReadFunction = Callable[[int, int], bytes]
"""``read(gpa, size)`` -> exactly ``size`` bytes, zeros where nothing is mapped."""

SCAN_CHUNK = 16 << 20


@dataclass(frozen=True)
class PhysicalMemory:
    """Guest-physical memory: ``read`` plus the ``ranges`` ((start, size), sorted) it holds."""

    read: ReadFunction
    ranges: Tuple[Tuple[int, int], ...]

    @classmethod
    def of(cls, read: ReadFunction, ranges: Sequence[Tuple[int, int]]) -> PhysicalMemory:
        merged: List[Tuple[int, int]] = []
        for start, size in sorted((int(s), int(n)) for s, n in ranges if n > 0):
            if merged and start <= merged[-1][0] + merged[-1][1]:
                prev_start, prev_size = merged[-1]
                merged[-1] = (prev_start, max(prev_size, start + size - prev_start))
            else:
                merged.append((start, size))
        return cls(read, tuple(merged))

    @property
    def size(self) -> int:
        return sum(size for _, size in self.ranges)

    def clip(self, start: int, end: int) -> Tuple[int, int]:
        """The part of [start, end) inside the range that holds ``start`` (or an empty one)."""
        for r_start, r_size in self.ranges:
            if r_start <= start < r_start + r_size:
                return start, min(end, r_start + r_size)
            if start < r_start < end:
                return r_start, min(end, r_start + r_size)
        return start, start

    def find_all(self, needles: Sequence[bytes], limit: int = 64) -> Dict[bytes, List[int]]:
        """Every guest-physical address of each needle (at most ``limit`` each), one pass.

        Memory is mostly zero pages and ``bytes.find`` crawls through zeros when the
        needle holds a zero byte, so each needle is searched by its zero-free prefix and
        the rest compared at each hit; a needle should start with a few non-zero bytes.
        """
        hits: Dict[bytes, List[int]] = {needle: [] for needle in needles}
        overlap = max(len(needle) for needle in needles) - 1
        for base, chunk in self._chunks(overlap):
            for needle in needles:
                found = hits[needle]
                head = needle.split(b"\0", 1)[0] or needle
                pos = chunk.find(head)
                while pos >= 0 and len(found) < limit:
                    if chunk.startswith(needle, pos) and (not found or found[-1] != base + pos):
                        found.append(base + pos)
                    pos = chunk.find(head, pos + 1)
        return hits

    def find_near(self, needle: bytes, start: int, end: int, limit: int = 64) -> List[int]:
        """Guest-physical addresses of ``needle`` in [start, end) (one range), at most ``limit``."""
        start, end = self.clip(max(0, start), end)
        data = self.read(start, end - start)
        out: List[int] = []
        pos = data.find(needle)
        while pos >= 0 and len(out) < limit:
            out.append(start + pos)
            pos = data.find(needle, pos + 1)
        return out

    def _chunks(self, overlap: int) -> Iterator[Tuple[int, bytes]]:
        for start, size in self.ranges:
            pos, end = start, start + size
            while pos < end:
                length = min(SCAN_CHUNK + overlap, end - pos)
                yield pos, self.read(pos, length)
                pos += SCAN_CHUNK
