"""Saved states made from the committed QEMU capture of a real Linux guest.

The capture (``tests/fixtures/linux_guest``) holds the guest's physical memory as an ELF
core and both vCPUs' registers as QEMU printed them. This module turns them into
``.vmrs`` files with the project's writer, so the stock Linux plugins run on real kernel
data read through the .vmrs layer, and their output can be compared with the same
plugins on the ELF (read by volatility3's own ELF layer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

from tests.fixtures.linux_guest import artefacts
from tests.support.partition_writer import (
    PartitionDescription,
    VpDescription,
    VtlDescription,
    build_partition_state,
)
from tests.support.savedstate_writer import SavedStateInfo, SavedStateWriter
from tests.support.xpress_fast import compress_fast
from volatility3_vmrs.savedstate.types import Segment, Table

# What a Hyper-V Linux guest writes to HV_X64_MSR_GUEST_OS_ID: open-source bit and
# vendor 0x81 (0x8100 << 48), OS type Linux, LINUX_VERSION_CODE in bits 16-47.
LINUX_VERSION_CODE_6_1_192 = (6 << 16) | (1 << 8) | 192
LINUX_GUEST_OS_ID = (0x8100 << 48) | (LINUX_VERSION_CODE_6_1_192 << 16)

VARIANTS: Dict[str, Dict[str, Any]] = {
    "raw": {"compression": "raw"},
    "xpress": {"compression": "xpress", "compressor": compress_fast, "extended_every": 97},
    "packed": {"layout": "packed", "compression": "raw"},
}

_QEMU_SEGMENTS = {
    "es": "ES",
    "cs": "CS",
    "ss": "SS",
    "ds": "DS",
    "fs": "FS",
    "gs": "GS",
    "ldtr": "LDT",
    "tr": "TR",
}
_QEMU_GP = (
    "RAX",
    "RCX",
    "RDX",
    "RBX",
    "RSP",
    "RBP",
    "RSI",
    "RDI",
    *(f"R{n}" for n in range(8, 16)),
)


# The stock plugins of the end-to-end suite on the real guest (the .vmrs against its ELF).
E2E_PLUGINS = (
    "linux.pslist",
    "linux.pstree",
    "linux.psaux",
    "linux.proc.Maps",
    "linux.envars",
    "linux.lsmod",
    "linux.kmsg",
    "linux.boottime",
)


def segment_attributes(qemu_flags: int) -> int:
    """QEMU keeps descriptor bits 8-23 of the high dword; Hyper-V packs them in 16 bits."""
    return (qemu_flags >> 8) & 0xF0FF


def hyperv_registers(cpu: Dict[str, Any]) -> Dict[str, Any]:
    """A partition_writer register dict from one vCPU of registers.json."""
    regs: Dict[str, Any] = {name.lower(): cpu[name] for name in _QEMU_GP}
    regs.update(rip=cpu["RIP"], rflags=cpu["RFL"])
    for ours, theirs in _QEMU_SEGMENTS.items():
        seg = cpu[theirs]
        regs[ours] = Segment(
            seg["base"], seg["limit"], seg["selector"], segment_attributes(seg["flags"])
        )
    regs["idtr"] = Table(cpu["IDT"]["limit"], cpu["IDT"]["base"])
    regs["gdtr"] = Table(cpu["GDT"]["limit"], cpu["GDT"]["base"])
    for name in ("CR0", "CR2", "CR3", "CR4", "EFER", "DR0", "DR1", "DR2", "DR3", "DR6", "DR7"):
        regs[name.lower()] = cpu[name]
    regs["cr8"] = cpu.get("CR8", 0)
    regs["cpl"] = cpu["CPL"]
    for index in range(16):
        regs[f"xmm{index}"] = int(cpu["XMM"][f"XMM{index:02d}"], 16)
    # The first 16 bytes of an FXSAVE image: FCW, FSW, abridged FTW, pad, FOP, FIP.
    regs["fp_control_status"] = cpu["FCW"] | cpu["FSW"] << 16 | (cpu["FTW"] & 0xFF) << 32
    # FXSAVE bytes 16-31: FDP, MXCSR, MXCSR_MASK.
    regs["xmm_control_status"] = cpu["MXCSR"] << 64 | 0xFFFF << 96
    # Word 1 of the virtual-MSR chunk is the kernel GS base (format §11.4, UNVERIFIED).
    regs["virtual_msrs"] = (0, cpu["KERNEL_GS_BASE"])
    return regs


def partition_state() -> Tuple[bytes, List[Dict[str, Any]]]:
    cpus = artefacts.load_registers()["cpus"]
    registers = [hyperv_registers(cpu) for cpu in cpus]
    description = PartitionDescription(
        vps=[
            VpDescription(index, {0: VtlDescription(regs)}) for index, regs in enumerate(registers)
        ],
        os_id=LINUX_GUEST_OS_ID,
    )
    return build_partition_state(description), registers


def build_vmrs(elf: Path, out: Path, variant: str) -> SavedStateInfo:
    """Write ``out`` from the capture, in one of :data:`VARIANTS`."""
    blob, _ = partition_state()
    ranges = artefacts.read_elf_ram(elf)
    data, info = SavedStateWriter(ranges, blob, **VARIANTS[variant]).build()
    out.write_bytes(data)
    return info
