"""Oracle: stock Volatility 3 Linux plugins on the committed QEMU guest dump + our ISF.

These runs are the reference ("oracle") that the .vmrs layer will later be compared to.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tests.fixtures.linux_guest import artefacts
from tests.support.vol import flatten, vol_json

MANIFEST = artefacts.load_manifest()
NAMED = MANIFEST["processes"]["named"]


@pytest.fixture(scope="module")
def run_vol(linux_guest_elf, linux_guest_symbols, vol_cache):
    """The stock `vol` on the ELF; runs are shared with the .vmrs comparison tests."""

    def run(plugin: str, *args: str) -> List[Dict[str, Any]]:
        return vol_json(
            ["-s", str(linux_guest_symbols), "-f", str(linux_guest_elf), plugin, *args],
            cache=vol_cache,
        )

    return run


def test_pslist_named_processes_and_parentage(run_vol):
    rows = run_vol("linux.pslist")
    by_name: Dict[str, Dict[str, Any]] = {}
    for row in flatten(rows):
        by_name.setdefault(row["COMM"], row)
    for name in NAMED:
        assert name in by_name, f"{name} missing from pslist"
    for parent, child in MANIFEST["processes"]["parent_child"]:
        assert by_name[child]["PPID"] == by_name[parent]["PID"]
    init_pid = by_name["init"]["PID"]
    for name in ("vmrs_alpha", "vmrs_bravo", "vmrs_charlie", "vmrs_parent", "vmrs_spin"):
        assert by_name[name]["PPID"] == init_pid, name
    assert by_name[MANIFEST["processes"]["spinning"]]["PID"] > 0
    assert len(rows) > 30  # kernel threads too


def test_pstree_nests_child_under_parent(run_vol):
    rows = run_vol("linux.pstree")

    def find(nodes, name):
        for node in nodes:
            if node["COMM"] == name:
                return node
            hit = find(node.get("__children", []), name)
            if hit:
                return hit
        return None

    parent = find(rows, "vmrs_parent")
    assert parent is not None
    assert [c["COMM"] for c in parent["__children"]] == ["vmrs_child"]


def test_psaux_arguments(run_vol):
    rows = {r["COMM"]: r for r in flatten(run_vol("linux.psaux"))}
    assert rows["vmrs_alpha"]["ARGS"] == "sleep 86400"
    assert rows["vmrs_child"]["ARGS"] == "sleep 86403"
    assert "while" in rows["vmrs_spin"]["ARGS"]


def test_envars_of_named_process(run_vol):
    rows = flatten(run_vol("linux.envars"))
    env = {
        r["KEY"]: r["VALUE"]
        for r in rows
        if r["COMM"] == MANIFEST["processes"]["environment_process"]
    }
    for key, value in MANIFEST["processes"]["environment"].items():
        assert env.get(key) == value, key


def test_lsmod_lists_loaded_modules(run_vol):
    rows = flatten(run_vol("linux.lsmod"))
    names = {r["Module Name"] for r in rows}
    assert set(MANIFEST["modules"]) <= names
    assert all(r["Code Size"] > 0 for r in rows)


def test_kmsg_has_boot_log(run_vol):
    rows = flatten(run_vol("linux.kmsg"))
    assert len(rows) > 50
    assert rows[0]["line"] == MANIFEST["banner"].rstrip("\n")


def test_boottime(run_vol):
    rows = flatten(run_vol("linux.boottime"))
    assert len(rows) == 1
    assert rows[0]["Boot Time"]


def test_proc_maps(run_vol):
    rows = flatten(run_vol("linux.proc.Maps"))
    spin = [r for r in rows if r["Process"] == "vmrs_spin"]
    assert spin, "no mappings for vmrs_spin"
    assert any(r["File Path"] == "/bin/busybox" and "x" in r["Flags"] for r in spin)


def test_pscallstack_resolves_kernel_frames(run_vol):
    """Symbolising stack frames goes through volatility's kallsyms API, i.e. through the
    kallsyms tables btf2isf located in vmlinux. (`linux.kallsyms --core` also works and
    lists all 87347 core symbols, but takes over a minute, so it is not run here.)"""
    rows = flatten(run_vol("linux.pscallstack"))
    assert any(r["Name"] == "schedule" and r["Module"] == "kernel" for r in rows)


def test_registers_show_spinning_user_mode_cpu():
    regs = artefacts.load_registers()["cpus"]
    assert len(regs) == 2
    user = [c for c in regs if c["CS"]["selector"] & 3 == 3]
    assert user, "no vCPU in user mode"
    # KPTI: the user page-table root is the kernel one with bit 12 set
    assert all(c["CR3"] & 0x1000 for c in user)
    assert all(c["EFER"] & 0x500 == 0x500 for c in regs)  # LME|LMA
    for c in regs:
        assert "KERNEL_GS_BASE" in c


def test_elf_ram_ranges_match_manifest(linux_guest_elf):
    ram = artefacts.read_elf_ram(linux_guest_elf)
    assert [[gpa, len(data)] for gpa, data in ram] == MANIFEST["ram_ranges"]
    assert any(gpa >= 1 << 32 for gpa, _ in ram), "expected RAM above 4 GiB"
    total = sum(len(data) for _, data in ram)
    assert total >= 256 << 20
    ram_only = artefacts.read_elf_ram(linux_guest_elf, include_rom=False)
    assert [(gpa, len(data)) for gpa, data in ram_only] == [(0, 128 << 20), (1 << 32, 128 << 20)]


def test_artefact_hashes_match_manifest(linux_guest_elf):
    def sha(path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        return h.hexdigest()

    for name, digest in MANIFEST["artefacts"].items():
        assert sha(artefacts.FIXTURE_DIR / name) == digest, name
    assert sha(artefacts.isf_path()) == MANIFEST["isf_sha256"]
    assert linux_guest_elf.stat().st_size == MANIFEST["memory_elf_size"]
    assert sha(linux_guest_elf) == MANIFEST["memory_elf_sha256"]
