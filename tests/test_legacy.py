"""The legacy ``.bin`` reader on the real Hyper-V sample and on written files; the ``.vsv``.

The real sample (``tests/data/samples/vmsavedstatedump-rs-test_file.bin``, 252 MiB of a
VM in its BIOS stage) is checked against an independent oracle: the guest's ACPI tables,
found by ``tests/support/acpi.py`` in the memory with block N at N x 1 MiB, every
checksum valid; and against what Microsoft's DLL returned for the same VM (spec section
13). Whole-stream decoding (``legacy.decode_block``) and the page reader agree on every
byte. Written files round-trip; a written ``.bin`` + ``.vsv`` pair gives registers.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import samples_dir
from tests.support import acpi
from tests.support.container_writer import ContainerWriter
from tests.support.legacy_writer import Entry, block_name, build_bin, memory_entries
from tests.support.partition_writer import simple_partition
from volatility3_vmrs import savedstate as ss
from volatility3_vmrs.savedstate import legacy as L
from volatility3_vmrs.savedstate import memory as M
from volatility3_vmrs.savedstate.diagnostics import Diagnostics, Kind
from volatility3_vmrs.savedstate.errors import (
    VM_SAVED_STATE_DUMP_E_PARTITION_STATE_NOT_FOUND,
    GuestMemoryFormatError,
    MemoryReadError,
    PartitionStateNotFoundError,
    VmrsFormatError,
)
from volatility3_vmrs.savedstate.legacy_pair import MAPPING_IDENTITY, MAPPING_VSV, find_vsv
from volatility3_vmrs.savedstate.memory_map import RAM_MEMORY_BLOCK
from volatility3_vmrs.savedstate.provider import FORMAT_LEGACY, SavedStateDump
from volatility3_vmrs.savedstate.source import ReadOnlySource
from volatility3_vmrs.savedstate.types import REGISTER_ID_X64

SAMPLE_NAME = "vmsavedstatedump-rs-test_file.bin"
SAMPLE_SHA256 = "5dc06f3f"  # prefix, as in tests/data/README.md


@pytest.fixture(scope="module")
def sample() -> Path:
    path = samples_dir() / SAMPLE_NAME
    assert path.is_file(), f"real .bin sample missing: {path}"
    return path


@pytest.fixture(scope="module")
def sample_memory(sample: Path) -> bytes:
    """The sample's 252 MiB decoded block by block with ``decode_block``."""
    source = ReadOnlySource(str(sample))
    try:
        parsed = L.parse_legacy_bin(source, Diagnostics())
        return b"".join(L.decode_block(source, block) for block in parsed.blocks)
    finally:
        source.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the real sample --------------------------------------------------------------------
def test_sample_header_and_index(sample: Path):
    diag = Diagnostics()
    parsed = L.load_legacy_bin(str(sample), diag)
    header = parsed.header
    assert (header.magic, header.version, header.unknown) == (L.LEGACY_MAGIC, 0x0500, 1)
    assert (header.index_capacity, header.index_offset) == (0x400, 0x179000)
    assert (header.string_table_offset, header.string_table_capacity) == (0x17F000, 0x4000)
    assert header.string_table_used == 0xD5A
    assert parsed.file_size == 1_585_152
    assert parsed.block_numbers == tuple(range(252)) and parsed.damaged == ()
    assert diag.items == ()
    # Hyper-V's index is not in numeric order: slot 0 holds RamBlock/3/.
    assert min(parsed.blocks, key=lambda b: b.slot).name == "RamBlock/3/"
    assert all(
        b.data_offset % 0x1000 == 0 and b.data_size < b.allocated_size for b in parsed.blocks
    )


def test_sample_every_block_decodes_to_1_mib_and_page_kinds(sample: Path, sample_memory: bytes):
    """decode_block (whole streams) and the dump's page reader (page by page) agree."""
    assert len(sample_memory) == 252 * M.BLOCK_SIZE
    with SavedStateDump(str(sample)) as dump:
        (memory_range,) = dump.memory_ranges
        counts = dump.memory.page_kind_counts(memory_range)
        step = 8 * M.BLOCK_SIZE
        for offset in range(0, len(sample_memory), step):
            length = min(step, len(sample_memory) - offset)
            assert dump.read_physical(offset, length) == sample_memory[offset : offset + length]
        assert dump.diagnostics.problems == ()
    # Measured on the real file (spec section 13 says ~64,322 fills, 6 raw, ~184 XPRESS).
    assert counts == Counter(fill=64321, raw=6, xpress=185)


def test_sample_acpi_tables_at_identity_mapping(sample: Path):
    before = _sha256(sample)
    with SavedStateDump(str(sample)) as dump:
        tables = acpi.walk(dump.read_physical)
    assert tables.rsdp_address == 0xF5C00
    assert (tables.root_signature, tables.root_address) == ("RSDT", 0xFBF0000)
    assert set(tables.signatures()) == {
        "RSDT", "FACP", "DSDT", "APIC", "SRAT", "WAET", "SLIC", "OEM0", "OEMB",
    }  # fmt: skip
    assert all(table.checksum_ok for table in tables.tables), tables.tables
    assert _sha256(sample) == before and before.startswith(SAMPLE_SHA256)


def test_acpi_oracle_fails_on_a_broken_checksum(sample_memory: bytes):
    broken = bytearray(sample_memory)
    broken[0xFBF0300 + 40] ^= 1  # a byte of the APIC table
    tables = acpi.walk(lambda gpa, size: bytes(broken[gpa : gpa + size]))
    assert not tables.by_signature("APIC").checksum_ok
    broken[0xF5C00 + 8] ^= 1  # the RSDP itself
    with pytest.raises(acpi.AcpiError):
        acpi.walk(lambda gpa, size: bytes(broken[gpa : gpa + size]))


def test_sample_through_the_dll_api(sample: Path):
    """What Microsoft's DLL returned for this VM's files (spec section 13, RTEST) where the
    .bin alone can answer; no processor state without a .vsv, with the DLL's HRESULT."""
    handle = ss.LoadSavedStateFiles(str(sample))
    try:
        assert handle.format == FORMAT_LEGACY and handle.vm_version == 0x0500
        assert ss.GetGuestPhysicalMemoryChunks(handle) == [ss.GPA_MEMORY_CHUNK(0, 64512)]
        assert ss.GetGuestRawSavedMemorySize(handle) == 264_241_152
        assert ss.GuestPhysicalAddressToRawSavedMemoryOffset(handle, 0xC0FFE) == 0xC0FFE
        assert ss.ReadGuestPhysicalAddress(handle, 0xF5C00, 8) == b"RSD PTR "
        calls = (
            lambda: ss.GetVpCount(handle),
            lambda: ss.GetRegisterValue(handle, 0, REGISTER_ID_X64.X64_RegisterRip),
            lambda: ss.GetPagingMode(handle, 0),
            lambda: ss.GetArchitecture(handle, 0),
            lambda: ss.GetGuestOsInfo(handle),
        )
        for call in calls:
            with pytest.raises(PartitionStateNotFoundError, match=r"no \.vsv was found") as caught:
                call()
            assert caught.value.hresult == VM_SAVED_STATE_DUMP_E_PARTITION_STATE_NOT_FOUND
        assert list(handle.keys()) == []
    finally:
        ss.ReleaseSavedStateFiles(handle)


def test_sample_pair_without_vsv(sample: Path):
    with SavedStateDump(str(sample)) as dump:
        assert dump.legacy is not None and dump.legacy.vsv is None and dump.partition is None
        assert dump.legacy.mapping == MAPPING_IDENTITY
        notes = dump.diagnostics.items
        assert dump.diagnostics.problems == ()
    assert any(n.kind == Kind.ASSUMPTION and "N x 1 MiB" in n.message for n in notes)
    assert any(n.kind == Kind.COMPANION and "no .vsv beside the .bin" in n.message for n in notes)


# --- written files ------------------------------------------------------------------------
def _guest_memory(blocks: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    pages = []
    for page in range(blocks * M.PAGES_PER_BLOCK):
        choice = page % 5
        if choice == 0:
            pages.append(rng.randbytes(M.PAGE_SIZE))
        elif choice == 1:
            pages.append(((b"text %d " % page) * M.PAGE_SIZE)[: M.PAGE_SIZE])
        elif choice == 2:
            pages.append(struct.pack("<Q", rng.getrandbits(64)) * (M.PAGE_SIZE // 8))
        else:
            pages.append(bytes(M.PAGE_SIZE))
    memory = b"".join(pages)
    assert len(memory) == blocks * M.BLOCK_SIZE
    return memory


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_written_bin_round_trips(tmp_path: Path):
    memory = _guest_memory(3)
    entries = memory_entries(memory, order=[2, 0, 1], raw_blocks=[1])
    path = _write(tmp_path / "vm.bin", build_bin(entries))
    source = ReadOnlySource(path)
    try:
        parsed = L.parse_legacy_bin(source, Diagnostics())
        assert parsed.block_numbers == (0, 1, 2)
        assert [b.is_raw for b in parsed.blocks] == [False, True, False]
        assert b"".join(L.decode_block(source, block) for block in parsed.blocks) == memory
    finally:
        source.close()
    with SavedStateDump(path) as dump:
        assert dump.read_physical(0, len(memory)) == memory
        kinds = dump.memory.page_kind_counts(dump.memory_ranges[0])
    assert kinds["xpress"] and kinds["fill"] and kinds["raw"] >= M.PAGES_PER_BLOCK


def test_gaps_are_holes_and_damaged_blocks_missing(tmp_path: Path):
    memory = _guest_memory(4)
    entries = memory_entries(memory, order=[0, 1, 3])  # no entry names block 2
    image = bytearray(build_bin(entries))
    # Block 1's data offset (slot 1) moved past the end of the file.
    at = L.LEGACY_HEADER.unpack(image).index_offset + L.LEGACY_INDEX_ENTRY.size
    struct.pack_into("<Q", image, at + L.LEGACY_INDEX_ENTRY.offset_of("data_offset"), 1 << 40)
    with SavedStateDump(_write(tmp_path / "vm.bin", bytes(image))) as dump:
        ranges = [(r.gpa_start, r.gpa_end) for r in dump.memory_ranges]
        assert ranges == [(0, 2 * M.BLOCK_SIZE), (3 * M.BLOCK_SIZE, 4 * M.BLOCK_SIZE)]
        assert dump.read_physical(0, M.BLOCK_SIZE) == memory[: M.BLOCK_SIZE]
        assert dump.read_physical(3 * M.BLOCK_SIZE, 16) == memory[3 * M.BLOCK_SIZE :][:16]
        with pytest.raises(MemoryReadError, match="hole"):
            dump.read_physical(2 * M.BLOCK_SIZE, 16)
        with pytest.raises(MemoryReadError):
            dump.read_physical(M.BLOCK_SIZE, 16)
        assert not dump.memory.is_readable(M.BLOCK_SIZE) and dump.memory.is_readable(0)
        assert {item.kind for item in dump.diagnostics.problems} == {
            Kind.MEMORY,
            Kind.MISSING_BLOCK,
        }
        assert any(
            "2 runs" in item.message for item in dump.diagnostics.grouped().get(Kind.ASSUMPTION, [])
        )


def test_bad_stream_is_reported_with_block_and_offset(tmp_path: Path):
    entries = memory_entries(_guest_memory(2))
    entries[1] = Entry(block_name(1), struct.pack("<I", 0x5000) + bytes(12))
    path = _write(tmp_path / "vm.bin", build_bin(entries))
    source = ReadOnlySource(path)
    try:
        parsed = L.parse_legacy_bin(source, Diagnostics())
        assert len(L.decode_block(source, parsed.blocks[0])) == M.BLOCK_SIZE
        with pytest.raises(GuestMemoryFormatError) as caught:
            L.decode_block(source, parsed.blocks[1])
    finally:
        source.close()
    message = str(caught.value)
    assert "RamBlock/1/" in message and "invalid record tag 0x00005000" in message
    assert f"file offset {parsed.blocks[1].data_offset:#x}" in message
    with SavedStateDump(path) as dump:
        with pytest.raises(MemoryReadError, match="RamBlock/1/"):
            dump.read_physical(M.BLOCK_SIZE, 16)
        (bad,) = dump.diagnostics.grouped().get(Kind.BAD_BLOCK, [])
        assert "invalid record tag" in bad.message and bad.key_path == "RamBlock/1/"


def test_strict_mode_raises_warnings_not_notes(tmp_path: Path):
    entries = memory_entries(_guest_memory(1))
    entries[0].unknown_a = 2  # a note
    with SavedStateDump(_write(tmp_path / "a.bin", build_bin(entries)), strict=True) as dump:
        assert dump.diagnostics.grouped().get(Kind.HEADER, [])
    entries.append(Entry(b"Other/0/\0", b"x"))  # a warning
    with pytest.raises(VmrsFormatError, match="not a NUL-terminated 'RamBlock/N/'"):
        SavedStateDump(_write(tmp_path / "b.bin", build_bin(entries)), strict=True)


@given(st.lists(st.tuples(st.integers(0, 0x3000), st.integers(1, 0x800)), min_size=1, max_size=12))
@settings(max_examples=200, deadline=None)
def test_overlap_detection_matches_brute_force(spans):
    """Exactly the blocks whose data share a byte with another block's are left out."""
    data_start = 0x10000  # past the header; index and string table come after the data
    entries = [
        Entry(block_name(n), bytes(size), data_offset=data_start + at)
        for n, (at, size) in enumerate(spans)
    ]
    image = build_bin(entries, capacity=16)
    expected = {
        n
        for n, (a, size_a) in enumerate(spans)
        for m, (b, size_b) in enumerate(spans)
        if n != m and a < b + size_b and b < a + size_a
    }
    diag = Diagnostics()
    parsed = L.parse_legacy_bin(ReadOnlySource(io.BytesIO(image)), diag)
    assert set(parsed.block_numbers) == set(range(len(spans))) - expected
    assert set(parsed.damaged) == expected
    assert len([w for w in diag.problems if "overlaps another" in w.message]) == len(expected)


# --- the .vsv ---------------------------------------------------------------------------------
def _vsv(
    path: Path,
    *,
    ranges=(),
    partition: bool = True,
    partition_path: str = "/savedstate/savedVM/partition_state",
    range_path: str = "/savedstate/RamMemoryBlock{}",
) -> Any:
    """Write a HyperVStorage .vsv; returns the partition description (or None)."""
    writer = ContainerWriter("hyperv")
    writer.set("/savedstate/VmVersion", 0x0500)
    description = None
    if partition:
        description, blob = simple_partition(2)
        writer.set(partition_path, blob, file_object=True)
    for number, (gpa_page, pages, mbp) in enumerate(ranges):
        record = RAM_MEMORY_BLOCK.pack(
            saved_state_version=3,
            flags=0,
            page_count=pages,
            mbp_index_start=mbp,
            gpa_index_start=gpa_page,
            virtual_node=0,
            ksr_block_id=0,
        )
        writer.set(range_path.format(number), record, file_object=False)
    path.write_bytes(writer.build())
    return description


def test_vsv_found_beside_the_bin_in_any_case(tmp_path: Path):
    bin_path = tmp_path / "Machine.bin"
    bin_path.write_bytes(build_bin(memory_entries(_guest_memory(1))))
    assert find_vsv(str(bin_path)) is None
    (tmp_path / "Other.vsv").write_bytes(b"")
    assert find_vsv(str(bin_path)) is None
    _vsv(tmp_path / "Machine.VSV")
    assert find_vsv(str(bin_path)) == str(tmp_path / "Machine.VSV")
    handle = ss.LoadSavedStateFiles(str(bin_path))
    try:
        assert ss.GetVpCount(handle) == 2
        assert handle.legacy.mapping == MAPPING_IDENTITY  # no RamMemoryBlock keys here
        assert "/savedstate/VmVersion" in [key.path for key in handle.keys()]
    finally:
        ss.ReleaseSavedStateFiles(handle)


def test_pair_gives_registers_and_paging_mode(tmp_path: Path):
    """A .bin + .vsv pair from the test writers: registers through the DLL API."""
    bin_path = tmp_path / "vm.bin"
    bin_path.write_bytes(build_bin(memory_entries(_guest_memory(1))))
    vsv_path = tmp_path / "state.vsv"  # another stem: given explicitly
    description = _vsv(vsv_path)
    handle = ss.LoadSavedStateFiles(str(bin_path), str(vsv_path))
    try:
        assert ss.GetVpCount(handle) == 2
        for vp in (0, 1):
            wanted = description.vps[vp].vtls[0].registers
            assert ss.GetRegisterValue(handle, vp, REGISTER_ID_X64.X64_RegisterRip) == wanted["rip"]
            assert ss.GetRegisterValue(handle, vp, REGISTER_ID_X64.X64_RegisterCr3) == wanted["cr3"]
            assert ss.GetPagingMode(handle, vp) == handle.registers(vp).paging_mode
    finally:
        ss.ReleaseSavedStateFiles(handle)


@pytest.mark.parametrize(
    "partition_path, range_path",
    [
        ("/savedstate/savedVM/partition_state", "/savedstate/RamMemoryBlock{}"),
        ("/savedVM/partition_state", "/RamMemoryBlock/{}"),  # pre-0x0600 names (section 9.1)
    ],
)
def test_vsv_gpa_map_overrides_the_assumption(tmp_path: Path, partition_path, range_path):
    memory = _guest_memory(3)
    bin_path = tmp_path / "vm.bin"
    bin_path.write_bytes(build_bin(memory_entries(memory)))
    # Blocks 0-1 at GPA 0, block 2 above a gap at 4 GiB with a 4th block the .bin lacks.
    _vsv(
        tmp_path / "vm.vsv",
        ranges=[(0, 512, 0), (0x100000, 512, 512)],
        partition_path=partition_path,
        range_path=range_path,
    )
    with SavedStateDump(str(bin_path)) as dump:
        assert dump.vp_count == 2 and dump.legacy.mapping == MAPPING_VSV
        chunks = dump.memory_chunks()[1]
        assert chunks == [ss.GPA_MEMORY_CHUNK(0, 512), ss.GPA_MEMORY_CHUNK(0x100000, 512)]
        assert dump.read_physical(1 << 32, 64) == memory[2 * M.BLOCK_SIZE :][:64]
        assert any("replaces the assumption" in n.message for n in dump.diagnostics)
        (missing,) = dump.diagnostics.grouped().get(Kind.MISSING_BLOCK, [])
        assert "1 RamBlock(s) missing (3)" in missing.message


def test_vsv_that_is_not_a_container_is_a_note(tmp_path: Path):
    bin_path = tmp_path / "vm.bin"
    bin_path.write_bytes(build_bin(memory_entries(_guest_memory(1))))
    vsv_path = tmp_path / "elsewhere.vsv"
    vsv_path.write_bytes(b"not a container" * 100)
    with SavedStateDump(str(bin_path), vsv=str(vsv_path)) as dump:
        assert not dump.legacy.vsv.interpreted and dump.partition is None
        assert any("could not be interpreted" in n.message for n in dump.diagnostics)
        assert dump.legacy.mapping == MAPPING_IDENTITY and dump.diagnostics.problems == ()
        with pytest.raises(PartitionStateNotFoundError, match="could not be interpreted"):
            ss.GetVpCount(dump)


def test_vsv_without_partition_state_gives_no_registers(tmp_path: Path):
    bin_path = tmp_path / "vm.bin"
    bin_path.write_bytes(build_bin(memory_entries(_guest_memory(1))))
    _vsv(tmp_path / "vm.vsv", partition=False)
    with SavedStateDump(str(bin_path)) as dump:
        assert dump.legacy.vsv.interpreted and dump.partition is None
        assert any("holds no partition_state" in n.message for n in dump.diagnostics)
        with pytest.raises(PartitionStateNotFoundError, match="no usable partition_state"):
            dump.registers(0)
