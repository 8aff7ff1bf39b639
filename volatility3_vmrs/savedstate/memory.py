"""Guest RAM of a saved state: memory ranges, RamBlocks and their page records.

Layout (``vmrs-format.md`` §10):

* ``/savedstate/RamMemoryBlock%d`` (48 bytes, 40 in VM version 4.0 files) describes one
  contiguous guest-physical range and where its pages start in the "memory-block page"
  (MBP) sequence: ``mbp = mbp_index_start + (gpa_page - gpa_index_start)``.
* The MBP sequence is cut into 1 MiB ``/savedstate/RamBlock%d`` values. A value of
  exactly 1 MiB is raw memory; anything shorter is a stream of page records (fill,
  multi-fill, raw, XPRESS, and an extended form) that must decode to exactly 1 MiB.

Raw blocks are read straight from the file. A compressed block is indexed once, on first
touch, into a compact table of records; pages are then decoded one at a time and kept in
a bounded LRU cache (the DLL's SetMemoryBlockCacheLimit, counted in 1 MiB blocks).
Unreadable memory (a hole, a missing RamBlock, a bad stream) raises
:class:`~.errors.MemoryReadError` naming the block; it never reads as zeros unless the
caller asks for padding.
"""

from __future__ import annotations

import bisect
import itertools
import re
import struct
import threading
from array import array
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from . import xpress
from .errors import (
    GuestMemoryFormatError,
    GuestMemoryNotFoundError,
    IntegrityWarning,
    MemoryReadError,
    UnsupportedVersionError,
)
from .storage import HyperVStorage, Key, KeyType
from .structs import Layout

PAGE_SIZE = 0x1000
PAGE_SHIFT = 12
BLOCK_SIZE = 0x100000
PAGES_PER_BLOCK = BLOCK_SIZE // PAGE_SIZE
MAX_GPA_PAGE = 1 << 40  # 52-bit guest-physical addresses
MAX_RANGE_PAGES = 1 << 40  # Microsoft's limit above VM version 9.1 (§10.1)

SAVEDSTATE = "/savedstate"

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

# Page-record tags of a compressed RamBlock (§10.3).
TAG_END = 0xFFFFFFFF
TAG_FILL = 0xFFFFFFFE
TAG_MULTI_FILL = 0xFFFFFFFD
TAG_EXTENDED = 0xFFFFFFFC
TAG_FIELD = struct.Struct("<I")
FILL_RECORD = struct.Struct("<Q")
MULTI_FILL_RECORD = struct.Struct("<QI")
EXTENDED_RECORD = struct.Struct("<II")

# Kinds of decoded output, kept in the block index.
KIND_RAW = 0
KIND_FILL = 1
KIND_XPRESS = 2
KIND_NAMES = {KIND_RAW: "raw", KIND_FILL: "fill", KIND_XPRESS: "xpress"}

_RAM_MEMORY_BLOCK_NAME = re.compile(r"RamMemoryBlock(\d+)\Z")
_RAM_BLOCK_NAME = re.compile(r"RamBlock(\d+)\Z")
_MEMORY_KEY_PREFIXES = ("RamMemoryBlock", "RamBlock", "RamIndexStart", "RamVtlInfo")

DEFAULT_CACHE_LIMIT_BLOCKS = 64
# Page streams of compressed blocks kept after indexing (each at most 1 MiB).
STREAM_CACHE_BLOCKS = 2
# Bytes read at once from a raw block once reads turn out to be sequential.
READ_AHEAD = 0x20000


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


class _BlockIndex:
    """Where each byte of a compressed block's 1 MiB output comes from.

    Records are kept in parallel arrays (a few bytes each) rather than objects, so an
    indexed 4 GiB guest costs megabytes, not hundreds of them.
    """

    __slots__ = ("data_length", "kind", "out_length", "out_start", "source")

    def __init__(self) -> None:
        self.out_start = array("Q")  # offset of the record's output in the block
        self.out_length = array("I")
        self.kind = array("B")
        self.source = array("Q")  # value offset of the data, or the fill pattern
        self.data_length = array("I")  # stored bytes (0 for fills)

    def add(self, out_start: int, out_length: int, kind: int, source: int, length: int) -> None:
        self.out_start.append(out_start)
        self.out_length.append(out_length)
        self.kind.append(kind)
        self.source.append(source)
        self.data_length.append(length)

    def __len__(self) -> int:
        return len(self.kind)


def index_page_stream(value: bytes, key_path: str) -> _BlockIndex:
    """Index a compressed RamBlock value; it must describe exactly 1 MiB of output.

    Raises :class:`GuestMemoryFormatError` naming the offset inside the value.
    """
    index = _BlockIndex()
    position = 0
    produced = 0
    end = len(value)

    def fail(message: str) -> GuestMemoryFormatError:
        return GuestMemoryFormatError(
            f"{message} (record at value offset {record_at:#x})",
            structure="RamBlock page stream",
            key_path=key_path,
        )

    while position < end and produced < BLOCK_SIZE:
        record_at = position
        if position + 4 > end:
            raise fail("record tag cut off by the end of the value")
        (tag,) = TAG_FIELD.unpack_from(value, position)
        position += 4
        if tag == TAG_END:
            break
        if tag == TAG_FILL:
            if position + 8 > end:
                raise fail("fill record cut off")
            index.add(
                produced, PAGE_SIZE, KIND_FILL, FILL_RECORD.unpack_from(value, position)[0], 0
            )
            position += 8
            produced += PAGE_SIZE
        elif tag == TAG_MULTI_FILL:
            if position + 12 > end:
                raise fail("multi-fill record cut off")
            pattern, count = MULTI_FILL_RECORD.unpack_from(value, position)
            position += 12
            if count == 0 or produced + count * PAGE_SIZE > BLOCK_SIZE:
                raise fail(f"multi-fill of {count} pages does not fit the 1 MiB block")
            index.add(produced, count * PAGE_SIZE, KIND_FILL, pattern, 0)
            produced += count * PAGE_SIZE
        elif tag == TAG_EXTENDED:
            if position + 8 > end:
                raise fail("extended record cut off")
            out_length, in_length = EXTENDED_RECORD.unpack_from(value, position)
            position += 8
            if position + in_length > end:
                raise fail(f"extended record claims {in_length:#x} input bytes past the value end")
            if produced + out_length > BLOCK_SIZE:
                raise fail(f"extended record of {out_length:#x} bytes overflows the block")
            if in_length > out_length:
                raise fail(f"extended record input {in_length:#x} > output {out_length:#x}")
            if out_length:
                kind = KIND_RAW if in_length == out_length else KIND_XPRESS
                index.add(produced, out_length, kind, position, in_length)
            position += in_length
            produced += out_length
        elif 0 < tag <= PAGE_SIZE:
            if position + tag > end:
                raise fail(f"page record of {tag:#x} bytes runs past the value end")
            kind = KIND_RAW if tag == PAGE_SIZE else KIND_XPRESS
            index.add(produced, PAGE_SIZE, kind, position, tag)
            position += tag
            produced += PAGE_SIZE
        else:
            raise fail(f"invalid record tag {tag:#010x}")
    if produced != BLOCK_SIZE:
        raise GuestMemoryFormatError(
            f"page stream decodes to {produced:#x} bytes, not the 1 MiB a RamBlock holds",
            structure="RamBlock page stream",
            key_path=key_path,
        )
    return index


class RamBlock:
    """One 1 MiB RamBlock value: raw, or a page-record stream indexed on first touch."""

    def __init__(self, number: int, key: Key) -> None:
        self.number = number
        self.key = key
        self.is_raw = key.size == BLOCK_SIZE
        self._index: Optional[_BlockIndex] = None
        self._error: Optional[GuestMemoryFormatError] = None
        self._lock = threading.Lock()

    @property
    def key_path(self) -> str:
        return self.key.path

    def index(self) -> _BlockIndex:
        """The record index (compressed blocks only); built once, errors remembered."""
        if self._index is None:
            self.index_and_stream()
        return self._index  # type: ignore[return-value]

    def index_and_stream(self) -> Tuple[_BlockIndex, Optional[bytes]]:
        """The index, and the stream bytes when this call had to read them to build it."""
        if self._index is not None:
            return self._index, None
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._index is not None:
                return self._index, None
            stream = self.key.read()
            try:
                self._index = index_page_stream(stream, self.key.path)
            except GuestMemoryFormatError as error:
                self._error = error
                raise
            return self._index, stream

    def page_kinds(self) -> List[int]:
        """The kind of each of the 256 pages (the kind of its first record)."""
        if self.is_raw:
            return [KIND_RAW] * PAGES_PER_BLOCK
        index = self.index()
        kinds = []
        starts = index.out_start
        for page in range(PAGES_PER_BLOCK):
            record = bisect.bisect_right(starts, page * PAGE_SIZE) - 1
            kinds.append(index.kind[record])
        return kinds


class GuestMemory:
    """The saved guest RAM of a ``.vmrs``: physical and raw-saved-memory reads."""

    def __init__(
        self,
        storage: HyperVStorage,
        *,
        cache_limit_blocks: int = DEFAULT_CACHE_LIMIT_BLOCKS,
        vm_version: Optional[int] = None,
    ) -> None:
        self.storage = storage
        self.vm_version = vm_version
        self.warnings: List[IntegrityWarning] = []
        # Decoded pages of compressed blocks, per block (LRU over blocks), and the page
        # streams of the last few blocks touched, so that reading a block page after page
        # costs one read of its stream rather than one per page.
        self._decoded: OrderedDict[int, List[Optional[bytes]]] = OrderedDict()
        self._streams: OrderedDict[int, bytes] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._last_block = -1
        self._last_range: Optional[Tuple[int, int, int]] = None  # gpa start, end, raw delta
        # Sequential reads of raw blocks are served from one read-ahead buffer.
        self._read_ahead: Optional[Tuple[int, bytes]] = None
        self._sequential_end = -1
        # The same buffer seen from guest-physical space: (gpa, usable length, data,
        # file offset of data).
        self._window: Optional[Tuple[int, int, bytes, int]] = None
        # The last multi-page XPRESS record decoded: (block number, record, output).
        self._recent_record: Optional[Tuple[int, int, bytes]] = None
        self.cache_limit_blocks = cache_limit_blocks
        self.blocks: Dict[int, RamBlock] = {}
        self.ranges: List[MemoryRange] = []
        self._load()
        self._range_starts = [r.gpa_page for r in self.ranges]
        self._zero_page = bytes(PAGE_SIZE)

    # --- loading ----------------------------------------------------------------------
    def _warn(self, kind: str, structure: str, message: str, key_path: Optional[str]) -> None:
        warning = IntegrityWarning(kind, structure, message, None, key_path)
        if self.storage.strict:
            raise GuestMemoryFormatError(message, structure=structure, key_path=key_path)
        self.warnings.append(warning)

    def _memory_keys(self) -> Tuple[Dict[int, Key], Dict[int, Key]]:
        if SAVEDSTATE not in self.storage:
            raise GuestMemoryNotFoundError(
                "the file has no /savedstate key: it holds no saved guest memory"
            )
        ranges: Dict[int, Key] = {}
        blocks: Dict[int, Key] = {}
        unknown: List[str] = []
        for key in self.storage.get(SAVEDSTATE).children:
            known = False
            for pattern, found in ((_RAM_MEMORY_BLOCK_NAME, ranges), (_RAM_BLOCK_NAME, blocks)):
                match = pattern.match(key.name)
                if match:
                    # Numbers come from the names: keys are stored in text order,
                    # RamBlock10 before RamBlock2.
                    found[int(match.group(1))] = key
                    known = True
            if not known and key.name.startswith(_MEMORY_KEY_PREFIXES) and not key.is_node:
                unknown.append(key.name)
            # Older files (UNVERIFIED): RamMemoryBlock/<n> and RamBlock/<n> as nodes.
            if key.is_node and key.name in ("RamMemoryBlock", "RamBlock"):
                target = ranges if key.name == "RamMemoryBlock" else blocks
                for child in key.children:
                    if child.name.isdigit():
                        target[int(child.name)] = child
        if unknown:
            # Microsoft's reader knows more memory keys (page-count-valid, backing and
            # fault-cluster bitmaps, §10.1) whose effect on reading is UNVERIFIED: say that
            # they were present and not applied, so no one takes every page for data.
            shown = ", ".join(sorted(unknown)[:6]) + (" ..." if len(unknown) > 6 else "")
            self._warn(
                "memory",
                "memory key",
                f"{len(unknown)} memory key(s) not interpreted: {shown}",
                SAVEDSTATE,
            )
        return ranges, blocks

    def _load(self) -> None:
        range_keys, block_keys = self._memory_keys()
        if not range_keys:
            raise GuestMemoryNotFoundError(
                "no /savedstate/RamMemoryBlock<n> key: the saved state describes no guest memory"
            )
        expected = list(range(len(range_keys)))
        if sorted(range_keys) != expected:
            self._warn(
                "memory",
                "RamMemoryBlock",
                f"range numbers {sorted(range_keys)} are not 0..{len(range_keys) - 1}",
                SAVEDSTATE,
            )
        parsed = [self._parse_range(number, key) for number, key in sorted(range_keys.items())]
        for number, key in block_keys.items():
            if key.type != KeyType.ARRAY:
                self._warn("memory", "RamBlock", f"type {key.type.name}, expected Array", key.path)
                continue
            if key.size > BLOCK_SIZE:
                self._warn(
                    "memory",
                    "RamBlock",
                    f"value of {key.size:#x} bytes is larger than 1 MiB; block unusable",
                    key.path,
                )
                continue
            self.blocks[number] = RamBlock(number, key)
        self.ranges = self._arrange([r for r in parsed if r is not None])
        for memory_range in self.ranges:
            # A range may claim up to 2**40 pages (2**32 blocks): count what is missing
            # from the blocks the file holds, never by visiting every block number.
            first, last = memory_range.first_block, memory_range.last_block
            present = sum(1 for number in self.blocks if first <= number <= last)
            missing_count = last - first + 1 - present
            if missing_count:
                missing = list(
                    itertools.islice((n for n in range(first, last + 1) if n not in self.blocks), 8)
                )
                shown = ", ".join(str(n) for n in missing) + (" ..." if missing_count > 8 else "")
                self._warn(
                    "memory",
                    "RamBlock",
                    f"{missing_count} RamBlock(s) missing ({shown}); their pages of GPA "
                    f"{memory_range.gpa_start:#x}-{memory_range.gpa_end - 1:#x} are unreadable",
                    memory_range.key_path,
                )

    def _parse_range(self, number: int, key: Key) -> Optional[MemoryRange]:
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
        if self.vm_version is not None:
            wanted = 40 if self.vm_version == 0x0400 else 48
            if len(data) != wanted:
                self._warn(
                    "memory",
                    "RamMemoryBlock",
                    f"{len(data)}-byte form in a VM version {self.vm_version:#06x} file "
                    f"(Microsoft's reader expects {wanted})",
                    key.path,
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
            self._warn("memory", "RamMemoryBlock", "range of zero pages ignored", key.path)
            return None
        if (
            fields.page_count > MAX_RANGE_PAGES
            or fields.gpa_index_start + fields.page_count > MAX_GPA_PAGE
            or fields.mbp_index_start + fields.page_count > MAX_RANGE_PAGES
        ):
            raise GuestMemoryFormatError(
                f"range of {fields.page_count:#x} pages at GPA page {fields.gpa_index_start:#x} "
                f"(MBP {fields.mbp_index_start:#x}) exceeds the 52-bit address space",
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

    def _arrange(self, ranges: List[MemoryRange]) -> List[MemoryRange]:
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
                self._warn(
                    "memory",
                    "RamMemoryBlock",
                    f"GPA pages {where} overlap an earlier range{more}; the earlier one is used",
                    memory_range.key_path,
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
                self._warn(
                    "memory",
                    "RamMemoryBlock",
                    f"saved-RAM pages of {before.key_path} and {after.key_path} overlap",
                    after.key_path,
                )
        return arranged

    # --- layout queries ---------------------------------------------------------------
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

    # --- reads ------------------------------------------------------------------------
    def read_physical(self, gpa: int, size: int, pad: bool = False) -> bytes:
        """Read guest-physical memory. A hole raises unless ``pad`` fills it with zeros."""
        if pad:
            return self.read_physical_padded(gpa, size)[0]
        # Fastest path: a sequential read the last read-ahead of a raw block covers.
        window = self._window
        if window is not None:
            skip = gpa - window[0]
            if 0 <= skip and skip + size <= window[1]:
                self._sequential_end = window[3] + skip + size
                return window[2][skip : skip + size]
        # Fast path for what Volatility does most: a read inside one range and one block.
        last = self._last_range
        if last is None or not last[0] <= gpa < last[1]:
            memory_range = self.range_of(gpa)
            if memory_range is not None:
                last = self._last_range = (
                    memory_range.gpa_start,
                    memory_range.gpa_end,
                    (memory_range.mbp_start - memory_range.gpa_page) << PAGE_SHIFT,
                )
        if last is not None and last[0] <= gpa and gpa + size <= last[1] and size > 0:
            raw = gpa + last[2]
            within = raw & (BLOCK_SIZE - 1)
            if within + size <= BLOCK_SIZE:
                block = self.blocks.get(raw >> 20)
                if block is not None:
                    if block.is_raw:
                        return self._read_raw_block(block, within, size, gpa, last[1])
                    return self._read_block(block, within, size)
        pieces = []
        for start, length, raw_offset in self.spans(gpa, size):
            if raw_offset is None:
                raise MemoryReadError(
                    f"guest-physical address {start:#x} is not backed by saved memory (a hole "
                    "between memory ranges)",
                    address=start,
                )
            pieces.append(self.read_raw(raw_offset, length))
        return b"".join(pieces)

    def read_physical_padded(self, gpa: int, size: int) -> Tuple[bytes, List[Tuple[int, int]]]:
        """Read with holes and unreadable pages as zeros; also returns (gpa, length) missed."""
        pieces = []
        missing: List[Tuple[int, int]] = []
        for start, length, raw in self.spans(gpa, size):
            if raw is None:
                pieces.append(bytes(length))
                missing.append((start, length))
                continue
            try:
                pieces.append(self.read_raw(raw, length))
            except MemoryReadError:
                # Fall back page by page so one bad block does not hide its neighbours.
                offset = 0
                while offset < length:
                    step = min(length - offset, PAGE_SIZE - ((raw + offset) & (PAGE_SIZE - 1)))
                    try:
                        pieces.append(self.read_raw(raw + offset, step))
                    except MemoryReadError:
                        pieces.append(bytes(step))
                        missing.append((start + offset, step))
                    offset += step
        return b"".join(pieces), missing

    def read_raw(self, offset: int, size: int) -> bytes:
        """Read the raw saved memory (all RamBlocks as one sequence of MBP pages)."""
        if offset < 0 or size < 0:
            raise MemoryReadError(f"bad raw read {offset:#x}+{size:#x}", address=offset)
        pieces = []
        while size > 0:
            number, within = divmod(offset, BLOCK_SIZE)
            length = min(size, BLOCK_SIZE - within)
            block = self.blocks.get(number)
            if block is None:
                raise MemoryReadError(
                    f"saved RAM at raw offset {offset:#x} is in /savedstate/RamBlock{number}, "
                    "which the file does not hold",
                    address=offset,
                    block=f"{SAVEDSTATE}/RamBlock{number}",
                )
            pieces.append(self._read_block(block, within, length))
            offset += length
            size -= length
        return b"".join(pieces)

    def _read_block(self, block: RamBlock, within: int, length: int) -> bytes:
        if block.is_raw:
            return self._read_raw_block(block, within, length)
        first = within >> PAGE_SHIFT
        last = (within + length - 1) >> PAGE_SHIFT
        if first == last:
            data = self._page(block, first)
        else:
            data = b"".join([self._page(block, page) for page in range(first, last + 1)])
        start = within & (PAGE_SIZE - 1)
        if start == 0 and len(data) == length:
            return data
        return data[start : start + length]

    def _read_raw_block(
        self, block: RamBlock, within: int, length: int, gpa: int = -1, range_end: int = 0
    ) -> bytes:
        """File bytes of a raw RamBlock, with read-ahead while reads are sequential.

        ``gpa``/``range_end`` (when the caller knows them) let the read-ahead also serve
        the next guest-physical reads directly, up to the end of the block or the range.
        """
        file_offset = block.key.value_offset + within
        ahead = self._read_ahead
        if ahead is not None:
            skip = file_offset - ahead[0]
            if 0 <= skip and skip + length <= len(ahead[1]):
                self._sequential_end = file_offset + length
                return ahead[1][skip : skip + length]
        span = min(READ_AHEAD, BLOCK_SIZE - within)
        if file_offset == self._sequential_end and length < span:
            data = self.storage.source.read(file_offset, span)
            if len(data) >= length:
                self._read_ahead = (file_offset, data)
                if gpa >= 0:
                    self._window = (gpa, min(len(data), range_end - gpa), data, file_offset)
                self._sequential_end = file_offset + length
                return data[:length]
        self._sequential_end = file_offset + length
        data = self.storage.source.read(file_offset, length)
        if len(data) != length:
            raise MemoryReadError(
                f"{block.key_path}: the file ends inside this RamBlock "
                f"(value offset {within + len(data):#x})",
                address=block.number * BLOCK_SIZE + within + len(data),
                block=block.key_path,
            )
        return data

    def _page(self, block: RamBlock, page: int) -> bytes:
        decoded = self._decoded.get(block.number)
        if decoded is not None:
            data = decoded[page]
            if data is not None:
                if self._last_block != block.number:
                    self._touch(block.number)
                return data
        index = block._index
        if index is None:
            try:
                index, stream = block.index_and_stream()
            except GuestMemoryFormatError as error:
                raise MemoryReadError(
                    f"{block.key_path} cannot be decoded: {error.detail}",
                    address=(block.number * PAGES_PER_BLOCK + page) << PAGE_SHIFT,
                    block=block.key_path,
                ) from error
            if stream is not None and self._cache_limit_blocks:
                self._keep_stream(block.number, stream)
        page_start = page << PAGE_SHIFT
        page_end = page_start + PAGE_SIZE
        record = bisect.bisect_right(index.out_start, page_start) - 1
        if index.out_start[record] + index.out_length[record] >= page_end:
            # The usual case: one record covers the whole page.
            data = self._decode_record(block, index, record, page_start, PAGE_SIZE)
        else:
            # Records that do not line up with pages (extended records): gather.
            parts = []
            position = page_start
            while position < page_end:
                record = bisect.bisect_right(index.out_start, position) - 1
                take = min(index.out_start[record] + index.out_length[record], page_end) - position
                parts.append(self._decode_record(block, index, record, position, take))
                position += take
            data = b"".join(parts)
        if self._cache_limit_blocks:
            self._remember(block.number, page, data)
        return data

    def _stored(self, block: RamBlock, offset: int, length: int) -> bytes:
        """Bytes of a compressed block's stream, from the stream cache when it holds them."""
        stream = self._streams.get(block.number)
        if stream is not None:
            return stream[offset : offset + length]
        return block.key.read(offset, length)

    def _decode_record(
        self, block: RamBlock, index: _BlockIndex, record: int, position: int, length: int
    ) -> bytes:
        """``length`` bytes of output at block offset ``position`` from one record."""
        kind = index.kind[record]
        skip = position - index.out_start[record]
        if kind == KIND_FILL:
            pattern = struct.pack("<Q", index.source[record])
            if pattern == b"\0" * 8 and length == PAGE_SIZE:
                return self._zero_page
            return (pattern * ((skip + length) // 8 + 2))[skip % 8 : skip % 8 + length]
        if kind == KIND_RAW:
            return self._stored(block, index.source[record] + skip, length)
        out_length = index.out_length[record]
        recent = self._recent_record
        if recent is not None and recent[0] == block.number and recent[1] == record:
            output = recent[2]
        else:
            stored = self._stored(block, index.source[record], index.data_length[record])
            try:
                output = xpress.decompress(stored, out_length)
            except GuestMemoryFormatError as error:
                raise MemoryReadError(
                    f"{block.key_path}: XPRESS data at value offset {index.source[record]:#x} "
                    f"cannot be decompressed: {error.detail}",
                    address=(block.number * BLOCK_SIZE + position),
                    block=block.key_path,
                ) from error
            if out_length > PAGE_SIZE:
                # An extended record may decode to up to 1 MiB; without this each of its
                # 256 pages would decompress the whole record again. One record is kept
                # for the whole guest, so this costs at most 1 MiB.
                self._recent_record = (block.number, record, output)
        if skip == 0 and length == out_length:
            return output  # the whole record is the page: no copy
        return output[skip : skip + length]

    # --- cache ------------------------------------------------------------------------
    @property
    def cache_limit_blocks(self) -> int:
        return self._cache_limit_blocks

    @cache_limit_blocks.setter
    def cache_limit_blocks(self, blocks: int) -> None:
        if blocks < 0:
            raise ValueError("cache limit must be >= 0")
        self._cache_limit_blocks = blocks
        self._trim_cache()

    @property
    def cached_pages(self) -> int:
        """Decoded pages held in the cache."""
        return sum(sum(1 for page in pages if page is not None) for pages in self._decoded.values())

    def _touch(self, number: int) -> None:
        with self._cache_lock:
            if number in self._decoded:
                self._decoded.move_to_end(number)
            self._last_block = number

    def _remember(self, number: int, page: int, data: bytes) -> None:
        pages = self._decoded.get(number)
        if pages is not None and number == self._last_block:
            pages[page] = data  # already the most recent block: no reordering needed
            return
        with self._cache_lock:
            pages = self._decoded.get(number)
            if pages is None:
                pages = self._decoded[number] = [None] * PAGES_PER_BLOCK
            else:
                self._decoded.move_to_end(number)
            pages[page] = data
            self._trim_cache_locked()
            self._last_block = number

    def _keep_stream(self, number: int, stream: bytes) -> None:
        with self._cache_lock:
            self._streams[number] = stream
            while len(self._streams) > STREAM_CACHE_BLOCKS:
                self._streams.popitem(last=False)

    def _trim_cache(self) -> None:
        with self._cache_lock:
            self._trim_cache_locked()

    def _trim_cache_locked(self) -> None:
        while len(self._decoded) > self._cache_limit_blocks:
            self._decoded.popitem(last=False)
            self._last_block = -1
        if not self._cache_limit_blocks:
            self._streams.clear()

    # --- statistics -------------------------------------------------------------------
    def page_kind_counts(
        self,
        memory_range: MemoryRange,
        progress: Optional[Callable[[float, str], None]] = None,
    ) -> Counter:
        """Count raw / fill / xpress / missing / bad pages of a range (indexes its blocks)."""
        counts: Counter = Counter()
        first, last = memory_range.first_block, memory_range.last_block
        range_end = memory_range.mbp_start + memory_range.page_count
        # Visit only the blocks the file holds: a range may span 2**32 block numbers.
        present = sorted(number for number in self.blocks if first <= number <= last)
        counts["missing"] += memory_range.page_count
        for number in present:
            if progress is not None:
                progress(
                    100.0 * (number - first) / max(1, last - first + 1),
                    f"Indexing {memory_range.key_path}",
                )
            lo = max(memory_range.mbp_start, number * PAGES_PER_BLOCK)
            hi = min(range_end, (number + 1) * PAGES_PER_BLOCK)
            counts["missing"] -= hi - lo
            block = self.blocks[number]
            try:
                kinds = block.page_kinds()
            except GuestMemoryFormatError:
                counts["bad"] += hi - lo
                continue
            for mbp in range(lo, hi):
                counts[KIND_NAMES[kinds[mbp - number * PAGES_PER_BLOCK]]] += 1
        if not counts["missing"]:
            del counts["missing"]
        return counts

    def blocks_of(self, memory_range: MemoryRange) -> range:
        """Block numbers of a range (a range object: a range may span 2**32 blocks)."""
        return range(memory_range.first_block, memory_range.last_block + 1)
