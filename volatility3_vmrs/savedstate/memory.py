"""Reading guest RAM: page streams decoded, cached and read ahead, over a memory map.

The layout questions (which range, which block, what is missing) are answered by
:class:`~.memory_map.MemoryMap`; :class:`PageReader` only turns addresses into bytes.

Raw blocks are read straight from the file. A compressed block is indexed once, on first
touch, into a compact table of records (§10.3); pages are then decoded one at a time and
kept in a bounded LRU cache (the DLL's SetMemoryBlockCacheLimit, counted in 1 MiB
blocks). Unreadable memory (a hole, a missing RamBlock, a bad stream) raises
:class:`~.errors.MemoryReadError` naming the block; it never reads as zeros unless the
caller asks for padding. A block whose stream cannot be decoded is reported once to the
diagnostics (phase "read") and remembered in :attr:`PageReader.bad_blocks`.
"""

from __future__ import annotations

import bisect
import struct
import threading
from array import array
from collections import Counter, OrderedDict
from typing import Callable, Dict, FrozenSet, List, Optional, Set, Tuple, Union

from . import xpress
from .diagnostics import Diagnostics, Kind, Phase
from .errors import GuestMemoryFormatError, MemoryReadError
from .memory_map import (
    BLOCK_SIZE,
    PAGE_SHIFT,
    PAGE_SIZE,
    PAGES_PER_BLOCK,
    BlockLocation,
    MemoryMap,
    MemoryRange,
    map_saved_state,
)
from .paths import ram_block
from .source import ReadOnlySource
from .storage import HyperVStorage

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

DEFAULT_CACHE_LIMIT_BLOCKS = 64
# Page streams of compressed blocks kept after indexing (each at most 1 MiB).
STREAM_CACHE_BLOCKS = 2
# Bytes read at once from a raw block once reads turn out to be sequential.
READ_AHEAD = 0x20000
# Reads of a compressed block this long (scans) are decoded record by record, past
# the page cache; shorter ones (page-table walks, structures) go page by page through it.
BULK_READ = 4 * 0x1000
# Long reads of a compressed block at least this long read its whole stream at once;
# shorter ones read only the records they need (a 16 KiB structure costs no 1 MiB read).
STREAM_READ = 0x40000
# Reads at least this long take raw blocks from the mapped file (see ReadOnlySource.mapped).
MAPPED_READ = 0x10000


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

    def __init__(self, location: BlockLocation, source: ReadOnlySource) -> None:
        self.location = location
        self.number = location.number
        self.key_path = location.key_path
        self.is_raw = location.is_raw
        self._source = source
        self._index: Optional[_BlockIndex] = None
        self._error: Optional[GuestMemoryFormatError] = None
        self._lock = threading.Lock()

    def read(self, offset: int = 0, size: Optional[int] = None) -> bytes:
        """Stored bytes of the value (the page stream of a compressed block)."""
        if size is None:
            size = self.location.size - offset
        return self._source.read_exact(
            self.location.offset + offset, size, "RamBlock", self.key_path
        )

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
            stream = self.read()
            try:
                self._index = index_page_stream(stream, self.key_path)
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


class PageReader:
    """Guest-physical and raw-saved-memory reads over a :class:`MemoryMap`."""

    def __init__(
        self,
        memory_map: MemoryMap,
        source: ReadOnlySource,
        diagnostics: Diagnostics,
        *,
        cache_limit_blocks: int = DEFAULT_CACHE_LIMIT_BLOCKS,
    ) -> None:
        self.map = memory_map
        self.diagnostics = diagnostics
        self._source = source
        self._blocks: Dict[int, RamBlock] = {}  # made on first touch: 64 GiB = 65,536
        self._bad: Dict[int, str] = {}  # block number -> why it cannot be decoded
        self._bad_pages: Set[Tuple[int, int]] = set()  # (block, page) not decompressible
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
        self._zero_page = bytes(PAGE_SIZE)

    def block(self, number: int) -> Optional[RamBlock]:
        """RamBlock ``number``, or None when the file does not hold it."""
        block = self._blocks.get(number)
        if block is None:
            location = self.map.blocks.get(number)
            if location is None:
                return None
            block = self._ram_block(location)
        return block

    def _ram_block(self, location: BlockLocation) -> RamBlock:
        """The RamBlock of a map entry, made on first touch (its index is kept there)."""
        block = self._blocks.get(location.number)
        if block is None:
            with self._cache_lock:
                block = self._blocks.setdefault(location.number, RamBlock(location, self._source))
        return block

    @property
    def ranges(self) -> Tuple[MemoryRange, ...]:
        return self.map.ranges

    @property
    def bad_blocks(self) -> FrozenSet[int]:
        """Blocks found undecodable so far (reading finds them; ``verify`` finds all)."""
        return frozenset(self._bad)

    def is_readable(self, gpa: int) -> bool:
        """Whether the page of ``gpa`` can be read: mapped, its block present and not bad."""
        number = self.map.block_of(gpa)
        if number is None or number not in self.map.blocks or number in self._bad:
            return False
        if self._bad_pages:
            raw = self.map.gpa_to_raw_offset(gpa)
            return (number, (raw % BLOCK_SIZE) >> PAGE_SHIFT) not in self._bad_pages
        return True

    def is_readable_span(self, gpa: int, length: int) -> bool:
        """Whether every page of ``[gpa, gpa + length)`` can be read."""
        if length <= 0:
            return False
        for _, span, raw in self.map.spans(gpa, length):
            if raw is None:
                return False
            first, last = raw // BLOCK_SIZE, (raw + span - 1) // BLOCK_SIZE
            for number in range(first, last + 1):
                if number not in self.map.blocks or number in self._bad:
                    return False
            if self._bad_pages:
                for offset in range(raw & ~(PAGE_SIZE - 1), raw + span, PAGE_SIZE):
                    page = (offset % BLOCK_SIZE) >> PAGE_SHIFT
                    if (offset // BLOCK_SIZE, page) in self._bad_pages:
                        return False
        return True

    def _record_failed(
        self, block: RamBlock, index: _BlockIndex, record: int, error: GuestMemoryFormatError
    ) -> None:
        first = index.out_start[record] >> PAGE_SHIFT
        last = (index.out_start[record] + index.out_length[record] - 1) >> PAGE_SHIFT
        with self._cache_lock:
            self._bad_pages.update((block.number, page) for page in range(first, last + 1))
        self.diagnostics.error(
            Kind.BAD_BLOCK,
            "RamBlock page stream",
            f"XPRESS record at value offset {index.source[record]:#x} cannot be decompressed "
            f"({error.detail}); pages {first}-{last} of the block are unreadable",
            key_path=block.key_path,
            phase=Phase.READ,
        )

    def _block_failed(self, block: RamBlock, error: GuestMemoryFormatError) -> None:
        if block.number not in self._bad:
            self._bad[block.number] = error.detail
            self.diagnostics.error(
                Kind.BAD_BLOCK,
                "RamBlock page stream",
                f"cannot be decoded: {error.detail}; its 1 MiB of saved RAM is unreadable",
                key_path=block.key_path,
                phase=Phase.READ,
            )

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
            memory_range = self.map.range_of(gpa)
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
                number = raw >> 20
                location = self.map.blocks.get(number)
                if location is not None:
                    if location.size == BLOCK_SIZE:  # a raw block
                        return self._read_raw_block(location, within, size, gpa, last[1])
                    return self._read_block(self._ram_block(location), within, size)
        pieces = []
        for start, length, raw_offset in self.map.spans(gpa, size):
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
        for start, length, raw in self.map.spans(gpa, size):
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
        """Read the raw saved memory (all RamBlocks as one sequence of MBP pages).

        Raw blocks that lie back to back in the file are read with one read; the pages
        of compressed blocks are decoded record by record into the same list of pieces,
        so a long read is joined once.
        """
        if offset < 0 or size < 0:
            raise MemoryReadError(f"bad raw read {offset:#x}+{size:#x}", address=offset)
        pieces: List[Union[bytes, memoryview]] = []
        run: List[Tuple[BlockLocation, int, int]] = []  # raw pieces contiguous in the file
        blocks = self.map.blocks
        # A long read takes raw blocks as slices of the mapped file: one copy, at the join.
        view = self._source.mapped() if size >= MAPPED_READ else None
        while size > 0:
            number, within = divmod(offset, BLOCK_SIZE)
            length = min(size, BLOCK_SIZE - within)
            location = blocks.get(number)
            if location is None:
                raise MemoryReadError(
                    f"saved RAM at raw offset {offset:#x} is in {ram_block(number)}, "
                    "which the file does not hold",
                    address=offset,
                    block=ram_block(number),
                )
            if location.size == BLOCK_SIZE:  # a raw block
                if run:
                    last, last_within, last_length = run[-1]
                    if last.offset + last_within + last_length != location.offset + within:
                        self._read_run(run, pieces, view)
                run.append((location, within, length))
            else:
                if run:
                    self._read_run(run, pieces, view)
                block = self._ram_block(location)
                if length >= BULK_READ:
                    self._decode_span(block, within, length, pieces)
                else:
                    pieces.append(self._read_block(block, within, length))
            offset += length
            size -= length
        if run:
            self._read_run(run, pieces, view)
        if len(pieces) == 1:
            piece = pieces[0]
            return piece if isinstance(piece, bytes) else bytes(piece)
        return b"".join(pieces)

    def _read_run(
        self,
        run: List[Tuple[BlockLocation, int, int]],
        pieces: List[Union[bytes, memoryview]],
        view: Optional[memoryview],
    ) -> None:
        """Append the bytes of raw pieces that follow each other in the file (a slice of
        ``view``, the mapped file, when given); empty ``run``."""
        first, within, _ = run[0]
        start = first.offset + within
        length = sum(item[2] for item in run)
        if view is not None and start + length <= len(view):
            pieces.append(view[start : start + length])
        elif len(run) == 1:
            pieces.append(self._read_raw_block(*run[0]))
        else:
            data = self._source.read(start, length)
            if len(data) == length:
                self._sequential_end = start + length
                pieces.append(data)
            else:  # the file ends inside the run: the piece by piece read names the block
                pieces.extend(self._read_raw_block(*item) for item in run)
        run.clear()

    def _read_block(self, block: RamBlock, within: int, length: int) -> bytes:
        if block.is_raw:
            return self._read_raw_block(block.location, within, length)
        if length >= BULK_READ:
            pieces: List[bytes] = []
            self._decode_span(block, within, length, pieces)
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)
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

    def _decode_span(
        self, block: RamBlock, within: int, length: int, pieces: List[Union[bytes, memoryview]]
    ) -> None:
        """Append ``length`` bytes of a compressed block from ``within``, record by record.

        A long read (a scan) is served without the page cache: each record is decoded
        once for the read, raw records are slices of the block's stream (read whole for
        long spans), zero fills cost no decoding.
        """
        index, stream = self._index_of(block, within >> PAGE_SHIFT)
        if stream is None:
            stream = self._streams.get(block.number)
            if stream is None and length >= STREAM_READ:
                stream = block.read()
                if self._cache_limit_blocks:
                    self._keep_stream(block.number, stream)
        starts, lengths = index.out_start, index.out_length
        kinds, sources = index.kind, index.source
        end = within + length
        record = bisect.bisect_right(starts, within) - 1
        position = within
        while position < end:
            out_start = starts[record]
            take = min(out_start + lengths[record], end) - position
            kind = kinds[record]
            if kind == KIND_RAW:
                at = sources[record] + position - out_start
                pieces.append(
                    stream[at : at + take] if stream is not None else self._stored(block, at, take)
                )
            elif kind == KIND_FILL and sources[record] == 0:
                pieces.append(self._zero_page if take == PAGE_SIZE else bytes(take))
            else:
                pieces.append(self._decode_record(block, index, record, position, take, stream))
            position += take
            record += 1

    def _index_of(self, block: RamBlock, page: int) -> Tuple[_BlockIndex, Optional[bytes]]:
        """A compressed block's index, and its stream when indexing had to read it (then
        kept in the stream cache). A bad block raises :class:`MemoryReadError` (``page``:
        the page asked for, for the message) and is reported once."""
        index = block._index
        if index is not None:
            return index, None
        try:
            index, stream = block.index_and_stream()
        except GuestMemoryFormatError as error:
            self._block_failed(block, error)
            raise MemoryReadError(
                f"{block.key_path} cannot be decoded: {error.detail}",
                address=(block.number * PAGES_PER_BLOCK + page) << PAGE_SHIFT,
                block=block.key_path,
            ) from error
        if stream is not None and self._cache_limit_blocks:
            self._keep_stream(block.number, stream)
        return index, stream

    def _read_raw_block(
        self, block: BlockLocation, within: int, length: int, gpa: int = -1, range_end: int = 0
    ) -> bytes:
        """File bytes of a raw RamBlock, with read-ahead while reads are sequential.

        Raw blocks need no decoding state, so they are read from their map entry alone.

        ``gpa``/``range_end`` (when the caller knows them) let the read-ahead also serve
        the next guest-physical reads directly, up to the end of the block or the range.
        """
        file_offset = block.offset + within
        ahead = self._read_ahead
        if ahead is not None:
            skip = file_offset - ahead[0]
            if 0 <= skip and skip + length <= len(ahead[1]):
                self._sequential_end = file_offset + length
                return ahead[1][skip : skip + length]
        span = min(READ_AHEAD, BLOCK_SIZE - within)
        if file_offset == self._sequential_end and length < span:
            data = self._source.read(file_offset, span)
            if len(data) >= length:
                self._read_ahead = (file_offset, data)
                if gpa >= 0:
                    self._window = (gpa, min(len(data), range_end - gpa), data, file_offset)
                self._sequential_end = file_offset + length
                return data[:length]
        self._sequential_end = file_offset + length
        data = self._source.read(file_offset, length)
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
        index, _ = self._index_of(block, page)
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
        return block.read(offset, length)

    def _decode_record(
        self,
        block: RamBlock,
        index: _BlockIndex,
        record: int,
        position: int,
        length: int,
        stream: Optional[bytes] = None,
    ) -> bytes:
        """``length`` bytes of output at block offset ``position`` from one record
        (``stream``: the block's stored bytes when the caller holds them)."""
        kind = index.kind[record]
        skip = position - index.out_start[record]
        if kind == KIND_FILL:
            if index.source[record] == 0:
                return self._zero_page if length == PAGE_SIZE else bytes(length)
            pattern = struct.pack("<Q", index.source[record])
            return (pattern * ((skip + length) // 8 + 2))[skip % 8 : skip % 8 + length]
        if kind == KIND_RAW:
            return self._stored(block, index.source[record] + skip, length)
        out_length = index.out_length[record]
        recent = self._recent_record
        if recent is not None and recent[0] == block.number and recent[1] == record:
            output = recent[2]
        else:
            at, size = index.source[record], index.data_length[record]
            stored = stream[at : at + size] if stream is not None else self._stored(block, at, size)
            try:
                output = xpress.decompress(stored, out_length)
            except GuestMemoryFormatError as error:
                self._record_failed(block, index, record, error)
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
        counts["missing"] += memory_range.page_count
        for number in self.map.blocks_of(memory_range):
            if progress is not None:
                progress(
                    100.0 * (number - first) / max(1, last - first + 1),
                    f"Indexing {memory_range.key_path}",
                )
            lo = max(memory_range.mbp_start, number * PAGES_PER_BLOCK)
            hi = min(range_end, (number + 1) * PAGES_PER_BLOCK)
            counts["missing"] -= hi - lo
            block = self.block(number)
            try:
                kinds = block.page_kinds()
            except GuestMemoryFormatError as error:
                self._block_failed(block, error)
                counts["bad"] += hi - lo
                continue
            for mbp in range(lo, hi):
                counts[KIND_NAMES[kinds[mbp - number * PAGES_PER_BLOCK]]] += 1
        if not counts["missing"]:
            del counts["missing"]
        return counts


def open_guest_memory(
    storage: HyperVStorage,
    *,
    cache_limit_blocks: int = DEFAULT_CACHE_LIMIT_BLOCKS,
    vm_version: Optional[int] = None,
) -> PageReader:
    """Map the guest RAM of a ``.vmrs`` and return its reader (diagnostics: the storage's)."""
    memory_map = map_saved_state(storage, storage.diagnostics, vm_version)
    return PageReader(
        memory_map, storage.source, storage.diagnostics, cache_limit_blocks=cache_limit_blocks
    )
