"""Real Linux kernel memory in .vmrs files: the stock plugins must agree with the ELF.

The oracle is the same plugin run by volatility3's own ELF layer on the QEMU capture the
.vmrs files were written from; no one here wrote it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

import pytest

from tests.fixtures.linux_guest import artefacts
from tests.support.linux_guest import E2E_PLUGINS, LINUX_GUEST_OS_ID, VARIANTS
from tests.support.vol import flatten, vol_json
from volatility3_vmrs.savedstate import (
    REGISTER_ID_X64,
    GetPagingMode,
    GetRegisterValue,
    InKernelSpace,
    LoadSavedStateFile,
    ReleaseSavedStateFiles,
)
from volatility3_vmrs.savedstate.types import PAGING_MODE

PLUGINS = list(E2E_PLUGINS)
MANIFEST = artefacts.load_manifest()


@pytest.fixture(scope="module")
def vmrs_files(linux_guest_vmrs) -> Dict[str, Path]:
    return linux_guest_vmrs  # session-wide: the symbol tests use the same files


@pytest.fixture(scope="module")
def outputs(linux_guest_symbols, linux_guest_elf, vmrs_files, vol_cache):
    """Every (file, plugin) run, done up front two at a time (the machine has 2 cores)."""

    def one(path: Path, plugin: str) -> List:
        # Same arguments as the oracle module's runs on the ELF, so those are shared.
        return vol_json(["-s", str(linux_guest_symbols), "-f", str(path), plugin], cache=vol_cache)

    # The first run builds Volatility's symbol cache: let it finish alone.
    results: Dict[tuple, List] = {
        (str(linux_guest_elf), PLUGINS[0]): one(linux_guest_elf, PLUGINS[0])
    }
    jobs = [
        (path, plugin)
        for path in [linux_guest_elf, *vmrs_files.values()]
        for plugin in PLUGINS
        if (str(path), plugin) not in results
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for (path, plugin), rows in zip(jobs, pool.map(lambda job: one(*job), jobs)):
            results[(str(path), plugin)] = rows

    def run(path: Path, plugin: str) -> List:
        return results[(str(path), plugin)]

    return run


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stock_plugin_matches_the_elf_oracle(plugin, variant, vmrs_files, linux_guest_elf, outputs):
    expected = outputs(linux_guest_elf, plugin)
    assert expected, f"{plugin} gave no rows on the ELF oracle"
    assert outputs(vmrs_files[variant], plugin) == expected


def test_pslist_lists_the_named_processes(vmrs_files, outputs):
    rows = flatten(outputs(vmrs_files["xpress"], "linux.pslist"))
    by_name = {}
    for row in rows:
        by_name.setdefault(row["COMM"], row)
    for name in MANIFEST["processes"]["named"]:
        assert name in by_name, name
    for parent, child in MANIFEST["processes"]["parent_child"]:
        assert by_name[child]["PPID"] == by_name[parent]["PID"]


def test_registers_come_back_as_qemu_reported(vmrs_files):
    cpus = artefacts.load_registers()["cpus"]
    handle = LoadSavedStateFile(str(vmrs_files["packed"]))
    try:
        assert handle.guest_os_info(0).raw == LINUX_GUEST_OS_ID
        assert handle.guest_os_info(0).describe().startswith("Linux 6.1.")
        for index, cpu in enumerate(cpus):

            def get(register, vp=index):
                return GetRegisterValue(handle, vp, register)

            assert get(REGISTER_ID_X64.X64_RegisterRip) == cpu["RIP"]
            assert get(REGISTER_ID_X64.X64_RegisterRsp) == cpu["RSP"]
            assert get(REGISTER_ID_X64.X64_RegisterRFlags) == cpu["RFL"]
            assert get(REGISTER_ID_X64.X64_RegisterCr0) == cpu["CR0"]
            assert get(REGISTER_ID_X64.X64_RegisterCr3) == cpu["CR3"]
            assert get(REGISTER_ID_X64.X64_RegisterCr4) == cpu["CR4"]
            assert get(REGISTER_ID_X64.X64_RegisterEfer) == cpu["EFER"]
            assert get(REGISTER_ID_X64.X64_RegisterSegCs) == cpu["CS"]["selector"]
            assert get(REGISTER_ID_X64.X64_RegisterBaseGs) == cpu["GS"]["base"]
            assert get(REGISTER_ID_X64.X64_RegisterBaseFs) == cpu["FS"]["base"]
            assert get(REGISTER_ID_X64.X64_RegisterBaseGdtr) == cpu["GDT"]["base"]
            assert get(REGISTER_ID_X64.X64_RegisterLimitIdtr) == cpu["IDT"]["limit"]
            assert get(REGISTER_ID_X64.X64_RegisterLowXmm1) == int(cpu["XMM"]["XMM01"], 16) & (
                (1 << 64) - 1
            )
            for n in range(8, 16):
                assert get(getattr(REGISTER_ID_X64, f"X64_RegisterR{n}")) == cpu[f"R{n}"]
            assert handle.registers(index).kernel_gs_base == cpu["KERNEL_GS_BASE"]
            assert GetPagingMode(handle, index) == PAGING_MODE.Paging_Long
            assert InKernelSpace(handle, index) is (not cpu["user_mode"])
        user = [i for i, cpu in enumerate(cpus) if cpu["user_mode"]]
        assert len(user) == 1
        # The user-mode vCPU carries the KPTI user CR3 (bit 12 set).
        assert GetRegisterValue(handle, user[0], REGISTER_ID_X64.X64_RegisterCr3) & 0x1000
    finally:
        ReleaseSavedStateFiles(handle)
