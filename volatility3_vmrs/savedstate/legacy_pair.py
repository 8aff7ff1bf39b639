"""A legacy saved state: the ``.bin`` (RAM) and the ``.vsv`` beside it, as one model.

:func:`open_legacy_pair` parses the ``.bin`` (:mod:`.legacy`), finds and reads the
``.vsv``, and decides the GPA map: the ``.vsv``'s RamMemoryBlock ranges when it has them
(reported as replacing the assumption), otherwise block N at guest-physical N x 1 MiB,
reported as an assumption (the mapping real files bear out, section 13). Numbers no entry
names are holes.

Which container the ``.vsv`` of a configuration-5.0 VM uses is UNVERIFIED (section 13:
OVMM-FMT says HyperVStorage; no sample is public). So:

* it is found beside the ``.bin`` (:func:`find_vsv`: same stem, any case of the
  extension) or given explicitly;
* if it opens as a HyperVStorage container it is kept (its key tree), read leniently
  (its own findings are reported as kind ``companion``), and two things are looked for:
  a partition_state (processor state, :class:`.processors.PartitionState`) and
  RamMemoryBlock keys (a GPA map);
* anything else is a note that the ``.vsv`` could not be interpreted: the ``.bin``'s
  memory still serves, and no register is ever made up.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from . import paths
from .diagnostics import Diagnostics, Kind
from .errors import VmrsError
from .legacy import LegacyBin, identity_ranges, memory_map, parse_legacy_bin
from .memory_map import MemoryMap, MemoryRange, parse_range
from .processors import PartitionState
from .source import ReadOnlySource
from .storage import HyperVStorage

VSV_EXTENSION = ".vsv"
STRUCTURE = ".vsv"
# Where a partition_state may live: the current path, and the one OVMM-FMT gives for
# versions up to 5.0 (no /savedstate prefix; section 9.1).
PARTITION_STATE_PATHS = (paths.PARTITION_STATE, "/savedVM/partition_state")
# RamMemoryBlock<n> (current) or RamMemoryBlock/<n>/ (before 0x0600, as nested nodes).
_RANGE_PATH = re.compile(r"(?:/savedstate)?/RamMemoryBlock/?(0|[1-9][0-9]{0,8})\Z")

MAPPING_IDENTITY = "identity"
MAPPING_VSV = "vsv"
ASSUMPTION = (
    "assumed: block RamBlock/N/ lies at guest-physical N x 1 MiB (the .bin holds no GPA "
    "map; real files bear this out for RAM below the MMIO gap)"
)


@dataclass(frozen=True)
class VsvCompanion:
    """What the ``.vsv`` gave: its container (None when not one), processors, a GPA map."""

    path: str
    storage: Optional[HyperVStorage]
    partition: Optional[PartitionState]
    ranges: Tuple[MemoryRange, ...]

    @property
    def interpreted(self) -> bool:
        return self.storage is not None

    def close(self) -> None:
        if self.storage is not None:
            self.storage.close()


@dataclass(frozen=True)
class LegacyPair:
    """A ``.bin`` with its ``.vsv`` (or none) and the memory map chosen for its blocks."""

    bin: LegacyBin
    vsv: Optional[VsvCompanion]
    memory_map: MemoryMap
    mapping: str  # MAPPING_IDENTITY or MAPPING_VSV

    @property
    def partition(self) -> Optional[PartitionState]:
        return self.vsv.partition if self.vsv is not None else None

    @property
    def storage(self) -> Optional[HyperVStorage]:
        return self.vsv.storage if self.vsv is not None else None

    def close(self) -> None:
        if self.vsv is not None:
            self.vsv.close()


def find_vsv(bin_path: str) -> Optional[str]:
    """The ``.vsv`` with the ``.bin``'s stem in its directory (extension in any case)."""
    directory, name = os.path.split(os.path.abspath(bin_path))
    stem = os.path.splitext(name)[0]
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return None
    for candidate in names:
        base, extension = os.path.splitext(candidate)
        if base == stem and extension.lower() == VSV_EXTENSION:
            return os.path.join(directory, candidate)
    return None


def load_vsv(path: str, diag: Diagnostics) -> VsvCompanion:
    """Open ``path`` leniently; what it holds never makes loading fail (outside strict)."""
    own = Diagnostics()  # the .vsv's own findings, re-reported as kind companion
    try:
        storage = HyperVStorage(path, diagnostics=own)
    except VmrsError as error:
        diag.note(
            Kind.COMPANION,
            STRUCTURE,
            f"{os.path.basename(path)} could not be interpreted ({error}); no processor "
            "state from it, the memory map of the .bin is assumed",
        )
        return VsvCompanion(path, None, None, ())
    try:
        partition = _partition(storage, own, diag)
        ranges = _ranges(storage, own)
        for item in own:
            diag.report(
                Kind.COMPANION,
                item.severity,
                f".vsv {item.structure}",
                item.message,
                offset=item.offset,
                key_path=item.key_path,
                detail=item.kind.value,
            )
    except BaseException:
        storage.close()
        raise
    return VsvCompanion(path, storage, partition, ranges)


def _partition(
    storage: HyperVStorage, own: Diagnostics, diag: Diagnostics
) -> Optional[PartitionState]:
    for path in PARTITION_STATE_PATHS:
        if path not in storage:
            continue
        key = storage.get(path)
        try:
            return PartitionState.parse(key.read(), key_path=key.path, diagnostics=own)
        except VmrsError as error:
            own.warn(
                Kind.PARTITION_STATE,
                "partition_state",
                f"not usable, no processor state: {error}",
                key_path=key.path,
            )
            return None
    diag.note(Kind.COMPANION, STRUCTURE, "the .vsv holds no partition_state: no processor state")
    return None


def _ranges(storage: HyperVStorage, own: Diagnostics) -> Tuple[MemoryRange, ...]:
    """RamMemoryBlock keys as ranges; a malformed one is reported and left out."""
    found: List[MemoryRange] = []
    for key in storage.walk():
        match = _RANGE_PATH.match(key.path)
        if match is None or key.is_node:
            continue
        try:
            memory_range = parse_range(int(match.group(1)), key, None, own)
        except VmrsError as error:
            own.warn(Kind.MEMORY, "RamMemoryBlock", f"ignored: {error}", key_path=key.path)
            continue
        if memory_range is not None:
            found.append(memory_range)
    return tuple(found)


def open_legacy_pair(
    source: ReadOnlySource,
    diag: Diagnostics,
    *,
    bin_path: Optional[str] = None,
    vsv_path: Optional[str] = None,
) -> LegacyPair:
    """Parse the ``.bin`` open in ``source``; read the ``.vsv`` (``vsv_path``, else the
    one beside ``bin_path``); map the blocks. Everything found goes to ``diag``."""
    legacy_bin = parse_legacy_bin(source, diag)
    path = vsv_path if vsv_path is not None else (find_vsv(bin_path) if bin_path else None)
    vsv: Optional[VsvCompanion] = None
    if path is None:
        where = os.path.splitext(os.path.basename(bin_path))[0] + ".vsv" if bin_path else ""
        diag.note(
            Kind.COMPANION,
            STRUCTURE,
            f"no .vsv beside the .bin (looked for {where} in any case): no processor state, "
            "no GPA map"
            if where
            else "no .vsv given (the .bin was not opened by path): no processor state, no GPA map",
        )
    else:
        vsv = load_vsv(path, diag)
    try:
        if vsv is not None and vsv.ranges:
            diag.note(
                Kind.ASSUMPTION,
                "memory map",
                f"GPA map of {len(vsv.ranges)} range(s) from the .vsv's RamMemoryBlock keys "
                "replaces the assumption that block N lies at N x 1 MiB",
            )
            ranges, mapping = vsv.ranges, MAPPING_VSV
        else:
            diag.note(Kind.ASSUMPTION, "memory map", ASSUMPTION)
            ranges, mapping = identity_ranges(legacy_bin), MAPPING_IDENTITY
            if len(ranges) > 1:
                diag.note(
                    Kind.ASSUMPTION,
                    "memory map",
                    f"the blocks form {len(ranges)} runs; the numbers between them are holes",
                )
        return LegacyPair(legacy_bin, vsv, memory_map(legacy_bin, ranges, diag), mapping)
    except BaseException:
        if vsv is not None:
            vsv.close()
        raise
