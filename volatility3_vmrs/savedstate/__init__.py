"""Hyper-V saved-state reader: a plain-Python mirror of the VM Saved State Dump Provider.

No Volatility import anywhere below this package: it is a library of its own.

    from volatility3_vmrs.savedstate import SavedStateDump
    with SavedStateDump("vm.vmrs") as dump:
        dump.vp_count, dump.paging_mode(0), dump.read_physical(0x1000, 16)

The functions with the DLL's C names (``LoadSavedStateFile``, ``GetVpCount``, ...) are
exported here too.
"""

from .api import (
    ApplyPendingSavedStateFileReplayLog,
    ForceActiveVirtualTrustLevel,
    ForceArchitecture,
    ForcePagingMode,
    GetActiveVirtualTrustLevel,
    GetArchitecture,
    GetEnabledVirtualTrustLevels,
    GetGuestEnabledVirtualTrustLevels,
    GetGuestOsInfo,
    GetGuestPhysicalMemoryChunks,
    GetGuestRawSavedMemorySize,
    GetMemoryBlockCacheLimit,
    GetPagingMode,
    GetRegisterValue,
    GetVpCount,
    GuestPhysicalAddressToRawSavedMemoryOffset,
    GuestVirtualAddressToPhysicalAddress,
    InKernelSpace,
    IsActiveVirtualTrustLevelEnabled,
    IsNestedVirtualizationEnabled,
    LoadSavedStateFile,
    LoadSavedStateFiles,
    ReadGuestPhysicalAddress,
    ReadGuestRawSavedMemory,
    ReleaseSavedStateFiles,
    SetMemoryBlockCacheLimit,
)
from .diagnostics import Diagnostic, Diagnostics, Kind, Severity
from .errors import (
    DumpProviderError,
    MemoryReadError,
    VaNotMappedError,
    VmrsError,
    VmrsFormatError,
)
from .provider import SavedStateDump, apply_replay_log_to_copy, load_saved_state_file
from .storage import HyperVStorage, KeyType, open_storage
from .types import (
    GPA_MEMORY_CHUNK,
    PAGING_MODE,
    REGISTER_ID,
    REGISTER_ID_X64,
    REGISTER_ID_X86,
    VIRTUAL_PROCESSOR_ARCH,
    VIRTUAL_PROCESSOR_REGISTER,
    GuestOsInfo,
    RegisterValue,
)

__all__ = [
    "GPA_MEMORY_CHUNK",
    "PAGING_MODE",
    "REGISTER_ID",
    "REGISTER_ID_X64",
    "REGISTER_ID_X86",
    "VIRTUAL_PROCESSOR_ARCH",
    "VIRTUAL_PROCESSOR_REGISTER",
    "ApplyPendingSavedStateFileReplayLog",
    "Diagnostic",
    "Diagnostics",
    "DumpProviderError",
    "ForceActiveVirtualTrustLevel",
    "ForceArchitecture",
    "ForcePagingMode",
    "GetActiveVirtualTrustLevel",
    "GetArchitecture",
    "GetEnabledVirtualTrustLevels",
    "GetGuestEnabledVirtualTrustLevels",
    "GetGuestOsInfo",
    "GetGuestPhysicalMemoryChunks",
    "GetGuestRawSavedMemorySize",
    "GetMemoryBlockCacheLimit",
    "GetPagingMode",
    "GetRegisterValue",
    "GetVpCount",
    "GuestOsInfo",
    "GuestPhysicalAddressToRawSavedMemoryOffset",
    "GuestVirtualAddressToPhysicalAddress",
    "HyperVStorage",
    "InKernelSpace",
    "IsActiveVirtualTrustLevelEnabled",
    "IsNestedVirtualizationEnabled",
    "KeyType",
    "Kind",
    "LoadSavedStateFile",
    "LoadSavedStateFiles",
    "MemoryReadError",
    "ReadGuestPhysicalAddress",
    "ReadGuestRawSavedMemory",
    "RegisterValue",
    "ReleaseSavedStateFiles",
    "SavedStateDump",
    "SetMemoryBlockCacheLimit",
    "Severity",
    "VaNotMappedError",
    "VmrsError",
    "VmrsFormatError",
    "apply_replay_log_to_copy",
    "load_saved_state_file",
    "open_storage",
]
