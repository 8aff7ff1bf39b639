"""Seed corpora for the fuzz targets, built from the test writers and the real samples.

Four families (``CORPORA``):

* ``file``: complete ``.vmrs``/``.vmcx`` files: synthetic guests in every writer flavour
  (openvmm / hyperv containers, raw / XPRESS / packed / extended-record memory, 40-byte
  RamMemoryBlocks, 1-4 VPs, VTL 0 and 0+1, long / PAE / 32-bit paging, chained object
  tables, keys split across key tables, pending replay-log entries, missing RamBlocks)
  and the real samples;
* ``stream``: RamBlock page-record streams taken from those files, plus XPRESS pages;
* ``partition``: partition_state blobs (x64 and ARM64 vendor, several VPs and VTLs);
* ``legacy``: legacy ``.bin`` files from the test writer and three blocks of the real
  Hyper-V ``.bin`` sample (whose distinct page streams also join ``stream``).

Every seed carries "hot" byte ranges, the metadata the mutator should aim at (headers,
object and key tables, the replay log, RamMemoryBlock values, chunk headers), so a
mutation does not mostly land in guest RAM. Seeds are built in a second or two.
"""

from __future__ import annotations

import io
import os
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

from fuzz.targets import stream_input, xpress_input
from tests.support.container_writer import ReplayEntry
from tests.support.guests import windows_guest
from tests.support.legacy_writer import Entry, build_bin, memory_entries
from tests.support.partition_writer import (
    PartitionDescription,
    VpDescription,
    VtlDescription,
    build_partition_state,
    random_registers,
    simple_partition,
)
from tests.support.savedstate_writer import SavedStateWriter, encode_block
from tests.support.xpress_compress import compress as xpress_compress
from volatility3_vmrs.savedstate import legacy as L
from volatility3_vmrs.savedstate import memory as M
from volatility3_vmrs.savedstate import structs as S
from volatility3_vmrs.savedstate.diagnostics import Diagnostics
from volatility3_vmrs.savedstate.errors import VmrsError
from volatility3_vmrs.savedstate.processors import CHUNK_HEADER, HvProcessorVendor
from volatility3_vmrs.savedstate.source import ReadOnlySource
from volatility3_vmrs.savedstate.storage import HyperVStorage
from volatility3_vmrs.savedstate.types import PAGING_MODE

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPORA = ("file", "stream", "partition", "legacy")
SAMPLE_NAMES = ("dissect-test.VMRS", "dissect-test.vmcx", "openvmm-88D07DD7.VMRS")
LEGACY_SAMPLE = "vmsavedstatedump-rs-test_file.bin"


@dataclass
class Seed:
    name: str
    data: bytes
    hot: List[Tuple[int, int]] = field(default_factory=list)  # [start, end) byte ranges


def samples_dir() -> Path:
    return Path(os.environ.get("VMRS_SAMPLES", REPO_ROOT / "tests" / "data" / "samples"))


# --- hot ranges ----------------------------------------------------------------------------
def container_hot_ranges(data: bytes) -> List[Tuple[int, int]]:
    """Metadata of a container: headers, replay log, object and key tables, small values."""
    hot = [(0, S.FILE_HEADER.size), (0x1000, 0x1000 + S.FILE_HEADER.size)]
    try:
        storage = HyperVStorage(io.BytesIO(data))
    except VmrsError:
        return [*hot, (0x2000, min(len(data), 0x3000))]
    log = storage.header
    if log.replay_log_offset:
        hot.append((log.replay_log_offset, log.replay_log_offset + log.replay_log_header_size))
    hot.append((0x2000, 0x2000 + 0x400))
    for entry in storage.object_entries:
        if entry.type == S.OBJECT_TYPE_KEY_TABLE:
            hot.append((entry.file_offset, entry.file_offset + entry.size))
        elif entry.type == S.OBJECT_TYPE_OBJECT_TABLE:
            hot.append((entry.file_offset, entry.file_offset + 0x200))
    for key in storage.walk():
        if key.name.startswith("RamMemoryBlock") or key.name == "partition_state":
            hot.append((key.value_offset, key.value_offset + min(key.size, 0x400)))
        elif key.name.startswith("RamBlock") and key.size < M.BLOCK_SIZE:
            hot.append((key.value_offset, key.value_offset + min(key.size, 0x200)))
    return [(start, min(end, len(data))) for start, end in hot if start < len(data)]


def partition_hot_ranges(blob: bytes) -> List[Tuple[int, int]]:
    """The envelope and every chunk header of a partition_state blob."""
    hot = [(0, 48)]
    position = 40
    while position + CHUNK_HEADER.size <= len(blob):
        hot.append((position, position + CHUNK_HEADER.size + 8))
        (length,) = struct.unpack_from("<I", blob, position + 4)
        position += CHUNK_HEADER.size + length
    return hot


# --- files ---------------------------------------------------------------------------------
def _small_ram(seed: int, pages: int = 64) -> bytes:
    """Guest RAM with zero, fill, text-like and random pages (all record kinds)."""
    rng = random.Random(seed)
    out = bytearray()
    for page in range(pages):
        kind = page % 4
        if kind == 0:
            out += bytes(M.PAGE_SIZE)
        elif kind == 1:
            out += struct.pack("<Q", rng.getrandbits(64)) * (M.PAGE_SIZE // 8)
        elif kind == 2:
            words = [b"kernel", b"ntoskrnl", b"\x00\x00", b"MZ", b"PAGE"]
            text = b"".join(rng.choice(words) for _ in range(1500))
            out += text[: M.PAGE_SIZE].ljust(M.PAGE_SIZE, b"\0")
        else:
            out += rng.randbytes(M.PAGE_SIZE)
    return bytes(out)


def _file_variants() -> List[Tuple[str, bytes]]:
    variants: List[Tuple[str, bytes]] = []
    modes = {
        "long": PAGING_MODE.Paging_Long,
        "pae": PAGING_MODE.Paging_Pae,
        "32bit": PAGING_MODE.Paging_32Bit,
    }
    for mode_name, mode in modes.items():
        guest = windows_guest(mode, compression="xpress", vp_count=2)
        variants.append((f"guest-{mode_name}-openvmm-xpress", guest.data))
    guest_options: Dict[str, Dict[str, object]] = {
        "guest-long-hyperv-xpress-vtl01-4vp": dict(
            compression="xpress", flavour="hyperv", vp_count=4, vtls=(0, 1)
        ),
        "guest-long-packed-extended": dict(
            compression="xpress", layout="packed", extended_every=3, vp_count=1
        ),
        "guest-long-mbp40-vm40": dict(
            compression="xpress", memory_block_size=40, vm_version=0x0400
        ),
        "guest-long-chained-split": dict(
            compression="xpress", object_slots=4, table_capacity=0x180, flavour="hyperv"
        ),
        "guest-long-replay-pending": dict(
            compression="xpress",
            log_pages=2,
            replay_entries=[ReplayEntry(0x2000 + 0x30, b"\0" * 18)],
        ),
        "guest-long-missing-block": dict(compression="xpress", drop_blocks=(1,)),
        "guest-pcid": dict(compression="xpress", pcid=0x123),
    }
    for name, options in guest_options.items():
        variants.append((name, windows_guest(**options).data))  # type: ignore[arg-type]
    # Small raw-memory files (a raw RamBlock is exactly 1 MiB).
    _, blob = simple_partition(1)
    ram = _small_ram(7, 256)
    variants.append(("small-raw", SavedStateWriter([(0, ram)], blob).build()[0]))
    variants.append(
        (
            "small-two-ranges-packed-raw",
            SavedStateWriter(
                [(0, ram[:0x80000]), (0x1_0000_0000, ram[0x80000:])], blob, layout="packed"
            ).build()[0],
        )
    )
    arm_desc = PartitionDescription(
        vps=[VpDescription(0, {0: VtlDescription(random_registers(random.Random(3)))})],
        vendor=HvProcessorVendor.ARM,
    )
    arm_blob = build_partition_state(arm_desc)
    variants.append(
        (
            "small-arm-xpress",
            SavedStateWriter([(0, ram[:0x40000])], arm_blob, compression="xpress").build()[0],
        )
    )
    variants.append(
        ("config-only", SavedStateWriter([(0, ram[:0x1000])], None, flavour="hyperv").build()[0])
    )
    return variants


def _sample_variants() -> List[Tuple[str, bytes]]:
    directory = samples_dir()
    found = []
    for name in SAMPLE_NAMES:
        path = directory / name
        if path.is_file():
            found.append((f"sample-{name}", path.read_bytes()))
    return found


def build_file_seeds() -> List[Seed]:
    return [
        Seed(name, data, container_hot_ranges(data))
        for name, data in _file_variants() + _sample_variants()
    ]


# --- page-record streams -------------------------------------------------------------------
def build_stream_seeds(files: List[Seed]) -> List[Seed]:
    seeds: List[Seed] = []
    seen = set()
    for seed in files:
        try:
            storage = HyperVStorage(io.BytesIO(seed.data))
        except VmrsError:
            continue
        for key in storage.walk():
            if not key.name.startswith("RamBlock") or not 0 < key.size < M.BLOCK_SIZE:
                continue
            value = key.read()
            if value in seen:
                continue
            seen.add(value)
            seeds.append(
                Seed(f"{seed.name}-{key.name}", stream_input(value), [(0, min(len(value), 256))])
            )
    ram = _small_ram(11, M.PAGES_PER_BLOCK)
    for every in (0, 2):
        stream, _ = encode_block(ram, extended_every=every)
        seeds.append(Seed(f"encoded-extended{every}", stream_input(stream), [(0, 512)]))
    all_fill = struct.pack("<IQI", M.TAG_MULTI_FILL, 0, M.PAGES_PER_BLOCK) + struct.pack(
        "<I", M.TAG_END
    )
    seeds.append(Seed("multi-fill", stream_input(all_fill), [(0, len(all_fill) + 1)]))
    for name, value in _legacy_sample_streams():  # the only Microsoft-written page data
        if value not in seen:
            seen.add(value)
            seeds.append(Seed(name, stream_input(value), [(0, min(len(value), 256))]))
    for number in range(4):
        page = ram[(4 * number + 2) * M.PAGE_SIZE : (4 * number + 3) * M.PAGE_SIZE]
        packed = xpress_compress(page)
        seeds.append(Seed(f"xpress-page{number}", xpress_input(packed, M.PAGE_SIZE), [(0, 64)]))
    return seeds


# --- partition_state blobs -----------------------------------------------------------------
def build_partition_seeds(files: List[Seed]) -> List[Seed]:
    blobs: List[Tuple[str, bytes]] = []
    for vp_count, vtls in ((1, (0,)), (2, (0, 1)), (4, (0,))):
        _, blob = simple_partition(vp_count, vtls=vtls, seed=vp_count)
        blobs.append((f"simple-{vp_count}vp-vtl{''.join(map(str, vtls))}", blob))
    arm = PartitionDescription(
        vps=[VpDescription(0, {0: VtlDescription(random_registers(random.Random(5)))})],
        vendor=HvProcessorVendor.ARM,
    )
    blobs.append(("arm", build_partition_state(arm)))
    odd = PartitionDescription(
        vps=[
            VpDescription(
                0,
                {
                    0: VtlDescription(random_registers(random.Random(6)), marker=False),
                    1: VtlDescription(random_registers(random.Random(7)), truncate={"gp": 40}),
                },
                runnable_vtl=1,
                control_page_position="after",
            )
        ],
        vp_indices=False,
        epilog=False,
        extra_chunks=[(0x2FFFF000, b"unknown chunk")],
    )
    blobs.append(("odd-order-truncated-noepilog", build_partition_state(odd)))
    for seed in files:
        try:
            storage = HyperVStorage(io.BytesIO(seed.data))
            value = storage.get("/savedstate/savedVM/partition_state").read()
        except VmrsError:
            continue
        blobs.append((f"{seed.name}-partition_state", value))
    unique: Dict[bytes, str] = {}
    for name, blob in blobs:
        unique.setdefault(blob, name)
    return [Seed(name, blob, partition_hot_ranges(blob)) for blob, name in unique.items()]


# --- legacy .bin files ---------------------------------------------------------------------
def _legacy_sample_streams() -> List[Tuple[str, bytes]]:
    """(name, page stream) of the real ``.bin`` sample's blocks, in block order."""
    path = samples_dir() / LEGACY_SAMPLE
    if not path.is_file():
        return []
    data = path.read_bytes()
    parsed = L.parse_legacy_bin(ReadOnlySource(io.BytesIO(data)), Diagnostics())
    return [
        (f"sample-bin-{block.number}", data[block.data_offset : block.data_end])
        for block in parsed.blocks
    ]


def legacy_hot_ranges(data: bytes) -> List[Tuple[int, int]]:
    """The header, the index slots in use, the string bytes and each stream's head."""
    try:
        parsed = L.parse_legacy_bin(ReadOnlySource(io.BytesIO(data)), Diagnostics())
    except VmrsError:
        return [(0, L.LEGACY_HEADER.size)]
    header = parsed.header
    used = max((block.slot for block in parsed.blocks), default=0) + 1
    hot = [
        (0, L.LEGACY_HEADER.size),
        (header.index_offset, header.index_offset + used * L.LEGACY_INDEX_ENTRY.size),
        (header.string_table_offset, header.strings_end),
    ]
    hot.extend((block.data_offset, block.data_offset + 64) for block in parsed.blocks)
    return hot


def build_legacy_seeds() -> List[Seed]:
    """Written .bin files (XPRESS, fill and raw blocks, shuffled index) and a real subset."""
    three_blocks = _small_ram(22, 40) + bytes(2 * M.BLOCK_SIZE)
    shuffled = memory_entries(three_blocks, order=[2, 0, 1], raw_blocks=[1])
    variants = [
        ("bin-small", build_bin(memory_entries(_small_ram(21, 32)), capacity=8)),
        ("bin-shuffled-raw", build_bin(shuffled, capacity=4)),
    ]
    streams = dict(_legacy_sample_streams())
    if streams:
        # Blocks 0 (the BIOS area, RSDP), 1, 2 (fills only) and 251 (ACPI tables).
        chosen = [0, 1, 2, 251]
        entries = [Entry(b"RamBlock/%d/\0" % n, streams[f"sample-bin-{n}"]) for n in chosen]
        variants.append(("sample-bin-subset", build_bin(entries, capacity=16)))
    return [Seed(name, data, legacy_hot_ranges(data)) for name, data in variants]


def build_all() -> Dict[str, List[Seed]]:
    """Seeds for every corpus family."""
    files = build_file_seeds()
    return {
        "file": files,
        "stream": build_stream_seeds(files),
        "partition": build_partition_seeds(files),
        "legacy": build_legacy_seeds(),
    }


def write_corpus(seeds: List[Seed], directory: Path) -> None:
    """Write seeds as files (atheris / libFuzzer corpus directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (directory / seed.name).write_bytes(seed.data)
