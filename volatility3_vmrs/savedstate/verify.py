"""The full check of saved RAM: decode every page of every RamBlock the file holds.

The format checksums its metadata (headers, tables, keys) but not the pages of guest
RAM, and a compressed RamBlock's page stream is only decoded when one of its pages is
read. :func:`verify_memory` reads every block through the :class:`~.memory.PageReader`,
so every page stream is indexed and every XPRESS record decompressed; what fails is
reported to the dump's diagnostics (phase "read") as any read would report it, and
counted here. A flipped bit inside the literal bytes of a record, or inside a raw block,
decodes without error: nothing in the file can tell it apart from the guest's data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from .errors import MemoryReadError
from .memory import PageReader
from .memory_map import BLOCK_SIZE, PAGE_SIZE, PAGES_PER_BLOCK

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class MemoryCheck:
    """What :func:`verify_memory` decoded and what failed."""

    blocks: int  # RamBlocks the file holds (all were read)
    pages: int  # pages decoded (or read, in raw blocks)
    bad_blocks: Tuple[int, ...]  # blocks whose page stream cannot be decoded at all
    bad_pages: int  # pages that could not be read: of bad blocks and of failed records

    @property
    def clean(self) -> bool:
        return not self.bad_pages

    def describe(self) -> str:
        text = f"{self.blocks} RamBlock(s), {self.pages} pages decoded"
        if self.clean:
            return text + "; every page decodes"
        shown = ", ".join(str(n) for n in self.bad_blocks[:8])
        blocks = f"; {len(self.bad_blocks)} RamBlock(s) undecodable ({shown})" if shown else ""
        return f"{text}; {self.bad_pages} page(s) unreadable{blocks}"


def verify_memory(memory: PageReader, progress: Optional[Progress] = None) -> MemoryCheck:
    """Read every page of every RamBlock; bad ones end in the diagnostics and the count."""
    numbers = sorted(memory.map.blocks)
    pages = 0
    for position, number in enumerate(numbers):
        if progress is not None:
            progress(100.0 * position / max(1, len(numbers)), f"Verifying RamBlock{number}")
        start = number * BLOCK_SIZE
        try:
            memory.read_raw(start, BLOCK_SIZE)
            pages += PAGES_PER_BLOCK
            continue
        except MemoryReadError:
            pass
        # Something in the block failed: page by page, to count exactly what.
        for page in range(PAGES_PER_BLOCK):
            if number in memory.bad_blocks:
                break
            try:
                memory.read_raw(start + page * PAGE_SIZE, PAGE_SIZE)
                pages += 1
            except MemoryReadError:
                continue
    if progress is not None:
        progress(100.0, "Verifying RamBlocks")
    bad_blocks = tuple(sorted(n for n in memory.bad_blocks if n in memory.map.blocks))
    return MemoryCheck(len(numbers), pages, bad_blocks, len(numbers) * PAGES_PER_BLOCK - pages)
