"""What the subcommands report about a file, asked of the reader's model in one place.

The container model (header, replay log, key tables, truncation), the dump's one
:class:`~volatility3_vmrs.savedstate.diagnostics.Diagnostics` and the guest memory's
:class:`~volatility3_vmrs.savedstate.memory_map.MemoryMap` are read here and turned into
the JSON-ready dicts the subcommands print; nothing is recomputed.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional

from volatility3_vmrs.savedstate import HyperVStorage
from volatility3_vmrs.savedstate.diagnostics import Diagnostic, Diagnostics
from volatility3_vmrs.savedstate.memory import PageReader
from volatility3_vmrs.savedstate.memory_map import PAGE_SIZE, MemoryRange

PAGE_KINDS = ("raw", "fill", "xpress", "missing", "bad")


def diagnostic(item: Diagnostic) -> Dict[str, Any]:
    """A diagnostic as JSON: the model's own fields, and the one-line text."""
    return {**item.as_dict(), "text": str(item)}


def diagnostics(items: Iterable[Diagnostic]) -> List[Dict[str, Any]]:
    return [diagnostic(item) for item in items]


def grouped(sink: Diagnostics) -> List[Dict[str, Any]]:
    """Every diagnostic of the dump, grouped by kind (kinds in the model's order)."""
    return [diagnostic(item) for items in sink.grouped().values() for item in items]


def container(storage: HyperVStorage) -> Dict[str, Any]:
    header = storage.header
    truncation = storage.truncation
    return {
        "format_version": header.format_version,
        "format_version_text": header.format_version_text,
        "active_header_offset": header.offset,
        "sequence": header.sequence,
        "header_copies_valid": list(storage.header_copies_valid),
        "replay_log": storage.replay_log.status,
        "key_tables": len(storage.key_table_info),
        "keys": len(storage.keys()),
        "truncated": truncation.describe() if truncation is not None else None,
    }


def memory_range(
    reader: PageReader,
    item: MemoryRange,
    count_pages: bool,
    progress: Optional[Callable[[float, str], None]] = None,
) -> Dict[str, Any]:
    """One range as the ``memmap`` JSON shows it."""
    pages: Optional[Dict[str, int]] = None
    if count_pages:
        counts = reader.page_kind_counts(item, progress)
        pages = {kind: int(counts.get(kind, 0)) for kind in PAGE_KINDS}
    missing = reader.map.missing_blocks(item)
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
        "missing_blocks": {"count": missing.count, "first": list(missing.first)},
        "page_kinds": pages,
        "flags": item.flag_names,
    }
