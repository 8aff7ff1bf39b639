"""Where guest RAM lies: memory ranges, RamBlocks, what is missing. Built once, at open.

Layout (``vmrs-format.md`` §10):

* ``/savedstate/RamMemoryBlock%d`` (48 bytes, 40 in VM version 4.0 files) describes one
  contiguous guest-physical range and where its pages start in the "memory-block page"
  (MBP) sequence: ``mbp = mbp_index_start + (gpa_page - gpa_index_start)``.
* The MBP sequence is cut into 1 MiB ``/savedstate/RamBlock%d`` values. A value of
  exactly 1 MiB is raw memory; anything shorter is a stream of page records.

:class:`MemoryMap` is the immutable answer to every layout question (which range holds an
address, which blocks a range needs, which of them the file lacks). It is built in time
linear in the number of memory keys: a range may claim 2**32 blocks, so nothing here ever
visits every block number of a range. :func:`map_saved_state` builds it from a container;
the legacy ``.bin`` reader builds one from its own index.
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from . import paths
from .diagnostics import Diagnostics, Kind
from .errors import (
    GuestMemoryFormatError,
    GuestMemoryNotFoundError,
    MemoryReadError,
    UnsupportedVersionError,
)
from .paging import PHYSICAL_ADDRESS_BITS
from .storage import HyperVStorage, Key, KeyType, ValueEntry
from .structs import Layout

PAGE_SIZE = 0x1000
PAGE_SHIFT = 12
BLOCK_SIZE = 0x100000
PAGES_PER_BLOCK = BLOCK_SIZE // PAGE_SIZE
MAX_GPA_PAGE = 1 << (PHYSICAL_ADDRESS_BITS - PAGE_SHIFT)
MAX_RANGE_PAGES = 1 << 40  # Microsoft's limit above VM version 9.1 (§10.1)

# MEMORY_BLOCK_OBJECT_SAVE_STRUCT_CURRENT (§10.1).
RAM_MEMORY_BLOCK = Layout(
    "RamMemoryBlock",
    (
        ("saved_state_version", "I"),
        ("flags", "I"),
        ("page_count", "Q"),
        ("mbp_index_start", "Q"),
        ("gpa_index_start", "Q"),
        ("virtual_node", "I"),
        ("_padding", "I"),
        ("ksr_block_id", "Q"),
    ),
)
assert RAM_MEMORY_BLOCK.size == 48
# VM version 4.0 stores the same fields without ksr_block_id (UNVERIFIED layout).
RAM_MEMORY_BLOCK_V40 = Layout("RamMemoryBlock (40-byte form)", RAM_MEMORY_BLOCK.fields[:-1])
assert RAM_MEMORY_BLOCK_V40.size == 40
RAM_MEMORY_BLOCK_MAX_VERSION = 3
RAM_MEMORY_BLOCK_FLAGS = {
    0x1: "hot-added",
    0x2: "SGX",
    0x4: "VTL2",
    0x8: "specific-purpose",
}

_RAM_MEMORY_BLOCK_NAME = re.compile(r"RamMemoryBlock(\d+)\Z")
_MEMORY_KEY_PREFIXES = ("RamMemoryBlock", "RamBlock", "RamIndexStart", "RamVtlInfo")
_SHOWN_MISSING = 8


@dataclass(frozen=True)
class MemoryRange:
    """One RamMemoryBlock: a run of guest-physical pages and their place in saved RAM."""

    number: int
    key_path: str
    gpa_page: int
    page_count: int
    mbp_start: int
    flags: int = 0
    virtual_node: int = 0

    @property
    def gpa_start(self) -> int:
        return self.gpa_page << PAGE_SHIFT

    @property
    def gpa_end(self) -> int:
        """First address after the range."""
        return (self.gpa_page + self.page_count) << PAGE_SHIFT

    @property
    def first_block(self) -> int:
        return self.mbp_start // PAGES_PER_BLOCK

    @property
    def last_block(self) -> int:
        return (self.mbp_start + self.page_count - 1) // PAGES_PER_BLOCK

    @property
    def flag_names(self) -> List[str]:
        return [name for bit, name in RAM_MEMORY_BLOCK_FLAGS.items() if self.flags & bit]


class BlockLocation(NamedTuple):
    """Where the bytes of one 1 MiB RamBlock lie in the file (raw, or a page stream)."""

    number: int
    key_path: str
    offset: int  # file offset of the value
    size: int  # bytes stored: BLOCK_SIZE for a raw block, less for a page stream

    @property
    def is_raw(self) -> bool:
        return self.size == BLOCK_SIZE


@dataclass(frozen=True)
class Missing:
    """The RamBlocks a range needs that the file lacks: a count and the first few."""

    count: int
    first: Tuple[int, ...]

    def describe(self) -> str:
        shown = ", ".join(str(n) for n in self.first)
        return shown + (" ..." if self.count > len(self.first) else "")


@dataclass(frozen=True)
class MemoryMap:
    """The layout of saved guest RAM: ranges by GPA, the blocks the file holds."""

    ranges: Tuple[MemoryRange, ...]  # sorted by GPA, disjoint
    blocks: Mapping[int, BlockLocation]
    missing: Mapping[int, Missing] = field(default_factory=dict)  # by range number
    _range_starts: Tuple[int, ...] = field(init=False, repr=False)
    _block_numbers: Tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_range_starts", tuple(r.gpa_page for r in self.ranges))
        object.__setattr__(self, "_block_numbers", tuple(sorted(self.blocks)))

    # --- ranges -----------------------------------------------------------------------
    @property
    def total_pages(self) -> int:
        return sum(r.page_count for r in self.ranges)

    @property
    def raw_size(self) -> int:
        """Size of the raw saved memory (MBP byte space): end of the last range's pages.

        GetGuestRawSavedMemorySize has no public definition; this choice keeps every
        offset GuestPhysicalAddressToRawSavedMemoryOffset returns below the size.
        """
        return max((r.mbp_start + r.page_count for r in self.ranges), default=0) * PAGE_SIZE

    def range_of(self, gpa: int) -> Optional[MemoryRange]:
        page = gpa >> PAGE_SHIFT
        position = bisect.bisect_right(self._range_starts, page) - 1
        if position >= 0:
            memory_range = self.ranges[position]
            if page < memory_range.gpa_page + memory_range.page_count:
                return memory_range
        return None

    def is_mapped(self, gpa: int) -> bool:
        """Whether a range covers ``gpa`` (its block may still be missing)."""
        return self.range_of(gpa) is not None

    def gpa_to_raw_offset(self, gpa: int) -> int:
        memory_range = self.range_of(gpa)
        if memory_range is None:
            raise MemoryReadError(
                f"guest-physical address {gpa:#x} is in no saved memory range", address=gpa
            )
        return (
            (memory_range.mbp_start + (gpa >> PAGE_SHIFT) - memory_range.gpa_page) << PAGE_SHIFT
        ) | (gpa & (PAGE_SIZE - 1))

    def spans(self, gpa: int, size: int) -> Iterator[Tuple[int, int, Optional[int]]]:
        """Split ``[gpa, gpa+size)`` into (gpa, length, raw offset or None for a hole)."""
        end = gpa + size
        while gpa < end:
            memory_range = self.range_of(gpa)
            if memory_range is None:
                position = bisect.bisect_right(self._range_starts, gpa >> PAGE_SHIFT)
                next_start = self.ranges[position].gpa_start if position < len(self.ranges) else end
                length = min(end, max(next_start, gpa + 1)) - gpa
                yield gpa, length, None
            else:
                length = min(end, memory_range.gpa_end) - gpa
                raw = ((memory_range.mbp_start - memory_range.gpa_page) << PAGE_SHIFT) + gpa
                yield gpa, length, raw
            gpa += length

    # --- blocks -----------------------------------------------------------------------
    def block_span(self, memory_range: MemoryRange) -> range:
        """Every block number the range needs (a range object: it may be 2**32 long)."""
        return range(memory_range.first_block, memory_range.last_block + 1)

    def blocks_of(self, memory_range: MemoryRange) -> Tuple[int, ...]:
        """The block numbers of the range that the file holds, ascending."""
        lo = bisect.bisect_left(self._block_numbers, memory_range.first_block)
        hi = bisect.bisect_right(self._block_numbers, memory_range.last_block)
        return self._block_numbers[lo:hi]

    def missing_blocks(self, memory_range: MemoryRange) -> Missing:
        return self.missing.get(memory_range.number, Missing(0, ()))

    def readable_runs(self) -> Iterator[Tuple[int, int]]:
        """(gpa, length) runs whose pages lie in a range and in a block the file holds."""
        for memory_range in self.ranges:
            delta = (memory_range.mbp_start - memory_range.gpa_page) << PAGE_SHIFT
            lo, hi = memory_range.gpa_start, memory_range.gpa_end
            run_start: Optional[int] = None
            run_end = lo
            for number in self.blocks_of(memory_range):
                start = max(lo, number * BLOCK_SIZE - delta)
                end = min(hi, (number + 1) * BLOCK_SIZE - delta)
                if run_start is not None and start == run_end:
                    run_end = end
                    continue
                if run_start is not None:
                    yield run_start, run_end - run_start
                run_start, run_end = start, end
            if run_start is not None:
                yield run_start, run_end - run_start

    def block_of(self, gpa: int) -> Optional[int]:
        """The block number holding ``gpa``, or None for a hole."""
        memory_range = self.range_of(gpa)
        if memory_range is None:
            return None
        mbp = memory_range.mbp_start + (gpa >> PAGE_SHIFT) - memory_range.gpa_page
        return mbp // PAGES_PER_BLOCK


# --- building the map from a container -------------------------------------------------
def memory_keys(
    storage: HyperVStorage, diag: Diagnostics
) -> Tuple[Dict[int, Key], Dict[int, ValueEntry]]:
    """RamMemoryBlock keys and RamBlock entries by number (numbers from the names, §9.1).

    RamBlocks are taken as :class:`ValueEntry` records: a 64 GiB guest has 65,536 of
    them, and the map needs only where each value lies.
    """
    if paths.SAVEDSTATE not in storage:
        raise GuestMemoryNotFoundError(
            "the file has no /savedstate key: it holds no saved guest memory"
        )
    savedstate = storage.get(paths.SAVEDSTATE)
    ranges: Dict[int, Key] = {}
    blocks: Dict[int, ValueEntry] = {}
    unknown: List[str] = []
    for entry in savedstate.value_entries():
        # Numbers come from the names: keys are stored in text order, RamBlock10 first.
        name = entry.name
        digits = name[8:]
        if digits.isdigit() and digits.isascii() and name.startswith("RamBlock"):
            blocks[int(digits)] = entry
            continue
        match = _RAM_MEMORY_BLOCK_NAME.match(name)
        if match:
            ranges[int(match.group(1))] = storage.get(entry.path)
            continue
        is_node = entry.type is KeyType.NODE
        if name.startswith(_MEMORY_KEY_PREFIXES) and not is_node:
            unknown.append(name)
        # Older files (UNVERIFIED): RamMemoryBlock/<n> and RamBlock/<n> as nodes.
        if is_node and name == "RamMemoryBlock":
            for child in storage.get(entry.path).children:
                if child.name.isdigit():
                    ranges[int(child.name)] = child
        elif is_node and name == "RamBlock":
            for value in storage.get(entry.path).value_entries():
                if value.name.isdigit():
                    blocks[int(value.name)] = value
    if unknown:
        # Microsoft's reader knows more memory keys (page-count-valid, backing and
        # fault-cluster bitmaps, §10.1) whose effect on reading is UNVERIFIED: say that
        # they were present and not applied, so no one takes every page for data.
        shown = ", ".join(sorted(unknown)[:6]) + (" ..." if len(unknown) > 6 else "")
        diag.warn(
            Kind.MEMORY,
            "memory key",
            f"{len(unknown)} memory key(s) not interpreted: {shown}",
            key_path=paths.SAVEDSTATE,
        )
    return ranges, blocks


def parse_range(
    number: int, key: Key, vm_version: Optional[int], diag: Diagnostics
) -> Optional[MemoryRange]:
    """One RamMemoryBlock value; None for a range of zero pages (reported)."""
    if key.type != KeyType.ARRAY:
        raise GuestMemoryFormatError(
            f"type {key.type.name}, expected Array",
            structure="RamMemoryBlock",
            key_path=key.path,
        )
    data = key.read()
    if len(data) == RAM_MEMORY_BLOCK.size:
        fields = RAM_MEMORY_BLOCK.unpack(data)
    elif len(data) == RAM_MEMORY_BLOCK_V40.size:
        fields = RAM_MEMORY_BLOCK_V40.unpack(data)
    else:
        raise GuestMemoryFormatError(
            f"value of {len(data)} bytes; expected 48 (or 40 in VM version 4.0 files)",
            structure="RamMemoryBlock",
            key_path=key.path,
        )
    if vm_version is not None:
        wanted = 40 if vm_version == 0x0400 else 48
        if len(data) != wanted:
            diag.warn(
                Kind.MEMORY,
                "RamMemoryBlock",
                f"{len(data)}-byte form in a VM version {vm_version:#06x} file "
                f"(Microsoft's reader expects {wanted})",
                key_path=key.path,
            )
    if fields.saved_state_version > RAM_MEMORY_BLOCK_MAX_VERSION:
        raise UnsupportedVersionError(
            f"unsupported RamMemoryBlock version {fields.saved_state_version} "
            f"(known up to {RAM_MEMORY_BLOCK_MAX_VERSION})",
            structure="RamMemoryBlock",
            key_path=key.path,
        )
    unknown_flags = fields.flags & ~0xF
    if unknown_flags:
        raise GuestMemoryFormatError(
            f"unknown flags {unknown_flags:#x}",
            structure="RamMemoryBlock",
            key_path=key.path,
        )
    if fields.page_count == 0:
        diag.warn(Kind.MEMORY, "RamMemoryBlock", "range of zero pages ignored", key_path=key.path)
        return None
    if (
        fields.page_count > MAX_RANGE_PAGES
        or fields.gpa_index_start + fields.page_count > MAX_GPA_PAGE
        or fields.mbp_index_start + fields.page_count > MAX_RANGE_PAGES
    ):
        raise GuestMemoryFormatError(
            f"range of {fields.page_count:#x} pages at GPA page {fields.gpa_index_start:#x} "
            f"(MBP {fields.mbp_index_start:#x}) exceeds the "
            f"{PHYSICAL_ADDRESS_BITS}-bit address space",
            structure="RamMemoryBlock",
            key_path=key.path,
        )
    return MemoryRange(
        number=number,
        key_path=key.path,
        gpa_page=fields.gpa_index_start,
        page_count=fields.page_count,
        mbp_start=fields.mbp_index_start,
        flags=fields.flags,
        virtual_node=fields.virtual_node,
    )


def arrange(ranges: Sequence[MemoryRange], diag: Diagnostics) -> Tuple[MemoryRange, ...]:
    """Sort by GPA; clip overlaps (the lower-numbered range wins) and report them.

    GPA pages already mapped are kept as sorted, disjoint, merged intervals, so each
    range costs a bisection plus the intervals it overlaps (which it then merges):
    thousands of RamMemoryBlock keys do not make this quadratic.
    """
    arranged: List[MemoryRange] = []
    starts: List[int] = []  # claimed GPA page intervals [starts[i], ends[i])
    ends: List[int] = []
    for memory_range in sorted(ranges, key=lambda r: r.number):
        lo = memory_range.gpa_page
        hi = lo + memory_range.page_count
        first = bisect.bisect_right(starts, lo) - 1
        if first < 0 or ends[first] < lo:
            first += 1  # the interval before lo neither overlaps nor touches it
        last = first
        pieces = []
        cursor = lo
        overlaps = []
        while last < len(starts) and starts[last] <= hi:
            start, end = starts[last], ends[last]
            if start < hi and end > lo:
                overlaps.append((max(start, lo), min(end, hi)))
            if start > cursor:
                pieces.append((cursor, min(start, hi)))
            cursor = max(cursor, end)
            last += 1
        if cursor < hi:
            pieces.append((cursor, hi))
        if overlaps:
            pages = sum(b - a for a, b in overlaps)
            where = f"{overlaps[0][0]:#x}-{overlaps[-1][1] - 1:#x}"
            more = f" ({len(overlaps)} runs, {pages:#x} pages)" if len(overlaps) > 1 else ""
            diag.warn(
                Kind.MEMORY,
                "RamMemoryBlock",
                f"GPA pages {where} overlap an earlier range{more}; the earlier one is used",
                key_path=memory_range.key_path,
            )
        # Merge [lo, hi) with every claimed interval it overlaps or touches.
        if first < last:
            merged = (min(lo, starts[first]), max(hi, ends[last - 1]))
        else:
            merged = (lo, hi)
        starts[first:last] = [merged[0]]
        ends[first:last] = [merged[1]]
        for piece_lo, piece_hi in pieces:
            arranged.append(
                MemoryRange(
                    number=memory_range.number,
                    key_path=memory_range.key_path,
                    gpa_page=piece_lo,
                    page_count=piece_hi - piece_lo,
                    mbp_start=memory_range.mbp_start + (piece_lo - memory_range.gpa_page),
                    flags=memory_range.flags,
                    virtual_node=memory_range.virtual_node,
                )
            )
    arranged.sort(key=lambda r: r.gpa_page)
    mbp_sorted = sorted(arranged, key=lambda r: r.mbp_start)
    for before, after in zip(mbp_sorted, mbp_sorted[1:]):
        if before.mbp_start + before.page_count > after.mbp_start:
            diag.warn(
                Kind.MEMORY,
                "RamMemoryBlock",
                f"saved-RAM pages of {before.key_path} and {after.key_path} overlap",
                key_path=after.key_path,
            )
    return tuple(arranged)


def find_missing(
    ranges: Sequence[MemoryRange], blocks: Mapping[int, BlockLocation], diag: Diagnostics
) -> Dict[int, Missing]:
    """Missing blocks per range, counted from the blocks present (never by visiting all)."""
    numbers = sorted(blocks)
    found: Dict[int, Missing] = {}
    for memory_range in ranges:
        first, last = memory_range.first_block, memory_range.last_block
        present = bisect.bisect_right(numbers, last) - bisect.bisect_left(numbers, first)
        count = last - first + 1 - present
        if not count:
            continue
        shown = tuple(
            itertools.islice((n for n in range(first, last + 1) if n not in blocks), _SHOWN_MISSING)
        )
        previous = found.get(memory_range.number)
        if previous is not None:  # a range clipped into pieces by an overlap
            count += previous.count
            shown = (previous.first + shown)[:_SHOWN_MISSING]
        missing = found[memory_range.number] = Missing(count, shown)
        diag.error(
            Kind.MISSING_BLOCK,
            "RamBlock",
            f"{missing.count} RamBlock(s) missing ({missing.describe()}); their pages of GPA "
            f"{memory_range.gpa_start:#x}-{memory_range.gpa_end - 1:#x} are unreadable",
            key_path=memory_range.key_path,
        )
    return found


def map_saved_state(
    storage: HyperVStorage, diag: Diagnostics, vm_version: Optional[int] = None
) -> MemoryMap:
    """The memory map of a ``.vmrs``: its RamMemoryBlock ranges and RamBlock values."""
    range_keys, block_keys = memory_keys(storage, diag)
    if not range_keys:
        raise GuestMemoryNotFoundError(
            "no /savedstate/RamMemoryBlock<n> key: the saved state describes no guest memory"
        )
    if sorted(range_keys) != list(range(len(range_keys))):
        diag.warn(
            Kind.MEMORY,
            "RamMemoryBlock",
            f"range numbers {sorted(range_keys)} are not 0..{len(range_keys) - 1}",
            key_path=paths.SAVEDSTATE,
        )
    parsed = [parse_range(n, key, vm_version, diag) for n, key in sorted(range_keys.items())]
    blocks: Dict[int, BlockLocation] = {}
    file_size = storage.source.file_size
    array = KeyType.ARRAY
    new_location = tuple.__new__  # a BlockLocation without the NamedTuple's argument binding
    for number, key in block_keys.items():
        size = key.size
        if key.type is array and size <= BLOCK_SIZE and key.value_offset + size <= file_size:
            blocks[number] = new_location(BlockLocation, (number, key.path, key.value_offset, size))
        elif key.type is not array:
            diag.warn(
                Kind.MEMORY, "RamBlock", f"type {key.type.name}, expected Array", key_path=key.path
            )
        elif size > BLOCK_SIZE:
            diag.warn(
                Kind.MEMORY,
                "RamBlock",
                f"value of {size:#x} bytes is larger than 1 MiB; block unusable",
                key_path=key.path,
            )
        # else: cut off by a truncation (already reported): missing, not half-readable.
    ranges = arrange([r for r in parsed if r is not None], diag)
    return MemoryMap(ranges, blocks, find_missing(ranges, blocks, diag))
