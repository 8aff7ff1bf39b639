"""What a new analyst meets in the first hour (issue "[first-hour]").

The stock ``vol`` runs here are started together (a few at a time) and shared by the
tests: refusals end with the pack's one line and no Volatility "file a bug" text;
``vmrs.info`` says what it has not checked and finds damaged pages with ``--verify``;
``--parallelism threads`` is called out. The rest runs in-process: canonical addresses
in 4- and 5-level terms, natural key order, absent link times, the XPRESS fallback
note, and the repository's own files (the demo script, .gitignore, README).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import logging
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from tests.support.guests import windows_guest
from tests.support.pagetables import PageTableBuilder
from tests.support.partition_writer import (
    PartitionDescription,
    VpDescription,
    VtlDescription,
    build_partition_state,
    random_registers,
)
from tests.support.plugin_runner import VolResult, run_vol
from tests.support.savedstate_writer import SavedStateWriter
from tests.support.schemas import check_rows
from volatility3_vmrs.savedstate import xpress
from volatility3_vmrs.savedstate.memory import KIND_XPRESS
from volatility3_vmrs.savedstate.provider import SavedStateDump
from volatility3_vmrs.savedstate.types import PAGING_MODE

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "malformed"
PREFIX = "volatility3-vmrs: "
NOT_A_VMRS = (
    PREFIX + "this plugin reads Hyper-V saved-state files (.vmrs, .vmcx, .bin); the file "
    "given is not one (it has no HyperVStorage header)"
)
VOLATILITY_BLAME = ("file a bug", "faulty layer", "unexpected situation", "Traceback")
THREADS_LINE = (
    "--parallelism threads is broken in this Volatility (its scanner asks the threading "
    "module for a Pool): every scan returns nothing; use --parallelism processes or off"
)
X64_NAMES = (
    "Rax Rcx Rdx Rbx Rsp Rbp Rsi Rdi R8 R9 R10 R11 R12 R13 R14 R15 Rip RFlags "
    + " ".join(f"LowXmm{i} HighXmm{i}" for i in range(16))
    + " LowXmmControlStatus HighXmmControlStatus LowFpControlStatus HighFpControlStatus"
    " Cr0 Cr2 Cr3 Cr4 Cr8 Efer Dr0 Dr1 Dr2 Dr3 Dr6 Dr7 BaseGs BaseFs SegCs SegDs SegEs"
    " SegFs SegGs SegSs Tr Ldtr BaseIdtr LimitIdtr BaseGdtr LimitGdtr "
    + " ".join(f"FpMmx{i}" for i in range(8))
    + " Xcr0 KernelGsBase"
).split()


# --- files ---------------------------------------------------------------------------------
def flip_xpress_record(data: bytes) -> Tuple[bytes, int]:
    """A copy whose first XPRESS record in a block the stacker never reads is broken.

    The record's first bytes become 0xff: a flag word of all matches whose first match
    reaches 8 KiB before the start of the output, which no decoder accepts. Returns the
    copy and the number of pages the record covers.
    """
    with SavedStateDump(io.BytesIO(data)) as dump:
        memory = dump.memory
        for number, location in sorted(memory.map.blocks.items(), reverse=True):
            if location.is_raw:
                continue
            index = memory.block(number).index()
            records = [i for i in range(len(index)) if index.kind[i] == KIND_XPRESS]
            if records:
                record = records[0]
                at = location.offset + index.source[record]
                pages = index.out_length[record] // 0x1000
                break
        else:
            raise AssertionError("the guest has no XPRESS record")
    image = bytearray(data)
    image[at : at + 6] = b"\xff" * 6
    return bytes(image), pages


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("first-hour")


@pytest.fixture(scope="module")
def guest_files(workdir) -> Dict[str, Path]:
    guest = windows_guest(PAGING_MODE.Paging_Long, vtls=(0, 1), compression="xpress")
    flipped, pages = flip_xpress_record(guest.data)
    files = {"long": guest.data, "flipped": flipped}
    files["not-a-vmrs"] = random.Random(1).randbytes(0x200000)
    for name in ("truncated-header", "value-length-4gb", "unknown-format-version"):
        files[name] = gzip.decompress((CORPUS / f"{name}.vmrs.gz").read_bytes())
    paths = {}
    for name, content in files.items():
        paths[name] = workdir / f"{name}.vmrs"
        paths[name].write_bytes(content)
    paths["flipped-pages"] = pages  # type: ignore[assignment]
    return paths


# --- the vol runs, started together ----------------------------------------------------------
RUNS: Dict[str, Tuple[str, Tuple[str, ...], Tuple[str, ...], str]] = {
    # name: (file, plugin and args, global args, renderer)
    "vp 5": ("long", ("vmrs.registers", "--vp", "5"), (), "json"),
    "register bogus": ("long", ("vmrs.registers", "--register", "bogus"), (), "json"),
    "vtl 2": ("long", ("vmrs.registers", "--vtl", "2"), (), "json"),
    "no address": ("long", ("vmrs.vtop",), (), "json"),
    "bad address": ("long", ("vmrs.vtop", "--address", "fffg"), (), "json"),
    "address without 0x": ("long", ("vmrs.vtop", "--address", "fffff80000010000"), (), "json"),
    "non-canonical": ("long", ("vmrs.vtop", "--address", "0x800000000000"), (), "json"),
    "vtop debug": (
        "long",
        ("vmrs.vtop", "--address", "fffff800`00010000"),
        ("-vvvv",),
        "quick",
    ),
    "info": ("flipped", ("vmrs.info",), (), "json"),
    "info verify": ("flipped", ("vmrs.info", "--verify", "--sha256"), (), "json"),
    "threads": ("long", ("vmrs.info",), ("--parallelism", "threads"), "json"),
    **{
        f"not-a-vmrs {plugin}": ("not-a-vmrs", (f"vmrs.{plugin}", *extra), (), "json")
        for plugin, extra in (
            ("info", ()),
            ("registers", ()),
            ("memmap", ()),
            ("keys", ()),
            ("pescan", ()),
            ("vtop", ("--address", "0x1000")),
            ("export", ("--format", "raw")),
        )
    },
    **{
        f"malformed {name} {plugin}": (name, (plugin,), (), "json")
        for name in ("truncated-header", "value-length-4gb", "unknown-format-version")
        for plugin in ("vmrs.info", "vmrs.memmap")
    },
}


@pytest.fixture(scope="module")
def vol_runs(guest_files, workdir) -> Dict[str, VolResult]:
    cache = workdir / "cache"
    cache.mkdir()
    # One run first fills the Volatility cache, so the parallel ones do not race on it.
    run_vol(cache, guest_files["long"], "vmrs.info")
    before = {
        name: hashlib.sha256(guest_files[name].read_bytes()).hexdigest()
        for name in ("long", "flipped")
    }

    def one(item):
        name, (file, args, global_args, renderer) = item
        return name, run_vol(
            cache, guest_files[file], *args, renderer=renderer, global_args=global_args
        )

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(pool.map(one, RUNS.items()))
    after = {name: hashlib.sha256(guest_files[name].read_bytes()).hexdigest() for name in before}
    assert after == before  # no run changed the evidence
    return results


def last_line(result: VolResult) -> str:
    assert result.returncode != 0, result.stdout[-2000:]
    for text in VOLATILITY_BLAME:
        assert text not in result.stderr, result.stderr[-3000:]
    return result.stderr.rstrip("\n").splitlines()[-1]


# --- item 4: refusals end with the pack's own line ---------------------------------------
@pytest.mark.parametrize(
    "run, expected",
    [
        ("vp 5", PREFIX + "no virtual processor 5 (the file has [0, 1])"),
        (
            "register bogus",
            PREFIX + "unknown register name(s) bogus; known: " + ", ".join(X64_NAMES),
        ),
        ("vtl 2", PREFIX + "no register state for VTL 2 in VP(s) [0, 1]"),
        ("no address", PREFIX + "--address is required: the guest-virtual address to translate"),
        (
            "bad address",
            PREFIX + "--address 'fffg' is not a hexadecimal address (give it as ffff8000... or "
            "0x...)",
        ),
    ],
)
def test_bad_options_end_with_the_packs_line(vol_runs, run, expected):
    assert last_line(vol_runs[run]) == expected


@pytest.mark.parametrize(
    "plugin", ["info", "registers", "memmap", "keys", "pescan", "vtop", "export"]
)
def test_a_file_that_is_not_a_vmrs_is_refused_in_one_line(vol_runs, plugin):
    result = vol_runs[f"not-a-vmrs {plugin}"]
    assert last_line(result) == NOT_A_VMRS
    assert result.stderr.count(PREFIX) == 1


@pytest.mark.parametrize(
    "name, reason",
    [
        ("truncated-header", "no valid HyperVStorage header"),
        ("value-length-4gb", "0xffffffff bytes needed but the file ends at 0xb000"),
        ("unknown-format-version", "unsupported format version 0x0300"),
    ],
)
def test_a_file_the_reader_rejects_ends_with_the_readers_reason(vol_runs, name, reason):
    for plugin in ("vmrs.info", "vmrs.memmap"):
        line = last_line(vol_runs[f"malformed {name} {plugin}"])
        assert line.startswith(PREFIX + "the Hyper-V saved state cannot be read: "), line
        assert reason in line


def test_vtop_accepts_hex_without_0x_and_logs_under_its_own_name(vol_runs):
    rows = check_rows("vtop", vol_runs["address without 0x"].json_rows())
    assert rows[-1]["Level"] == "GPA" and rows[-1]["Result"].startswith("0xfffff80000010000 -> ")
    debug = vol_runs["vtop debug"]
    assert debug.returncode == 0, debug.stderr[-3000:]
    assert "volatility3.plugins.vmrs.vtop: translating 0xfffff80000010000" in debug.stderr


# --- item 5: canonical addresses ------------------------------------------------------------
def test_vtop_calls_a_non_canonical_address_non_canonical(vol_runs):
    rows = check_rows("vtop", vol_runs["non-canonical"].json_rows())
    assert rows[-1]["Result"] == (
        "not mapped: 0x800000000000 is not canonical: bits 63:47 must all equal bit 47 "
        "(48-bit virtual addresses, 4-level paging)"
    )


def la57_guest() -> bytes:
    """A 5-level guest mapping the last low-half and the first high-half 57-bit pages."""
    builder = PageTableBuilder(PAGING_MODE.Paging_Long, table_base=0x100000, la57=True)
    builder.map(0x00FF_FFFF_FFFF_F000, 0x5000)
    builder.map(0xFF00_0000_0000_0000, 0x6000)
    ram = bytearray(0x400000)
    for pfn, page in builder.pages.items():
        ram[pfn * 0x1000 : (pfn + 1) * 0x1000] = page
    regs = random_registers(random.Random(3))
    regs.update(cr3=builder.cr3, cr0=0x80050033, cr4=0x000406F8 | 0x1000, efer=0xD01)
    blob = build_partition_state(
        PartitionDescription(vps=[VpDescription(0, {0: VtlDescription(regs)})])
    )
    return SavedStateWriter([(0, bytes(ram))], blob).build()[0]


@pytest.mark.parametrize(
    "levels, canonical, non_canonical",
    [
        # 4-level: 48-bit addresses, bits 63:47 equal bit 47.
        (
            4,
            (0x0000_7FFF_FFFF_FFFF, 0xFFFF_8000_0000_0000),
            (0x0000_8000_0000_0000, 0xFFFF_7FFF_FFFF_FFFF),
        ),
        # 5-level: 57-bit addresses, bits 63:56 equal bit 56.
        (
            5,
            (0x00FF_FFFF_FFFF_F123, 0xFF00_0000_0000_0123),
            (0x0100_0000_0000_0000, 0xFEFF_FFFF_FFFF_FFFF),
        ),
    ],
)
def test_both_sides_of_the_canonical_boundary(guest_files, levels, canonical, non_canonical):
    vtop = importlib.import_module("volatility3.plugins.vmrs.vtop")
    source = io.BytesIO(la57_guest()) if levels == 5 else guest_files["long"]
    with SavedStateDump(source) as dump:
        top = f"bits 63:{47 if levels == 4 else 56} must all equal bit {47 if levels == 4 else 56}"
        for va in canonical:
            rows = list(vtop.Vtop.rows(dump, 0, 0, va))
            assert rows[1][3] == ("PML5E" if levels == 5 else "PML4E")  # the walk began
            assert "canonical" not in rows[-1][-1], rows[-1]
        for va in non_canonical:
            rows = list(vtop.Vtop.rows(dump, 0, 0, va))
            assert [r[3] for r in rows] == ["CR3", "GPA"]  # no walk at all
            assert rows[-1][-1] == (
                f"not mapped: {va:#x} is not canonical: {top} "
                f"({48 if levels == 4 else 57}-bit virtual addresses, {levels}-level paging)"
            )
        if levels == 5:
            rows = list(vtop.Vtop.rows(dump, 0, 0, 0xFF00_0000_0000_0123))
            assert int(rows[-1][7]) == 0x6123


# --- item 2: what vmrs.info has checked -----------------------------------------------------
def test_info_says_ram_was_not_checked_and_verify_finds_the_bad_pages(vol_runs, guest_files):
    plain = {r["Field"]: r for r in check_rows("info", vol_runs["info"].json_rows())}
    assert plain["RAM pages verified"]["Flag"] is False
    assert "no checksum over RAM pages" in plain["RAM pages verified"]["Value"]
    assert "--verify" in plain["RAM pages verified"]["Value"]
    assert plain["Integrity problems found at open"]["Number"] == 0
    assert plain["Integrity problems found while reading"]["Number"] == 0
    assert plain["File size"]["Number"] == guest_files["flipped"].stat().st_size
    assert plain["File SHA-256"]["Value"].startswith("not computed")
    assert "Bad pages" not in plain

    rows = check_rows("info", vol_runs["info verify"].json_rows())
    checked = {r["Field"]: r for r in rows}
    pages = guest_files["flipped-pages"]
    assert checked["RAM pages verified"]["Flag"] is True
    assert checked["Bad pages"]["Number"] == pages >= 1
    assert checked["Bad RamBlocks"]["Number"] == 0
    assert checked["Pages verified"]["Number"] == 5 * 256 - pages
    assert checked["Integrity problems found while reading"]["Number"] == 1
    (finding,) = [r for r in rows if r["Field"] == "Error (bad-block, found while reading)"]
    assert "cannot be decompressed" in finding["Value"]
    digest = hashlib.sha256(guest_files["flipped"].read_bytes()).hexdigest()
    assert checked["File SHA-256"]["Value"] == digest


def test_verify_in_process_reports_through_the_diagnostics(guest_files):
    from volatility3_vmrs.savedstate.verify import verify_memory

    calls: List[float] = []
    with SavedStateDump(guest_files["flipped"]) as dump:
        assert dump.diagnostics.problems == ()
        check = verify_memory(dump.memory, lambda percent, _text: calls.append(percent))
        assert check.bad_pages == guest_files["flipped-pages"] and not check.clean
        assert [d.phase.value for d in dump.diagnostics.problems] == ["read"]
    assert calls == sorted(calls) and calls[-1] == 100.0 and len(calls) == 6
    with SavedStateDump(guest_files["long"]) as dump:
        assert verify_memory(dump.memory).clean


# --- item 8 ---------------------------------------------------------------------------------
def test_parallelism_threads_is_called_out_in_one_line(vol_runs):
    result = vol_runs["threads"]
    assert result.returncode == 0
    assert result.stderr.count(THREADS_LINE) == 1
    assert THREADS_LINE not in vol_runs["info"].stderr


def test_keys_are_listed_in_natural_order(workdir):
    keys = importlib.import_module("volatility3.plugins.vmrs.keys")
    blob = build_partition_state(
        PartitionDescription(
            vps=[VpDescription(0, {0: VtlDescription(random_registers(random.Random(2)))})]
        )
    )
    data = SavedStateWriter([(0, bytes(12 << 20))], blob, compression="xpress").build()[0]
    with SavedStateDump(io.BytesIO(data)) as dump:
        listed = [k.path for k in keys.select_keys(dump.storage, "/savedstate/RamBlock")]
        every = [k.path for k in keys.select_keys(dump.storage, None)]
    assert listed == [f"/savedstate/RamBlock{n}" for n in range(12)]
    assert every.index("/savedstate/RamBlock2") < every.index("/savedstate/RamBlock10")
    assert every.index("/savedstate") < every.index("/savedstate/RamBlock0")


def test_a_zero_link_time_is_absent_not_1970():
    from volatility3.framework import renderers

    from volatility3_vmrs.savedstate.pescan import PeImage

    pescan = importlib.import_module("volatility3.plugins.vmrs.pescan")
    columns = [name for name, _ in pescan.COLUMNS]
    image = PeImage(0x1000, 0x8664, "AMD64", 0x3000, 0, 3, "WINDOWS_CUI", "PE32+")
    row = dict(zip(columns, pescan._row("physical", image)))
    assert isinstance(row["Link time"], renderers.NotAvailableValue)
    assert row["Timestamp"] == 0 and row["Image size"] == 0x3000
    dated = dict(zip(columns, pescan._row("physical", PeImage(0, 0, "", 0, 86400, 0, "", ""))))
    assert dated["Link time"].isoformat() == "1970-01-02T00:00:00+00:00"


def test_the_pure_python_xpress_fallback_is_logged_once(caplog):
    previous = xpress.set_backend("python")
    try:
        with caplog.at_level(logging.INFO, logger="volatility3_vmrs.savedstate.xpress"):
            for _ in range(3):
                assert xpress.decompress(b"\x00\x00\x00\x00" + b"abcd", 4) == b"abcd"
    finally:
        xpress.set_backend(previous)
    records = [r for r in caplog.records if r.name == "volatility3_vmrs.savedstate.xpress"]
    assert len(records) == 1 and "pure-Python" in records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="volatility3_vmrs.savedstate.xpress"):
        if previous != "python":
            xpress.decompress(b"\x00\x00\x00\x00" + b"abcd", 4)
            assert not caplog.records


def test_make_demo_vmrs_prints_help_and_writes_nothing(tmp_path):
    script = REPO / "examples" / "make_demo_vmrs.py"
    proc = subprocess.run(
        [sys.executable, str(script), "-h"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: make_demo_vmrs.py")
    assert "output" in proc.stdout
    bare = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert bare.returncode == 2 and "required: output" in bare.stderr
    assert list(tmp_path.iterdir()) == []


def test_demo_vmrs_is_git_ignored():
    lines = (REPO / ".gitignore").read_text().splitlines()
    assert "demo.vmrs" in lines or "/demo.vmrs" in lines
    if (REPO / ".git").exists():
        proc = subprocess.run(
            ["git", "check-ignore", "-q", "demo.vmrs"], cwd=REPO, capture_output=True, timeout=60
        )
        assert proc.returncode == 0


def test_readme_runs_example_scripts_with_the_venv_python():
    readme = (REPO / "README.md").read_text()
    interpreters = re.findall(r"(\S+) examples/\w+\.py", readme)
    assert len(interpreters) >= 3  # make_demo_vmrs.py and both run_plugin.py lines
    assert set(interpreters) == {".venv/bin/python"}, interpreters
