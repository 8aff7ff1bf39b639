"""Build guest page-table hierarchies in memory, for translation and layer tests.

``PageTableBuilder(mode)`` owns a dict ``pages`` of ``{page frame number: bytearray(4096)}``
(the key is the guest-physical page *index*, i.e. GPA >> 12). Paging structures are
allocated from ``table_base`` upwards, so they never collide with data pages that tests
place lower in memory. ``map()`` records every mapping in ``mappings`` so a test can
check each one; ``read()`` is a ``(gpa, size) -> bytes`` callable for ``paging.translate``.

Modes: 32-bit (4 KiB, 4 MiB), PAE (4 KiB, 2 MiB), 4-level long mode (4 KiB, 2 MiB,
1 GiB) and, for completeness, 5-level. ``add_self_reference(index)`` writes a Windows-style
self-referencing PML4 entry.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Dict, List, Tuple

from volatility3_vmrs.savedstate.types import PAGING_MODE

PAGE = 4096
KIB4, MIB2, MIB4, GIB1 = 0x1000, 0x200000, 0x400000, 0x40000000

P, RW, US, PWT, PCD, A, D, PS, G = (1 << n for n in (0, 1, 2, 3, 4, 5, 6, 7, 8))
NX = 1 << 63
DEFAULT_FLAGS = P | RW


@dataclass(frozen=True)
class Mapping:
    va: int
    pa: int
    size: int
    flags: int


# (shift, entry size) of each level, top to bottom.
_LEVELS: Dict[PAGING_MODE, List[Tuple[int, int]]] = {
    PAGING_MODE.Paging_32Bit: [(22, 4), (12, 4)],
    PAGING_MODE.Paging_Pae: [(30, 8), (21, 8), (12, 8)],
    PAGING_MODE.Paging_Long: [(39, 8), (30, 8), (21, 8), (12, 8)],
}
# Page sizes a level may map directly (PS bit), by shift.
_LEAF_SIZES = {
    PAGING_MODE.Paging_32Bit: {22: MIB4, 12: KIB4},
    PAGING_MODE.Paging_Pae: {21: MIB2, 12: KIB4},
    PAGING_MODE.Paging_Long: {30: GIB1, 21: MIB2, 12: KIB4},
}


class PageTableBuilder:
    def __init__(
        self, mode: PAGING_MODE, *, table_base: int = 0x1000000, la57: bool = False
    ) -> None:
        if mode not in _LEVELS:
            raise ValueError(f"unsupported mode {mode!r}")
        self.mode = mode
        self.la57 = la57
        self.levels = list(_LEVELS[mode])
        if la57:
            if mode != PAGING_MODE.Paging_Long:
                raise ValueError("la57 needs long mode")
            self.levels.insert(0, (48, 8))
        self.pages: Dict[int, bytearray] = {}
        self.mappings: List[Mapping] = []
        self._next = table_base // PAGE
        self.root = self._alloc()
        if mode == PAGING_MODE.Paging_Pae:
            # The PDPT is 32 bytes; place it off the page start to test 32-byte alignment.
            self.root += 0x20

    # -- memory
    def _alloc(self) -> int:
        pfn = self._next
        self._next += 1
        self.pages[pfn] = bytearray(PAGE)
        return pfn * PAGE

    def write(self, gpa: int, data: bytes) -> None:
        """Write guest-physical bytes, creating pages as needed."""
        pos = 0
        while pos < len(data):
            addr = gpa + pos
            page = self.pages.setdefault(addr // PAGE, bytearray(PAGE))
            off = addr % PAGE
            n = min(PAGE - off, len(data) - pos)
            page[off : off + n] = data[pos : pos + n]
            pos += n

    def read(self, gpa: int, size: int) -> bytes:
        """Read guest-physical bytes; absent pages raise KeyError (a 'read failure')."""
        out = b""
        while size > 0:
            off = gpa % PAGE
            n = min(PAGE - off, size)
            out += bytes(self.pages[gpa // PAGE][off : off + n])
            gpa += n
            size -= n
        return out

    def _entry(self, addr: int, size: int) -> int:
        return int.from_bytes(self.read(addr, size), "little")

    def _set_entry(self, addr: int, size: int, value: int) -> None:
        self.write(addr, value.to_bytes(size, "little"))

    # -- tables
    @property
    def cr3(self) -> int:
        return self.root

    def entry_address(self, va: int, depth: int) -> int:
        """Address of the entry at ``depth`` (0 = top) for ``va``, following the tables."""
        table = self.root
        for i, (shift, esize) in enumerate(self.levels):
            index_bits = (
                2 if (self.mode == PAGING_MODE.Paging_Pae and i == 0) else (10 if esize == 4 else 9)
            )
            addr = table + ((va >> shift) & ((1 << index_bits) - 1)) * esize
            if i == depth:
                return addr
            entry = self._entry(addr, esize)
            if not entry & P:
                raise KeyError(f"level {i} not present for {va:#x}")
            table = entry & (0xFFFFF000 if esize == 4 else 0x000FFFFFFFFFF000)
        raise ValueError(depth)

    def map(self, va: int, pa: int, size: int = KIB4, flags: int = DEFAULT_FLAGS) -> Mapping:
        leafs = _LEAF_SIZES[self.mode]
        if size not in leafs.values():
            raise ValueError(f"page size {size:#x} not available in {self.mode.name}")
        if va % size or pa % size:
            raise ValueError("va and pa must be aligned to the page size")
        table = self.root
        for i, (shift, esize) in enumerate(self.levels):
            index_bits = (
                2 if (self.mode == PAGING_MODE.Paging_Pae and i == 0) else (10 if esize == 4 else 9)
            )
            addr = table + ((va >> shift) & ((1 << index_bits) - 1)) * esize
            if leafs.get(shift) == size:
                value = pa | flags | P
                if size != KIB4:
                    value |= PS
                    if self.mode == PAGING_MODE.Paging_32Bit:
                        # PSE-36: PA bits 39:32 live in entry bits 20:13.
                        value = (pa & 0xFFC00000) | ((pa >> 32) & 0xFF) << 13 | flags | P | PS
                self._set_entry(addr, esize, value)
                mapping = Mapping(va, pa, size, flags)
                self.mappings.append(mapping)
                return mapping
            entry = self._entry(addr, esize)
            if not entry & P:
                new = self._alloc()
                # PAE PDPTEs have no RW/US bits (they are reserved there).
                upper = P if (self.mode == PAGING_MODE.Paging_Pae and i == 0) else P | RW | US
                entry = new | upper
                self._set_entry(addr, esize, entry)
            table = entry & (0xFFFFF000 if esize == 4 else 0x000FFFFFFFFFF000)
        raise AssertionError("unreachable")

    def clear_present(self, va: int, depth: int) -> None:
        """Clear the present bit of the entry at ``depth`` on the path of ``va``."""
        addr = self.entry_address(va, depth)
        esize = self.levels[depth][1]
        self._set_entry(addr, esize, self._entry(addr, esize) & ~P)

    def add_self_reference(self, index: int = 0x1ED) -> int:
        """Windows-style self-map: top-level entry ``index`` points at the top table."""
        if self.mode != PAGING_MODE.Paging_Long:
            raise ValueError("self-reference entries are a long-mode (PML4) feature")
        self._set_entry(self.root + index * 8, 8, self.root | P | RW | NX)
        return index

    def self_reference_va(self, index: int) -> int:
        """The VA of the top-level table through a self-reference entry at ``index``."""
        va = 0
        for shift, _ in self.levels:
            va |= index << shift
        top_bit = self.levels[0][0] + 8  # 47 for 4-level, 56 for 5-level
        if va >> top_bit & 1:
            va |= ((1 << 64) - 1) & ~((1 << top_bit) - 1)
        return va


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)
