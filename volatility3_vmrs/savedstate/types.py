"""The data types of Microsoft's VM Saved State Dump Provider, with the same names and values.

Enums keep the C member names and numbers of ``VmSavedStateDumpDefs.h`` (current SDK) and
of the 1803-era ``DataTypes.md`` reference page, so code ported from C/C++ reads the same;
Pythonic aliases are added where the original spelling is awkward (``Arch_Unkown``).
Numbers are listed in ``dump-provider-api.md`` section 2.

Two enums share member names but not values: the legacy ``REGISTER_ID_X64`` (128-bit
registers split into 64-bit halves; ``X64_RegisterCr3 == 56``) and the current
``REGISTER_ID`` (one id per register; ``X64_RegisterCr3 == 46``). Being ``IntEnum``s they
compare equal to plain ints, so code that must tell them apart dispatches on the type.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from .structs import Layout

__all__ = [
    "GPA_MEMORY_CHUNK",
    "GUEST_OS_MICROSOFT_IDS",
    "GUEST_OS_OPENSOURCE_IDS",
    "GUEST_OS_VENDOR",
    "PAGING_MODE",
    "REGISTER_ID",
    "REGISTER_ID_X64",
    "REGISTER_ID_X86",
    "VIRTUAL_PROCESSOR_ARCH",
    "VIRTUAL_PROCESSOR_REGISTER",
    "VIRTUAL_PROCESSOR_VENDOR",
    "GpaMemoryChunk",
    "GuestOsInfo",
    "RegisterValue",
    "Segment",
    "Table",
]

MASK64 = (1 << 64) - 1
MASK128 = (1 << 128) - 1


class PAGING_MODE(enum.IntEnum):
    Paging_Invalid = 0
    Paging_NonPaged = 1
    Paging_32Bit = 2
    Paging_Pae = 3
    Paging_Long = 4
    Paging_Armv8 = 5


class VIRTUAL_PROCESSOR_ARCH(enum.IntEnum):
    # The 1803 header and LeechCore spell it "Unkown"; the current header fixed it.
    # Both names are the same member (an enum alias).
    Arch_Unkown = 0
    Arch_Unknown = 0
    Arch_x86 = 1
    Arch_x64 = 2
    Arch_Armv8 = 3


class VIRTUAL_PROCESSOR_VENDOR(enum.IntEnum):
    # The DLL's own numbering; the hypervisor's HV_PROCESSOR_VENDOR in the file differs.
    ProcessorVendor_Unknown = 0
    ProcessorVendor_Amd = 1
    ProcessorVendor_Intel = 2
    ProcessorVendor_Hygon = 3
    ProcessorVendor_Arm = 4


class GUEST_OS_VENDOR(enum.IntEnum):
    GuestOsVendorUndefined = 0x0000
    GuestOsVendorMicrosoft = 0x0001
    GuestOsVendorHPE = 0x0002
    GuestOsVendorLANCOM = 0x0200


class GUEST_OS_MICROSOFT_IDS(enum.IntEnum):
    GuestOsMicrosoftUndefined = 0x00
    GuestOsMicrosoftMSDOS = 0x01
    GuestOsMicrosoftWindows3x = 0x02
    GuestOsMicrosoftWindows9x = 0x03
    GuestOsMicrosoftWindowsNT = 0x04
    GuestOsMicrosoftWindowsCE = 0x05


class GUEST_OS_OPENSOURCE_IDS(enum.IntEnum):
    GuestOsOpenSourceUndefined = 0x00
    GuestOsOpenSourceLinux = 0x01
    GuestOsOpenSourceFreeBSD = 0x02
    GuestOsOpenSourceXen = 0x03
    GuestOsOpenSourceIllumos = 0x04


def _positional_enum(name: str, members: list[str]) -> type[enum.IntEnum]:
    """Build an IntEnum numbered 0, 1, 2... like a C enum without initialisers.

    The register enums are long positional lists; generating them from the ordered name
    list is the only way to be sure the numbers match the C declaration order.
    """
    return enum.IntEnum(name, [(m, i) for i, m in enumerate(members)])  # type: ignore[return-value]


_X64_GP = [
    "Rax", "Rcx", "Rdx", "Rbx", "Rsp", "Rbp", "Rsi", "Rdi",
    "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15",
    "Rip", "RFlags",
]  # fmt: skip
_X86_GP = ["Eax", "Ecx", "Edx", "Ebx", "Esp", "Ebp", "Esi", "Edi", "Eip", "EFlags"]
_LEGACY_FP = [f"{half}Xmm{i}" for i in range(16) for half in ("Low", "High")] + [
    "LowXmmControlStatus",
    "HighXmmControlStatus",
    "LowFpControlStatus",
    "HighFpControlStatus",
]
_CONTROL = ["Cr0", "Cr2", "Cr3", "Cr4", "Cr8", "Efer"]
_DEBUG = ["Dr0", "Dr1", "Dr2", "Dr3", "Dr6", "Dr7"]
_LEGACY_SEGMENT = [
    "BaseGs", "BaseFs", "SegCs", "SegDs", "SegEs", "SegFs", "SegGs", "SegSs", "Tr", "Ldtr",
]  # fmt: skip
_LEGACY_TABLE = ["BaseIdtr", "LimitIdtr", "BaseGdtr", "LimitGdtr"]


def _legacy_members(prefix: str, gp: list[str]) -> list[str]:
    body = gp + _LEGACY_FP + _CONTROL + _DEBUG + _LEGACY_SEGMENT + _LEGACY_TABLE + ["Count"]
    return [f"{prefix}_Register{n}" for n in body]


# 1803-era enums (MicrosoftDocs vm-dump-provider/reference/DataTypes.md).
REGISTER_ID_X86 = _positional_enum("REGISTER_ID_X86", _legacy_members("X86", _X86_GP))
REGISTER_ID_X64 = _positional_enum("REGISTER_ID_X64", _legacy_members("X64", _X64_GP))

_SEGMENTS = ["Es", "Cs", "Ss", "Ds", "Fs", "Gs", "Ldtr", "Tr"]
_ARM64_CONTROL = [
    "EsrEl1", "SpsrEl1", "FarEl1", "ParEl1", "ElrEl1", "Ttbr0El1", "Ttbr1El1", "VbarEl1",
    "SctlrEl1", "ActlrEl1", "TcrEl1", "MairEl1", "AmairEl1", "TpidrEl0", "TpidrroEl0",
    "TpidrEl1", "ContextIdrEl1", "CpacrEl1", "CsselrEl1", "CntkctlEl1", "CntvCvalEl0",
    "CntvCtlEl0",
]  # fmt: skip
_CURRENT = (
    [f"X64_Register{n}" for n in _X64_GP]
    + [f"X64_RegisterXmm{i}" for i in range(16)]
    + [f"X64_RegisterFpMmx{i}" for i in range(8)]
    + ["X64_RegisterFpControlStatus", "X64_RegisterXmmControlStatus"]
    + [f"X64_Register{n}" for n in _CONTROL + _DEBUG + _SEGMENTS]
    + ["X64_RegisterIdtr", "X64_RegisterGdtr", "X64_RegisterMax"]
    + [f"ARM64_RegisterX{i}" for i in range(29)]
    + [f"ARM64_Register{n}" for n in ("XFp", "XLr", "Pc", "SpEl0", "SpEl1", "Cpsr")]
    + [f"ARM64_RegisterQ{i}" for i in range(32)]
    + ["ARM64_RegisterFpStatus", "ARM64_RegisterFpControl"]
    + [f"ARM64_Register{n}" for n in _ARM64_CONTROL]
    + ["ARM64_RegisterMax"]
)
# Current SDK enum (VmSavedStateDumpDefs.h): one id per register, 128-bit values whole.
REGISTER_ID = _positional_enum("REGISTER_ID", _CURRENT)


@dataclass(frozen=True)
class GPA_MEMORY_CHUNK:
    """A run of guest-physical pages: ``GuestPhysicalStartPageIndex``, ``PageCount``."""

    GuestPhysicalStartPageIndex: int
    PageCount: int

    @property
    def start_page(self) -> int:
        return self.GuestPhysicalStartPageIndex

    @property
    def page_count(self) -> int:
        return self.PageCount


GpaMemoryChunk = GPA_MEMORY_CHUNK


@dataclass(frozen=True)
class VIRTUAL_PROCESSOR_REGISTER:
    """The 1803-era register struct: the caller sets architecture and id, gets a u64.

    The C struct holds the id in a union of ``RegisterId_x86`` / ``RegisterId_x64`` /
    ``RegisterId``; here one ``RegisterId`` field holds the enum member (or a plain int).
    """

    Architecture: VIRTUAL_PROCESSOR_ARCH
    RegisterValue: int
    RegisterId: int


# --- the current VIRTUAL_PROCESSOR_REGISTER union ---------------------------------------
# In memory, not on disk: the 16 bytes the DLL hands back. Declared with Layout so the
# union's views are written down once, like the file structures.
UNION_SEGMENT = Layout(
    "register_union_segment",
    (("Base", "Q"), ("Limit", "I"), ("Selector", "H"), ("Attributes", "H")),
)
# C alignment puts the u64 Base of {UINT16 Limit; UINT64 Base} at offset 8.
UNION_TABLE = Layout("register_union_table", (("Limit", "H"), ("_pad", "6s"), ("Base", "Q")))
UNION_FP_CONTROL_STATUS = Layout(
    "register_union_fp_control_status",
    (
        ("FpControl", "H"),
        ("FpStatus", "H"),
        ("FpTag", "B"),
        ("Reserved", "B"),
        ("LastFpOp", "H"),
        ("LastFpRip", "Q"),
    ),
)
UNION_XMM_CONTROL_STATUS = Layout(
    "register_union_xmm_control_status",
    (("LastFpRdp", "Q"), ("XmmStatusControl", "I"), ("XmmStatusControlMask", "I")),
)
assert UNION_SEGMENT.size == UNION_TABLE.size == UNION_FP_CONTROL_STATUS.size == 16
assert UNION_XMM_CONTROL_STATUS.size == 16


@dataclass(frozen=True)
class Segment:
    """An x64 segment register with its hidden part (``HvX64SegmentRegister``)."""

    base: int
    limit: int
    selector: int
    attributes: int

    # Attribute bits as in the SDK union: type:4, S:1, DPL:2, P:1, reserved:4, AVL, L, D/B, G.
    @property
    def segment_type(self) -> int:
        return self.attributes & 0xF

    @property
    def non_system(self) -> bool:
        return bool(self.attributes >> 4 & 1)

    @property
    def dpl(self) -> int:
        return self.attributes >> 5 & 3

    @property
    def present(self) -> bool:
        return bool(self.attributes >> 7 & 1)

    @property
    def available(self) -> bool:
        return bool(self.attributes >> 12 & 1)

    @property
    def long(self) -> bool:
        return bool(self.attributes >> 13 & 1)

    @property
    def default(self) -> bool:
        return bool(self.attributes >> 14 & 1)

    @property
    def granularity(self) -> bool:
        return bool(self.attributes >> 15 & 1)

    @property
    def rpl(self) -> int:
        return self.selector & 3


@dataclass(frozen=True)
class Table:
    """A descriptor-table register (IDTR, GDTR)."""

    limit: int
    base: int


@dataclass(frozen=True)
class RegisterValue:
    """The current SDK's ``VIRTUAL_PROCESSOR_REGISTER`` union, kept as its 16 bytes.

    Every view reads the same bytes, exactly as the C union does, so a value built from a
    segment can still be read as ``reg64`` (its base) like a C caller would.
    """

    raw: bytes = bytes(16)

    def __post_init__(self) -> None:
        if len(self.raw) != 16:
            raise ValueError("a register value is 16 bytes")

    @classmethod
    def from_int(cls, value: int) -> RegisterValue:
        return cls((value & MASK128).to_bytes(16, "little"))

    @classmethod
    def from_segment(cls, seg: Segment) -> RegisterValue:
        return cls(
            UNION_SEGMENT.pack(
                Base=seg.base, Limit=seg.limit, Selector=seg.selector, Attributes=seg.attributes
            )
        )

    @classmethod
    def from_table(cls, table: Table) -> RegisterValue:
        return cls(UNION_TABLE.pack(Limit=table.limit, Base=table.base))

    @property
    def reg128(self) -> int:
        return int.from_bytes(self.raw, "little")

    @property
    def reg64(self) -> int:
        return self.reg128 & MASK64

    @property
    def reg32(self) -> int:
        return self.reg128 & 0xFFFFFFFF

    @property
    def reg16(self) -> int:
        return self.reg128 & 0xFFFF

    @property
    def reg8(self) -> int:
        return self.raw[0]

    @property
    def low64(self) -> int:
        return self.reg64

    @property
    def high64(self) -> int:
        return self.reg128 >> 64

    @property
    def segment(self) -> Segment:
        v = UNION_SEGMENT.unpack(self.raw)
        return Segment(v.Base, v.Limit, v.Selector, v.Attributes)

    @property
    def table(self) -> Table:
        v = UNION_TABLE.unpack(self.raw)
        return Table(v.Limit, v.Base)

    @property
    def fp_control_status(self):  # -> namedtuple of UNION_FP_CONTROL_STATUS fields
        return UNION_FP_CONTROL_STATUS.unpack(self.raw)

    @property
    def xmm_control_status(self):  # -> namedtuple of UNION_XMM_CONTROL_STATUS fields
        return UNION_XMM_CONTROL_STATUS.unpack(self.raw)

    def __int__(self) -> int:
        return self.reg128


# --- guest OS identity (HV_X64_MSR_GUEST_OS_ID; format section 12) ----------------------
_WINDOWS_IDS = {
    GUEST_OS_MICROSOFT_IDS.GuestOsMicrosoftWindows3x: "Windows 3.x",
    GUEST_OS_MICROSOFT_IDS.GuestOsMicrosoftWindows9x: "Windows 9x",
    GUEST_OS_MICROSOFT_IDS.GuestOsMicrosoftWindowsNT: "Windows NT",
    GUEST_OS_MICROSOFT_IDS.GuestOsMicrosoftWindowsCE: "Windows CE",
}
_OPEN_SOURCE_NAMES = {
    GUEST_OS_OPENSOURCE_IDS.GuestOsOpenSourceLinux: "Linux",
    GUEST_OS_OPENSOURCE_IDS.GuestOsOpenSourceFreeBSD: "FreeBSD",
    GUEST_OS_OPENSOURCE_IDS.GuestOsOpenSourceXen: "Xen",
    GUEST_OS_OPENSOURCE_IDS.GuestOsOpenSourceIllumos: "Illumos",
}


def _enum_or_int(enum_type: type[enum.IntEnum], value: int) -> int:
    try:
        return enum_type(value)
    except ValueError:
        return value


@dataclass(frozen=True)
class GuestOsInfo:
    """``GUEST_OS_INFO``: the guest OS ID u64 with both of its bitfield views decoded.

    Bit 63 selects the view. The closed-source fields are meaningful when it is clear, the
    open-source ones when it is set; both are always computed, as in the C union.
    """

    raw: int

    @property
    def AsUINT64(self) -> int:
        return self.raw

    @property
    def is_open_source(self) -> bool:
        return bool(self.raw >> 63 & 1)

    @property
    def reported(self) -> bool:
        """False for 0: an unenlightened guest never wrote the MSR."""
        return self.raw != 0

    # ClosedSource view
    @property
    def build_number(self) -> int:
        return self.raw & 0xFFFF

    @property
    def service_version(self) -> int:
        return self.raw >> 16 & 0xFF

    @property
    def minor_version(self) -> int:
        return self.raw >> 24 & 0xFF

    @property
    def major_version(self) -> int:
        return self.raw >> 32 & 0xFF

    @property
    def closed_os_id(self) -> int:
        return _enum_or_int(GUEST_OS_MICROSOFT_IDS, self.raw >> 40 & 0xFF)

    @property
    def vendor_id(self) -> int:
        return _enum_or_int(GUEST_OS_VENDOR, self.raw >> 48 & 0xFFFF)

    # OpenSource view
    @property
    def vendor_specific1(self) -> int:
        return self.raw & 0xFFFF

    @property
    def version(self) -> int:
        return self.raw >> 16 & 0xFFFFFFFF

    @property
    def vendor_specific2(self) -> int:
        return self.raw >> 48 & 0xFF

    @property
    def open_os_id(self) -> int:
        return _enum_or_int(GUEST_OS_OPENSOURCE_IDS, self.raw >> 56 & 0x7F)

    @property
    def os_id(self) -> int:
        """The OS id of whichever view bit 63 selects."""
        return self.open_os_id if self.is_open_source else self.closed_os_id

    @property
    def linux_version(self) -> Optional[tuple[int, int, int]]:
        """(major, minor, sublevel) for Linux: LINUX_VERSION_CODE sits in ``version``."""
        if not (
            self.is_open_source
            and self.open_os_id == GUEST_OS_OPENSOURCE_IDS.GuestOsOpenSourceLinux
        ):
            return None
        code = self.version
        return (code >> 16 & 0xFFFF, code >> 8 & 0xFF, code & 0xFF)

    @property
    def os_family(self) -> str:
        """One of "Windows", "Linux", "Unknown": what a Volatility stacker needs to know."""
        if self.is_open_source:
            if self.open_os_id == GUEST_OS_OPENSOURCE_IDS.GuestOsOpenSourceLinux:
                return "Linux"
            return "Unknown"
        if self.vendor_id == GUEST_OS_VENDOR.GuestOsVendorMicrosoft and (
            self.closed_os_id in _WINDOWS_IDS
        ):
            return "Windows"
        return "Unknown"

    def describe(self) -> str:
        if not self.reported:
            return "unknown (guest never reported its OS)"
        if self.is_open_source:
            linux = self.linux_version
            if linux is not None:
                return "Linux {}.{}.{}".format(*linux)
            name = _OPEN_SOURCE_NAMES.get(self.open_os_id, f"open-source OS {self.open_os_id}")  # type: ignore[call-overload]
            return f"{name} version {self.version:#x}"
        if self.vendor_id == GUEST_OS_VENDOR.GuestOsVendorMicrosoft:
            name = _WINDOWS_IDS.get(self.closed_os_id, None)  # type: ignore[call-overload]
            if name is None:
                name = "MS-DOS" if self.closed_os_id == 1 else f"Microsoft OS {self.closed_os_id}"
        else:
            name = f"vendor {int(self.vendor_id):#x} OS {int(self.closed_os_id)}"
        text = f"{name} {self.major_version}.{self.minor_version} build {self.build_number}"
        if self.service_version:
            text += f" service version {self.service_version}"
        return text

    def __str__(self) -> str:
        return self.describe()
