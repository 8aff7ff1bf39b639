"""Windows crash-dump export: a full-memory dump (DumpType 1) with the VP's CONTEXT.

64-bit guests get a ``DUMP_HEADER64`` ("PAGE" "DU64", two header pages), 32-bit guests
a ``DUMP_HEADER32`` ("PAGE" "DUMP", one page); memory follows the header, the pages of
each physical-memory run one after the other. Offsets follow the public descriptions
that volatility3's crash layer (``crash64.json``/``crash.json``) and kdmp-parser use.

Why the full type and not the bitmap type (5): a saved state's memory is a few GPA
chunks, and the header's run table (43 runs in 64-bit, 86 in 32-bit) describes them
exactly, with no per-page bitmap to build; a guest with more chunks is refused with
a clear error (export raw, LiME or ELF then).

``DirectoryTableBase`` is the chosen VP's CR3 with the PCID / flag bits masked,
``MachineImageType`` and ``NumberProcessors`` come from the saved state, the
``ContextRecord`` from the VP's registers. ``KdDebuggerDataBlock``,
``PsActiveProcessHead`` and ``PsLoadedModuleList`` are the addresses given in
:class:`~.kdbg.KernelAddresses`, else zero: WinDbg needs them, kdmp-parser and
Volatility do not (Volatility finds the kernel by scanning, from the DTB). When the
addresses of ``KdpDataBlockEncoded``, ``KiWaitNever`` and ``KiWaitAlways`` are given
too, an encoded KDBG (Windows 8 and later) is written decoded, as in a dump the kernel
writes (:mod:`.kdbg`); every other byte of the memory is the saved one.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from volatility3_vmrs.savedstate import SavedStateDump
from volatility3_vmrs.savedstate.structs import Layout
from volatility3_vmrs.savedstate.types import VIRTUAL_PROCESSOR_ARCH

from .cpu import FXSAVE, CpuState, cpu_state
from .kdbg import KernelAddresses, KernelSpace, kdbg_patches
from .writer import ExportError, MemoryRange, Output, Patch, copy_range_patched

EXTENSION = "dmp"
PAGE = 0x1000
SIGNATURE = b"PAGE"
VALID_DUMP_64 = b"DU64"
VALID_DUMP_32 = b"DUMP"
DUMP_TYPE_FULL = 1
MAJOR_VERSION_FREE = 0xF  # 0xF: free (retail) build, 0xC: checked build
IMAGE_FILE_MACHINE_AMD64 = 0x8664
IMAGE_FILE_MACHINE_I386 = 0x014C
CONTEXT_AMD64_ALL = 0x0010_001F  # CONTEXT_AMD64 | CONTROL | INTEGER | SEGMENTS | FP | DEBUG
CONTEXT_I386_ALL = 0x0001_003F  # CONTEXT_i386 | ... | EXTENDED_REGISTERS
CONTEXT_I386_NO_EXTENDED = 0x0001_001F

RUN64 = Layout("PHYSICAL_MEMORY_RUN64", (("BasePage", "Q"), ("PageCount", "Q")))
RUN32 = Layout("PHYSICAL_MEMORY_RUN32", (("BasePage", "I"), ("PageCount", "I")))
RUNS64_BYTES = 0x348 - 0x98  # from Run[0] to ContextRecord
RUNS32_BYTES = 0x320 - 0x6C
MAX_RUNS64 = RUNS64_BYTES // RUN64.size
MAX_RUNS32 = RUNS32_BYTES // RUN32.size

DUMP_HEADER64 = Layout(
    "DUMP_HEADER64",
    (
        ("Signature", "4s"),
        ("ValidDump", "4s"),
        ("MajorVersion", "I"),
        ("MinorVersion", "I"),
        ("DirectoryTableBase", "Q"),
        ("PfnDataBase", "Q"),
        ("PsLoadedModuleList", "Q"),
        ("PsActiveProcessHead", "Q"),
        ("MachineImageType", "I"),
        ("NumberProcessors", "I"),
        ("BugCheckCode", "I"),
        ("_pad0", "4s"),
        ("BugCheckCodeParameter", "32s"),
        ("VersionUser", "32s"),
        ("KdDebuggerDataBlock", "Q"),  # 0x80
        ("NumberOfRuns", "I"),  # 0x88: PhysicalMemoryBlockBuffer
        ("_pad1", "4s"),
        ("NumberOfPages", "Q"),
        ("Runs", f"{RUNS64_BYTES}s"),  # 0x98
        ("ContextRecord", "3000s"),  # 0x348
        ("Exception", "152s"),  # 0xF00
        ("DumpType", "I"),  # 0xF98
        ("_pad2", "4s"),
        ("RequiredDumpSpace", "Q"),  # 0xFA0
        ("SystemTime", "Q"),
        ("Comment", "128s"),  # 0xFB0
        ("SystemUpTime", "Q"),  # 0x1030
        ("MiniDumpFields", "I"),
        ("SecondaryDataState", "I"),
        ("ProductType", "I"),
        ("SuiteMask", "I"),
        ("WriterStatus", "I"),
        ("_unused1", "B"),
        ("KdSecondaryVersion", "B"),
        ("_unused2", "2s"),
        ("_reserved", "4016s"),  # to the end of the second header page
    ),
)
assert DUMP_HEADER64.size == 0x2000
assert DUMP_HEADER64.offset_of("ContextRecord") == 0x348
assert DUMP_HEADER64.offset_of("Comment") == 0xFB0

DUMP_HEADER32 = Layout(
    "DUMP_HEADER32",
    (
        ("Signature", "4s"),
        ("ValidDump", "4s"),
        ("MajorVersion", "I"),
        ("MinorVersion", "I"),
        ("DirectoryTableBase", "I"),
        ("PfnDataBase", "I"),
        ("PsLoadedModuleList", "I"),
        ("PsActiveProcessHead", "I"),
        ("MachineImageType", "I"),
        ("NumberProcessors", "I"),
        ("BugCheckCode", "I"),
        ("BugCheckCodeParameter", "16s"),
        ("VersionUser", "32s"),
        ("PaeEnabled", "B"),  # 0x5C
        ("KdSecondaryVersion", "B"),
        ("_version_user2", "2s"),
        ("KdDebuggerDataBlock", "I"),  # 0x60
        ("NumberOfRuns", "I"),  # 0x64: PhysicalMemoryBlockBuffer
        ("NumberOfPages", "I"),
        ("Runs", f"{RUNS32_BYTES}s"),  # 0x6C
        ("ContextRecord", "1200s"),  # 0x320
        ("Exception", "80s"),  # 0x7D0
        ("Comment", "128s"),  # 0x820
        ("_reserved0", "1768s"),
        ("DumpType", "I"),  # 0xF88
        ("MiniDumpFields", "I"),
        ("SecondaryDataState", "I"),
        ("ProductType", "I"),
        ("SuiteMask", "I"),
        ("WriterStatus", "I"),
        ("RequiredDumpSpace", "Q"),  # 0xFA0
        ("_reserved1", "16s"),
        ("SystemUpTime", "Q"),  # 0xFB8
        ("SystemTime", "Q"),  # 0xFC0
        ("_reserved3", "56s"),
    ),
)
assert DUMP_HEADER32.size == 0x1000
assert DUMP_HEADER32.offset_of("ContextRecord") == 0x320
assert DUMP_HEADER32.offset_of("DumpType") == 0xF88

CONTEXT_DEBUG = ("Dr0", "Dr1", "Dr2", "Dr3", "Dr6", "Dr7")
CONTEXT_AMD64_GENERAL = (
    "Rax", "Rcx", "Rdx", "Rbx", "Rsp", "Rbp", "Rsi", "Rdi",
    "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15", "Rip",
)  # fmt: skip

# The AMD64 CONTEXT record (winnt.h), 0x4D0 bytes; FltSave is the FXSAVE image.
CONTEXT_AMD64 = Layout(
    "CONTEXT_AMD64",
    (
        ("_home", "48s"),  # P1Home-P6Home
        ("ContextFlags", "I"),
        ("MxCsr", "I"),
        ("SegCs", "H"),
        ("SegDs", "H"),
        ("SegEs", "H"),
        ("SegFs", "H"),
        ("SegGs", "H"),
        ("SegSs", "H"),
        ("EFlags", "I"),
        *((name, "Q") for name in CONTEXT_DEBUG),
        *((name, "Q") for name in CONTEXT_AMD64_GENERAL),
        ("FltSave", "512s"),  # 0x100
        ("_vector_register", "416s"),
        ("_vector_control", "Q"),
        ("_debug_control", "40s"),  # DebugControl, LastBranch*/LastException* Rip
    ),
)
assert CONTEXT_AMD64.size == 0x4D0 and CONTEXT_AMD64.offset_of("FltSave") == 0x100

# The x86 CONTEXT record (winnt.h), 0x2CC bytes.
CONTEXT_I386 = Layout(
    "CONTEXT_I386",
    (
        ("ContextFlags", "I"),
        *((name, "I") for name in CONTEXT_DEBUG),
        ("_float_save", "112s"),  # FLOATING_SAVE_AREA (FSAVE form, not kept)
        *((name, "I") for name in ("SegGs", "SegFs", "SegEs", "SegDs")),
        *((name, "I") for name in ("Edi", "Esi", "Ebx", "Edx", "Ecx", "Eax")),
        *((name, "I") for name in ("Ebp", "Eip", "SegCs", "EFlags", "Esp", "SegSs")),
        ("ExtendedRegisters", "512s"),  # FXSAVE image
    ),
)
assert CONTEXT_I386.size == 0x2CC


WINDBG_NOTE = (
    "KdDebuggerDataBlock, PsActiveProcessHead and PsLoadedModuleList are zero: WinDbg "
    "will need them (give the Windows kernel's symbols: the vmrs.export plugin finds "
    "them, vmrs export takes --symbols ISF); kdmp-parser and Volatility do not"
)


def context_amd64(state: CpuState) -> bytes:
    v = state.values
    fxsave = state.fxsave or bytes(FXSAVE.size)
    return CONTEXT_AMD64.pack(
        ContextFlags=CONTEXT_AMD64_ALL,
        MxCsr=state.mxcsr,
        SegCs=v["cs_selector"],
        SegDs=v["ds_selector"],
        SegEs=v["es_selector"],
        SegFs=v["fs_selector"],
        SegGs=v["gs_selector"],
        SegSs=v["ss_selector"],
        EFlags=v["rflags"] & 0xFFFF_FFFF,
        **{name: v[name.lower()] for name in CONTEXT_DEBUG},
        **{name: v[name.lower()] for name in CONTEXT_AMD64_GENERAL},
        FltSave=fxsave,
    )


def context_i386(state: CpuState) -> bytes:
    v = {name: value & 0xFFFF_FFFF for name, value in state.values.items()}
    return CONTEXT_I386.pack(
        ContextFlags=CONTEXT_I386_ALL if state.fxsave else CONTEXT_I386_NO_EXTENDED,
        **{name: v[name.lower()] for name in CONTEXT_DEBUG},
        SegGs=v["gs_selector"],
        SegFs=v["fs_selector"],
        SegEs=v["es_selector"],
        SegDs=v["ds_selector"],
        Edi=v["rdi"],
        Esi=v["rsi"],
        Ebx=v["rbx"],
        Edx=v["rdx"],
        Ecx=v["rcx"],
        Eax=v["rax"],
        Ebp=v["rbp"],
        Eip=v["rip"],
        SegCs=v["cs_selector"],
        EFlags=v["rflags"],
        Esp=v["rsp"],
        SegSs=v["ss_selector"],
        ExtendedRegisters=state.fxsave or bytes(FXSAVE.size),
    )


def _comment(dump: SavedStateDump) -> bytes:
    return f"volatility3-vmrs export of {dump.name}".encode("ascii", "replace")[:127]


def build_header(
    dump: SavedStateDump,
    ranges: Sequence[MemoryRange],
    state: CpuState,
    kernel: KernelAddresses,
) -> bytes:
    """The header page(s) for ``ranges``, ``state`` giving the DTB and the CONTEXT."""
    is_64 = state.architecture == VIRTUAL_PROCESSOR_ARCH.Arch_x64
    if state.architecture not in (VIRTUAL_PROCESSOR_ARCH.Arch_x64, VIRTUAL_PROCESSOR_ARCH.Arch_x86):
        raise ExportError(f"no Windows crash-dump layout for a {state.architecture.name} guest")
    layout, run, limit = (
        (DUMP_HEADER64, RUN64, MAX_RUNS64) if is_64 else (DUMP_HEADER32, RUN32, MAX_RUNS32)
    )
    if len(ranges) > limit:
        raise ExportError(
            f"{len(ranges)} memory ranges: a full crash dump's header holds {limit} runs; "
            "export to raw, LiME or ELF instead"
        )
    pages = sum(r.size for r in ranges) // PAGE
    runs = b"".join(run.pack(BasePage=r.gpa // PAGE, PageCount=r.size // PAGE) for r in ranges)
    os_info = dump.guest_os_info()
    build = os_info.build_number if os_info.os_family == "Windows" else 0
    common = dict(
        Signature=SIGNATURE,
        MajorVersion=MAJOR_VERSION_FREE,
        MinorVersion=build,
        DirectoryTableBase=state.dtb or 0,
        PfnDataBase=0,
        PsLoadedModuleList=kernel.ps_loaded_module_list,
        PsActiveProcessHead=kernel.ps_active_process_head,
        NumberProcessors=dump.vp_count,
        BugCheckCode=0,
        BugCheckCodeParameter=b"",
        VersionUser=b"",
        KdDebuggerDataBlock=kernel.kd_debugger_data_block,
        NumberOfRuns=len(ranges),
        NumberOfPages=pages,
        Runs=runs,
        Exception=b"",
        Comment=_comment(dump),
        DumpType=DUMP_TYPE_FULL,
        RequiredDumpSpace=layout.size + pages * PAGE,
        SystemTime=0,
        SystemUpTime=0,
        MiniDumpFields=0,
        SecondaryDataState=0,
        ProductType=0,
        SuiteMask=0,
        WriterStatus=0,
        KdSecondaryVersion=0,
    )
    if is_64:
        return layout.pack(
            ValidDump=VALID_DUMP_64,
            MachineImageType=IMAGE_FILE_MACHINE_AMD64,
            ContextRecord=context_amd64(state),
            **common,
        )
    return layout.pack(
        ValidDump=VALID_DUMP_32,
        MachineImageType=IMAGE_FILE_MACHINE_I386,
        PaeEnabled=int(bool(state.values["cr4"] & 0x20)),
        ContextRecord=context_i386(state),
        **common,
    )


def write_crashdump(
    dump: SavedStateDump,
    ranges: Sequence[MemoryRange],
    output: Output,
    *,
    vp: int,
    kernel: Optional[KernelAddresses] = None,
) -> List[str]:
    kernel = kernel or KernelAddresses()
    state = cpu_state(dump, vp)
    messages: List[str] = []
    if state.dtb is None:
        messages.append(f"VP {vp} has paging off: DirectoryTableBase is 0")
    patches: List[Patch] = []
    space = kernel.space or _vp_space(dump, state)
    if space is not None:
        is_64 = state.architecture == VIRTUAL_PROCESSOR_ARCH.Arch_x64
        patches, note = kdbg_patches(dump, kernel, space, is_64=is_64)
        if note:
            messages.append(note)
    output.write(build_header(dump, ranges, state, kernel))
    for memory_range in ranges:
        copy_range_patched(dump, memory_range, output, patches)
    if not kernel.known:
        messages.append(WINDBG_NOTE)
    return messages


def _vp_space(dump: SavedStateDump, state: CpuState) -> Optional[KernelSpace]:
    if state.dtb is None:
        return None
    registers = dump.registers(state.vp)
    return KernelSpace(state.dtb, registers.paging_mode, registers.la57)
