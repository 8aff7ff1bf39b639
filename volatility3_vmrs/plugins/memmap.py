"""vmrs.memmap: the guest-physical memory ranges of a .vmrs and how their pages are saved.

One row per memory range (RamMemoryBlock, after overlaps are clipped): GPA start and
end (inclusive), page count, where its first page sits in the saved RAM (the raw
saved-memory offset), the 1 MiB RamBlocks it spans (in words, then as numbers: first,
last, how many the file lacks), and how many of its pages are
stored raw, as fills, XPRESS-compressed, missing (RamBlock absent) or bad (stream that
does not decode). Counting indexes each compressed RamBlock once, row by row as the
table is rendered, through Volatility's progress callback; ``--quick`` skips it.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator, List, Optional, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

from volatility3_vmrs.savedstate.memory import PageReader
from volatility3_vmrs.savedstate.memory_map import PAGE_SIZE, MemoryMap, MemoryRange

from .common import find_vmrs_layer, primary_requirement, require_memory

vollog = logging.getLogger(__name__)

KINDS = ("raw", "fill", "xpress", "missing", "bad")
COLUMNS = [
    ("Range", int),
    ("GPA start", format_hints.Hex),
    ("GPA end", format_hints.Hex),
    ("Pages", int),
    ("Saved RAM offset", format_hints.Hex),
    ("RamBlocks", str),
    ("First RamBlock", int),
    ("Last RamBlock", int),
    ("Absent RamBlocks", int),
    ("Raw", int),
    ("Fill", int),
    ("XPRESS", int),
    ("Missing", int),
    ("Bad", int),
    ("Flags", str),
]


def block_span(memory_map: MemoryMap, memory_range: MemoryRange) -> str:
    """``first-last`` RamBlock numbers (one number for a single block), and the absent."""
    first, last = memory_range.first_block, memory_range.last_block
    text = str(first) if first == last else f"{first}-{last}"
    missing = memory_map.missing_blocks(memory_range)
    if missing.count:
        text += f" ({missing.count} absent: {missing.describe()})"
    return text


class Memmap(interfaces.plugins.PluginInterface):
    """Lists the guest-physical memory ranges of a .vmrs with their page encodings."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            primary_requirement(),
            requirements.BooleanRequirement(
                name="quick",
                description="Do not index compressed RamBlocks (page-kind counts left empty)",
                default=False,
                optional=True,
            ),
        ]

    @classmethod
    def rows(
        cls,
        memory: PageReader,
        count: bool = True,
        progress: Optional[Callable[[float, str], None]] = None,
    ) -> Iterator[Tuple]:
        ranges = memory.ranges
        for position, memory_range in enumerate(ranges):
            if count:

                def scaled(percent: float, text: str, position: int = position) -> None:
                    if progress is not None:
                        progress((position + percent / 100.0) * 100.0 / len(ranges), text)

                counts = memory.page_kind_counts(memory_range, scaled)
                kinds: Tuple = tuple(counts.get(kind, 0) for kind in KINDS)
            else:
                kinds = tuple(renderers.NotAvailableValue() for _ in KINDS)
            yield (
                memory_range.number,
                format_hints.Hex(memory_range.gpa_start),
                format_hints.Hex(memory_range.gpa_end - 1),
                memory_range.page_count,
                format_hints.Hex(memory_range.mbp_start * PAGE_SIZE),
                block_span(memory.map, memory_range),
                memory_range.first_block,
                memory_range.last_block,
                memory.map.missing_blocks(memory_range).count,
                *kinds,
                ", ".join(memory_range.flag_names),
            )
        if progress is not None:
            progress(100.0, "Memory ranges done")

    def run(self) -> interfaces.renderers.TreeGrid:
        layer = find_vmrs_layer(self.context, self.config["primary"])
        rows = self.rows(
            require_memory(layer.dump), not self.config.get("quick", False), self._progress_callback
        )
        return renderers.TreeGrid(COLUMNS, ((0, row) for row in rows))
