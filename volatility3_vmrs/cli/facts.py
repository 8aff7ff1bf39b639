"""What the subcommands report about a file, gathered from the reader in one place.

The reader is being reshaped (one diagnostics object, a memory map): this module is the
only part of the command that reads more than the reader's public API (the container's
header and replay-log status, the memory ranges and RamBlocks), so that the change
touches it alone.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Iterable, List, Optional

from volatility3_vmrs.savedstate import HyperVStorage, SavedStateDump
from volatility3_vmrs.savedstate.errors import IntegrityWarning
from volatility3_vmrs.savedstate.memory import PAGE_SIZE, GuestMemory, MemoryRange

PAGE_KINDS = ("raw", "fill", "xpress", "missing", "bad")
SHOWN_MISSING_BLOCKS = 8


def severity(warning: IntegrityWarning) -> str:
    """``note`` for what is normal in a sound file (a replay log applied in memory)."""
    if warning.kind == "replay-log" and "applied in memory" in warning.message:
        return "note"
    return "warning"


def diagnostic(warning: IntegrityWarning) -> Dict[str, Any]:
    return {
        "kind": warning.kind,
        "severity": severity(warning),
        "structure": warning.structure,
        "message": warning.message,
        "offset": warning.offset,
        "key_path": warning.key_path,
        "text": str(warning),
    }


def diagnostics(warnings: Iterable[IntegrityWarning]) -> List[Dict[str, Any]]:
    return [diagnostic(w) for w in warnings]


def container(storage: HyperVStorage) -> Dict[str, Any]:
    header = storage.header
    return {
        "format_version": header.format_version,
        "format_version_text": header.format_version_text,
        "active_header_offset": header.offset,
        "sequence": header.sequence,
        "header_copies_valid": list(storage.header_copies_valid),
        "replay_log": storage.replay_log.status,
        "key_tables": len(storage.key_table_info),
        "keys": len(storage.keys()),
    }


def storage_of(dump: SavedStateDump) -> HyperVStorage:
    return dump.storage


def memory_of(dump: SavedStateDump) -> GuestMemory:
    return dump.memory


def missing_blocks(memory: GuestMemory, memory_range: MemoryRange) -> Dict[str, Any]:
    """How many RamBlocks of a range are absent, and the first few numbers."""
    first, last = memory_range.first_block, memory_range.last_block
    present = sum(1 for number in memory.blocks if first <= number <= last)
    count = last - first + 1 - present
    # Each number skipped is a block the file holds: bounded by the number of keys.
    absent = (n for n in range(first, last + 1) if n not in memory.blocks) if count else ()
    return {"count": count, "first": list(itertools.islice(absent, SHOWN_MISSING_BLOCKS))}


def memory_range(
    memory: GuestMemory,
    item: MemoryRange,
    count_pages: bool,
    progress: Optional[Callable[[float, str], None]] = None,
) -> Dict[str, Any]:
    """One range as the ``memmap`` JSON shows it."""
    pages: Optional[Dict[str, int]] = None
    if count_pages:
        counts = memory.page_kind_counts(item, progress)
        pages = {kind: int(counts.get(kind, 0)) for kind in PAGE_KINDS}
    return {
        "range": item.number,
        "key_path": item.key_path,
        "gpa_start": item.gpa_start,
        "gpa_end": item.gpa_end,
        "pages": item.page_count,
        "size": item.page_count * PAGE_SIZE,
        "saved_ram_offset": item.mbp_start * PAGE_SIZE,
        "first_block": item.first_block,
        "last_block": item.last_block,
        "missing_blocks": missing_blocks(memory, item),
        "page_kinds": pages,
        "flags": item.flag_names,
    }


def ranges(dump: SavedStateDump) -> List[MemoryRange]:
    return list(memory_of(dump).ranges)


def block_keys(dump: SavedStateDump) -> Dict[int, Any]:
    """RamBlock number -> the block object (for verify to decode each)."""
    return dict(memory_of(dump).blocks)
