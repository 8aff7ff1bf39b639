"""Malformed containers: each gives the project's exception or a recorded warning."""

from __future__ import annotations

import io
import random
import struct

import pytest

from tests.support.container_writer import ContainerWriter
from volatility3_vmrs.savedstate import structs as S
from volatility3_vmrs.savedstate.errors import (
    ChecksumError,
    KeyTreeError,
    NotAContainerError,
    TruncatedError,
    UnsupportedVersionError,
    VmrsError,
)
from volatility3_vmrs.savedstate.storage import HyperVStorage


def base_writer(**options) -> ContainerWriter:
    writer = ContainerWriter("hyperv", **options)
    writer.set("/configuration/properties/version", 0x0A00)
    writer.set("/savedstate/type", "Normal")
    writer.set("/savedstate/child/leaf", 5)
    writer.set("/savedstate/blob", bytes(5000))
    return writer


def base_file(**options) -> bytes:
    return base_writer(**options).build()


def exercise(data: bytes, **kwargs) -> HyperVStorage:
    """Open and read every value; only the project's exceptions may escape."""
    storage = HyperVStorage(io.BytesIO(data), **kwargs)
    for key in storage.walk():
        try:
            _ = key.value
        except VmrsError:
            pass
    return storage


def must_fail_cleanly(data: bytes, expected=VmrsError, match=None):
    with pytest.raises(expected, match=match):
        exercise(data)


def entry_offset(data: bytes, path: str) -> int:
    return HyperVStorage(io.BytesIO(data)).get(path).file_offset


def patch_entry(data: bytes, path: str, *, stored: int, **fields) -> bytes:
    """Rewrite fields of a key entry's header and re-stamp its checksum."""
    offset = entry_offset(data, path)
    header = S.KEY_ENTRY_HEADER.as_dict(S.KEY_ENTRY_HEADER.unpack(data, offset))
    header.update(fields)
    packed = S.KEY_ENTRY_HEADER.pack(**header)
    image = bytearray(data)
    image[offset : offset + len(packed)] = packed
    covered = S.KEY_ENTRY_HEADER.size + header["name_size"] + stored
    body = S.stamp_checksum(bytes(image[offset : offset + covered]), 12)
    image[offset : offset + covered] = body
    return bytes(image)


def warnings_of(data: bytes, kind: str):
    storage = exercise(data)
    return [w for w in storage.diagnostics.items if w.kind == kind], storage


def test_zero_length_file():
    must_fail_cleanly(b"", NotAContainerError, "empty")


def test_random_bytes():
    rng = random.Random(7)
    for size in (1, 46, 0x1000, 0x3000, 0x5000):
        must_fail_cleanly(bytes(rng.randrange(256) for _ in range(size)), NotAContainerError)


def test_unknown_format_version():
    data = ContainerWriter("openvmm", format_version=0x0300).build()
    must_fail_cleanly(data, UnsupportedVersionError, "unsupported format version 0x0300")


@pytest.mark.parametrize("length", [10, 0x1000 + 20, 0x2004, 0x2100, 0x3800, 0x6010])
def test_truncation_anywhere(length):
    data = base_file()
    try:
        storage = exercise(data[:length])
    except VmrsError as error:
        assert "offset" in str(error) or "header" in str(error)
    else:
        assert storage.diagnostics.items, f"truncation at {length:#x} went unnoticed"


def test_truncated_file_object_is_reported_and_unreadable():
    data = base_file()
    key = HyperVStorage(io.BytesIO(data)).get("/savedstate/blob")
    # File objects come first (§14): cutting inside one loses every later structure too,
    # and each loss is reported, never silently ignored.
    storage = HyperVStorage(io.BytesIO(data[: key.value_offset + 100]))
    assert any(w.kind == "truncated" for w in storage.diagnostics.items)


def test_file_object_past_end_of_file():
    data = base_file()
    far = S.FILE_OBJECT_POINTER.pack(value_length=5000, file_offset=len(data) + 0x10000)
    offset = entry_offset(data, "/savedstate/blob")
    name_size = S.KEY_ENTRY_HEADER.unpack(data, offset).name_size
    image = bytearray(data)
    at = offset + S.KEY_ENTRY_HEADER.size + name_size
    image[at : at + 12] = far
    data = patch_entry(bytes(image), "/savedstate/blob", stored=12)
    found, storage = warnings_of(data, "truncated")
    assert found and found[0].key_path == "/savedstate/blob"
    with pytest.raises(TruncatedError, match="/savedstate/blob"):
        storage.get("/savedstate/blob").read()


def test_four_gigabyte_value_length():
    data = base_file()
    offset = entry_offset(data, "/savedstate/blob")
    name_size = S.KEY_ENTRY_HEADER.unpack(data, offset).name_size
    image = bytearray(data)
    at = offset + S.KEY_ENTRY_HEADER.size + name_size
    image[at : at + 4] = struct.pack("<I", 0xFFFFFFFF)
    data = patch_entry(bytes(image), "/savedstate/blob", stored=12)
    found, storage = warnings_of(data, "truncated")
    assert any("runs past the end" in w.message for w in found)
    with pytest.raises(TruncatedError):
        storage.get("/savedstate/blob").read()
    # The same for an inline String whose length claims 4 GB.
    data = base_file()
    offset = entry_offset(data, "/savedstate/type")
    name_size = S.KEY_ENTRY_HEADER.unpack(data, offset).name_size
    image = bytearray(data)
    at = offset + S.KEY_ENTRY_HEADER.size + name_size
    image[at : at + 4] = struct.pack("<I", 0xFFFFFFFF)
    found, storage = warnings_of(bytes(image), "truncated")
    assert any("runs past the entry" in w.message for w in found)
    assert "/savedstate/type" not in storage


@pytest.mark.parametrize(
    "structure,locate",
    [
        ("object table entry", lambda data, w: S.ROOT_OBJECT_TABLE_OFFSET + 8 + 1),
        ("key table", lambda data, w: w.layout["table_offsets"][0] + 6),
        ("key entry", lambda data, w: entry_offset(data, "/savedstate/type") + 12),
        ("replay log header", lambda data, w: w.layout["log_offset"] + 4),
        ("file header", lambda data, w: 4),
    ],
)
def test_bad_checksum_in_each_structure_is_a_warning(structure, locate):
    writer = base_writer()
    data = writer.build()
    image = bytearray(data)
    image[locate(data, writer)] ^= 0x55
    found, storage = warnings_of(bytes(image), "checksum")
    assert [w.structure for w in found] == [structure]
    assert found[0].offset is not None
    if structure != "file header":
        assert storage.value("/savedstate/child/leaf") == 5
    with pytest.raises(ChecksumError):
        HyperVStorage(io.BytesIO(bytes(image)), strict=True)


def test_both_headers_bad():
    image = bytearray(base_file())
    image[4] ^= 1
    image[0x1004] ^= 1
    must_fail_cleanly(bytes(image), NotAContainerError, "no valid HyperVStorage header")


def test_bad_first_header_falls_back_to_the_second():
    image = bytearray(base_file())
    image[4] ^= 1
    storage = exercise(bytes(image))
    assert storage.header.offset == 0x1000 and storage.header_copies_valid == (False, True)


def test_parent_cycle():
    data = base_file()
    storage = HyperVStorage(io.BytesIO(data))
    # A self-loop on /savedstate makes its whole subtree unreachable.
    saved = storage.get("/savedstate")
    data = patch_entry(
        data,
        "/savedstate",
        stored=12,
        parent_table=saved.table_index,
        parent_offset=saved.entry_offset,
    )
    found, storage = warnings_of(data, "key-tree")
    assert any("loops" in w.message for w in found)
    assert "/savedstate" not in storage and "/configuration/properties/version" in storage
    with pytest.raises(KeyTreeError):
        HyperVStorage(io.BytesIO(data), strict=True)


def test_dangling_parent():
    data = base_file()
    data = patch_entry(data, "/savedstate/type", stored=4 + 12, parent_offset=0x7FF)
    found, storage = warnings_of(data, "key-tree")
    assert any("no key entry starts" in w.message for w in found)
    assert "/savedstate/type" not in storage


def test_entry_size_zero_stops_the_table_walk():
    data = base_file()
    data = patch_entry(data, "/savedstate/type", stored=4 + 12, size=0)
    found, _ = warnings_of(data, "key-tree")
    assert any("entry size 0" in w.message for w in found)


def test_entry_past_table_end():
    data = base_file()
    data = patch_entry(data, "/savedstate/type", stored=4 + 12, size=0x5000)
    found, _ = warnings_of(data, "truncated")
    assert any("does not fit in the table" in w.message for w in found)


def test_object_table_chain_loop():
    writer = base_writer(object_slots=2)
    data = writer.build()
    assert writer.layout["object_tables"] > 2
    # Point the second table's chain slot back at the root table.
    storage = HyperVStorage(io.BytesIO(data))
    chain = [e for e in storage.object_entries if e.type == S.OBJECT_TYPE_OBJECT_TABLE]
    second_chain = chain[1]
    loop = S.OBJECT_ENTRY.pack(
        type=1, checksum=0, file_offset=S.ROOT_OBJECT_TABLE_OFFSET, size=0x1000, flags=1
    )
    image = bytearray(data)
    image[second_chain.slot_offset : second_chain.slot_offset + 18] = S.stamp_checksum(loop, 1)
    found, _ = warnings_of(bytes(image), "object-table")
    assert any("loop" in w.message for w in found)


def test_random_mutations_only_raise_project_errors():
    seeds = [base_file(), base_file(table_capacity=120, object_slots=3)]
    rng = random.Random(1234)
    for round_number in range(400):
        image = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 8)):
            position = rng.randrange(len(image))
            if rng.random() < 0.5:
                # Aim at metadata, where mutations matter most.
                position = rng.randrange(0, min(len(image), 0x9000))
            image[position] = rng.randrange(256)
        try:
            exercise(bytes(image))
        except VmrsError:
            pass
        except Exception as error:  # pragma: no cover - the assertion reports it
            raise AssertionError(
                f"round {round_number}: {type(error).__name__}: {error}"
            ) from error
