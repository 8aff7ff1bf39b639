"""The HyperVStorage container shared by ``.vmrs`` and ``.vmcx`` files.

Opening reads only metadata, in five stages, each a function of the read-only source,
what the stage before produced and the diagnostics: headers -> replay-log overlay ->
object tables -> key tables -> tree (plus a check that what the object tables declare
lies inside the file). :class:`HyperVStorage` holds what they built and answers queries.
Values are decoded when asked for, and values kept in file objects are read from the file
only then, so opening a 30 GB saved state costs a few pages.

Reading is lenient where the file is otherwise sound: a checksum that does not match, an
unknown entry type, a key whose parent is missing, are reported to the
:class:`~.diagnostics.Diagnostics` (``HyperVStorage.diagnostics``) and reading goes on;
``strict=True`` raises them (see :mod:`.diagnostics`). What cannot be read at all (no
valid header, unsupported version, a structure past the end of the file that everything
else depends on) raises at once.

Section numbers refer to ``vmrs-format.md``.
"""

from __future__ import annotations

import bisect
import enum
import operator
import struct
import zlib
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple, Union

from . import structs as S
from .diagnostics import Diagnostics, Kind
from .errors import (
    KeyNotFoundError,
    KeyTreeError,
    NotAContainerError,
    ReplayLogError,
    SignatureError,
    TruncatedError,
    UnsupportedVersionError,
    VmrsFormatError,
)
from .gcpause import collector_paused
from .source import PathOrFile, ReadOnlySource

# Alignment values readers accept (§2: 0x1000..0x10000).
MIN_ALIGNMENT = 0x1000
MAX_ALIGNMENT = 0x10000
# A key table is one page in every known file; allow up to 16 MiB before calling it absurd.
MAX_KEY_TABLE_SIZE = 0x1000000
# Real trees are 6-7 levels deep. Every key keeps its full path, so depth times the
# number of keys is memory: bound both (and keep Key.as_dict's recursion shallow).
MAX_KEY_DEPTH = 64
MAX_TOTAL_PATH_CHARS = 0x1000000


class KeyType(enum.IntEnum):
    """Type byte of a key entry (§4.3)."""

    FREE = 1
    UNKNOWN = 2
    INT = 3
    UINT = 4
    DOUBLE = 5
    STRING = 6
    ARRAY = 7
    BOOL = 8
    NODE = 9


_KEY_TYPES = {int(key_type): key_type for key_type in KeyType}
_FREE = int(KeyType.FREE)
_VALUE_TYPES = frozenset(int(t) for t in KeyType if t not in (KeyType.FREE, KeyType.UNKNOWN))
_LENGTH_PREFIXED = frozenset((int(KeyType.STRING), int(KeyType.ARRAY)))
_ENTRY_HEADER_SIZE = S.KEY_ENTRY_HEADER.size
_ENTRY_CHECKSUM_AT = S.KEY_ENTRY_HEADER.offset_of("checksum")

# Bytes each fixed-size type occupies after the name (length-prefixed types: 4 + length).
_STORED_SIZE = {
    int(KeyType.INT): 8,
    int(KeyType.UINT): 8,
    int(KeyType.DOUBLE): 8,
    int(KeyType.BOOL): 4,
    int(KeyType.NODE): S.NODE_VALUE.size,
}
_unpack_pointer = S.FILE_OBJECT_POINTER.unpack_tuple  # (value_length, file_offset)
_POINTER_SIZE = S.FILE_OBJECT_POINTER.size
_U32 = struct.Struct("<I")
_ZERO_CHECKSUM = bytes(4)
_FILE_OBJECT = S.KEY_FLAG_FILE_OBJECT

_SCALAR_FORMATS = {
    KeyType.INT: "<q",
    KeyType.UINT: "<Q",
    KeyType.DOUBLE: "<d",
    KeyType.BOOL: "<I",
}


@dataclass(frozen=True)
class FileHeader:
    """The active file header (§2) and where it came from."""

    offset: int
    sequence: int
    format_version: int
    data_version: int
    flags: int
    data_alignment: int
    replay_log_offset: int
    replay_log_size: int
    replay_log_header_size: int

    @property
    def format_version_text(self) -> str:
        return f"{self.format_version >> 8}.{self.format_version & 0xFF}"


@dataclass(frozen=True)
class ReplayLogStatus:
    """What the replay log said and what the reader did with it (§6)."""

    offset: int
    size: int
    valid: bool = False
    pending_entries: int = 0
    max_entries: int = 0
    applied_entries: int = 0
    past_end_of_file: bool = False

    @property
    def status(self) -> str:
        if not self.valid:
            return "invalid (ignored)"
        if self.applied_entries:
            return f"applied in memory ({self.applied_entries} entries)"
        return "clean"


@dataclass(frozen=True)
class ObjectEntry:
    """One used slot of an object table (§3)."""

    type: int
    file_offset: int
    size: int
    flags: int
    slot_offset: int


class Key:
    """One key of the tree: a node or a typed value.

    ``size`` is the length of the value in bytes (for file objects the exact length the
    key declares, not the aligned object size). Values are decoded on request.

    A node holds its children by label (the name, or ``name[n]`` for the n-th repeat),
    in insertion order. Child nodes are keys from the start; a value key is made the
    first time someone asks for it (``children``, ``child``, the storage's ``get``):
    a 64 GiB saved state has 65,536 RamBlock values that opening never needs as keys.
    """

    __slots__ = (
        "_entries",
        "entry_offset",
        "file_offset",
        "flags",
        "insertion_sequence",
        "name",
        "parent",
        "path",
        "size",
        "source",
        "table_index",
        "type",
        "value_offset",
    )

    def __init__(
        self,
        source: ReadOnlySource,
        path: str,
        name: str,
        type: KeyType,
        flags: int,
        table_index: int,
        entry_offset: int,  # offset of the entry inside its key table
        file_offset: int,  # file offset of the entry
        insertion_sequence: int,
        value_offset: int,  # file offset of the value bytes (inline or file object data)
        size: int,
        parent: Optional[Key] = None,
    ) -> None:
        self.source = source
        self.path = path
        self.name = name
        self.type = type
        self.flags = flags
        self.table_index = table_index
        self.entry_offset = entry_offset
        self.file_offset = file_offset
        self.insertion_sequence = insertion_sequence
        self.value_offset = value_offset
        self.size = size
        self.parent = parent
        # Children by label: a Key, or the parsed entry of a value key not made yet.
        self._entries: Dict[str, Union[Key, _RawEntry]] = {}

    def __repr__(self) -> str:
        return f"Key({self.path!r}, {self.type.name}, size={self.size:#x})"

    @property
    def is_file_object(self) -> bool:
        return bool(self.flags & S.KEY_FLAG_FILE_OBJECT)

    @property
    def is_node(self) -> bool:
        return self.type == KeyType.NODE

    def read(self, offset: int = 0, size: Optional[int] = None) -> bytes:
        """Raw value bytes (for String/Array: the payload without its length prefix)."""
        if offset < 0 or offset > self.size:
            raise ValueError(f"offset {offset:#x} outside the value of {self.path}")
        if size is None or offset + size > self.size:
            size = self.size - offset
        return self.source.read_exact(self.value_offset + offset, size, "key value", self.path)

    @property
    def value(self) -> Any:
        """The decoded value: int, float, str, bytes, bool, or a dict for a node."""
        return decode_value(self)

    @property
    def children(self) -> List[Key]:
        """The child keys in insertion order."""
        return [self._made(label, item) for label, item in list(self._entries.items())]

    def child(self, name: str, index: int = 0) -> Key:
        """The ``index``-th child called ``name`` (names repeat in arrays of nodes)."""
        label = name if index == 0 else f"{name}[{index}]"
        item = self._entries.get(label)
        if item is None or item.name != name:
            raise KeyNotFoundError(self.path.rstrip("/") + "/" + label)
        return self._made(label, item)

    def labelled(self, label: str) -> Optional[Key]:
        """The child whose path ends in ``label`` (``name`` or ``name[n]``), if any."""
        item = self._entries.get(label)
        return None if item is None else self._made(label, item)

    def value_entries(self) -> Iterator[ValueEntry]:
        """The children as :class:`ValueEntry` records, without making keys of them."""
        prefix = self.path.rstrip("/") + "/"
        new_entry = tuple.__new__
        types = _KEY_TYPES
        for label, item in self._entries.items():
            if type(item) is _RawEntry:
                _, _, _, key_type, _, _, _, name, value_offset, size = item
                yield new_entry(
                    ValueEntry, (name, prefix + label, types[key_type], value_offset, size)
                )
            else:
                yield new_entry(
                    ValueEntry, (item.name, item.path, item.type, item.value_offset, item.size)
                )

    def _made(self, label: str, item: Union[Key, _RawEntry]) -> Key:
        if isinstance(item, Key):
            return item
        key = Key(
            self.source,
            self.path.rstrip("/") + "/" + label,
            item.name,
            _KEY_TYPES[item.type],
            item.flags,
            item.table_index,
            item.offset,
            item.file_offset,
            item.insertion_sequence,
            item.value_offset,
            item.value_size,
            self,
        )
        # Two threads may both make it; either key is the same value, the last one stays.
        self._entries[label] = key
        return key

    def as_dict(self, arrays: bool = False) -> Dict[str, Any]:
        """Nested dicts of the subtree.

        Siblings sharing a name are arrays. By default the last one wins, which is what
        dissect.hypervisor's ``as_dict`` gives; ``arrays=True`` keeps them all in a list.
        """
        result: Dict[str, Any] = {}
        for child in self.children:
            value = child.as_dict(arrays) if child.is_node else child.value
            if arrays and child.name in result:
                previous = result[child.name]
                if isinstance(previous, _Siblings):
                    previous.append(value)
                else:
                    result[child.name] = _Siblings([previous, value])
            else:
                result[child.name] = value
        return result


class _Siblings(list):  # type: ignore[type-arg]
    """Values of sibling keys that share one name (an array in the container)."""


class _Regions:
    """Disjoint byte ranges of the file already claimed by a structure."""

    def __init__(self) -> None:
        self._starts: List[int] = []
        self._ends: List[int] = []

    def room(self, start: int, size: int) -> int:
        """How many bytes from ``start`` (at most ``size``) are not claimed yet."""
        at = bisect.bisect_right(self._starts, start)
        if at and self._ends[at - 1] > start:
            return 0
        if at < len(self._starts):
            return min(size, self._starts[at] - start)
        return size

    def claim(self, start: int, size: int) -> bool:
        """Claim ``[start, start + size)`` unless any of it is claimed already."""
        if size <= 0:
            return True
        if self.room(start, size) < size:
            return False
        at = bisect.bisect_right(self._starts, start)
        self._starts.insert(at, start)
        self._ends.insert(at, start + size)
        return True


class _RawEntry(NamedTuple):
    """A parsed key entry before its path is known.

    Locations are ``table << 32 | offset`` (the parent's as the entry names it, table 0
    being the root whatever the offset), one int per entry rather than a tuple.
    """

    table_index: int
    offset: int
    file_offset: int
    type: int
    flags: int
    parent: int
    insertion_sequence: int
    name: str
    value_offset: int
    value_size: int


class ValueEntry(NamedTuple):
    """A child key as the memory map needs it: no key object made for it."""

    name: str
    path: str
    type: KeyType
    value_offset: int
    size: int


_new_raw_entry = tuple.__new__  # builds a _RawEntry without the NamedTuple's argument binding


def _location(table: int, offset: int) -> int:
    """The location a parent reference names (table 0 is the root whatever the offset)."""
    return 0 if table == 0 else table << 32 | offset


class HyperVStorage:
    """A HyperVStorage container opened read-only: the model the five stages build.

    ``source`` is a path or a binary file object opened for reading; the file is never
    written. Problems reading tolerated go into ``diagnostics`` (one shared
    :class:`~.diagnostics.Diagnostics` when the caller passes it); ``strict=True`` makes
    every warning raise (see :mod:`.diagnostics`).
    """

    def __init__(
        self,
        source: PathOrFile,
        *,
        strict: bool = False,
        diagnostics: Optional[Diagnostics] = None,
    ) -> None:
        self.diagnostics = diagnostics if diagnostics is not None else Diagnostics(strict=strict)
        self.source = ReadOnlySource(source)
        try:
            diag = self.diagnostics
            if self.source.file_size == 0:
                raise NotAContainerError("the file is empty", structure="file header", offset=0)
            self.header, self.header_copies_valid = read_headers(self.source, diag)
            self.replay_log = read_replay_log(self.source, self.header, diag)
            self.object_entries = walk_object_tables(self.source, self.header, diag)
            self.file_objects = {
                entry.file_offset: entry
                for entry in self.object_entries
                if entry.type == S.OBJECT_TYPE_FILE
            }
            self.truncation = check_extent(self.source, self.object_entries, diag)
            with collector_paused():
                raw_entries, self.key_table_info = read_key_tables(
                    self.source, self.object_entries, diag
                )
                self.root = build_tree(self.source, raw_entries, self.file_objects, diag)
        except BaseException:
            self.source.close()
            raise

    # --- public API -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.source.name

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> HyperVStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __contains__(self, path: str) -> bool:
        return self._find(path) is not None

    def get(self, path: str) -> Key:
        """The key at ``path`` (``/a/b/c``; a leading ``/`` is optional)."""
        key = self._find(path)
        if key is None:
            raise KeyNotFoundError(self._normalise(path)) from None
        return key

    def _find(self, path: str) -> Optional[Key]:
        key: Optional[Key] = self.root
        for label in path.split("/"):
            if label and key is not None:
                key = key.labelled(label)
        return key

    def value(self, path: str) -> Any:
        return self.get(path).value

    def walk(self, prefix: str = "/") -> Iterator[Key]:
        """Every key below ``prefix`` (inclusive), depth first, siblings in insertion order."""
        prefix = self._normalise(prefix)
        stack = self.root.children[::-1] if prefix == "/" else [self.get(prefix)]
        while stack:
            key = stack.pop()
            yield key
            stack.extend(key.children[::-1])

    def keys(self) -> List[str]:
        return [key.path for key in self.walk()]

    def as_dict(self, arrays: bool = False) -> Dict[str, Any]:
        """The whole tree as nested dicts (see :meth:`Key.as_dict`)."""
        return self.root.as_dict(arrays)

    @staticmethod
    def _normalise(path: str) -> str:
        parts = [part for part in path.split("/") if part]
        return "/" + "/".join(parts)


def open_storage(source: PathOrFile, *, strict: bool = False) -> HyperVStorage:
    """Open a ``.vmrs`` / ``.vmcx`` container read-only."""
    return HyperVStorage(source, strict=strict)


# --- loading ----------------------------------------------------------------------
def read_headers(source: ReadOnlySource, diag: Diagnostics) -> Tuple[FileHeader, Tuple[bool, bool]]:
    """Stage 1: both header copies; the valid one with the higher sequence wins (§2)."""
    candidates = []
    problems = []
    for offset in S.FILE_HEADER_OFFSETS:
        raw = source.read(offset, S.FILE_HEADER.size)
        if len(raw) < S.FILE_HEADER.size:
            problems.append((offset, "copy is truncated"))
            continue
        fields = S.FILE_HEADER.unpack(raw, where=offset)
        if fields.signature != S.FILE_HEADER_SIGNATURE:
            problems.append((offset, f"bad signature {fields.signature:#010x}"))
            continue
        expected = S.crc32_with_zeroed_field(raw, S.FILE_HEADER.offset_of("checksum"))
        if expected != fields.checksum:
            problems.append(
                (offset, f"checksum {fields.checksum:#010x} != computed {expected:#010x}")
            )
            continue
        candidates.append((offset, fields))
    valid = tuple(
        any(offset == candidate for candidate, _ in candidates) for offset in S.FILE_HEADER_OFFSETS
    )
    if not candidates:
        raise NotAContainerError(
            "no valid HyperVStorage header ("
            + "; ".join(f"copy at {where:#x}: {text}" for where, text in problems)
            + ")",
            structure="file header",
            offset=0,
        )
    for where, text in problems:
        # One good copy is enough to read the file, but the analyst should know.
        diag.warn(Kind.CHECKSUM, "file header", text, offset=where)
    offset, fields = max(candidates, key=lambda item: item[1].sequence)
    if len(candidates) == 2 and candidates[0][1].sequence == candidates[1][1].sequence:
        diag.warn(
            Kind.HEADER,
            "file header",
            f"both copies have sequence {fields.sequence}; using the copy at {offset:#x}",
        )
    if fields.format_version != S.SUPPORTED_FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"unsupported format version {fields.format_version:#06x} "
            f"(only {S.SUPPORTED_FORMAT_VERSION:#06x} is known)",
            structure="file header",
            offset=offset,
        )
    alignment = fields.data_alignment
    if not MIN_ALIGNMENT <= alignment <= MAX_ALIGNMENT or alignment & (alignment - 1):
        raise VmrsFormatError(
            f"data alignment {alignment:#x} outside {MIN_ALIGNMENT:#x}..{MAX_ALIGNMENT:#x}",
            structure="file header",
            offset=offset,
        )
    header = FileHeader(
        offset=offset,
        sequence=fields.sequence,
        format_version=fields.format_version,
        data_version=fields.data_version,
        flags=fields.flags,
        data_alignment=alignment,
        replay_log_offset=fields.replay_log_offset,
        replay_log_size=fields.replay_log_size,
        replay_log_header_size=fields.replay_log_header_size,
    )
    return header, (valid[0], valid[1])


def read_replay_log(
    source: ReadOnlySource, header: FileHeader, diag: Diagnostics
) -> ReplayLogStatus:
    """Stage 2: the replay log; pending entries are applied to the in-memory overlay (§6)."""
    log_offset = header.replay_log_offset
    status = ReplayLogStatus(offset=log_offset, size=header.replay_log_size)
    structure = "replay log header"
    if log_offset == 0 and header.replay_log_size == 0:
        diag.warn(Kind.REPLAY_LOG, structure, "the header declares no replay log")
        return status
    if log_offset > source.file_size or log_offset < 0x2000:
        diag.warn(
            Kind.REPLAY_LOG,
            structure,
            f"declared at {log_offset:#x}, outside the file (size {source.file_size:#x})",
            offset=log_offset,
        )
        return status
    status = replace(
        status, past_end_of_file=log_offset + header.replay_log_size > source.file_size
    )
    # The declared log region may run past the end of file (seen in real files):
    # the missing bytes read as zeros.
    raw = source.read_zero_padded(log_offset, S.REPLAY_LOG_HEADER.size)
    fields = S.REPLAY_LOG_HEADER.unpack(raw, where=log_offset)
    if fields.signature != S.REPLAY_LOG_SIGNATURE:
        diag.warn(
            Kind.REPLAY_LOG,
            structure,
            f"bad signature {fields.signature:#010x}; log ignored",
            offset=log_offset,
        )
        return status
    expected = S.crc32_with_zeroed_field(raw, S.REPLAY_LOG_HEADER.offset_of("checksum"))
    if expected != fields.checksum:
        if fields.current_entries:
            raise ReplayLogError(
                f"log header checksum {fields.checksum:#010x} != computed {expected:#010x} "
                f"while it claims {fields.current_entries} pending entries: the last "
                "save may be incomplete and cannot be replayed safely",
                structure=structure,
                offset=log_offset,
            )
        diag.warn(
            Kind.CHECKSUM,
            structure,
            f"checksum {fields.checksum:#010x} != computed {expected:#010x}; log ignored",
            offset=log_offset,
        )
        return status
    status = replace(
        status,
        valid=True,
        pending_entries=fields.current_entries,
        max_entries=fields.max_entries,
    )
    if fields.current_entries:
        status = _apply_replay_log(source, header, fields.current_entries, status, diag)
    return status


def _apply_replay_log(
    source: ReadOnlySource,
    header: FileHeader,
    count: int,
    status: ReplayLogStatus,
    diag: Diagnostics,
) -> ReplayLogStatus:
    log_offset = header.replay_log_offset
    header_size = header.replay_log_header_size
    capacity = max(0, (header_size - S.REPLAY_LOG_HEADER.size) // S.REPLAY_LOG_ENTRY.size)
    if count > capacity:
        raise ReplayLogError(
            f"{count} pending entries do not fit in a log header of {header_size:#x} bytes "
            f"(at most {capacity})",
            structure="replay log header",
            offset=log_offset,
        )
    patches = []
    overlay_size = source.file_size
    for index in range(count):
        entry_offset = log_offset + S.REPLAY_LOG_HEADER.size + index * S.REPLAY_LOG_ENTRY.size
        structure = f"replay log entry {index}"
        raw = source.read_zero_padded(entry_offset, S.REPLAY_LOG_ENTRY.size)
        entry = S.REPLAY_LOG_ENTRY.unpack(raw, where=entry_offset)
        expected = S.crc32_with_zeroed_field(raw, S.REPLAY_LOG_ENTRY.offset_of("checksum"))
        if expected != entry.checksum:
            raise ReplayLogError(
                f"pending entry checksum {entry.checksum:#010x} != computed {expected:#010x}",
                structure=structure,
                offset=entry_offset,
            )
        data_start = entry.data_offset
        if data_start + entry.length > header.replay_log_size or data_start < header_size:
            raise ReplayLogError(
                f"data at log offset {data_start:#x} (+{entry.length:#x}) lies outside the "
                f"log data area {header_size:#x}..{header.replay_log_size:#x}",
                structure=structure,
                offset=entry_offset,
            )
        if entry.destination_offset < 0x2000:
            raise ReplayLogError(
                f"destination {entry.destination_offset:#x} would overwrite the file headers",
                structure=structure,
                offset=entry_offset,
            )
        if log_offset + data_start + entry.length > source.file_size:
            # A torn save: the data of a pending entry never reached the file. (Also
            # keeps a u32 length from allocating gigabytes of zero padding.)
            raise ReplayLogError(
                f"pending data at log offset {data_start:#x} (+{entry.length:#x}) runs past "
                f"the end of the file ({source.file_size:#x})",
                structure=structure,
                offset=entry_offset,
            )
        if entry.destination_offset > overlay_size:
            # A write far past the end would make the overlay a huge sparse file whose
            # zeros any value could then be read from.
            raise ReplayLogError(
                f"destination {entry.destination_offset:#x} lies beyond the end of the "
                f"file ({overlay_size:#x} after the earlier entries)",
                structure=structure,
                offset=entry_offset,
            )
        overlay_size = max(overlay_size, entry.destination_offset + entry.length)
        data = source.read_exact(log_offset + data_start, entry.length, structure)
        if S.crc32(data) != entry.data_checksum:
            raise ReplayLogError(
                f"pending data checksum {entry.data_checksum:#010x} != computed "
                f"{S.crc32(data):#010x}",
                structure=structure,
                offset=log_offset + data_start,
            )
        patches.append((entry.destination_offset, data))
    # Only once every entry checked out: a partial replay would be worse than none.
    for destination, data in patches:
        source.apply_patch(destination, data)
    status = replace(status, applied_entries=count)
    diag.note(
        Kind.REPLAY_LOG,
        "replay log",
        f"{count} pending entries applied in memory (the file itself is not modified)",
        offset=log_offset,
    )
    return status


def walk_object_tables(
    source: ReadOnlySource, file_header: FileHeader, diag: Diagnostics
) -> Tuple[ObjectEntry, ...]:
    """Stage 3: the object-table chain from 0x2000, loops and overlaps cut (§3)."""
    entries: List[ObjectEntry] = []
    pending = [S.ROOT_OBJECT_TABLE_OFFSET]
    visited = set()
    regions = _Regions()
    while pending:
        table_offset = pending.pop(0)
        if table_offset in visited:
            diag.warn(
                Kind.OBJECT_TABLE,
                "object table",
                "chain points back to a table already read (loop); chain ends here",
                offset=table_offset,
            )
            continue
        visited.add(table_offset)
        structure = "object table"
        raw_header = source.read_exact(table_offset, S.OBJECT_TABLE_HEADER.size, structure)
        header = S.OBJECT_TABLE_HEADER.unpack(raw_header, where=table_offset)
        if header.signature != S.OBJECT_TABLE_SIGNATURE:
            error = SignatureError(
                f"signature {header.signature:#010x}, expected {S.OBJECT_TABLE_SIGNATURE:#010x}",
                structure=structure,
                offset=table_offset,
            )
            if table_offset == S.ROOT_OBJECT_TABLE_OFFSET:
                raise error
            diag.warn(
                Kind.SIGNATURE, structure, error.detail + "; table skipped", offset=table_offset
            )
            continue
        available = (source.size - table_offset - S.OBJECT_TABLE_HEADER.size) // (
            S.OBJECT_ENTRY.size
        )
        count = header.entry_count
        capacity = (file_header.data_alignment - S.OBJECT_TABLE_HEADER.size) // (
            S.OBJECT_ENTRY.size
        )
        if count > capacity:
            # entry_count is the capacity of a table that fills one alignment unit
            # (227 slots at 0x1000); larger tables chain. A bigger count would make
            # every byte to the end of the file a slot (and a checksum warning).
            diag.warn(
                Kind.TRUNCATED,
                structure,
                f"declares {count} entries, more than the {capacity} slots a table of "
                f"{file_header.data_alignment:#x} bytes holds; reading those",
                offset=table_offset,
            )
            count = capacity
        if count > available:
            diag.warn(
                Kind.TRUNCATED,
                structure,
                f"declares {count} entries, the file holds only {available}; reading those",
                offset=table_offset,
            )
            count = available
        slots_start = table_offset + S.OBJECT_TABLE_HEADER.size
        room = regions.room(slots_start, count * S.OBJECT_ENTRY.size)
        if room < count * S.OBJECT_ENTRY.size:
            # Tables that overlap would have their slots read again and again:
            # many chained tables each claiming the rest of the file is quadratic.
            diag.warn(
                Kind.OBJECT_TABLE,
                structure,
                f"{count} entries would overlap another object table; reading "
                f"{room // S.OBJECT_ENTRY.size}",
                offset=table_offset,
            )
            count = room // S.OBJECT_ENTRY.size
        regions.claim(slots_start, count * S.OBJECT_ENTRY.size)
        raw = source.read_exact(
            table_offset + S.OBJECT_TABLE_HEADER.size, count * S.OBJECT_ENTRY.size, structure
        )
        checksum_at = S.OBJECT_ENTRY.offset_of("checksum")
        for index in range(count):
            slot = index * S.OBJECT_ENTRY.size
            slot_offset = table_offset + S.OBJECT_TABLE_HEADER.size + slot
            chunk = raw[slot : slot + S.OBJECT_ENTRY.size]
            fields = S.OBJECT_ENTRY.unpack(chunk, where=slot_offset)
            expected = S.crc32_with_zeroed_field(chunk, checksum_at)
            if expected != fields.checksum:
                diag.warn(
                    Kind.CHECKSUM,
                    "object table entry",
                    f"slot {index}: checksum {fields.checksum:#010x} != computed {expected:#010x}",
                    offset=slot_offset,
                )
            if fields.type == S.OBJECT_TYPE_EMPTY:
                continue
            # The flags byte is deliberately ignored: openvmm writes 0 on file
            # objects and Microsoft's DLL accepts them (§3).
            entry = ObjectEntry(
                fields.type, fields.file_offset, fields.size, fields.flags, slot_offset
            )
            if fields.type == S.OBJECT_TYPE_OBJECT_TABLE:
                pending.append(fields.file_offset)
            elif fields.type not in S.OBJECT_TYPE_NAMES:
                diag.warn(
                    Kind.OBJECT_TABLE,
                    "object table entry",
                    f"slot {index}: unknown object type {fields.type}",
                    offset=slot_offset,
                )
            entries.append(entry)
    return entries


@dataclass(frozen=True)
class Truncation:
    """Objects the object tables declare beyond the end of the file."""

    key_tables: int
    file_objects: int
    file_size: int
    needed: int

    def describe(self) -> str:
        parts = []
        if self.key_tables:
            parts.append(f"{self.key_tables} key table(s)")
        if self.file_objects:
            parts.append(f"{self.file_objects} file object(s)")
        return (
            f"truncated: {' and '.join(parts)} lie past the end of the file "
            f"(size {self.file_size:#x}, needed {self.needed:#x})"
        )


def check_extent(
    source: ReadOnlySource, object_entries: Sequence[ObjectEntry], diag: Diagnostics
) -> Optional[Truncation]:
    """Stage 3b: objects declared past the end of the file mean the file was cut short.

    Said once, as an error, so that what is missing later (keys, memory, processor state)
    is blamed on the truncation and not taken for a file that never held it.
    """
    size = source.file_size
    beyond = [
        entry
        for entry in object_entries
        if entry.type in (S.OBJECT_TYPE_KEY_TABLE, S.OBJECT_TYPE_FILE)
        and entry.file_offset + entry.size > size
    ]
    if not beyond:
        return None
    truncation = Truncation(
        key_tables=sum(1 for entry in beyond if entry.type == S.OBJECT_TYPE_KEY_TABLE),
        file_objects=sum(1 for entry in beyond if entry.type == S.OBJECT_TYPE_FILE),
        file_size=size,
        needed=max(entry.file_offset + entry.size for entry in beyond),
    )
    diag.error(Kind.TRUNCATED, "file", truncation.describe(), offset=size)
    return truncation


def read_key_tables(
    source: ReadOnlySource, object_entries: Sequence[ObjectEntry], diag: Diagnostics
) -> Tuple[List[_RawEntry], Dict[int, Tuple[int, int]]]:
    """Stage 4: every key table; the newest table per index (largest sequence) is kept."""
    tables: Dict[int, Tuple[int, int, bytes]] = {}
    regions = _Regions()
    for entry in object_entries:
        if entry.type != S.OBJECT_TYPE_KEY_TABLE:
            continue
        structure = "key table"
        if not S.KEY_TABLE_HEADER.size <= entry.size <= MAX_KEY_TABLE_SIZE:
            diag.warn(
                Kind.TRUNCATED,
                structure,
                f"object size {entry.size:#x} is not a plausible key table; skipped",
                offset=entry.file_offset,
            )
            continue
        if entry.file_offset + entry.size > source.size:
            diag.warn(
                Kind.TRUNCATED,
                structure,
                f"table of {entry.size:#x} bytes runs past the end of the file "
                f"({source.size:#x}); skipped",
                offset=entry.file_offset,
            )
            continue
        if not regions.claim(entry.file_offset, entry.size):
            # Without this, N object entries naming one big table make N full reads
            # and parses of it: quadratic work from a small object table.
            diag.warn(
                Kind.OBJECT_TABLE,
                structure,
                "overlaps a key table already read; skipped",
                offset=entry.file_offset,
            )
            continue
        raw = source.read_exact(entry.file_offset, entry.size, structure)
        header = S.KEY_TABLE_HEADER.unpack(raw, where=entry.file_offset)
        if header.signature != S.KEY_TABLE_SIGNATURE:
            diag.warn(
                Kind.SIGNATURE,
                structure,
                f"signature {header.signature:#06x}, expected {S.KEY_TABLE_SIGNATURE:#06x}; "
                "skipped",
                offset=entry.file_offset,
            )
            continue
        expected = S.crc32_with_zeroed_field(
            raw[: S.KEY_TABLE_HEADER.size], S.KEY_TABLE_HEADER.offset_of("checksum")
        )
        if expected != header.checksum:
            diag.warn(
                Kind.CHECKSUM,
                structure,
                f"table {header.table_index}: header checksum {header.checksum:#010x} != "
                f"computed {expected:#010x}",
                offset=entry.file_offset,
            )
        if header.table_index == 0:
            diag.warn(
                Kind.KEY_TREE,
                structure,
                "table index 0 is reserved for the root; skipped",
                offset=entry.file_offset,
            )
            continue
        previous = tables.get(header.table_index)
        if previous is not None:
            keep_new = header.sequence > previous[1]
            diag.warn(
                Kind.KEY_TREE,
                structure,
                f"two tables with index {header.table_index} (sequences {previous[1]} and "
                f"{header.sequence}); keeping the newer one",
                offset=entry.file_offset,
            )
            if not keep_new:
                continue
        tables[header.table_index] = (entry.file_offset, header.sequence, raw)
    raw_entries: List[_RawEntry] = []
    info: Dict[int, Tuple[int, int]] = {}
    for index in sorted(tables):
        file_offset, sequence, raw = tables[index]
        info[index] = (file_offset, sequence)
        raw_entries.extend(_parse_key_table(diag, index, file_offset, raw))
    return raw_entries, info


def _parse_key_table(
    diag: Diagnostics, index: int, table_offset: int, raw: bytes
) -> List[_RawEntry]:
    """Entries of one key table.

    Nearly every entry is sound, and a 64 GiB saved state has 65,536 RamBlock keys, so
    the sound case is handled inline here with plain tuples and no copies; anything
    unusual (an unknown type, a name without its NUL, a bad checksum, a value past the
    entry) goes through :func:`_parse_key_entry`, which reports what is wrong.
    """
    entries: List[_RawEntry] = []
    append = entries.append
    unpack = S.KEY_ENTRY_HEADER.unpack_tuple
    crc32 = zlib.crc32
    view = memoryview(raw)
    value_types = _VALUE_TYPES
    offset = S.KEY_TABLE_HEADER.size
    end = len(raw)
    # Microsoft's walk: an entry needs more than its 21-byte header before the end.
    while offset + _ENTRY_HEADER_SIZE < end:
        key_type, flags, size, parent_table, parent_offset, checksum, sequence, name_size = unpack(
            raw, offset
        )
        entry_end = offset + size
        if size < _ENTRY_HEADER_SIZE or entry_end > end:
            _report_bad_entry_size(diag, index, table_offset, offset, size, end)
            break
        if key_type == _FREE:
            offset = entry_end
            continue
        name_end = offset + _ENTRY_HEADER_SIZE + name_size
        value_end = 0  # stays 0 unless the entry's layout is sound
        if (
            key_type in value_types
            and name_size
            and name_end <= entry_end
            and not raw[name_end - 1]
        ):
            if flags & _FILE_OBJECT:
                value_end = name_end + _POINTER_SIZE
            elif key_type in _STORED_SIZE:
                value_end = name_end + _STORED_SIZE[key_type]
            elif name_end + 4 <= entry_end:  # String or Array: a 32-bit length, the payload
                value_end = name_end + 4 + _U32.unpack_from(raw, name_end)[0]
        if 0 < value_end <= entry_end:
            checksum_at = offset + _ENTRY_CHECKSUM_AT
            crc = crc32(_ZERO_CHECKSUM, crc32(view[offset:checksum_at]))
            name = raw[offset + _ENTRY_HEADER_SIZE : name_end - 1].decode("utf-8", "replace")
            if crc32(view[checksum_at + 4 : value_end], crc) == checksum and (
                "/" not in name and "\ufffd" not in name
            ):
                if flags & _FILE_OBJECT:
                    value_size, value_offset = _unpack_pointer(raw, name_end)
                elif key_type in _LENGTH_PREFIXED:
                    value_offset = table_offset + name_end + 4
                    value_size = value_end - name_end - 4
                else:
                    value_offset, value_size = table_offset + name_end, value_end - name_end
                append(
                    _new_raw_entry(
                        _RawEntry,
                        (
                            index,
                            offset,
                            table_offset + offset,
                            key_type,
                            flags,
                            0 if parent_table == 0 else parent_table << 32 | parent_offset,
                            sequence,
                            name,
                            value_offset,
                            value_size,
                        ),
                    )
                )
                offset = entry_end
                continue
        entry = _parse_key_entry(diag, index, table_offset, raw, offset)
        if entry is not None:
            append(entry)
        offset = entry_end
    return entries


def _report_bad_entry_size(
    diag: Diagnostics, index: int, table_offset: int, offset: int, size: int, end: int
) -> None:
    where = table_offset + offset
    if size == 0:
        diag.warn(
            Kind.KEY_TREE,
            "key entry",
            f"table {index}: entry size 0 at table offset {offset:#x}; rest of the table ignored",
            offset=where,
        )
    else:
        diag.warn(
            Kind.TRUNCATED,
            "key entry",
            f"table {index}: entry of size {size:#x} at table offset "
            f"{offset:#x} does not fit in the table ({end:#x}); rest ignored",
            offset=where,
        )


def _parse_key_entry(
    diag: Diagnostics, index: int, table_offset: int, raw: bytes, offset: int
) -> Optional[_RawEntry]:
    """One entry the inline path of :func:`_parse_key_table` did not accept: say why."""
    where = table_offset + offset
    header = S.KEY_ENTRY_HEADER.unpack(raw, offset, where=where)
    entry_end = offset + header.size
    if header.type not in _VALUE_TYPES:
        diag.warn(
            Kind.KEY_TREE,
            "key entry",
            f"table {index}: unknown key type {header.type}; entry skipped",
            offset=where,
        )
        return None
    name_start = offset + _ENTRY_HEADER_SIZE
    name_end = name_start + header.name_size
    if header.name_size == 0 or name_end > entry_end:
        diag.warn(
            Kind.TRUNCATED,
            "key entry",
            f"table {index}: name of {header.name_size} bytes does not fit the entry",
            offset=where,
        )
        return None
    raw_name = raw[name_start : name_end - 1]
    if raw[name_end - 1] != 0:
        diag.warn(Kind.KEY_TREE, "key entry", "name is not NUL-terminated", offset=where)
        raw_name = raw[name_start:name_end]
    try:
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        name = raw_name.decode("utf-8", "backslashreplace")
        diag.warn(Kind.KEY_TREE, "key entry", f"name {name!r} is not valid UTF-8", offset=where)
    if not name or "/" in name:
        diag.warn(Kind.KEY_TREE, "key entry", f"unusable key name {name!r}; skipped", offset=where)
        return None
    # Size of the stored value (what the checksum covers) and where its payload is.
    if header.flags & S.KEY_FLAG_FILE_OBJECT:
        stored = _POINTER_SIZE
    elif header.type in _STORED_SIZE:
        stored = _STORED_SIZE[header.type]
    else:
        if name_end + 4 > entry_end:
            stored = 4
        else:
            stored = 4 + _U32.unpack_from(raw, name_end)[0]
    if name_end + stored > entry_end:
        diag.warn(
            Kind.TRUNCATED,
            "key entry",
            f"table {index}: value of {stored:#x} bytes runs past the entry "
            f"(size {header.size:#x}); entry skipped",
            offset=where,
        )
        return None
    checksum_at = offset + _ENTRY_CHECKSUM_AT
    expected = S.crc32(
        raw[offset:checksum_at] + _ZERO_CHECKSUM + raw[checksum_at + 4 : name_end + stored]
    )
    if expected != header.checksum:
        diag.warn(
            Kind.CHECKSUM,
            "key entry",
            f"table {index}: entry {name!r} checksum {header.checksum:#010x} != computed "
            f"{expected:#010x}",
            offset=where,
        )
    if header.flags & S.KEY_FLAG_FILE_OBJECT:
        pointer = S.FILE_OBJECT_POINTER.unpack(raw, name_end, where=table_offset + name_end)
        value_offset, value_size = pointer.file_offset, pointer.value_length
    elif header.type in _LENGTH_PREFIXED:
        value_offset, value_size = table_offset + name_end + 4, stored - 4
    else:
        value_offset, value_size = table_offset + name_end, stored
    return _RawEntry(
        index,
        offset,
        where,
        header.type,
        header.flags,
        _location(header.parent_table, header.parent_offset),
        header.insertion_sequence,
        name,
        value_offset,
        value_size,
    )


def build_tree(
    source: ReadOnlySource,
    raw_entries: List[_RawEntry],
    file_objects: Dict[int, ObjectEntry],
    diag: Diagnostics,
) -> Key:
    """Stage 5: link entries to parents by location, then give labels top down; returns
    the root.

    Parents are resolved only after every table is read because a child may live in
    another key table than its parent (§4.2).
    """
    # Children by parent location, in table and offset order (the order of raw_entries).
    by_parent: Dict[int, List[_RawEntry]] = {}
    for entry in raw_entries:
        siblings = by_parent.get(entry.parent)
        if siblings is None:
            by_parent[entry.parent] = [entry]
        else:
            siblings.append(entry)
    root = Key(source, "/", "", KeyType.NODE, 0, 0, 0, 0, 0, 0, 0)
    queue = [(_ROOT, root, 0)]
    placed = 0
    path_chars = 0
    source_size = source.size
    by_sequence = operator.itemgetter(_SEQUENCE_FIELD)
    node = _NODE
    while queue:
        location, parent_key, depth = queue.pop()
        siblings = by_parent.get(location)
        if not siblings:
            continue
        if depth >= MAX_KEY_DEPTH:
            diag.warn(
                Kind.KEY_TREE,
                "key entry",
                f"keys nested deeper than {MAX_KEY_DEPTH} levels; "
                f"{len(siblings)} children and their subtrees dropped",
                offset=parent_key.file_offset,
                key_path=parent_key.path,
            )
            continue
        # Insertion order; ties keep table and offset order (the sort is stable).
        siblings.sort(key=by_sequence)
        placed += len(siblings)
        seen_names: Dict[str, int] = {}
        prefix = parent_key.path.rstrip("/") + "/"
        entries = parent_key._entries
        for raw in siblings:
            # Several siblings may share a name: that is how the container stores
            # arrays of nodes (e.g. .../metrics/devicetype). The first keeps the plain
            # name, later ones get "[n]" so every path stays unique.
            label = name = raw.name
            occurrence = seen_names.get(name, 0)
            seen_names[name] = occurrence + 1
            if occurrence:
                label = f"{name}[{occurrence}]"
                if raw.type != node:
                    diag.warn(
                        Kind.KEY_TREE,
                        "key entry",
                        f"value key name repeated under the same parent; kept as {label}",
                        offset=raw.file_offset,
                        key_path=prefix + label,
                    )
            path_chars += len(prefix) + len(label)
            if path_chars > MAX_TOTAL_PATH_CHARS:
                raise KeyTreeError(
                    f"key paths add up to more than {MAX_TOTAL_PATH_CHARS:#x} characters: "
                    "not a plausible key tree",
                    structure="key entry",
                    offset=raw.file_offset,
                    key_path=(prefix + label)[:200],
                )
            entries[label] = raw
            if raw.flags & _FILE_OBJECT:
                obj = file_objects.get(raw.value_offset)
                if (
                    obj is None
                    or raw.value_size > obj.size
                    or raw.value_offset + raw.value_size > source_size
                ):
                    _report_file_object(source, obj, parent_key.labelled(label), diag)
            if raw.type == node:
                key = parent_key.labelled(label)
                queue.append((raw.table_index << 32 | raw.offset, key, depth + 1))
    # The walk from the root through nodes reaches every key of a sound tree; explain
    # what it did not reach (a cycle, a dangling parent, a parent that is not a node).
    if placed < len(raw_entries):
        _explain_unreached(raw_entries, _placed_locations(root), diag)
    return root


def _placed_locations(root: Key) -> Set[int]:
    """Locations of every entry the tree holds (made into a key or not), the root's too."""
    found = {_ROOT}
    pending = [root]
    while pending:
        for item in pending.pop()._entries.values():
            if isinstance(item, Key):
                found.add(item.table_index << 32 | item.entry_offset)
                pending.append(item)
            else:
                found.add(item.table_index << 32 | item.offset)
    return found


_ROOT = 0  # the location every top-level key names as its parent
_NODE = int(KeyType.NODE)
_SEQUENCE_FIELD = _RawEntry._fields.index("insertion_sequence")


def _explain_unreached(raw_entries: List[_RawEntry], reached: Set[int], diag: Diagnostics) -> None:
    """Report why each entry outside ``reached`` (locations of the keys built, the root
    included) hangs from no node: a parent chain that loops, a parent location where no
    entry starts, or a parent that is not a node. Keys the depth limit dropped lead up
    to a built key and are not reported again."""
    by_location = {entry.table_index << 32 | entry.offset: entry for entry in raw_entries}
    verdicts: Dict[int, bool] = dict.fromkeys(reached, True)
    for entry in raw_entries:
        location = entry.table_index << 32 | entry.offset
        if location in verdicts:
            continue
        chain: List[int] = []
        on_chain = set()
        verdict: Optional[bool] = None
        while verdict is None:
            if location in verdicts:
                verdict = verdicts[location]
                break
            if location in on_chain:
                looped = by_location[location]
                diag.warn(
                    Kind.KEY_TREE,
                    "key entry",
                    f"parent chain of {looped.name!r} loops back to itself "
                    f"(table {looped.table_index}, offset {looped.offset:#x}); those keys "
                    "are dropped",
                    offset=looped.file_offset,
                )
                verdict = False
                break
            raw = by_location.get(location)
            if raw is None:
                child = by_location[chain[-1]]
                diag.warn(
                    Kind.KEY_TREE,
                    "key entry",
                    f"{child.name!r} names a parent at table {location >> 32}, offset "
                    f"{location & 0xFFFFFFFF:#x}, where no key entry starts; it is dropped",
                    offset=child.file_offset,
                )
                verdict = False
                break
            chain.append(location)
            on_chain.add(location)
            location = raw.parent
            parent = by_location.get(location)
            if parent is not None and parent.type != _NODE:
                diag.warn(
                    Kind.KEY_TREE,
                    "key entry",
                    f"{raw.name!r} has parent {parent.name!r}, which is not a node; dropped",
                    offset=raw.file_offset,
                )
                verdict = False
                break
        for item in chain:
            verdicts[item] = verdict


def _report_file_object(
    source: ReadOnlySource, obj: Optional[ObjectEntry], key: Key, diag: Diagnostics
) -> None:
    """Say what is wrong with the file object a key points at (``obj``: the object the
    object tables list at that offset, if any)."""
    if key.value_offset + key.size > source.size:
        diag.warn(
            Kind.TRUNCATED,
            "file object",
            f"value of {key.size:#x} bytes at {key.value_offset:#x} runs past the end of "
            f"the file ({source.size:#x})",
            offset=key.value_offset,
            key_path=key.path,
        )
    elif obj is None:
        diag.warn(
            Kind.OBJECT_TABLE,
            "file object",
            "the object tables list no file object at this offset",
            offset=key.value_offset,
            key_path=key.path,
        )
    elif key.size > obj.size:
        diag.warn(
            Kind.TRUNCATED,
            "file object",
            f"key declares {key.size:#x} bytes but the object holds {obj.size:#x}",
            offset=key.value_offset,
            key_path=key.path,
        )


# --- values -----------------------------------------------------------------------
def decode_value(key: Key) -> Any:
    """The value of a key: int, float, str, bytes, bool, or nested dicts for a node."""
    if key.type == KeyType.NODE:
        return key.as_dict()
    data = key.read()
    if key.type in _SCALAR_FORMATS:
        code = _SCALAR_FORMATS[key.type]
        if len(data) < struct.calcsize(code):
            raise TruncatedError(
                f"{key.type.name} value of only {len(data)} bytes",
                structure="key value",
                offset=key.value_offset,
                key_path=key.path,
            )
        value = struct.unpack_from(code, data)[0]
        return value != 0 if key.type == KeyType.BOOL else value
    if key.type == KeyType.STRING:
        if len(data) % 2:
            raise VmrsFormatError(
                f"UTF-16 string of odd length {len(data)}",
                structure="key value",
                offset=key.value_offset,
                key_path=key.path,
            )
        text = data.decode("utf-16-le", "surrogatepass")
        # openvmm's writer appends a NUL, Hyper-V's does not (§4.3): accept both.
        return text[:-1] if text.endswith("\0") else text
    return data
