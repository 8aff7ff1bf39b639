"""Find PE images in guest memory: the DLL's ScanMemoryForDosImages, in Python.

A candidate is a page whose first bytes are ``MZ`` and whose ``e_lfanew`` leads, inside
the same page, to a ``PE\\0\\0`` signature followed by a plausible file header and optional
header (known magic, sane alignments, section count, header and image sizes). Random data
with a stray ``MZ`` - even one followed by ``PE\\0\\0`` - fails those checks.

Images in memory have the *mapped* layout: sections sit at their RVAs, not at their file
offsets. :func:`parse_mapped_image` reads the whole image page by page (missing or
paged-out pages become zeros and are counted), rewrites the section headers and the
CodeView debug entries so that file offset == RVA, and hands the result to pefile.

The module needs pefile but not Volatility; the ``vmrs.pescan`` plugin drives it.
"""

from __future__ import annotations

import datetime
import struct
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import pefile

PAGE_SIZE = 0x1000
MAX_IMAGE_SIZE = 0x10000000  # 256 MiB: larger SizeOfImage values are not believed
MAX_SECTIONS = 96  # the loader's limit
OPTIONAL_MAGIC = {0x10B: "PE32", 0x20B: "PE32+"}
# The size of the optional header with all 16 data directories.
OPTIONAL_SIZE = {0x10B: 224, 0x20B: 240}
OPTIONAL_MINIMUM = {0x10B: 96, 0x20B: 112}  # without any data directory

ReadPage = Callable[[int], Optional[bytes]]  # address -> 4096 bytes, or None if unreadable

IMAGE_DIRECTORY_ENTRY_DEBUG = 6
IMAGE_DEBUG_TYPE_CODEVIEW = 2
DEBUG_DIRECTORY = struct.Struct("<IIHHIIII")
SECTION_HEADER = struct.Struct("<8sIIIIIIHHI")
assert DEBUG_DIRECTORY.size == 28 and SECTION_HEADER.size == 40


@dataclass(frozen=True)
class HeaderFacts:
    """What the header page says, once it has passed the validity checks."""

    e_lfanew: int
    machine: int
    number_of_sections: int
    timestamp: int
    characteristics: int
    magic: int
    size_of_image: int
    size_of_headers: int
    subsystem: int
    section_table: int  # offset of the first section header inside the image


@dataclass
class PeImage:
    """One PE image found in memory and what could be read of it."""

    address: int
    machine: int
    machine_name: str
    image_size: int
    timestamp: int
    subsystem: int
    subsystem_name: str
    magic: str
    pages_read: int = 0
    pages_total: int = 0
    pdb_name: Optional[str] = None
    pdb_guid: Optional[str] = None
    pdb_age: Optional[int] = None
    original_filename: Optional[str] = None
    notes: List[str] = field(default_factory=list)

    @property
    def timestamp_datetime(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.timestamp, datetime.timezone.utc)


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def check_header(page: bytes) -> Optional[HeaderFacts]:
    """The header facts if ``page`` (the first page of a candidate) holds a valid PE header.

    Everything the header checks need must sit in this page, as it does for every image
    a Windows loader maps (SizeOfHeaders is at most one page in practice).
    """
    if len(page) < 0x40 or page[:2] != b"MZ":
        return None
    (e_lfanew,) = struct.unpack_from("<I", page, 0x3C)
    if e_lfanew < 0x40 or e_lfanew % 4 or e_lfanew + 24 + 2 > len(page):
        return None
    if page[e_lfanew : e_lfanew + 4] != b"PE\0\0":
        return None
    (
        machine,
        sections,
        timestamp,
        _symbols_pointer,
        _symbols,
        optional_size,
        characteristics,
    ) = struct.unpack_from("<HHIIIHH", page, e_lfanew + 4)
    if machine not in pefile.MACHINE_TYPE or machine == 0:
        return None
    if not 0 < sections <= MAX_SECTIONS:
        return None
    if not characteristics & 0x0002:  # IMAGE_FILE_EXECUTABLE_IMAGE
        return None
    optional = e_lfanew + 24
    (magic,) = struct.unpack_from("<H", page, optional)
    if magic not in OPTIONAL_MAGIC or not (
        OPTIONAL_MINIMUM[magic] <= optional_size <= OPTIONAL_SIZE[magic]
        and (optional_size - OPTIONAL_MINIMUM[magic]) % 8 == 0
    ):
        return None
    section_table = optional + optional_size
    if section_table + sections * SECTION_HEADER.size > len(page):
        return None
    section_alignment, file_alignment = struct.unpack_from("<II", page, optional + 32)
    size_of_image, size_of_headers = struct.unpack_from("<II", page, optional + 56)
    (subsystem,) = struct.unpack_from("<H", page, optional + 68)
    (directories,) = struct.unpack_from("<I", page, optional + OPTIONAL_MINIMUM[magic] - 4)
    if directories > 16 or OPTIONAL_MINIMUM[magic] + 8 * directories != optional_size:
        return None
    if not (_power_of_two(section_alignment) and _power_of_two(file_alignment)):
        return None
    if file_alignment > section_alignment or (
        file_alignment < 0x200 and (file_alignment != section_alignment)
    ):
        return None
    if not (section_table + sections * SECTION_HEADER.size <= size_of_headers <= size_of_image):
        return None
    if size_of_image > MAX_IMAGE_SIZE:
        return None
    # Every section must lie inside the image.
    for number in range(sections):
        header = SECTION_HEADER.unpack_from(page, section_table + number * SECTION_HEADER.size)
        virtual_size, virtual_address = header[1], header[2]
        if virtual_address < size_of_headers and virtual_size:
            return None
        if virtual_address + virtual_size > size_of_image + section_alignment:
            return None
    return HeaderFacts(
        e_lfanew=e_lfanew,
        machine=machine,
        number_of_sections=sections,
        timestamp=timestamp,
        characteristics=characteristics,
        magic=magic,
        size_of_image=size_of_image,
        size_of_headers=size_of_headers,
        subsystem=subsystem,
        section_table=section_table,
    )


def _as_file_layout(image: bytearray, facts: HeaderFacts) -> None:
    """Rewrite section headers so that pefile's file offsets equal RVAs."""
    for number in range(facts.number_of_sections):
        at = facts.section_table + number * SECTION_HEADER.size
        fields = list(SECTION_HEADER.unpack_from(image, at))
        virtual_size, virtual_address, raw_size = fields[1], fields[2], fields[3]
        size = min(max(virtual_size, raw_size), max(0, len(image) - virtual_address))
        fields[3] = size  # SizeOfRawData
        fields[4] = virtual_address  # PointerToRawData
        SECTION_HEADER.pack_into(image, at, *fields)


def _fix_debug_entries(image: bytearray, pe: pefile.PE) -> None:
    """CodeView data is found through PointerToRawData: point it at the RVA."""
    directory = pe.OPTIONAL_HEADER.DATA_DIRECTORY
    if len(directory) <= IMAGE_DIRECTORY_ENTRY_DEBUG:
        return
    rva = directory[IMAGE_DIRECTORY_ENTRY_DEBUG].VirtualAddress
    size = directory[IMAGE_DIRECTORY_ENTRY_DEBUG].Size
    if not rva or rva + size > len(image):
        return
    for at in range(rva, rva + size - DEBUG_DIRECTORY.size + 1, DEBUG_DIRECTORY.size):
        fields = list(DEBUG_DIRECTORY.unpack_from(image, at))
        if fields[6]:  # AddressOfRawData
            fields[7] = fields[6]
            DEBUG_DIRECTORY.pack_into(image, at, *fields)


def _text(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode("utf-8", "replace")


def _codeview(pe: pefile.PE) -> Optional[Tuple[str, str, int]]:
    for entry in getattr(pe, "DIRECTORY_ENTRY_DEBUG", []):
        if entry.struct.Type != IMAGE_DEBUG_TYPE_CODEVIEW or entry.entry is None:
            continue
        cv = entry.entry
        if getattr(cv, "CvSignature", None) != b"RSDS":
            continue
        raw = struct.pack(
            "<IHHBB6s",
            cv.Signature_Data1,
            cv.Signature_Data2,
            cv.Signature_Data3,
            cv.Signature_Data4,
            cv.Signature_Data5,
            cv.Signature_Data6,
        )
        guid = str(uuid.UUID(bytes_le=raw)).upper()
        return _text(cv.PdbFileName), guid, int(cv.Age)
    return None


def _original_filename(pe: pefile.PE) -> Optional[str]:
    for file_info in getattr(pe, "FileInfo", None) or []:
        for entry in file_info:
            for table in getattr(entry, "StringTable", None) or []:
                value = table.entries.get(b"OriginalFilename")
                if value:
                    return value.decode("utf-8", "replace")
    return None


def parse_mapped_image(read_page: ReadPage, address: int, header_page: bytes) -> Optional[PeImage]:
    """Parse the image at ``address`` from memory; None if the header is not a PE header.

    ``read_page(va_or_gpa)`` returns the 4096 bytes of a page or None when the page
    cannot be read (a hole, a missing block, a paged-out page); such pages read as zeros
    and are left out of ``pages_read``.
    """
    facts = check_header(header_page)
    if facts is None:
        return None
    pages_total = (facts.size_of_image + PAGE_SIZE - 1) // PAGE_SIZE
    image = bytearray(pages_total * PAGE_SIZE)
    image[:PAGE_SIZE] = header_page[:PAGE_SIZE]
    pages_read = 1
    missing: List[int] = []
    for number in range(1, pages_total):
        page = read_page(address + number * PAGE_SIZE)
        if page is None:
            missing.append(number)
            continue
        image[number * PAGE_SIZE : (number + 1) * PAGE_SIZE] = page
        pages_read += 1
    result = PeImage(
        address=address,
        machine=facts.machine,
        machine_name=pefile.MACHINE_TYPE.get(facts.machine, f"{facts.machine:#x}").replace(
            "IMAGE_FILE_MACHINE_", ""
        ),
        image_size=facts.size_of_image,
        timestamp=facts.timestamp,
        subsystem=facts.subsystem,
        subsystem_name=pefile.SUBSYSTEM_TYPE.get(facts.subsystem, str(facts.subsystem)).replace(
            "IMAGE_SUBSYSTEM_", ""
        ),
        magic=OPTIONAL_MAGIC[facts.magic],
        pages_read=pages_read,
        pages_total=pages_total,
    )
    if missing:
        shown = ", ".join(f"{n * PAGE_SIZE:#x}" for n in missing[:8])
        result.notes.append(
            f"{len(missing)} page(s) unreadable at RVA {shown}{' ...' if len(missing) > 8 else ''}"
        )
    _as_file_layout(image, facts)
    try:
        headers = pefile.PE(data=bytes(image), fast_load=True)
        _fix_debug_entries(image, headers)
        headers.close()
        pe = pefile.PE(data=bytes(image), fast_load=True)
        pe.parse_data_directories(
            directories=[
                pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_DEBUG"],
                pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_RESOURCE"],
            ]
        )
    except (pefile.PEFormatError, ValueError, struct.error, IndexError) as error:
        result.notes.append(f"pefile: {error}")
        return result
    try:
        codeview = _codeview(pe)
        if codeview is not None:
            result.pdb_name, result.pdb_guid, result.pdb_age = codeview
        result.original_filename = _original_filename(pe)
    except (pefile.PEFormatError, ValueError, struct.error, IndexError, AttributeError) as error:
        result.notes.append(f"pefile: {error}")
    finally:
        pe.close()
    return result


def candidate_offsets(chunk: bytes, base: int) -> Iterator[int]:
    """Page-aligned addresses inside ``chunk`` (which starts at page-aligned ``base``)
    whose page starts with ``MZ``."""
    for position in range((-base) % PAGE_SIZE, len(chunk) - 1, PAGE_SIZE):
        if chunk[position : position + 2] == b"MZ":
            yield base + position


def scan_regions(
    read_chunk: Callable[[int, int], Tuple[bytes, Sequence[Tuple[int, int]]]],
    read_page: ReadPage,
    regions: Sequence[Tuple[int, int]],
    *,
    chunk_size: int = 0x100000,
    progress: Optional[Callable[[float, str], None]] = None,
) -> Iterator[PeImage]:
    """Scan ``regions`` ((start, end) pairs, page-aligned) for PE images.

    ``read_chunk(address, size)`` returns the bytes (unreadable parts as zeros) and the
    unreadable (address, length) spans - the shape of ``read_physical_padded``.
    """
    total = sum(end - start for start, end in regions) or 1
    done = 0
    for start, end in regions:
        address = start
        while address < end:
            size = min(chunk_size, end - address)
            if progress is not None:
                progress(100.0 * done / total, f"Scanning for PE images at {address:#x}")
            data, _missing = read_chunk(address, size)
            for candidate in candidate_offsets(data, address):
                offset = candidate - address
                header = data[offset : offset + PAGE_SIZE]
                if len(header) < PAGE_SIZE:
                    page = read_page(candidate)
                    if page is None:
                        continue
                    header = page
                if check_header(header) is None:
                    continue
                image = parse_mapped_image(read_page, candidate, header)
                if image is not None:
                    yield image
            address += size
            done += size
    if progress is not None:
        progress(100.0, "Scanning for PE images")


def scan_guest_memory(memory, progress=None) -> Iterator[PeImage]:
    """Scan the saved guest RAM (a :class:`~.memory.PageReader`) in physical space."""

    def read_page(gpa: int) -> Optional[bytes]:
        data, missing = memory.read_physical_padded(gpa, PAGE_SIZE)
        return None if missing else data

    regions = [(start, start + length) for start, length in memory.map.readable_runs()]
    return scan_regions(memory.read_physical_padded, read_page, regions, progress=progress)
