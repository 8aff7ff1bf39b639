"""The Windows kernel's debugger data block (KDBG) in a crash dump, decoded.

A crash dump's header names the kernel's ``KdDebuggerDataBlock``, ``PsActiveProcessHead``
and ``PsLoadedModuleList`` (:class:`KernelAddresses`, absolute kernel virtual addresses
taken from the kernel's symbols). WinDbg then reads the block itself from the dumped
memory and expects it in clear.

Since Windows 8 (x64), a kernel booted without a debugger keeps the block encoded: the
byte ``KdpDataBlockEncoded`` is nonzero and every 64-bit word ``w`` of the block is
stored as ``never ^ ror64(bswap64(w ^ always) ^ key, never % 64)``, where ``never``
and ``always`` are the values of ``KiWaitNever`` / ``KiWaitAlways`` and ``key`` the
address of ``KdpDataBlockEncoded``. Before it writes a dump, the kernel decodes the
block in place and sets ``KdpDataBlockEncoded`` to 0 (``KdDecodeDataBlock``, called
on bug check and for live dumps); :func:`kdbg_patches` does the same to the exported
copy. It reads the block's header through the kernel's page tables
(:class:`KernelSpace`); a header without the ``KDBG`` tag and a nonzero flag mean
encoded: it reads the keys, decodes the header first, checks its ``OwnerTag`` is
``KDBG`` and its ``Size`` sane (a multiple of 8, at most :data:`MAX_KDBG_SIZE`),
decodes ``Size`` bytes, and returns them (and the flag's 0) as patches to write at
their guest-physical addresses instead of the saved bytes. Everything else of the dump
stays the saved memory. A block in clear is copied as is; a block whose decoded header
does not look right is copied as is too, with a note saying why (wrong symbols, a
guest that changed the keys). The encoding is known for 64-bit kernels only: a 32-bit
guest's block is copied as is.

No Volatility import (like the rest of :mod:`volatility3_vmrs.export`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple

from volatility3_vmrs.savedstate import SavedStateDump, VmrsError
from volatility3_vmrs.savedstate.paging import translate
from volatility3_vmrs.savedstate.structs import Layout
from volatility3_vmrs.savedstate.types import PAGING_MODE

from .writer import Patch

PAGE = 0x1000
MASK64 = (1 << 64) - 1
KDBG_HEADER = Layout(
    "DBGKD_DEBUG_DATA_HEADER64",
    (("Flink", "Q"), ("Blink", "Q"), ("OwnerTag", "4s"), ("Size", "I")),
)
OWNER_TAG = b"KDBG"
MAX_KDBG_SIZE = 0x1000  # the block is under 1 KiB on every released kernel


@dataclass(frozen=True)
class KernelSpace:
    """The page tables kernel addresses are read through: a DTB and its paging mode."""

    dtb: int
    mode: PAGING_MODE
    la57: bool = False

    def physical(self, dump: SavedStateDump, va: int) -> int:
        """The GPA of ``va``; raises a VmrsError (VaNotMappedError...) when unmapped."""
        return translate(dump.read_physical, self.mode, self.dtb, va, la57=self.la57).gpa

    def pieces(self, dump: SavedStateDump, va: int, size: int) -> List[Tuple[int, int]]:
        """``[va, va + size)`` as (gpa, length) pieces, one per page touched."""
        out = []
        while size > 0:
            length = min(size, PAGE - va % PAGE)
            out.append((self.physical(dump, va), length))
            va += length
            size -= length
        return out

    def read(self, dump: SavedStateDump, va: int, size: int) -> bytes:
        data = b"".join(dump.read_physical(gpa, n) for gpa, n in self.pieces(dump, va, size))
        if len(data) != size:
            raise VmrsError(f"short read of {size} bytes at {va:#x}")
        return data


@dataclass(frozen=True)
class KernelAddresses:
    """Kernel virtual addresses of the symbols a crash dump needs (0: unknown).

    The first three go into the header; the last three let the KDBG be decoded.
    ``space`` is how to read them (None: through the exported VP's own CR3).
    """

    kd_debugger_data_block: int = 0
    ps_active_process_head: int = 0
    ps_loaded_module_list: int = 0
    kdp_data_block_encoded: int = 0
    ki_wait_never: int = 0
    ki_wait_always: int = 0
    space: Optional[KernelSpace] = None

    @property
    def known(self) -> bool:
        return bool(
            self.kd_debugger_data_block or self.ps_active_process_head or self.ps_loaded_module_list
        )

    @property
    def decodable(self) -> bool:
        return bool(
            self.kd_debugger_data_block
            and self.kdp_data_block_encoded
            and self.ki_wait_never
            and self.ki_wait_always
        )


def _u64(data: bytes) -> int:
    return int.from_bytes(data, "little")


def decode_block(data: bytes, never: int, always: int, key: int) -> bytes:
    """Undo the kernel's encoding of the 64-bit words of ``data`` (see the module doc)."""
    rotate = never % 64
    out = bytearray()
    for (word,) in struct.iter_unpack("<Q", data):
        value = word ^ never
        value = ((value << rotate) | (value >> (64 - rotate))) & MASK64
        value ^= key
        value = int.from_bytes(value.to_bytes(8, "little"), "big")  # bswap64
        out += struct.pack("<Q", value ^ always)
    return bytes(out)


def _header_problem(header: bytes) -> Optional[str]:
    fields = KDBG_HEADER.unpack(header)
    tag, size = fields.OwnerTag, fields.Size
    if tag != OWNER_TAG:
        return f"its decoded header has the tag {tag!r}, not {OWNER_TAG!r}"
    if not KDBG_HEADER.size < size <= MAX_KDBG_SIZE or size % 8:
        return (
            f"its decoded header gives the size {size:#x} "
            f"(expected a multiple of 8 up to {MAX_KDBG_SIZE:#x})"
        )
    return None


def kdbg_patches(
    dump: SavedStateDump, kernel: KernelAddresses, space: KernelSpace, *, is_64: bool
) -> Tuple[List[Patch], Optional[str]]:
    """The bytes that make the dump's KDBG decoded, and a note on what was done.

    No patches when the block is in clear (its header carries the ``KDBG`` tag), or
    when it cannot be decoded (the note says why); the export then copies the block as
    the guest holds it.
    """
    if not kernel.decodable:
        return [], None
    block = kernel.kd_debugger_data_block
    left = f"KdDebuggerDataBlock at {block:#x} left as the guest holds it"
    try:
        stored = space.read(dump, block, KDBG_HEADER.size)
        if KDBG_HEADER.unpack(stored).OwnerTag == OWNER_TAG:
            return [], None  # in clear
        if not space.read(dump, kernel.kdp_data_block_encoded, 1)[0]:
            return [], f"{left}: it has no {OWNER_TAG!r} tag, and KdpDataBlockEncoded is 0"
        if not is_64:
            return [], f"{left}: the encoding of a 32-bit kernel's block is not known here"
        never = _u64(space.read(dump, kernel.ki_wait_never, 8))
        always = _u64(space.read(dump, kernel.ki_wait_always, 8))
        key = kernel.kdp_data_block_encoded
        header = decode_block(stored, never, always, key)
        problem = _header_problem(header)
        if problem is not None:
            return [], f"{left}: {problem}; the symbols may not be this kernel's"
        size = KDBG_HEADER.unpack(header).Size
        plain = decode_block(space.read(dump, block, size), never, always, key)
        patches = []
        at = 0
        for gpa, length in space.pieces(dump, block, size):
            patches.append(Patch(gpa, plain[at : at + length]))
            at += length
        patches.append(Patch(space.physical(dump, kernel.kdp_data_block_encoded), b"\0"))
    except VmrsError as error:
        return [], f"{left}: {error}"
    note = (
        f"KdDebuggerDataBlock at {block:#x} decoded ({size:#x} bytes) and "
        "KdpDataBlockEncoded set to 0, as the kernel does before it writes a dump"
    )
    return patches, note
