"""LiME export: one LiME range header before each guest-physical range.

The header (LiME's ``lime_mem_range_header``, version 1) gives the first and the last
(inclusive) physical address of the bytes that follow; volatility3's LimeLayer and the
LiME tools read exactly this, ranges in ascending order.
"""

from __future__ import annotations

from typing import List, Sequence

from volatility3_vmrs.savedstate import SavedStateDump
from volatility3_vmrs.savedstate.structs import Layout

from .writer import MemoryRange, Output, copy_range

EXTENSION = "lime"
LIME_MAGIC = 0x4C694D45  # "EMiL" on disk
LIME_VERSION = 1
LIME_HEADER = Layout(
    "lime_mem_range_header",
    (("magic", "I"), ("version", "I"), ("start", "Q"), ("end", "Q"), ("_reserved", "Q")),
)
assert LIME_HEADER.size == 32


def write_lime(dump: SavedStateDump, ranges: Sequence[MemoryRange], output: Output) -> List[str]:
    for memory_range in ranges:
        output.write(
            LIME_HEADER.pack(
                magic=LIME_MAGIC,
                version=LIME_VERSION,
                start=memory_range.gpa,
                end=memory_range.end - 1,
            )
        )
        copy_range(dump, memory_range, output)
    return []
