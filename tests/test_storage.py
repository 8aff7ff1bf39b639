"""The HyperVStorage container reader against real samples, writer output and bad input."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from dissect.hypervisor.descriptor.hyperv import HyperVFile

from tests.support.container_writer import ContainerWriter, ReplayEntry, UInt
from volatility3_vmrs.savedstate import structs as S
from volatility3_vmrs.savedstate.errors import (
    KeyNotFoundError,
    ReplayLogError,
    VmrsError,
)
from volatility3_vmrs.savedstate.storage import HyperVStorage, KeyType

EXPECTED_SAMPLES = {
    # name: (active sequence, number of keys, replay-log offset)
    "dissect-test.VMRS": (7, 113, 0x8000),
    "dissect-test.vmcx": (25, 409, 0xA000),
    "openvmm-88D07DD7.VMRS": (5, 53, 0x4000),
}


def open_bytes(data: bytes, **kwargs) -> HyperVStorage:
    return HyperVStorage(io.BytesIO(data), **kwargs)


def every_value(storage: HyperVStorage) -> dict:
    return {key.path: (key.value if not key.is_node else None) for key in storage.walk()}


# --- real samples ---------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED_SAMPLES))
def test_real_sample_matches_dissect_with_every_checksum_valid(sample_paths, name):
    path = sample_paths[name]
    with HyperVStorage(path, strict=True) as storage:
        sequence, key_count, log_offset = EXPECTED_SAMPLES[name]
        assert storage.diagnostics.items == ()
        assert storage.header.sequence == sequence
        assert storage.header.format_version == 0x0400
        assert storage.header_copies_valid == (True, True)
        assert storage.replay_log.valid and storage.replay_log.status == "clean"
        assert storage.replay_log.offset == log_offset
        assert len(storage.keys()) == key_count
        with open(path, "rb") as handle:
            expected = HyperVFile(handle).as_dict()
        assert storage.as_dict() == expected


def test_sample_details(sample_paths):
    with HyperVStorage(sample_paths["openvmm-88D07DD7.VMRS"]) as storage:
        assert storage.value("/configuration/properties/version") == 0x0C00
        key = storage.get("configuration/properties/version")
        assert key.type == KeyType.INT and key.size == 8
        # The declared log region runs past the end of this file (spec §1).
        assert storage.replay_log.past_end_of_file
    with HyperVStorage(sample_paths["dissect-test.VMRS"]) as storage:
        # Arrays of nodes: three sibling "devicetype" nodes, all kept.
        metrics = storage.get("/configuration/global_settings/metrics")
        assert [child.name for child in metrics.children] == ["devicetype"] * 3
        assert "/configuration/global_settings/metrics/devicetype[2]" in storage
        listed = storage.as_dict(arrays=True)["configuration"]["global_settings"]["metrics"]
        assert len(listed["devicetype"]) == 3
        # A Free object entry covers 0x4000-0x6FFF in this sample.
        assert any(e.type == S.OBJECT_TYPE_FREE for e in storage.object_entries)
    with HyperVStorage(sample_paths["dissect-test.vmcx"]) as storage:
        assert len(storage.key_table_info) == 8


# --- writer round trips ---------------------------------------------------------------
VALUES = {
    "/configuration/properties/version": 0x0A00,
    "/savedstate/VmVersion": -5,
    "/savedstate/type": "Normal",
    "/savedstate/empty": "",
    "/savedstate/unicode": "Gr\u00fc\u00dfe \u2603",
    "/savedstate/uint": UInt(2**64 - 1),
    "/savedstate/double": -1.25,
    "/savedstate/yes": True,
    "/savedstate/no": False,
    "/savedstate/small": b"\x01\x02\x03",
    "/savedstate/empty_array": b"",
    "/savedstate/big": bytes(range(256)) * 40,
    "/savedstate/deep/er/and/deeper": 7,
}


def build(flavour: str, **options) -> tuple:
    writer = ContainerWriter(flavour, **options)
    for path, value in VALUES.items():
        writer.set(path, value)
    writer.set("/savedstate/big_string", "x" * 3000, file_object=True)
    return writer, writer.build()


@pytest.mark.parametrize("flavour", ["openvmm", "hyperv"])
@pytest.mark.parametrize("options", [{}, {"table_capacity": 200, "object_slots": 3}])
def test_writer_round_trip(flavour, options):
    writer, data = build(flavour, **options)
    storage = open_bytes(data, strict=True)
    assert storage.diagnostics.items == ()
    for path, value in VALUES.items():
        assert storage.value(path) == value, path
        assert type(storage.value(path)) is (int if isinstance(value, UInt) else type(value))
    assert storage.value("/savedstate/big_string") == "x" * 3000
    big = storage.get("/savedstate/big")
    assert big.is_file_object and big.size == 10240
    assert big.read(256, 4) == b"\x00\x01\x02\x03"
    assert storage.get("/savedstate/type").type == KeyType.STRING
    assert storage.get("/savedstate/uint").type == KeyType.UINT
    assert storage.get("/savedstate/deep/er").is_node
    if options:
        assert writer.layout["object_tables"] > 1
        # Children that live in another key table than their parent.
        crossing = [
            key
            for key in storage.walk()
            if key.parent is not None
            and key.parent.table_index
            and key.parent.table_index != key.table_index
        ]
        assert crossing


def test_hyperv_flavour_parses_identically_in_dissect():
    for options in ({}, {"table_capacity": 200, "object_slots": 3}):
        _, data = build("hyperv", **options)
        assert open_bytes(data).as_dict() == HyperVFile(io.BytesIO(data)).as_dict()


def test_hyperv_flavour_details():
    writer, data = build("hyperv", table_capacity=200)
    storage = open_bytes(data, strict=True)
    assert storage.header.sequence == 7
    assert any(e.type == S.OBJECT_TYPE_FREE for e in storage.object_entries)
    # One key table sits after the replay log.
    assert max(writer.layout["table_offsets"]) > writer.layout["log_offset"]
    assert all(sequence > 1 for _, sequence in storage.key_table_info.values())
    # Strings are stored without a NUL in this flavour.
    key = storage.get("/savedstate/type")
    assert key.size == len("Normal") * 2


def test_openvmm_strings_carry_a_nul_that_the_reader_strips():
    _, data = build("openvmm")
    storage = open_bytes(data)
    key = storage.get("/savedstate/type")
    assert key.size == (len("Normal") + 1) * 2
    assert storage.value("/savedstate/type") == "Normal"


def test_log_region_past_end_of_file_reads_as_zeros():
    writer = ContainerWriter("openvmm", log_pages=3, log_past_eof=True)
    writer.set("/a", 1)
    data = writer.build()
    assert len(data) < writer.layout["log_offset"] + writer.layout["log_size"]
    storage = open_bytes(data, strict=True)
    assert storage.replay_log.past_end_of_file and storage.value("/a") == 1


# --- replay log -------------------------------------------------------------------------
def pending_log_file(**entry_options) -> tuple:
    """An old file whose pending log entry rewrites one key table to the new value."""

    def make(value, entries=()):
        writer = ContainerWriter("hyperv", replay_entries=entries)
        writer.set("/savedstate/counter", value)
        writer.set("/savedstate/other", "unchanged")
        return writer, writer.build()

    _, new = make(2)
    writer, old = make(1)
    table = writer.layout["table_offsets"][0]
    page = new[table : table + 0x1000]
    assert page != old[table : table + 0x1000]
    entries = [ReplayEntry(table, page, True, **entry_options)]
    return make(1, entries)[1]


def test_pending_replay_log_is_applied_in_memory_only(tmp_path):
    data = pending_log_file()
    path = tmp_path / "pending.vmrs"
    path.write_bytes(data)
    os.utime(path, (1_000_000_000, 1_000_000_000))
    before = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    with HyperVStorage(path) as storage:
        assert storage.value("/savedstate/counter") == 2
        assert storage.value("/savedstate/other") == "unchanged"
        assert storage.replay_log.applied_entries == 1
        assert storage.replay_log.status == "applied in memory (1 entries)"
        assert any(w.kind == "replay-log" for w in storage.diagnostics.items)
    after = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    assert before == after


@pytest.mark.parametrize("broken", ["corrupt_entry_checksum", "corrupt_data_checksum"])
def test_pending_entry_with_bad_checksum_is_refused(broken):
    data = pending_log_file(**{broken: True})
    with pytest.raises(ReplayLogError, match="pending"):
        open_bytes(data)


def test_stale_entries_are_not_applied():
    writer = ContainerWriter("hyperv")
    writer.set("/a", 1)
    data = writer.build()
    storage = open_bytes(data, strict=True)
    assert storage.replay_log.applied_entries == 0
    # The Hyper-V flavour leaves a stale copy of key table 1 in the log (like real files).
    log = writer.layout["log_offset"]
    entry = S.REPLAY_LOG_ENTRY.unpack(data, log + S.REPLAY_LOG_HEADER.size)
    assert entry.length == 0x1000


# --- read-only, lazy ----------------------------------------------------------------
class CountingReader(io.BytesIO):
    """A file object that counts the bytes read (and has no fileno)."""

    bytes_read = 0

    def read(self, size=-1):
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_opening_reads_only_metadata():
    writer = ContainerWriter("openvmm")
    for index in range(40):
        writer.set(f"/savedstate/RamBlock{index}", bytes([index]) * 0x100000)
    data = writer.build()
    handle = CountingReader(data)
    storage = HyperVStorage(handle)
    assert handle.bytes_read < 64 * 1024 < len(data) // 100
    assert storage.get("/savedstate/RamBlock7").read(5, 3) == b"\x07\x07\x07"


def test_writable_handle_is_refused(tmp_path):
    path = tmp_path / "x.vmrs"
    path.write_bytes(build("openvmm")[1])
    with open(path, "r+b") as handle, pytest.raises(VmrsError, match="read-only"):
        HyperVStorage(handle)


def test_unknown_key_is_a_clear_error():
    storage = open_bytes(build("openvmm")[1])
    with pytest.raises(KeyNotFoundError, match="/savedstate/nope"):
        storage.get("/savedstate/nope")
