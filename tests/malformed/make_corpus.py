"""Build the malformed saved-state corpus in this directory (and its manifest.json).

Run from the repository root::

    python -m tests.malformed.make_corpus

Every case starts from one small, valid saved state written by the test writers and
breaks exactly one thing; the file name says what. Files are stored gzip-compressed
(``<case>.vmrs.gz``, mtime 0, so regenerating gives the same bytes): a container is at
least nine 4 KiB pages, mostly zeros, a few KiB once compressed. ``manifest.json`` says
for each case what :class:`SavedStateDump` must do: raise a given exception class with a
message fragment, or open and record given warnings. ``tests/test_malformed_corpus.py``
checks exactly that.

The patch helpers are shared with ``tests/test_resource_bounds.py``.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import struct
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from tests.support.container_writer import ContainerWriter, ReplayEntry
from tests.support.partition_writer import simple_partition
from tests.support.savedstate_writer import SavedStateWriter
from volatility3_vmrs.savedstate import memory as M
from volatility3_vmrs.savedstate import memory_map as MM
from volatility3_vmrs.savedstate import structs as S
from volatility3_vmrs.savedstate.processors import CHUNK_HEADER, DESCRIPTOR, ChunkId
from volatility3_vmrs.savedstate.storage import HyperVStorage, KeyType

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"
PARTITION_STATE = "/savedstate/savedVM/partition_state"


# --- building blocks ----------------------------------------------------------------------
def base_ram() -> bytes:
    """Four pages: zero, random, and a two-page fill run (fill, xpress/raw, multi-fill)."""
    return bytes(M.PAGE_SIZE) + random.Random(1).randbytes(M.PAGE_SIZE) + b"\x11" * 0x2000


def base_saved_state(**options: Any) -> bytes:
    """A valid saved state: two 4-page ranges (GPA 0 and 0x10000), XPRESS RamBlocks."""
    _, blob = simple_partition(1)
    ram = base_ram()
    options.setdefault("compression", "xpress")
    partition = options.pop("partition_state", blob)
    return SavedStateWriter([(0, ram), (0x10000, ram)], partition, **options).build()[0]


def open_storage(data: bytes) -> HyperVStorage:
    return HyperVStorage(io.BytesIO(data))


def _stored_size(data: bytes, entry_offset: int) -> int:
    """Bytes of the stored value a key entry's checksum covers."""
    header = S.KEY_ENTRY_HEADER.unpack(data, entry_offset)
    if header.flags & S.KEY_FLAG_FILE_OBJECT:
        return S.FILE_OBJECT_POINTER.size
    fixed = {KeyType.INT: 8, KeyType.UINT: 8, KeyType.DOUBLE: 8, KeyType.BOOL: 4}
    if header.type in fixed:
        return fixed[KeyType(header.type)]
    if header.type == KeyType.NODE:
        return S.NODE_VALUE.size
    name_end = entry_offset + S.KEY_ENTRY_HEADER.size + header.name_size
    return 4 + struct.unpack_from("<I", data, name_end)[0]


def restamp_key_entry(image: bytearray, entry_offset: int) -> None:
    header = S.KEY_ENTRY_HEADER.unpack(image, entry_offset)
    covered = S.KEY_ENTRY_HEADER.size + header.name_size + _stored_size(image, entry_offset)
    at = S.KEY_ENTRY_HEADER.offset_of("checksum")
    end = entry_offset + covered
    image[entry_offset:end] = S.stamp_checksum(bytes(image[entry_offset:end]), at)


def patch_key_header(data: bytes, path: str, **fields: int) -> bytes:
    """Rewrite fields of a key entry's header; the entry checksum is re-stamped."""
    offset = open_storage(data).get(path).file_offset
    values = S.KEY_ENTRY_HEADER.as_dict(S.KEY_ENTRY_HEADER.unpack(data, offset))
    values.update(fields)
    image = bytearray(data)
    packed = S.KEY_ENTRY_HEADER.pack(**values)
    image[offset : offset + len(packed)] = packed
    restamp_key_entry(image, offset)
    return bytes(image)


def patch_inline_value(data: bytes, path: str, value: bytes) -> bytes:
    """Replace an inline Array value by one of the same length (checksum re-stamped)."""
    key = open_storage(data).get(path)
    assert not key.is_file_object and len(value) == key.size
    image = bytearray(data)
    image[key.value_offset : key.value_offset + len(value)] = value
    restamp_key_entry(image, key.file_offset)
    return bytes(image)


def patch_file_pointer(
    data: bytes, path: str, *, value_length: Optional[int] = None, file_offset: Optional[int] = None
) -> bytes:
    """Rewrite a file-object key's pointer (checksum re-stamped)."""
    key = open_storage(data).get(path)
    assert key.is_file_object
    header = S.KEY_ENTRY_HEADER.unpack(data, key.file_offset)
    at = key.file_offset + S.KEY_ENTRY_HEADER.size + header.name_size
    pointer = S.FILE_OBJECT_POINTER.unpack(data, at)
    packed = S.FILE_OBJECT_POINTER.pack(
        value_length=pointer.value_length if value_length is None else value_length,
        file_offset=pointer.file_offset if file_offset is None else file_offset,
    )
    image = bytearray(data)
    image[at : at + len(packed)] = packed
    restamp_key_entry(image, key.file_offset)
    return bytes(image)


def patch_object_slot(data: bytes, slot: int, **fields: int) -> bytes:
    """Rewrite a slot of the root object table (checksum re-stamped)."""
    at = S.ROOT_OBJECT_TABLE_OFFSET + S.OBJECT_TABLE_HEADER.size + slot * S.OBJECT_ENTRY.size
    values = S.OBJECT_ENTRY.as_dict(S.OBJECT_ENTRY.unpack(data, at))
    values.update(fields)
    values["checksum"] = 0
    packed = S.stamp_checksum(S.OBJECT_ENTRY.pack(**values), S.OBJECT_ENTRY.offset_of("checksum"))
    image = bytearray(data)
    image[at : at + len(packed)] = packed
    return bytes(image)


def restamp_file_headers(image: bytearray) -> None:
    for offset in S.FILE_HEADER_OFFSETS:
        end = offset + S.FILE_HEADER.size
        image[offset:end] = S.stamp_checksum(
            bytes(image[offset:end]), S.FILE_HEADER.offset_of("checksum")
        )


def patch_file_headers(data: bytes, **fields: int) -> bytes:
    """Rewrite fields of both file-header copies (checksums re-stamped)."""
    image = bytearray(data)
    for offset in S.FILE_HEADER_OFFSETS:
        values = S.FILE_HEADER.as_dict(S.FILE_HEADER.unpack(data, offset))
        values.update(fields)
        packed = S.FILE_HEADER.pack(**values)
        image[offset : offset + len(packed)] = packed
    restamp_file_headers(image)
    return bytes(image)


def flip(data: bytes, offset: int) -> bytes:
    image = bytearray(data)
    image[offset] ^= 0xFF
    return bytes(image)


def replay_log_offset(data: bytes) -> int:
    return open_storage(data).header.replay_log_offset


def replay_entry_offset(data: bytes, index: int) -> int:
    return replay_log_offset(data) + S.REPLAY_LOG_HEADER.size + index * S.REPLAY_LOG_ENTRY.size


def patch_replay_entry(data: bytes, index: int, **fields: int) -> bytes:
    """Rewrite a replay-log entry (its checksum re-stamped, the data checksum kept)."""
    at = replay_entry_offset(data, index)
    values = S.REPLAY_LOG_ENTRY.as_dict(S.REPLAY_LOG_ENTRY.unpack(data, at))
    values.update(fields)
    values["checksum"] = 0
    packed = S.stamp_checksum(
        S.REPLAY_LOG_ENTRY.pack(**values), S.REPLAY_LOG_ENTRY.offset_of("checksum")
    )
    image = bytearray(data)
    image[at : at + len(packed)] = packed
    return bytes(image)


def ram_memory_block(pages: int, mbp: int, gpa_page: int) -> bytes:
    return MM.RAM_MEMORY_BLOCK.pack(
        saved_state_version=3,
        flags=0,
        page_count=pages,
        mbp_index_start=mbp,
        gpa_index_start=gpa_page,
        virtual_node=0,
        ksr_block_id=0,
    )


def chunk_offsets(blob: bytes) -> List[Tuple[int, int]]:
    """(offset, chunk id) of every chunk header in a partition_state blob."""
    header_size = DESCRIPTOR.unpack(blob).header_size
    position = header_size + 16
    found = []
    while position + CHUNK_HEADER.size <= len(blob):
        chunk_id, length = struct.unpack_from("<II", blob, position)
        found.append((position, chunk_id))
        position += CHUNK_HEADER.size + length
    return found


# --- the cases ------------------------------------------------------------------------------
Case = Tuple[str, str, Callable[[], bytes], Dict[str, Any]]


def _error(name: str, message: str) -> Dict[str, Any]:
    return {"outcome": "error", "error": name, "message": message}


def _warns(*warnings: Tuple[str, str, str]) -> Dict[str, Any]:
    return {
        "outcome": "opens",
        "warnings": [
            {"kind": kind, "structure": structure, "message": message}
            for kind, structure, message in warnings
        ],
    }


def _truncated_header() -> bytes:
    return base_saved_state()[:30]


def _bad_crc_file_header() -> bytes:
    data = base_saved_state()
    return flip(data, S.FILE_HEADER.offset_of("format_version") + 3)


def _bad_crc_object_entry() -> bytes:
    data = base_saved_state()
    # Slot 0's size field (the entry stays usable; only its checksum is wrong).
    at = S.ROOT_OBJECT_TABLE_OFFSET + S.OBJECT_TABLE_HEADER.size + S.OBJECT_ENTRY.offset_of("flags")
    return flip(data, at)


def _key_table_offset(data: bytes) -> int:
    return sorted(open_storage(data).key_table_info.values())[0][0]


def _bad_crc_key_table_header() -> bytes:
    data = base_saved_state()
    at = _key_table_offset(data) + S.KEY_TABLE_HEADER.offset_of("sequence")
    return flip(data, at)


def _bad_crc_key_entry() -> bytes:
    data = base_saved_state()
    key = open_storage(data).get("/savedstate/VmVersion")
    return flip(data, key.value_offset + 1)


def _bad_crc_replay_log_header() -> bytes:
    data = base_saved_state()
    return flip(data, replay_log_offset(data) + S.REPLAY_LOG_HEADER.offset_of("max_entries"))


def _pending_file(**entry: Any) -> bytes:
    # Rewrites the VmVersion entry's value in place with the same bytes: a valid patch.
    clean = base_saved_state()
    key = open_storage(clean).get("/savedstate/VmVersion")
    payload = clean[key.value_offset : key.value_offset + 8]
    replay = ReplayEntry(key.value_offset, payload, **entry)
    return base_saved_state(replay_entries=[replay], log_pages=2)


def _bad_crc_replay_log_header_pending() -> bytes:
    data = _pending_file()
    return flip(data, replay_log_offset(data) + S.REPLAY_LOG_HEADER.offset_of("max_entries"))


def _bad_crc_pending_replay_entry() -> bytes:
    return _pending_file(corrupt_entry_checksum=True)


def _bad_crc_pending_replay_data() -> bytes:
    return _pending_file(corrupt_data_checksum=True)


def _pending_replay_data_past_eof() -> bytes:
    # The header declares a 1 TiB log region, so only the end of the file stops it.
    data = patch_file_headers(_pending_file(), replay_log_size=1 << 40)
    beyond = len(data) - replay_log_offset(data) + 0x1000
    return patch_replay_entry(data, 0, data_offset=beyond)


def _pending_replay_destination_past_eof() -> bytes:
    data = _pending_file()
    return patch_replay_entry(data, 0, destination_offset=1 << 40)


def _cyclic_parents() -> bytes:
    data = base_saved_state(extra_keys={"/loop/a/b/c": 1})
    b = open_storage(data).get("/loop/a/b")
    # /loop/a's parent becomes its own child /loop/a/b (a node): a -> b -> a.
    return patch_key_header(
        data, "/loop/a", parent_table=b.table_index, parent_offset=b.entry_offset
    )


def _chained_object_table_loop() -> bytes:
    data = base_saved_state()
    capacity = struct.unpack_from("<I", data, S.ROOT_OBJECT_TABLE_OFFSET + 4)[0]
    return patch_object_slot(
        data,
        capacity - 1,
        type=S.OBJECT_TYPE_OBJECT_TABLE,
        file_offset=S.ROOT_OBJECT_TABLE_OFFSET,
        size=0x1000,
        flags=1,
    )


def _value_length_4gb() -> bytes:
    return patch_file_pointer(base_saved_state(), PARTITION_STATE, value_length=0xFFFFFFFF)


def _ramblock_over_1mib() -> bytes:
    data = base_saved_state()
    return patch_file_pointer(data, "/savedstate/RamBlock1", value_length=M.BLOCK_SIZE + 0x1000)


def _zero_page_range() -> bytes:
    data = base_saved_state()
    return patch_inline_value(data, "/savedstate/RamMemoryBlock1", ram_memory_block(0, 256, 16))


def _overlapping_ranges() -> bytes:
    data = base_saved_state()
    # Range 1 (4 pages at MBP 256) now claims GPA pages 2-5, overlapping range 0 (0-3).
    return patch_inline_value(data, "/savedstate/RamMemoryBlock1", ram_memory_block(4, 256, 2))


def _missing_ramblock() -> bytes:
    return base_saved_state(drop_blocks=(1,))


def _vp_chunk_length_past_blob() -> bytes:
    _, blob = simple_partition(1)
    image = bytearray(blob)
    vp_at = next(offset for offset, chunk_id in chunk_offsets(blob) if chunk_id == ChunkId.VP)
    struct.pack_into("<I", image, vp_at + 4, 0xFFFFFFFF)
    return base_saved_state(partition_state=bytes(image))


def _unknown_format_version() -> bytes:
    return patch_file_headers(base_saved_state(), format_version=0x0300)


def _config_only() -> bytes:
    writer = ContainerWriter("hyperv")
    writer.set("/configuration/properties/version", 0x0A00)
    writer.set("/configuration/properties/name", "config only")
    return writer.build()


def _object_table_count_huge() -> bytes:
    image = bytearray(base_saved_state())
    struct.pack_into("<I", image, S.ROOT_OBJECT_TABLE_OFFSET + 4, 0xFFFFFFFF)
    return bytes(image)


def _key_chain_too_deep() -> bytes:
    return base_saved_state(extra_keys={"/deep/" + "/".join(["n"] * 80): 1})


def _range_of_2_40_pages() -> bytes:
    data = base_saved_state()
    huge = ram_memory_block((1 << 40) - 0x1000, 256, 0x1000)
    return patch_inline_value(data, "/savedstate/RamMemoryBlock1", huge)


CASES: List[Case] = [
    (
        "truncated-header",
        "the file ends 30 bytes in, inside the first file header",
        _truncated_header,
        _error("NotAContainerError", "no valid HyperVStorage header"),
    ),
    (
        "bad-crc-file-header",
        "the first file-header copy has a wrong CRC; the second copy is used",
        _bad_crc_file_header,
        _warns(("checksum", "file header", "checksum")),
    ),
    (
        "bad-crc-object-entry",
        "slot 0 of the root object table has a wrong CRC (flags byte changed)",
        _bad_crc_object_entry,
        _warns(("checksum", "object table entry", "slot 0: checksum")),
    ),
    (
        "bad-crc-key-table-header",
        "the first key table's header CRC is wrong (sequence changed)",
        _bad_crc_key_table_header,
        _warns(("checksum", "key table", "header checksum")),
    ),
    (
        "bad-crc-key-entry",
        "the /savedstate/VmVersion entry's CRC is wrong (value byte changed)",
        _bad_crc_key_entry,
        _warns(("checksum", "key entry", "'VmVersion' checksum")),
    ),
    (
        "bad-crc-replay-log-header",
        "the replay-log header CRC is wrong and it holds no pending entry: log ignored",
        _bad_crc_replay_log_header,
        _warns(("checksum", "replay log header", "log ignored")),
    ),
    (
        "bad-crc-replay-log-header-pending",
        "the replay-log header CRC is wrong while it claims a pending entry",
        _bad_crc_replay_log_header_pending,
        _error("ReplayLogError", "cannot be replayed safely"),
    ),
    (
        "bad-crc-pending-replay-entry",
        "a pending replay-log entry has a wrong entry CRC",
        _bad_crc_pending_replay_entry,
        _error("ReplayLogError", "pending entry checksum"),
    ),
    (
        "bad-crc-pending-replay-data",
        "a pending replay-log entry's data does not match its data CRC",
        _bad_crc_pending_replay_data,
        _error("ReplayLogError", "pending data checksum"),
    ),
    (
        "pending-replay-data-past-eof",
        "a pending replay-log entry's data lies past the end of the file (torn save)",
        _pending_replay_data_past_eof,
        _error("ReplayLogError", "runs past the end of the file"),
    ),
    (
        "pending-replay-destination-past-eof",
        "a pending replay-log entry writes at 1 TiB, far beyond the end of the file",
        _pending_replay_destination_past_eof,
        _error("ReplayLogError", "lies beyond the end of the file"),
    ),
    (
        "cyclic-parents",
        "/loop/a names its own child /loop/a/b as parent",
        _cyclic_parents,
        _warns(("key-tree", "key entry", "loops back to itself")),
    ),
    (
        "chained-object-table-loop",
        "the root object table's chain slot points back at the root table",
        _chained_object_table_loop,
        _warns(("object-table", "object table", "loop")),
    ),
    (
        "object-table-count-huge",
        "the root object table declares 0xFFFFFFFF entries",
        _object_table_count_huge,
        _warns(("truncated", "object table", "declares 4294967295 entries")),
    ),
    (
        "value-length-4gb",
        "the partition_state file object claims 0xFFFFFFFF bytes",
        _value_length_4gb,
        _error("TruncatedError", "bytes needed but the file ends"),
    ),
    (
        "ramblock-stream-over-1mib",
        "RamBlock1 claims 0x101000 bytes (a RamBlock holds at most 1 MiB)",
        _ramblock_over_1mib,
        _warns(("memory", "RamBlock", "larger than 1 MiB")),
    ),
    (
        "zero-page-range",
        "RamMemoryBlock1 describes a range of zero pages",
        _zero_page_range,
        _warns(("memory", "RamMemoryBlock", "range of zero pages ignored")),
    ),
    (
        "overlapping-ranges",
        "RamMemoryBlock1's GPA pages 2-5 overlap RamMemoryBlock0's 0-3",
        _overlapping_ranges,
        _warns(("memory", "RamMemoryBlock", "overlap an earlier range")),
    ),
    (
        "missing-ramblock",
        "RamBlock1, which holds range 1's pages, is absent",
        _missing_ramblock,
        _warns(("missing-block", "RamBlock", "RamBlock(s) missing (1)")),
    ),
    (
        "range-of-2-40-pages",
        "RamMemoryBlock1 claims 2**40 - 4096 pages, backed by one RamBlock",
        _range_of_2_40_pages,
        _warns(("missing-block", "RamBlock", "RamBlock(s) missing (2, 3, 4")),
    ),
    (
        "key-chain-too-deep",
        "a chain of 81 nested keys under /deep (real trees are 7 deep)",
        _key_chain_too_deep,
        _warns(("key-tree", "key entry", "nested deeper than 64 levels")),
    ),
    (
        "vp-chunk-length-past-blob",
        "the Vp marker chunk of partition_state claims 0xFFFFFFFF data bytes",
        _vp_chunk_length_past_blob,
        _error("PartitionStateError", "data_length 0xffffffff runs past the end"),
    ),
    (
        "unknown-format-version",
        "both file headers say format version 0x0300",
        _unknown_format_version,
        _error("UnsupportedVersionError", "unsupported format version 0x0300"),
    ),
    (
        "config-only",
        "a configuration-only container (.vmcx-like): no /savedstate at all",
        _config_only,
        _error("PartitionStateNotFoundError", "no /savedstate/savedVM/partition_state"),
    ),
]


def case_path(name: str) -> Path:
    return HERE / f"{name}.vmrs.gz"


def compress(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def build() -> List[Dict[str, Any]]:
    manifest = []
    for name, description, make, expectation in CASES:
        case_path(name).write_bytes(compress(make()))
        manifest.append({"file": case_path(name).name, "description": description, **expectation})
    MANIFEST.write_text(json.dumps({"cases": manifest}, indent=2) + "\n")
    return manifest


if __name__ == "__main__":
    for entry in build():
        print(f"{entry['file']}: {entry['outcome']}")
