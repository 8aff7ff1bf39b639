"""Legacy saved-state RAM files (``.bin``) of VM configuration version 5.0.

Windows Server 2012 R2 VMs save their RAM to a ``.bin`` and their device state to a
``.vsv`` (``vmrs-format.md`` section 13, measured on real Hyper-V-written files). The
``.bin`` is neither a raw image nor a HyperVStorage container: a 0x28-byte header, an
index of 24-byte entries and a string table of entry names. Each used entry is named
``RamBlock/N/`` and points at a page-record stream of section 10.3, the same stream as a
compressed ``.vmrs`` RamBlock, that decodes to exactly 1 MiB (a value of exactly 1 MiB
would be raw memory, as in a ``.vmrs``; real files hold none).

Loading runs as small stages, each a function of the source, what the stage before
produced and the dump's :class:`~.diagnostics.Diagnostics`, building an immutable
:class:`LegacyBin`:

:func:`read_header` -> :func:`read_index` -> :func:`read_names` -> :func:`select_blocks`

Fatal problems (bad magic, a truncated header, an index or string table past the end of
the file or inside the header, an implausible capacity) raise :class:`LegacyBinError`,
:class:`NotALegacyBinError` or :class:`~.errors.TruncatedError` naming the structure and
file offset. Damage confined to one entry (its data past the end of the file or over the
index, a name that is not ``RamBlock/N/``, a duplicate block number, data overlapping
another entry's) is a warning of kind ``memory`` and the entry is not used: its megabyte
is then missing memory (an error of the memory map), never guessed. Oddities that do not
change what is read are notes of kind ``header``.

The ``.bin`` holds no GPA map: the only mapping real files bear out is block N at
guest-physical address N x 1 MiB (section 13, :func:`identity_ranges`), an assumption
the caller reports; :func:`memory_map` turns the blocks and a choice of ranges into the
:class:`~.memory_map.MemoryMap` the page reader serves. Block numbers at or above
:data:`MAX_BLOCKS` (1 TiB, the most RAM a configuration-5.0 VM can have) are reported
and not mapped. :func:`decode_block` decodes one block whole with the ``.vmrs``
page-stream code (:func:`.memory.index_page_stream`, :func:`.xpress.decompress`).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Dict, List, Set, Tuple

from . import memory as M
from . import xpress
from .diagnostics import Diagnostics, Kind
from .errors import GuestMemoryFormatError, SignatureError, TruncatedError, VmrsFormatError
from .memory_map import (
    BLOCK_SIZE,
    PAGES_PER_BLOCK,
    BlockLocation,
    MemoryMap,
    MemoryRange,
    arrange,
    find_missing,
)
from .source import PathOrFile, ReadOnlySource
from .structs import Layout

LEGACY_MAGIC = 0x02182003
KNOWN_VERSION = 0x0500  # configuration version 5.0, the only one seen (section 13)
# The header as measured; the rest of the first 4 KiB is zero in real files.
LEGACY_HEADER = Layout(
    "legacy .bin header",
    (
        ("magic", "I"),
        ("version", "I"),
        ("unknown", "I"),  # 1 in real files
        ("index_capacity", "I"),  # entries
        ("index_offset", "Q"),
        ("string_table_offset", "Q"),
        ("string_table_capacity", "I"),  # bytes
        ("string_table_used", "I"),  # bytes
    ),
)
assert LEGACY_HEADER.size == 0x28
LEGACY_INDEX_ENTRY = Layout(
    "legacy .bin index entry",
    (
        ("name_offset", "I"),  # into the string table
        ("name_length", "H"),  # bytes, NUL included
        ("unknown_a", "B"),  # 1 in real files
        ("unknown_b", "B"),  # 1 in real files
        ("allocated_size", "I"),  # a multiple of 4 KiB in real files
        ("data_size", "I"),
        ("data_offset", "Q"),
    ),
)
assert LEGACY_INDEX_ENTRY.size == 24
DATA_ALIGNMENT = 0x1000

# A configuration-5.0 VM has at most 1 TiB of RAM (Windows Server 2012 R2's limit):
# 2**20 blocks of 1 MiB. A block number beyond it, or an index with room for more
# entries, belongs to no plausible memory map.
MAX_BLOCKS = 1 << 20
MAX_INDEX_CAPACITY = MAX_BLOCKS
MAX_STRING_TABLE = MAX_INDEX_CAPACITY * 64

_BLOCK_NAME = re.compile(rb"RamBlock/(0|[1-9][0-9]{0,15})/\Z")

STRUCTURE_ENTRY = LEGACY_INDEX_ENTRY.name
STRUCTURE_STREAM = "RamBlock page stream"


class LegacyBinError(VmrsFormatError):
    """The ``.bin`` does not follow the legacy layout where nothing else can be trusted."""


class NotALegacyBinError(LegacyBinError, SignatureError):
    """The file does not start with the ``.bin`` magic 0x02182003."""


@dataclass(frozen=True)
class LegacyHeader:
    magic: int
    version: int
    unknown: int
    index_capacity: int
    index_offset: int
    string_table_offset: int
    string_table_capacity: int
    string_table_used: int

    @property
    def index_end(self) -> int:
        return self.index_offset + self.index_capacity * LEGACY_INDEX_ENTRY.size

    @property
    def strings_end(self) -> int:
        """End of the string bytes in use (the capacity may reach further)."""
        return self.string_table_offset + self.string_table_used


@dataclass(frozen=True)
class IndexEntry:
    """One used slot of the index (an entry whose 24 bytes are not all zero)."""

    slot: int
    file_offset: int
    name_offset: int
    name_length: int
    unknown_a: int
    unknown_b: int
    allocated_size: int
    data_size: int
    data_offset: int


@dataclass(frozen=True)
class LegacyBlock:
    """One ``RamBlock/N/`` entry: where its page stream lies in the file."""

    number: int
    name: str
    slot: int
    data_offset: int
    data_size: int
    allocated_size: int

    @property
    def is_raw(self) -> bool:
        """A value of exactly 1 MiB is raw memory, as in a ``.vmrs`` (section 10.2)."""
        return self.data_size == BLOCK_SIZE

    @property
    def data_end(self) -> int:
        return self.data_offset + self.data_size


@dataclass(frozen=True)
class LegacyBin:
    """The parsed ``.bin``: header, the usable blocks sorted by number, and the numbers
    of blocks that are named but unusable (their megabyte is unreadable, not a hole)."""

    name: str
    file_size: int
    header: LegacyHeader
    blocks: Tuple[LegacyBlock, ...]
    damaged: Tuple[int, ...] = ()

    @property
    def block_numbers(self) -> Tuple[int, ...]:
        return tuple(block.number for block in self.blocks)


def _warn(diag: Diagnostics, structure: str, message: str, offset: int, name: str = "") -> None:
    """Damage confined to one entry, which is then not used."""
    diag.warn(Kind.MEMORY, structure, message, offset=offset, key_path=name or None)


def _note(diag: Diagnostics, structure: str, message: str, offset: int, name: str = "") -> None:
    """An oddity that does not change what is read."""
    diag.note(Kind.HEADER, structure, message, offset=offset, key_path=name or None)


# --- stages ---------------------------------------------------------------------------
def is_legacy_bin(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) starts with the ``.bin`` magic."""
    return len(head) >= 4 and struct.unpack_from("<I", head)[0] == LEGACY_MAGIC


def read_header(source: ReadOnlySource, diag: Diagnostics) -> LegacyHeader:
    """The header, with the index and string table checked against the file size."""
    head = source.read(0, LEGACY_HEADER.size)
    if len(head) >= 4 and not is_legacy_bin(head):
        raise NotALegacyBinError(
            f"magic {struct.unpack_from('<I', head)[0]:#010x}, expected {LEGACY_MAGIC:#010x}",
            structure=LEGACY_HEADER.name,
            offset=0,
        )
    if len(head) < LEGACY_HEADER.size:
        raise TruncatedError(
            f"needs {LEGACY_HEADER.size:#x} bytes, the file has {source.size:#x}",
            structure=LEGACY_HEADER.name,
            offset=0,
        )
    header = LegacyHeader(**LEGACY_HEADER.as_dict(LEGACY_HEADER.unpack(head)))
    if header.version != KNOWN_VERSION:
        diag.note(
            Kind.HEADER,
            LEGACY_HEADER.name,
            f"version {header.version:#06x}; only {KNOWN_VERSION:#06x} has been seen, read alike",
            offset=LEGACY_HEADER.offset_of("version"),
        )
    if header.unknown != 1:
        diag.note(
            Kind.HEADER,
            LEGACY_HEADER.name,
            f"field at 0x8 is {header.unknown:#x} (1 in every file seen)",
            offset=LEGACY_HEADER.offset_of("unknown"),
        )
    if header.index_capacity > MAX_INDEX_CAPACITY:
        raise LegacyBinError(
            f"index capacity {header.index_capacity:#x} entries exceeds {MAX_INDEX_CAPACITY:#x} "
            "(1 TiB of RAM in 1 MiB blocks)",
            structure=LEGACY_HEADER.name,
            offset=LEGACY_HEADER.offset_of("index_capacity"),
        )
    for what, offset in (
        ("index", header.index_offset),
        ("string table", header.string_table_offset),
    ):
        if offset < LEGACY_HEADER.size:
            raise LegacyBinError(
                f"the {what} at {offset:#x} overlaps the header",
                structure=LEGACY_HEADER.name,
                offset=0,
            )
    if header.index_end > source.size:
        raise TruncatedError(
            f"index of {header.index_capacity:#x} entries at {header.index_offset:#x}-"
            f"{header.index_end:#x} lies outside the file (size {source.size:#x})",
            structure="legacy .bin index",
            offset=header.index_offset,
        )
    if header.string_table_used > header.string_table_capacity:
        raise LegacyBinError(
            f"{header.string_table_used:#x} string bytes in use but a capacity of "
            f"{header.string_table_capacity:#x}",
            structure=LEGACY_HEADER.name,
            offset=LEGACY_HEADER.offset_of("string_table_used"),
        )
    if header.string_table_capacity > MAX_STRING_TABLE:
        raise LegacyBinError(
            f"string table capacity {header.string_table_capacity:#x} exceeds "
            f"{MAX_STRING_TABLE:#x}",
            structure=LEGACY_HEADER.name,
            offset=LEGACY_HEADER.offset_of("string_table_capacity"),
        )
    if header.strings_end > source.size:
        raise TruncatedError(
            f"string table at {header.string_table_offset:#x} with {header.string_table_used:#x} "
            f"bytes in use lies outside the file (size {source.size:#x})",
            structure="legacy .bin string table",
            offset=header.string_table_offset,
        )
    capacity_end = header.string_table_offset + header.string_table_capacity
    if capacity_end > source.size:
        diag.note(
            Kind.HEADER,
            "legacy .bin string table",
            f"capacity reaches {capacity_end:#x}, past the end of the file ({source.size:#x}); "
            "the bytes in use are inside",
            offset=header.string_table_offset,
        )
    if _overlap(
        (header.index_offset, header.index_end), (header.string_table_offset, header.strings_end)
    ):
        raise LegacyBinError(
            "the index and the string table overlap",
            structure="legacy .bin index",
            offset=header.index_offset,
        )
    return header


def read_index(source: ReadOnlySource, header: LegacyHeader) -> Tuple[IndexEntry, ...]:
    """The used entries (not all zero) of the index, in slot order."""
    table = source.read_exact(
        header.index_offset, header.index_end - header.index_offset, "legacy .bin index"
    )
    empty = bytes(LEGACY_INDEX_ENTRY.size)
    entries = []
    for slot in range(header.index_capacity):
        at = slot * LEGACY_INDEX_ENTRY.size
        raw = table[at : at + LEGACY_INDEX_ENTRY.size]
        if raw == empty:
            continue
        fields = LEGACY_INDEX_ENTRY.as_dict(LEGACY_INDEX_ENTRY.unpack(raw))
        entries.append(IndexEntry(slot=slot, file_offset=header.index_offset + at, **fields))
    return tuple(entries)


def read_names(
    source: ReadOnlySource,
    header: LegacyHeader,
    entries: Tuple[IndexEntry, ...],
    diag: Diagnostics,
) -> Tuple[Tuple[IndexEntry, int, str], ...]:
    """(entry, block number, name) for each entry strictly named ``RamBlock/N/``."""
    strings = source.read_exact(
        header.string_table_offset, header.string_table_used, "legacy .bin string table"
    )
    named = []
    for entry in entries:
        where = f"slot {entry.slot}: "
        end = entry.name_offset + entry.name_length
        if entry.name_length < 2 or end > len(strings):
            _warn(
                diag,
                STRUCTURE_ENTRY,
                f"{where}name of {entry.name_length} bytes at string offset "
                f"{entry.name_offset:#x} is not inside the {len(strings):#x} string bytes in "
                "use; entry ignored",
                entry.file_offset,
            )
            continue
        raw = strings[entry.name_offset : end]
        shown = raw.rstrip(b"\0").decode("ascii", "backslashreplace")[:40]
        match = _BLOCK_NAME.match(raw[:-1]) if raw.endswith(b"\0") else None
        if match is None:
            _warn(
                diag,
                STRUCTURE_ENTRY,
                f"{where}name {shown!r} is not a NUL-terminated 'RamBlock/N/'; entry ignored",
                entry.file_offset,
            )
            continue
        named.append((entry, int(match.group(1)), raw[:-1].decode("ascii")))
    return tuple(named)


def select_blocks(
    named: Tuple[Tuple[IndexEntry, int, str], ...],
    header: LegacyHeader,
    file_size: int,
    diag: Diagnostics,
) -> Tuple[Tuple[LegacyBlock, ...], Tuple[int, ...]]:
    """The usable blocks sorted by number, and the numbers of the damaged ones: extents,
    duplicates and overlaps checked."""
    candidates: List[Tuple[IndexEntry, LegacyBlock]] = []
    duplicated = _duplicates(named, diag)
    damaged = set(duplicated)
    for entry, number, name in named:
        where = f"slot {entry.slot}: "
        if number in duplicated:
            continue
        if number >= MAX_BLOCKS:
            _warn(
                diag,
                STRUCTURE_ENTRY,
                f"{where}block number {number} is beyond any plausible memory map "
                f"(at most {MAX_BLOCKS} blocks, 1 TiB); not used",
                entry.file_offset,
                name,
            )
            continue
        if entry.data_size == 0 or entry.data_size > BLOCK_SIZE:
            _warn(
                diag,
                STRUCTURE_ENTRY,
                f"{where}data size {entry.data_size:#x}; a RamBlock holds 1..0x100000 bytes; "
                "block unreadable",
                entry.file_offset,
                name,
            )
            damaged.add(number)
            continue
        if entry.data_offset + entry.data_size > file_size:
            _warn(
                diag,
                STRUCTURE_ENTRY,
                f"{where}data at {entry.data_offset:#x}+{entry.data_size:#x} runs past the end "
                f"of the file ({file_size:#x}); block unreadable",
                entry.file_offset,
                name,
            )
            damaged.add(number)
            continue
        block = LegacyBlock(
            number, name, entry.slot, entry.data_offset, entry.data_size, entry.allocated_size
        )
        reserved = (
            ("the header", (0, LEGACY_HEADER.size)),
            ("the index", (header.index_offset, header.index_end)),
            ("the string table", (header.string_table_offset, header.strings_end)),
        )
        clash = next((what for what, span in reserved if _overlap(span, _span(block))), None)
        if clash is not None:
            _warn(
                diag,
                STRUCTURE_ENTRY,
                f"{where}data at {entry.data_offset:#x}+{entry.data_size:#x} overlaps {clash}; "
                "block unreadable",
                entry.file_offset,
                name,
            )
            damaged.add(number)
            continue
        _note_entry_oddities(entry, name, diag)
        candidates.append((entry, block))
    candidates = _drop_overlaps(candidates, diag)
    blocks = tuple(sorted((block for _, block in candidates), key=lambda b: b.number))
    usable = {block.number for block in blocks}
    damaged.update(number for _, number, _ in named if number < MAX_BLOCKS)
    return blocks, tuple(sorted(damaged - usable))


def _note_entry_oddities(entry: IndexEntry, name: str, diag: Diagnostics) -> None:
    where = f"slot {entry.slot}: "
    if (entry.unknown_a, entry.unknown_b) != (1, 1):
        _note(
            diag,
            STRUCTURE_ENTRY,
            f"{where}bytes 6-7 are {entry.unknown_a}, {entry.unknown_b} (1, 1 in every file seen)",
            entry.file_offset,
            name,
        )
    if entry.allocated_size < entry.data_size:
        _note(
            diag,
            STRUCTURE_ENTRY,
            f"{where}allocated size {entry.allocated_size:#x} is below the data size "
            f"{entry.data_size:#x}",
            entry.file_offset,
            name,
        )
    if entry.data_offset % DATA_ALIGNMENT:
        _note(
            diag,
            STRUCTURE_ENTRY,
            f"{where}data at {entry.data_offset:#x} is not 4 KiB aligned",
            entry.file_offset,
            name,
        )


def _duplicates(named: Tuple[Tuple[IndexEntry, int, str], ...], diag: Diagnostics) -> Set[int]:
    """Block numbers named by several entries: none of them is trusted."""
    by_number: Dict[int, List[Tuple[IndexEntry, str]]] = {}
    for entry, number, name in named:
        by_number.setdefault(number, []).append((entry, name))
    found = set()
    for number, group in by_number.items():
        if len(group) < 2:
            continue
        found.add(number)
        slots = ", ".join(str(entry.slot) for entry, _ in group)
        _warn(
            diag,
            STRUCTURE_ENTRY,
            f"block number {number} is named by {len(group)} entries (slots {slots}); "
            "none is used, the block is unreadable",
            group[1][0].file_offset,
            group[0][1],
        )
    return found


def _drop_overlaps(
    candidates: List[Tuple[IndexEntry, LegacyBlock]], diag: Diagnostics
) -> List[Tuple[IndexEntry, LegacyBlock]]:
    """Entries whose data share bytes: none of them is trusted (sorted sweep, n log n)."""
    ordered = sorted(candidates, key=lambda item: (item[1].data_offset, item[1].data_end))
    bad = set()
    reach = -1  # end of the furthest data seen so far
    reach_index = -1
    for position, (_, block) in enumerate(ordered):
        if block.data_offset < reach:
            bad.update((position, reach_index))
        if block.data_end > reach:
            reach, reach_index = block.data_end, position
    for position in sorted(bad):
        entry, block = ordered[position]
        _warn(
            diag,
            STRUCTURE_ENTRY,
            f"slot {entry.slot}: data at {block.data_offset:#x}+{block.data_size:#x} overlaps "
            "another entry's data; block unreadable",
            entry.file_offset,
            block.name,
        )
    return [item for position, item in enumerate(ordered) if position not in bad]


def _span(block: LegacyBlock) -> Tuple[int, int]:
    return block.data_offset, block.data_end


def _overlap(a: Tuple[int, int], b: Tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def parse_legacy_bin(source: ReadOnlySource, diag: Diagnostics) -> LegacyBin:
    """Run the stages over an open source; raises or reports as the module says."""
    header = read_header(source, diag)
    entries = read_index(source, header)
    named = read_names(source, header, entries, diag)
    blocks, damaged = select_blocks(named, header, source.size, diag)
    return LegacyBin(source.name, source.size, header, blocks, damaged)


def load_legacy_bin(path: PathOrFile, diag: Diagnostics) -> LegacyBin:
    """Open ``path`` read-only, parse it, close it."""
    source = ReadOnlySource(path)
    try:
        return parse_legacy_bin(source, diag)
    finally:
        source.close()


# --- page streams ---------------------------------------------------------------------
def read_block_data(source: ReadOnlySource, block: LegacyBlock) -> bytes:
    """The stored bytes of a block (its page stream, or 1 MiB of raw memory)."""
    return source.read_exact(block.data_offset, block.data_size, STRUCTURE_STREAM, block.name)


def _index(block: LegacyBlock, stream: bytes) -> M._BlockIndex:
    try:
        return M.index_page_stream(stream, block.name)
    except GuestMemoryFormatError as error:
        raise GuestMemoryFormatError(
            error.detail, structure=STRUCTURE_STREAM, offset=block.data_offset, key_path=block.name
        ) from None


def decode_page_stream(block: LegacyBlock, stream: bytes) -> bytes:
    """Decode a block's stored bytes to its 1 MiB, with the ``.vmrs`` page-stream code.

    The records come from :func:`.memory.index_page_stream` (which checks that they
    describe exactly 1 MiB); XPRESS records are decoded by :func:`.xpress.decompress`.
    Raises :class:`GuestMemoryFormatError` naming the block and its data's file offset.
    """
    if block.is_raw:
        return stream
    index = _index(block, stream)
    output = bytearray()
    for record in range(len(index)):
        kind, source, length = index.kind[record], index.source[record], index.data_length[record]
        out_length = index.out_length[record]
        if kind == M.KIND_FILL:
            output += struct.pack("<Q", source) * (out_length // 8)
        elif kind == M.KIND_RAW:
            output += stream[source : source + length]
        else:
            try:
                output += xpress.decompress(stream[source : source + length], out_length)
            except GuestMemoryFormatError as error:
                raise GuestMemoryFormatError(
                    f"XPRESS record at value offset {source:#x}: {error.detail}",
                    structure=STRUCTURE_STREAM,
                    offset=block.data_offset,
                    key_path=block.name,
                ) from None
    return bytes(output)


def decode_block(source: ReadOnlySource, block: LegacyBlock) -> bytes:
    """Read and decode one block to exactly 1 MiB."""
    return decode_page_stream(block, read_block_data(source, block))


# --- the mapping real files bear out --------------------------------------------------
def identity_ranges(legacy_bin: LegacyBin) -> Tuple[MemoryRange, ...]:
    """Block N at guest-physical N x 1 MiB: one range per run of consecutive numbers.

    This is an assumption (the ``.bin`` holds no GPA map) that the real files bear out
    for a VM whose RAM lies below the MMIO gap (section 13). Numbers of usable and of
    damaged blocks count, so a damaged block is missing memory while a number no entry
    names is a hole.
    """
    numbers = sorted(set(legacy_bin.block_numbers) | set(legacy_bin.damaged))
    runs: List[List[int]] = []  # [first, last] block numbers of consecutive runs
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return tuple(
        MemoryRange(
            number=position,
            key_path=f"RamBlock/{first}/",
            gpa_page=first * PAGES_PER_BLOCK,
            page_count=(last + 1 - first) * PAGES_PER_BLOCK,
            mbp_start=first * PAGES_PER_BLOCK,
        )
        for position, (first, last) in enumerate(runs)
    )


def memory_map(
    legacy_bin: LegacyBin, ranges: Tuple[MemoryRange, ...], diag: Diagnostics
) -> MemoryMap:
    """The :class:`MemoryMap` of the ``.bin``'s blocks under ``ranges`` (identity, or a
    map from the ``.vsv``); blocks a range needs that are not usable are reported missing."""
    blocks = {
        block.number: BlockLocation(block.number, block.name, block.data_offset, block.data_size)
        for block in legacy_bin.blocks
    }
    arranged = arrange(ranges, diag)
    return MemoryMap(arranged, blocks, find_missing(arranged, blocks, diag))
