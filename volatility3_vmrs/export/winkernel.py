"""The Windows kernel of a saved state, located from its ISF alone (``vmrs export --symbols``).

No Volatility import: the ISF is read as the JSON it is (plain or ``.xz``), keeping the
PDB identity (``metadata.windows.pdb``: database name, GUID, age) and the RVAs of the
symbols a crash dump needs (:data:`SYMBOLS`). The kernel is then looked for in the
guest's kernel virtual space: for each VP with paging on (kernel-mode VPs first, one
try per distinct CR3), the page tables are walked over the range the Windows loader
puts the kernel in (:data:`KERNEL_RANGE`: from ``0xFFFFF800_00000000`` on x64, the
range Volatility's optimised PDB scan starts at; the upper half on 32-bit), skipping
the self-referencing entry; every mapped page that begins a valid PE header
(:func:`~volatility3_vmrs.savedstate.pescan.check_header`) is parsed, and the image
whose CodeView record names the ISF's PDB, GUID and age is the kernel, its address
the base the RVAs are added to. A kernel image whose GUID or age differs is refused:
the ISF is not this kernel's. The walk visits at most :data:`MAX_PAGES` mapped pages.
"""

from __future__ import annotations

import json
import lzma
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from volatility3_vmrs.savedstate import SavedStateDump, VmrsError, pescan
from volatility3_vmrs.savedstate.paging import FRAME_MASK_64, dtb_from_cr3
from volatility3_vmrs.savedstate.types import PAGING_MODE

from .kdbg import KernelAddresses, KernelSpace
from .writer import ExportError

HEADER_FIELDS = ("KdDebuggerDataBlock", "PsActiveProcessHead", "PsLoadedModuleList")
DECODING = ("KdpDataBlockEncoded", "KiWaitNever", "KiWaitAlways")
SYMBOLS = HEADER_FIELDS + DECODING
KERNEL_PDB_NAMES = ("ntkrnlmp.pdb", "ntoskrnl.pdb", "ntkrnlpa.pdb", "ntkrpamp.pdb")
PAGE = 0x1000
SIGN_48 = ((1 << 64) - 1) ^ ((1 << 48) - 1)  # the upper bits of a canonical kernel address
MAX_PAGES = 1 << 20  # 4 GiB of mappings in the kernel range
MAX_ISF_BYTES = 1 << 30  # a decompressed kernel ISF is some 30 MiB

# (shift, index bits, entry size, large page allowed) per level, top first.
_LEVELS = {
    PAGING_MODE.Paging_Long: (
        (39, 9, 8, False), (30, 9, 8, True), (21, 9, 8, True), (12, 9, 8, False)
    ),
    PAGING_MODE.Paging_Pae: ((30, 2, 8, False), (21, 9, 8, True), (12, 9, 8, False)),
    PAGING_MODE.Paging_32Bit: ((22, 10, 4, True), (12, 10, 4, False)),
}  # fmt: skip
KERNEL_RANGE = {
    PAGING_MODE.Paging_Long: (0xFFFF_F800_0000_0000, 1 << 64),
    PAGING_MODE.Paging_Pae: (0x8000_0000, 1 << 32),
    PAGING_MODE.Paging_32Bit: (0x8000_0000, 1 << 32),
}


@dataclass(frozen=True)
class KernelIsf:
    """What an ISF says of its kernel: the PDB it was made from, and symbol RVAs."""

    path: str
    pdb_name: str
    guid: str  # 32 upper-case hex digits, as in the ISF
    age: int
    rvas: Dict[str, int]  # the names of SYMBOLS the ISF has

    @property
    def identity(self) -> str:
        return f"{self.pdb_name} {self.guid}-{self.age}"


@dataclass(frozen=True)
class LocatedKernel:
    """The kernel image found in the guest: its base and the page tables it was found in."""

    base: int
    vp: int
    space: KernelSpace


def load_kernel_isf(path: str) -> KernelIsf:
    """Read a Windows kernel ISF (``.json`` or ``.json.xz``); ExportError if it is not one."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(6)
            handle.seek(0)
            if head == b"\xfd7zXZ\x00":
                text = lzma.open(handle).read(MAX_ISF_BYTES + 1)
            else:
                text = handle.read(MAX_ISF_BYTES + 1)
        if len(text) > MAX_ISF_BYTES:
            raise ExportError(f"{path}: larger than {MAX_ISF_BYTES} bytes, not a kernel ISF")
        document = json.loads(text)
    except OSError as error:
        raise ExportError(f"cannot read the ISF {path}: {error.strerror or error}") from None
    except (lzma.LZMAError, EOFError) as error:
        raise ExportError(f"{path}: not a readable .xz file ({error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportError(f"{path}: not an ISF (not JSON: {error})") from None
    try:
        pdb = document["metadata"]["windows"]["pdb"]
        name, guid, age = str(pdb["database"]), str(pdb["GUID"]).upper(), int(pdb["age"])
        table = document["symbols"]
    except (KeyError, TypeError, ValueError):
        raise ExportError(
            f"{path}: not a Windows ISF (no metadata.windows.pdb database/GUID/age)"
        ) from None
    if name.lower() not in KERNEL_PDB_NAMES:
        raise ExportError(f"{path} is the ISF of {name}, not of a Windows kernel")
    rvas: Dict[str, int] = {}
    for symbol in SYMBOLS:
        entry = table.get(symbol) if isinstance(table, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("address"), int):
            rvas[symbol] = entry["address"]
    missing = [symbol for symbol in HEADER_FIELDS if symbol not in rvas]
    if missing:
        raise ExportError(f"{path}: the kernel ISF has no {', '.join(missing)}")
    return KernelIsf(path, name, guid, age, rvas)


def _kernel_spaces(dump: SavedStateDump) -> List[Tuple[int, KernelSpace]]:
    """(VP, its page tables) of each VP with paging on, kernel mode first, one per DTB."""
    found: List[Tuple[bool, int, KernelSpace]] = []
    for vp in dump.vp_indices:
        try:
            registers = dump.registers(vp, 0)
            mode = registers.paging_mode
            if mode not in _LEVELS or registers.dtb is None:
                continue
            space = KernelSpace(dtb_from_cr3(mode, registers.dtb), mode, registers.la57)
            found.append((not registers.in_kernel_space, vp, space))
        except VmrsError:
            continue
    spaces: List[Tuple[int, KernelSpace]] = []
    for _user, vp, space in sorted(found, key=lambda item: (item[0], item[1])):
        if space.la57 or any(space.dtb == known.dtb for _, known in spaces):
            continue  # a 5-level walk is not done here
        spaces.append((vp, space))
    return spaces


def mapped_pages(
    dump: SavedStateDump, space: KernelSpace, start: int, end: int
) -> Iterator[Tuple[int, int]]:
    """(virtual address, GPA) of the 4 KiB pages mapped in ``[start, end)``, ascending.

    Tables that cannot be read are passed over; a top-level entry that points at the
    root itself (the self-reference of Windows' page tables) is not followed.
    """
    levels = _LEVELS[space.mode]
    width = 48 if space.mode == PAGING_MODE.Paging_Long else 32

    def table_frame(value: int, entry_size: int) -> int:
        return value & FRAME_MASK_64 if entry_size == 8 else value & 0xFFFFF000

    def walk(table: int, depth: int, base: int) -> Iterator[Tuple[int, int]]:
        shift, bits, size, large = levels[depth]
        try:
            data = dump.read_physical(table, (1 << bits) * size)
        except VmrsError:
            return
        span = 1 << shift
        for index in range(1 << bits):
            low = base + index * span
            address = low | (SIGN_48 if width == 48 and low >> 47 else 0)
            if address + span <= start or address >= end:
                continue
            value = int.from_bytes(data[index * size : (index + 1) * size], "little")
            if not value & 1:
                continue
            if depth == 0 and table_frame(value, size) == space.dtb:
                continue
            if shift == 12 or (large and value & 0x80):
                frame = table_frame(value, size) & ~(span - 1)
                for page in range(max(address, start), min(address + span, end), PAGE):
                    yield page, frame + page - address
            else:
                yield from walk(table_frame(value, size), depth + 1, low)

    yield from walk(space.dtb, 0, 0)


def _read_page(dump: SavedStateDump, space: KernelSpace, va: int) -> Optional[bytes]:
    try:
        data = dump.read_physical(space.physical(dump, va), PAGE)
    except VmrsError:
        return None
    return data if len(data) == PAGE else None


def _kernel_images(dump: SavedStateDump, space: KernelSpace) -> Iterator[pescan.PeImage]:
    """PE images in the kernel range of ``space`` whose CodeView names a kernel PDB."""
    start, end = KERNEL_RANGE[space.mode]
    for count, (va, gpa) in enumerate(mapped_pages(dump, space, start, end)):
        if count >= MAX_PAGES:
            return
        try:
            if dump.read_physical(gpa, 2) != b"MZ":
                continue
        except VmrsError:
            continue
        header = _read_page(dump, space, va)
        if header is None or pescan.check_header(header) is None:
            continue
        image = pescan.parse_mapped_image(lambda a: _read_page(dump, space, a), va, header)
        if image is not None and (image.pdb_name or "").lower() in KERNEL_PDB_NAMES:
            yield image


def locate_kernel(dump: SavedStateDump, isf: KernelIsf) -> LocatedKernel:
    """The kernel image the ISF describes; ExportError when it is absent or another one."""
    spaces = _kernel_spaces(dump)
    if not spaces:
        raise ExportError("no virtual processor has paging on: the kernel cannot be looked for")
    others: List[str] = []
    for vp, space in spaces:
        for image in _kernel_images(dump, space):
            guid = (image.pdb_guid or "").replace("-", "").upper()
            name = image.pdb_name or ""
            if (name.lower(), guid, image.pdb_age) == (isf.pdb_name.lower(), isf.guid, isf.age):
                return LocatedKernel(image.address, vp, space)
            others.append(f"{name} {guid}-{image.pdb_age} at {image.address:#x}")
        if others:
            break
    if others:
        raise ExportError(
            f"{isf.path} is for {isf.identity}, but the guest's kernel is {others[0]}: "
            "give the ISF of that kernel"
        )
    raise ExportError(
        f"no Windows kernel image found in the kernel address space of VP(s) "
        f"{', '.join(str(vp) for vp, _ in spaces)} (looked for {isf.identity})"
    )


def kernel_addresses(isf: KernelIsf, kernel: LocatedKernel) -> KernelAddresses:
    """The absolute addresses of the ISF's symbols in the located kernel."""

    def address(symbol: str) -> int:
        return kernel.base + isf.rvas[symbol] if symbol in isf.rvas else 0

    return KernelAddresses(
        kd_debugger_data_block=address("KdDebuggerDataBlock"),
        ps_active_process_head=address("PsActiveProcessHead"),
        ps_loaded_module_list=address("PsLoadedModuleList"),
        kdp_data_block_encoded=address("KdpDataBlockEncoded"),
        ki_wait_never=address("KiWaitNever"),
        ki_wait_always=address("KiWaitAlways"),
        space=kernel.space,
    )


def kernel_from_isf(dump: SavedStateDump, path: str) -> Tuple[KernelAddresses, str]:
    """Read the ISF at ``path``, find its kernel in ``dump``: the addresses and a note."""
    isf = load_kernel_isf(path)
    located = locate_kernel(dump, isf)
    note = f"kernel {isf.identity} at {located.base:#x} (page tables of VP {located.vp})"
    return kernel_addresses(isf, located), note
