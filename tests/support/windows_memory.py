"""Guest-physical memory and x64 4-level address spaces for the synthetic Windows guest.

:class:`PhysicalMemory` hands out 4 KiB frames from fixed regions (page tables, kernel
data, user data; one region lies above 4 GiB, as Hyper-V splits RAM around the MMIO
hole) and keeps their bytes. :class:`AddressSpace` is one PML4 over that memory: it maps
pages, creates the tables on the way, and writes virtual ranges, allocating a frame for
every page it touches for the first time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

PAGE = 0x1000
ADDRESS_MASK = 0x000F_FFFF_FFFF_F000
P, RW, US = 1, 2, 4
NX = 1 << 63
TABLE_FLAGS = P | RW | US
KERNEL_PAGE = P | RW | NX
USER_PAGE = P | RW | US | NX


@dataclass
class Region:
    """Frames [start, end) handed out from ``start`` upwards."""

    start: int
    end: int
    next: int = -1

    def take(self) -> int:
        if self.next < 0:
            self.next = self.start
        if self.next >= self.end:
            raise MemoryError(f"guest region {self.start:#x}-{self.end:#x} is full")
        frame = self.next
        self.next += PAGE
        return frame


@dataclass
class PhysicalMemory:
    """The guest's RAM: RAM ranges, allocation regions, and the frames written so far."""

    ram: List[Tuple[int, int]]  # (gpa, size) of each RAM range
    regions: Dict[str, Region]
    frames: Dict[int, bytearray] = field(default_factory=dict)

    def alloc(self, region: str) -> int:
        frame = self.regions[region].take()
        assert any(start <= frame < start + size for start, size in self.ram), hex(frame)
        self.frames[frame] = bytearray(PAGE)
        return frame

    def page(self, gpa: int) -> bytearray:
        base = gpa & ~(PAGE - 1)
        if base not in self.frames:
            self.frames[base] = bytearray(PAGE)
        return self.frames[base]

    def write(self, gpa: int, data: bytes) -> None:
        position = 0
        while position < len(data):
            address = gpa + position
            offset = address % PAGE
            count = min(PAGE - offset, len(data) - position)
            self.page(address)[offset : offset + count] = data[position : position + count]
            position += count

    def read_u64(self, gpa: int) -> int:
        offset = gpa % PAGE
        return int(struct.unpack_from("<Q", self.page(gpa), offset)[0])

    def write_u64(self, gpa: int, value: int) -> None:
        struct.pack_into("<Q", self.page(gpa), gpa % PAGE, value)

    def ranges(self) -> List[Tuple[int, bytes]]:
        """Every RAM range as (gpa, bytes), unwritten pages zero."""
        out = []
        for start, size in self.ram:
            image = bytearray(size)
            for frame, data in self.frames.items():
                if start <= frame < start + size:
                    image[frame - start : frame - start + PAGE] = data
            out.append((start, bytes(image)))
        return out


def _indices(va: int) -> Tuple[int, int, int, int]:
    return ((va >> 39) & 0x1FF, (va >> 30) & 0x1FF, (va >> 21) & 0x1FF, (va >> 12) & 0x1FF)


class AddressSpace:
    """An x64 4-level address space rooted at one PML4 frame."""

    def __init__(self, memory: PhysicalMemory, data_region: str, root: Optional[int] = None):
        self.memory = memory
        self.data_region = data_region
        self.root = memory.alloc("tables") if root is None else root
        if root is not None:
            memory.frames.setdefault(root, bytearray(PAGE))

    def map(self, va: int, pa: int, flags: int) -> None:
        table = self.root
        for index in _indices(va)[:3]:
            slot = table + index * 8
            entry = self.memory.read_u64(slot)
            if not entry & P:
                entry = self.memory.alloc("tables") | TABLE_FLAGS
                self.memory.write_u64(slot, entry)
            table = entry & ADDRESS_MASK
        self.memory.write_u64(table + _indices(va)[3] * 8, pa | flags)

    def translate(self, va: int) -> Optional[int]:
        table = self.root
        for depth, index in enumerate(_indices(va)):
            entry = self.memory.read_u64(table + index * 8)
            if not entry & P:
                return None
            table = entry & ADDRESS_MASK
            if depth == 3:
                return table | (va & (PAGE - 1))
        return None

    def pages(self, va: int, size: int) -> Iterator[int]:
        page = va & ~(PAGE - 1)
        while page < va + size:
            yield page
            page += PAGE

    def write(self, va: int, data: bytes, flags: int) -> None:
        """Write ``data`` at ``va``, backing untouched pages with fresh frames."""
        for page in self.pages(va, len(data)):
            if self.translate(page) is None:
                self.map(page, self.memory.alloc(self.data_region), flags)
        position = 0
        while position < len(data):
            address = va + position
            count = min(PAGE - address % PAGE, len(data) - position)
            pa = self.translate(address)
            assert pa is not None
            self.memory.write(pa, data[position : position + count])
            position += count

    def entry(self, index: int) -> int:
        return self.memory.read_u64(self.root + index * 8)

    def set_entry(self, index: int, value: int) -> None:
        self.memory.write_u64(self.root + index * 8, value)
