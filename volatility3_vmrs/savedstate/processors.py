"""Processor state: the ``partition_state`` blob -> virtual processors and register sets.

The blob (``/savedstate/savedVM/partition_state``, format sections 11-12) is a small
envelope followed by a stream of chunks ``{u32 id, u32 data_length, 8 zero bytes, data}``
without padding. :meth:`PartitionState.parse` walks it once; every length, count and
offset is checked against the blob before use, so hostile input ends in a
:class:`~.errors.PartitionStateError` (with the offset *inside the blob* and the key path),
never in IndexError/struct.error, a hang or a huge allocation.

Leniency policy (decided here, not by the format):

* Structural damage is an error: truncated envelope, a chunk header or chunk data running
  past the end, a framing/marker chunk (Prolog, OsId, PartitionVtl, VpIndices, Vp, VpVtl,
  VpVtlControlPage) shorter than its layout, a VTL number above 15, no Vp marker at all.
* Semantic oddities are warnings of kind ``partition-state`` (their ``detail`` names the
  case) reported to the dump's :class:`~.diagnostics.Diagnostics` and kept on
  ``PartitionState.diagnostics``: unknown chunk ids (skipped by length), a register chunk
  shorter than its layout (the set lists it in ``incomplete`` and reading one of its
  registers raises :class:`~.errors.InvalidVpStateError`), duplicate chunks (last wins),
  register chunks outside any Vp section, a missing Epilog, a blob shorter than its
  ``total_size``, a VpIndices bitmap that disagrees with the Vp markers.
* Chunks *longer* than their layout are accepted and their prefix decoded (room for
  growth in later hypervisor versions).

UNVERIFIED (no real Hyper-V saved state has been seen by the authors; see format 11.5):

* register chunks before any VpVtl marker belong to VTL 0;
* active VTL: the last VpVtlControlPage with ``vtl_is_runnable != 0`` names it; the page
  belongs to the VTL section it sits in, and to VTL 0 when it comes before the VTL markers
  (openvmm's order); without such a page the active VTL is 0;
* OsId chunks are attributed to the PartitionVtl section they sit in (VTL 0 before any
  PartitionVtl marker);
* virtual-MSR chunk (0x3000B000) word 1 is the kernel GS base (one third-party source);
* architecture and paging mode come from EFER/CR0/CR4 with the standard x86 rules, and
  from the Prolog vendor for ARM64; ARM64 register chunks are kept raw, not decoded;
* legacy ``REGISTER_ID_X64/X86`` reads of ``Seg*``, ``Tr``, ``Ldtr`` return the selector
  (one public consumer of the 1803 API stores ``SegCs`` as the ELF ``cs`` selector);
  ``REGISTER_ID_X86`` reads of general-purpose registers, EIP and EFLAGS return the low 32
  bits; every other legacy read returns the full 64-bit value or half.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NoReturn, Optional, Tuple, Union

from . import paths
from .diagnostics import Diagnostic, Diagnostics, Kind
from .errors import (
    VM_SAVED_STATE_DUMP_E_NO_VP_FOUND_IN_PARTITION_STATE,
    InvalidArgumentError,
    InvalidVpStateError,
    NoVpFoundError,
    PartitionStateError,
    VpVtlNotEnabledError,
)
from .paging import FRAME_MASK_64
from .structs import Layout
from .types import (
    PAGING_MODE,
    REGISTER_ID,
    REGISTER_ID_X64,
    REGISTER_ID_X86,
    VIRTUAL_PROCESSOR_ARCH,
    VIRTUAL_PROCESSOR_VENDOR,
    GuestOsInfo,
    RegisterValue,
    Segment,
    Table,
)

MAX_VTL = 15  # the hypervisor's VTL field is 4 bits wide


class PartitionStateNoVpError(PartitionStateError, NoVpFoundError):
    """The blob holds no Vp marker: both a format error and the DLL's 0xC0370502."""

    hresult = VM_SAVED_STATE_DUMP_E_NO_VP_FOUND_IN_PARTITION_STATE


class ChunkId(enum.IntEnum):
    """Chunk ids of the save/restore stream (format 11.3); the top nibble is the class."""

    PROLOG = 0x00000000
    EPILOG = 0xF0000000
    PROCESSOR_CPUID_DATA = 0x20000000
    OS_ID = 0x20001000
    HYPERCALL_PAGE = 0x20002000
    REFERENCE_TSC = 0x20003000
    PARTITION_VTL = 0x20008000
    PARTITION_VSM_CONFIG = 0x2000A000
    VP_INDICES = 0x30000000
    VP = 0x30001000
    VP_CORE = 0x30003000
    GP_REGISTERS = 0x30005000
    FP_REGISTERS = 0x30006000
    CONTROL_REGISTERS = 0x30007000
    DEBUG_REGISTERS = 0x30008000
    SEGMENT_REGISTERS = 0x30009000
    TABLE_REGISTERS = 0x3000A000
    VIRTUAL_MSRS = 0x3000B000
    PAT_MTRRS = 0x3000C000
    XSAVE_CONTROL = 0x3000D000
    XSAVE_AVX = 0x3000E000
    XSAVE_STATE = 0x3000E100
    SYNIC_APIC = 0x3000F000
    SYNIC_MSRS = 0x30010000
    SYNTHETIC_TIMERS = 0x30011000
    VP_VTL_CONTROL_PAGE = 0x30018000
    VP_VTL = 0x3001A000
    VP_NESTED_BASE = 0x30021000
    VP_NESTED_CURRENT_VMCS = 0x30023000


class HvProcessorVendor(enum.IntEnum):
    """``HV_PROCESSOR_VENDOR`` as stored in the Prolog (not the DLL's numbering)."""

    AMD = 0
    INTEL = 1
    HYGON = 2
    ARM = 0x10


_VENDOR_TO_DLL = {
    HvProcessorVendor.AMD: VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Amd,
    HvProcessorVendor.INTEL: VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Intel,
    HvProcessorVendor.HYGON: VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Hygon,
    HvProcessorVendor.ARM: VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Arm,
}

# --- on-disk layouts (data part of each chunk, i.e. after the 16-byte header) ---------
DESCRIPTOR = Layout(
    "partition_state_descriptor",
    (("descriptor_size", "Q"), ("header_size", "Q"), ("total_size", "Q")),
)
DESCRIPTOR_PADDING = 16  # the stream starts at header_size + 16
CHUNK_HEADER = Layout(
    "partition_state_chunk_header",
    (("chunk_id", "I"), ("data_length", "I"), ("_reserved", "8s")),
)
assert DESCRIPTOR.size == 24 and CHUNK_HEADER.size == 16

PROLOG_TAG = 0x50546475
# Only the head of the Prolog carries information; the rest is reserved.
PROLOG_HEAD = Layout(
    "prolog_chunk",
    (("tag", "I"), ("is_summary_save_state", "B"), ("_pad", "3s"), ("vendor", "I")),
)
PROLOG_RESERVED_SIZE = 4052  # PROLOG_HEAD + reserved = data_length 4064
OS_ID = Layout("os_id_chunk", (("os_id", "Q"), ("_pad", "8s")))
VTL_MARKER = Layout("vtl_marker_chunk", (("vtl", "B"), ("_pad", "15s")))
VP_MARKER = Layout("vp_marker_chunk", (("vp_index", "I"), ("_pad", "12s")))
VP_INDICES_HEAD = Layout("vp_indices_chunk", (("boot_vp_index", "I"),))  # then the bitmap
VTL_CONTROL_PAGE = Layout(
    "vp_vtl_control_page_chunk",
    (("contents", "24s"), ("vtl_is_runnable", "B"), ("_pad", "7s")),
)

GP_NAMES = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "rip", "rflags",
)  # fmt: skip
CONTROL_NAMES = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")
DEBUG_NAMES = ("dr0", "dr1", "dr2", "dr3", "dr6", "dr7")
SEGMENT_NAMES = ("es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr")
TABLE_NAMES = ("idtr", "gdtr")
XMM_NAMES = tuple(f"xmm{i}" for i in range(16))
FP_MMX_NAMES = tuple(f"fp_mmx{i}" for i in range(8))
# x87 ST0-ST7 / MMX0-7 hold the 80-bit value in the low bytes of each 16-byte slot;
# fp_control_status is FXSAVE bytes 0-15 (FCW FSW FTW FOP FIP), xmm_control_status bytes
# 16-31 (FDP MXCSR MXCSR_MASK).
FP_NAMES = (*XMM_NAMES, *FP_MMX_NAMES, "fp_control_status", "xmm_control_status")
VIRTUAL_MSR_WORDS = 12

GP_REGISTERS = Layout("gp_registers_chunk", tuple((n, "Q") for n in GP_NAMES))
CONTROL_REGISTERS = Layout("control_registers_chunk", tuple((n, "Q") for n in CONTROL_NAMES))
DEBUG_REGISTERS = Layout("debug_registers_chunk", tuple((n, "Q") for n in DEBUG_NAMES))
# 128-bit registers as 16 raw bytes (little-endian), struct has no 128-bit code.
FP_REGISTERS = Layout("fp_registers_chunk", tuple((n, "16s") for n in FP_NAMES))
# Eight HvX64SegmentRegister records {u64 base, u32 limit, u16 selector, u16 attributes},
# flattened as <seg>_<part>; then the CPL byte, which older writers may lack.
SEGMENT_PARTS = (("base", "Q"), ("limit", "I"), ("selector", "H"), ("attributes", "H"))
SEGMENT_REGISTERS = Layout(
    "segment_registers_chunk",
    tuple((f"{s}_{p}", c) for s in SEGMENT_NAMES for p, c in SEGMENT_PARTS),
)
SEGMENT_CPL = Layout("segment_registers_chunk_cpl", (("cpl", "B"), ("_pad", "15s")))
# HvX64TableRegister: 3 x u16 pad, u16 limit, u64 base.
TABLE_REGISTERS = Layout(
    "table_registers_chunk",
    # Padding names start with "_" so Layout.pack zero-fills them.
    tuple(
        (name, c)
        for t in TABLE_NAMES
        for name, c in ((f"_{t}_pad", "6s"), (f"{t}_limit", "H"), (f"{t}_base", "Q"))
    ),
)
XSAVE_CONTROL = Layout("xsave_control_chunk", (("xcr0", "Q"), ("_reserved", "56s")))
VIRTUAL_MSRS = Layout(
    "virtual_msrs_chunk", tuple((f"word{i}", "Q") for i in range(VIRTUAL_MSR_WORDS))
)
assert GP_REGISTERS.size == 144 and FP_REGISTERS.size == 416
assert CONTROL_REGISTERS.size == DEBUG_REGISTERS.size == 48
assert SEGMENT_REGISTERS.size + SEGMENT_CPL.size == 144 and TABLE_REGISTERS.size == 32
assert XSAVE_CONTROL.size == 64 and VIRTUAL_MSRS.size == 96 and VTL_CONTROL_PAGE.size == 32

# Register chunk id -> (kind, layout) for x64 partitions.
REGISTER_CHUNKS: Dict[int, Tuple[str, Layout]] = {
    ChunkId.GP_REGISTERS: ("gp", GP_REGISTERS),
    ChunkId.FP_REGISTERS: ("fp", FP_REGISTERS),
    ChunkId.CONTROL_REGISTERS: ("control", CONTROL_REGISTERS),
    ChunkId.DEBUG_REGISTERS: ("debug", DEBUG_REGISTERS),
    ChunkId.SEGMENT_REGISTERS: ("segment", SEGMENT_REGISTERS),
    ChunkId.TABLE_REGISTERS: ("table", TABLE_REGISTERS),
    ChunkId.XSAVE_CONTROL: ("xsave_control", XSAVE_CONTROL),
    ChunkId.VIRTUAL_MSRS: ("virtual_msrs", VIRTUAL_MSRS),
}

# Paging-relevant bits.
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12
EFER_LMA = 1 << 10
MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class RawChunk:
    """A chunk kept as bytes: ``offset`` is where its header starts inside the blob."""

    chunk_id: int
    offset: int
    data: bytes

    @property
    def name(self) -> str:
        try:
            return ChunkId(self.chunk_id).name
        except ValueError:
            return f"unknown {self.chunk_id:#010x}"


@dataclass(frozen=True)
class VtlControlPage:
    """A VpVtlControlPage chunk; ``vtl`` is the VTL section it was found in."""

    offset: int
    vtl: int
    contents: bytes
    vtl_is_runnable: bool
    before_vtl_markers: bool


# --- register sets ---------------------------------------------------------------------
class _Reg:
    """Descriptor: one register of a RegisterSet, read from the chunk that holds it.

    Reading a register whose chunk is absent (or short) raises InvalidVpStateError
    rather than returning a made-up zero: a zero CR3 would silently mislead a walk.
    """

    def __init__(self, kind: str, convert: Callable[[Any], Any] = int) -> None:
        self.kind = kind
        self.convert = convert
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Optional[RegisterSet], objtype: Optional[type] = None) -> Any:
        if obj is None:
            return self
        return self.convert(obj._value(self.kind, self.name))


def _u128(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


class _SegReg:
    """Descriptor assembling a :class:`Segment` from the flattened record fields."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Optional[RegisterSet], objtype: Optional[type] = None) -> Any:
        if obj is None:
            return self
        n = self.name
        return Segment(
            base=obj._value("segment", f"{n}_base"),
            limit=obj._value("segment", f"{n}_limit"),
            selector=obj._value("segment", f"{n}_selector"),
            attributes=obj._value("segment", f"{n}_attributes"),
        )


class _TableReg:
    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Optional[RegisterSet], objtype: Optional[type] = None) -> Any:
        if obj is None:
            return self
        return Table(
            limit=obj._value("table", f"{self.name}_limit"),
            base=obj._value("table", f"{self.name}_base"),
        )


def _with_register_attributes(cls: type) -> type:
    """Give the class one descriptor per register, named by the chunk layouts' tuples."""
    descriptors: Dict[str, Any] = {
        **{name: _Reg("gp") for name in GP_NAMES},
        **{name: _Reg("fp", _u128) for name in FP_NAMES},
        **{name: _Reg("control") for name in CONTROL_NAMES},
        **{name: _Reg("debug") for name in DEBUG_NAMES},
        **{name: _SegReg() for name in SEGMENT_NAMES},
        **{name: _TableReg() for name in TABLE_NAMES},
        **{n: _Reg("xsave_control") for n in XSAVE_CONTROL.field_names if not n.startswith("_")},
    }
    for name, descriptor in descriptors.items():
        descriptor.__set_name__(cls, name)
        setattr(cls, name, descriptor)
    return cls


@_with_register_attributes
class RegisterSet:
    """The registers of one VP in one VTL, as decoded from its register chunks.

    Each register is a named attribute (``rax`` ... ``xcr0``, one per name of the chunk
    layouts above); 128-bit registers are ints, segments :class:`Segment`, descriptor
    tables :class:`Table`. ``chunks`` lists the register chunks present, ``incomplete``
    those that were too short to decode.
    """

    def __init__(self, vp_index: int, vtl: int, *, is_arm: bool = False) -> None:
        self.vp_index = vp_index
        self.vtl = vtl
        self.is_arm = is_arm
        self._decoded: Dict[str, Dict[str, Any]] = {}
        self.raw_chunks: Dict[str, RawChunk] = {}
        self.incomplete: Dict[str, RawChunk] = {}

    # -- filled by the parser
    def _store(self, kind: str, values: Dict[str, Any], raw: RawChunk) -> None:
        self._decoded[kind] = values
        self.raw_chunks[kind] = raw
        self.incomplete.pop(kind, None)

    def _store_short(self, kind: str, raw: RawChunk) -> None:
        self._decoded.pop(kind, None)
        self.raw_chunks[kind] = raw
        self.incomplete[kind] = raw

    @property
    def chunks(self) -> Tuple[str, ...]:
        return tuple(self._decoded)

    def _value(self, kind: str, name: str) -> Any:
        values = self._decoded.get(kind)
        if values is None:
            where = f"VP {self.vp_index} VTL {self.vtl}"
            if self.is_arm:
                why = "ARM64 register chunks are not decoded"
            elif kind in self.incomplete:
                why = f"its {kind} register chunk is too short"
            else:
                why = f"it has no {kind} register chunk"
            raise InvalidVpStateError(f"{where}: cannot read {name}: {why}")
        return values[name]

    # -- derived state
    @property
    def cpl(self) -> int:
        """The CPL byte of the segment chunk; CS.selector & 3 when the chunk lacks it."""
        values = self._decoded.get("segment")
        if values is not None and values.get("cpl") is not None:
            return int(values["cpl"])
        return self.cs.selector & 3

    @property
    def in_kernel_space(self) -> bool:
        return self.cpl == 0

    @property
    def kernel_gs_base(self) -> int:
        """Word 1 of the virtual-MSR chunk (UNVERIFIED, one third-party source)."""
        return int(self._value("virtual_msrs", "word1"))

    @property
    def virtual_msr_words(self) -> Tuple[int, ...]:
        return tuple(self._value("virtual_msrs", f"word{i}") for i in range(VIRTUAL_MSR_WORDS))

    @property
    def architecture(self) -> VIRTUAL_PROCESSOR_ARCH:
        if self.is_arm:
            return VIRTUAL_PROCESSOR_ARCH.Arch_Armv8
        if self.efer & EFER_LMA:
            return VIRTUAL_PROCESSOR_ARCH.Arch_x64
        return VIRTUAL_PROCESSOR_ARCH.Arch_x86

    @property
    def paging_mode(self) -> PAGING_MODE:
        if self.is_arm:
            return PAGING_MODE.Paging_Armv8
        if not self.cr0 & CR0_PG:
            return PAGING_MODE.Paging_NonPaged
        if self.efer & EFER_LMA:
            return PAGING_MODE.Paging_Long
        if self.cr4 & CR4_PAE:
            return PAGING_MODE.Paging_Pae
        return PAGING_MODE.Paging_32Bit

    @property
    def la57(self) -> bool:
        """CR4.LA57: 5-level paging (Volatility 3 has no 5-level layer)."""
        return not self.is_arm and bool(self.cr4 & CR4_LA57)

    @property
    def dtb(self) -> Optional[int]:
        """The top paging structure's GPA from CR3, or None when paging is off / ARM64.

        Long mode: bits 51:12 (PCID or PWT/PCD in the low 12 bits, bit 63 "no flush"
        masked). PAE: bits 31:5 (32-byte aligned PDPT). 32-bit: bits 31:12.
        """
        mode = self.paging_mode
        if mode == PAGING_MODE.Paging_Long:
            return self.cr3 & FRAME_MASK_64
        if mode == PAGING_MODE.Paging_Pae:
            return self.cr3 & 0xFFFF_FFE0
        if mode == PAGING_MODE.Paging_32Bit:
            return self.cr3 & 0xFFFF_F000
        return None

    # -- the DLL's GetRegisterValue
    def get(self, register_id: int) -> Union[int, RegisterValue]:
        """Read a register by id, like ``GetRegisterValue``.

        ``REGISTER_ID_X64`` / ``REGISTER_ID_X86`` members (the 1803 API) give an int: a
        64-bit half of 128-bit registers, the base, limit or selector part of segment
        and table registers. ``REGISTER_ID`` members and plain ints (the current API)
        give a :class:`RegisterValue`. Sentinels, ARM64 ids and unknown numbers raise
        InvalidArgumentError.
        """
        if isinstance(register_id, (REGISTER_ID_X64, REGISTER_ID_X86)):
            table = _LEGACY_X64 if isinstance(register_id, REGISTER_ID_X64) else _LEGACY_X86
            slot = table.get(register_id)
            if slot is None:
                raise InvalidArgumentError(f"{register_id.name} is a sentinel, not a register")
            return _legacy_part(getattr(self, slot[0]), slot[1])
        try:
            rid = REGISTER_ID(int(register_id))
        except ValueError:
            raise InvalidArgumentError(f"unknown register id {register_id!r}") from None
        attr_name = _CURRENT_X64.get(rid)
        if attr_name is None:
            if rid.name.startswith("ARM64_") and rid != REGISTER_ID.ARM64_RegisterMax:
                raise InvalidArgumentError(f"{rid.name}: ARM64 registers are not decoded")
            raise InvalidArgumentError(f"{rid.name} is a sentinel, not a register")
        value = getattr(self, attr_name)
        if isinstance(value, Segment):
            return RegisterValue.from_segment(value)
        if isinstance(value, Table):
            return RegisterValue.from_table(value)
        return RegisterValue.from_int(value)


def _legacy_part(value: Any, part: str) -> int:
    if part == "":
        return int(value)
    if part == "low":
        return value & 0xFFFF_FFFF_FFFF_FFFF
    if part == "high":
        return value >> 64
    if part == "low32":
        return value & MASK32
    return int(getattr(value, part))  # base / limit / selector of a Segment or Table


def _legacy_table(prefix: str, gp: Tuple[str, ...], gp_part: str) -> Dict[Any, Tuple[str, str]]:
    enum_type = REGISTER_ID_X64 if prefix == "X64" else REGISTER_ID_X86
    parts: List[Tuple[str, str]] = [(n, gp_part) for n in gp]
    for i in range(16):
        parts += [(f"xmm{i}", "low"), (f"xmm{i}", "high")]
    parts += [
        ("xmm_control_status", "low"),
        ("xmm_control_status", "high"),
        ("fp_control_status", "low"),
        ("fp_control_status", "high"),
    ]
    parts += [(n, "") for n in CONTROL_NAMES + DEBUG_NAMES]
    parts += [("gs", "base"), ("fs", "base")]
    parts += [(n, "selector") for n in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldtr")]
    parts += [("idtr", "base"), ("idtr", "limit"), ("gdtr", "base"), ("gdtr", "limit")]
    members = list(enum_type)  # type: ignore[var-annotated]
    # The last member is the Count sentinel; everything else maps one-to-one.
    assert len(parts) == len(members) - 1
    return dict(zip(members[:-1], parts))


_X86_GP = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "rip", "rflags")
_LEGACY_X64 = _legacy_table("X64", GP_NAMES, "")
_LEGACY_X86 = _legacy_table("X86", _X86_GP, "low32")
_CURRENT_X64: Dict[Any, str] = dict(
    zip(
        list(REGISTER_ID)[: REGISTER_ID.X64_RegisterMax],  # type: ignore[attr-defined]
        GP_NAMES + FP_NAMES + CONTROL_NAMES + DEBUG_NAMES + SEGMENT_NAMES + TABLE_NAMES,
    )
)
assert len(_CURRENT_X64) == 66


# --- virtual processors ----------------------------------------------------------------
class VirtualProcessor:
    """One VP section of the stream: its per-VTL register sets and VTL bookkeeping."""

    def __init__(self, index: int, offset: int, *, is_arm: bool = False) -> None:
        self.index = index
        self.offset = offset  # of its (first) Vp marker inside the blob
        self.is_arm = is_arm
        self.vtls: Dict[int, RegisterSet] = {}
        self.vtl_markers = 0  # bitmask of VpVtl markers seen
        self.control_pages: List[VtlControlPage] = []
        self.other_chunks: List[RawChunk] = []

    def register_set(self, vtl: int) -> RegisterSet:
        """The set for ``vtl``, created on first use (parser side)."""
        regs = self.vtls.get(vtl)
        if regs is None:
            regs = self.vtls[vtl] = RegisterSet(self.index, vtl, is_arm=self.is_arm)
        return regs

    @property
    def enabled_vtls(self) -> int:
        """Bitmask of VTLs with a VpVtl marker or register state; 0b1 when none."""
        mask = self.vtl_markers
        for vtl in self.vtls:
            mask |= 1 << vtl
        return mask or 1

    @property
    def active_vtl(self) -> int:
        """VTL the VP ran in at save time (rule UNVERIFIED, see the module docstring)."""
        active = 0
        for page in self.control_pages:
            if page.vtl_is_runnable:
                active = page.vtl
        return active

    def registers_for(self, vtl: int) -> RegisterSet:
        regs = self.vtls.get(vtl)
        if regs is None:
            raise VpVtlNotEnabledError(f"VP {self.index} has no register state for VTL {vtl}")
        return regs

    @property
    def registers(self) -> RegisterSet:
        """The register set of the active VTL."""
        return self.registers_for(self.active_vtl)

    def __repr__(self) -> str:
        return f"VirtualProcessor(index={self.index}, vtls={sorted(self.vtls)})"


# --- the blob --------------------------------------------------------------------------
@dataclass
class PartitionState:
    """The decoded partition_state blob."""

    hv_vendor: Optional[int] = None  # Prolog vendor (HV_PROCESSOR_VENDOR), None: no Prolog
    is_summary_save_state: bool = False
    guest_os_ids: Dict[int, int] = field(default_factory=dict)  # VTL -> raw OS ID
    partition_vtl_markers: int = 0
    vps: Dict[int, VirtualProcessor] = field(default_factory=dict)
    boot_vp_index: Optional[int] = None
    vp_indices_bitmap: Optional[bytes] = None
    unknown_chunks: List[RawChunk] = field(default_factory=list)
    other_chunks: List[RawChunk] = field(default_factory=list)  # known, not decoded
    diagnostics: List[Diagnostic] = field(default_factory=list)
    stream_start: int = 0
    stream_end: int = 0
    epilog_offset: Optional[int] = None

    @classmethod
    def parse(
        cls,
        blob: bytes,
        *,
        key_path: str = paths.PARTITION_STATE,
        diagnostics: Optional[Diagnostics] = None,
    ) -> PartitionState:
        """Decode the blob; oddities go to ``diagnostics`` (strict ones raise there)."""
        sink = diagnostics if diagnostics is not None else Diagnostics()
        return _Parser(bytes(blob), key_path, sink).run()

    @property
    def is_arm(self) -> bool:
        return self.hv_vendor == HvProcessorVendor.ARM

    @property
    def vendor(self) -> VIRTUAL_PROCESSOR_VENDOR:
        if self.hv_vendor is None:
            return VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Unknown
        return _VENDOR_TO_DLL.get(
            self.hv_vendor,  # type: ignore[call-overload]
            VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Unknown,
        )

    @property
    def guest_os_id(self) -> int:
        """VTL 0's guest OS ID (0 when the guest never reported one)."""
        return self.guest_os_ids.get(0, 0)

    @property
    def guest_os_info(self) -> GuestOsInfo:
        return GuestOsInfo(self.guest_os_id)

    def guest_os_info_for(self, vtl: int) -> GuestOsInfo:
        """OS ID reported in ``vtl`` (per-VTL placement UNVERIFIED); VTL 0's otherwise."""
        return GuestOsInfo(self.guest_os_ids.get(vtl, self.guest_os_id))

    @property
    def enabled_vtls(self) -> int:
        """Bitmask of PartitionVtl markers; 0b1 when there are none."""
        return self.partition_vtl_markers or 1

    @property
    def vp_count(self) -> int:
        return len(self.vps)

    @property
    def boot_vp(self) -> VirtualProcessor:
        """The VP VpIndices names as boot processor, else the lowest-numbered VP."""
        if self.boot_vp_index is not None and self.boot_vp_index in self.vps:
            return self.vps[self.boot_vp_index]
        return self.vps[min(self.vps)]

    def vp_index_present(self, index: int) -> bool:
        """Whether VpIndices marks ``index`` present (False without a VpIndices chunk)."""
        bitmap = self.vp_indices_bitmap
        if bitmap is None or index < 0 or index // 8 >= len(bitmap):
            return False
        return bool(bitmap[index // 8] >> (index % 8) & 1)


class _Parser:
    """Single pass over the chunk stream, tracking the current VP and VTL sections."""

    def __init__(self, blob: bytes, key_path: str, diagnostics: Diagnostics) -> None:
        self.blob = blob
        self.key_path = key_path
        self.diagnostics = diagnostics
        self.state = PartitionState()
        self.vp: Optional[VirtualProcessor] = None
        self.vp_vtl = 0  # current VTL inside the current VP
        self.vp_seen_vtl_marker = False
        self.partition_vtl = 0

    def error(self, message: str, offset: int, structure: str = "partition_state") -> NoReturn:
        raise PartitionStateError(
            f"{message} (offset inside the blob)",
            structure=structure,
            offset=offset,
            key_path=self.key_path,
        )

    def warn(
        self, detail: str, message: str, offset: int, structure: str = "partition_state"
    ) -> None:
        self.state.diagnostics.append(
            self.diagnostics.warn(
                Kind.PARTITION_STATE,
                structure,
                message,
                offset=offset,
                key_path=self.key_path,
                detail=detail,
            )
        )

    def unpack(self, layout: Layout, data: bytes, offset: int) -> Any:
        if len(data) < layout.size:
            self.error(
                f"{layout.name} needs {layout.size} bytes, chunk holds {len(data)}",
                offset,
                layout.name,
            )
        return layout.unpack(data)

    # -- envelope
    def run(self) -> PartitionState:
        blob, st = self.blob, self.state
        if len(blob) < DESCRIPTOR.size:
            self.error(f"envelope needs {DESCRIPTOR.size} bytes, blob has {len(blob)}", 0)
        desc = DESCRIPTOR.unpack(blob)
        if desc.header_size < DESCRIPTOR.size or desc.header_size > len(blob):
            self.error(f"implausible header_size {desc.header_size:#x}", 8, DESCRIPTOR.name)
        start = desc.header_size + DESCRIPTOR_PADDING
        if start > len(blob):
            self.error("no room for the chunk stream after the envelope", 8, DESCRIPTOR.name)
        if desc.total_size < start:
            self.error(f"total_size {desc.total_size:#x} ends before the stream", 16)
        end = min(desc.total_size, len(blob))
        if desc.total_size > len(blob):
            self.warn(
                "truncated",
                f"total_size {desc.total_size:#x} exceeds the blob ({len(blob):#x} bytes)",
                16,
                DESCRIPTOR.name,
            )
        st.stream_start, st.stream_end = start, end
        self.walk(start, end)
        if not st.vps:
            raise PartitionStateNoVpError(
                "no Vp marker in the chunk stream",
                structure="partition_state",
                offset=start,
                key_path=self.key_path,
            )
        self.cross_check()
        return st

    def walk(self, pos: int, end: int) -> None:
        blob = self.blob
        while pos < end:
            if end - pos < CHUNK_HEADER.size:
                self.error(f"chunk header cut off ({end - pos} bytes left)", pos)
            header = CHUNK_HEADER.unpack(blob, pos)
            data_start = pos + CHUNK_HEADER.size
            if header.data_length > end - data_start:
                self.error(
                    f"chunk {header.chunk_id:#010x} data_length {header.data_length:#x} runs "
                    f"past the end of the stream ({end - data_start:#x} bytes left)",
                    pos,
                )
            data = blob[data_start : data_start + header.data_length]
            if header.chunk_id == ChunkId.EPILOG:
                self.state.epilog_offset = pos
                return
            self.dispatch(RawChunk(header.chunk_id, pos, data))
            pos = data_start + header.data_length
        self.warn("missing-epilog", "the chunk stream ends without an Epilog chunk", end)

    # -- chunks
    def dispatch(self, chunk: RawChunk) -> None:
        handler = self._handlers.get(chunk.chunk_id)
        if handler is not None:
            handler(self, chunk)
        elif chunk.chunk_id in REGISTER_CHUNKS:
            self.on_register_chunk(chunk)
        elif chunk.chunk_id in _KNOWN_IDS:
            if self.vp is not None and chunk.chunk_id >> 28 == 3:
                self.vp.other_chunks.append(chunk)
            else:
                self.state.other_chunks.append(chunk)
        else:
            self.state.unknown_chunks.append(chunk)
            self.warn(
                "unknown-chunk",
                f"unknown chunk id {chunk.chunk_id:#010x} ({len(chunk.data)} bytes) skipped",
                chunk.offset,
            )

    def on_prolog(self, chunk: RawChunk) -> None:
        v = self.unpack(PROLOG_HEAD, chunk.data, chunk.offset)
        if v.tag != PROLOG_TAG:
            self.warn(
                "prolog-tag", f"Prolog tag {v.tag:#x}, expected {PROLOG_TAG:#x}", chunk.offset
            )
        if self.state.hv_vendor is not None and self.state.hv_vendor != v.vendor:
            self.warn("duplicate-chunk", "second Prolog with another vendor", chunk.offset)
        self.state.hv_vendor = v.vendor
        self.state.is_summary_save_state = bool(v.is_summary_save_state)

    def on_os_id(self, chunk: RawChunk) -> None:
        v = self.unpack(OS_ID, chunk.data, chunk.offset)
        self.state.guest_os_ids[self.partition_vtl] = v.os_id

    def read_vtl(self, chunk: RawChunk) -> int:
        vtl = self.unpack(VTL_MARKER, chunk.data, chunk.offset).vtl
        if vtl > MAX_VTL:
            self.error(f"VTL {vtl} out of range (0-{MAX_VTL})", chunk.offset, VTL_MARKER.name)
        return int(vtl)

    def on_partition_vtl(self, chunk: RawChunk) -> None:
        self.partition_vtl = self.read_vtl(chunk)
        self.state.partition_vtl_markers |= 1 << self.partition_vtl

    def on_vp_indices(self, chunk: RawChunk) -> None:
        v = self.unpack(VP_INDICES_HEAD, chunk.data, chunk.offset)
        self.state.boot_vp_index = v.boot_vp_index
        self.state.vp_indices_bitmap = chunk.data[VP_INDICES_HEAD.size :]

    def on_vp(self, chunk: RawChunk) -> None:
        index = int(self.unpack(VP_MARKER, chunk.data, chunk.offset).vp_index)
        vp = self.state.vps.get(index)
        if vp is None:
            vp = self.state.vps[index] = VirtualProcessor(
                index, chunk.offset, is_arm=self.state.is_arm
            )
        else:
            self.warn("duplicate-vp", f"second Vp marker for VP {index}; merged", chunk.offset)
        self.vp = vp
        self.vp_vtl = 0
        self.vp_seen_vtl_marker = False

    def on_vp_vtl(self, chunk: RawChunk) -> None:
        vtl = self.read_vtl(chunk)
        if self.vp is None:
            self.warn("orphan-chunk", "VpVtl marker outside any Vp section", chunk.offset)
            return
        self.vp_vtl = vtl
        self.vp_seen_vtl_marker = True
        self.vp.vtl_markers |= 1 << vtl
        self.vp.register_set(vtl)  # an announced VTL exists even without registers

    def on_control_page(self, chunk: RawChunk) -> None:
        v = self.unpack(VTL_CONTROL_PAGE, chunk.data, chunk.offset)
        if self.vp is None:
            self.warn("orphan-chunk", "VpVtlControlPage outside any Vp section", chunk.offset)
            return
        self.vp.control_pages.append(
            VtlControlPage(
                offset=chunk.offset,
                vtl=self.vp_vtl,
                contents=v.contents,
                vtl_is_runnable=bool(v.vtl_is_runnable),
                before_vtl_markers=not self.vp_seen_vtl_marker,
            )
        )

    def on_register_chunk(self, chunk: RawChunk) -> None:
        kind, layout = REGISTER_CHUNKS[chunk.chunk_id]
        if self.vp is None:
            self.warn("orphan-chunk", f"{kind} register chunk outside any Vp section", chunk.offset)
            self.state.other_chunks.append(chunk)
            return
        regs = self.vp.register_set(self.vp_vtl)
        if kind in regs.raw_chunks:
            self.warn(
                "duplicate-chunk",
                f"second {kind} register chunk for VP {self.vp.index} VTL {self.vp_vtl}; "
                "the later one wins",
                chunk.offset,
            )
        if self.state.is_arm:
            # ARM64 chunks share ids but not layouts with x64; keep them raw.
            regs.raw_chunks[kind] = chunk
            return
        if len(chunk.data) < layout.size:
            regs._store_short(kind, chunk)
            self.warn(
                "short-chunk",
                f"{kind} register chunk of VP {self.vp.index} VTL {self.vp_vtl} holds "
                f"{len(chunk.data)} bytes, layout needs {layout.size}; registers unavailable",
                chunk.offset,
                layout.name,
            )
            return
        values = layout.unpack(chunk.data)._asdict()
        if kind == "segment":
            tail = chunk.data[layout.size : layout.size + SEGMENT_CPL.size]
            values["cpl"] = SEGMENT_CPL.unpack(tail).cpl if len(tail) == SEGMENT_CPL.size else None
        regs._store(kind, values, chunk)

    _handlers: Dict[int, Callable[[_Parser, RawChunk], None]] = {
        ChunkId.PROLOG: on_prolog,
        ChunkId.OS_ID: on_os_id,
        ChunkId.PARTITION_VTL: on_partition_vtl,
        ChunkId.VP_INDICES: on_vp_indices,
        ChunkId.VP: on_vp,
        ChunkId.VP_VTL: on_vp_vtl,
        ChunkId.VP_VTL_CONTROL_PAGE: on_control_page,
    }

    def cross_check(self) -> None:
        st = self.state
        if st.hv_vendor is None:
            self.warn(
                "missing-prolog", "no Prolog chunk: vendor unknown, x64 assumed", st.stream_start
            )
        bitmap = st.vp_indices_bitmap
        if bitmap is None:
            return
        missing = [i for i in st.vps if not st.vp_index_present(i)]
        if missing or sum(bitmap.translate(_POPCOUNT)) != len(st.vps):
            self.warn(
                "vp-indices",
                f"VpIndices bitmap disagrees with the Vp markers (VPs {sorted(st.vps)})",
                st.stream_start,
            )


_KNOWN_IDS = frozenset(int(c) for c in ChunkId)
# Bits set in each byte value: counts a VpIndices bitmap without an 8x larger bin() string.
_POPCOUNT = bytes(bin(value).count("1") for value in range(256))
