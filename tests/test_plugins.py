"""The pack's plugins run by the installed, stock ``vol`` against generated saved states.

Every fixture is written by the test writers, so the expected output comes from what the
writers were given (registers, ranges, page kinds, page tables, PE files), not from the
reader under test.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import random
import struct
from pathlib import Path
from typing import Dict, List, Tuple

import pefile
import pip._vendor.distlib
import pytest

from tests.support.container_writer import ReplayEntry
from tests.support.guests import RAM_HIGH_GPA, RAM_LOW, WINDOWS_10_19045, windows_guest
from tests.support.pagetables import MIB2, PageTableBuilder
from tests.support.partition_writer import (
    PartitionDescription,
    VpDescription,
    VtlDescription,
    build_partition_state,
    random_registers,
)
from tests.support.plugin_runner import run_vol
from tests.support.savedstate_writer import SavedStateWriter
from tests.support.schemas import check_rows
from volatility3_vmrs.savedstate.memory import PageReader
from volatility3_vmrs.savedstate.provider import SavedStateDump
from volatility3_vmrs.savedstate.types import (
    PAGING_MODE,
    REGISTER_ID_X64,
    REGISTER_ID_X86,
    Segment,
)

PLUGINS = ("info", "registers", "memmap", "keys", "pescan", "vtop", "config")
DISTLIB = Path(os.path.dirname(pip._vendor.distlib.__file__))
KERNEL = 0xFFFFF80000000000
MASK64 = (1 << 64) - 1


# --- shared fixtures ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("volcache")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vmrs")

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    return write


@pytest.fixture(scope="module")
def long_guest():
    return windows_guest(PAGING_MODE.Paging_Long, vtls=(0, 1), pcid=0x5, compression="xpress")


@pytest.fixture(scope="module")
def long_file(long_guest, files):
    return files("long.vmrs", long_guest.data)


@pytest.fixture(scope="module")
def guests_by_mode(files):
    made = {}
    for mode in (PAGING_MODE.Paging_Long, PAGING_MODE.Paging_Pae, PAGING_MODE.Paging_32Bit):
        guest = windows_guest(mode, seed=int(mode))
        made[mode] = (guest, files(f"{mode.name}.vmrs", guest.data))
    return made


# --- registers: the truth from the writer's dicts ----------------------------------------
# Registers the reader decodes beyond the legacy enums (vmrs.registers lists them after).
EXTRA_REGISTERS = [f"FpMmx{i}" for i in range(8)] + ["Xcr0", "KernelGsBase"]


def expected_extra(regs: dict, name: str) -> int:
    if name.startswith("FpMmx"):
        return regs[f"fp_mmx{name[5:]}"]
    if name == "Xcr0":
        return regs["xcr0"]
    assert name == "KernelGsBase"
    return regs["virtual_msrs"][1]


def expected_legacy(regs: dict, member) -> int:
    """What GetRegisterValue returns for a legacy id, from the dict the writer got."""
    if isinstance(member, str):
        return expected_extra(regs, member)
    name = member.name.split("_Register", 1)[1]
    x86 = isinstance(member, REGISTER_ID_X86)
    gp32 = {
        "Eax": "rax", "Ecx": "rcx", "Edx": "rdx", "Ebx": "rbx", "Esp": "rsp", "Ebp": "rbp",
        "Esi": "rsi", "Edi": "rdi", "Eip": "rip", "EFlags": "rflags",
    }  # fmt: skip
    if x86 and name in gp32:
        return regs[gp32[name]] & 0xFFFFFFFF
    if name.lower() in regs and isinstance(regs[name.lower()], int):
        return regs[name.lower()]
    for half, shift in (("Low", 0), ("High", 64)):
        if name.startswith(half):
            rest = name[len(half) :]
            key = {"XmmControlStatus": "xmm_control_status", "FpControlStatus": "fp_control_status"}
            return regs.get(key.get(rest, rest.lower()), 0) >> shift & MASK64
    if name.startswith("Base") and name[4:].lower() in ("gs", "fs", "idtr", "gdtr"):
        return regs[name[4:].lower()].base
    if name.startswith("Limit"):
        return regs[name[5:].lower()].limit
    if name.startswith("Seg") or name in ("Tr", "Ldtr"):
        segment = name[3:] if name.startswith("Seg") else name
        return regs[segment.lower()].selector
    if name in ("Cr2", "Cr8", "Dr0", "Dr1", "Dr2", "Dr3", "Dr6", "Dr7"):
        return regs.get(name.lower(), 0)
    raise AssertionError(f"no expectation for {member.name}")


def segment_of(regs: dict, name: str):
    table = {"SegCs": "cs", "SegDs": "ds", "SegEs": "es", "SegFs": "fs", "SegGs": "gs",
             "SegSs": "ss", "Tr": "tr", "Ldtr": "ldtr"}  # fmt: skip
    return regs[table[name]] if name in table else None


def legacy_members(enum_type) -> list:
    return [m for m in enum_type if not m.name.endswith("Count")]


def listed_names(enum_type) -> list:
    """What vmrs.registers lists per VP and VTL: the legacy enum, then the extras."""
    return [m.name.split("_Register", 1)[1] for m in legacy_members(enum_type)] + EXTRA_REGISTERS


def check_register_rows(rows, guest, enum_type, *, as_text: bool) -> int:
    """Every row equals the fixture's value; returns how many rows were checked."""

    def number(value):
        if as_text:
            assert value.startswith("0x"), value
            return int(value, 16)
        return value

    by_name = {m.name.split("_Register", 1)[1]: m for m in legacy_members(enum_type)}
    by_name.update({name: name for name in EXTRA_REGISTERS})
    for row in rows:
        regs = guest.registers[int(row["VP"])][int(row["VTL"])]
        member = by_name[row["Register"]]
        assert number(row["Value"]) == expected_legacy(regs, member), row
        segment = segment_of(regs, row["Register"])
        if segment is None:
            assert row["Selector"] in ((None,) if not as_text else ("N/A",)), row
            continue
        assert number(row["Selector"]) == segment.selector
        assert number(row["Base"]) == segment.base
        assert number(row["Limit"]) == segment.limit
        assert number(row["Attributes"]) == segment.attributes
        assert f"DPL={segment.attributes >> 5 & 3}" in row["Decoded"]
    return len(rows)


def test_registers_json_equals_the_written_registers(long_guest, long_file, cache):
    rows = check_rows("registers", run_vol(cache, long_file, "vmrs.registers").json_rows())
    names = listed_names(REGISTER_ID_X64)
    assert len(rows) == 2 * 2 * len(names)  # 2 VPs x VTLs 0 and 1
    assert {(r["VP"], r["VTL"]) for r in rows} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert check_register_rows(rows, long_guest, REGISTER_ID_X64, as_text=False) == len(rows)
    # Every member of the enum for every VP/VTL, in enum order, then the extras.
    assert [r["Register"] for r in rows if r["VP"] == 1 and r["VTL"] == 1] == names
    gs_base = [r for r in rows if r["Register"] == "KernelGsBase"]
    assert len(gs_base) == 4 and all(
        r["Value"] == expected_extra(long_guest.registers[r["VP"]][r["VTL"]], "KernelGsBase")
        for r in gs_base
    )
    cr3 = next(r for r in rows if r["Register"] == "Cr3" and r["VP"] == 0 and r["VTL"] == 0)
    assert cr3["Value"] == long_guest.cr3  # PCID bits kept: the register, not the DTB


def test_registers_csv_equals_the_written_registers(long_guest, long_file, cache):
    rows = run_vol(cache, long_file, "vmrs.registers", renderer="csv").csv_rows()
    assert list(rows[0]) == [
        "TreeDepth", "VP", "VTL", "Register", "Value", "Selector", "Base", "Limit",
        "Attributes", "Decoded",
    ]  # fmt: skip
    assert len(rows) == 4 * len(listed_names(REGISTER_ID_X64))
    check_register_rows(rows, long_guest, REGISTER_ID_X64, as_text=True)


def test_registers_filters_select_exactly(long_guest, long_file, cache):
    rows = run_vol(
        cache, long_file, "vmrs.registers", "--vp", "1", "--vtl", "1",
        "--register", "rip", "CR3", "cs", "xmm0", "X64_RegisterEfer", "kernelgsbase",
    ).json_rows()  # fmt: skip
    assert sorted((r["VP"], r["VTL"], r["Register"]) for r in rows) == sorted(
        (1, 1, name)
        for name in ("Rip", "Cr3", "SegCs", "LowXmm0", "HighXmm0", "Efer", "KernelGsBase")
    )
    check_register_rows(rows, long_guest, REGISTER_ID_X64, as_text=False)
    rows = run_vol(
        cache, long_file, "vmrs.registers", "--vtl", "0", "--register", "rsp"
    ).json_rows()
    assert [(r["VP"], r["VTL"], r["Register"]) for r in rows] == [(0, 0, "Rsp"), (1, 0, "Rsp")]
    assert [r["Value"] for r in rows] == [long_guest.registers[i][0]["rsp"] for i in (0, 1)]


def test_registers_of_a_32_bit_guest_use_the_x86_ids(guests_by_mode, cache):
    guest, path = guests_by_mode[PAGING_MODE.Paging_32Bit]
    rows = run_vol(cache, path, "vmrs.registers", "--vp", "0").json_rows()
    assert [r["Register"] for r in rows] == listed_names(REGISTER_ID_X86)
    check_register_rows(rows, guest, REGISTER_ID_X86, as_text=False)
    eip = next(r for r in rows if r["Register"] == "Eip")
    assert eip["Value"] == guest.registers[0][0]["rip"] & 0xFFFFFFFF


# --- info ----------------------------------------------------------------------------------
def info_rows(result) -> Dict[str, dict]:
    """vmrs.info rows by field, checked against the schema."""
    return {row["Field"]: row for row in check_rows("info", result.json_rows())}


def info_fields(result) -> Dict[str, str]:
    return {field: row["Value"] for field, row in info_rows(result).items()}


def test_info_reports_the_fixture(guests_by_mode, cache):
    for mode, (guest, path) in guests_by_mode.items():
        rows = info_rows(run_vol(cache, path, "vmrs.info"))
        fields = {field: row["Value"] for field, row in rows.items()}
        numbers = {field: row["Number"] for field, row in rows.items()}
        assert numbers["File size"] == path.stat().st_size
        assert numbers["Guest RAM"] == RAM_LOW + 0x100000
        assert numbers["Memory ranges"] == 2 and numbers["Virtual processors"] == 2
        assert numbers["Checksum failures"] == 0
        assert numbers["Range 0"] == guest.info.ranges[0].pages * 4096
        assert numbers["Guest OS"] == WINDOWS_10_19045
        assert (numbers["DTB published"], rows["DTB published"]["Flag"]) == (guest.dtb, True)
        assert rows["RAM pages verified"]["Flag"] is False
        assert fields["Memory ranges"] == str(len(guest.info.ranges)) == "2"
        for number, written in enumerate(guest.info.ranges):
            start, end = written.gpa, written.gpa + written.pages * 4096 - 1
            assert fields[f"Range {number}"] == (f"GPA {start:#x}-{end:#x} ({written.pages} pages)")
        assert fields["Guest RAM"].startswith(f"{RAM_LOW + 0x100000} bytes")
        assert fields["Virtual processors"] == "2"
        arch = "Arch_x64" if mode == PAGING_MODE.Paging_Long else "Arch_x86"
        assert fields["VP 0"].startswith(f"{arch}, {mode.name}, kernel mode")
        assert fields["VP 1"].startswith(f"{arch}, {mode.name}, user mode")
        assert fields["Guest OS"] == (
            f"Windows NT 10.0 build 19045 (guest OS ID {WINDOWS_10_19045:#018x})"
        )
        assert fields["Replay log"] == "clean"
        assert fields["Checksum failures"] == "0"
        assert fields["DTB published"] == f"{guest.dtb:#x} from CR3 of VP 0 (VTL 0)"


def pending_replay_saved_state() -> Tuple[bytes, dict]:
    """A Hyper-V-flavour saved state whose pending replay log changes one key's value."""
    ranges = [(0, bytes(range(256)) * 16 * 64)]
    _, blob = _small_partition()

    def make(value, entries=()):
        return SavedStateWriter(
            ranges, blob, flavour="hyperv", extra_keys={"/savedstate/counter": value},
            replay_entries=entries,
        ).build()  # fmt: skip

    new, _ = make(2)
    old, info = make(1)
    entries = []
    for table in info.container.layout["table_offsets"]:
        if new[table : table + 0x1000] != old[table : table + 0x1000]:
            entries.append(ReplayEntry(table, new[table : table + 0x1000], True))
    assert entries
    data, _ = make(1, entries)
    return data, {"entries": len(entries)}


def _small_partition(vp_count: int = 1):
    rng = random.Random(7)
    vps = [VpDescription(i, {0: VtlDescription(random_registers(rng))}) for i in range(vp_count)]
    desc = PartitionDescription(vps=vps, os_id=WINDOWS_10_19045)
    return desc, build_partition_state(desc)


def test_info_says_a_pending_replay_log_was_applied_in_memory(files, cache):
    data, facts = pending_replay_saved_state()
    path = files("pending.vmrs", data)
    fields = info_fields(run_vol(cache, path, "vmrs.info"))
    assert fields["Replay log"] == f"applied in memory ({facts['entries']} entries)"
    rows = run_vol(cache, path, "vmrs.keys", "--path", "/savedstate/counter").json_rows()
    assert [(r["Path"], r["Value"]) for r in rows] == [("/savedstate/counter", "0x2 (2)")]
    assert path.read_bytes() == data  # the evidence file is untouched


# --- memmap --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {"compression": "xpress"},
        {"compression": "xpress", "layout": "packed", "extended_every": 3},
        {"compression": "raw"},
    ],
    ids=["xpress", "packed-extended", "raw"],
)
def test_memmap_counts_equal_the_writer(options, files, cache):
    guest = windows_guest(PAGING_MODE.Paging_Long, seed=3, **options)
    path = files(f"memmap-{len(options)}-{options.get('compression')}.vmrs", guest.data)
    rows = check_rows("memmap", run_vol(cache, path, "vmrs.memmap").json_rows())
    assert len(rows) == len(guest.info.ranges)
    for number, (row, written) in enumerate(zip(rows, guest.info.ranges)):
        counts = guest.info.kind_counts(number)
        assert row["Range"] == number
        assert row["GPA start"] == written.gpa
        assert row["GPA end"] == written.gpa + written.pages * 4096 - 1
        assert row["Pages"] == written.pages
        assert row["Saved RAM offset"] == written.mbp_start * 4096
        first, last = written.mbp_start // 256, (written.mbp_start + written.pages - 1) // 256
        assert row["RamBlocks"] == (str(first) if first == last else f"{first}-{last}")
        assert (row["First RamBlock"], row["Last RamBlock"], row["Absent RamBlocks"]) == (
            first, last, 0,
        )  # fmt: skip
        assert (row["Raw"], row["Fill"], row["XPRESS"]) == (
            counts["raw"], counts["fill"], counts["xpress"],
        )  # fmt: skip
        assert row["Missing"] == row["Bad"] == 0
        assert row["Raw"] + row["Fill"] + row["XPRESS"] == written.pages
    if options["compression"] == "xpress":
        assert sum(r["XPRESS"] for r in rows) > 0 and sum(r["Fill"] for r in rows) > 0


def test_memmap_missing_blocks_and_quick(files, cache):
    guest = windows_guest(PAGING_MODE.Paging_Long, seed=4, drop_blocks=[2])
    path = files("memmap-dropped.vmrs", guest.data)
    rows = check_rows("memmap", run_vol(cache, path, "vmrs.memmap").json_rows())
    assert rows[0]["RamBlocks"] == "0-3 (1 absent: 2)" and rows[0]["Absent RamBlocks"] == 1
    assert rows[0]["Missing"] == 256 and rows[0]["Raw"] == 1024 - 256
    quick = check_rows("memmap", run_vol(cache, path, "vmrs.memmap", "--quick").json_rows())
    assert [r["Raw"] for r in quick] == [None, None]
    assert [r["Pages"] for r in quick] == [r["Pages"] for r in rows]


def test_memmap_counts_lazily_with_progress(long_guest, files):
    memmap = importlib.import_module("volatility3.plugins.vmrs.memmap")
    path = files("lazy.vmrs", long_guest.data)
    with SavedStateDump(path) as dump:
        memory: PageReader = dump.memory
        compressed = [memory.block(n) for n, b in memory.map.blocks.items() if not b.is_raw]
        assert compressed and all(b._index is None for b in compressed)
        calls: List[Tuple[float, str]] = []
        rows = memmap.Memmap.rows(memory, True, lambda p, t: calls.append((p, t)))
        assert all(b._index is None for b in compressed)  # nothing until rows are pulled
        first = next(rows)
        first_range = memory.ranges[0]
        for block in compressed:
            in_first = first_range.first_block <= block.number <= first_range.last_block
            assert (block._index is not None) == in_first
        assert first[0] == 0 and calls and all(0 <= p <= 100 for p, _ in calls)
        list(rows)
        assert calls[-1][0] == 100.0
        assert [p for p, _ in calls] == sorted(p for p, _ in calls)


# --- keys ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys_file(files):
    rng = random.Random(11)
    payload = rng.randbytes(20000)
    _, blob = _small_partition(2)
    data, _ = SavedStateWriter(
        [(0, bytes(0x200000))],
        blob,
        compression="xpress",
        extra_keys={"/test/payload": payload, "/test/name": "hello vmrs", "/test/n": 42},
    ).build()
    return files("keys.vmrs", data), payload, blob


def test_keys_lists_the_tree(keys_file, cache):
    path, payload, blob = keys_file
    rows = check_rows("keys", run_vol(cache, path, "vmrs.keys").json_rows())
    by_path = {r["Path"]: r for r in rows}
    assert by_path["/savedstate/savedVM/partition_state"]["Size"] == len(blob)
    assert by_path["/savedstate/savedVM/partition_state"]["File object"] is True
    assert by_path["/savedstate/RamMemoryBlock0"]["File object"] is False
    assert by_path["/test/n"]["Value"] == "0x2a (42)" and by_path["/test/n"]["Integer"] == 42
    assert by_path["/test/name"]["Integer"] is None
    assert by_path["/test/name"]["Value"] == repr("hello vmrs")
    assert by_path["/test/name"]["Type"] == "String"
    assert by_path["/test/payload"]["Value"] == payload[:16].hex(" ") + " ..."
    assert by_path["/test"]["Type"] == "Node"
    assert all(r["File output"] is None for r in rows)
    rows = run_vol(cache, path, "vmrs.keys", "--path", "/savedstate/Ram").json_rows()
    assert rows and all(r["Path"].startswith("/savedstate/Ram") for r in rows)
    assert {r["Path"] for r in rows} >= {"/savedstate/RamBlock0", "/savedstate/RamMemoryBlock0"}
    rows = run_vol(cache, path, "vmrs.keys", "--path", "test").json_rows()
    assert [r["Path"] for r in rows] == ["/test", "/test/n", "/test/name", "/test/payload"]


def test_keys_dump_writes_the_exact_bytes(keys_file, cache, tmp_path):
    path, payload, blob = keys_file
    out = tmp_path / "out"
    out.mkdir()
    for key, expected in (
        ("/test/payload", payload),
        ("/savedstate/savedVM/partition_state", blob),
    ):
        rows = run_vol(
            cache, path, "vmrs.keys", "--path", key, "--dump", global_args=("-o", str(out))
        ).json_rows()
        assert len(rows) == 1 and rows[0]["Path"] == key
        written = out / rows[0]["File output"]
        assert written.read_bytes() == expected
    assert sorted(p.name for p in out.iterdir()) == [
        "vmrs_savedstate_savedVM_partition_state.bin",
        "vmrs_test_payload.bin",
    ]


# --- pescan --------------------------------------------------------------------------------
def mapped_image(name: str) -> Tuple[bytes, pefile.PE]:
    pe = pefile.PE(str(DISTLIB / name))
    image = pe.get_memory_mapped_image()
    image += bytes(-len(image) % 4096)
    assert len(image) == pe.OPTIONAL_HEADER.SizeOfImage
    return image, pe


def disk_identity(pe: pefile.PE) -> dict:
    codeview = next(d.entry for d in pe.DIRECTORY_ENTRY_DEBUG if d.struct.Type == 2)
    strings = {}
    for file_info in pe.FileInfo:
        for entry in file_info:
            for table in getattr(entry, "StringTable", []):
                strings.update(table.entries)
    return {
        "Machine": pefile.MACHINE_TYPE[pe.FILE_HEADER.Machine].replace("IMAGE_FILE_MACHINE_", ""),
        "Image size": pe.OPTIONAL_HEADER.SizeOfImage,
        "Timestamp": pe.FILE_HEADER.TimeDateStamp,
        "Subsystem": pefile.SUBSYSTEM_TYPE[pe.OPTIONAL_HEADER.Subsystem].replace(
            "IMAGE_SUBSYSTEM_", ""
        ),
        "PDB name": codeview.PdbFileName.rstrip(b"\0").decode(),
        # Signature_String is the GUID in display order followed by the age, in hex.
        "PDB GUID": codeview.Signature_String[:32],
        "PDB age": codeview.Age,
        "OriginalFilename": strings[b"OriginalFilename"].decode(),
    }


LOW_END = 0x300000  # range 0: GPA 0 - 3 MiB; a hole; range 1: 4 MiB - 6 MiB
HIGH_START, HIGH_END = 0x400000, 0x600000
PLACED = {  # GPA -> file; where the image runs out of readable memory
    0x20000: "t64.exe",  # inside RamBlock 0
    0xF0000: "w64.exe",  # crosses the RamBlock 0/1 boundary at 1 MiB
    0x2F0000: "t32.exe",  # runs into the hole at 3 MiB
    0x4F0000: "w32.exe",  # runs into RamBlock 4, which the file lacks
}
VIRTUAL_T64 = KERNEL + 0x100000  # t64 mapped page by page, page 5 not present
VIRTUAL_LARGE = KERNEL + 0x200000  # a 2 MiB page over GPA 0 - 2 MiB


@pytest.fixture(scope="module")
def pe_guest(files):
    rng = random.Random(5)
    low = bytearray(rng.randbytes(LOW_END))
    high = bytearray(rng.randbytes(HIGH_END - HIGH_START))
    # Stray "MZ" at page starts, some followed by a PE signature over garbage.
    for page in range(0, LOW_END, 0x1000 * 7):
        low[page : page + 2] = b"MZ"
        if page % 0x3000 == 0:
            low[page + 0x3C : page + 0x40] = struct.pack("<I", 0x80)
            low[page + 0x80 : page + 0x84] = b"PE\0\0"
    for page in range(0, len(high), 0x1000 * 5):
        high[page : page + 2] = b"MZ"
    images = {}
    for gpa, name in PLACED.items():
        image, pe = mapped_image(name)
        images[gpa] = (name, image, pe)
        if gpa < LOW_END:
            part = image[: LOW_END - gpa]
            low[gpa : gpa + len(part)] = part
        else:
            high[gpa - HIGH_START : gpa - HIGH_START + len(image)] = image[: HIGH_END - gpa]
    # Page tables for VP 0: t64 page by page (one page left out) and a 2 MiB page.
    builder = PageTableBuilder(PAGING_MODE.Paging_Long, table_base=0x280000)
    builder.add_self_reference(0x1ED)
    t64_pages = len(images[0x20000][1]) // 4096
    for page in range(t64_pages):
        if page != 5:
            builder.map(VIRTUAL_T64 + page * 4096, 0x20000 + page * 4096)
    builder.map(VIRTUAL_LARGE, 0, MIB2)
    for pfn, content in builder.pages.items():
        gpa = pfn * 4096
        assert 0x280000 <= gpa < 0x2F0000
        low[gpa : gpa + 4096] = content
    rng2 = random.Random(6)
    vps = []
    for index in range(2):
        regs = random_registers(rng2)
        regs.update(cr3=builder.cr3, cr0=0x80050033, cr4=0x000406F8, efer=0xD01)
        regs["cs"] = Segment(0, 0xFFFFFFFF, 0x10, 0xA09B)
        vps.append(VpDescription(index, {0: VtlDescription(regs)}))
    blob = build_partition_state(PartitionDescription(vps=vps, os_id=WINDOWS_10_19045))
    # openvmm layout: range 0 is RamBlocks 0-2, range 1 RamBlocks 3-4; drop RamBlock 4.
    data, _ = SavedStateWriter(
        [(0, bytes(low)), (HIGH_START, bytes(high))], blob, compression="xpress",
        drop_blocks=[4],
    ).build()  # fmt: skip
    return files("pe.vmrs", data), images


def readable_pages(gpa: int, pages: int) -> int:
    return sum(
        1
        for n in range(pages)
        if gpa + n * 4096 < LOW_END or HIGH_START <= gpa + n * 4096 < 0x500000
    )


def check_pe_row(row, pe, *, pages_read, pages_total, identity=("PDB", "version")):
    expected = disk_identity(pe)
    for column in ("Machine", "Image size", "Timestamp", "Subsystem"):
        assert row[column] == expected[column], (column, row)
    link_time = datetime.datetime.fromtimestamp(expected["Timestamp"], datetime.timezone.utc)
    assert row["Link time"] == link_time.isoformat()
    if "PDB" in identity:
        assert row["PDB name"] == expected["PDB name"]
        assert row["PDB GUID"].replace("-", "") == expected["PDB GUID"]
        assert row["PDB age"] == expected["PDB age"]
    else:
        assert row["PDB name"] is None and row["PDB GUID"] is None
    if "version" in identity:
        assert row["OriginalFilename"] == expected["OriginalFilename"]
    else:
        assert row["OriginalFilename"] is None
    assert (row["Pages read"], row["Pages total"]) == (pages_read, pages_total)


def test_pescan_finds_the_placed_images_and_nothing_else(pe_guest, cache):
    path, images = pe_guest
    rows = check_rows("pescan", run_vol(cache, path, "vmrs.pescan").json_rows())
    assert sorted(r["Address"] for r in rows) == sorted(PLACED)
    assert {r["Space"] for r in rows} == {"physical"}
    by_address = {r["Address"]: r for r in rows}
    for gpa, (_name, image, pe) in images.items():
        total = len(image) // 4096
        read = readable_pages(gpa, total)
        row = by_address[gpa]
        # Where the CodeView record and the version resource still lie in readable pages.
        codeview_rva = next(
            d.struct.AddressOfRawData for d in pe.DIRECTORY_ENTRY_DEBUG if d.struct.Type == 2
        )
        resource_rva = pe.OPTIONAL_HEADER.DATA_DIRECTORY[2].VirtualAddress
        identity = []
        if readable_pages(gpa + codeview_rva // 4096 * 4096, 1):
            identity.append("PDB")
        if readable_pages(gpa + resource_rva // 4096 * 4096, 1) and read == total:
            identity.append("version")
        check_pe_row(row, pe, pages_read=read, pages_total=total, identity=identity)
        if read < total:
            assert "unreadable" in row["Notes"]
    # The cases the fixture is meant to cover.
    assert by_address[0xF0000]["Pages read"] == by_address[0xF0000]["Pages total"]
    assert by_address[0x2F0000]["Pages read"] == 16 and by_address[0x2F0000]["PDB GUID"] is None
    assert by_address[0x4F0000]["Pages read"] == 16 and by_address[0x4F0000]["PDB age"] == 1
    assert by_address[0x4F0000]["OriginalFilename"] is None


def test_pescan_virtual_space_of_a_vp(pe_guest, cache):
    path, images = pe_guest
    rows = run_vol(cache, path, "vmrs.pescan", "--virtual", "--vp", "0").json_rows()
    virtual = {r["Address"]: r for r in rows if r["Space"] == "VP 0 virtual"}
    physical = {r["Address"] for r in rows if r["Space"] == "physical"}
    assert physical == set(PLACED)
    assert sorted(virtual) == sorted(
        [VIRTUAL_T64, VIRTUAL_LARGE + 0x20000, VIRTUAL_LARGE + 0xF0000]
    )
    t64 = images[0x20000][2]
    check_pe_row(virtual[VIRTUAL_T64], t64, pages_read=32, pages_total=33)
    assert "0x5000" in virtual[VIRTUAL_T64]["Notes"]
    check_pe_row(virtual[VIRTUAL_LARGE + 0x20000], t64, pages_read=33, pages_total=33)
    check_pe_row(
        virtual[VIRTUAL_LARGE + 0xF0000], images[0xF0000][2], pages_read=32, pages_total=32
    )


def test_pescan_reports_progress_in_process(pe_guest):
    from volatility3_vmrs.savedstate import pescan

    path, _ = pe_guest
    calls: List[Tuple[float, str]] = []
    with SavedStateDump(path) as dump:
        found = list(pescan.scan_guest_memory(dump.memory, lambda p, t: calls.append((p, t))))
    assert sorted(image.address for image in found) == sorted(PLACED)
    percents = [p for p, _ in calls]
    assert len(calls) >= 5 and percents == sorted(percents) and percents[-1] == 100.0


def test_pescan_library_rejects_random_data_with_stray_mz():
    from volatility3_vmrs.savedstate import pescan

    rng = random.Random(9)
    for _ in range(300):
        page = bytearray(rng.randbytes(4096))
        page[:2] = b"MZ"
        if rng.random() < 0.5:
            page[0x3C:0x40] = struct.pack("<I", rng.randrange(0x40, 0xF00) & ~3)
            at = struct.unpack_from("<I", page, 0x3C)[0]
            page[at : at + 4] = b"PE\0\0"
        assert pescan.check_header(bytes(page)) is None
    image, _ = mapped_image("t64.exe")
    assert pescan.check_header(image[:4096]) is not None


# --- vtop ----------------------------------------------------------------------------------
ENTRY_SIZE = {PAGING_MODE.Paging_Long: 8, PAGING_MODE.Paging_Pae: 8, PAGING_MODE.Paging_32Bit: 4}
LEVELS = {
    PAGING_MODE.Paging_Long: ["PML4E", "PDPTE", "PDE", "PTE"],
    PAGING_MODE.Paging_Pae: ["PDPTE", "PDE", "PTE"],
    PAGING_MODE.Paging_32Bit: ["PDE", "PTE"],
}


def expected_walk(guest, va: int) -> Tuple[List[Tuple[str, int, int]], int]:
    builder = guest.builder
    mapping = next(m for m in builder.mappings if m.va <= va < m.va + m.size)
    size = ENTRY_SIZE[guest.mode]
    levels = LEVELS[guest.mode]
    depth = len(levels) - {0x1000: 1, MIB2: 2, 0x400000: 2, 0x40000000: 3}[mapping.size]
    steps = []
    for level in range(depth + 1):
        address = builder.entry_address(va, level)
        value = int.from_bytes(builder.read(address, size), "little")
        steps.append((levels[level], address, value))
    return steps, mapping.pa + (va - mapping.va)


def vtop_cases(guest) -> List[int]:
    small = [m for m in guest.builder.mappings if m.size == 0x1000]
    large = [m for m in guest.builder.mappings if m.size > 0x1000]
    assert small and large
    return [small[0].va + 0x123, small[-1].va + 0xFFF, large[0].va + 0x1234]


@pytest.mark.parametrize(
    "mode", [PAGING_MODE.Paging_Long, PAGING_MODE.Paging_Pae, PAGING_MODE.Paging_32Bit]
)
def test_vtop_shows_each_level(mode, guests_by_mode, cache):
    guest, path = guests_by_mode[mode]
    for va in vtop_cases(guest):
        rows = check_rows(
            "vtop", run_vol(cache, path, "vmrs.vtop", "--address", hex(va)).json_rows()
        )
        steps, gpa = expected_walk(guest, va)
        assert rows[0]["Level"] == "CR3" and rows[0]["Entry value"] == guest.cr3
        assert rows[0]["Maps"] == guest.dtb
        assert [(r["Level"], r["Entry address"], r["Entry value"]) for r in rows[1:-1]] == steps
        assert all(r["VP"] == 0 and r["VTL"] == 0 and r["Mode"] == mode.name for r in rows)
        assert rows[-2]["Flags"].startswith("P")
        assert ("PS" in rows[-2]["Flags"].split()) == (len(steps) < len(LEVELS[mode]))
        assert rows[-1]["Level"] == "GPA" and rows[-1]["Maps"] == gpa
    # A VA nothing maps: the walk stops at the first non-present entry.
    va = (KERNEL if mode == PAGING_MODE.Paging_Long else 0x80000000) + 0x40000000
    rows = run_vol(cache, path, "vmrs.vtop", "--address", hex(va), "--vp", "1").json_rows()
    assert rows[-1]["Level"] == "GPA" and rows[-1]["Maps"] is None
    failing = rows[-2]
    assert failing["Flags"] == "not present"
    assert rows[-1]["Result"].endswith(f"{failing['Level']} not present")
    depth = LEVELS[mode].index(failing["Level"])
    assert failing["Entry address"] == guest.builder.entry_address(va, depth)


def test_vtop_in_process_every_mapping(guests_by_mode):
    vtop = importlib.import_module("volatility3.plugins.vmrs.vtop")
    for guest, path in guests_by_mode.values():
        with SavedStateDump(path) as dump:
            for mapping in guest.builder.mappings:
                for va in (mapping.va, mapping.va + mapping.size - 1):
                    rows = list(vtop.Vtop.rows(dump, 0, 0, va))
                    steps, gpa = expected_walk(guest, va)
                    assert [(r[3], int(r[4]), int(r[5])) for r in rows[1:-1]] == steps
                    assert int(rows[-1][7]) == gpa
                    assert dump.read_physical(gpa, 1) == bytes(
                        guest.builder.pages.get(gpa // 4096, bytes(4096))[
                            gpa % 4096 : gpa % 4096 + 1
                        ]
                    )


# --- every plugin ------------------------------------------------------------------------
def test_plugins_are_listed_by_stock_vol_and_declare_versions(cache, long_file):
    result = run_vol(cache, long_file, "-h", renderer="quick")
    for name in PLUGINS:
        assert f"vmrs.{name}" in result.stdout
    for name in PLUGINS:
        module = importlib.import_module(f"volatility3.plugins.vmrs.{name}")
        classes = [
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and value.__module__ == module.__name__
            and hasattr(value, "get_requirements")
        ]
        assert len(classes) == 1, name
        plugin = classes[0]
        assert plugin._required_framework_version == (2, 0, 0)
        assert isinstance(plugin._version, tuple) and len(plugin._version) == 3


def test_save_config_round_trips(long_file, cache, tmp_path):
    config = tmp_path / "registers.json"
    args = ("--vp", "1", "--vtl", "0", "--register", "rip", "cr3")
    first = run_vol(
        cache, long_file, "vmrs.registers", *args, global_args=("--save-config", str(config))
    ).json_rows()
    saved = json.loads(config.read_text())
    assert saved["register"] == ["rip", "cr3"] and saved["vp"] == 1
    assert saved["primary.memory_layer.class"] == "volatility3_vmrs.layers.vmrs.VmrsLayer"
    again = run_vol(cache, long_file, "vmrs.registers", global_args=("-c", str(config))).json_rows()
    assert again == first and len(first) == 2
    for plugin, plugin_args in (
        ("vmrs.vtop", ("--address", hex(KERNEL + 0x10000), "--vp", "1")),
        ("vmrs.keys", ("--path", "/savedstate/VmVersion")),
    ):
        config = tmp_path / f"{plugin}.json"
        first = run_vol(
            cache, long_file, plugin, *plugin_args, global_args=("--save-config", str(config))
        ).json_rows()
        assert run_vol(cache, long_file, plugin, global_args=("-c", str(config))).json_rows() == (
            first
        )


def test_vtop_reaches_the_ram_above_4_gib(long_guest, long_file, cache):
    (mapping,) = [m for m in long_guest.builder.mappings if m.pa >= RAM_HIGH_GPA]
    rows = run_vol(cache, long_file, "vmrs.vtop", "--address", hex(mapping.va + 8)).json_rows()
    assert rows[-1]["Maps"] == mapping.pa + 8
