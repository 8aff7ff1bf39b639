"""Guest-virtual -> guest-physical translation, independent of any file.

:func:`translate` walks x86 page tables through a caller-supplied ``read(gpa, size)``
callable: 32-bit paging (4 KiB and 4 MiB pages; PSE and PSE-36 assumed), PAE (4 KiB,
2 MiB), 4-level long mode (4 KiB, 2 MiB, 1 GiB) and 5-level long mode (``la57=True``).
The DLL's ``GuestVirtualAddressToPhysicalAddress`` does this walk for a VP.

Rules:

* CR3 is masked here, so callers may pass the raw register: PCID / PWT / PCD in the low
  12 bits and bit 63 in long mode, bits 4:0 in PAE mode, bits 11:0 in 32-bit mode.
* Entries' physical-address fields are masked to 52 bits (MAXPHYADDR M = 52); reserved
  bits are ignored, as is the accessed/dirty state.
* A non-present entry raises :class:`PageNotPresentError` (a ``VaNotMappedError``) with
  ``level`` (its name), ``unmapped_size`` (the size of the region that entry maps, the
  DLL's unmappedRegionSize) and ``steps`` (the entries read so far, the failing one
  last). A non-canonical long-mode address raises it with level :data:`NON_CANONICAL`
  (bits 63 down to 47, or to 56 with 5-level paging, must all equal that top bit).
* A failing read of a paging structure propagates the caller's exception unchanged; a
  short read raises :class:`~.errors.MemoryReadError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from .errors import InvalidArgumentError, MemoryReadError, VaNotMappedError
from .types import PAGING_MODE

ReadFunction = Callable[[int, int], bytes]

PHYSICAL_ADDRESS_BITS = 52  # MAXPHYADDR of x64
PHYSICAL_ADDRESS_MASK = (1 << PHYSICAL_ADDRESS_BITS) - 1
FRAME_MASK_64 = PHYSICAL_ADDRESS_MASK & ~0xFFF  # bits 51:12 of a 64-bit entry
NON_CANONICAL = "non-canonical"  # PageNotPresentError.level of an address in the hole

__all__ = [
    "NON_CANONICAL",
    "PageFlags",
    "PageNotPresentError",
    "PagingStep",
    "Translation",
    "dtb_from_cr3",
    "translate",
]


@dataclass(frozen=True)
class PageFlags:
    """The architectural flag bits of one paging-structure entry."""

    present: bool
    rw: bool
    user: bool
    pwt: bool
    pcd: bool
    accessed: bool
    dirty: bool
    ps: bool  # only meaningful where the level allows large pages
    global_: bool
    nx: bool

    @classmethod
    def decode(cls, value: int, *, ps_allowed: bool, has_nx: bool) -> PageFlags:
        return cls(
            present=bool(value & 1),
            rw=bool(value >> 1 & 1),
            user=bool(value >> 2 & 1),
            pwt=bool(value >> 3 & 1),
            pcd=bool(value >> 4 & 1),
            accessed=bool(value >> 5 & 1),
            dirty=bool(value >> 6 & 1),
            ps=ps_allowed and bool(value >> 7 & 1),
            global_=bool(value >> 8 & 1),
            nx=has_nx and bool(value >> 63 & 1),
        )


@dataclass(frozen=True)
class PagingStep:
    """One entry read during a walk."""

    level_name: str
    entry_address: int
    entry_value: int
    flags: PageFlags


@dataclass(frozen=True)
class Translation:
    va: int
    gpa: int
    page_size: int
    mode: PAGING_MODE
    steps: Tuple[PagingStep, ...] = field(default_factory=tuple)

    @property
    def page_base(self) -> int:
        return self.gpa - self.gpa % self.page_size if self.page_size else self.gpa

    @property
    def writable(self) -> bool:
        return all(s.flags.rw for s in self._permission_steps)

    @property
    def user(self) -> bool:
        return all(s.flags.user for s in self._permission_steps)

    @property
    def executable(self) -> bool:
        return not any(s.flags.nx for s in self.steps)

    @property
    def _permission_steps(self) -> Sequence[PagingStep]:
        # PAE PDPTEs carry no RW/US bits; they do not restrict access.
        return [
            s
            for s in self.steps
            if not (self.mode == PAGING_MODE.Paging_Pae and s.level_name == "PDPTE")
        ]


class PageNotPresentError(VaNotMappedError):
    """VA_NOT_MAPPED with the walk so far: ``steps`` ends with the non-present entry."""

    def __init__(
        self,
        message: str,
        *,
        level: str,
        unmapped_size: int,
        va: int,
        region_start: int,
        steps: Sequence[PagingStep] = (),
    ) -> None:
        super().__init__(message, level=level, unmapped_size=unmapped_size)
        self.va = va
        # Start of the unmapped region: the aligned block the entry would have mapped,
        # or the start of the non-canonical hole. A scanner resumes at start + size.
        self.region_start = region_start
        self.steps: Tuple[PagingStep, ...] = tuple(steps)


@dataclass(frozen=True)
class _Level:
    name: str
    shift: int
    index_bits: int
    entry_size: int
    large_page: bool  # PS honoured here


_LEVELS_32 = (_Level("PDE", 22, 10, 4, True), _Level("PTE", 12, 10, 4, False))
_LEVELS_PAE = (
    _Level("PDPTE", 30, 2, 8, False),
    _Level("PDE", 21, 9, 8, True),
    _Level("PTE", 12, 9, 8, False),
)
_LEVELS_LONG = (
    _Level("PML4E", 39, 9, 8, False),
    _Level("PDPTE", 30, 9, 8, True),
    _Level("PDE", 21, 9, 8, True),
    _Level("PTE", 12, 9, 8, False),
)
_LEVELS_LA57 = (_Level("PML5E", 48, 9, 8, False), *_LEVELS_LONG)


def dtb_from_cr3(mode: PAGING_MODE, cr3: int) -> int:
    """The top paging structure's address from a raw CR3 value."""
    if mode == PAGING_MODE.Paging_Long:
        return cr3 & FRAME_MASK_64  # PCID/PWT/PCD and bit 63 dropped
    if mode == PAGING_MODE.Paging_Pae:
        return cr3 & 0xFFFFFFE0
    if mode == PAGING_MODE.Paging_32Bit:
        return cr3 & 0xFFFFF000
    raise InvalidArgumentError(f"{mode!r} has no page-table root")


def _read_entry(read: ReadFunction, address: int, size: int) -> int:
    data = read(address, size)
    if len(data) != size:
        raise MemoryReadError(
            f"paging structure at {address:#x}: read {len(data)} of {size} bytes",
            address=address,
        )
    return int.from_bytes(data, "little")


def translate(
    read: ReadFunction, mode: PAGING_MODE, cr3: int, va: int, *, la57: bool = False
) -> Translation:
    """Translate ``va`` to a guest-physical address with the given paging state.

    ``Paging_NonPaged`` maps identically. ``Paging_Invalid`` and ``Paging_Armv8`` raise
    InvalidArgumentError (AArch64 walks are not implemented).
    """
    mode = PAGING_MODE(mode)
    if va < 0 or va >> 64:
        raise InvalidArgumentError(f"virtual address {va:#x} is not a 64-bit value")
    if mode == PAGING_MODE.Paging_NonPaged:
        return Translation(va, va, 0, mode)
    if mode == PAGING_MODE.Paging_32Bit:
        levels: Sequence[_Level] = _LEVELS_32
    elif mode == PAGING_MODE.Paging_Pae:
        levels = _LEVELS_PAE
    elif mode == PAGING_MODE.Paging_Long:
        levels = _LEVELS_LA57 if la57 else _LEVELS_LONG
    else:
        raise InvalidArgumentError(f"cannot translate in {mode.name}")

    if mode == PAGING_MODE.Paging_Long:
        _check_canonical(va, 57 if la57 else 48)
    elif va >> 32:
        raise InvalidArgumentError(f"{va:#x} is wider than 32 bits ({mode.name})")

    is64 = levels[0].entry_size == 8
    table = dtb_from_cr3(mode, cr3)
    steps: List[PagingStep] = []
    for level in levels:
        index = va >> level.shift & ((1 << level.index_bits) - 1)
        address = table + index * level.entry_size
        value = _read_entry(read, address, level.entry_size)
        # NX exists in PAE and long-mode entries (if EFER.NXE; we report the bit as is).
        flags = PageFlags.decode(value, ps_allowed=level.large_page, has_nx=is64)
        steps.append(PagingStep(level.name, address, value, flags))
        size = 1 << level.shift
        if not flags.present:
            raise PageNotPresentError(
                f"{va:#x}: {level.name} at {address:#x} not present",
                level=level.name,
                unmapped_size=size,
                va=va,
                region_start=va & ~(size - 1),
                steps=steps,
            )
        if flags.ps or level.shift == 12:
            base = _frame(value, level, is64)
            return Translation(va, base | (va & (size - 1)), size, mode, tuple(steps))
        table = value & FRAME_MASK_64 if is64 else value & 0xFFFFF000
    raise AssertionError("unreachable: the last level always maps a page")


def _frame(value: int, level: _Level, is64: bool) -> int:
    """Physical base of the page a leaf entry maps."""
    offset_mask = (1 << level.shift) - 1
    if is64:
        return value & PHYSICAL_ADDRESS_MASK & ~offset_mask
    if level.shift == 22:
        # 32-bit 4 MiB page: bits 31:22 plus PSE-36 bits 20:13 -> PA bits 39:32.
        return (value & 0xFFC00000) | (value >> 13 & 0xFF) << 32
    return value & 0xFFFFF000


def _check_canonical(va: int, width: int) -> None:
    top = va >> (width - 1)
    if top in (0, (1 << (65 - width)) - 1):
        return
    # The non-canonical hole: from 2^(w-1) up to the first canonical high address.
    hole_start = 1 << (width - 1)
    hole_size = (1 << 64) - (1 << width)
    top_bit = width - 1
    raise PageNotPresentError(
        f"{va:#x} is not canonical: bits 63:{top_bit} must all equal bit {top_bit} "
        f"({width}-bit virtual addresses, {5 if width == 57 else 4}-level paging)",
        level=NON_CANONICAL,
        unmapped_size=hole_size,
        va=va,
        region_start=hole_start,
    )


def walk_levels(mode: PAGING_MODE, *, la57: bool = False) -> Optional[Tuple[str, ...]]:
    """Names of the paging levels of ``mode``, top first (None without paging)."""
    if mode == PAGING_MODE.Paging_32Bit:
        return tuple(lv.name for lv in _LEVELS_32)
    if mode == PAGING_MODE.Paging_Pae:
        return tuple(lv.name for lv in _LEVELS_PAE)
    if mode == PAGING_MODE.Paging_Long:
        return tuple(lv.name for lv in (_LEVELS_LA57 if la57 else _LEVELS_LONG))
    return None
