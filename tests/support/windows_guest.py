"""A synthetic Windows 10 x64 guest whose memory the stock Volatility plugins walk.

Every structure is laid out by the real ISF of the Windows 10 build 19041.329 kernel
(``ntkrnlmp.pdb`` GUID BBED7C29..., age 1; :mod:`tests.support.windows_isf`): offsets,
sizes and symbol RVAs all come from it, the PE and debugger-data layouts from the
``pe``/``kdbg`` tables volatility3 ships. What is built:

* a kernel address space (x64, 4 levels) with a self-referencing PML4 entry, the kernel
  image at a KASLR-like base in the upper half, ``KUSER_SHARED_DATA`` at its fixed
  addresses, a nonpaged-pool region and a KPCR per virtual processor;
* the kernel image: DOS/PE headers, section table, a debug directory whose CodeView RSDS
  record names ``ntkrnlmp.pdb`` with the ISF's GUID and age, the version block, the
  debugger data block (KDBG; in clear, or encoded as without a debugger attached),
  ``PsActiveProcessHead``, ``PsLoadedModuleList``, ``ObTypeIndexTable``,
  ``ObHeaderCookie``, ``ObpInfoMaskToOffset``, ``KeNumberProcessors``;
* processes as Windows 10 allocates them: a ``Proc`` pool block (pool header, quota
  info, object header with the cookie-encoded type index, ``_EPROCESS``), each with its
  own PML4 (the kernel half shared, the user half its own) holding a ``_PEB``, process
  parameters and loader lists with DLL entries; one exited process left in pool but
  unlinked from the active list; kernel modules (``_KLDR_DATA_TABLE_ENTRY``) and
  driver objects with a name header;
* for one process a KVA-shadow user PML4: its user half plus a minimal kernel shadow
  (``KUSER_SHARED_DATA`` and the ``KiSystemCall64Shadow`` page), no self-reference.

:func:`build_windows_guest` returns the RAM as ``(gpa, bytes)`` ranges, the page-table
roots and addresses the VPs' registers point at (:mod:`tests.support.windows_vmrs` makes
the registers), and the truth the tests compare plugin output with
(:func:`tests.support.windows_content.truth`).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from tests.support.windows_content import (
    DRIVERS,
    EXE_SIZES,
    KERNEL_BASE,
    KERNEL_MODULES,
    NT_BUILD_LAB,
    PE_TIMESTAMP,
    PROCESSES,
    SYSTEM_TIME,
    Dll,
    ProcessSpec,
    truth,
    utf16,
    wintime,
)
from tests.support.windows_isf import SYMBOLS, Isf, Struct
from tests.support.windows_memory import (
    KERNEL_PAGE,
    PAGE,
    USER_PAGE,
    AddressSpace,
    PhysicalMemory,
    Region,
)
from tests.support.windows_pe import SECTIONS, kernel_image_pieces

# --- where things are (the guest's own choices, not structure layouts) -----------------
POOL_BASE = 0xFFFFB40C8A200000  # nonpaged pool
KUSER_KERNEL_VA = 0xFFFFF78000000000  # fixed by the architecture of NT
KUSER_USER_VA = 0x7FFE0000
SELF_REF_INDEX = 0x1A3  # randomised on Windows 10; any index in 0x100-0x1FE
KERNEL_DTB_GPA = 0x1AA000  # where Windows 10 puts the System PML4
HIGH_RAM_GPA = 0x1_0000_0000
LOW_RAM_SIZE = 0xC00000
HIGH_RAM_SIZE = 0x200000
# ObTypeIndexTable slots: the guest's own numbering (Process at 7 as on Windows 10).
OBJECT_TYPE_NAMES = {
    2: "Type",
    3: "Directory",
    4: "SymbolicLink",
    5: "Token",
    6: "Job",
    7: "Process",
    8: "Thread",
    9: "Device",
    10: "Driver",
}
TYPE_INDEX = {name: index for index, name in OBJECT_TYPE_NAMES.items()}
OB_HEADER_COOKIE = 0x5C
# The optional object headers, bit n of _OBJECT_HEADER.InfoMask naming the n-th; a
# header with a lower bit lies closer to the _OBJECT_HEADER (ObpInfoMaskToOffset).
OPTIONAL_HEADERS = (
    "CREATOR_INFO",
    "NAME_INFO",
    "HANDLE_INFO",
    "QUOTA_INFO",
    "PROCESS_INFO",
    "AUDIT_INFO",
    "EXTENDED_INFO",
    "PADDING_INFO",
)


@dataclass
class WindowsGuest:
    """The built guest: RAM, page-table roots, where the VPs' state points, truth."""

    ranges: List[Tuple[int, bytes]]
    kernel_dtb: int
    shadow_dtb: int  # the KVA-shadow user PML4 of the process the user-mode VP runs
    kpcrs: List[int]  # per VP: its KPCR (GS base in kernel mode)
    teb: int  # the TEB of the thread the user-mode VP runs
    process_dtbs: Dict[int, int]  # pid -> _KPROCESS.DirectoryTableBase
    idle_rip: int  # where the kernel-mode VP stands (KiIdleLoop)
    kdbg_plain: bytes = b""  # the debugger data block in clear (what an encoded one hides)
    truth: Dict[str, Any] = field(default_factory=dict)


class _Builder:
    def __init__(self, isf: Isf, seed: int, encode_kdbg: bool) -> None:
        self.isf = isf
        self.encode_kdbg = encode_kdbg
        self.rng = random.Random(seed)
        self.memory = PhysicalMemory(
            ram=[(0, LOW_RAM_SIZE), (HIGH_RAM_GPA, HIGH_RAM_SIZE)],
            regions={
                "tables": Region(0x300000, 0x500000),
                "kernel": Region(0x600000, LOW_RAM_SIZE),
                "user": Region(HIGH_RAM_GPA, HIGH_RAM_GPA + HIGH_RAM_SIZE),
            },
        )
        self.kernel = AddressSpace(self.memory, "kernel", root=KERNEL_DTB_GPA)
        self.pool_next = POOL_BASE
        self.kdbg_plain = b""

    # --- kernel memory -------------------------------------------------------------
    def kwrite(self, va: int, data: bytes) -> None:
        self.kernel.write(va, data, KERNEL_PAGE)

    def kstruct(self, va: int, struct: Struct) -> None:
        self.kwrite(va, bytes(struct))

    def symbol(self, name: str) -> int:
        rva = self.isf.symbol(name)
        assert any(start <= rva < start + size for _, start, size in SECTIONS), name
        return KERNEL_BASE + rva

    def pool(self, tag: bytes, size: int, *, page: bool = False) -> int:
        """A nonpaged-pool block; returns the address right after its pool header."""
        header_size = self.isf.size("_POOL_HEADER")
        if page:
            self.pool_next = (self.pool_next + PAGE - 1) & ~(PAGE - 1)
        address = self.pool_next
        total = (header_size + size + 15) & ~15
        assert total // 16 < 256, "small pool blocks only"
        header = self.isf.struct("_POOL_HEADER")
        header.set("BlockSize", total // 16)
        header.set("PoolType", 2)  # nonpaged (stored as type + 1)
        header.set("PoolTag", int.from_bytes(tag, "little"))
        self.kwrite(address, bytes(header))
        self.pool_next = address + total
        return address + header_size

    def big_pool(self, size: int) -> int:
        """Page-aligned pool memory without a header (allocations over a page)."""
        self.pool_next = (self.pool_next + PAGE - 1) & ~(PAGE - 1)
        address = self.pool_next
        self.pool_next += (size + PAGE - 1) & ~(PAGE - 1)
        return address

    def kstring(self, text: str) -> Tuple[int, int]:
        """A UTF-16 string in pool: (address, byte length)."""
        data = utf16(text)
        address = self.pool(b"Strg", len(data) + 2)
        self.kwrite(address, data + b"\0\0")
        return address, len(data)

    def unicode_string(self, struct: Struct, path: str, address: int, length: int) -> None:
        struct.set(f"{path}.Length", length)
        struct.set(f"{path}.MaximumLength", length + 2)
        struct.set(f"{path}.Buffer", address)

    def link(self, entries: List[int], head: int) -> None:
        """Doubly link the _LIST_ENTRY at ``head`` with ``entries`` (all VAs, kernel)."""
        chain = [head, *entries]
        for index, entry in enumerate(chain):
            following = chain[(index + 1) % len(chain)]
            previous = chain[index - 1]
            self.kwrite(entry, following.to_bytes(8, "little") + previous.to_bytes(8, "little"))

    # --- the kernel image -------------------------------------------------------------
    def image(self) -> None:
        for rva, data in kernel_image_pieces(self.isf, SYMBOLS.pe):
            self.kwrite(KERNEL_BASE + rva, data)
        # Code where the VPs stand: the idle loop and the shadow system-call entry.
        self.kwrite(self.symbol("KiIdleLoop"), b"\xf3\x90\xeb\xfc")  # pause; jmp $-2
        self.kwrite(self.symbol("KiSystemCall64Shadow"), b"\x0f\x01\xf8")  # swapgs

    # --- kernel data ----------------------------------------------------------------
    def kuser(self) -> int:
        kuser = self.isf.struct("_KUSER_SHARED_DATA")
        system_time = wintime(SYSTEM_TIME)
        kuser.set("SystemTime.LowPart", system_time & 0xFFFFFFFF)
        kuser.set("SystemTime.High1Time", system_time >> 32)
        kuser.set("SystemTime.High2Time", system_time >> 32)
        kuser.set("NtSystemRoot", utf16("C:\\Windows"))
        kuser.set("NtProductType", self.isf.enum_value("_NT_PRODUCT_TYPE", "NtProductWinNt"))
        kuser.set("NtMajorVersion", 10)
        kuser.set("NtMinorVersion", 0)
        kuser.set("NtBuildNumber", 19041)
        kuser.set("NumberOfPhysicalPages", (LOW_RAM_SIZE + HIGH_RAM_SIZE) // PAGE)
        self.kwrite(KUSER_KERNEL_VA, bytes(kuser))
        frame = self.kernel.translate(KUSER_KERNEL_VA)
        assert frame is not None
        return frame

    def debugger_blocks(self, cpu_count: int) -> None:
        version = self.isf.struct("_DBGKD_GET_VERSION64")
        version.update(
            MajorVersion=0xF,
            MinorVersion=19041,
            ProtocolVersion=6,
            KdSecondaryVersion=2,
            Flags=0x47,
            MachineType=self.isf.pdb["machine_type"],
            MaxPacketType=0xC,
            MaxStateChange=3,
            MaxManipulate=0x31,
            KernBase=KERNEL_BASE,
            PsLoadedModuleList=self.symbol("PsLoadedModuleList"),
            DebuggerDataList=self.symbol("KdDebuggerDataBlock"),
        )
        self.kstruct(self.symbol("KdVersionBlock"), version)
        kdbg_isf = SYMBOLS.kdbg
        kdbg = kdbg_isf.struct("_KDDEBUGGER_DATA64")
        block = self.symbol("KdDebuggerDataBlock")
        kdbg.set("Header.List.Flink", block)
        kdbg.set("Header.List.Blink", block)
        kdbg.set("Header.OwnerTag", int.from_bytes(b"KDBG", "little"))
        kdbg.set("Header.Size", kdbg_isf.size("_KDDEBUGGER_DATA64"))
        kdbg.set("KernBase", KERNEL_BASE)
        kdbg.set("PsLoadedModuleList", self.symbol("PsLoadedModuleList"))
        kdbg.set("PsActiveProcessHead", self.symbol("PsActiveProcessHead"))
        kdbg.set("NtBuildLab", self.symbol("NtBuildLab"))
        kdbg.set("CmNtCSDVersion", self.symbol("CmNtCSDVersion"))
        kdbg.set("MmSystemRangeStart", self.symbol("MmSystemRangeStart"))
        self.kdbg_plain = bytes(kdbg)
        if self.encode_kdbg:
            self.kwrite(block, self.encoded(bytes(kdbg)))
        else:
            self.kstruct(block, kdbg)
        self.kwrite(self.symbol("NtBuildLab"), NT_BUILD_LAB.encode() + b"\0")
        self.kwrite(self.symbol("CmNtCSDVersion"), bytes(4))
        self.kwrite(self.symbol("MmSystemRangeStart"), (0xFFFF800000000000).to_bytes(8, "little"))
        self.kwrite(self.symbol("KeNumberProcessors"), cpu_count.to_bytes(4, "little"))
        self.kwrite(self.symbol("KiKvaShadow"), b"\x01")

    def encoded(self, block: bytes) -> bytes:
        """The debugger data block as a kernel without an attached debugger keeps it:
        each u64 scrambled with KiWaitNever/KiWaitAlways and the address of
        KdpDataBlockEncoded (the inverse of KdCopyDataBlock's decoding), so no "KDBG"
        tag is left in memory."""
        never = self.rng.getrandbits(64) | 1
        always = self.rng.getrandbits(64)
        key = self.symbol("KdpDataBlockEncoded")
        self.kwrite(self.symbol("KiWaitNever"), never.to_bytes(8, "little"))
        self.kwrite(self.symbol("KiWaitAlways"), always.to_bytes(8, "little"))
        self.kwrite(key, b"\x01")
        out = bytearray()
        rotate = never & 0x3F
        mask = (1 << 64) - 1
        for (value,) in struct.iter_unpack("<Q", block):
            value = int.from_bytes((value ^ always).to_bytes(8, "little"), "big") ^ key
            value = ((value >> rotate) | (value << (64 - rotate))) & mask
            out += struct.pack("<Q", value ^ never)
        assert b"KDBG" not in out
        return bytes(out)

    def kpcrs(self, cpu_count: int) -> List[int]:
        """A KPCR per processor (GS base in kernel mode), listed in KiProcessorBlock."""
        kpcrs = []
        prcb_offset = self.isf.offset("_KPCR", "Prcb")
        for cpu in range(cpu_count):
            address = self.big_pool(self.isf.size("_KPCR"))
            head = self.isf.struct("_KPCR")
            head.set("Self", address)
            head.set("CurrentPrcb", address + prcb_offset)
            head.set("KdVersionBlock", self.symbol("KdVersionBlock"))
            head.set("MajorVersion", 1)
            head.set("MinorVersion", 1)
            self.kwrite(address, bytes(head.data[: prcb_offset + 8]))
            self.kwrite(
                self.symbol("KiProcessorBlock") + cpu * 8,
                (address + prcb_offset).to_bytes(8, "little"),
            )
            kpcrs.append(address)
        return kpcrs

    def object_types(self) -> None:
        """ObTypeIndexTable: slot 0 null, slot 1 the 0xbad0b0b0 marker, then types."""
        table = self.symbol("ObTypeIndexTable")
        self.kwrite(table, bytes(8) + (0xBAD0B0B0).to_bytes(8, "little"))
        for index, name in OBJECT_TYPE_NAMES.items():
            body = self.object(b"ObjT", "_OBJECT_TYPE", object_type="Type")
            object_type = self.isf.struct("_OBJECT_TYPE")
            string, length = self.kstring(name)
            self.unicode_string(object_type, "Name", string, length)
            object_type.set("Index", index)
            object_type.set("TotalNumberOfObjects", 1)
            object_type.set("TypeList.Flink", body + self.isf.offset("_OBJECT_TYPE", "TypeList"))
            object_type.set("TypeList.Blink", body + self.isf.offset("_OBJECT_TYPE", "TypeList"))
            self.kstruct(body, object_type)
            self.kwrite(table + index * 8, body.to_bytes(8, "little"))
        self.kwrite(self.symbol("ObHeaderCookie"), OB_HEADER_COOKIE.to_bytes(4, "little"))

    def info_mask_offsets(self) -> None:
        """ObpInfoMaskToOffset: for each InfoMask, the bytes its optional headers take."""
        sizes = [self.isf.size(f"_OBJECT_HEADER_{name}") for name in OPTIONAL_HEADERS]
        table = bytes(
            sum(size for bit, size in enumerate(sizes) if mask >> bit & 1) for mask in range(256)
        )
        self.kwrite(self.symbol("ObpInfoMaskToOffset"), table)

    def object(
        self,
        tag: bytes,
        type_name: str,
        *,
        object_type: str,
        optional: Optional[Dict[str, Struct]] = None,
    ) -> int:
        """An executive object in its own pool block: pool header, optional headers
        (highest InfoMask bit first), _OBJECT_HEADER, body. Returns the body's address."""
        optional = optional or {}
        order = sorted(optional, key=OPTIONAL_HEADERS.index, reverse=True)
        prefix = b"".join(bytes(optional[name]) for name in order)
        body_offset = self.isf.offset("_OBJECT_HEADER", "Body")
        start = self.pool(tag, len(prefix) + body_offset + self.isf.size(type_name), page=True)
        self.kwrite(start, prefix)
        header_address = start + len(prefix)
        header = self.isf.struct("_OBJECT_HEADER")
        header.set("PointerCount", 0x30)
        header.set("HandleCount", 2)
        header.set("InfoMask", sum(1 << OPTIONAL_HEADERS.index(name) for name in optional))
        # Windows 10 stores index ^ ObHeaderCookie ^ second byte of the header address.
        index = TYPE_INDEX[object_type]
        header.set("TypeIndex", index ^ OB_HEADER_COOKIE ^ ((header_address >> 8) & 0xFF))
        self.kstruct(header_address, header)
        return header_address + body_offset

    def name_info(self, name: str) -> Struct:
        info = self.isf.struct("_OBJECT_HEADER_NAME_INFO")
        self.unicode_string(info, "Name", *self.kstring(name))
        info.set("ReferenceCount", 1)
        return info

    def drivers(self) -> None:
        """A _DRIVER_OBJECT (pool tag Driv, with a name header) per driver module."""
        for driver in DRIVERS:
            body = self.object(
                b"Driv",
                "_DRIVER_OBJECT",
                object_type="Driver",
                optional={"NAME_INFO": self.name_info(driver.name)},
            )
            extension = self.pool(b"Driv", self.isf.size("_DRIVER_EXTENSION"))
            ext = self.isf.struct("_DRIVER_EXTENSION")
            ext.set("DriverObject", body)
            self.unicode_string(ext, "ServiceKeyName", *self.kstring(driver.service_key))
            self.kstruct(extension, ext)
            obj = self.isf.struct("_DRIVER_OBJECT")
            obj.set("Type", 4)  # IO_TYPE_DRIVER
            obj.set("Size", self.isf.size("_DRIVER_OBJECT"))
            obj.set("Flags", 0x12)
            obj.set("DriverStart", driver.base)
            obj.set("DriverSize", driver.size)
            obj.set("DriverExtension", extension)
            self.unicode_string(obj, "DriverName", *self.kstring(driver.path))
            obj.set("DriverInit", driver.base + 0x2000)
            self.kstruct(body, obj)

    # --- processes ------------------------------------------------------------------
    def process(self, spec: ProcessSpec, kuser_frame: int) -> Tuple[int, AddressSpace]:
        quota = self.isf.struct("_OBJECT_HEADER_QUOTA_INFO")
        quota.set("PagedPoolCharge", 0x1000)
        quota.set("NonPagedPoolCharge", self.isf.size("_EPROCESS"))
        eprocess = self.object(
            b"Proc", "_EPROCESS", object_type="Process", optional={"QUOTA_INFO": quota}
        )
        if spec.pid == 4:
            space = self.kernel  # System runs on the kernel's own PML4
        else:
            space = AddressSpace(self.memory, "user")
            space.map(KUSER_USER_VA, kuser_frame, USER_PAGE & ~(1 << 63))
        proc = self.isf.struct("_EPROCESS")
        proc.set("Pcb.Header.Type", self.isf.enum_value("_KOBJECTS", "ProcessObject"))
        proc.set("Pcb.DirectoryTableBase", space.root)
        proc.set("UniqueProcessId", spec.pid)
        proc.set("InheritedFromUniqueProcessId", spec.ppid)
        proc.set("ImageFileName", spec.name.encode()[:14])
        proc.set("CreateTime.QuadPart", wintime(spec.create_time))
        if spec.exit_time is not None:
            proc.set("ExitTime.QuadPart", wintime(spec.exit_time))
        proc.set("ActiveThreads", spec.threads)
        threads = eprocess + self.isf.offset("_EPROCESS", "ThreadListHead")
        proc.set("ThreadListHead.Flink", threads)
        proc.set("ThreadListHead.Blink", threads)
        links = eprocess + self.isf.offset("_EPROCESS", "ActiveProcessLinks")
        proc.set("ActiveProcessLinks.Flink", links)
        proc.set("ActiveProcessLinks.Blink", links)
        if spec.session is not None:
            session = self.big_pool(self.isf.size("_MM_SESSION_SPACE"))
            sess = self.isf.struct("_MM_SESSION_SPACE")
            sess.set("SessionId", spec.session)
            self.kwrite(session, bytes(sess.data[:PAGE]))
            proc.set("Session", session)
        if spec.image_path:
            name = self.pool(b"SeOn", self.isf.size("_OBJECT_NAME_INFORMATION"))
            info = self.isf.struct("_OBJECT_NAME_INFORMATION")
            self.unicode_string(info, "Name", *self.kstring(spec.image_path))
            self.kstruct(name, info)
            proc.set("SeAuditProcessCreationInfo.ImageFileName", name)
        if spec.command_line is not None:
            proc.set("Peb", self.peb(spec, space))
        self.kstruct(eprocess, proc)
        return eprocess, space

    def peb(self, spec: ProcessSpec, space: AddressSpace) -> int:
        heap = _UserHeap(self, space, 0x1F0_0000_0000 + self.rng.randrange(0x100) * 0x1_0000_0000)
        peb_va = 0x000000D0_0000_0000 + self.rng.randrange(0x1000) * 0x100_0000
        peb = self.isf.struct("_PEB")
        peb.set("ImageBaseAddress", spec.image_base)
        params = self.isf.struct("_RTL_USER_PROCESS_PARAMETERS")
        params_va = heap.alloc(params.data.__len__())
        params.set("MaximumLength", len(params.data))
        params.set("Length", len(params.data))
        params.set("Flags", 1)  # normalised
        self.unicode_string(params, "ImagePathName", *heap.string(spec.win32_path))
        self.unicode_string(params, "CommandLine", *heap.string(spec.command_line or ""))
        space.write(params_va, bytes(params), USER_PAGE)
        peb.set("ProcessParameters", params_va)
        peb.set("Ldr", self.loader(spec, space, heap))
        peb.set("OSMajorVersion", 10)
        peb.set("OSBuildNumber", 19041)
        peb.set("NumberOfProcessors", 2)
        space.write(peb_va, bytes(peb), USER_PAGE)
        return peb_va

    def loader(self, spec: ProcessSpec, space: AddressSpace, heap: _UserHeap) -> int:
        """_PEB_LDR_DATA and one _LDR_DATA_TABLE_ENTRY per module (the image first)."""
        ldr_type = "_LDR_DATA_TABLE_ENTRY"
        image = Dll(spec.name, spec.win32_path, spec.image_base, EXE_SIZES[spec.name])
        modules = [image, *spec.dlls]
        ldr = self.isf.struct("_PEB_LDR_DATA")
        ldr_va = heap.alloc(len(ldr.data))
        entries = [heap.alloc(self.isf.size(ldr_type)) for _ in modules]
        lists = {
            "InLoadOrder": (entries, "InLoadOrderModuleList", "InLoadOrderLinks"),
            "InMemoryOrder": (entries, "InMemoryOrderModuleList", "InMemoryOrderLinks"),
            # The image is not initialised by the loader: only DLLs are in this list.
            "InInitializationOrder": (
                entries[1:],
                "InInitializationOrderModuleList",
                "InInitializationOrderLinks",
            ),
        }
        ldr.set("Length", len(ldr.data))
        ldr.set("Initialized", 1)
        structs = [self.isf.struct(ldr_type) for _ in modules]
        for chain, head_field, link_field in lists.values():
            head = ldr_va + self.isf.offset("_PEB_LDR_DATA", head_field)
            nodes = [head] + [entry + self.isf.offset(ldr_type, link_field) for entry in chain]
            for index in range(len(nodes)):
                following, previous = nodes[(index + 1) % len(nodes)], nodes[index - 1]
                if index == 0:
                    ldr.set(f"{head_field}.Flink", following)
                    ldr.set(f"{head_field}.Blink", previous)
                else:
                    entry = structs[entries.index(chain[index - 1])]
                    entry.set(f"{link_field}.Flink", following)
                    entry.set(f"{link_field}.Blink", previous)
        for module, entry, address in zip(modules, structs, entries):
            entry.set("DllBase", module.base)
            entry.set("EntryPoint", module.base + 0x1000)
            entry.set("SizeOfImage", module.size)
            self.unicode_string(entry, "FullDllName", *heap.string(module.path))
            self.unicode_string(entry, "BaseDllName", *heap.string(module.name))
            entry.set("ObsoleteLoadCount", 6)
            entry.set("LoadTime.QuadPart", wintime(spec.create_time))
            space.write(address, bytes(entry), USER_PAGE)
        space.write(ldr_va, bytes(ldr), USER_PAGE)
        return ldr_va

    def kernel_modules(self) -> None:
        entry_type = "_KLDR_DATA_TABLE_ENTRY"
        links = []
        for name, path, base, size in KERNEL_MODULES:
            address = self.pool(b"MmLd", self.isf.size(entry_type))
            entry = self.isf.struct(entry_type)
            entry.set("DllBase", base)
            entry.set("EntryPoint", base + 0x1000)
            entry.set("SizeOfImage", size)
            entry.set("SizeOfImageNotRounded", size)
            entry.set("TimeDateStamp", PE_TIMESTAMP)
            entry.set("LoadCount", 1)
            self.unicode_string(entry, "FullDllName", *self.kstring(path))
            self.unicode_string(entry, "BaseDllName", *self.kstring(name))
            self.kstruct(address, entry)
            links.append(address + self.isf.offset(entry_type, "InLoadOrderLinks"))
        self.link(links, self.symbol("PsLoadedModuleList"))

    # --- address spaces -------------------------------------------------------------
    def share_kernel_half(self, space: AddressSpace) -> None:
        for index in range(0x100, 0x200):
            if index != SELF_REF_INDEX:
                space.set_entry(index, self.kernel.entry(index))

    def self_reference(self, space: AddressSpace) -> None:
        space.set_entry(SELF_REF_INDEX, space.root | 0x63 | (1 << 63))

    def kva_shadow(self, space: AddressSpace, kuser_frame: int) -> AddressSpace:
        """The user PML4 of KVA shadowing: the user half, and of the kernel only the
        shared data page and the system-call entry page."""
        shadow = AddressSpace(self.memory, "kernel")
        shadow.map(KUSER_KERNEL_VA, kuser_frame, KERNEL_PAGE)
        syscall = self.symbol("KiSystemCall64Shadow") & ~(PAGE - 1)
        frame = self.kernel.translate(syscall)
        assert frame is not None
        shadow.map(syscall, frame, KERNEL_PAGE & ~(1 << 63))
        for index in range(0x100):
            shadow.set_entry(index, space.entry(index))
        return shadow


class _UserHeap:
    """Bump allocation of user memory in one process's address space."""

    def __init__(self, builder: _Builder, space: AddressSpace, base: int) -> None:
        self.builder = builder
        self.space = space
        self.next = base

    def alloc(self, size: int) -> int:
        address = self.next
        self.next = (address + size + 15) & ~15
        return address

    def string(self, text: str) -> Tuple[int, int]:
        data = utf16(text)
        address = self.alloc(len(data) + 2)
        self.space.write(address, data + b"\0\0", USER_PAGE)
        return address, len(data)


def build_windows_guest(seed: int = 19041, *, encode_kdbg: bool = False) -> WindowsGuest:
    """Lay the guest out; the same seed gives the same bytes. ``encode_kdbg`` scrambles
    the debugger data block as Windows 10 does without a debugger attached."""
    isf = SYMBOLS.kernel
    builder = _Builder(isf, seed, encode_kdbg)
    cpu_count = 2
    builder.image()
    kuser_frame = builder.kuser()
    builder.debugger_blocks(cpu_count)
    kpcrs = builder.kpcrs(cpu_count)
    builder.info_mask_offsets()
    builder.object_types()
    builder.kernel_modules()
    builder.drivers()
    placed = []
    for spec in PROCESSES:
        eprocess, space = builder.process(spec, kuser_frame)
        placed.append((spec, eprocess, space))
    listed = [
        eprocess + isf.offset("_EPROCESS", "ActiveProcessLinks")
        for spec, eprocess, _ in placed
        if spec.listed
    ]
    builder.link(listed, builder.symbol("PsActiveProcessHead"))
    builder.kwrite(builder.symbol("PsInitialSystemProcess"), placed[0][1].to_bytes(8, "little"))
    # The kernel is complete: every process shares its upper half.
    shadow_root = 0
    teb = 0
    builder.self_reference(builder.kernel)
    for spec, eprocess, space in placed:
        if space is builder.kernel:
            continue
        builder.share_kernel_half(space)
        builder.self_reference(space)
        if spec.shadow:
            teb = 0x000000D1_2345_6000
            space.write(teb, b"\0" * 0x38, USER_PAGE)  # a TEB's NT_TIB, all it needs here
            shadow = builder.kva_shadow(space, kuser_frame)
            shadow_root = shadow.root
            user_dtb = eprocess + isf.offset("_EPROCESS", "Pcb.UserDirectoryTableBase")
            builder.kwrite(user_dtb, (shadow_root | 1).to_bytes(8, "little"))
    assert shadow_root, "one process runs with a KVA-shadow user PML4"
    facts = truth(kpcrs)
    facts.update(dtb=KERNEL_DTB_GPA, shadow_dtb=shadow_root, kdbg_encoded=encode_kdbg)
    return WindowsGuest(
        ranges=builder.memory.ranges(),
        kernel_dtb=KERNEL_DTB_GPA,
        shadow_dtb=shadow_root,
        kpcrs=kpcrs,
        process_dtbs={spec.pid: space.root for spec, _, space in placed},
        teb=teb,
        idle_rip=builder.symbol("KiIdleLoop"),
        kdbg_plain=builder.kdbg_plain,
        truth=facts,
    )
