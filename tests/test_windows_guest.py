"""The stock Volatility 3 Windows plugins, end to end, on a saved Windows guest.

The guest (:mod:`tests.support.windows_guest`) is a synthetic Windows 10 build 19041.329
x64 kernel laid out by that kernel's real ISF; each variant is written as a ``.vmrs``
and the installed, unmodified ``vol`` runs on it with ``-s tests/data/symbols``, so
Volatility's own PDB scan finds the kernel and picks the ISF. Every plugin's output must
be exactly the builder's truth. Variants:

* ``raw``: raw RamBlocks; VP 0 in kernel mode, VP 1 in user mode on the KVA-shadow
  user CR3;
* ``xpress``: XPRESS RamBlocks; VP 0 is the user-mode one, so the layer must pass over
  it and take VP 1's kernel CR3;
* ``bad_cr3``: the kernel-mode VP's CR3 points at a zero page, so the layer publishes no
  DTB and Volatility's own self-reference search has to find it;
* ``user_only``: XPRESS; a single VP, in user mode on the KVA-shadow CR3 (no
  self-reference): the layer falls back to it, rejects its CR3, and Volatility searches;
* ``kdbg_encoded``: the debugger data block encoded, so Volatility finds the kernel by
  scanning the kernel half for the RSDS record instead of through the KDBG;
* ``user_process``: a single VP in user mode without KVA shadowing, on cmd.exe's own
  PML4: that passes the layer's check, so the layer publishes a process's DTB (not
  System's); the kernel half is shared, so the plugins still return the truth.
"""

from __future__ import annotations

import datetime
import json
import lzma
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List

import pefile
import pytest
import volatility3.framework.automagic  # noqa: F401  (the stock OS stackers)
from volatility3 import framework
from volatility3.framework import contexts
from volatility3.framework.automagic import stacker
from volatility3.framework.layers import intel, physical

import volatility3_vmrs.layers  # noqa: F401  (one import registers the stacker)
from tests.support import windows_vmrs as V
from tests.support.vol import flatten, run_vol, vol_json
from tests.support.windows_content import KERNEL_BASE, SIZE_OF_IMAGE
from tests.support.windows_guest import KERNEL_DTB_GPA, KUSER_KERNEL_VA, KUSER_USER_VA, WindowsGuest
from tests.support.windows_isf import SYMBOLS
from volatility3_vmrs.layers.vmrs import VmrsLayer, check_windows_dtb
from volatility3_vmrs.savedstate import SavedStateDump
from volatility3_vmrs.savedstate.errors import VaNotMappedError
from volatility3_vmrs.savedstate.types import PAGING_MODE

REPO = Path(__file__).resolve().parent.parent
SYMBOL_DIR = REPO / "tests" / "data" / "symbols"
VARIANTS = tuple(V.VARIANTS)
# Every plugin runs on the variants that differ in what the plugins read through the
# layer (raw and XPRESS blocks, the DTB published or searched); the others differ only
# in how the kernel and its DTB are found (a lone user-mode VP, an encoded KDBG, a
# process's DTB), so they run windows.info and windows.pslist, to keep vol runs few.
ALL_PLUGINS_ON = ("raw", "xpress", "bad_cr3")
KERNEL_FINDING = ("windows.info", "windows.pslist")


def variants_for(plugin: str) -> tuple:
    return VARIANTS if plugin in KERNEL_FINDING else ALL_PLUGINS_ON


# Volatility renders kernel pointers through the 48-bit address mask of its x64 layer.
ADDRESS_MASK = (1 << 48) - 1

framework.import_files(sys.modules["volatility3.framework.layers"])
framework.import_files(sys.modules["volatility3.framework.automagic"])


@pytest.fixture(scope="session")
def guests() -> Dict[bool, WindowsGuest]:
    """The guests, built once each: keyed by whether the KDBG is encoded."""
    return {}


@pytest.fixture(scope="session")
def guest(guests: Dict[bool, WindowsGuest]) -> WindowsGuest:
    return V.guest_for("raw", guests)


@pytest.fixture(scope="session")
def guest_of(guests: Dict[bool, WindowsGuest]):
    """The guest behind a variant's file."""
    return lambda variant: V.guest_for(variant, guests)


@pytest.fixture(scope="session")
def vmrs_files(guests: Dict[bool, WindowsGuest], tmp_path_factory) -> Dict[str, Path]:
    directory = tmp_path_factory.mktemp("windows_guest")
    paths = {}
    for variant in VARIANTS:
        path = directory / f"windows-19041-{variant}.vmrs"
        path.write_bytes(V.vmrs_bytes(V.guest_for(variant, guests), variant))
        paths[variant] = path
    return paths


@pytest.fixture(scope="session")
def run(vmrs_files: Dict[str, Path], vol_cache: Path):
    def run_plugin(variant: str, plugin: str) -> List[Dict[str, Any]]:
        args = ["-s", str(SYMBOL_DIR), "-f", str(vmrs_files[variant]), plugin]
        return vol_json(args, cache=vol_cache, timeout=300)

    return run_plugin


def expected_dtb(guest: WindowsGuest, variant: str) -> int:
    if variant == "user_process":
        return guest.process_dtbs[V.SHADOWED_PID]
    return guest.kernel_dtb


def time_of(moment: datetime.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def processes(guest: WindowsGuest, *, listed_only: bool) -> List[Dict[str, Any]]:
    return [p for p in guest.truth["processes"] if p["listed"] or not listed_only]


def process_rows(rows: List[Dict[str, Any]]) -> List[tuple]:
    return [
        (
            row["PID"],
            row["PPID"],
            row["ImageFileName"],
            row["CreateTime"],
            row["ExitTime"],
            row["Threads"],
            row["SessionId"],
            row["Wow64"],
        )
        for row in rows
    ]


def expected_process_rows(truth: List[Dict[str, Any]]) -> List[tuple]:
    return [
        (
            p["pid"],
            p["ppid"],
            p["name"],
            time_of(p["create_time"]),
            time_of(p["exit_time"]),
            p["threads"],
            p["session"],
            False,
        )
        for p in truth
    ]


# --- the guest itself, without Volatility ------------------------------------------------
def test_kernel_image_carries_the_isf_codeview_record(vmrs_files: Dict[str, Path]) -> None:
    """pefile (an independent PE parser) reads the kernel's headers through the saved
    kernel CR3 and finds the CodeView record that names the ISF."""
    with SavedStateDump(str(vmrs_files["raw"])) as dump:
        image = b""
        for page in range(0, 0x2000, 0x1000):
            gpa = dump.virtual_to_physical(0, KERNEL_BASE + page)
            image += dump.read_physical(gpa, 0x1000)
    pe = pefile.PE(data=image, fast_load=True)
    pe.parse_data_directories([pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_DEBUG"]])
    assert pe.FILE_HEADER.Machine == 0x8664
    assert pe.OPTIONAL_HEADER.ImageBase == KERNEL_BASE
    codeview = pe.DIRECTORY_ENTRY_DEBUG[0].entry
    pdb = SYMBOLS.kernel.pdb
    assert codeview.CvSignature == b"RSDS"
    assert codeview.PdbFileName.rstrip(b"\0") == b"ntkrnlmp.pdb" == pdb["database"].encode()
    guid = uuid.UUID(
        fields=(
            codeview.Signature_Data1,
            codeview.Signature_Data2,
            codeview.Signature_Data3,
            codeview.Signature_Data4,
            codeview.Signature_Data5,
            int.from_bytes(codeview.Signature_Data6, "big"),
        )
    )
    assert guid.hex.upper() == pdb["GUID"] == "BBED7C2955FBE4522AAA23F4B8677AD9"
    assert codeview.Age == pdb["age"] == 1


def test_memory_image_is_the_saved_memory(vmrs_files: Dict[str, Path]) -> None:
    """The plain image (for a legacy .bin) is byte for byte the RAM of the .vmrs."""
    ranges, truth = V.memory_image()
    assert truth["dtb"] == KERNEL_DTB_GPA and len(truth["processes"]) == 5
    with SavedStateDump(str(vmrs_files["xpress"])) as dump:
        page_size, chunks = dump.memory_chunks()
        assert [
            (c.GuestPhysicalStartPageIndex * page_size, c.PageCount * page_size) for c in chunks
        ] == [(gpa, len(data)) for gpa, data in ranges]
        for gpa, data in ranges:
            assert dump.read_physical(gpa, len(data)) == data


def test_address_spaces(guest: WindowsGuest, vmrs_files: Dict[str, Path]) -> None:
    """Kernel PML4: one self-reference; the KVA-shadow user PML4: none, the user half of
    its process, and of the kernel only KUSER_SHARED_DATA and the system-call page."""
    with SavedStateDump(str(vmrs_files["raw"])) as dump:
        read = dump.read_physical
        assert check_windows_dtb(read, PAGING_MODE.Paging_Long, guest.kernel_dtb) is None
        problem = check_windows_dtb(read, PAGING_MODE.Paging_Long, guest.shadow_dtb)
        assert problem and "self-referencing" in problem
        user = dump.registers(1, 0)
        assert user.cpl == 3 and user.dtb == guest.shadow_dtb
        kernel = dump.registers(0, 0)
        assert kernel.cpl == 0 and kernel.dtb == guest.kernel_dtb
        kuser = dump.virtual_to_physical(0, KUSER_KERNEL_VA)
        assert dump.virtual_to_physical(1, KUSER_KERNEL_VA) == kuser
        assert dump.virtual_to_physical(1, KUSER_USER_VA) == kuser
        syscall = KERNEL_BASE + SYMBOLS.kernel.symbol("KiSystemCall64Shadow")
        assert dump.virtual_to_physical(1, syscall) == dump.virtual_to_physical(0, syscall)
        assert dump.translate(0, KERNEL_BASE).gpa is not None
        with pytest.raises(VaNotMappedError):
            dump.virtual_to_physical(1, KERNEL_BASE)


# --- the layer's DTB and Volatility's own search ----------------------------------------
def stacked(path: Path):
    context = contexts.Context()
    context.config["FileLayer.location"] = path.resolve().as_uri()
    context.add_layer(physical.FileLayer(context, "FileLayer", "FileLayer"))
    names = stacker.LayerStacker.stack_layer(context, "FileLayer")
    layers = [context.layers[name] for name in names]
    vmrs = [layer for layer in layers if isinstance(layer, VmrsLayer)]
    windows = [layer for layer in layers if isinstance(layer, intel.WindowsIntel32e)]
    assert len(vmrs) == 1 and len(windows) == 1, names
    return vmrs[0], windows[0]


@pytest.mark.parametrize(
    "variant, vp, published",
    [
        ("raw", 0, True),
        ("xpress", 1, True),
        ("bad_cr3", 0, False),
        ("user_only", 0, False),
        ("user_process", 0, True),
    ],
)
def test_layer_publishes_the_kernel_cr3_or_nothing(
    guest_of, vmrs_files: Dict[str, Path], variant: str, vp: int, published: bool
) -> None:
    guest = guest_of(variant)
    vmrs, windows = stacked(vmrs_files[variant])
    assert vmrs.vp_index == vp  # the kernel-mode VP, never the user-mode one
    dtb = expected_dtb(guest, variant)
    if published:
        assert vmrs.metadata["page_map_offset"] == dtb
    else:
        assert "page_map_offset" not in vmrs.metadata
        assert "not published" in vmrs.dtb_note
    # Either way the Windows layer stands on a PML4 that maps the kernel: System's
    # (published or searched), or the process's when the layer published that.
    assert windows.config["page_map_offset"] == dtb


def test_published_and_searched_dtb_agree(guest: WindowsGuest, run) -> None:
    published = {row["Variable"]: row["Value"] for row in run("raw", "windows.info")}
    for variant in ("bad_cr3", "user_only"):
        searched = {row["Variable"]: row["Value"] for row in run(variant, "windows.info")}
        assert published["DTB"] == searched["DTB"] == hex(guest.kernel_dtb)


# --- the stock plugins -----------------------------------------------------------------
@pytest.mark.parametrize("variant", variants_for("windows.info"))
def test_info(guest_of, run, variant: str) -> None:
    guest = guest_of(variant)
    rows = {row["Variable"]: row["Value"] for row in run(variant, "windows.info")}
    truth = guest.truth
    kernel = SYMBOLS.kernel
    assert rows["Kernel Base"] == hex(KERNEL_BASE & ADDRESS_MASK)
    assert rows["DTB"] == hex(expected_dtb(guest, variant))
    assert rows["Symbols"].endswith(
        "/windows/ntkrnlmp.pdb/BBED7C2955FBE4522AAA23F4B8677AD9-1.json.xz"
    )
    assert rows["Is64Bit"] == "True" and rows["IsPAE"] == "False"
    assert rows["memory_layer"] == "1 VmrsLayer"
    if V.VARIANTS[variant].encode_kdbg:
        # Found by Volatility's scan of the kernel half for the RSDS record; the plugin
        # does not decode the block, so it prints none of its fields.
        assert not {"KdDebuggerDataBlock", "NTBuildLab", "CSDVersion"} & set(rows)
    else:
        block = (KERNEL_BASE + kernel.symbol("KdDebuggerDataBlock")) & ADDRESS_MASK
        assert rows["KdDebuggerDataBlock"] == hex(block)
        assert rows["NTBuildLab"] == truth["build_lab"][:32]  # the plugin reads 32 chars
        assert rows["CSDVersion"] == "0"
    version = (KERNEL_BASE + kernel.symbol("KdVersionBlock")) & ADDRESS_MASK
    assert rows["KdVersionBlock"] == hex(version)
    assert rows["Major/Minor"] == truth["major_minor"]
    assert rows["MachineType"] == "34404"
    assert rows["KeNumberProcessors"] == str(truth["cpu_count"])
    assert rows["SystemTime"] == str(truth["system_time"])
    assert rows["NtSystemRoot"] == truth["system_root"]
    assert rows["NtProductType"] == "NtProductWinNt"
    assert (rows["NtMajorVersion"], rows["NtMinorVersion"]) == ("10", "0")
    assert rows["PE MajorOperatingSystemVersion"] == "10"
    assert rows["PE Machine"] == "34404"
    assert rows["PE TimeDateStamp"] == time.asctime(time.gmtime(truth["pe_timestamp"]))


@pytest.mark.parametrize("variant", variants_for("windows.pslist"))
def test_pslist(guest_of, run, variant: str) -> None:
    guest = guest_of(variant)
    rows = run(variant, "windows.pslist")
    assert process_rows(rows) == expected_process_rows(processes(guest, listed_only=True))


@pytest.mark.parametrize("variant", variants_for("windows.psscan"))
def test_psscan_finds_the_exited_process_too(guest_of, run, variant: str) -> None:
    guest = guest_of(variant)
    rows = sorted(process_rows(run(variant, "windows.psscan")))
    assert rows == sorted(expected_process_rows(processes(guest, listed_only=False)))
    exited = [p["pid"] for p in guest.truth["processes"] if not p["listed"]]
    listed = {row["PID"] for row in run(variant, "windows.pslist")}
    assert exited and not listed & set(exited)


@pytest.mark.parametrize("variant", variants_for("windows.pstree"))
def test_pstree(guest_of, run, variant: str) -> None:
    guest = guest_of(variant)

    def shape(rows: List[Dict[str, Any]]) -> List[Any]:
        return [
            (row["PID"], row["Audit"], row["Cmd"], row["Path"], shape(row["__children"]))
            for row in rows
        ]

    truth = processes(guest, listed_only=True)
    pids = {p["pid"] for p in truth}

    def expected(parent_of: int) -> List[Any]:
        return [
            (p["pid"], p["audit_path"], p["command_line"], p["image_path"], expected(p["pid"]))
            for p in truth
            if p["ppid"] == parent_of
        ]

    roots = [p for p in truth if p["ppid"] not in pids]
    want = [
        (p["pid"], p["audit_path"], p["command_line"], p["image_path"], expected(p["pid"]))
        for p in roots
    ]
    rows = run(variant, "windows.pstree")
    assert shape(rows) == want
    assert len(flatten(rows)) == len(truth)


@pytest.mark.parametrize("variant", variants_for("windows.cmdline"))
def test_cmdline(guest_of, run, variant: str) -> None:
    guest = guest_of(variant)
    rows = run(variant, "windows.cmdline")
    got = [(row["PID"], row["Process"], row["Args"]) for row in rows]
    want = [(p["pid"], p["name"], p["command_line"]) for p in processes(guest, listed_only=True)]
    assert got == want


@pytest.mark.parametrize("variant", variants_for("windows.dlllist"))
def test_dlllist(guest_of, run, variant: str) -> None:
    guest = guest_of(variant)
    rows = run(variant, "windows.dlllist")
    got = [(r["PID"], r["Base"], r["Size"], r["Name"], r["Path"], r["LoadTime"]) for r in rows]
    want = [
        (p["pid"], base, size, name, path, time_of(p["create_time"]))
        for p in processes(guest, listed_only=True)
        for base, size, name, path in p["dlls"]
    ]
    assert got == want


@pytest.mark.parametrize("variant", variants_for("windows.modules"))
def test_modules(guest_of, run, variant: str) -> None:
    guest = guest_of(variant)
    rows = run(variant, "windows.modules")
    got = [(r["Base"], r["Size"], r["Name"], r["Path"]) for r in rows]
    want = [
        (m["base"] & ADDRESS_MASK, m["size"], m["name"], m["path"]) for m in guest.truth["modules"]
    ]
    assert got == want


@pytest.mark.parametrize("variant", variants_for("windows.driverscan"))
def test_driverscan_decodes_cookie_encoded_type_indices(guest_of, run, variant: str) -> None:
    """driverscan keeps a pool block only when its object header's TypeIndex, decoded
    with ObHeaderCookie and the header address, names the Driver type; the name comes
    from the optional name header found through ObpInfoMaskToOffset."""
    guest = guest_of(variant)
    rows = run(variant, "windows.driverscan")
    got = sorted(
        (r["Start"], r["Size"], r["Service Key"], r["Driver Name"], r["Name"]) for r in rows
    )
    want = sorted(
        (d["base"] & ADDRESS_MASK, d["size"], d["service_key"], d["name"], d["path"])
        for d in guest.truth["drivers"]
    )
    assert got == want


def test_pack_pescan_names_the_kernel_pdb(guest: WindowsGuest, run) -> None:
    """The pack's own vmrs.pescan finds the kernel image with the PDB the ISF is for."""
    rows = [row for row in run("raw", "vmrs.pescan") if row["PDB name"] == "ntkrnlmp.pdb"]
    assert len(rows) == 1
    (row,) = rows
    pdb = SYMBOLS.kernel.pdb
    assert row["PDB GUID"].replace("-", "") == pdb["GUID"] and row["PDB age"] == pdb["age"]
    assert row["Machine"] == "AMD64" and row["Image size"] == SIZE_OF_IMAGE
    assert row["Timestamp"] == guest.truth["pe_timestamp"]


# --- the crash dump of issue "[export]", checked on this guest --------------------------
KERNEL_ISF = SYMBOL_DIR / "windows" / "ntkrnlmp.pdb" / "BBED7C2955FBE4522AAA23F4B8677AD9-1.json.xz"
PDB_SCAN_LOG = "Kernel base determination"  # what Volatility's PDB scan logs at -vv


def kernel_symbol(name: str) -> int:
    return KERNEL_BASE + SYMBOLS.kernel.symbol(name)


def check_crash_dump(path: Path, vmrs: Path, guest: WindowsGuest) -> None:
    """kdmp-parser reads the WinDbg fields of the kernel's symbols, the KDBG in clear
    (the block the builder encoded, found at its physical address through the kernel
    DTB) and KdpDataBlockEncoded 0; every other byte of every page is the .vmrs's."""
    import kdmp_parser

    parsed = kdmp_parser.KernelDumpParser(path)  # kept alive: its views point into it
    header = parsed.header
    assert header.DirectoryTableBase & ~0xFFF == guest.kernel_dtb
    assert header.KdDebuggerDataBlock == kernel_symbol("KdDebuggerDataBlock")
    assert header.PsActiveProcessHead == kernel_symbol("PsActiveProcessHead")
    assert header.PsLoadedModuleList == kernel_symbol("PsLoadedModuleList")
    with SavedStateDump(str(vmrs)) as dump:
        expected: Dict[int, bytearray] = {}
        page_size, chunks = dump.memory_chunks()
        for chunk in chunks:
            for index in range(chunk.start_page, chunk.start_page + chunk.page_count):
                expected[index * page_size] = bytearray(
                    dump.read_physical(index * page_size, 0x1000)
                )
        block, plain = kernel_symbol("KdDebuggerDataBlock"), guest.kdbg_plain
        assert len(plain) == 0x340 and plain[16:20] == b"KDBG"
        kdbg = b""
        for at in range(0, len(plain), 8):  # the block spans pages: one GPA per 8 bytes
            gpa = dump.virtual_to_physical(0, block + at)
            kdbg += parsed.read_physical_page(gpa & ~0xFFF)[gpa & 0xFFF :][:8]
            expected[gpa & ~0xFFF][gpa & 0xFFF : (gpa & 0xFFF) + 8] = plain[at : at + 8]
        assert kdbg == plain
        if guest.truth["kdbg_encoded"]:
            flag = dump.virtual_to_physical(0, kernel_symbol("KdpDataBlockEncoded"))
            assert expected[flag & ~0xFFF][flag & 0xFFF] == 1  # the saved state's
            assert parsed.read_physical_page(flag & ~0xFFF)[flag & 0xFFF] == 0
            expected[flag & ~0xFFF][flag & 0xFFF] = 0
    assert sorted(parsed.pages.keys()) == sorted(expected)
    for gpa, page in expected.items():
        assert parsed.read_physical_page(gpa) == bytes(page), hex(gpa)


@pytest.mark.parametrize("variant", ["raw", "kdbg_encoded"])
def test_crash_dump_of_the_guest_is_read_by_volatility_and_kdmp_parser(
    guest_of, vmrs_files: Dict[str, Path], vol_cache: Path, tmp_path: Path, variant: str
) -> None:
    """vmrs.export finds the kernel as Volatility's automagic does and fills the WinDbg
    fields; an encoded KDBG is written decoded, so the stock windows.info on the dump
    reads it (it reads none of it on the .vmrs of an encoded guest)."""
    guest = guest_of(variant)
    out = tmp_path / "dmp"
    out.mkdir()
    args = ["-vv", "-s", str(SYMBOL_DIR), "-o", str(out), "-f", str(vmrs_files[variant])]
    proc = run_vol(["-r", "json", *args, "vmrs.export", "--format", "dmp"], cache=vol_cache)
    assert PDB_SCAN_LOG in proc.stderr
    (row,) = json.loads(proc.stdout[proc.stdout.index("[") :])
    decoded = "KdDebuggerDataBlock at 0xfffff8005ae00b20 decoded (0x340 bytes)"
    assert (decoded in row["Notes"]) == guest.truth["kdbg_encoded"]
    (dump_path,) = out.glob("*.dmp")
    check_crash_dump(dump_path, vmrs_files[variant], guest)
    # The stock plugins on the dump (Volatility's own crash-dump layer and kernel search).
    on_dump = ["-s", str(SYMBOL_DIR), "-f", str(dump_path)]
    info = {
        row["Variable"]: row["Value"]
        for row in vol_json([*on_dump, "windows.info"], cache=vol_cache)
    }
    assert info["KdDebuggerDataBlock"] == hex(kernel_symbol("KdDebuggerDataBlock") & ADDRESS_MASK)
    assert info["NTBuildLab"] == guest.truth["build_lab"][:32]
    if variant == "raw":
        rows = vol_json([*on_dump, "windows.pslist"], cache=vol_cache)
        assert process_rows(rows) == expected_process_rows(processes(guest, listed_only=True))


def test_export_to_other_formats_runs_no_pdb_scan(
    vmrs_files: Dict[str, Path], vol_cache: Path, tmp_path: Path
) -> None:
    """Only a crash dump has fields for the kernel's symbols: a raw export never pays
    Volatility's PDB scan (the dmp test above shows the scan's log line appears)."""
    args = ["-vv", "-s", str(SYMBOL_DIR), "-o", str(tmp_path), "-f", str(vmrs_files["raw"])]
    proc = run_vol([*args, "vmrs.export", "--format", "raw"], cache=vol_cache)
    assert PDB_SCAN_LOG not in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["windows-19041-raw.raw"]


def test_a_kdbg_that_does_not_decode_is_copied_as_saved(
    vmrs_files: Dict[str, Path], tmp_path: Path
) -> None:
    """Keys that do not fit (here KiWaitNever and KiWaitAlways swapped, as symbols of
    another build would give) decode a header without the KDBG tag: the block is left
    as the guest holds it, the dump's memory is the saved memory, and a note says so."""
    from volatility3_vmrs.export import KernelAddresses, export

    wrong = KernelAddresses(
        *(kernel_symbol(name) for name in ("KdDebuggerDataBlock", "PsActiveProcessHead")),
        kernel_symbol("PsLoadedModuleList"),
        kernel_symbol("KdpDataBlockEncoded"),
        ki_wait_never=kernel_symbol("KiWaitAlways"),
        ki_wait_always=kernel_symbol("KiWaitNever"),
    )
    path = tmp_path / "wrong.dmp"
    with SavedStateDump(str(vmrs_files["kdbg_encoded"])) as dump, open(path, "xb") as handle:
        result = export(dump, "dmp", handle, kernel=wrong)
        saved = dump.read_physical(0, 0xC00000)
    block = kernel_symbol("KdDebuggerDataBlock")
    (note,) = result.notes
    assert note.startswith(f"KdDebuggerDataBlock at {block:#x} left as the guest holds it: ")
    assert note.endswith("not b'KDBG'; the symbols may not be this kernel's")
    assert path.read_bytes()[0x2000 : 0x2000 + len(saved)] == saved  # the first run: GPA 0


def vmrs_command(*args: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("vmrs")), "export", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("variant", ["kdbg_encoded", "xpress"])
def test_export_command_takes_the_kernel_isf(
    guest_of, vmrs_files: Dict[str, Path], tmp_path: Path, variant: str
) -> None:
    """``vmrs export --symbols ISF`` finds the kernel from the ISF alone (xpress: VP 0
    runs on the KVA-shadow CR3, so VP 1's page tables are the ones that map it)."""
    out = tmp_path / "cli.dmp"
    proc = vmrs_command(
        str(vmrs_files[variant]), "--format", "dmp", "--symbols", str(KERNEL_ISF), "-o", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    vp = 1 if variant == "xpress" else 0
    kernel = f"ntkrnlmp.pdb BBED7C2955FBE4522AAA23F4B8677AD9-1 at {KERNEL_BASE:#x}"
    assert f"note: kernel {kernel} (page tables of VP {vp})" in proc.stdout
    if variant == "kdbg_encoded":
        check_crash_dump(out, vmrs_files[variant], guest_of(variant))
    else:
        import kdmp_parser

        parsed = kdmp_parser.KernelDumpParser(out)  # kept alive: its views point into it
        assert parsed.header.PsLoadedModuleList == kernel_symbol("PsLoadedModuleList")
        # By default the dump takes the kernel-mode VP 1: VP 0's user CR3 maps no kernel.
        assert parsed.header.DirectoryTableBase & ~0xFFF == guest_of(variant).kernel_dtb


def test_export_command_refuses_an_isf_of_another_kernel(
    vmrs_files: Dict[str, Path], tmp_path: Path
) -> None:
    with lzma.open(KERNEL_ISF, "rt") as handle:
        document = json.load(handle)
    document["metadata"]["windows"]["pdb"]["GUID"] = "0123456789ABCDEF0123456789ABCDEF"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(document))
    out = tmp_path / "refused.dmp"
    proc = vmrs_command(
        str(vmrs_files["raw"]), "--format", "dmp", "--symbols", str(other), "-o", str(out)
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        f"vmrs export: error: {other} is for ntkrnlmp.pdb 0123456789ABCDEF0123456789ABCDEF-1, "
        f"but the guest's kernel is ntkrnlmp.pdb BBED7C2955FBE4522AAA23F4B8677AD9-1 at "
        f"{KERNEL_BASE:#x}: give the ISF of that kernel\n"
    )
    assert not out.exists()


# --- the same memory as a legacy .bin (issue "[legacy]"): no registers at all ----------
def test_the_memory_as_a_legacy_bin_runs_through_volatilitys_own_dtb_search(
    vol_cache: Path, tmp_path: Path
) -> None:
    from tests.support.legacy_writer import Entry, block_name, build_bin
    from tests.support.savedstate_writer import encode_block

    mib = 1 << 20
    ranges, truth = V.memory_image()
    entries = []
    for gpa, data in ranges:
        assert gpa % mib == 0
        for start in range(0, len(data), mib):
            block = data[start : start + mib].ljust(mib, b"\0")
            entries.append(Entry(block_name((gpa + start) // mib), encode_block(block)[0]))
    path = tmp_path / "windows-19041.bin"
    path.write_bytes(build_bin(entries))
    listed = [p for p in truth["processes"] if p["listed"]]
    rows = vol_json(["-s", str(SYMBOL_DIR), "-f", str(path), "windows.pslist"], cache=vol_cache)
    assert process_rows(rows) == expected_process_rows(listed)
    info = {
        row["Variable"]: row["Value"]
        for row in vol_json(
            ["-s", str(SYMBOL_DIR), "-f", str(path), "windows.info"], cache=vol_cache
        )
    }
    assert int(info["Kernel Base"], 16) == KERNEL_BASE & 0xFFFF_FFFF_FFFF  # shown 48-bit
