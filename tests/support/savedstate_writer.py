"""Writer of complete saved-state ``.vmrs`` files for the tests (not shipped API).

Guest RAM goes in as ``(gpa, bytes)`` ranges and comes out as RamMemoryBlock metadata
plus 1 MiB RamBlocks, raw or as page-record streams (§10), inside a container written by
:mod:`tests.support.container_writer`. The partition_state blob comes from
:mod:`tests.support.partition_writer`.

Layouts of saved RAM:

* ``"openvmm"``: each range starts on a fresh RamBlock, the last block of a range is
  zero-padded to 1 MiB (Microsoft's openvmm writer, accepted by the DLL);
* ``"packed"``: ranges follow each other in the MBP sequence, so a range may start in
  the middle of a block (allowed by the general mapping rule, UNVERIFIED for Hyper-V).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tests.support.container_writer import ContainerWriter
from tests.support.xpress_compress import compress as xpress_compress
from volatility3_vmrs.savedstate import memory as M
from volatility3_vmrs.savedstate import memory_map as MM

PAGE = M.PAGE_SIZE


@dataclass
class WrittenRange:
    gpa: int
    pages: int
    mbp_start: int


@dataclass
class SavedStateInfo:
    """What the writer produced, for the tests to compare with."""

    ranges: List[WrittenRange] = field(default_factory=list)
    # Kind of every MBP page that belongs to a range: "raw", "fill" or "xpress".
    page_kinds: Dict[int, str] = field(default_factory=dict)
    blocks: Dict[int, str] = field(default_factory=dict)  # block number -> "raw"/"stream"
    container: Optional[ContainerWriter] = None

    def kind_counts(self, index: int) -> Counter:
        written = self.ranges[index]
        return Counter(
            self.page_kinds[mbp]
            for mbp in range(written.mbp_start, written.mbp_start + written.pages)
        )


def fill_pattern(page: bytes) -> Optional[int]:
    """The u64 a page repeats, if it is one (zero pages included)."""
    head = page[:8]
    if head * (PAGE // 8) == page:
        return struct.unpack("<Q", head)[0]
    return None


def encode_block(
    block: bytes,
    *,
    extended_every: int = 0,
    compressor: Callable[[bytes], bytes] = xpress_compress,
) -> Tuple[bytes, List[str]]:
    """A page-record stream for one 1 MiB block, and the kind of each page.

    Runs of one fill pattern become a multi-fill record, single ones a fill record;
    other pages are XPRESS-compressed when that is shorter, raw otherwise. With
    ``extended_every = n``, every n-th data page is written as two extended records
    (a raw half and an XPRESS half), the 0xFFFFFFFC form.
    """
    assert len(block) == M.BLOCK_SIZE
    out = bytearray()
    kinds: List[str] = []
    page_number = 0
    data_pages = 0
    while page_number < M.PAGES_PER_BLOCK:
        page = block[page_number * PAGE : (page_number + 1) * PAGE]
        pattern = fill_pattern(page)
        if pattern is not None:
            run = 1
            while page_number + run < M.PAGES_PER_BLOCK:
                following = block[(page_number + run) * PAGE : (page_number + run + 1) * PAGE]
                if fill_pattern(following) != pattern:
                    break
                run += 1
            if run == 1:
                out += struct.pack("<IQ", M.TAG_FILL, pattern)
            else:
                out += struct.pack("<IQI", M.TAG_MULTI_FILL, pattern, run)
            kinds.extend(["fill"] * run)
            page_number += run
            continue
        data_pages += 1
        if extended_every and data_pages % extended_every == 0:
            half = PAGE // 2
            out += struct.pack("<III", M.TAG_EXTENDED, half, half) + page[:half]
            packed = compressor(page[half:])
            if len(packed) < half:
                out += struct.pack("<III", M.TAG_EXTENDED, half, len(packed)) + packed
                kinds.append("raw")  # the reader counts a page by its first record
            else:
                out += struct.pack("<III", M.TAG_EXTENDED, half, half) + page[half:]
                kinds.append("raw")
        else:
            packed = compressor(page)
            if len(packed) < PAGE:
                out += struct.pack("<I", len(packed)) + packed
                kinds.append("xpress")
            else:
                out += struct.pack("<I", PAGE) + page
                kinds.append("raw")
        page_number += 1
    out += struct.pack("<I", M.TAG_END)
    return bytes(out), kinds


class SavedStateWriter:
    """Builds a saved-state file from RAM ranges and a partition_state blob."""

    def __init__(
        self,
        ranges: Sequence[Tuple[int, bytes]],
        partition_state: Optional[bytes],
        *,
        layout: str = "openvmm",
        compression: str = "raw",
        extended_every: int = 0,
        flavour: str = "openvmm",
        vm_version: int = 0x0A00,
        memory_block_size: int = 48,
        drop_blocks: Sequence[int] = (),
        block_values: Optional[Dict[int, bytes]] = None,
        compressor: Callable[[bytes], bytes] = xpress_compress,
        extra_keys: Optional[Dict[str, object]] = None,
        **container_options: object,
    ) -> None:
        self.ranges = ranges
        self.partition_state = partition_state
        self.layout = layout
        self.compression = compression
        self.extended_every = extended_every
        self.flavour = flavour
        self.vm_version = vm_version
        self.memory_block_size = memory_block_size
        self.drop_blocks = set(drop_blocks)
        # Replacement values for chosen RamBlocks (to plant broken streams).
        self.block_values = block_values or {}
        self.compressor = compressor
        self.extra_keys = extra_keys or {}
        self.container_options = container_options

    def _mbp_image(self) -> Tuple[bytearray, List[WrittenRange]]:
        """Lay the ranges out in MBP space: the concatenated saved RAM."""
        image = bytearray()
        written = []
        for gpa, data in self.ranges:
            assert gpa % PAGE == 0 and len(data) % PAGE == 0 and data, "page-aligned ranges"
            if self.layout == "openvmm" and len(image) % M.BLOCK_SIZE:
                image.extend(bytes(M.BLOCK_SIZE - len(image) % M.BLOCK_SIZE))
            written.append(WrittenRange(gpa, len(data) // PAGE, len(image) // PAGE))
            image.extend(data)
        if len(image) % M.BLOCK_SIZE:
            image.extend(bytes(M.BLOCK_SIZE - len(image) % M.BLOCK_SIZE))
        return image, written

    def build(self) -> Tuple[bytes, SavedStateInfo]:
        container = ContainerWriter(self.flavour, **self.container_options)  # type: ignore[arg-type]
        info = SavedStateInfo(container=container)
        container.set("/savedstate/VmVersion", self.vm_version)
        container.set("/configuration/properties/version", self.vm_version)
        if self.partition_state is not None:
            container.set(
                "/savedstate/savedVM/partition_state", self.partition_state, file_object=True
            )
        image, written = self._mbp_image()
        info.ranges = written
        for number, item in enumerate(written):
            record = MM.RAM_MEMORY_BLOCK.pack(
                saved_state_version=3,
                flags=0,
                page_count=item.pages,
                mbp_index_start=item.mbp_start,
                gpa_index_start=item.gpa // PAGE,
                virtual_node=0,
                ksr_block_id=0,
            )[: self.memory_block_size]
            container.set(f"/savedstate/RamMemoryBlock{number}", record, file_object=False)
        in_range = set()
        for item in written:
            in_range.update(range(item.mbp_start, item.mbp_start + item.pages))
        for number in range(len(image) // M.BLOCK_SIZE):
            block = bytes(image[number * M.BLOCK_SIZE : (number + 1) * M.BLOCK_SIZE])
            kinds = ["raw"] * M.PAGES_PER_BLOCK
            value = block
            if self.compression == "xpress":
                stream, stream_kinds = encode_block(
                    block, extended_every=self.extended_every, compressor=self.compressor
                )
                if len(stream) < M.BLOCK_SIZE:
                    value, kinds = stream, stream_kinds
            info.blocks[number] = "raw" if len(value) == M.BLOCK_SIZE else "stream"
            for page, kind in enumerate(kinds):
                mbp = number * M.PAGES_PER_BLOCK + page
                if mbp in in_range:
                    info.page_kinds[mbp] = kind
            if number in self.drop_blocks:
                continue
            value = self.block_values.get(number, value)
            container.set(f"/savedstate/RamBlock{number}", value, file_object=True)
        for path, value in self.extra_keys.items():
            container.set(path, value)  # type: ignore[arg-type]
        return container.build(), info
