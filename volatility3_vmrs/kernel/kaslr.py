"""The kernel's KASLR offsets from a virtual processor's registers.

A saved state knows what a memory image does not: a VP's CR3 (the kernel's page tables)
and registers that hold kernel addresses. The IDTR base points at the IDT, whose gate 0
is the divide-error handler (``asm_exc_divide_error`` from 5.8, ``divide_error``
before); LSTAR (when the state has it) is ``entry_SYSCALL_64``. Each gives the run-time
address of a symbol whose link-time place kallsyms tells, hence the virtual slide.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from volatility3_vmrs.kernel.memory import ReadFunction
from volatility3_vmrs.savedstate.structs import Layout

# x86_64 interrupt gate descriptor (Intel SDM vol. 3, 6.14.1)
IDT_GATE = Layout(
    "x86_64 IDT gate",
    (
        ("offset_low", "H"),
        ("selector", "H"),
        ("ist", "B"),
        ("attributes", "B"),
        ("offset_middle", "H"),
        ("offset_high", "I"),
        ("_reserved", "I"),
    ),
)

ADDRESS_MASK = 0x000F_FFFF_FFFF_F000
PRESENT, LARGE = 0x1, 0x80
KPTI_USER_PGD = 0x1000  # with PTI the user CR3 is the kernel's with bit 12 set
DIVIDE_ERROR_HANDLERS = ("asm_exc_divide_error", "divide_error")
SYSCALL_ENTRY = "entry_SYSCALL_64"


@dataclass(frozen=True)
class VpState:
    """What the finder may use of one virtual processor (None: not in the state)."""

    cr3: int
    idtr_base: Optional[int] = None
    lstar: Optional[int] = None
    gs_base: Optional[int] = None
    kernel_gs_base: Optional[int] = None


def translate(read: ReadFunction, cr3: int, va: int) -> Optional[int]:
    """4-level x86_64 page walk of ``va`` (None when not mapped)."""
    table = cr3 & ADDRESS_MASK
    for level, shift in enumerate((39, 30, 21, 12)):
        (entry,) = struct.unpack("<Q", read(table + ((va >> shift) & 0x1FF) * 8, 8))
        if not entry & PRESENT:
            return None
        if level in (1, 2) and entry & LARGE:
            size = 1 << shift
            return (entry & ADDRESS_MASK & ~(size - 1)) | (va & (size - 1))
        table = entry & ADDRESS_MASK
    return table | (va & 0xFFF)


def _idt_handler(read: ReadFunction, cr3: int, idtr_base: int) -> Optional[int]:
    gpa = translate(read, cr3, idtr_base)
    if gpa is None:
        return None
    gate = IDT_GATE.unpack(read(gpa, IDT_GATE.size))
    if not gate.selector:
        return None
    return gate.offset_low | (gate.offset_middle << 16) | (gate.offset_high << 32)


def runtime_anchors(read: ReadFunction, vp: VpState) -> List[Tuple[str, Tuple[str, ...], int]]:
    """(register, symbol names it may hold, run-time address) of each usable register."""
    out: List[Tuple[str, Tuple[str, ...], int]] = []
    if vp.lstar:
        out.append(("LSTAR", (SYSCALL_ENTRY,), vp.lstar))
    if vp.idtr_base:
        for cr3 in {vp.cr3 & ~KPTI_USER_PGD, vp.cr3}:
            handler = _idt_handler(read, cr3, vp.idtr_base)
            if handler:
                out.append(("IDTR base", DIVIDE_ERROR_HANDLERS, handler))
                break
    return out


def virtual_shift_from_registers(
    read: ReadFunction, vp: VpState, link: Dict[str, int]
) -> Optional[Tuple[int, str]]:
    """(virtual KASLR slide, which register said so), from the first usable register."""
    for register, names, runtime in runtime_anchors(read, vp):
        for name in names:
            if name in link:
                shift = runtime - link[name]
                if not shift & 0xFFF:
                    return shift, register
    return None
