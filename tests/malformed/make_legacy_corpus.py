"""Build the malformed legacy ``.bin`` corpus in this directory (and legacy_manifest.json).

Run from the repository root::

    python -m tests.malformed.make_legacy_corpus

Like ``make_corpus.py`` for ``.vmrs``: every case starts from one small valid ``.bin``
written by ``tests/support/legacy_writer.py`` (three 1 MiB blocks: zero, fill and XPRESS
pages) and breaks one thing. Files are ``legacy-<case>.bin.gz`` (gzip, mtime 0).
``legacy_manifest.json`` says for each case what loading must do: raise a given
exception class with a message fragment, or open with given warnings or notes (structure
and message fragment), which blocks are then unreadable (left out of the map), and which
blocks fail to decode (their page stream is bad) with what message.
``tests/test_legacy_malformed.py`` checks exactly that.
"""

from __future__ import annotations

import gzip
import json
import random
import struct
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from tests.support.legacy_writer import Entry, block_name, build_bin, memory_entries
from volatility3_vmrs.savedstate import legacy as L
from volatility3_vmrs.savedstate import memory as M

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "legacy_manifest.json"
CAPACITY = 8  # index slots: small files
HEADER = L.LEGACY_HEADER
ENTRY = L.LEGACY_INDEX_ENTRY


def base_memory() -> bytes:
    """3 MiB: block 0 zero, block 1 one XPRESS and one fill page, block 2 one raw page."""
    rng = random.Random(3)
    text = (b"legacy page " * M.PAGE_SIZE)[: M.PAGE_SIZE]
    block1 = text + b"\x5a" * M.PAGE_SIZE + bytes(M.BLOCK_SIZE - 2 * M.PAGE_SIZE)
    block2 = rng.randbytes(M.PAGE_SIZE) + bytes(M.BLOCK_SIZE - M.PAGE_SIZE)
    return bytes(M.BLOCK_SIZE) + block1 + block2


def base_entries() -> List[Entry]:
    return memory_entries(base_memory(), order=[1, 0, 2])


def base_bin(**options: Any) -> bytes:
    return build_bin(base_entries(), capacity=CAPACITY, **options)


def header_of(data: bytes) -> Any:
    return HEADER.unpack(data)


def patch_entry(data: bytes, slot: int, **fields: int) -> bytes:
    """Rewrite fields of index slot ``slot``."""
    at = header_of(data).index_offset + slot * ENTRY.size
    values = ENTRY.as_dict(ENTRY.unpack(data, at))
    values.update(fields)
    image = bytearray(data)
    image[at : at + ENTRY.size] = ENTRY.pack(**values)
    return bytes(image)


def patch_header(data: bytes, **fields: int) -> bytes:
    values = HEADER.as_dict(header_of(data))
    values.update(fields)
    return HEADER.pack(**values) + data[HEADER.size :]


def entry_of(data: bytes, slot: int) -> Any:
    return ENTRY.unpack(data, header_of(data).index_offset + slot * ENTRY.size)


def with_names(*names: bytes) -> bytes:
    """The base file with the names of slots 0, 1, ... replaced."""
    entries = base_entries()
    for entry, name in zip(entries, names):
        entry.name = name
    return build_bin(entries, capacity=CAPACITY)


def with_stream(number: int, stream: bytes) -> bytes:
    entries = base_entries()
    for entry in entries:
        if entry.name == block_name(number):
            entry.data = stream
    return build_bin(entries, capacity=CAPACITY)


# --- the cases (base slots: 0 = RamBlock/1/, 1 = RamBlock/0/, 2 = RamBlock/2/) -------------
def _bad_magic() -> bytes:
    return patch_header(base_bin(), magic=0x01282014)


def _truncated_header() -> bytes:
    return base_bin()[:0x20]


def _index_past_end() -> bytes:
    data = base_bin()
    return patch_header(data, index_offset=len(data) - 0x10)


def _index_capacity_huge() -> bytes:
    return patch_header(base_bin(), index_capacity=0xFFFFFFFF)


def _string_table_past_end() -> bytes:
    data = base_bin()
    return patch_header(data, string_table_offset=len(data) - 4)


def _strings_over_capacity() -> bytes:
    return patch_header(base_bin(), string_table_used=0x4001)


def _index_overlaps_strings() -> bytes:
    data = base_bin()
    return patch_header(data, string_table_offset=header_of(data).index_offset + ENTRY.size)


def _index_overlaps_header() -> bytes:
    return patch_header(base_bin(), index_offset=0x10)


def _entry_data_past_end() -> bytes:
    data = base_bin()
    return patch_entry(data, 2, data_offset=len(data) - 0x10)


def _entry_data_4gb() -> bytes:
    return patch_entry(base_bin(), 2, data_offset=(1 << 64) - 0x1000)


def _entry_data_over_1mib() -> bytes:
    return patch_entry(base_bin(), 2, data_size=M.BLOCK_SIZE + 1)


def _entry_data_empty() -> bytes:
    return patch_entry(base_bin(), 2, data_size=0)


def _name_without_trailing_slash() -> bytes:
    return with_names(b"RamBlock/1\0\0")


def _name_leading_zero() -> bytes:
    return with_names(b"RamBlock/01/\0")


def _name_not_ramblock() -> bytes:
    return with_names(b"VmState/1/\0")


def _name_without_nul() -> bytes:
    return with_names(b"RamBlock/1/X")


def _name_not_ascii() -> bytes:
    return with_names(b"RamBlock/\xd9\xa1/\0")


def _name_outside_string_table() -> bytes:
    data = base_bin()
    return patch_entry(data, 2, name_offset=header_of(data).string_table_used - 4)


def _duplicate_block_numbers() -> bytes:
    return with_names(b"RamBlock/1/\0", b"RamBlock/0/\0", b"RamBlock/1/\0")


def _overlapping_data() -> bytes:
    data = base_bin()
    return patch_entry(data, 1, data_offset=entry_of(data, 0).data_offset + 0x10)


def _data_overlaps_index() -> bytes:
    data = base_bin()
    return patch_entry(data, 2, data_offset=header_of(data).index_offset - 0x100)


def _block_number_beyond_map() -> bytes:
    return with_names(b"RamBlock/1/\0", b"RamBlock/0/\0", b"RamBlock/%d/\0" % L.MAX_BLOCKS)


def _odd_unknown_fields() -> bytes:
    data = patch_header(base_bin(), version=0x0400, unknown=7)
    return patch_entry(data, 1, unknown_a=0, unknown_b=2)


def _stream_invalid_tag() -> bytes:
    return with_stream(1, struct.pack("<I", 0x1001) + bytes(0x1001))


def _stream_too_short() -> bytes:
    fills = struct.pack("<IQ", M.TAG_FILL, 0) * 10
    return with_stream(1, fills + struct.pack("<I", M.TAG_END))


def _stream_too_long() -> bytes:
    fills = struct.pack("<IQI", M.TAG_MULTI_FILL, 0, M.PAGES_PER_BLOCK + 1)
    return with_stream(1, fills + struct.pack("<I", M.TAG_END))


def _stream_cut_off() -> bytes:
    return with_stream(1, struct.pack("<IQ", M.TAG_FILL, 0) + struct.pack("<I", M.TAG_FILL))


def _stream_bad_xpress() -> bytes:
    bad_page = struct.pack("<I", 12) + b"\xff" * 12  # flags all "match", no data behind
    fills = struct.pack("<IQI", M.TAG_MULTI_FILL, 0, M.PAGES_PER_BLOCK - 1)
    return with_stream(1, bad_page + fills + struct.pack("<I", M.TAG_END))


Case = Tuple[str, str, Callable[[], bytes], Dict[str, Any]]


def _error(name: str, message: str) -> Dict[str, Any]:
    return {"outcome": "error", "error": name, "message": message}


def _opens(
    *warnings: Tuple[str, str],
    unreadable: Tuple[int, ...] = (),
    bad_streams: Tuple[Tuple[int, str], ...] = (),
    notes: Tuple[Tuple[str, str], ...] = (),
) -> Dict[str, Any]:
    return {
        "outcome": "opens",
        "warnings": [{"structure": s, "message": m} for s, m in warnings],
        "notes": [{"structure": s, "message": m} for s, m in notes],
        "unreadable_blocks": list(unreadable),
        "bad_streams": [{"block": b, "message": m} for b, m in bad_streams],
    }


E = ENTRY.name
CASES: List[Case] = [
    ("bad-magic", "the header starts with the .vmrs signature", _bad_magic,
     _error("NotALegacyBinError", "magic 0x01282014, expected 0x02182003")),
    ("truncated-header", "the file ends 0x20 bytes in, inside the 0x28-byte header",
     _truncated_header, _error("TruncatedError", "needs 0x28 bytes")),
    ("index-past-end", "the index starts 0x10 bytes before the end of the file",
     _index_past_end, _error("TruncatedError", "lies outside the file")),
    ("index-capacity-huge", "the header declares 0xFFFFFFFF index entries",
     _index_capacity_huge, _error("LegacyBinError", "exceeds 0x100000")),
    ("string-table-past-end", "the string table starts 4 bytes before the end",
     _string_table_past_end, _error("TruncatedError", "string table")),
    ("strings-over-capacity", "0x4001 string bytes in use, capacity 0x4000",
     _strings_over_capacity, _error("LegacyBinError", "but a capacity of 0x4000")),
    ("index-overlaps-strings", "the string table starts inside the index",
     _index_overlaps_strings, _error("LegacyBinError", "the index and the string table overlap")),
    ("index-overlaps-header", "the index starts at 0x10, inside the header",
     _index_overlaps_header, _error("LegacyBinError", "the index at 0x10 overlaps the header")),
    ("entry-data-past-end", "RamBlock/2/'s data starts 0x10 bytes before the end",
     _entry_data_past_end, _opens((E, "runs past the end of the file"), unreadable=(2,))),
    ("entry-data-at-2-64", "RamBlock/2/'s data offset is 2**64 - 4096",
     _entry_data_4gb, _opens((E, "runs past the end of the file"), unreadable=(2,))),
    ("entry-data-over-1mib", "RamBlock/2/ claims 0x100001 bytes of data",
     _entry_data_over_1mib, _opens((E, "a RamBlock holds 1..0x100000 bytes"), unreadable=(2,))),
    ("entry-data-empty", "RamBlock/2/ claims 0 bytes of data",
     _entry_data_empty, _opens((E, "data size 0x0"), unreadable=(2,))),
    ("name-without-trailing-slash", "slot 0 is named 'RamBlock/1' (then two NULs)",
     _name_without_trailing_slash, _opens((E, "'RamBlock/1' is not a NUL-terminated"),
                                          unreadable=(1,))),
    ("name-leading-zero", "slot 0 is named 'RamBlock/01/'",
     _name_leading_zero, _opens((E, "'RamBlock/01/' is not"), unreadable=(1,))),
    ("name-not-ramblock", "slot 0 is named 'VmState/1/'",
     _name_not_ramblock, _opens((E, "'VmState/1/' is not"), unreadable=(1,))),
    ("name-without-nul", "slot 0's name ends in 'X', not NUL",
     _name_without_nul, _opens((E, "is not a NUL-terminated 'RamBlock/N/'"), unreadable=(1,))),
    ("name-not-ascii", "slot 0's number is an Arabic-Indic digit in UTF-8",
     _name_not_ascii, _opens((E, "is not a NUL-terminated 'RamBlock/N/'"), unreadable=(1,))),
    ("name-outside-string-table", "slot 2's name runs past the string bytes in use",
     _name_outside_string_table, _opens((E, "is not inside the"), unreadable=(2,))),
    ("duplicate-block-numbers", "slots 0 and 2 are both named RamBlock/1/",
     _duplicate_block_numbers, _opens((E, "block number 1 is named by 2 entries (slots 0, 2)"),
                                      unreadable=(1, 2))),
    ("overlapping-data", "RamBlock/0/'s data lies inside RamBlock/1/'s",
     _overlapping_data, _opens((E, "overlaps another entry's data"), unreadable=(0, 1))),
    ("data-overlaps-index", "RamBlock/2/'s data runs into the index",
     _data_overlaps_index, _opens((E, "overlaps the index"), unreadable=(2,))),
    ("block-number-beyond-map", "slot 2 is named RamBlock/1048576/ (1 TiB and beyond)",
     _block_number_beyond_map, _opens((E, "beyond any plausible memory map"), unreadable=(2,))),
    ("odd-unknown-fields", "version 0x0400, header field 0x8 = 7, slot 1's bytes 6-7 = 0, 2",
     _odd_unknown_fields, _opens(notes=((HEADER.name, "version 0x0400"),
                                        (HEADER.name, "field at 0x8 is 0x7"),
                                        (E, "bytes 6-7 are 0, 2")))),
    ("stream-invalid-tag", "RamBlock/1/'s first record tag is 0x1001",
     _stream_invalid_tag, _opens(bad_streams=((1, "invalid record tag 0x00001001"),))),
    ("stream-too-short", "RamBlock/1/ holds 10 fill pages, then the end tag",
     _stream_too_short, _opens(bad_streams=((1, "decodes to 0xa000 bytes, not the 1 MiB"),))),
    ("stream-too-long", "RamBlock/1/ is one multi-fill of 257 pages",
     _stream_too_long, _opens(bad_streams=((1, "does not fit the 1 MiB block"),))),
    ("stream-cut-off", "RamBlock/1/ ends inside its second fill record",
     _stream_cut_off, _opens(bad_streams=((1, "fill record cut off"),))),
    ("stream-bad-xpress", "RamBlock/1/'s first page is 12 bytes that cannot be XPRESS",
     _stream_bad_xpress, _opens(bad_streams=((1, "XPRESS record at value offset 0x4"),))),
]  # fmt: skip


def case_path(name: str) -> Path:
    return HERE / f"legacy-{name}.bin.gz"


def build() -> List[Dict[str, Any]]:
    manifest = []
    for name, description, make, expectation in CASES:
        case_path(name).write_bytes(gzip.compress(make(), compresslevel=9, mtime=0))
        manifest.append({"file": case_path(name).name, "description": description, **expectation})
    MANIFEST.write_text(json.dumps({"cases": manifest}, indent=2) + "\n")
    return manifest


if __name__ == "__main__":
    for entry in build():
        print(f"{entry['file']}: {entry['outcome']}")
