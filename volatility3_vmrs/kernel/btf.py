"""Find the kernel's own BTF blob (``.BTF``, CONFIG_DEBUG_INFO_BTF) in guest-physical memory.

The blob starts with ``struct btf_header``: magic 0xEB9F (little-endian), version 1,
flags, hdr_len 24, then type_off/type_len/str_off/str_len relative to the header's end.
vmlinux's blob sits in the kernel image, which is physically contiguous, so it is read
in one piece. Module BTF (split BTF, in vmalloc memory) has the same header but is far
smaller; the largest sane blob is the kernel's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from volatility3_vmrs.kernel.memory import PhysicalMemory
from volatility3_vmrs.savedstate.structs import Layout

BTF_HEADER = Layout(
    "struct btf_header",
    (
        ("magic", "H"),
        ("version", "B"),
        ("flags", "B"),
        ("hdr_len", "I"),
        ("type_off", "I"),
        ("type_len", "I"),
        ("str_off", "I"),
        ("str_len", "I"),
    ),
)
BTF_TYPE = Layout("struct btf_type", (("name_off", "I"), ("info", "I"), ("size_type", "I")))
BTF_MAGIC = 0xEB9F
BTF_HEADER_LEN = BTF_HEADER.size
# magic, version 1, flags 0, hdr_len 24, type_off 0: what every kernel's blob starts with
BTF_NEEDLE = BTF_HEADER.pack(
    magic=BTF_MAGIC,
    version=1,
    flags=0,
    hdr_len=BTF_HEADER_LEN,
    type_off=0,
    type_len=0,
    str_off=0,
    str_len=0,
)[:12]
MAX_BTF_SIZE = 128 << 20
MIN_VMLINUX_BTF_SIZE = 64 << 10
BTF_KIND_MAX = 19


@dataclass(frozen=True)
class BtfBlob:
    """The kernel's BTF as found: its guest-physical address and bytes."""

    gpa: int
    data: bytes


def btf_size(header: bytes) -> Optional[int]:
    """Total blob size if ``header`` (24+ bytes) is a sane vmlinux BTF header, else None."""
    if len(header) < BTF_HEADER.size:
        return None
    h = BTF_HEADER.unpack(header)
    if (h.magic, h.version, h.flags, h.hdr_len, h.type_off) != (BTF_MAGIC, 1, 0, BTF_HEADER_LEN, 0):
        return None
    if not BTF_TYPE.size <= h.type_len <= MAX_BTF_SIZE or not 1 <= h.str_len <= MAX_BTF_SIZE:
        return None
    if h.str_off != h.type_len:  # pahole writes the type section, then the strings
        return None
    total = h.hdr_len + h.str_off + h.str_len
    if not MIN_VMLINUX_BTF_SIZE <= total <= MAX_BTF_SIZE:
        return None
    return total


def _looks_like_btf(data: bytes) -> bool:
    """First type record and the string section of a candidate blob are plausible."""
    header = BTF_HEADER.unpack(data)
    strings_at = header.hdr_len + header.str_off
    if data[strings_at : strings_at + 1] != b"\0":  # string offset 0 is the empty name
        return False
    kind = (BTF_TYPE.unpack(data, header.hdr_len).info >> 24) & 0x1F
    return 1 <= kind <= BTF_KIND_MAX and data[-1:] == b"\0"


def find_btf(memory: PhysicalMemory, candidates: List[int]) -> Optional[BtfBlob]:
    """The largest sane BTF blob among the header ``candidates`` (guest-physical addresses)."""
    best: Optional[BtfBlob] = None
    best_size = 0
    for gpa in candidates:
        size = btf_size(memory.read(gpa, BTF_HEADER.size))
        if size is None or size <= best_size:
            continue
        data = memory.read(gpa, size)
        if _looks_like_btf(data):
            best, best_size = BtfBlob(gpa, data), size
    return best
