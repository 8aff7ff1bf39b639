"""Exports (raw, LiME, ELF core, Windows crash dump), each read back by a reader we did not write.

Readers: the installed stock ``vol`` and volatility3's own ELF, LiME and crash-dump layers,
pyelftools, gdb (a Debian package; a missing gdb fails the test) and kdmp-parser. The
register truth is QEMU's (``registers.json``) for the real Linux guest, the synthetic
guest's own description for the Windows-flavour ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List

import kdmp_parser
import pytest
import volatility3.framework.automagic  # noqa: F401  (the stock OS stackers)
from elftools.elf.elffile import ELFFile
from volatility3 import framework
from volatility3.framework import contexts
from volatility3.framework.automagic import stacker
from volatility3.framework.layers import crash, elf, intel, lime, physical
from volatility3.framework.symbols import intermed

import volatility3_vmrs.layers  # noqa: F401  (registers the pack's stacker, which must decline)
from tests.conftest import DATA_DIR
from tests.fixtures.linux_guest import artefacts
from tests.support.guests import windows_guest
from tests.support.linux_guest import build_vmrs
from tests.support.partition_writer import simple_partition
from tests.support.savedstate_writer import SavedStateWriter
from tests.support.schemas import check_rows
from tests.support.vol import run_vol, vol_json
from volatility3_vmrs.cli import export_cmd
from volatility3_vmrs.export import ExportError, KernelAddresses, export, export_to_path
from volatility3_vmrs.export.crashdump import WINDBG_NOTE
from volatility3_vmrs.layers.vmrs import VmrsStacker
from volatility3_vmrs.plugins.export import kernel_addresses
from volatility3_vmrs.savedstate import SavedStateDump
from volatility3_vmrs.savedstate.types import PAGING_MODE

framework.import_files(sys.modules["volatility3.framework.layers"])
framework.import_files(sys.modules["volatility3.framework.automagic"])

FORMATS = ("raw", "lime", "elf", "dmp")
CHUNK = 4 << 20
QEMU_CPUS = artefacts.load_registers()["cpus"]
WINDOWS_ISF = DATA_DIR / "symbols/windows/ntkrnlmp.pdb/BBED7C2955FBE4522AAA23F4B8677AD9-1.json.xz"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: Path) -> tuple:
    stat = path.stat()
    return sha256_of(path), stat.st_mtime_ns, stat.st_size


def chunks_of(dump: SavedStateDump) -> List[tuple]:
    page_size, chunks = dump.memory_chunks()
    return [(c.start_page * page_size, c.page_count * page_size) for c in chunks]


def ranges_of(dump: SavedStateDump) -> List[tuple]:
    """The GPA chunks with adjacent ones merged (what every export describes)."""
    merged: List[list] = []
    for gpa, size in chunks_of(dump):
        if merged and merged[-1][0] + merged[-1][1] == gpa:
            merged[-1][1] += size
        else:
            merged.append([gpa, size])
    return [tuple(r) for r in merged]


def pieces(gpa: int, size: int) -> Iterator[tuple]:
    for offset in range(0, size, CHUNK):
        yield gpa + offset, min(CHUNK, size - offset)


def stack(path: Path):
    context = contexts.Context()
    context.config["FileLayer.location"] = path.resolve().as_uri()
    context.add_layer(physical.FileLayer(context, "FileLayer", "FileLayer"))
    names = stacker.LayerStacker.stack_layer(context, "FileLayer")
    return context, names


def stock_stack(path: Path, stock_stacker):
    """The stock stacker's layer on ``path``; the pack's own stacker must decline the file.

    (The full LayerStacker would also run the Linux and Windows stackers, which scan
    the whole image; the stock ``vol`` runs below do that.)
    """
    context = contexts.Context()
    context.config["FileLayer.location"] = path.resolve().as_uri()
    context.add_layer(physical.FileLayer(context, "FileLayer", "FileLayer"))
    assert VmrsStacker.stack(context, "FileLayer") is None
    layer = stock_stacker.stack(context, "FileLayer")
    assert layer is not None, stock_stacker
    context.add_layer(layer)
    return context, layer


# --- the real Linux guest --------------------------------------------------------------
@pytest.fixture(scope="module")
def guest_vmrs(linux_guest_elf, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export_vmrs") / "guest.vmrs"
    build_vmrs(linux_guest_elf, path, "raw")
    os.chmod(path, 0o644)
    os.utime(path, (1_000_000_000, 1_000_000_000))
    return path


@pytest.fixture(scope="module")
def exported(guest_vmrs, tmp_path_factory) -> Dict[str, tuple]:
    """Each format once: (path, ExportResult); the evidence fingerprint before and after."""
    directory = tmp_path_factory.mktemp("exported")
    before = fingerprint(guest_vmrs)
    results = {}
    with SavedStateDump(str(guest_vmrs)) as dump:
        for fmt in FORMATS:
            path = directory / f"guest.{fmt}"
            seen: List[tuple] = []
            result = export_to_path(
                dump,
                fmt,
                str(path),
                inputs=[str(guest_vmrs)],
                progress=lambda done, total, seen=seen: seen.append((done, total)),
            )
            results[fmt] = (path, result, seen)
    assert fingerprint(guest_vmrs) == before
    return results


@pytest.fixture(scope="module")
def dump(guest_vmrs) -> Iterator[SavedStateDump]:
    with SavedStateDump(str(guest_vmrs)) as opened:
        yield opened


def test_each_export_reports_its_size_digest_and_progress(exported, dump, guest_vmrs, tmp_path):
    total = sum(size for _, size in ranges_of(dump))
    for fmt, (path, result, seen) in exported.items():
        assert result.size == path.stat().st_size, fmt
        assert seen and seen[-1] == (total, total), fmt
        assert all(a[0] < b[0] for a, b in zip(seen, seen[1:])), fmt
        # Raw RamBlocks, no digest asked: the kernel copied every memory byte.
        assert result.sha256 is None and result.kernel_copied == total, fmt
        if fmt == "raw":  # 4 GiB of mostly holes: its digest is checked on a small guest
            continue
        # With --sha256 every byte passes through Python: the same file, and its digest.
        again = tmp_path / f"again.{fmt}"
        hashed = export_to_path(dump, fmt, str(again), inputs=[str(guest_vmrs)], sha256=True)
        assert hashed.kernel_copied == 0
        assert hashed.sha256 == sha256_of(again) == sha256_of(path), fmt


def test_raw_is_the_guest_memory_at_its_gpa_with_sparse_zero_holes(exported, dump):
    path, result, _ = exported["raw"]
    ranges = ranges_of(dump)
    assert result.size == ranges[-1][0] + ranges[-1][1]
    assert result.holes == [(0x8000000, 0xFFFC0000)]  # the capture's gap below 4 GiB
    with open(path, "rb") as handle:
        for gpa, size in ranges:
            for at, length in pieces(gpa, size):
                handle.seek(at)
                assert handle.read(length) == dump.read_physical(at, length), hex(at)
        for start, end in result.holes:
            for at in (start, (start + end) // 2 & ~0xFFF, end - 0x1000):
                handle.seek(at)
                assert handle.read(0x1000) == bytes(0x1000), hex(at)
    # Sparse: the file system holds the memory, not the 3.9 GiB hole. (The digest of a
    # raw image with holes is checked on a small guest, below.)
    assert path.stat().st_blocks * 512 < result.size // 4


def test_lime_headers_and_volatility_lime_layer(exported, dump):
    path, _, _ = exported["lime"]
    # Every range: a LiME header (magic, version 1, first and last address), then its bytes.
    with open(path, "rb") as handle:
        for gpa, size in ranges_of(dump):
            magic, version, start, end, _ = struct.unpack("<IIQQQ", handle.read(32))
            assert (magic, version, start, end) == (0x4C694D45, 1, gpa, gpa + size - 1)
            for at, length in pieces(gpa, size):
                assert handle.read(length) == dump.read_physical(at, length), hex(at)
        assert handle.read(1) == b""
    _, top = stock_stack(path, lime.LimeStacker)
    assert isinstance(top, lime.LimeLayer)
    for gpa, size in ranges_of(dump):
        for at in (gpa, gpa + size // 2 & ~0xFFF, gpa + size - 0x1000):
            assert top.read(at, 0x1000) == dump.read_physical(at, 0x1000), hex(at)


def test_elf_segments_and_notes_read_by_pyelftools(exported, dump, linux_guest_elf):
    path, _, _ = exported["elf"]
    with open(path, "rb") as handle:
        core = ELFFile(handle)
        assert core["e_type"] == "ET_CORE" and core["e_machine"] == "EM_X86_64"
        segments = list(core.iter_segments())
        assert segments[0]["p_type"] == "PT_NOTE"  # first, as crash wants
        loads = [s for s in segments if s["p_type"] == "PT_LOAD"]
        assert [(s["p_paddr"], s["p_filesz"]) for s in loads] == ranges_of(dump)
        for segment in loads:
            assert segment["p_vaddr"] == segment["p_paddr"]
            assert segment["p_memsz"] == segment["p_filesz"]
            assert segment["p_offset"] % 0x1000 == 0
            for at, length in pieces(segment["p_paddr"], segment["p_filesz"]):
                handle.seek(segment["p_offset"] + at - segment["p_paddr"])
                assert handle.read(length) == dump.read_physical(at, length), hex(at)
        notes = list(segments[0].iter_notes())
    prstatus = [n for n in notes if n["n_type"] == "NT_PRSTATUS"]
    assert [n["n_name"] for n in prstatus] == ["CORE"] * len(QEMU_CPUS)
    for index, (note, cpu) in enumerate(zip(prstatus, QEMU_CPUS)):
        desc = note["n_desc"]
        desc = desc if isinstance(desc, bytes) else desc.encode("latin-1")
        (pid,) = struct.unpack_from("<i", desc, 32)
        regs = struct.unpack_from("<27Q", desc, 112)
        assert pid == index + 1
        # user_regs_struct: r15 ... rax=10 rcx rdx rsi rdi orig_rax rip=16 cs eflags rsp=19
        assert (regs[16], regs[18], regs[19], regs[10]) == (
            cpu["RIP"],
            cpu["RFL"],
            cpu["RSP"],
            cpu["RAX"],
        )
        assert regs[17] == cpu["CS"]["selector"] and regs[21] == cpu["FS"]["base"]
    fpregs = [n for n in notes if n["n_type"] == "NT_FPREGSET"]
    assert len(fpregs) == len(QEMU_CPUS)
    for note, cpu in zip(fpregs, QEMU_CPUS):
        desc = note["n_desc"]
        desc = desc if isinstance(desc, bytes) else desc.encode("latin-1")
        assert len(desc) == 512
        assert struct.unpack_from("<H", desc, 0)[0] == cpu["FCW"]
        assert struct.unpack_from("<I", desc, 24)[0] == cpu["MXCSR"]
        xmm1 = int.from_bytes(desc[160 + 16 : 160 + 32], "little")
        assert xmm1 == int(cpu["XMM"]["XMM01"], 16)
    # VMCOREINFO: the guest's own text, as QEMU's capture of the same RAM holds it.
    (info,) = [n for n in notes if n["n_name"] == "VMCOREINFO"]
    text = info["n_desc"]
    text = text if isinstance(text, bytes) else text.encode("latin-1")
    manifest = artefacts.load_manifest()
    assert text.startswith(f"OSRELEASE={manifest['kernel_release']}\n".encode())
    assert f"\nKERNELOFFSET={manifest['kaslr_virtual_shift']:x}\n".encode() in text
    assert text in linux_guest_elf.read_bytes()


def test_elf_stacks_on_volatility_elf_layer(exported, dump):
    path, _, _ = exported["elf"]
    _, top = stock_stack(path, elf.Elf64Stacker)
    assert isinstance(top, elf.Elf64Layer)
    for gpa, size in ranges_of(dump):
        for at in (gpa, gpa + size - 0x1000):
            assert top.read(at, 0x1000) == dump.read_physical(at, 0x1000)


def test_gdb_shows_one_thread_per_vp_with_the_saved_registers(exported):
    gdb = shutil.which("gdb")
    assert gdb, "gdb is not installed (apt-get install gdb): the ELF core check needs it"
    path, _, _ = exported["elf"]
    commands = ["info threads"]
    for index in range(len(QEMU_CPUS)):
        commands += [f"thread {index + 1}", "info registers rip rsp eflags"]
    args = [gdb, "-batch", "-nx", "-c", str(path)]
    for command in commands:
        args += ["-ex", command]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    output = proc.stdout
    threads = re.findall(r"^\*?\s+(\d+)\s+LWP (\d+)", output, re.M)
    assert threads == [(str(i + 1), str(i + 1)) for i in range(len(QEMU_CPUS))], output
    blocks = output.split("[Switching to thread ")[1:]
    assert len(blocks) == len(QEMU_CPUS), output
    for block, cpu in zip(blocks, QEMU_CPUS):
        values = dict(re.findall(r"^(rip|rsp|eflags)\s+(0x[0-9a-f]+)", block, re.M))
        assert int(values["rip"], 16) == cpu["RIP"], block
        assert int(values["rsp"], 16) == cpu["RSP"], block
        assert int(values["eflags"], 16) == cpu["RFL"], block


def test_stock_pslist_on_elf_and_lime_equals_the_vmrs(exported, guest_vmrs, vol_cache):
    symbols = str(Path(__file__).resolve().parent.parent / "symbols")

    def pslist(path: Path) -> list:
        return vol_json(["-s", symbols, "-f", str(path), "linux.pslist"], cache=vol_cache)

    expected = pslist(guest_vmrs)  # alone first: it may build Volatility's cache
    assert len(expected) > 10
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = list(pool.map(pslist, [exported["elf"][0], exported["lime"][0]]))
    assert got == [expected, expected]


def test_crash_dump_read_by_kdmp_parser(exported, dump):
    path, result, _ = exported["dmp"]
    # VP 0 was saved in user mode (CS 0x33), VP 1 in the kernel: the dump takes VP 1.
    assert [cpu["CS"]["selector"] for cpu in QEMU_CPUS] == [0x33, 0x10]
    assert result.notes == [WINDBG_NOTE] and result.vp == 1
    parsed = kdmp_parser.KernelDumpParser(path)
    header = parsed.header
    registers = dump.registers(1)
    assert parsed.type == kdmp_parser.DumpType.FullDump
    assert bytes(header.Signature.to_bytes(4, "little")) == b"PAGE"
    assert bytes(header.ValidDump.to_bytes(4, "little")) == b"DU64"
    assert header.DirectoryTableBase == registers.cr3 & 0x000F_FFFF_FFFF_F000
    assert header.MachineImageType == 0x8664
    assert header.NumberProcessors == len(QEMU_CPUS)
    assert header.KdDebuggerDataBlock == 0 and header.PsActiveProcessHead == 0
    assert header.PsLoadedModuleList == 0
    assert header.RequiredDumpSpace == path.stat().st_size
    context, cpu = parsed.context, QEMU_CPUS[1]
    assert (context.Rip, context.Rsp, context.EFlags) == (cpu["RIP"], cpu["RSP"], cpu["RFL"])
    assert (context.Rax, context.R12, context.SegCs) == (cpu["RAX"], cpu["R12"], 0x10)
    assert context.MxCsr == context.MxCsr2 == cpu["MXCSR"]
    memory = header.PhysicalMemoryBlock
    assert memory.NumberOfRuns == len(ranges_of(dump))
    assert (memory.Run.BasePage, memory.Run.PageCount) == (0, 0x8000)  # the first run
    expected_pages = [a for gpa, size in ranges_of(dump) for a in range(gpa, gpa + size, 0x1000)]
    assert sorted(parsed.pages.keys()) == expected_pages
    assert memory.NumberOfPages == len(expected_pages)
    # Every page of every run equals the .vmrs.
    for gpa, size in ranges_of(dump):
        for at, length in pieces(gpa, size):
            pages = b"".join(
                parsed.read_physical_page(page) for page in range(at, at + length, 0x1000)
            )
            assert pages == dump.read_physical(at, length), hex(at)


def test_crash_dump_stacks_on_volatility_crash_layer(exported, dump):
    path, _, _ = exported["dmp"]
    _, layer = stock_stack(path, crash.WindowsCrashDumpStacker)
    assert isinstance(layer, crash.WindowsCrashDump64Layer)
    assert layer.dtb == dump.registers(1).cr3 & 0x000F_FFFF_FFFF_F000  # the kernel-mode VP
    for gpa, size in ranges_of(dump):
        for at in (gpa, gpa + size // 2 & ~0xFFF, gpa + size - 0x1000):
            assert layer.read(at, 0x1000) == dump.read_physical(at, 0x1000), hex(at)


def test_crash_dump_context_of_another_vp(dump, tmp_path):
    path = tmp_path / "vp0.dmp"
    with open(path, "xb") as handle:
        result = export(dump, "dmp", handle, vp=0)  # the user-mode VP, asked for
    assert result.vp == 0
    parsed = kdmp_parser.KernelDumpParser(path)  # kept alive: its views point into it
    context, cpu = parsed.context, QEMU_CPUS[0]
    assert (context.Rip, context.Rsp, context.EFlags) == (cpu["RIP"], cpu["RSP"], cpu["RFL"])
    assert context.SegCs == 0x33
    assert parsed.header.DirectoryTableBase == dump.registers(0).cr3 & 0x000F_FFFF_FFFF_F000
    with pytest.raises(ExportError, match=r"no virtual processor 7 \(the file has \[0, 1\]\)"):
        export(dump, "dmp", open(tmp_path / "vp7.dmp", "xb"), vp=7)


def test_kernel_addresses_fill_the_windbg_fields(dump, tmp_path):
    kernel = KernelAddresses(0xFFFFF80312345678, 0xFFFFF80311111110, 0xFFFFF80322222220)
    path = tmp_path / "kdbg.dmp"
    with open(path, "xb") as handle:
        result = export(dump, "dmp", handle, kernel=kernel)
    assert WINDBG_NOTE not in result.notes
    parsed = kdmp_parser.KernelDumpParser(path)  # kept alive: its views point into it
    header = parsed.header
    assert header.KdDebuggerDataBlock == kernel.kd_debugger_data_block
    assert header.PsActiveProcessHead == kernel.ps_active_process_head
    assert header.PsLoadedModuleList == kernel.ps_loaded_module_list


def test_plugin_takes_the_windbg_fields_from_a_windows_kernel_symbol_table(tmp_path):
    """The committed Windows 10 19041 ISF, as a module at a kernel base: symbol + base."""
    isf = json.loads(lzma.decompress(WINDOWS_ISF.read_bytes()))
    # The three symbols of the real table, in an ISF of their own (loading the whole
    # table into Volatility takes half a minute).
    wanted = ("KdDebuggerDataBlock", "PsActiveProcessHead", "PsLoadedModuleList")
    small = {**isf, "symbols": {name: isf["symbols"][name] for name in wanted}}
    small.update(user_types={}, enums={})
    small_path = tmp_path / "ntkrnlmp-three.json"
    small_path.write_text(json.dumps(small))
    context = contexts.Context()
    table = "ntkrnlmp"
    context.symbol_space.append(
        intermed.IntermediateSymbolTable(context, "test", table, small_path.as_uri())
    )
    base = 0xFFFFF80274600000
    module = context.module(table, layer_name="no-layer", offset=base)
    isf = isf["symbols"]
    addresses = kernel_addresses(module)
    assert addresses.kd_debugger_data_block == base + isf["KdDebuggerDataBlock"]["address"]
    assert addresses.ps_active_process_head == base + isf["PsActiveProcessHead"]["address"]
    assert addresses.ps_loaded_module_list == base + isf["PsLoadedModuleList"]["address"]
    # The KDBG's decoding keys are not in this table: left zero, so nothing is decoded.
    assert (addresses.kdp_data_block_encoded, addresses.ki_wait_never) == (0, 0)
    assert not addresses.decodable and addresses.space is None


# --- synthetic Windows-flavour guests: 32-bit header, PCID masking -----------------------
@pytest.mark.parametrize(
    "mode,layer_class,page_layer",
    [
        (PAGING_MODE.Paging_Long, crash.WindowsCrashDump64Layer, intel.WindowsIntel32e),
        (PAGING_MODE.Paging_Pae, crash.WindowsCrashDump32Layer, intel.WindowsIntelPAE),
        (PAGING_MODE.Paging_32Bit, crash.WindowsCrashDump32Layer, intel.WindowsIntel),
    ],
    ids=["x64-pcid", "pae", "x86"],
)
def test_windows_guest_dump_reads_back_its_virtual_memory(tmp_path, mode, layer_class, page_layer):
    is_64 = mode == PAGING_MODE.Paging_Long
    # The 64-bit guest's RamBlocks are XPRESS-compressed: read through the reader.
    options = {"pcid": 0x5, "compression": "xpress"} if is_64 else {}
    guest = windows_guest(mode, **options)
    source = tmp_path / "win.vmrs"
    source.write_bytes(guest.data)
    path = tmp_path / "win.dmp"
    with SavedStateDump(str(source)) as opened:
        result = export_to_path(opened, "dmp", str(path), inputs=[str(source)])
    assert (result.kernel_copied == 0) == is_64
    context, dump_layer = stock_stack(path, crash.WindowsCrashDumpStacker)
    assert type(dump_layer) is layer_class
    header = dump_layer.get_header()
    assert int(header.DirectoryTableBase) == dump_layer.dtb == guest.dtb
    assert guest.cr3 != guest.dtb or not is_64
    assert int(header.MachineImageType) == (0x8664 if is_64 else 0x14C)
    assert int(header.NumberProcessors) == len(guest.registers)
    if not is_64:
        assert int(header.PaeEnabled) == (mode == PAGING_MODE.Paging_Pae)
        # The x86 CONTEXT: Eip at 0xB8, Esp at 0xC4 of the record at 0x320.
        raw = path.read_bytes()[0x320 : 0x320 + 0x2CC]
        eip, esp = struct.unpack_from("<I", raw, 0xB8)[0], struct.unpack_from("<I", raw, 0xC4)[0]
        truth = guest.registers[0][0]
        assert (eip, esp) == (truth["rip"] & 0xFFFFFFFF, truth["rsp"] & 0xFFFFFFFF)
    # Volatility's Windows page layer on the dump, at the header's DTB, reads the guest.
    context.config["page.memory_layer"] = dump_layer.name
    context.config["page.page_map_offset"] = dump_layer.dtb
    top = page_layer(context, "page", "page")
    for va, content in guest.known.items():
        assert top.read(va, len(content)) == content


# --- the destination guard and the command --------------------------------------------
SMALL_RANGES = [(0, bytes(range(256)) * 4096), (0x300000, bytes(range(255, -1, -1)) * 4096)]


@pytest.fixture()
def small_evidence(tmp_path) -> Path:
    """A 2 MiB guest with a 2 MiB hole, two VPs: the command's tests stay small."""
    _, blob = simple_partition(2)
    data, _ = SavedStateWriter(SMALL_RANGES, blob).build()
    path = tmp_path / "evidence.vmrs"
    path.write_bytes(data)
    os.chmod(path, 0o644)  # writable on purpose: only the code's discipline protects it
    os.utime(path, (1_000_000_000, 1_000_000_000))
    return path


def cli(*argv: str) -> tuple:
    parser = argparse.ArgumentParser(prog="vmrs")
    export_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", *argv])
    lines: List[str] = []
    return export_cmd.run(args, out=lines.append), "\n".join(lines)


def test_output_equal_to_the_input_is_refused_every_way(small_evidence, tmp_path, capsys):
    before = fingerprint(small_evidence)
    link = tmp_path / "link.vmrs"
    link.symlink_to(small_evidence)
    hard = tmp_path / "hard.vmrs"
    os.link(small_evidence, hard)
    dotted = tmp_path / "sub" / ".." / "evidence.vmrs"
    (tmp_path / "sub").mkdir()
    for target in (small_evidence, link, hard, dotted):
        code, _ = cli(str(small_evidence), "--format", "raw", "-o", str(target), "--force")
        err = capsys.readouterr().err
        assert code == 2
        assert err.startswith("vmrs export: error: refusing to write") and "input file" in err
        assert err.count("\n") == 1
    assert fingerprint(small_evidence) == before


def test_existing_output_is_kept_unless_forced(small_evidence, tmp_path, capsys):
    out = tmp_path / "out.lime"
    out.write_bytes(b"keep me")
    code, _ = cli(str(small_evidence), "--format", "lime", "-o", str(out))
    err = capsys.readouterr().err
    assert (
        code == 2
        and err == f"vmrs export: error: {out} exists; give another name or --force to replace it\n"
    )
    assert out.read_bytes() == b"keep me"
    code, text = cli(str(small_evidence), "--format", "lime", "-o", str(out), "--force", "--json")
    assert code == 0
    document = json.loads(text)
    assert document["format"] == "lime" and document["size"] == out.stat().st_size
    assert out.read_bytes()[:4] == b"EMiL"


def read_only_directory(path: Path):
    """A directory nobody can write in: a read-only tmpfs for root, mode 0555 otherwise."""
    path.mkdir()
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        return lambda: os.chmod(path, 0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True)
    return lambda: subprocess.run(["umount", str(path)], check=True)


def test_read_only_directory_gives_one_clear_line(small_evidence, tmp_path, capsys):
    before = fingerprint(small_evidence)
    directory = tmp_path / "ro"
    undo = read_only_directory(directory)
    try:
        code, _ = cli(str(small_evidence), "--format", "elf", "-o", str(directory / "x.elf"))
        err = capsys.readouterr().err
        assert code == 2
        assert re.fullmatch(
            r"vmrs export: error: cannot write .*x\.elf: "
            r"(Read-only file system|Permission denied)\n",
            err,
        ), err
        assert not (directory / "x.elf").exists()
    finally:
        undo()
    assert fingerprint(small_evidence) == before


def test_command_summary_sha256_and_holes(small_evidence, tmp_path):
    out = tmp_path / "win.raw"
    code, text = cli(str(small_evidence), "--format", "raw", "-o", str(out), "--sha256")
    assert code == 0
    assert f"sha256 {sha256_of(out)}" in text.splitlines()
    assert "hole  0x100000-0x2fffff (2097152 bytes, sparse, reads as zeros)" in text
    image = out.read_bytes()
    assert image == SMALL_RANGES[0][1] + bytes(0x200000) + SMALL_RANGES[1][1]
    code, text = cli(str(small_evidence), "--format", "dmp", "-o", str(tmp_path / "w.dmp"))
    assert code == 0 and f"note: {WINDBG_NOTE}" in text and "virtual processor 0" in text


def test_command_refuses_what_is_not_a_saved_state(tmp_path, capsys):
    bogus = tmp_path / "not.vmrs"
    bogus.write_bytes(b"\0" * 8192)
    code, _ = cli(str(bogus), "--format", "raw", "-o", str(tmp_path / "x.raw"))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("vmrs export: error: ") and err.count("\n") == 1
    assert not (tmp_path / "x.raw").exists()
    code, _ = cli(str(tmp_path / "missing.vmrs"), "--format", "raw", "-o", str(tmp_path / "y"))
    err = capsys.readouterr().err
    assert code == 2 and "missing.vmrs" in err and err.count("\n") == 1


# --- the vmrs.export plugin in the stock vol ------------------------------------------
def test_plugin_writes_through_volatility_file_handler(exported, guest_vmrs, vol_cache, tmp_path):
    directory = tmp_path / "vol-out"
    directory.mkdir()

    def run(fmt: str) -> list:
        args = ["-o", str(directory), "-f", str(guest_vmrs), "vmrs.export", "--format", fmt]
        return vol_json([*args, "--sha256"], cache=vol_cache)

    with ThreadPoolExecutor(max_workers=2) as pool:
        (lime_row,), (dmp_row,) = pool.map(run, ["lime", "dmp"])
    # LiME: the very bytes the library wrote, named after the saved state.
    assert lime_row["File output"] == "guest.lime"
    library_digest = sha256_of(exported["lime"][0])
    assert lime_row["SHA-256"] == sha256_of(directory / "guest.lime") == library_digest
    # Crash dump: no Windows kernel in this guest, so the WinDbg fields stay zero and
    # the row says so; kdmp-parser reads the same memory as the library's dump.
    assert dmp_row["Notes"] == WINDBG_NOTE and dmp_row["VP"] == 1  # the kernel-mode VP
    assert lime_row["VP"] is None
    check_rows("export", [lime_row, dmp_row])
    path = directory / dmp_row["File output"]
    assert sha256_of(path) == dmp_row["SHA-256"]
    parsed = kdmp_parser.KernelDumpParser(path)
    assert parsed.header.KdDebuggerDataBlock == 0
    library = exported["dmp"][0].read_bytes()
    assert path.read_bytes()[0x2000:] == library[0x2000:]


def test_plugin_looks_for_no_windows_kernel_in_a_linux_guest(guest_vmrs, vol_cache, tmp_path):
    """The Linux guest's layer is not a Windows one: even its crash dump runs no PDB
    scan (the Windows guest's dmp test shows the scan's log line when it does run)."""
    args = ["-vv", "-o", str(tmp_path), "-f", str(guest_vmrs), "vmrs.export", "--format", "dmp"]
    proc = run_vol(args, cache=vol_cache)
    assert "Kernel base determination" not in proc.stderr
    assert "is not a Windows layer: no kernel symbols looked for" in proc.stderr
    assert WINDBG_NOTE in proc.stdout


def test_failed_export_leaves_no_partial_file(small_evidence, tmp_path, capsys):
    out = tmp_path / "vp9.dmp"
    code, _ = cli(str(small_evidence), "--format", "dmp", "--vp", "9", "-o", str(out))
    err = capsys.readouterr().err
    assert code == 2 and err == "vmrs export: error: no virtual processor 9 (the file has [0, 1])\n"
    assert not out.exists()
    code, _ = cli(str(small_evidence), "--format", "elf", "--vp", "1", "-o", str(out))
    err = capsys.readouterr().err
    assert code == 2 and "crash dump only" in err and not out.exists()


def test_elf_core_of_a_32_bit_guest(tmp_path):
    guest = windows_guest(PAGING_MODE.Paging_Pae)
    source = tmp_path / "pae.vmrs"
    source.write_bytes(guest.data)
    path = tmp_path / "pae.elf"
    with SavedStateDump(str(source)) as opened:
        export_to_path(opened, "elf", str(path), inputs=[str(source)])
    with open(path, "rb") as handle:
        core = ELFFile(handle)
        assert core.elfclass == 64 and core["e_machine"] == "EM_386"
        notes = list(next(core.iter_segments()).iter_notes())
    assert [n["n_type"] for n in notes] == ["NT_PRSTATUS"] * len(guest.registers)
    for index, (note, regs) in enumerate(zip(notes, guest.registers)):
        desc = note["n_desc"]
        desc = desc if isinstance(desc, bytes) else desc.encode("latin-1")
        assert len(desc) == 144 and struct.unpack_from("<i", desc, 24)[0] == index + 1
        # i386 user_regs_struct at 72: ebx ecx edx esi edi ebp eax ... eip=12 cs eflags esp=15
        words = struct.unpack_from("<17I", desc, 72)
        truth = regs[0]
        assert (words[6], words[12], words[15]) == (
            truth["rax"] & 0xFFFFFFFF,
            truth["rip"] & 0xFFFFFFFF,
            truth["rsp"] & 0xFFFFFFFF,
        )


def test_plugin_refuses_a_file_without_guest_memory(sample_paths):
    from fuzz.plugin_harness import run_pack_plugin
    from volatility3_vmrs.refusal import PluginRefusal

    outcome = run_pack_plugin(sample_paths["dissect-test.vmcx"], "vmrs.export.Export")
    assert isinstance(outcome.error, PluginRefusal), repr(outcome.error)
    assert "\n" not in str(outcome.error)


def test_no_kernel_copy_when_the_replay_log_is_applied_in_memory(tmp_path):
    from tests.test_forensic import pending_replay_guest

    source = tmp_path / "pending.vmrs"
    source.write_bytes(pending_replay_guest())
    path = tmp_path / "pending.raw"
    with SavedStateDump(str(source)) as opened:
        result = export_to_path(opened, "raw", str(path), inputs=[str(source)])
        assert result.kernel_copied == 0
        size = sum(length for _, length in ranges_of(opened))
        assert path.read_bytes()[:size] == opened.read_physical(0, size)
