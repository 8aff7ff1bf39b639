"""Raw export: guest-physical memory as a flat image, file offset = GPA.

Memory is written from GPA 0 to the end of the last range; the gaps between ranges
(and below the first) are left as sparse regions (a seek, no zeros written) where the
output can seek, and read back as zeros. The map of those holes is returned.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

from volatility3_vmrs.savedstate import SavedStateDump

from .writer import MemoryRange, Output, copy_range

EXTENSION = "raw"


def holes(ranges: Sequence[MemoryRange]) -> List[Tuple[int, int]]:
    """The [start, end) gaps between GPA 0 and the end of the last range."""
    gaps: List[Tuple[int, int]] = []
    position = 0
    for memory_range in ranges:
        if memory_range.gpa > position:
            gaps.append((position, memory_range.gpa))
        position = memory_range.end
    return gaps


def write_raw(dump: SavedStateDump, ranges: Sequence[MemoryRange], output: Output) -> List[str]:
    position = 0
    for memory_range in ranges:
        output.hole(memory_range.gpa - position, memory=False)
        copy_range(dump, memory_range, output)
        position = memory_range.end
    return []
