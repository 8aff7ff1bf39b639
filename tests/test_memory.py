"""Guest memory: every page written comes back byte-exact; bad memory never reads as zeros."""

from __future__ import annotations

import io
import random
import struct

import pytest

from tests.support.savedstate_writer import SavedStateWriter, encode_block
from volatility3_vmrs.savedstate import memory as M
from volatility3_vmrs.savedstate import memory_map as MM
from volatility3_vmrs.savedstate.errors import (
    GuestMemoryFormatError,
    GuestMemoryNotFoundError,
    MemoryReadError,
    UnsupportedVersionError,
    VmrsError,
)
from volatility3_vmrs.savedstate.memory import index_page_stream, open_guest_memory
from volatility3_vmrs.savedstate.storage import HyperVStorage

PAGE = 4096
HIGH = 0x1_0000_0000


def make_page(rng: random.Random, number: int) -> bytes:
    kind = number % 5
    if kind == 0:
        return bytes(PAGE)
    if kind == 1:
        return struct.pack("<Q", rng.getrandbits(64)) * 512
    if kind == 2:
        return rng.randbytes(PAGE)
    if kind == 3:
        return (f"page {number} of guest text; ".encode() * 200)[:PAGE]
    return bytes(rng.randrange(4) for _ in range(PAGE))


def make_range(seed: int, pages: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(make_page(rng, number) for number in range(pages))


# Ranges not a multiple of 1 MiB, a hole below 4 GiB and RAM above it.
RANGES = [(0, make_range(1, 300)), (0x200000, make_range(2, 130)), (HIGH, make_range(3, 270))]


def build(**options):
    data, info = SavedStateWriter(RANGES, None, **options).build()
    return open_guest_memory(HyperVStorage(io.BytesIO(data))), info


VARIANTS = [
    {"layout": "openvmm", "compression": "raw"},
    {"layout": "openvmm", "compression": "xpress", "extended_every": 7},
    {"layout": "packed", "compression": "raw"},
    {"layout": "packed", "compression": "xpress"},
    {"layout": "packed", "compression": "xpress", "memory_block_size": 40, "vm_version": 0x0400},
]


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def variant(request):
    return (*build(**request.param), request.param)


def test_every_page_comes_back(variant):
    memory, _, options = variant
    assert memory.diagnostics.items == ()
    for gpa, data in RANGES:
        assert memory.read_physical(gpa, len(data)) == data
        # Unaligned reads crossing page and block boundaries.
        for start in (1, PAGE - 3, 0x100000 - 5, len(data) - PAGE - 1):
            if start < len(data):
                length = min(3 * PAGE + 7, len(data) - start)
                assert memory.read_physical(gpa + start, length) == data[start : start + length]
    if options["layout"] == "packed":
        # The second range starts in the middle of a block in the packed layout.
        assert memory.ranges[1].mbp_start % M.PAGES_PER_BLOCK
    else:
        assert all(r.mbp_start % M.PAGES_PER_BLOCK == 0 for r in memory.ranges)


def test_chunks_and_raw_offsets(variant):
    memory, info, _ = variant
    assert [(r.gpa_page, r.page_count) for r in memory.ranges] == [
        (gpa // PAGE, len(data) // PAGE) for gpa, data in RANGES
    ]
    for written, memory_range in zip(info.ranges, memory.ranges):
        assert memory_range.mbp_start == written.mbp_start
        gpa = written.gpa + 5 * PAGE + 17
        assert memory.map.gpa_to_raw_offset(gpa) == (written.mbp_start + 5) * PAGE + 17
        assert memory.read_raw((written.mbp_start + 5) * PAGE + 17, 10) == memory.read_physical(
            gpa, 10
        )
    assert memory.map.raw_size == (info.ranges[-1].mbp_start + info.ranges[-1].pages) * PAGE


def test_page_kind_counts_match_the_writer(variant):
    memory, info, _ = variant
    seen = []
    for index, memory_range in enumerate(memory.ranges):
        counts = memory.page_kind_counts(memory_range, lambda pct, text: seen.append(pct))
        assert counts == info.kind_counts(index)
    assert seen


def test_holes_fail_or_pad(variant):
    memory, _, _ = variant
    hole = 300 * PAGE
    with pytest.raises(MemoryReadError, match="hole") as caught:
        memory.read_physical(hole - 8, 16)
    assert caught.value.address == hole
    data, missing = memory.read_physical_padded(hole - 8, 16)
    assert data[8:] == bytes(8) and data[:8] == RANGES[0][1][-8:]
    assert missing == [(hole, 8)]
    assert memory.read_physical(hole - 8, 16, pad=True) == data
    assert not memory.map.is_mapped(hole) and memory.map.is_mapped(hole - 1)
    with pytest.raises(MemoryReadError):
        memory.map.gpa_to_raw_offset(HIGH - PAGE)


def test_missing_ramblock_is_reported_and_unreadable():
    memory, _ = build(layout="openvmm", compression="raw", drop_blocks=[1])
    assert any(
        "missing" in w.message and "RamBlock" in w.structure for w in memory.diagnostics.items
    )
    with pytest.raises(MemoryReadError, match="RamBlock1") as caught:
        memory.read_physical(0x100000, 16)
    assert caught.value.block == "/savedstate/RamBlock1"
    data, missing = memory.read_physical_padded(0x100000 - PAGE, 2 * PAGE)
    assert missing == [(0x100000, PAGE)]
    assert data[:PAGE] == RANGES[0][1][0xFF000:0x100000]


def test_cache_limit_bounds_decoded_pages():
    memory, _ = build(layout="packed", compression="xpress")
    memory.cache_limit_blocks = 1
    for gpa, data in RANGES:
        assert memory.read_physical(gpa, len(data)) == data
    # Long reads (scans) are decoded past the page cache; page-sized reads go through it.
    assert memory.cached_pages == 0
    for gpa, data in RANGES:
        for at in range(0, len(data), PAGE):
            assert memory.read_physical(gpa + at, PAGE) == data[at : at + PAGE]
    assert 0 < memory.cached_pages <= M.PAGES_PER_BLOCK
    memory.cache_limit_blocks = 0
    assert memory.cached_pages == 0
    assert memory.read_physical(*[RANGES[2][0], 100]) == RANGES[2][1][:100]
    assert memory.cached_pages == 0


# --- page-record streams ----------------------------------------------------------------
def block_of(seed: int) -> bytes:
    return make_range(seed, M.PAGES_PER_BLOCK)


def test_stream_with_every_record_kind_decodes():
    block = block_of(9)
    stream, kinds = encode_block(block, extended_every=3)
    assert {"fill", "raw", "xpress"} <= set(kinds)
    index = index_page_stream(stream, "/savedstate/RamBlock0")
    assert set(index.kind) == {M.KIND_FILL, M.KIND_RAW, M.KIND_XPRESS}
    # Extended records produce half pages.
    assert PAGE // 2 in set(index.out_length)
    data, _ = SavedStateWriter([(0, block)], None, block_values={0: stream}).build()
    memory = open_guest_memory(HyperVStorage(io.BytesIO(data)))
    assert memory.read_physical(0, M.BLOCK_SIZE) == block


@pytest.mark.parametrize(
    "stream,message",
    [
        (b"", "decodes to 0x0 bytes"),
        (struct.pack("<I", M.TAG_END), "decodes to 0x0"),
        (struct.pack("<IQ", M.TAG_FILL, 0) * 255 + struct.pack("<I", M.TAG_END), "0xff000"),
        (struct.pack("<IQI", M.TAG_MULTI_FILL, 0, 257), "does not fit"),
        (struct.pack("<IQI", M.TAG_MULTI_FILL, 0, 0), "does not fit"),
        (struct.pack("<I", 5000) + bytes(5000), "invalid record tag"),
        (struct.pack("<I", 0), "invalid record tag"),
        (struct.pack("<I", 100) + bytes(10), "runs past"),
        (struct.pack("<III", M.TAG_EXTENDED, 0x200000, 4) + bytes(4), "overflows"),
        (struct.pack("<III", M.TAG_EXTENDED, 10, 0xFFFFFFF0), "past the value end"),
        (struct.pack("<IQ", M.TAG_FILL, 0)[:6], "cut off"),
        (struct.pack("<IQI", M.TAG_MULTI_FILL, 0, 256) + struct.pack("<I", 4096), ""),
    ],
)
def test_malformed_streams(stream, message):
    if message == "":
        # Output complete at 1 MiB: trailing bytes are ignored as Hyper-V's reader does.
        assert len(index_page_stream(stream, "/k")) == 1
        return
    with pytest.raises(GuestMemoryFormatError, match=message):
        index_page_stream(stream, "/savedstate/RamBlock3")


def test_bad_stream_makes_only_its_block_unreadable():
    good = block_of(4)
    stream, _ = encode_block(good)
    bad = stream[:-400]  # cut off before 1 MiB of output
    data, _ = SavedStateWriter([(0, good + good)], None, block_values={1: bad}).build()
    memory = open_guest_memory(HyperVStorage(io.BytesIO(data)))
    assert memory.read_physical(0, 16) == good[:16]
    with pytest.raises(MemoryReadError, match="RamBlock1 cannot be decoded") as caught:
        memory.read_physical(0x100000, 16)
    assert caught.value.block == "/savedstate/RamBlock1"
    assert memory.page_kind_counts(memory.ranges[0]) == {"raw": 256, "bad": 256}


def with_first_xpress_record_broken(seed: int):
    """A one-block guest whose first XPRESS record is garbage: (block, its page, memory)."""
    block = block_of(seed)
    stream, kinds = encode_block(block)
    first_xpress = kinds.index("xpress")
    index = index_page_stream(stream, "/k")
    record = list(index.out_start).index(first_xpress * PAGE)
    start, length = index.source[record], index.data_length[record]
    broken = stream[:start] + b"\xff" * length + stream[start + length :]
    data, _ = SavedStateWriter([(0, block)], None, block_values={0: broken}).build()
    return block, first_xpress, open_guest_memory(HyperVStorage(io.BytesIO(data)))


def test_xpress_page_that_fails_to_decode_names_the_block():
    block, first_xpress, memory = with_first_xpress_record_broken(5)
    with pytest.raises(MemoryReadError, match=r"RamBlock0.*XPRESS") as caught:
        memory.read_physical(first_xpress * PAGE, PAGE)
    assert caught.value.block == "/savedstate/RamBlock0"
    # The other pages of the block still read.
    assert (
        memory.read_physical((first_xpress + 1) * PAGE, PAGE)
        == block[(first_xpress + 1) * PAGE : (first_xpress + 2) * PAGE]
    )


# --- malformed metadata ------------------------------------------------------------------
def memory_with(records: dict, blocks: int = 1):
    from tests.support.container_writer import ContainerWriter

    writer = ContainerWriter("openvmm")
    writer.set("/savedstate/VmVersion", 0x0A00)
    for name, value in records.items():
        writer.set(f"/savedstate/{name}", value, file_object=False)
    for number in range(blocks):
        writer.set(f"/savedstate/RamBlock{number}", bytes(M.BLOCK_SIZE))
    return open_guest_memory(HyperVStorage(io.BytesIO(writer.build())))


def record(pages=16, mbp=0, gpa=0, version=3, flags=0, size=48):
    return MM.RAM_MEMORY_BLOCK.pack(
        saved_state_version=version,
        flags=flags,
        page_count=pages,
        mbp_index_start=mbp,
        gpa_index_start=gpa,
        virtual_node=0,
        ksr_block_id=0,
    )[:size]


def test_zero_page_range_is_ignored_with_a_warning():
    memory = memory_with({"RamMemoryBlock0": record(), "RamMemoryBlock1": record(pages=0, gpa=99)})
    assert len(memory.ranges) == 1
    assert any("zero pages" in w.message for w in memory.diagnostics.items)


def test_overlapping_ranges_are_clipped_and_reported():
    memory = memory_with(
        {
            "RamMemoryBlock0": record(pages=16, gpa=0),
            "RamMemoryBlock1": record(pages=16, mbp=16, gpa=8),
        }
    )
    assert [(r.gpa_page, r.page_count, r.mbp_start) for r in memory.ranges] == [
        (0, 16, 0),
        (16, 8, 24),
    ]
    assert any("overlap" in w.message for w in memory.diagnostics.items)


@pytest.mark.parametrize(
    "value,error,message",
    [
        (record(version=4), UnsupportedVersionError, "version 4"),
        (record(flags=0x10), GuestMemoryFormatError, "unknown flags"),
        (record()[:30], GuestMemoryFormatError, "30 bytes"),
        (record(pages=1 << 41), GuestMemoryFormatError, "52-bit"),
        (record(gpa=(1 << 40) - 1, pages=2), GuestMemoryFormatError, "52-bit"),
    ],
)
def test_bad_range_metadata(value, error, message):
    with pytest.raises(error, match=message) as caught:
        memory_with({"RamMemoryBlock0": value})
    assert caught.value.key_path == "/savedstate/RamMemoryBlock0"


def test_no_memory_at_all():
    from tests.support.container_writer import ContainerWriter

    writer = ContainerWriter("openvmm")
    writer.set("/configuration/properties/version", 0x0A00)
    with pytest.raises(GuestMemoryNotFoundError, match="no /savedstate"):
        open_guest_memory(HyperVStorage(io.BytesIO(writer.build())))
    writer.set("/savedstate/VmVersion", 0x0A00)
    with pytest.raises(GuestMemoryNotFoundError, match="RamMemoryBlock"):
        open_guest_memory(HyperVStorage(io.BytesIO(writer.build())))


def test_absurd_range_over_few_blocks_reads_fail_cleanly():
    memory = memory_with({"RamMemoryBlock0": record(pages=1 << 30)})
    assert any("missing" in w.message for w in memory.diagnostics.items)
    assert memory.read_physical(0, 16) == bytes(16)
    with pytest.raises(VmrsError):
        memory.read_physical((1 << 30) * PAGE - 16, 16)


def test_memory_keys_the_reader_does_not_apply_are_reported():
    from volatility3_vmrs.savedstate.storage import HyperVStorage as Storage

    data, _ = SavedStateWriter(
        RANGES[:1],
        None,
        extra_keys={
            "/savedstate/RamMemoryBlockPageCountValid0": 100,
            "/savedstate/RamMemoryBlockBackingBitmap0": b"\xff" * 40,
        },
    ).build()
    memory = open_guest_memory(Storage(io.BytesIO(data)))
    found = [w for w in memory.diagnostics.items if w.structure == "memory key"]
    assert len(found) == 1
    assert "RamMemoryBlockBackingBitmap0" in found[0].message
    assert "RamMemoryBlockPageCountValid0" in found[0].message
    # Reading is unchanged (their meaning is not known well enough to apply).
    assert memory.read_physical(0, 4096) == RANGES[0][1][:4096]


# --- long reads: raw runs in one file read, compressed blocks record by record ------------
def test_raw_blocks_back_to_back_in_the_file_are_read_at_once(monkeypatch):
    data = make_range(11, 3 * M.PAGES_PER_BLOCK)
    memory = open_guest_memory(
        HyperVStorage(io.BytesIO(SavedStateWriter([(0, data)], None).build()[0]))
    )
    locations = [memory.map.blocks[n] for n in range(3)]
    contiguous = all(a.offset + a.size == b.offset for a, b in zip(locations, locations[1:]))
    reads = []
    source = memory._source
    real_read = source.read
    monkeypatch.setattr(source, "read", lambda at, size: reads.append(size) or real_read(at, size))
    assert memory.read_physical(5, len(data) - 10) == data[5:-5]
    assert len(reads) == (1 if contiguous else 3)


def test_file_shrunk_under_a_raw_run_names_the_block():
    data = make_range(12, 3 * M.PAGES_PER_BLOCK)
    image = io.BytesIO(SavedStateWriter([(0, data)], None).build()[0])
    memory = open_guest_memory(HyperVStorage(image))
    second = memory.map.blocks[1]
    image.truncate(second.offset + 100)  # the file changes under the reader
    with pytest.raises(MemoryReadError, match="RamBlock1: the file ends inside") as caught:
        memory.read_physical(0, len(data))
    assert caught.value.block == "/savedstate/RamBlock1"


def test_long_read_over_a_bad_xpress_record_fails_and_leaves_the_cache_alone():
    block, first_xpress, memory = with_first_xpress_record_broken(6)
    with pytest.raises(MemoryReadError, match=r"RamBlock0.*XPRESS"):
        memory.read_physical(0, M.BLOCK_SIZE)
    assert [d.kind.name for d in memory.diagnostics.items] == ["BAD_BLOCK"]
    assert memory.cached_pages == 0
    # Everything before the bad record reads in one long read, and decodes as written.
    assert memory.read_physical(0, first_xpress * PAGE) == block[: first_xpress * PAGE]


def test_long_reads_of_a_file_on_disk_go_through_its_map_and_stop_if_it_shrinks(tmp_path):
    data = make_range(13, 3 * M.PAGES_PER_BLOCK)
    path = tmp_path / "guest.vmrs"
    path.write_bytes(SavedStateWriter([(0, data)], None, layout="packed").build()[0])
    memory = open_guest_memory(HyperVStorage(str(path)))
    assert memory._source.mapped() is not None
    assert memory.read_physical(3, len(data) - 3) == data[3:]
    second = memory.map.blocks[1]
    with open(path, "r+b") as handle:  # the file changes under the reader
        handle.truncate(second.offset + 100)
    assert memory._source.mapped() is None  # reading the map now could kill the process
    with pytest.raises(MemoryReadError, match="RamBlock1: the file ends inside"):
        memory.read_physical(0, len(data))
    memory._source.close()
