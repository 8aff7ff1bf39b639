"""The legacy ``.bin`` reader on the real Hyper-V sample and on written files; the ``.vsv``.

The real sample (``tests/data/samples/vmsavedstatedump-rs-test_file.bin``, 252 MiB of a
VM in its BIOS stage) is checked against an independent oracle: the guest's ACPI tables,
found by ``tests/support/acpi.py`` in the decoded memory with block N at N x 1 MiB, every
checksum valid. Written files round-trip page for page.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import samples_dir
from tests.support import acpi
from tests.support.container_writer import ContainerWriter
from tests.support.legacy_writer import Entry, block_name, build_bin, memory_entries
from tests.support.partition_writer import simple_partition
from volatility3_vmrs.savedstate import legacy as L
from volatility3_vmrs.savedstate import memory as M
from volatility3_vmrs.savedstate.errors import GuestMemoryFormatError
from volatility3_vmrs.savedstate.legacy_pair import (
    MAPPING_IDENTITY,
    MAPPING_VSV,
    find_vsv,
    load_legacy_pair,
)
from volatility3_vmrs.savedstate.source import ReadOnlySource

SAMPLE_NAME = "vmsavedstatedump-rs-test_file.bin"
SAMPLE_SHA256 = "5dc06f3f"  # prefix, as in tests/data/README.md


@pytest.fixture(scope="module")
def sample() -> Path:
    path = samples_dir() / SAMPLE_NAME
    assert path.is_file(), f"real .bin sample missing: {path}"
    return path


@pytest.fixture(scope="module")
def sample_memory(sample: Path) -> bytes:
    """The sample's 252 MiB, block N at N x 1 MiB (checked contiguous by the tests)."""
    source = ReadOnlySource(str(sample))
    try:
        parsed = L.parse_legacy_bin(source)
        return b"".join(L.decode_block(source, block) for block in parsed.blocks)
    finally:
        source.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the real sample --------------------------------------------------------------------
def test_sample_header_and_index(sample: Path):
    parsed = L.load_legacy_bin(str(sample))
    header = parsed.header
    assert (header.magic, header.version, header.unknown) == (L.LEGACY_MAGIC, 0x0500, 1)
    assert (header.index_capacity, header.index_offset) == (0x400, 0x179000)
    assert (header.string_table_offset, header.string_table_capacity) == (0x17F000, 0x4000)
    assert header.string_table_used == 0xD5A
    assert parsed.file_size == 1_585_152
    assert parsed.block_numbers == tuple(range(252))
    assert parsed.warnings == () and parsed.notes == ()
    # Hyper-V's index is not in numeric order: slot 0 holds RamBlock/3/.
    assert min(parsed.blocks, key=lambda b: b.slot).name == "RamBlock/3/"
    assert all(
        b.data_offset % 0x1000 == 0 and b.data_size < b.allocated_size for b in parsed.blocks
    )


def test_sample_every_block_decodes_to_1_mib_and_page_kinds(sample: Path):
    source = ReadOnlySource(str(sample))
    try:
        parsed = L.parse_legacy_bin(source)
        counts: Counter = Counter()
        for block in parsed.blocks:
            assert len(L.decode_block(source, block)) == M.BLOCK_SIZE, block.name
            counts += L.page_kind_counts(source, block)
    finally:
        source.close()
    # Measured on the real file (spec section 13: ~64,322 fills, 6 raw, ~184 XPRESS).
    assert counts == Counter(fill=64321, raw=6, xpress=185)
    assert sum(counts.values()) == 252 * M.PAGES_PER_BLOCK


def test_sample_acpi_tables_at_identity_mapping(sample: Path, sample_memory: bytes):
    before = _sha256(sample)
    assert len(sample_memory) == 252 * M.BLOCK_SIZE
    tables = acpi.walk(lambda gpa, size: sample_memory[gpa : gpa + size])
    assert tables.rsdp_address == 0xF5C00
    assert (tables.root_signature, tables.root_address) == ("RSDT", 0xFBF0000)
    assert set(tables.signatures()) == {
        "RSDT", "FACP", "DSDT", "APIC", "SRAT", "WAET", "SLIC", "OEM0", "OEMB",
    }  # fmt: skip
    assert all(table.checksum_ok for table in tables.tables), tables.tables
    assert _sha256(sample) == before and before.startswith(SAMPLE_SHA256)


def test_sample_pair_without_vsv(sample: Path):
    pair = load_legacy_pair(str(sample))
    try:
        assert pair.vsv is None and pair.partition is None
        assert pair.mapping == MAPPING_IDENTITY
        assert [(r.gpa_page, r.page_count, r.mbp_start) for r in pair.ranges] == [(0, 64512, 0)]
        text = " | ".join(str(note) for note in pair.notes)
        assert "no .vsv beside the .bin" in text and "N x 1 MiB" in text
    finally:
        pair.close()


def test_acpi_oracle_fails_on_a_broken_checksum(sample_memory: bytes):
    broken = bytearray(sample_memory)
    broken[0xFBF0300 + 40] ^= 1  # a byte of the APIC table
    tables = acpi.walk(lambda gpa, size: bytes(broken[gpa : gpa + size]))
    assert not tables.by_signature("APIC").checksum_ok
    broken[0xF5C00 + 8] ^= 1  # the RSDP itself
    with pytest.raises(acpi.AcpiError):
        acpi.walk(lambda gpa, size: bytes(broken[gpa : gpa + size]))


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


def test_written_bin_round_trips(tmp_path: Path):
    memory = _guest_memory(3)
    entries = memory_entries(memory, order=[2, 0, 1], raw_blocks=[1])
    path = tmp_path / "vm.bin"
    path.write_bytes(build_bin(entries))
    source = ReadOnlySource(str(path))
    try:
        parsed = L.parse_legacy_bin(source)
        assert parsed.block_numbers == (0, 1, 2) and parsed.warnings == ()
        assert [b.is_raw for b in parsed.blocks] == [False, True, False]
        decoded = b"".join(L.decode_block(source, block) for block in parsed.blocks)
        kinds = L.page_kind_counts(source, parsed.blocks[0])
    finally:
        source.close()
    assert decoded == memory
    assert kinds["xpress"] and kinds["fill"] and kinds["raw"]


def test_bad_stream_is_reported_with_block_and_offset(tmp_path: Path):
    entries = memory_entries(_guest_memory(2))
    entries[1] = Entry(block_name(1), struct.pack("<I", 0x5000) + bytes(12))
    path = tmp_path / "vm.bin"
    path.write_bytes(build_bin(entries))
    source = ReadOnlySource(str(path))
    try:
        parsed = L.parse_legacy_bin(source)
        assert len(L.decode_block(source, parsed.blocks[0])) == M.BLOCK_SIZE
        with pytest.raises(GuestMemoryFormatError) as caught:
            L.decode_block(source, parsed.blocks[1])
    finally:
        source.close()
    message = str(caught.value)
    assert "RamBlock/1/" in message and "invalid record tag 0x00005000" in message
    assert f"file offset {parsed.blocks[1].data_offset:#x}" in message


def test_strict_mode_raises_warnings_not_notes(tmp_path: Path):
    entries = memory_entries(_guest_memory(1))
    entries[0].unknown_a = 2  # a note
    noted = build_bin(entries)
    assert L.load_legacy_bin(_write(tmp_path / "a.bin", noted), strict=True).notes
    entries.append(Entry(b"Other/0/\0", b"x"))  # a warning
    with pytest.raises(L.LegacyBinError, match="not a NUL-terminated 'RamBlock/N/'"):
        L.load_legacy_bin(_write(tmp_path / "b.bin", build_bin(entries)), strict=True)


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
    parsed = L.parse_legacy_bin(ReadOnlySource(io.BytesIO(image)))
    assert set(parsed.block_numbers) == set(range(len(spans))) - expected
    assert len([w for w in parsed.warnings if "overlaps another" in w.message]) == len(expected)


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


# --- the .vsv ---------------------------------------------------------------------------------
def _vsv(
    path: Path,
    *,
    ranges=(),
    partition: bool = True,
    partition_path: str = "/savedstate/savedVM/partition_state",
    range_path: str = "/savedstate/RamMemoryBlock{}",
) -> bytes:
    writer = ContainerWriter("hyperv")
    writer.set("/savedstate/VmVersion", 0x0500)
    if partition:
        _, blob = simple_partition(2)
        writer.set(partition_path, blob, file_object=True)
    for number, (gpa_page, pages, mbp) in enumerate(ranges):
        writer.set(
            range_path.format(number),
            M.RAM_MEMORY_BLOCK.pack(
                saved_state_version=3,
                flags=0,
                page_count=pages,
                mbp_index_start=mbp,
                gpa_index_start=gpa_page,
                virtual_node=0,
                ksr_block_id=0,
            ),
            file_object=False,
        )
    data = writer.build()
    path.write_bytes(data)
    return data


def test_vsv_found_beside_the_bin_in_any_case(tmp_path: Path):
    bin_path = tmp_path / "Machine.bin"
    bin_path.write_bytes(build_bin(memory_entries(_guest_memory(1))))
    assert find_vsv(str(bin_path)) is None
    (tmp_path / "Other.vsv").write_bytes(b"")
    assert find_vsv(str(bin_path)) is None
    _vsv(tmp_path / "Machine.VSV")
    assert find_vsv(str(bin_path)) == str(tmp_path / "Machine.VSV")
    pair = load_legacy_pair(str(bin_path))
    try:
        assert pair.partition is not None and pair.partition.vp_count == 2
        assert pair.vsv is not None and "/savedstate/VmVersion" in pair.vsv.storage
        assert pair.mapping == MAPPING_IDENTITY  # no RamMemoryBlock keys in this .vsv
    finally:
        pair.close()


@pytest.mark.parametrize(
    "partition_path, range_path",
    [
        ("/savedstate/savedVM/partition_state", "/savedstate/RamMemoryBlock{}"),
        ("/savedVM/partition_state", "/RamMemoryBlock/{}"),  # pre-0x0600 names (section 9.1)
    ],
)
def test_vsv_gpa_map_overrides_the_assumption(tmp_path: Path, partition_path, range_path):
    bin_path = tmp_path / "vm.bin"
    bin_path.write_bytes(build_bin(memory_entries(_guest_memory(3))))
    # Blocks 0-1 at GPA 0, block 2 above a gap at 4 GiB; a 4th block the .bin lacks.
    _vsv(
        tmp_path / "vm.vsv",
        ranges=[(0, 512, 0), (0x100000, 512, 512)],
        partition_path=partition_path,
        range_path=range_path,
    )
    pair = load_legacy_pair(str(bin_path))
    try:
        assert pair.partition is not None and pair.partition.vp_count == 2
        assert pair.mapping == MAPPING_VSV
        assert [(r.gpa_page, r.page_count, r.mbp_start) for r in pair.ranges] == [
            (0, 512, 0),
            (0x100000, 512, 512),
        ]
        assert any("replaces the assumption" in str(note) for note in pair.notes)
        assert any("1 block(s) of this range are not in the .bin" in str(w) for w in pair.warnings)
    finally:
        pair.close()


def test_vsv_that_is_not_a_container_is_a_note(tmp_path: Path):
    bin_path = tmp_path / "vm.bin"
    bin_path.write_bytes(build_bin(memory_entries(_guest_memory(1))))
    vsv_path = tmp_path / "elsewhere.vsv"
    vsv_path.write_bytes(b"not a container" * 100)
    pair = load_legacy_pair(str(bin_path), str(vsv_path))
    try:
        assert pair.vsv is not None and not pair.vsv.interpreted and pair.partition is None
        assert any("could not be interpreted" in str(note) for note in pair.notes)
        assert pair.mapping == MAPPING_IDENTITY and pair.warnings == ()
    finally:
        pair.close()


def test_vsv_without_partition_state_gives_no_registers(tmp_path: Path):
    bin_path = tmp_path / "vm.bin"
    bin_path.write_bytes(build_bin(memory_entries(_guest_memory(1))))
    _vsv(tmp_path / "vm.vsv", partition=False)
    pair = load_legacy_pair(str(bin_path))
    try:
        assert pair.vsv is not None and pair.vsv.interpreted and pair.partition is None
        assert any("holds no partition_state" in str(note) for note in pair.notes)
    finally:
        pair.close()
