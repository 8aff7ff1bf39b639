"""A legacy saved state: the ``.bin`` (RAM) and the ``.vsv`` beside it, as one model.

:func:`load_legacy_pair` parses the ``.bin`` (:mod:`.legacy`), finds and reads the
``.vsv``, and decides the GPA map: the ``.vsv``'s RamMemoryBlock ranges when it has them,
otherwise block N at guest-physical N x 1 MiB, reported as an assumption (the mapping real
files bear out, section 13). Blocks absent from the ``.bin`` are holes.

Which container the ``.vsv`` of a configuration-5.0 VM uses is UNVERIFIED (section 13:
OVMM-FMT says HyperVStorage; no sample is public). So:

* found beside the ``.bin`` (:func:`find_vsv`: same stem, any case of the extension) or
  given explicitly;
* if it opens as a HyperVStorage container, it is kept (its key tree), and two things
  are looked for: a partition_state (processor state, parsed by
  :class:`.processors.PartitionState`) and ``RamMemoryBlock`` keys (a GPA map, which then
  replaces the identity assumption for the ``.bin``'s blocks);
* anything else is a note that the ``.vsv`` could not be interpreted: the ``.bin``'s
  memory still serves, and no register is ever made up.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from . import memory as M
from .errors import IntegrityWarning, VmrsError
from .legacy import LegacyBin, identity_ranges, load_legacy_bin
from .processors import KEY_PATH as PARTITION_STATE_PATH
from .processors import PartitionState
from .storage import HyperVStorage, Key, KeyType, open_storage

VSV_EXTENSION = ".vsv"
# Where a partition_state may live: the current path, and the one OVMM-FMT gives for
# versions up to 5.0 (no /savedstate prefix; section 9.1).
PARTITION_STATE_PATHS = (PARTITION_STATE_PATH, "/savedVM/partition_state")
# RamMemoryBlock<n> (current) or RamMemoryBlock/<n>/ (before 0x0600, as nested nodes).
_RANGE_PATH = re.compile(r"(?:/savedstate)?/RamMemoryBlock/?(0|[1-9][0-9]{0,8})\Z")
STRUCTURE = ".vsv"


@dataclass(frozen=True)
class VsvCompanion:
    """What the ``.vsv`` gave: its container (or None), processors, a GPA map."""

    path: str
    storage: Optional[HyperVStorage]
    partition: Optional[PartitionState]
    ranges: Tuple[M.MemoryRange, ...]
    warnings: Tuple[IntegrityWarning, ...]
    notes: Tuple[IntegrityWarning, ...]

    @property
    def interpreted(self) -> bool:
        return self.storage is not None

    def close(self) -> None:
        if self.storage is not None:
            self.storage.close()


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


def load_vsv(path: str) -> VsvCompanion:
    """Open ``path`` leniently; never raises for what the file holds."""
    notes: List[IntegrityWarning] = []
    try:
        storage = open_storage(path)
    except VmrsError as error:
        notes.append(
            IntegrityWarning(
                "legacy",
                STRUCTURE,
                f"{os.path.basename(path)} could not be interpreted ({error}); no processor "
                "state, the memory map of the .bin is assumed",
            )
        )
        return VsvCompanion(path, None, None, (), (), tuple(notes))
    warnings: List[IntegrityWarning] = list(storage.warnings)
    partition = _partition(storage, warnings, notes)
    ranges = _ranges(storage, warnings)
    if ranges:
        notes.append(
            IntegrityWarning(
                "legacy",
                STRUCTURE,
                f"GPA map of {len(ranges)} range(s) from the .vsv's RamMemoryBlock keys "
                "replaces the assumption that block N lies at N x 1 MiB",
            )
        )
    return VsvCompanion(path, storage, partition, ranges, tuple(warnings), tuple(notes))


def _partition(
    storage: HyperVStorage, warnings: List[IntegrityWarning], notes: List[IntegrityWarning]
) -> Optional[PartitionState]:
    for path in PARTITION_STATE_PATHS:
        if path not in storage:
            continue
        key = storage.get(path)
        try:
            state = PartitionState.parse(key.read(), key_path=key.path)
        except VmrsError as error:
            warnings.append(
                IntegrityWarning(
                    "legacy", "partition_state", f"not usable: {error}", key_path=key.path
                )
            )
            return None
        warnings.extend(state.warnings)
        return state
    notes.append(
        IntegrityWarning(
            "legacy", STRUCTURE, "the .vsv holds no partition_state: no processor state"
        )
    )
    return None


def _ranges(storage: HyperVStorage, warnings: List[IntegrityWarning]) -> Tuple[M.MemoryRange, ...]:
    """RamMemoryBlock keys as ranges, sorted by GPA; bad or overlapping ones reported."""
    found: List[M.MemoryRange] = []
    for key in storage.walk():
        match = _RANGE_PATH.match(key.path)
        if match is None or key.is_node:
            continue
        memory_range = _range(int(match.group(1)), key, warnings)
        if memory_range is not None:
            found.append(memory_range)
    found.sort(key=lambda r: (r.gpa_page, r.number))
    kept: List[M.MemoryRange] = []
    for memory_range in found:
        if kept and memory_range.gpa_page < kept[-1].gpa_page + kept[-1].page_count:
            warnings.append(
                IntegrityWarning(
                    "legacy",
                    "RamMemoryBlock",
                    f"overlaps {kept[-1].key_path}; ignored",
                    key_path=memory_range.key_path,
                )
            )
            continue
        kept.append(memory_range)
    return tuple(kept)


def _range(number: int, key: Key, warnings: List[IntegrityWarning]) -> Optional[M.MemoryRange]:
    def bad(message: str) -> None:
        warnings.append(IntegrityWarning("legacy", "RamMemoryBlock", message, key_path=key.path))

    if key.type != KeyType.ARRAY:
        bad(f"type {key.type.name}, expected Array; ignored")
        return None
    try:
        data = key.read()
    except VmrsError as error:
        bad(f"unreadable: {error}")
        return None
    layouts = {
        M.RAM_MEMORY_BLOCK.size: M.RAM_MEMORY_BLOCK,
        M.RAM_MEMORY_BLOCK_V40.size: M.RAM_MEMORY_BLOCK_V40,
    }
    layout = layouts.get(len(data))
    if layout is None:
        bad(f"value of {len(data)} bytes, expected 48 or 40; ignored")
        return None
    fields = layout.unpack(data)
    if (
        fields.page_count == 0
        or fields.page_count > M.MAX_RANGE_PAGES
        or fields.gpa_index_start + fields.page_count > M.MAX_GPA_PAGE
        or fields.mbp_index_start + fields.page_count > M.MAX_RANGE_PAGES
    ):
        bad(
            f"range of {fields.page_count:#x} pages at GPA page {fields.gpa_index_start:#x} "
            f"(MBP {fields.mbp_index_start:#x}) is empty or exceeds the 52-bit space; ignored"
        )
        return None
    return M.MemoryRange(
        number=number,
        key_path=key.path,
        gpa_page=fields.gpa_index_start,
        page_count=fields.page_count,
        mbp_start=fields.mbp_index_start,
        flags=fields.flags,
        virtual_node=fields.virtual_node,
    )


# --- the pair -------------------------------------------------------------------------
MAPPING_IDENTITY = "identity"
MAPPING_VSV = "vsv"


@dataclass(frozen=True)
class LegacyPair:
    """A ``.bin`` with its ``.vsv`` (or none), and the GPA map chosen for its blocks."""

    bin: LegacyBin
    vsv: Optional[VsvCompanion]
    ranges: Tuple[M.MemoryRange, ...]
    mapping: str  # MAPPING_IDENTITY or MAPPING_VSV
    warnings: Tuple[IntegrityWarning, ...]
    notes: Tuple[IntegrityWarning, ...]

    @property
    def partition(self) -> Optional[PartitionState]:
        return self.vsv.partition if self.vsv is not None else None

    def close(self) -> None:
        if self.vsv is not None:
            self.vsv.close()


def load_legacy_pair(
    bin_path: str, vsv_path: Optional[str] = None, *, strict: bool = False
) -> LegacyPair:
    """Parse the ``.bin``, read the ``.vsv`` (given, else found beside it), map the blocks."""
    legacy_bin = load_legacy_bin(bin_path, strict=strict)
    notes = list(legacy_bin.notes)
    warnings = list(legacy_bin.warnings)
    path = vsv_path if vsv_path is not None else find_vsv(bin_path)
    vsv: Optional[VsvCompanion] = None
    if path is None:
        stem = os.path.splitext(os.path.basename(bin_path))[0]
        notes.append(
            IntegrityWarning(
                "legacy",
                STRUCTURE,
                f"no .vsv beside the .bin (looked for {stem}.vsv in any case): no processor "
                "state, no GPA map",
            )
        )
    else:
        vsv = load_vsv(path)
        notes.extend(vsv.notes)
        warnings.extend(vsv.warnings)
    if vsv is not None and vsv.ranges:
        ranges, mapping = vsv.ranges, MAPPING_VSV
        warnings.extend(_missing_blocks(legacy_bin, ranges))
    else:
        ranges, mapping = identity_ranges(legacy_bin), MAPPING_IDENTITY
        notes.append(
            IntegrityWarning(
                "legacy",
                "memory map",
                "assumed: block RamBlock/N/ lies at guest-physical N x 1 MiB (the .bin holds no "
                "GPA map; real files bear this out for RAM below the MMIO gap)",
            )
        )
        if len(ranges) > 1:
            notes.append(
                IntegrityWarning(
                    "legacy",
                    "memory map",
                    f"blocks form {len(ranges)} runs; the missing blocks between them are holes",
                )
            )
    return LegacyPair(legacy_bin, vsv, ranges, mapping, tuple(warnings), tuple(notes))


def _missing_blocks(
    legacy_bin: LegacyBin, ranges: Tuple[M.MemoryRange, ...]
) -> List[IntegrityWarning]:
    """Ranges of the .vsv's map whose blocks the .bin does not hold (counted, not walked)."""
    present = legacy_bin.block_numbers
    found = []
    for memory_range in ranges:
        first, last = memory_range.first_block, memory_range.last_block
        held = sum(1 for number in present if first <= number <= last)
        if held < last - first + 1:
            found.append(
                IntegrityWarning(
                    "legacy",
                    "RamBlock",
                    f"{last - first + 1 - held} block(s) of this range are not in the .bin; "
                    f"their pages of GPA {memory_range.gpa_start:#x}-{memory_range.gpa_end - 1:#x} "
                    "are unreadable",
                    key_path=memory_range.key_path,
                )
            )
    return found
