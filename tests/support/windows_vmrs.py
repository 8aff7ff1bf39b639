"""The synthetic Windows guest as Hyper-V saved states, and as a plain memory image.

A variant fixes which virtual processors the saved state holds (one in kernel mode on
the kernel CR3, one in user mode on the KVA-shadow user CR3, or one whose CR3 fails the
layer's DTB check), how RamBlocks are stored (raw or XPRESS), and whether the debugger
data block is left in clear or encoded as Windows 10 keeps it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Tuple

from tests.support.partition_writer import (
    PartitionDescription,
    VpDescription,
    VtlDescription,
    build_partition_state,
    random_registers,
)
from tests.support.savedstate_writer import SavedStateWriter
from tests.support.windows_content import NTDLL, PROCESSES
from tests.support.windows_guest import WindowsGuest, build_windows_guest
from volatility3_vmrs.savedstate.types import Segment, Table

LONG_MODE = dict(cr0=0x80050033, cr4=0x003706F8, efer=0xD01)  # paging, PCIDE, SMEP, SMAP
KERNEL_PCID, USER_PCID = 2, 1  # the PCIDs of KVA shadowing
SHADOWED_PID = next(spec.pid for spec in PROCESSES if spec.shadow)  # the user VP's process


def kernel_registers(guest: WindowsGuest, seed: int = 0) -> Dict[str, Any]:
    """VP in kernel mode: CPL 0, the kernel CR3, RIP in the idle loop, GS at its KPCR."""
    regs = random_registers(random.Random(seed))
    regs.update(LONG_MODE)
    kpcr = guest.kpcrs[0]
    regs.update(
        cr3=guest.kernel_dtb | KERNEL_PCID,
        rip=guest.idle_rip,
        rsp=kpcr - 0x38,
        rflags=0x246,
        cs=Segment(0, 0, 0x10, 0xA09B),
        ss=Segment(0, 0, 0x18, 0xC093),
        ds=Segment(0, 0xFFFFFFFF, 0x2B, 0xC0F3),
        es=Segment(0, 0xFFFFFFFF, 0x2B, 0xC0F3),
        fs=Segment(0, 0xFFFFFFFF, 0x53, 0x40F3),
        gs=Segment(kpcr, 0xFFFFFFFF, 0x2B, 0xC0F3),
        gdtr=Table(0x57, kpcr + 0x1000),
        idtr=Table(0xFFF, kpcr + 0x2000),
        virtual_msrs=(0, guest.teb),  # kernel GS base: the user TEB until swapgs
    )
    return regs


def user_registers(guest: WindowsGuest, seed: int = 1) -> Dict[str, Any]:
    """VP in user mode: CPL 3 (CS RPL 3), the KVA-shadow user CR3, RIP in ntdll,
    GS at the TEB and the KPCR in the kernel GS base."""
    regs = random_registers(random.Random(seed))
    regs.update(LONG_MODE)
    kpcr = guest.kpcrs[1]
    regs.update(
        cr3=guest.shadow_dtb | USER_PCID,
        rip=NTDLL.base + 0x9D0E4,
        rsp=guest.teb - 0x2000 + 0x7F8,
        rflags=0x246,
        cs=Segment(0, 0, 0x33, 0xA0FB),
        ss=Segment(0, 0, 0x2B, 0xC0F3),
        ds=Segment(0, 0xFFFFFFFF, 0x2B, 0xC0F3),
        es=Segment(0, 0xFFFFFFFF, 0x2B, 0xC0F3),
        fs=Segment(0, 0xFFFFFFFF, 0x53, 0x40F3),
        gs=Segment(guest.teb, 0xFFFFFFFF, 0x2B, 0xC0F3),
        gdtr=Table(0x57, kpcr + 0x1000),
        idtr=Table(0xFFF, kpcr + 0x2000),
        virtual_msrs=(0, kpcr),
    )
    return regs


# --- the guest as saved states ---------------------------------------------------------
WINDOWS_10_19041_OS_ID = (1 << 48) | (4 << 40) | (10 << 32) | (0 << 24) | 19041
GARBAGE_CR3 = 0x5000  # a zero page of RAM: no self-reference, fails the layer's check


@dataclass(frozen=True)
class Variant:
    """VP roles in index order ("kernel", "user", "bad"), writer options, guest options."""

    roles: Tuple[str, ...]
    writer: Dict[str, Any] = field(default_factory=dict)
    encode_kdbg: bool = False


VARIANTS: Dict[str, Variant] = {
    "raw": Variant(("kernel", "user"), {"compression": "raw"}),
    "xpress": Variant(("user", "kernel"), {"compression": "xpress"}),
    "bad_cr3": Variant(("bad", "user"), {"compression": "raw"}),
    "user_only": Variant(("user",), {"compression": "xpress"}),
    "kdbg_encoded": Variant(("kernel", "user"), {"compression": "raw"}, encode_kdbg=True),
    "user_process": Variant(("process",), {"compression": "raw"}),
}


def memory_image(seed: int = 19041) -> Tuple[List[Tuple[int, bytes]], Dict[str, Any]]:
    """The guest's RAM as (gpa, bytes) ranges and its truth, without any saved state
    around it (for a legacy ``.bin`` or any other container)."""
    guest = build_windows_guest(seed)
    return guest.ranges, guest.truth


ROLES: Dict[str, Callable[[WindowsGuest], Dict[str, Any]]] = {
    "kernel": kernel_registers,
    "user": user_registers,
    "bad": lambda guest: {**kernel_registers(guest), "cr3": GARBAGE_CR3},
    # In user mode without KVA shadowing: CR3 is the process's own PML4 (kernel half
    # and self-reference included).
    "process": lambda guest: {
        **user_registers(guest),
        "cr3": guest.process_dtbs[SHADOWED_PID] | USER_PCID,
    },
}


def guest_for(variant: str, guests: Dict[bool, WindowsGuest]) -> WindowsGuest:
    """The guest a variant needs, built once per kind into ``guests``."""
    encode = VARIANTS[variant].encode_kdbg
    if encode not in guests:
        guests[encode] = build_windows_guest(encode_kdbg=encode)
    return guests[encode]


def vmrs_bytes(guest: WindowsGuest, variant: str) -> bytes:
    """The guest as a ``.vmrs`` in one of :data:`VARIANTS`."""
    spec = VARIANTS[variant]
    assert guest.truth["kdbg_encoded"] == spec.encode_kdbg, variant
    vps = [
        VpDescription(index, {0: VtlDescription(ROLES[role](guest))})
        for index, role in enumerate(spec.roles)
    ]
    blob = build_partition_state(PartitionDescription(vps=vps, os_id=WINDOWS_10_19041_OS_ID))
    data, _ = SavedStateWriter(guest.ranges, blob, **spec.writer).build()
    return data
