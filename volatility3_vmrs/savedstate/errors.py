"""One exception family for everything the saved-state reader can refuse.

Two branches share the base class :class:`VmrsError`:

* :class:`VmrsFormatError` and its subclasses: the file is not what the format says.
  Every message names the structure and, where known, the file offset and key path.
* :class:`DumpProviderError` and its subclasses: the condition Microsoft's VM Saved State
  Dump Provider reports with an HRESULT (``VM_SAVED_STATE_DUMP_E_*``); the HRESULT is
  kept on the exception so code ported from C/C++ can compare it.

Every exception carries ``hresult``; format errors use ``ERROR_FILE_CORRUPT`` as a
Win32 HRESULT, which is what the DLL surfaces for a corrupt container.

Integrity problems that reading tolerates are not exceptions but records in the dump's
:class:`~.diagnostics.Diagnostics` (strict mode raises them as these exceptions).
"""

from __future__ import annotations

from typing import Optional

# HRESULT values (winerror.h, facility 0x037 for the dump provider).
S_OK = 0x00000000
E_FAIL = 0x80004005
E_INVALIDARG = 0x80070057
E_OUTOFMEMORY = 0x8007000E
E_NOTIMPL = 0x80004001
HRESULT_ERROR_FILE_CORRUPT = 0x80070570
HRESULT_ERROR_NOT_SUPPORTED = 0x80070032

VM_SAVED_STATE_DUMP_E_PARTITION_STATE_NOT_FOUND = 0xC0370500
VM_SAVED_STATE_DUMP_E_GUEST_MEMORY_NOT_FOUND = 0xC0370501
VM_SAVED_STATE_DUMP_E_NO_VP_FOUND_IN_PARTITION_STATE = 0xC0370502
VM_SAVED_STATE_DUMP_E_NESTED_VIRTUALIZATION_NOT_SUPPORTED = 0xC0370503
VM_SAVED_STATE_DUMP_E_WINDOWS_KERNEL_IMAGE_NOT_FOUND = 0xC0370504
VM_SAVED_STATE_DUMP_E_VA_NOT_MAPPED = 0xC0370505
VM_SAVED_STATE_DUMP_E_INVALID_VP_STATE = 0xC0370506
VM_SAVED_STATE_DUMP_E_VP_VTL_NOT_ENABLED = 0xC0370509


def describe_location(
    structure: str, offset: Optional[int] = None, key_path: Optional[str] = None
) -> str:
    """Format "structure at file offset 0x… (key /a/b)" for messages."""
    where = structure
    if offset is not None:
        where += f" at file offset {offset:#x}"
    if key_path:
        where += f" (key {key_path})"
    return where


class VmrsError(Exception):
    """Base of every error the saved-state reader raises on purpose."""

    hresult: int = E_FAIL


class VmrsFormatError(VmrsError):
    """The file does not follow the HyperVStorage / saved-state format.

    ``structure`` names the on-disk structure, ``offset`` its file offset (or the offset
    inside a value, as the message says), ``key_path`` the key it belongs to.
    """

    hresult = HRESULT_ERROR_FILE_CORRUPT

    def __init__(
        self,
        message: str,
        *,
        structure: str = "file",
        offset: Optional[int] = None,
        key_path: Optional[str] = None,
    ) -> None:
        self.structure = structure
        self.offset = offset
        self.key_path = key_path
        self.detail = message
        super().__init__(f"{describe_location(structure, offset, key_path)}: {message}")


class NotAContainerError(VmrsFormatError):
    """No valid HyperVStorage header: the file is not a .vmrs/.vmcx container."""


class SignatureError(VmrsFormatError):
    """A structure does not start with its signature."""


class ChecksumError(VmrsFormatError):
    """A CRC-32 does not match (raised in strict mode, or where nothing else can be trusted)."""


class TruncatedError(VmrsFormatError):
    """A structure or value runs past the end of its container or of the file."""


class UnsupportedVersionError(VmrsFormatError):
    """A format or structure version this reader does not know."""


class KeyTreeError(VmrsFormatError):
    """The key tree is inconsistent (cycles, dangling parents, bad entries)."""


class KeyNotFoundError(VmrsError, KeyError):
    """A key path that the container does not hold."""

    hresult = E_INVALIDARG

    def __init__(self, key_path: str) -> None:
        self.key_path = key_path
        super().__init__(key_path)

    def __str__(self) -> str:
        return f"key {self.key_path} not found in the container"


class ReplayLogError(VmrsFormatError):
    """The replay log holds pending entries that cannot be applied safely."""


class GuestMemoryFormatError(VmrsFormatError):
    """RamMemoryBlock metadata or a RamBlock page stream is malformed."""


class PartitionStateError(VmrsFormatError):
    """The partition_state blob (processor state) is malformed."""


class DumpProviderError(VmrsError):
    """A condition the VM Saved State Dump Provider reports with an HRESULT."""

    default_message = "saved-state dump provider error"

    def __init__(self, message: Optional[str] = None) -> None:
        super().__init__(message or self.default_message)


class InvalidArgumentError(DumpProviderError, ValueError):
    hresult = E_INVALIDARG
    default_message = "invalid argument"


class PartitionStateNotFoundError(DumpProviderError):
    hresult = VM_SAVED_STATE_DUMP_E_PARTITION_STATE_NOT_FOUND
    default_message = (
        "the file holds no /savedstate/savedVM/partition_state: it is not a saved state "
        "(a running VM's .vmrs or a .vmcx holds configuration only, no memory)"
    )


class GuestMemoryNotFoundError(DumpProviderError):
    hresult = VM_SAVED_STATE_DUMP_E_GUEST_MEMORY_NOT_FOUND
    default_message = "guest physical memory not found"


class NoVpFoundError(DumpProviderError):
    hresult = VM_SAVED_STATE_DUMP_E_NO_VP_FOUND_IN_PARTITION_STATE
    default_message = "no virtual processor found in the partition state"


class NestedVirtualizationNotSupportedError(DumpProviderError):
    hresult = VM_SAVED_STATE_DUMP_E_NESTED_VIRTUALIZATION_NOT_SUPPORTED
    default_message = "nested virtualization state is not supported"


class WindowsKernelImageNotFoundError(DumpProviderError):
    hresult = VM_SAVED_STATE_DUMP_E_WINDOWS_KERNEL_IMAGE_NOT_FOUND
    default_message = "Windows kernel image not found"


class VaNotMappedError(DumpProviderError):
    """A guest-virtual address that the page tables do not map.

    ``level`` names the paging structure whose entry was not present, ``unmapped_size``
    the size of the region that entry would have mapped (the DLL's unmappedRegionSize).
    """

    hresult = VM_SAVED_STATE_DUMP_E_VA_NOT_MAPPED
    default_message = "virtual address not mapped"

    def __init__(
        self, message: Optional[str] = None, *, level: str = "", unmapped_size: int = 0
    ) -> None:
        self.level = level
        self.unmapped_size = unmapped_size
        super().__init__(message)


class InvalidVpStateError(DumpProviderError):
    hresult = VM_SAVED_STATE_DUMP_E_INVALID_VP_STATE
    default_message = "invalid virtual processor state"


class VpVtlNotEnabledError(DumpProviderError):
    hresult = VM_SAVED_STATE_DUMP_E_VP_VTL_NOT_ENABLED
    default_message = "the virtual trust level is not enabled on this virtual processor"


class MemoryReadError(DumpProviderError):
    """Guest memory that cannot be read: a hole, a missing RamBlock or a bad page stream.

    ``address`` is the first unreadable address (guest-physical or raw saved offset, as
    the message says); ``block`` names the RamBlock key when one is to blame.
    """

    hresult = VM_SAVED_STATE_DUMP_E_GUEST_MEMORY_NOT_FOUND

    def __init__(self, message: str, *, address: int = 0, block: Optional[str] = None) -> None:
        self.address = address
        self.block = block
        super().__init__(message)
