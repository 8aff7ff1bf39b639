"""Writer of HyperVStorage containers for the tests (not shipped API).

It follows ``vmrs-format.md`` §14 byte for byte and packs every structure with the same
:mod:`volatility3_vmrs.savedstate.structs` declarations the reader unpacks with.

Two flavours:

* ``"openvmm"``: the canonical, DLL-accepted layout of Microsoft's openvmm writer: strings
  with a trailing NUL, no slack, zero-filled Free entries, file objects listed with
  flags 0, header sequences 1/0, a one-page replay log.
* ``"hyperv"``: what Hyper-V's own files look like (VERIFIED-SAMPLE in the spec): strings
  without NUL, 12 bytes of slack on entries, 0xFD-filled Free entries with a stale
  insertion sequence, key-table sequences above 1, header sequences N+1/N, a larger
  replay log holding a stale entry, a Free object entry, objects placed after the log.

Options exercise the rest: chained object tables (``object_slots``), children in another
key table than their parent (``table_capacity``), pending replay-log entries.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from volatility3_vmrs.savedstate import structs as S
from volatility3_vmrs.savedstate.storage import KeyType

FILE_OBJECT_THRESHOLD = 2048  # openvmm stores Array values of 2048 bytes or more out of line


class UInt(int):
    """Marks an integer to be stored as UInt (type 4) rather than Int."""


@dataclass
class ReplayEntry:
    """A replay-log entry: ``data`` destined for ``destination``; pending or stale."""

    destination: int
    data: bytes
    pending: bool = True
    corrupt_entry_checksum: bool = False
    corrupt_data_checksum: bool = False


class Blob:
    """A large Array value produced in chunks, so files bigger than memory can be written.

    ``produce()`` must yield exactly ``size`` bytes in total. Blobs are always stored as
    file objects and only supported by :meth:`ContainerWriter.build_file`.
    """

    def __init__(self, size: int, produce: Callable[[], Iterable[bytes]]) -> None:
        self.size = size
        self.produce = produce

    def __len__(self) -> int:
        return self.size


class _FileImage:
    """The slice assignments :meth:`ContainerWriter.build` makes, sent to a file instead."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle = handle
        handle.truncate(size)  # sparse where nothing is written

    def __setitem__(self, where: slice, data: Union[bytes, Blob]) -> None:
        self.handle.seek(where.start)
        if isinstance(data, Blob):
            written = 0
            for chunk in data.produce():
                self.handle.write(chunk)
                written += len(chunk)
            if written != data.size:
                raise ValueError(f"blob produced {written} bytes, declared {data.size}")
        else:
            self.handle.write(data)

    def __getitem__(self, where: slice) -> bytes:
        self.handle.seek(where.start)
        return self.handle.read(where.stop - where.start)

    def __delitem__(self, where: slice) -> None:
        self.handle.truncate(where.start)


ValueType = Union[int, float, str, bytes, bool, UInt, Blob]


@dataclass
class _Entry:
    path: Tuple[str, ...]
    type: KeyType
    payload: bytes = b""  # typed value bytes (String/Array without the length prefix)
    file_object: bool = False
    table: int = 0
    offset: int = 0
    insertion_sequence: int = 0
    children: List[_Entry] = field(default_factory=list)


def _classify(value: ValueType) -> Tuple[KeyType, bytes]:
    if isinstance(value, bool):
        return KeyType.BOOL, struct.pack("<I", int(value))
    if isinstance(value, UInt):
        return KeyType.UINT, struct.pack("<Q", value)
    if isinstance(value, int):
        return KeyType.INT, struct.pack("<q", value)
    if isinstance(value, float):
        return KeyType.DOUBLE, struct.pack("<d", value)
    if isinstance(value, str):
        return KeyType.STRING, value.encode("utf-16-le")
    if isinstance(value, (bytes, bytearray)):
        return KeyType.ARRAY, bytes(value)
    if isinstance(value, Blob):
        return KeyType.ARRAY, value  # type: ignore[return-value]
    raise TypeError(f"cannot store {type(value).__name__}")


class ContainerWriter:
    """Collects keys, then :meth:`build` lays out a complete container."""

    def __init__(
        self,
        flavour: str = "openvmm",
        *,
        alignment: int = 0x1000,
        object_slots: Optional[int] = None,
        table_capacity: Optional[int] = None,
        replay_entries: Sequence[ReplayEntry] = (),
        log_pages: Optional[int] = None,
        log_past_eof: bool = False,
        format_version: int = S.SUPPORTED_FORMAT_VERSION,
        keys_first: bool = False,
    ) -> None:
        if flavour not in ("openvmm", "hyperv"):
            raise ValueError(flavour)
        self.flavour = flavour
        self.alignment = alignment
        # Slots per object table, the last one reserved for the chain (§3).
        self.object_slots = object_slots or (alignment - S.OBJECT_TABLE_HEADER.size) // 18
        # Bytes of entries per key table (defaults to a full page minus the header).
        self.table_capacity = table_capacity or alignment - S.KEY_TABLE_HEADER.size
        self.replay_entries = list(replay_entries)
        self.log_pages = log_pages or (1 if flavour == "openvmm" else 6)
        self.log_past_eof = log_past_eof
        self.format_version = format_version
        # Key tables before the file objects: a file cut short then keeps its keys.
        self.keys_first = keys_first
        self._values: Dict[Tuple[str, ...], Tuple[KeyType, bytes, Optional[bool]]] = {}
        # Filled by build(): where each key and object ended up.
        self.key_locations: Dict[str, Tuple[int, int, int]] = {}
        self.layout: Dict[str, int] = {}

    # --- input ------------------------------------------------------------------------
    def set(self, path: str, value: ValueType, *, file_object: Optional[bool] = None) -> None:
        parts = tuple(part for part in path.split("/") if part)
        if not parts:
            raise ValueError("empty path")
        key_type, payload = _classify(value)
        if isinstance(value, Blob):
            file_object = True
        self._values[parts] = (key_type, payload, file_object)

    def node(self, path: str) -> None:
        parts = tuple(part for part in path.split("/") if part)
        self._values[parts] = (KeyType.NODE, b"", False)

    # --- layout -----------------------------------------------------------------------
    def _tree(self) -> List[_Entry]:
        """Entries in emission order: sorted by path, each node before its children."""
        nodes: Dict[Tuple[str, ...], _Entry] = {}
        root = _Entry(path=(), type=KeyType.NODE)
        order: List[_Entry] = []
        for parts in sorted(self._values):
            for depth in range(1, len(parts)):
                prefix = parts[:depth]
                if prefix not in nodes:
                    if prefix in self._values and self._values[prefix][0] != KeyType.NODE:
                        raise ValueError(f"{'/'.join(prefix)} is a value and a node")
                    entry = _Entry(path=prefix, type=KeyType.NODE)
                    nodes[prefix] = entry
                    order.append(entry)
            key_type, payload, file_object = self._values[parts]
            if key_type == KeyType.NODE:
                if parts not in nodes:
                    nodes[parts] = _Entry(path=parts, type=KeyType.NODE)
                    order.append(nodes[parts])
                continue
            if file_object is None:
                file_object = key_type == KeyType.ARRAY and len(payload) >= FILE_OBJECT_THRESHOLD
            order.append(_Entry(parts, key_type, payload, file_object))
        for entry in order:
            parent = nodes.get(entry.path[:-1], root)
            parent.children.append(entry)
            entry.insertion_sequence = len(parent.children)
        return order

    def _stored_value(self, entry: _Entry, file_offset: int) -> bytes:
        if entry.file_object:
            length = len(self._payload_bytes(entry))
            return S.FILE_OBJECT_POINTER.pack(value_length=length, file_offset=file_offset)
        if entry.type == KeyType.NODE:
            return S.NODE_VALUE.pack(
                change_sequence=0, next_insertion_sequence=len(entry.children) + 1
            )
        payload = self._payload_bytes(entry)
        if entry.type in (KeyType.STRING, KeyType.ARRAY):
            return struct.pack("<I", len(payload)) + payload
        return payload

    def _payload_bytes(self, entry: _Entry) -> bytes:
        if entry.type == KeyType.STRING and self.flavour == "openvmm":
            return entry.payload + b"\0\0"
        return entry.payload

    def _entry_bytes(
        self, entry: _Entry, parent: Tuple[int, int], stored: bytes, size: int
    ) -> bytes:
        name = entry.path[-1].encode("utf-8") + b"\0"
        header = S.KEY_ENTRY_HEADER.pack(
            type=int(entry.type),
            flags=S.KEY_FLAG_FILE_OBJECT if entry.file_object else 0,
            size=size,
            parent_table=parent[0],
            parent_offset=parent[1],
            checksum=0,
            insertion_sequence=entry.insertion_sequence,
            name_size=len(name),
        )
        body = header + name + stored
        body = S.stamp_checksum(body, S.KEY_ENTRY_HEADER.offset_of("checksum"))
        return body + b"\0" * (size - len(body))

    def _free_entry(self, size: int) -> bytes:
        # Hyper-V fills freed entries with 0xFD and leaves a stale insertion sequence;
        # openvmm writes zeros (both read back the same, §4.3).
        filler, sequence = (b"\xfd", 0xFDFDFDFD) if self.flavour == "hyperv" else (b"\0", 0)
        header = S.KEY_ENTRY_HEADER.pack(
            type=int(KeyType.FREE),
            flags=0,
            size=size,
            parent_table=0,
            parent_offset=0,
            checksum=0,
            insertion_sequence=sequence,
            name_size=0,
        )
        return header + filler * (size - len(header))

    def _align(self, value: int) -> int:
        return -(-value // self.alignment) * self.alignment

    def build(self) -> bytes:
        """The whole file in memory."""
        image = self._build(None)
        assert isinstance(image, bytearray)
        return bytes(image)

    def build_file(self, path: str) -> None:
        """Write the file to ``path``, streaming :class:`Blob` values."""
        with open(path, "w+b") as handle:
            self._build(handle)

    def _build(self, handle: Optional[BinaryIO]) -> Union[bytearray, _FileImage]:
        align = self.alignment
        order = self._tree()
        slack = 12 if self.flavour == "hyperv" else 0

        # 2. Key tables: assign table/offset to each entry in emission order.
        capacity = self.table_capacity
        tables: List[List[Tuple[_Entry, int]]] = [[]]  # entries with their sizes
        used = 0
        for entry in order:
            name_len = len(entry.path[-1].encode("utf-8")) + 1
            stored_len = len(self._stored_value(entry, 0))
            size = S.KEY_ENTRY_HEADER.size + name_len + stored_len + slack
            if used + size > capacity:
                tables.append([])
                used = 0
            tables[-1].append((entry, size))
            entry.table = len(tables)
            entry.offset = S.KEY_TABLE_HEADER.size + used
            used += size
        # 1. File objects from 0x3000 (after the key tables when those come first).
        cursor = 0x3000
        reserved_tables: List[int] = []
        if self.keys_first:
            reserved_tables = [cursor + index * align for index in range(len(tables))]
            cursor += len(tables) * align
        file_offsets: Dict[Tuple[str, ...], int] = {}
        blobs: List[Tuple[int, bytes]] = []
        for entry in order:
            if entry.file_object:
                data = self._payload_bytes(entry)
                file_offsets[entry.path] = cursor
                blobs.append((cursor, data))
                cursor += self._align(max(1, len(data)))
        file_object_objects = [(offset, self._align(max(1, len(data)))) for offset, data in blobs]

        table_pages: List[bytes] = []
        locations = {(): (0, 0)}
        for entry in order:
            locations[entry.path] = (entry.table, entry.offset)
        for table_index, members in enumerate(tables, start=1):
            body = bytearray()
            page_room = align - S.KEY_TABLE_HEADER.size
            for position, (entry, size) in enumerate(members):
                remaining = page_room - (len(body) + size)
                is_last = position == len(members) - 1
                if is_last and 0 < remaining <= S.KEY_ENTRY_HEADER.size:
                    size += remaining  # absorb a tail too small for any entry (§14.3)
                stored = self._stored_value(entry, file_offsets.get(entry.path, 0))
                body += self._entry_bytes(entry, locations[entry.path[:-1]], stored, size)
                self.key_locations["/" + "/".join(entry.path)] = (
                    table_index,
                    entry.offset,
                    0,
                )
            tail = page_room - len(body)
            if tail > S.KEY_ENTRY_HEADER.size:
                body += self._free_entry(tail)
            elif tail > 0:
                body += b"\0" * tail  # only reachable with an empty table
            sequence = 1 if self.flavour == "openvmm" else 2 + table_index
            header = S.KEY_TABLE_HEADER.pack(
                signature=S.KEY_TABLE_SIGNATURE,
                table_index=table_index,
                sequence=sequence,
                checksum=0,
            )
            header = S.stamp_checksum(header, S.KEY_TABLE_HEADER.offset_of("checksum"))
            page = header + bytes(body)
            table_pages.append(page + b"\0" * (self._align(len(page)) - len(page)))

        # Hyper-V flavour: the last key table goes after the log, and a freed page sits
        # between the key tables and the log (a Free object entry covers it).
        after_log_tables: List[bytes] = []
        if self.flavour == "hyperv" and len(table_pages) > 1 and not self.keys_first:
            after_log_tables = [table_pages.pop()]
        table_offsets: List[int] = list(reserved_tables)
        for page in table_pages if not self.keys_first else ():
            table_offsets.append(cursor)
            cursor += len(page)
        free_objects: List[Tuple[int, int]] = []
        if self.flavour == "hyperv":
            free_objects.append((cursor, align))
            cursor += align

        # 3. Replay log.
        log_offset = cursor
        log_size = self.log_pages * align
        cursor += log_size
        for page in after_log_tables:
            table_offsets.append(cursor)
            cursor += len(page)

        # 4. Object tables: root at 0x2000, overflow tables after everything else.
        objects: List[Tuple[int, int, int, int]] = []  # type, offset, size, flags
        flags_file = 1 if self.flavour == "hyperv" else 0
        for offset in table_offsets:
            objects.append((S.OBJECT_TYPE_KEY_TABLE, offset, align, 1))
        for offset, size in file_object_objects:
            objects.append((S.OBJECT_TYPE_FILE, offset, size, flags_file))
        for offset, size in free_objects:
            objects.append((S.OBJECT_TYPE_FREE, offset, size, 1))
        usable = self.object_slots - 1
        table_count = max(1, -(-len(objects) // usable))
        object_table_offsets = [S.ROOT_OBJECT_TABLE_OFFSET]
        for _ in range(table_count - 1):
            object_table_offsets.append(cursor)
            cursor += align
        self.layout.update(
            log_offset=log_offset,
            log_size=log_size,
            object_tables=len(object_table_offsets),
            key_tables=len(table_offsets),
        )
        self.layout["table_offsets"] = table_offsets  # type: ignore[assignment]
        file_size = cursor
        if self.log_past_eof and cursor > log_offset + log_size:
            raise ValueError("log_past_eof needs the log to be the last thing in the file")
        if self.log_past_eof:
            file_size = log_offset + align  # only the log header page exists

        full_size = max(file_size, log_offset + align)
        image: Any = bytearray(full_size) if handle is None else _FileImage(handle, full_size)
        for offset, data in blobs:
            if handle is None and isinstance(data, Blob):
                raise TypeError("Blob values need build_file()")
            image[offset : offset + len(data)] = data
        for offset, page in zip(table_offsets, table_pages + after_log_tables):
            image[offset : offset + len(page)] = page
        for offset, size in free_objects:
            image[offset : offset + size] = b"\xfd" * size

        empty_slot = S.stamp_checksum(
            S.OBJECT_ENTRY.pack(type=0, checksum=0, file_offset=0, size=0, flags=0), 1
        )
        for number, table_offset in enumerate(object_table_offsets):
            chunk = objects[number * usable : (number + 1) * usable]
            slots = []
            for obj_type, offset, size, flags in chunk:
                slot = S.OBJECT_ENTRY.pack(
                    type=obj_type, checksum=0, file_offset=offset, size=size, flags=flags
                )
                slots.append(S.stamp_checksum(slot, 1))
            while len(slots) < usable:
                slots.append(empty_slot)
            if number + 1 < len(object_table_offsets):
                chain = S.OBJECT_ENTRY.pack(
                    type=S.OBJECT_TYPE_OBJECT_TABLE,
                    checksum=0,
                    file_offset=object_table_offsets[number + 1],
                    size=align,
                    flags=1,
                )
                slots.append(S.stamp_checksum(chain, 1))
            else:
                slots.append(empty_slot)
            table = S.OBJECT_TABLE_HEADER.pack(
                signature=S.OBJECT_TABLE_SIGNATURE, entry_count=self.object_slots
            ) + b"".join(slots)
            image[table_offset : table_offset + len(table)] = table

        self._write_log(image, log_offset, log_size)
        del image[file_size:]

        sequence = 1 if self.flavour == "openvmm" else 7
        for copy, offset in enumerate(S.FILE_HEADER_OFFSETS):
            header = S.FILE_HEADER.pack(
                signature=S.FILE_HEADER_SIGNATURE,
                checksum=0,
                sequence=sequence - copy,
                format_version=self.format_version,
                data_version=0,
                flags=0,
                data_alignment=align,
                replay_log_offset=log_offset,
                replay_log_size=log_size,
                replay_log_header_size=align,
            )
            header = S.stamp_checksum(header, S.FILE_HEADER.offset_of("checksum"))
            image[offset : offset + len(header)] = header
        return image

    def _write_log(self, image: Any, log_offset: int, log_size: int) -> None:
        align = self.alignment
        entries = list(self.replay_entries)
        if self.flavour == "hyperv" and not entries and self.log_pages > 1:
            # A stale entry as Hyper-V leaves behind: a copy of the first key table.
            first_table = self.layout["table_offsets"][0]  # type: ignore[index]
            entries = [
                ReplayEntry(first_table, bytes(image[first_table : first_table + align]), False)
            ]
        pending = [entry for entry in entries if entry.pending]
        if any(not entry.pending for entry in entries[: len(pending)]):
            raise ValueError("pending replay entries must come first")
        max_entries = (align - S.REPLAY_LOG_HEADER.size) // S.REPLAY_LOG_ENTRY.size
        header = S.REPLAY_LOG_HEADER.pack(
            signature=S.REPLAY_LOG_SIGNATURE,
            checksum=0,
            current_entries=len(pending),
            max_entries=max_entries,
            change_tracking_enabled=0,
            change_tracking_buffer_offset=0,
            change_tracking_buffer_size=0,
            change_tracking_buffer_used=0,
        )
        header = S.stamp_checksum(header, S.REPLAY_LOG_HEADER.offset_of("checksum"))
        image[log_offset : log_offset + len(header)] = header
        data_cursor = align  # data area begins after the header page
        for index, entry in enumerate(entries):
            if data_cursor + len(entry.data) > log_size:
                raise ValueError("replay data does not fit in the log")
            record = S.REPLAY_LOG_ENTRY.pack(
                destination_offset=entry.destination,
                length=len(entry.data),
                data_offset=data_cursor,
                checksum=0,
                data_checksum=S.crc32(entry.data) ^ (1 if entry.corrupt_data_checksum else 0),
            )
            record = S.stamp_checksum(record, S.REPLAY_LOG_ENTRY.offset_of("checksum"))
            if entry.corrupt_entry_checksum:
                record = record[:20] + bytes([record[20] ^ 0xFF]) + record[21:]
            at = log_offset + S.REPLAY_LOG_HEADER.size + index * S.REPLAY_LOG_ENTRY.size
            image[at : at + len(record)] = record
            start = log_offset + data_cursor
            image[start : start + len(entry.data)] = entry.data
            data_cursor += self._align(len(entry.data))
