"""Synthetic guests whose truth the tests know: page tables, data pages, processors.

A "Windows-flavour" guest has the OS ID of Windows 10 build 19045, page tables built by
:class:`tests.support.pagetables.PageTableBuilder` (with the self-referencing PML4 entry
Windows keeps, in long mode), known bytes at known virtual addresses, and VPs in kernel
and user mode. The same builder makes PAE and 32-bit variants.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from tests.support.pagetables import MIB2, MIB4, RW, P, PageTableBuilder
from tests.support.partition_writer import (
    PartitionDescription,
    VpDescription,
    VtlDescription,
    build_partition_state,
    random_registers,
)
from tests.support.savedstate_writer import SavedStateInfo, SavedStateWriter
from volatility3_vmrs.savedstate.types import PAGING_MODE, Segment

WINDOWS_10_19045 = (1 << 48) | (4 << 40) | (10 << 32) | (0 << 24) | 19045
LINUX_6_1_0 = (0x8100 << 48) | (((6 << 16) | (1 << 8) | 0) << 16)
SELF_REF_INDEX = 0x1ED
RAM_LOW = 0x400000  # 4 MiB below the hole
RAM_HIGH_GPA = 0x1_0000_0000
RAM_HIGH = 0x100000


@dataclass
class Guest:
    data: bytes
    info: SavedStateInfo
    mode: PAGING_MODE
    cr3: int  # as written to the VPs (PCID bits included when asked for)
    dtb: int  # the page-table root
    known: Dict[int, bytes] = field(default_factory=dict)  # va -> bytes at that va
    registers: List[Dict[int, dict]] = field(default_factory=list)  # per VP: vtl -> regs
    builder: Optional[PageTableBuilder] = None
    ranges: List[Tuple[int, bytes]] = field(default_factory=list)


def _kernel_base(mode: PAGING_MODE) -> int:
    return 0xFFFFF80000000000 if mode == PAGING_MODE.Paging_Long else 0x80000000


def _paging_registers(regs: dict, mode: PAGING_MODE, cr3: int, user: bool) -> dict:
    if mode == PAGING_MODE.Paging_Long:
        regs.update(cr0=0x80050033, cr4=0x000406F8, efer=0xD01)
    elif mode == PAGING_MODE.Paging_Pae:
        regs.update(cr0=0x80000011, cr4=0x000006B0, efer=0x800)
    else:
        regs.update(cr0=0x80000011, cr4=0x00000690, efer=0)
    regs["cr3"] = cr3
    selector = 0x33 if user else 0x10
    if mode != PAGING_MODE.Paging_Long:
        selector = 0x1B if user else 0x08
    regs["cs"] = Segment(0, 0xFFFFFFFF, selector, 0xA0FB if user else 0xA09B)
    return regs


def add_windows_self_map(builder: PageTableBuilder) -> None:
    """The self-map Windows keeps, in the form volatility3's automagic looks for."""
    if builder.mode == PAGING_MODE.Paging_Long:
        builder.add_self_reference(SELF_REF_INDEX)
    elif builder.mode == PAGING_MODE.Paging_32Bit:
        # Page-directory entry 0x300 points back at the page directory.
        builder.write(builder.root + 0x300 * 4, struct.pack("<I", builder.root | P | RW))
    else:
        # PAE: all four page directories exist, and the last one's first four entries
        # map the four directories (so PTEs are reachable at 0xC0000000).
        pdpt = []
        for index in range(4):
            (entry,) = struct.unpack("<Q", builder.read(builder.root + index * 8, 8))
            if not entry & P:
                entry = builder._alloc() | P
                builder.write(builder.root + index * 8, struct.pack("<Q", entry))
            pdpt.append(entry & ~0xFFF)
        for index, directory in enumerate(pdpt):
            builder.write(pdpt[3] + index * 8, struct.pack("<Q", directory | P | RW))


def windows_guest(
    mode: PAGING_MODE = PAGING_MODE.Paging_Long,
    *,
    pcid: int = 0,
    self_reference: bool = True,
    vp_count: int = 2,
    vtls: Sequence[int] = (0,),
    os_id: int = WINDOWS_10_19045,
    seed: int = 1,
    cr3_override: Optional[int] = None,
    cr3_by_vp: Optional[Dict[int, int]] = None,
    **writer_options: object,
) -> Guest:
    rng = random.Random(seed)
    builder = PageTableBuilder(mode, table_base=0x100000)
    if self_reference:
        add_windows_self_map(builder)
    base = _kernel_base(mode)
    known: Dict[int, bytes] = {}
    # Small pages at the bottom of RAM and one in the RAM above 4 GiB.
    # (32-bit paging cannot reach above 4 GiB with small pages.)
    fourth = 0xA000 if mode == PAGING_MODE.Paging_32Bit else RAM_HIGH_GPA + 0x3000
    for number, pa in enumerate((0x5000, 0x6000, 0x9000, fourth)):
        va = base + 0x10000 + number * 0x1000
        content = rng.randbytes(4096)
        builder.map(va, pa)
        builder.write(pa, content)
        known[va] = content
    # One large page (2 MiB, or 4 MiB in 32-bit mode) at the top of the low RAM.
    large = MIB4 if mode == PAGING_MODE.Paging_32Bit else MIB2
    large_pa = RAM_LOW - large if mode != PAGING_MODE.Paging_32Bit else 0
    large_va = base + 0x400000 if mode != PAGING_MODE.Paging_32Bit else base + 0x800000
    builder.map(large_va, large_pa, large)
    marker = b"large page marker " + bytes([mode])
    builder.write(large_pa + 0x1234, marker)
    known[large_va + 0x1234] = marker

    low = bytearray(RAM_LOW)
    high = bytearray(RAM_HIGH)
    for pfn, page in builder.pages.items():
        gpa = pfn * 4096
        if gpa < RAM_LOW:
            low[gpa : gpa + 4096] = page
        elif RAM_HIGH_GPA <= gpa < RAM_HIGH_GPA + RAM_HIGH:
            high[gpa - RAM_HIGH_GPA : gpa - RAM_HIGH_GPA + 4096] = page
        else:
            raise AssertionError(f"test page table page outside RAM: {gpa:#x}")
    ranges = [(0, bytes(low)), (RAM_HIGH_GPA, bytes(high))]

    cr3 = builder.cr3 | (pcid if mode == PAGING_MODE.Paging_Long else 0)
    if cr3_override is not None:
        cr3 = cr3_override
    vps = []
    registers: List[Dict[int, dict]] = []
    for index in range(vp_count):
        per_vtl = {}
        for vtl in vtls:
            regs = _paging_registers(
                random_registers(rng, long_mode=mode == PAGING_MODE.Paging_Long),
                mode,
                (cr3_by_vp or {}).get(index, cr3) if vtl == 0 else (0x300000 | P) & ~0xFFF,
                user=index == 1,
            )
            per_vtl[vtl] = regs
        registers.append(per_vtl)
        vps.append(VpDescription(index, {v: VtlDescription(r) for v, r in per_vtl.items()}))
    blob = build_partition_state(PartitionDescription(vps=vps, os_id=os_id))
    data, info = SavedStateWriter(ranges, blob, **writer_options).build()  # type: ignore[arg-type]
    return Guest(
        data=data,
        info=info,
        mode=mode,
        cr3=cr3,
        dtb=builder.cr3,
        known=known,
        registers=registers,
        builder=builder,
        ranges=ranges,
    )
