"""The dump-provider mirror: object API and C-named functions over a known guest."""

from __future__ import annotations

import hashlib
import io

import pytest

from tests.support.guests import RAM_HIGH_GPA, RAM_LOW, WINDOWS_10_19045, windows_guest
from tests.support.partition_writer import (
    PartitionDescription,
    VpDescription,
    VtlDescription,
    build_partition_state,
)
from tests.support.savedstate_writer import SavedStateWriter
from volatility3_vmrs import savedstate as ss
from volatility3_vmrs.savedstate.errors import (
    HRESULT_ERROR_FILE_CORRUPT,
    VM_SAVED_STATE_DUMP_E_PARTITION_STATE_NOT_FOUND,
    VM_SAVED_STATE_DUMP_E_VA_NOT_MAPPED,
    VM_SAVED_STATE_DUMP_E_VP_VTL_NOT_ENABLED,
    InvalidArgumentError,
    NotAContainerError,
    PartitionStateNotFoundError,
    VaNotMappedError,
    VmrsError,
    VpVtlNotEnabledError,
)
from volatility3_vmrs.savedstate.legacy import NotALegacyBinError
from volatility3_vmrs.savedstate.types import (
    PAGING_MODE,
    REGISTER_ID,
    REGISTER_ID_X64,
    VIRTUAL_PROCESSOR_ARCH,
)


@pytest.fixture(scope="module")
def guest():
    return windows_guest(PAGING_MODE.Paging_Long, vtls=(0, 1), pcid=0x5)


@pytest.fixture(scope="module")
def guest_file(guest, tmp_path_factory):
    path = tmp_path_factory.mktemp("provider") / "guest.vmrs"
    path.write_bytes(guest.data)
    return path


def test_c_named_functions(guest, guest_file):
    handle = ss.LoadSavedStateFile(str(guest_file))
    try:
        assert ss.GetVpCount(handle) == 2
        assert ss.GetArchitecture(handle, 0) == VIRTUAL_PROCESSOR_ARCH.Arch_x64 == 2
        assert ss.GetPagingMode(handle, 0) == PAGING_MODE.Paging_Long == 4
        chunks = ss.GetGuestPhysicalMemoryChunks(handle)
        assert [(c.GuestPhysicalStartPageIndex, c.PageCount) for c in chunks] == [
            (0, RAM_LOW // 4096),
            (RAM_HIGH_GPA // 4096, 256),
        ]
        assert (
            ss.ReadGuestPhysicalAddress(handle, 0x5000, 4096) == guest.ranges[0][1][0x5000:0x6000]
        )
        for va, content in guest.known.items():
            gpa = ss.GuestVirtualAddressToPhysicalAddress(handle, 0, va)
            assert ss.ReadGuestPhysicalAddress(handle, gpa, len(content)) == content
        assert ss.InKernelSpace(handle, 0) is True
        assert ss.InKernelSpace(handle, 1) is False
        info = ss.GetGuestOsInfo(handle, 0)
        assert info.raw == WINDOWS_10_19045 and info.describe() == "Windows NT 10.0 build 19045"
        assert ss.GetRegisterValue(handle, 0, REGISTER_ID_X64.X64_RegisterCr3) == guest.cr3
        assert (
            ss.GetRegisterValue(handle, 1, REGISTER_ID.X64_RegisterRip).reg64
            == (guest.registers[1][0]["rip"])
        )
        raw = ss.GuestPhysicalAddressToRawSavedMemoryOffset(handle, RAM_HIGH_GPA + 0x3010)
        assert raw == (1 << 20) * 4 + 0x3010  # the high range starts on RamBlock 4
        assert ss.ReadGuestRawSavedMemory(handle, raw, 16) == guest.ranges[1][1][0x3010:0x3020]
        assert ss.GetGuestRawSavedMemorySize(handle) == (4 * 256 + 256) * 4096
        assert (
            ss.ReadGuestRawSavedMemory(handle, ss.GetGuestRawSavedMemorySize(handle) - 4, 64)
            == (guest.ranges[1][1][-4:])
        )
        ss.SetMemoryBlockCacheLimit(handle, 3)
        assert ss.GetMemoryBlockCacheLimit(handle) == 3
        assert ss.GetGuestEnabledVirtualTrustLevels(handle) == 0b11
        assert ss.GetEnabledVirtualTrustLevels(handle, 0) == 0b11
        assert ss.GetActiveVirtualTrustLevel(handle, 0) == 0
        assert ss.IsActiveVirtualTrustLevelEnabled(handle, 0)
        assert ss.IsNestedVirtualizationEnabled(handle) is False
    finally:
        ss.ReleaseSavedStateFiles(handle)


def test_vtl_switch_and_forced_modes(guest, guest_file):
    with ss.SavedStateDump(guest_file) as dump:
        vtl1_cr3 = guest.registers[0][1]["cr3"]
        ss.ForceActiveVirtualTrustLevel(dump, 0, 1)
        assert dump.active_vtl(0) == 1
        assert ss.GetRegisterValue(dump, 0, REGISTER_ID_X64.X64_RegisterCr3) == vtl1_cr3
        ss.ForcePagingMode(dump, 0, PAGING_MODE.Paging_NonPaged)
        assert ss.GuestVirtualAddressToPhysicalAddress(dump, 0, 0x1234) == 0x1234
        ss.ForceArchitecture(dump, 0, VIRTUAL_PROCESSOR_ARCH.Arch_x86)
        assert ss.GetArchitecture(dump, 0) == VIRTUAL_PROCESSOR_ARCH.Arch_x86
        with pytest.raises(InvalidArgumentError):
            ss.ForcePagingMode(dump, 0, 99)
        with pytest.raises(VpVtlNotEnabledError) as caught:
            ss.ForceActiveVirtualTrustLevel(dump, 1, 2)
        assert caught.value.hresult == VM_SAVED_STATE_DUMP_E_VP_VTL_NOT_ENABLED
        with pytest.raises(InvalidArgumentError, match="no virtual processor 7"):
            ss.GetPagingMode(dump, 7)


def test_unmapped_virtual_address_carries_the_hresult(guest_file):
    with ss.SavedStateDump(guest_file) as dump:
        with pytest.raises(VaNotMappedError) as caught:
            dump.virtual_to_physical(0, 0xFFFFF80012345000)
        assert caught.value.hresult == VM_SAVED_STATE_DUMP_E_VA_NOT_MAPPED
        assert caught.value.unmapped_size > 0


def test_running_vm_file_has_no_partition_state(sample_paths):
    with pytest.raises(PartitionStateNotFoundError, match="not a saved state") as caught:
        ss.LoadSavedStateFile(str(sample_paths["openvmm-88D07DD7.VMRS"]))
    assert caught.value.hresult == VM_SAVED_STATE_DUMP_E_PARTITION_STATE_NOT_FOUND


def test_files_of_neither_format_are_refused_clearly(tmp_path):
    bin_path, vsv_path = tmp_path / "vm.bin", tmp_path / "vm.vsv"
    bin_path.write_bytes(bytes(8192))
    vsv_path.write_bytes(bytes(8192))
    with pytest.raises(NotALegacyBinError, match=r"not a legacy \.bin") as caught:
        ss.LoadSavedStateFiles(str(bin_path), str(vsv_path))
    assert caught.value.hresult == HRESULT_ERROR_FILE_CORRUPT
    with pytest.raises(NotAContainerError):
        ss.LoadSavedStateFile(str(vsv_path))


def test_every_register_of_every_vp_and_vtl_comes_back():
    import random

    from tests.support.partition_writer import random_registers

    rng = random.Random(5)
    regs = {(vp, vtl): random_registers(rng) for vp in range(3) for vtl in (0, 1)}
    description = PartitionDescription(
        vps=[
            VpDescription(
                vp, {vtl: VtlDescription(regs[(vp, vtl)]) for vtl in (0, 1)}, runnable_vtl=vp % 2
            )
            for vp in range(3)
        ]
    )
    blob = build_partition_state(description)
    data, _ = SavedStateWriter([(0, bytes(0x10000))], blob).build()
    with ss.SavedStateDump(io.BytesIO(data)) as dump:
        for (vp, vtl), values in regs.items():
            registers = dump.registers(vp, vtl)
            for name, value in values.items():
                if name == "virtual_msrs":
                    assert registers.virtual_msr_words == value
                    continue
                assert getattr(registers, name) == value, (vp, vtl, name)
            # Through GetRegisterValue, for the active VTL after forcing it.
            dump.force_active_vtl(vp, vtl)
            assert ss.GetRegisterValue(dump, vp, REGISTER_ID_X64.X64_RegisterRax) == values["rax"]
            assert ss.GetRegisterValue(dump, vp, REGISTER_ID_X64.X64_RegisterHighXmm3) == (
                values["xmm3"] >> 64
            )
            assert ss.GetRegisterValue(dump, vp, REGISTER_ID.X64_RegisterGdtr).table.base == (
                values["gdtr"].base
            )


def test_apply_replay_log_writes_a_copy_never_the_evidence(guest_file, tmp_path):
    digest = hashlib.sha256(guest_file.read_bytes()).hexdigest()
    with pytest.raises(VmrsError, match="rewrite the evidence"):
        ss.ApplyPendingSavedStateFileReplayLog(str(guest_file))
    with pytest.raises(VmrsError, match="refusing"):
        ss.apply_replay_log_to_copy(str(guest_file), str(guest_file))
    copy = tmp_path / "copy.vmrs"
    assert ss.ApplyPendingSavedStateFileReplayLog(str(guest_file), str(copy)) == 0
    assert copy.read_bytes() == guest_file.read_bytes()
    assert hashlib.sha256(guest_file.read_bytes()).hexdigest() == digest
