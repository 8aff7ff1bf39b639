"""The processor state an export carries, gathered once per VP from the public API.

:class:`CpuState` holds what both the ELF core (NT_PRSTATUS, NT_PRFPREG) and the crash
dump (CONTEXT) need: general registers, selectors and segment bases, control and debug
registers, and the FXSAVE image when the VP's floating-point chunk was saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from volatility3_vmrs.savedstate import SavedStateDump, VmrsError
from volatility3_vmrs.savedstate.structs import Layout
from volatility3_vmrs.savedstate.types import VIRTUAL_PROCESSOR_ARCH

from .writer import ExportError

GENERAL = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "rip", "rflags",
)  # fmt: skip
SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")
CONTROL = ("cr0", "cr2", "cr3", "cr4", "efer")
DEBUG = ("dr0", "dr1", "dr2", "dr3", "dr6", "dr7")

# The 512-byte FXSAVE image (Intel SDM vol. 1, 10.5.1, 64-bit form); Linux's
# user_fpregs_struct and Windows' XSAVE_FORMAT are this same image.
FXSAVE = Layout(
    "fxsave",
    (
        ("control_status", "16s"),  # FCW FSW FTW(abridged) - FOP FIP
        ("xmm_control_status", "16s"),  # FDP MXCSR MXCSR_MASK
        ("st", "128s"),  # ST0-ST7 / MM0-MM7, 16 bytes each
        ("xmm", "256s"),  # XMM0-XMM15
        ("_reserved", "96s"),
    ),
)
assert FXSAVE.size == 512


@dataclass(frozen=True)
class CpuState:
    """One VP's registers as plain ints (``values``) and its FXSAVE image, if saved."""

    vp: int
    architecture: VIRTUAL_PROCESSOR_ARCH
    values: Dict[str, int]
    fxsave: Optional[bytes]
    dtb: Optional[int]

    @property
    def mxcsr(self) -> int:
        if self.fxsave is None:
            return 0
        return int.from_bytes(self.fxsave[24:28], "little")


def _u128(value: int) -> bytes:
    return (value & ((1 << 128) - 1)).to_bytes(16, "little")


def _fxsave(registers: object) -> Optional[bytes]:
    try:
        st = b"".join(_u128(getattr(registers, f"fp_mmx{i}")) for i in range(8))
        xmm = b"".join(_u128(getattr(registers, f"xmm{i}")) for i in range(16))
        return FXSAVE.pack(
            control_status=_u128(registers.fp_control_status),  # type: ignore[attr-defined]
            xmm_control_status=_u128(registers.xmm_control_status),  # type: ignore[attr-defined]
            st=st,
            xmm=xmm,
        )
    except VmrsError:
        return None


def cpu_state(dump: SavedStateDump, vp: int) -> CpuState:
    """The state of ``vp`` (its active VTL); raises VmrsError when its registers are absent."""
    registers = dump.registers(vp)
    values: Dict[str, int] = {name: int(getattr(registers, name)) for name in GENERAL}
    for name in SEGMENTS:
        segment = getattr(registers, name)
        values[f"{name}_selector"] = segment.selector
        values[f"{name}_base"] = segment.base
    for name in CONTROL + DEBUG:
        try:
            values[name] = int(getattr(registers, name))
        except VmrsError:
            values[name] = 0
    return CpuState(
        vp=vp,
        architecture=dump.architecture(vp),
        values=values,
        fxsave=_fxsave(registers),
        dtb=registers.dtb,
    )


def choose_vp(dump: SavedStateDump, vp: Optional[int]) -> int:
    """The asked VP (checked), else the lowest-numbered one in kernel mode, else the
    lowest. A VP saved in user mode of a Windows guest with KVA shadowing runs on the
    user CR3, which does not map the kernel: a debugger given it finds no kernel."""
    indices = dump.vp_indices
    if not indices:
        raise ExportError("the saved state has no virtual processor")
    if vp is None:
        for index in indices:
            try:
                if dump.in_kernel_space(index):
                    return index
            except VmrsError:
                continue  # its registers are unreadable: not a candidate
        return indices[0]
    if vp not in indices:
        raise ExportError(f"no virtual processor {vp} (the file has {indices})")
    return vp
