"""Lengths and counts read from the file never drive allocations or loops unchecked.

Each test plants one absurd length or count and checks, with tracemalloc and a
counting file object, that the reader refuses or clips it without allocating or
reading in proportion to the claim.
"""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
from typing import Callable, Tuple, TypeVar

import pytest

from tests.malformed import make_corpus as C
from tests.support.container_writer import ContainerWriter
from tests.support.partition_writer import simple_partition
from tests.support.savedstate_writer import SavedStateWriter
from volatility3_vmrs.savedstate import memory as M
from volatility3_vmrs.savedstate import structs as S
from volatility3_vmrs.savedstate import xpress
from volatility3_vmrs.savedstate.errors import (
    GuestMemoryFormatError,
    MemoryReadError,
    PartitionStateError,
    ReplayLogError,
    TruncatedError,
)
from volatility3_vmrs.savedstate.processors import PartitionState
from volatility3_vmrs.savedstate.provider import SavedStateDump
from volatility3_vmrs.savedstate.storage import MAX_KEY_DEPTH, HyperVStorage

MIB = 1 << 20
T = TypeVar("T")


class CountingFile(io.BytesIO):
    """An in-memory file that counts the bytes read from it (no fileno: no pread)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0
        self.reads = 0

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        data = super().read(size)
        self.bytes_read += len(data)
        self.reads += 1
        return data


def measured(action: Callable[[], T]) -> Tuple[T, int, float]:
    """Run ``action``; return its result, the tracemalloc peak in bytes and the seconds."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = action()
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak, elapsed


def raises_within(
    error: type, action: Callable[[], object], *, peak: int = 8 * MIB, seconds: float = 2.0
) -> BaseException:
    def run() -> BaseException:
        with pytest.raises(error) as caught:
            action()
        return caught.value

    value, used, elapsed = measured(run)
    assert used < peak, f"peak {used / MIB:.1f} MiB"
    assert elapsed < seconds, f"{elapsed:.2f} s"
    return value


# --- opening reads metadata only ---------------------------------------------------------------
def raw_guest_file(megabytes: int = 8) -> bytes:
    _, blob = simple_partition(2)
    ram = bytes(range(256)) * (megabytes * MIB // 256)
    return SavedStateWriter([(0, ram)], blob, compression="raw").build()[0]


def test_opening_reads_only_metadata():
    data = raw_guest_file(8)
    assert len(data) > 8 * MIB
    source = CountingFile(data)
    storage = HyperVStorage(source)
    assert len(storage.keys()) > 10
    assert source.bytes_read < 32 * 1024, source.bytes_read

    source = CountingFile(data)
    blob_size = HyperVStorage(io.BytesIO(data)).get(C.PARTITION_STATE).size
    dump = SavedStateDump(source)
    assert dump.vp_count == 2 and dump.memory_ranges
    # Headers, tables, the partition_state blob and the RamMemoryBlock values: no RAM.
    assert source.bytes_read < 32 * 1024 + blob_size, source.bytes_read
    before = source.bytes_read
    dump.read_physical(0x1000, 0x100)
    assert source.bytes_read - before == 0x100  # a raw block is read where asked, no more


def test_opening_a_large_file_costs_little_memory():
    data = raw_guest_file(16)
    _, peak, _ = measured(lambda: SavedStateDump(io.BytesIO(data)))
    assert peak < 2 * MIB, f"{peak / MIB:.1f} MiB"


# --- 4 GB value lengths ------------------------------------------------------------------------
def test_file_object_claiming_4_gib_does_not_allocate():
    data = C.patch_file_pointer(C.base_saved_state(), C.PARTITION_STATE, value_length=0xFFFFFFFF)
    storage = HyperVStorage(io.BytesIO(data))
    assert any(w.kind == "truncated" for w in storage.diagnostics.items)
    key = storage.get(C.PARTITION_STATE)
    assert key.size == 0xFFFFFFFF
    raises_within(TruncatedError, key.read)
    raises_within(TruncatedError, lambda: SavedStateDump(io.BytesIO(data)))


def test_pending_replay_entry_of_4_gib_does_not_allocate():
    data = C._pending_file()
    # A 1 TiB log region, and an entry whose data claims 0xFFFFFF00 bytes inside it.
    data = C.patch_file_headers(data, replay_log_size=1 << 40)
    data = C.patch_replay_entry(data, 0, length=0xFFFFFF00)
    error = raises_within(ReplayLogError, lambda: HyperVStorage(io.BytesIO(data)))
    assert "runs past the end of the file" in str(error)


def test_replay_destination_far_beyond_the_file_is_refused():
    data = C.patch_replay_entry(C._pending_file(), 0, destination_offset=1 << 40)
    error = raises_within(ReplayLogError, lambda: HyperVStorage(io.BytesIO(data)))
    assert "beyond the end of the file" in str(error)


def test_replay_may_extend_the_file_contiguously():
    def build(destination: int) -> bytes:
        return C.base_saved_state(
            replay_entries=[C.ReplayEntry(destination, b"tail" * 4)], log_pages=2
        )

    data = build(len(build(0x3000)))  # the entry appends right at the end of the file
    storage = HyperVStorage(io.BytesIO(data))
    assert storage.replay_log.applied_entries == 1
    assert storage.source.size == len(data) + 16


# --- guest memory ------------------------------------------------------------------------------
def test_range_of_2_40_pages_is_not_walked_per_page_or_block():
    data = C._range_of_2_40_pages()
    dump, peak, elapsed = measured(lambda: SavedStateDump(io.BytesIO(data)))
    assert peak < 4 * MIB and elapsed < 2.0, (peak, elapsed)
    huge = max(dump.memory_ranges, key=lambda r: r.page_count)
    assert huge.page_count == (1 << 40) - 0x1000
    counts, peak, elapsed = measured(lambda: dump.memory.page_kind_counts(huge))
    assert peak < 4 * MIB and elapsed < 2.0, (peak, elapsed)
    # RamBlock1 backs the first 256 pages of the range; the rest is missing.
    assert counts["missing"] == huge.page_count - 256
    assert sum(counts.values()) == huge.page_count
    assert len(dump.memory.map.block_span(huge)) == huge.last_block - huge.first_block + 1
    # The pages that exist still read, and the ones that do not raise (not zeros).
    assert len(dump.read_physical(huge.gpa_start, 0x1000)) == 0x1000
    with pytest.raises(MemoryReadError, match="RamBlock2"):
        dump.read_physical(huge.gpa_start + 256 * M.PAGE_SIZE, 0x1000)


def test_multi_fill_count_of_2_32_pages_fails_fast():
    stream = struct.pack("<IQI", M.TAG_MULTI_FILL, 0, 0xFFFFFFFF)
    raises_within(GuestMemoryFormatError, lambda: M.index_page_stream(stream, "/x"))


def test_extended_record_claiming_4_gib_input_fails_fast():
    stream = struct.pack("<III", M.TAG_EXTENDED, 0x1000, 0xFFFFFFFF) + bytes(64)
    raises_within(GuestMemoryFormatError, lambda: M.index_page_stream(stream, "/x"))


@pytest.mark.parametrize("backend", xpress.AVAILABLE_BACKENDS)
def test_xpress_output_size_of_2_gib_is_refused_before_allocating(backend):
    previous = xpress.set_backend(backend)
    try:
        raises_within(xpress.XpressError, lambda: xpress.decompress(b"\0" * 8, 1 << 31), peak=MIB)
    finally:
        xpress.set_backend(previous)


# --- partition state ---------------------------------------------------------------------------
def test_partition_chunk_length_ffffffff_fails_fast():
    _, blob = simple_partition(4)
    for offset, _chunk_id in C.chunk_offsets(blob)[:6]:
        image = bytearray(blob)
        struct.pack_into("<I", image, offset + 4, 0xFFFFFFFF)
        raises_within(PartitionStateError, lambda image=image: PartitionState.parse(bytes(image)))


def test_partition_total_size_claiming_2_64_is_clipped_to_the_blob():
    _, blob = simple_partition(1)
    image = bytearray(blob)
    struct.pack_into("<Q", image, 16, (1 << 64) - 1)
    state, peak, _ = measured(lambda: PartitionState.parse(bytes(image)))
    assert state.vp_count == 1 and peak < 2 * MIB
    assert any(w.detail == "truncated" for w in state.diagnostics)


# --- container tables --------------------------------------------------------------------------
def test_object_table_count_ffffffff_reads_one_table():
    data = C._object_table_count_huge()
    padded = data + bytes(4 * MIB)  # room for 230,000 more "slots" if the count were trusted
    source = CountingFile(padded)
    storage, peak, elapsed = measured(lambda: HyperVStorage(source))
    assert elapsed < 1.0 and peak < 2 * MIB, (elapsed, peak)
    assert source.bytes_read < 64 * 1024, source.bytes_read
    assert any("more than the 227 slots" in w.message for w in storage.diagnostics.items)
    assert "/savedstate/VmVersion" in storage


def test_many_slots_naming_one_key_table_read_it_once():
    data = C.base_saved_state()
    storage = HyperVStorage(io.BytesIO(data))
    table = next(e for e in storage.object_entries if e.type == S.OBJECT_TYPE_KEY_TABLE)
    used = len(storage.object_entries)
    capacity = struct.unpack_from("<I", data, S.ROOT_OBJECT_TABLE_OFFSET + 4)[0]
    for slot in range(used + 4, capacity - 1):
        data = C.patch_object_slot(
            data,
            slot,
            type=S.OBJECT_TYPE_KEY_TABLE,
            file_offset=table.file_offset,
            size=table.size,
            flags=1,
        )
    source = CountingFile(data)
    storage = HyperVStorage(source)
    skipped = [w for w in storage.diagnostics.items if "overlaps a key table" in w.message]
    assert len(skipped) == capacity - 1 - used - 4
    assert source.bytes_read < len(data) // 2, (source.bytes_read, len(data))


def test_deep_key_chain_is_cut_and_costs_little():
    writer = ContainerWriter("openvmm")
    writer.set("/" + "/".join(["n"] * 3000), 1)
    data = writer.build()
    started = time.perf_counter()
    HyperVStorage(io.BytesIO(data))
    assert time.perf_counter() - started < 2.0
    storage, peak, _ = measured(lambda: HyperVStorage(io.BytesIO(data)))
    # Without the depth limit the 3,000 paths alone hold 9 million characters.
    assert peak < 8 * MIB, f"{peak / MIB:.1f} MiB"
    deepest = max(key.path.count("/") for key in storage.walk())
    assert deepest == MAX_KEY_DEPTH
    assert any("nested deeper than" in w.message for w in storage.diagnostics.items)
    storage.as_dict()  # no RecursionError
    assert isinstance(storage.get("/n").value, dict)  # a node value: its subtree


def test_thousands_of_memory_ranges_are_arranged_in_near_linear_time():
    count = 3000
    writer = ContainerWriter("openvmm")

    def block(pages: int, mbp: int, gpa_page: int) -> bytes:
        return C.ram_memory_block(pages, mbp, gpa_page)

    for number in range(count):  # one page every other GPA page...
        writer.set(
            f"/savedstate/RamMemoryBlock{number}", block(1, number, 2 * number), file_object=False
        )
    # ...and one range over all of them, which the earlier ones clip into 3000 pieces.
    writer.set(f"/savedstate/RamMemoryBlock{count}", block(2 * count, count, 0), file_object=False)
    storage = HyperVStorage(io.BytesIO(writer.build()))
    started = time.perf_counter()
    memory = M.open_guest_memory(storage)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.5, f"{elapsed:.2f} s"  # ~6 s when each range scanned all earlier ones
    assert len(memory.ranges) == 2 * count
    assert memory.map.total_pages == 2 * count
    overlap = [w for w in memory.diagnostics.items if "overlap an earlier range" in w.message]
    assert len(overlap) == 1 and f"({count} runs" in overlap[0].message
    assert memory.map.range_of(1 << 12).number == count  # page 1: a gap the big range fills
    assert memory.map.range_of(2 << 12).number == 1


def test_a_1_mib_extended_xpress_record_is_decoded_once_per_block(monkeypatch):
    from tests.support.xpress_compress import compress

    rng = __import__("random").Random(1)
    data = b"".join(rng.randbytes(24) * 8 for _ in range(M.BLOCK_SIZE // 192))
    data += bytes(M.BLOCK_SIZE - len(data))
    packed = compress(data)
    stream = struct.pack("<III", M.TAG_EXTENDED, M.BLOCK_SIZE, len(packed)) + packed
    calls = []
    real = xpress.decompress

    def counting(payload: bytes, out_size: int) -> bytes:
        calls.append(out_size)
        return real(payload, out_size)

    monkeypatch.setattr(M.xpress, "decompress", counting)
    _, blob = simple_partition(1)
    stream += struct.pack("<I", M.TAG_END)
    file = SavedStateWriter([(0, data)], blob, block_values={0: stream}).build()[0]
    memory = SavedStateDump(io.BytesIO(file)).memory
    assert not memory.map.blocks[0].is_raw
    pages = [memory.read_physical(page * M.PAGE_SIZE, M.PAGE_SIZE) for page in range(256)]
    assert b"".join(pages) == data
    assert calls == [M.BLOCK_SIZE]  # 256 decompressions of 1 MiB each without the reuse


def test_thousands_of_replay_patches_apply_in_near_linear_time():
    from volatility3_vmrs.savedstate.source import ReadOnlySource

    source = ReadOnlySource(io.BytesIO(bytes(0x100000)))
    started = time.perf_counter()
    for number in range(5000):  # what a log header of 0x24000 bytes can list
        source.apply_patch(0x2000 + number * 16, b"x" * 8)
    source.apply_patch(0x2004, b"y" * 16 * 100)  # cuts into 101 earlier patches
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"{elapsed:.2f} s"  # ~18 s when every patch rebuilt the list
    assert source.read(0x2000, 8) == b"xxxxyyyy"
    assert source.read(0x2000 + 100 * 16, 8) == b"yyyyxxxx"
    assert source.read(0x2000 + 101 * 16, 10) == b"x" * 8 + b"\0\0"


def test_a_huge_vp_indices_bitmap_is_counted_without_a_bit_string():
    from tests.support.partition_writer import chunk

    _, blob = simple_partition(1)
    head = next(
        offset for offset, chunk_id in C.chunk_offsets(blob) if chunk_id == 0x30000000
    )  # VpIndices
    length = struct.unpack_from("<I", blob, head + 4)[0]
    bitmap = b"\xff" * (16 * MIB)  # claims 2**27 VPs
    huge = chunk(0x30000000, struct.pack("<I", 0) + bitmap)
    image = blob[:head] + huge + blob[head + 16 + length :]
    image = image[:16] + struct.pack("<Q", len(image)) + image[24:]  # total_size
    state, peak, _ = measured(lambda: PartitionState.parse(image))
    assert any(w.detail == "vp-indices" for w in state.diagnostics)
    # The blob and its chunk copies are ~16 MiB each; bin() of the bitmap was 128 MiB.
    assert peak < 72 * MIB, f"{peak / MIB:.0f} MiB"
