"""The synthetic kernel's PE image: headers, section table, debug directory, CodeView.

Layouts come from volatility3's ``pe`` table; the CodeView RSDS record carries the PDB
name, GUID and age of the kernel ISF, which is how Volatility's PDB scan recognises the
kernel and picks that ISF. Only the pieces are built, not the sections' contents.
"""

from __future__ import annotations

import uuid
from typing import List, Tuple

from tests.support.windows_content import KERNEL_BASE, PE_TIMESTAMP, SIZE_OF_IMAGE
from tests.support.windows_isf import Isf

PAGE = 0x1000
# The kernel image's sections: (name, rva, virtual size); symbol RVAs must fall inside.
SECTIONS = (
    (".rdata", 0x1000, 0x1000),
    (".text", 0x2000, 0x5FE000),
    ("KVASCODE", 0xA24000, 0x1000),
    (".data", 0xC00000, 0x300000),
)
E_LFANEW = 0x108
DEBUG_DIRECTORY_RVA = 0x1100
CODEVIEW_RVA = 0x1200
IMAGE_DEBUG_TYPE_CODEVIEW = 2
CODE, DATA = 0x68000020, 0xC8000040  # section characteristics
DOS_STUB = b"\x0e\x1f\xba\x0e\x00\xb4\x09\xcd\x21\xb8\x01\x4c\xcd\x21"  # print, exit


def codeview(kernel: Isf) -> bytes:
    """The RSDS record naming the kernel ISF's PDB (GUID in its on-disk byte order)."""
    pdb = kernel.pdb
    guid = uuid.UUID(hex=pdb["GUID"]).bytes_le
    age = int(pdb["age"]).to_bytes(4, "little")
    return b"RSDS" + guid + age + pdb["database"].encode() + b"\0"


def headers(kernel: Isf, pe: Isf) -> bytes:
    """The header page: DOS header and stub, NT headers (PE32+), section table."""
    dos = pe.struct("_IMAGE_DOS_HEADER")
    dos.set("e_magic", 0x5A4D)
    dos.set("e_lfanew", E_LFANEW)
    nt = pe.struct("_IMAGE_NT_HEADERS64")
    nt.set("Signature", 0x4550)
    nt.set("FileHeader.Machine", kernel.pdb["machine_type"])
    nt.set("FileHeader.NumberOfSections", len(SECTIONS))
    nt.set("FileHeader.TimeDateStamp", PE_TIMESTAMP)
    nt.set("FileHeader.SizeOfOptionalHeader", pe.size("_IMAGE_OPTIONAL_HEADER64"))
    nt.set("FileHeader.Characteristics", 0x22)  # executable, large-address aware
    nt.set("OptionalHeader.Magic", 0x20B)
    nt.set("OptionalHeader.ImageBase", KERNEL_BASE)
    nt.set("OptionalHeader.SectionAlignment", PAGE)
    nt.set("OptionalHeader.FileAlignment", 0x200)
    nt.set("OptionalHeader.MajorOperatingSystemVersion", 10)
    nt.set("OptionalHeader.MinorOperatingSystemVersion", 0)
    nt.set("OptionalHeader.MajorSubsystemVersion", 10)
    nt.set("OptionalHeader.SizeOfImage", SIZE_OF_IMAGE)
    nt.set("OptionalHeader.SizeOfHeaders", PAGE)
    nt.set("OptionalHeader.Subsystem", 1)  # native
    nt.set("OptionalHeader.NumberOfRvaAndSizes", 16)
    nt.set("OptionalHeader.DataDirectory.6.VirtualAddress", DEBUG_DIRECTORY_RVA)
    nt.set("OptionalHeader.DataDirectory.6.Size", pe.size("_IMAGE_DEBUG_DIRECTORY"))
    table = b""
    for name, rva, size in SECTIONS:
        section = pe.struct("_IMAGE_SECTION_HEADER")
        section.set("Name", name.encode())
        section.set("Misc.VirtualSize", size)
        section.set("VirtualAddress", rva)
        section.set("SizeOfRawData", size)
        section.set("PointerToRawData", rva)
        section.set("Characteristics", CODE if name in (".text", "KVASCODE") else DATA)
        table += bytes(section)
    page = bytearray(PAGE)
    page[: len(dos.data)] = dos.data
    page[len(dos.data) : len(dos.data) + len(DOS_STUB)] = DOS_STUB
    page[E_LFANEW : E_LFANEW + len(nt.data)] = nt.data
    start = E_LFANEW + len(nt.data)
    page[start : start + len(table)] = table
    return bytes(page)


def kernel_image_pieces(kernel: Isf, pe: Isf) -> List[Tuple[int, bytes]]:
    """(rva, bytes) of the headers, the debug directory and the CodeView record."""
    record = codeview(kernel)
    debug = pe.struct("_IMAGE_DEBUG_DIRECTORY")
    debug.set("TimeDateStamp", PE_TIMESTAMP)
    debug.set("Type", IMAGE_DEBUG_TYPE_CODEVIEW)
    debug.set("SizeOfData", len(record))
    debug.set("AddressOfRawData", CODEVIEW_RVA)
    debug.set("PointerToRawData", CODEVIEW_RVA)
    return [
        (0, headers(kernel, pe)),
        (DEBUG_DIRECTORY_RVA, bytes(debug)),
        (CODEVIEW_RVA, record),
    ]
