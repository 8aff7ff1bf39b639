"""The VM Saved State Dump Provider, in Python.

:class:`SavedStateDump` offers what Microsoft's ``vmsavedstatedumpprovider.dll`` offers
for a ``.vmrs`` file (API doc §4.1-4.5), in Pythonic form, over the container
(:mod:`.storage`), the guest memory (:mod:`.memory`), the processor state
(:mod:`.processors`) and the page-table walk (:mod:`.paging`). The module-level
functions with the DLL's exact names (``LoadSavedStateFile``, ``GetVpCount``, ...) live
in :mod:`.api` for people porting C/C++ code.

Differences from the DLL, on purpose:

* the file is opened read-only; a pending replay log is applied in memory (the DLL
  refuses a read-only open of such a file) and reported in :attr:`SavedStateDump.warnings`;
* the decoded-page cache is on by default (the DLL's default is 0, "no cache"), because
  a Volatility run without one would decode the same pages again and again;
* symbol, stack-unwind and nested-host-mode functions are not offered: the file format
  alone cannot serve them.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import paths
from .diagnostics import Diagnostic, Diagnostics, Kind
from .errors import (
    GuestMemoryNotFoundError,
    InvalidArgumentError,
    KeyNotFoundError,
    PartitionStateNotFoundError,
    TruncatedError,
    VmrsError,
)
from .gcpause import collector_paused
from .legacy import LEGACY_HEADER, NotALegacyBinError, is_legacy_bin
from .legacy_pair import LegacyPair, open_legacy_pair
from .memory import DEFAULT_CACHE_LIMIT_BLOCKS, PageReader
from .memory_map import PAGE_SIZE, MemoryRange, map_saved_state
from .paging import Translation, translate
from .processors import ChunkId, PartitionState, RegisterSet, VirtualProcessor
from .source import PathOrFile, ReadOnlySource
from .storage import HyperVStorage, Key
from .types import (
    GPA_MEMORY_CHUNK,
    PAGING_MODE,
    VIRTUAL_PROCESSOR_ARCH,
    GuestOsInfo,
    RegisterValue,
)

FORMAT_VMRS = "Hyper-V saved state (.vmrs, HyperVStorage container)"
FORMAT_LEGACY = "legacy Hyper-V saved state (.bin memory file, VM configuration version 5.0)"


def _starts_as_legacy_bin(source: PathOrFile) -> bool:
    """Whether the file starts with the legacy ``.bin`` magic (checked by header, not name)."""
    probe = ReadOnlySource(source)
    try:
        return is_legacy_bin(probe.read(0, 4))
    finally:
        probe.close()


class SavedStateDump:
    """A loaded saved-state file: processors, guest memory and the key tree.

    ``source`` is a path or a binary file object opened for reading. Use as a context
    manager or call :meth:`close` (the DLL's ReleaseSavedStateFiles).
    """

    def __init__(
        self,
        source: PathOrFile,
        *,
        strict: bool = False,
        cache_limit_blocks: int = DEFAULT_CACHE_LIMIT_BLOCKS,
        require_saved_state: bool = True,
        vsv: Optional[str] = None,
    ) -> None:
        self.diagnostics = Diagnostics(strict=strict)
        self.legacy: Optional[LegacyPair] = None
        self.storage: Optional[HyperVStorage] = None  # type: ignore[assignment]
        if _starts_as_legacy_bin(source):
            self._open_legacy(source, vsv, cache_limit_blocks)
        else:
            if vsv is not None:
                raise InvalidArgumentError(
                    "a .vsv belongs to a legacy .bin; this file is not one (no .bin magic)"
                )
            self._open_container(source, cache_limit_blocks, require_saved_state)
        if self.memory is not None:
            # The hot path: bound straight to the page reader, no extra call layer.
            self.read_physical = self.memory.read_physical  # type: ignore[method-assign]
        self._forced_arch: Dict[int, VIRTUAL_PROCESSOR_ARCH] = {}
        self._forced_paging: Dict[int, PAGING_MODE] = {}
        self._forced_vtl: Dict[int, int] = {}

    def _open_container(
        self, source: PathOrFile, cache_limit_blocks: int, require_saved_state: bool
    ) -> None:
        self.storage = HyperVStorage(source, diagnostics=self.diagnostics)
        try:
            self.vm_version: Optional[int] = self._optional_int(paths.VM_VERSION)
            self.partition = self._open_partition()
            self.memory = self._open_memory(cache_limit_blocks)
            if require_saved_state and self.partition is None and self.memory is None:
                raise self.not_a_saved_state()
        except BaseException:
            self.storage.close()
            raise

    def _open_legacy(self, source: PathOrFile, vsv: Optional[str], cache_limit_blocks: int) -> None:
        """A legacy ``.bin``: its blocks, the ``.vsv`` beside it (or given), one model."""
        bin_path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        self._bin_source = ReadOnlySource(source)
        try:
            pair = open_legacy_pair(
                self._bin_source, self.diagnostics, bin_path=bin_path, vsv_path=vsv
            )
        except BaseException:
            self._bin_source.close()
            raise
        self.legacy = pair
        self.storage = pair.storage
        self.partition = pair.partition
        self.vm_version = self._optional_int(paths.VM_VERSION) or pair.bin.header.version
        self.memory = PageReader(
            pair.memory_map,
            self._bin_source,
            self.diagnostics,
            cache_limit_blocks=cache_limit_blocks,
        )

    def _open_partition(self) -> Optional[PartitionState]:
        if paths.PARTITION_STATE not in self.storage:
            return None
        blob_key = self.storage.get(paths.PARTITION_STATE)
        if blob_key.value_offset + blob_key.size > self.storage.source.size:
            if self.storage.truncation is None:
                blob_key.read()  # raises the TruncatedError that names the key
            self.diagnostics.error(
                Kind.TRUNCATED,
                "partition_state",
                "lies past the end of the truncated file: no processor state",
                offset=blob_key.value_offset,
                key_path=blob_key.path,
            )
            return None
        return PartitionState.parse(
            blob_key.read(), key_path=blob_key.path, diagnostics=self.diagnostics
        )

    def _open_memory(self, cache_limit_blocks: int) -> Optional[PageReader]:
        try:
            with collector_paused():
                memory_map = map_saved_state(self.storage, self.diagnostics, self.vm_version)
        except GuestMemoryNotFoundError:
            if self.partition is not None and self.storage.truncation is None:
                raise  # a saved state whose memory keys are gone: say so at open
            return None
        return PageReader(
            memory_map, self.storage.source, self.diagnostics, cache_limit_blocks=cache_limit_blocks
        )

    def not_a_saved_state(self) -> VmrsError:
        """Why the file has no processor state or memory: truncation, or its kind."""
        if self.legacy is not None:
            vsv = self.legacy.vsv
            if vsv is None:
                why = "no .vsv was found beside it"
            elif vsv.interpreted:
                why = f"its .vsv ({os.path.basename(vsv.path)}) holds no usable partition_state"
            else:
                why = f"its .vsv ({os.path.basename(vsv.path)}) could not be interpreted"
            return PartitionStateNotFoundError(
                f"no processor state: a legacy .bin holds guest memory only, and {why}"
            )
        truncation = self.storage.truncation
        if truncation is not None:
            return TruncatedError(
                truncation.describe() + "; the saved state's keys lie in the missing part",
                structure="file",
                offset=truncation.file_size,
            )
        return PartitionStateNotFoundError()

    @property
    def missing_processor_state(self) -> Optional[str]:
        """Why there is no processor state (None when there is one), in one sentence."""
        if self.partition is not None:
            return None
        return str(self.not_a_saved_state())

    @property
    def is_saved_state(self) -> bool:
        """Whether the file holds processor state or guest memory (else: configuration)."""
        return self.partition is not None or self.memory is not None

    def _require_partition(self) -> PartitionState:
        if self.partition is None:
            raise self.not_a_saved_state()
        return self.partition

    def _require_memory(self) -> PageReader:
        if self.memory is None:
            if self.storage is not None and self.storage.truncation is not None:
                raise self.not_a_saved_state()
            raise GuestMemoryNotFoundError(
                "the file holds no saved guest memory (no /savedstate/RamMemoryBlock<n> key)"
            )
        return self.memory

    @classmethod
    def load(cls, source: PathOrFile, **options: Any) -> SavedStateDump:
        return cls(source, **options)

    @classmethod
    def load_pair(
        cls, bin_path: str, vsv_path: Optional[str] = None, **options: Any
    ) -> SavedStateDump:
        """LoadSavedStateFiles: a legacy ``.bin`` and its ``.vsv`` (found beside it if None)."""
        if not _starts_as_legacy_bin(bin_path):
            raise NotALegacyBinError(
                "this is not a legacy .bin (no magic 0x02182003); open a .vmrs with "
                "LoadSavedStateFile",
                structure=LEGACY_HEADER.name,
                offset=0,
            )
        return cls(bin_path, vsv=vsv_path, **options)

    @property
    def format(self) -> str:
        """What kind of file this is, in words (for ``vmrs.info``)."""
        return FORMAT_LEGACY if self.legacy is not None else FORMAT_VMRS

    @property
    def source(self) -> ReadOnlySource:
        """The evidence file, read-only: the ``.bin`` of a legacy pair, else the container."""
        return self._bin_source if self.legacy is not None else self.storage.source

    def close(self) -> None:
        if self.legacy is not None:
            self.legacy.close()
            self._bin_source.close()
        elif self.storage is not None:
            self.storage.close()

    def __enter__(self) -> SavedStateDump:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _optional_int(self, path: str) -> Optional[int]:
        if self.storage is None or path not in self.storage:
            return None
        value = self.storage.value(path)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    # --- file-level facts -------------------------------------------------------------
    @property
    def name(self) -> str:
        if self.legacy is not None:
            return self.legacy.bin.name
        return self.storage.name

    @property
    def config_version(self) -> Optional[int]:
        return self._optional_int(paths.CONFIG_VERSION)

    @property
    def saved_state_type(self) -> Optional[str]:
        if self.storage is None or paths.SAVED_STATE_TYPE not in self.storage:
            return None
        value = self.storage.value(paths.SAVED_STATE_TYPE)
        return value if isinstance(value, str) else None

    @property
    def warnings(self) -> List[Diagnostic]:
        """The warnings and errors of :attr:`diagnostics` (notes are no problem)."""
        return list(self.diagnostics.problems)

    def keys(self, prefix: str = "/") -> Iterator[Key]:
        """The key tree (of the ``.vsv`` for a legacy pair; none without one)."""
        if self.storage is None:
            return iter(())
        return self.storage.walk(prefix)

    def value(self, path: str) -> Any:
        if self.storage is None:
            raise KeyNotFoundError(path)
        return self.storage.value(path)

    # --- partition and processors -----------------------------------------------------
    @property
    def vp_count(self) -> int:
        return self._require_partition().vp_count

    @property
    def vp_indices(self) -> List[int]:
        return sorted(self._require_partition().vps)

    @property
    def guest_enabled_vtls(self) -> int:
        """GetGuestEnabledVirtualTrustLevels: bit n = VTL n enabled in the partition."""
        return self._require_partition().enabled_vtls

    def guest_os_info(self, vtl: int = 0) -> GuestOsInfo:
        return self._require_partition().guest_os_info_for(vtl)

    def vp(self, vp_index: int) -> VirtualProcessor:
        try:
            return self._require_partition().vps[vp_index]
        except (KeyError, TypeError):
            raise InvalidArgumentError(
                f"no virtual processor {vp_index!r} (the file has {self.vp_indices})"
            ) from None

    def active_vtl(self, vp_index: int) -> int:
        return self._forced_vtl.get(vp_index, self.vp(vp_index).active_vtl)

    def enabled_vtls(self, vp_index: int) -> int:
        return self.vp(vp_index).enabled_vtls

    def force_active_vtl(self, vp_index: int, vtl: int) -> None:
        """ForceActiveVirtualTrustLevel: registers and translation use ``vtl`` from now on."""
        self.vp(vp_index).registers_for(vtl)  # raises VpVtlNotEnabledError if absent
        self._forced_vtl[vp_index] = vtl

    def active_vtl_enabled(self, vp_index: int) -> bool:
        return self.active_vtl(vp_index) in self.vp(vp_index).vtls

    def registers(self, vp_index: int, vtl: Optional[int] = None) -> RegisterSet:
        """The register set of a VP, for its active (or forced) VTL unless ``vtl`` is given."""
        processor = self.vp(vp_index)
        return processor.registers_for(self.active_vtl(vp_index) if vtl is None else vtl)

    def register(self, vp_index: int, register_id: int) -> Any:
        """GetRegisterValue: an int for REGISTER_ID_X64/X86, a RegisterValue for REGISTER_ID."""
        return self.registers(vp_index).get(register_id)

    def architecture(self, vp_index: int) -> VIRTUAL_PROCESSOR_ARCH:
        forced = self._forced_arch.get(vp_index)
        return forced if forced is not None else self.registers(vp_index).architecture

    def force_architecture(self, vp_index: int, arch: int) -> None:
        self.vp(vp_index)
        try:
            self._forced_arch[vp_index] = VIRTUAL_PROCESSOR_ARCH(arch)
        except ValueError:
            raise InvalidArgumentError(f"unknown architecture {arch!r}") from None

    def paging_mode(self, vp_index: int) -> PAGING_MODE:
        forced = self._forced_paging.get(vp_index)
        return forced if forced is not None else self.registers(vp_index).paging_mode

    def force_paging_mode(self, vp_index: int, mode: int) -> None:
        self.vp(vp_index)
        try:
            self._forced_paging[vp_index] = PAGING_MODE(mode)
        except ValueError:
            raise InvalidArgumentError(f"unknown paging mode {mode!r}") from None

    def in_kernel_space(self, vp_index: int) -> bool:
        return self.registers(vp_index).in_kernel_space

    def is_nested_virtualization_enabled(self) -> bool:
        """Whether any VP carries nested-virtualization chunks (rule UNVERIFIED)."""
        nested = {ChunkId.VP_NESTED_BASE, ChunkId.VP_NESTED_CURRENT_VMCS}
        for processor in self._require_partition().vps.values():
            if any(chunk.chunk_id in nested for chunk in processor.other_chunks):
                return True
        return False

    def translate(self, vp_index: int, va: int) -> Translation:
        """Walk the VP's page tables; the steps say what each level held."""
        registers = self.registers(vp_index)
        return translate(
            self._require_memory().read_physical,
            self.paging_mode(vp_index),
            registers.cr3,
            va,
            la57=registers.la57,
        )

    def virtual_to_physical(self, vp_index: int, va: int) -> int:
        """GuestVirtualAddressToPhysicalAddress; raises VaNotMappedError."""
        return self.translate(vp_index, va).gpa

    # --- guest physical memory --------------------------------------------------------
    def memory_chunks(self) -> Tuple[int, List[GPA_MEMORY_CHUNK]]:
        """GetGuestPhysicalMemoryChunks: (page size, chunks sorted by address)."""
        return PAGE_SIZE, [
            GPA_MEMORY_CHUNK(memory_range.gpa_page, memory_range.page_count)
            for memory_range in self._require_memory().map.ranges
        ]

    @property
    def memory_ranges(self) -> List[MemoryRange]:
        return list(self._require_memory().map.ranges)

    def read_physical(self, gpa: int, size: int, pad: bool = False) -> bytes:  # type: ignore[no-redef]
        """ReadGuestPhysicalAddress (replaced per instance by the memory reader's method)."""
        return self._require_memory().read_physical(gpa, size, pad=pad)

    def read_physical_padded(self, gpa: int, size: int) -> Tuple[bytes, List[Tuple[int, int]]]:
        return self._require_memory().read_physical_padded(gpa, size)

    def gpa_to_raw_offset(self, gpa: int) -> int:
        return self._require_memory().map.gpa_to_raw_offset(gpa)

    @property
    def raw_size(self) -> int:
        return self._require_memory().map.raw_size

    def read_raw(self, offset: int, size: int) -> bytes:
        """ReadGuestRawSavedMemory: short only at the end of the raw saved memory."""
        size = max(0, min(size, self.raw_size - offset))
        return self._require_memory().read_raw(offset, size)

    @property
    def memory_block_cache_limit(self) -> int:
        """SetMemoryBlockCacheLimit / GetMemoryBlockCacheLimit, in 1 MiB blocks."""
        return self._require_memory().cache_limit_blocks

    @memory_block_cache_limit.setter
    def memory_block_cache_limit(self, blocks: int) -> None:
        if blocks < 0:
            raise InvalidArgumentError("the cache limit cannot be negative")
        self._require_memory().cache_limit_blocks = blocks


def load_saved_state_file(path: PathOrFile, **options: Any) -> SavedStateDump:
    return SavedStateDump(path, **options)


def apply_replay_log_to_copy(source: str, destination: str) -> int:
    """Write a copy of ``source`` with its pending replay log applied; return the count.

    The DLL's ApplyPendingSavedStateFileReplayLog rewrites the file in place; a forensic
    tool must not, so this writes the repaired image elsewhere (and resets the copy's
    pending count, so Microsoft's tools open it read-only too).
    """
    from . import structs as S

    if os.path.abspath(source) == os.path.abspath(destination):
        raise VmrsError("refusing to write over the evidence file; give another destination")
    with HyperVStorage(source) as storage:
        applied = storage.replay_log.applied_entries
        with open(destination, "xb") as out:
            offset = 0
            size = storage.source.size
            while offset < size:
                chunk = storage.source.read(offset, min(0x100000, size - offset))
                out.write(chunk)
                offset += len(chunk)
            if applied:
                log_offset = storage.header.replay_log_offset
                header = storage.source.read_zero_padded(log_offset, S.REPLAY_LOG_HEADER.size)
                fields = S.REPLAY_LOG_HEADER.as_dict(S.REPLAY_LOG_HEADER.unpack(header))
                fields["current_entries"] = 0
                fields["checksum"] = 0
                packed = S.stamp_checksum(
                    S.REPLAY_LOG_HEADER.pack(**fields), S.REPLAY_LOG_HEADER.offset_of("checksum")
                )
                out.seek(log_offset)
                out.write(packed)
    return applied


__all__ = [
    "RegisterValue",
    "SavedStateDump",
    "apply_replay_log_to_copy",
    "load_saved_state_file",
]
