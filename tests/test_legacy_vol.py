"""Legacy ``.bin`` files through the installed stock ``vol``: the stacker recognises the
real Hyper-V sample by its header, the pack's plugins describe it, ``layerwriter`` writes
its 252 MiB in which the independent ACPI walker finds every table, and the evidence is
unchanged. A ``.bin`` + ``.vsv`` pair from the test writers gives registers.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Dict

import pytest

from tests.conftest import samples_dir
from tests.support import acpi
from tests.support.container_writer import ContainerWriter
from tests.support.legacy_writer import build_bin, memory_entries
from tests.support.partition_writer import simple_partition
from tests.support.vol import run_vol, vol_json
from volatility3_vmrs.savedstate import memory as M
from volatility3_vmrs.savedstate.provider import SavedStateDump

SAMPLE_NAME = "vmsavedstatedump-rs-test_file.bin"


def _fingerprint(path: Path) -> tuple:
    stat = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mtime_ns, stat.st_size


@pytest.fixture(scope="module")
def evidence(tmp_path_factory) -> Path:
    """A copy of the real sample under a name of our own (a .bin with no .vsv beside it)."""
    original = samples_dir() / SAMPLE_NAME
    assert original.is_file(), f"real .bin sample missing: {original}"
    path = tmp_path_factory.mktemp("legacy") / "Guest.BIN"  # recognised by header, not name
    shutil.copy2(original, path)
    return path


def _info(path: Path, cache: Path) -> Dict[str, str]:
    rows = vol_json(["-f", str(path), "vmrs.info.Info"], cache=cache)
    fields: Dict[str, str] = {}
    for row in rows:
        fields.setdefault(row["Field"], row["Value"])
    return fields


def test_info_names_format_assumption_and_missing_vsv(evidence, vol_cache):
    before = _fingerprint(evidence)
    fields = _info(evidence, vol_cache)
    assert "legacy Hyper-V saved state (.bin" in fields["Format"]
    assert fields["Memory map"].startswith("assumption: block RamBlock/N/ lies at guest-physical")
    assert fields[".vsv"].startswith("missing: none found beside the .bin")
    assert fields["Range 0"] == "GPA 0x0-0xfbfffff (64512 pages)"
    assert "no .vsv was found beside it" in fields["Virtual processors"]
    assert fields["Integrity problems found at open"] == "0"
    assert fields["RAM pages verified"].startswith("no: the format has no checksum")
    assert _fingerprint(evidence) == before


@pytest.mark.parametrize(
    "plugin, message",
    [
        (
            "vmrs.registers",
            "a legacy .bin holds guest memory only, and no .vsv was found beside it",
        ),
        ("vmrs.config", "no VM configuration: a legacy .bin holds none"),
    ],
)
def test_plugins_without_state_fail_in_one_clear_line(evidence, vol_cache, plugin, message):
    proc = run_vol(["-f", str(evidence), plugin], cache=vol_cache, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    ours = [line for line in proc.stderr.splitlines() if "volatility3-vmrs:" in line]
    assert len(ours) == 1 and proc.stderr.rstrip().endswith(ours[0]), proc.stderr[-2000:]
    assert message in ours[0]


def test_memmap_and_keys(evidence, vol_cache):
    (row,) = vol_json(["-f", str(evidence), "vmrs.memmap"], cache=vol_cache)
    assert (row["RamBlocks"], row["Fill"], row["Raw"], row["XPRESS"]) == ("0-251", 64321, 6, 185)
    proc = run_vol(["-r", "json", "-f", str(evidence), "vmrs.keys"], cache=vol_cache)
    assert proc.stdout.strip().endswith("[]") and "no key tree" in proc.stderr


def test_layerwriter_writes_the_guest_with_its_acpi_tables(evidence, vol_cache, tmp_path):
    before = _fingerprint(evidence)
    run_vol(
        ["-f", str(evidence), "-o", str(tmp_path), "layerwriter.LayerWriter"],
        cache=vol_cache,
    )
    (written,) = tmp_path.glob("*.raw")
    assert written.stat().st_size == 252 * M.BLOCK_SIZE
    with open(written, "rb") as handle:

        def read(gpa: int, size: int) -> bytes:
            handle.seek(gpa)
            return handle.read(size)

        tables = acpi.walk(read)
    assert (tables.rsdp_address, tables.root_address) == (0xF5C00, 0xFBF0000)
    assert len(tables.tables) == 9 and all(table.checksum_ok for table in tables.tables)
    assert _fingerprint(evidence) == before


def test_windows_plugin_runs_without_a_published_dtb(evidence, vol_cache):
    """No processor state, no DTB: Volatility's own search scans the memory (a guest in
    its BIOS has no kernel, so the plugin ends with its requirement unmet, no traceback)."""
    proc = run_vol(["-f", str(evidence), "windows.info"], cache=vol_cache, check=False)
    assert "Traceback" not in proc.stderr
    assert "Unable to validate the plugin requirements" in proc.stdout + proc.stderr


def test_pair_gives_registers_and_paging_mode_through_the_layer(tmp_path, vol_cache):
    memory = bytes(M.BLOCK_SIZE)
    bin_path = tmp_path / "pair.bin"
    bin_path.write_bytes(build_bin(memory_entries(memory)))
    description, blob = simple_partition(2, seed=3)
    writer = ContainerWriter("hyperv")
    writer.set("/savedstate/VmVersion", 0x0500)
    writer.set("/savedstate/savedVM/partition_state", blob, file_object=True)
    (tmp_path / "pair.vsv").write_bytes(writer.build())
    with SavedStateDump(str(bin_path)) as dump:
        modes = {vp: dump.paging_mode(vp).name for vp in (0, 1)}
    rows = vol_json(
        ["-f", str(bin_path), "vmrs.registers", "--register", "rip", "cr3"], cache=vol_cache
    )
    got = {(row["VP"], row["Register"]): row["Value"] for row in rows}
    for vp in (0, 1):
        wanted = description.vps[vp].vtls[0].registers
        assert got[(vp, "Rip")] == wanted["rip"] and got[(vp, "Cr3")] == wanted["cr3"]
    fields = _info(bin_path, vol_cache)
    assert fields[".vsv"].startswith(str(tmp_path / "pair.vsv"))
    assert fields["Virtual processors"] == "2"
    for vp in (0, 1):
        assert modes[vp] in fields[f"VP {vp}"]
