"""The dump provider's functions under their exact C names, for code ported from C/C++.

Each function takes the handle that :func:`LoadSavedStateFile` returned (a
:class:`~.provider.SavedStateDump`), returns the value the C function writes through its
out-parameter, and raises the project's exception on failure; the exception carries the
HRESULT the DLL would return in ``.hresult``. Names and argument order follow the SDK's
``VmSavedStateDump.h``.

Not offered, because the file format cannot serve them: LocateSavedStateFiles (needs
WMI on a Hyper-V host), the symbol-provider family, CallStackUnwind,
GetNestedVirtualizationMode and ForceNestedHostMode.
"""

from __future__ import annotations

from typing import Any, List, Optional

from .errors import VmrsError
from .provider import SavedStateDump, apply_replay_log_to_copy
from .types import GPA_MEMORY_CHUNK, PAGING_MODE, VIRTUAL_PROCESSOR_ARCH, GuestOsInfo

VM_SAVED_STATE_DUMP_HANDLE = SavedStateDump


def LoadSavedStateFile(vmrsFile: str) -> SavedStateDump:
    return SavedStateDump(vmrsFile)


def LoadSavedStateFiles(binFile: str, vsvFile: Optional[str] = None) -> SavedStateDump:
    """The legacy pair: a ``.bin`` and its ``.vsv`` (None: the one beside the ``.bin``)."""
    return SavedStateDump.load_pair(binFile, vsvFile)


def ApplyPendingSavedStateFileReplayLog(vmrsFile: str, destination: str = "") -> int:
    """Refuses to rewrite the evidence: give ``destination`` for a repaired copy."""
    if not destination:
        raise VmrsError(
            "ApplyPendingSavedStateFileReplayLog would rewrite the evidence file; pass a "
            "destination to write a repaired copy instead (LoadSavedStateFile already applies "
            "a pending log in memory)"
        )
    return apply_replay_log_to_copy(vmrsFile, destination)


def ReleaseSavedStateFiles(handle: SavedStateDump) -> None:
    handle.close()


def GetVpCount(handle: SavedStateDump) -> int:
    return handle.vp_count


def GetArchitecture(handle: SavedStateDump, vpId: int) -> VIRTUAL_PROCESSOR_ARCH:
    return handle.architecture(vpId)


def ForceArchitecture(handle: SavedStateDump, vpId: int, architecture: int) -> None:
    handle.force_architecture(vpId, architecture)


def GetActiveVirtualTrustLevel(handle: SavedStateDump, vpId: int) -> int:
    return handle.active_vtl(vpId)


def GetEnabledVirtualTrustLevels(handle: SavedStateDump, vpId: int) -> int:
    return handle.enabled_vtls(vpId)


def GetGuestEnabledVirtualTrustLevels(handle: SavedStateDump) -> int:
    return handle.guest_enabled_vtls


def ForceActiveVirtualTrustLevel(handle: SavedStateDump, vpId: int, virtualTrustLevel: int) -> None:
    handle.force_active_vtl(vpId, virtualTrustLevel)


def IsActiveVirtualTrustLevelEnabled(handle: SavedStateDump, vpId: int) -> bool:
    return handle.active_vtl_enabled(vpId)


def IsNestedVirtualizationEnabled(handle: SavedStateDump) -> bool:
    return handle.is_nested_virtualization_enabled()


def GetGuestOsInfo(handle: SavedStateDump, virtualTrustLevel: int = 0) -> GuestOsInfo:
    return handle.guest_os_info(virtualTrustLevel)


def InKernelSpace(handle: SavedStateDump, vpId: int) -> bool:
    return handle.in_kernel_space(vpId)


def GetRegisterValue(handle: SavedStateDump, vpId: int, registerId: int) -> Any:
    """An int for REGISTER_ID_X64/X86 members, a RegisterValue for REGISTER_ID."""
    return handle.register(vpId, registerId)


def GetPagingMode(handle: SavedStateDump, vpId: int) -> PAGING_MODE:
    return handle.paging_mode(vpId)


def ForcePagingMode(handle: SavedStateDump, vpId: int, pagingMode: int) -> None:
    handle.force_paging_mode(vpId, pagingMode)


def GuestVirtualAddressToPhysicalAddress(
    handle: SavedStateDump, vpId: int, virtualAddress: int
) -> int:
    return handle.virtual_to_physical(vpId, virtualAddress)


def GetGuestPhysicalMemoryChunks(handle: SavedStateDump) -> List[GPA_MEMORY_CHUNK]:
    """The chunks (pages of MemoryChunkPageSize = 4096 bytes), sorted by address."""
    return handle.memory_chunks()[1]


def ReadGuestPhysicalAddress(
    handle: SavedStateDump, physicalAddress: int, bufferSize: int
) -> bytes:
    return handle.read_physical(physicalAddress, bufferSize)


def GuestPhysicalAddressToRawSavedMemoryOffset(handle: SavedStateDump, physicalAddress: int) -> int:
    return handle.gpa_to_raw_offset(physicalAddress)


def GetGuestRawSavedMemorySize(handle: SavedStateDump) -> int:
    return handle.raw_size


def ReadGuestRawSavedMemory(
    handle: SavedStateDump, rawSavedMemoryOffset: int, bufferSize: int
) -> bytes:
    return handle.read_raw(rawSavedMemoryOffset, bufferSize)


def SetMemoryBlockCacheLimit(handle: SavedStateDump, memoryBlockCacheLimit: int) -> None:
    handle.memory_block_cache_limit = memoryBlockCacheLimit


def GetMemoryBlockCacheLimit(handle: SavedStateDump) -> int:
    return handle.memory_block_cache_limit
