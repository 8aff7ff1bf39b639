"""``vmrs verify FILE``: check everything that can be checked, list what is damaged.

Checked: every CRC-32 the container has (headers, replay log, object and key tables,
key entries), every key's place in the tree and every value's place in the file, every
scalar and string value decoding, and for a saved state the partition state (it must
parse), every memory range (all of its RamBlocks present) and every RamBlock (each page
of each range decodes to 4 KiB).

Exit status: 0 intact (notes such as a replay log applied in memory are listed but are no
damage); 1 damage found, each item with its structure, file offset and key path; 2 the
file cannot be checked at all (no HyperVStorage header, a container version or replay
log the reader refuses).
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional, Tuple

from volatility3_vmrs.savedstate import HyperVStorage, SavedStateDump
from volatility3_vmrs.savedstate.errors import IntegrityWarning, VmrsError, VmrsFormatError
from volatility3_vmrs.savedstate.memory import BLOCK_SIZE, PAGE_SIZE, PAGES_PER_BLOCK
from volatility3_vmrs.savedstate.provider import PARTITION_STATE_PATH
from volatility3_vmrs.savedstate.storage import KeyType

from . import facts
from .common import (
    EXIT_DAMAGE,
    EXIT_OK,
    add_file_argument,
    add_json_argument,
    open_container,
    print_json,
    progress,
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify", help="check every checksum, value, range and RamBlock (exit 1: damage)"
    )
    add_file_argument(parser)
    add_json_argument(parser)


def _from_error(error: VmrsError, kind: str) -> Dict[str, Any]:
    """A reader exception as a damage item."""
    return facts.diagnostic(
        IntegrityWarning(
            kind=kind,
            structure=getattr(error, "structure", type(error).__name__),
            message=getattr(error, "detail", str(error)),
            offset=getattr(error, "offset", None),
            key_path=getattr(error, "key_path", None) or getattr(error, "block", None),
        )
    )


def _check_values(storage: HyperVStorage) -> Tuple[int, List[Dict[str, Any]]]:
    """Decode every value that is not a byte array (arrays are checked by position)."""
    damage = []
    count = 0
    for key in storage.walk():
        if key.is_node or key.type == KeyType.ARRAY:
            continue
        count += 1
        try:
            key.value  # noqa: B018 - decoding is the check
        except (VmrsError, ValueError) as error:
            if isinstance(error, VmrsError):
                damage.append(_from_error(error, "value"))
            else:
                damage.append(_from_error(VmrsFormatError(str(error), key_path=key.path), "value"))
    return count, damage


def _block_spans(dump: SavedStateDump) -> List[Tuple[int, int, int]]:
    """(RamBlock number, GPA, length) of every range piece that a present block holds."""
    blocks = facts.block_keys(dump)
    spans = []
    for item in facts.ranges(dump):
        end = item.mbp_start + item.page_count
        for number in sorted(n for n in blocks if item.first_block <= n <= item.last_block):
            lo = max(item.mbp_start, number * PAGES_PER_BLOCK)
            hi = min(end, (number + 1) * PAGES_PER_BLOCK)
            spans.append((number, (item.gpa_page + lo - item.mbp_start) * PAGE_SIZE,
                          (hi - lo) * PAGE_SIZE))  # fmt: skip
    return spans


def _check_memory(dump: SavedStateDump) -> Tuple[Dict[str, int], List[Dict[str, Any]]]:
    """Decode every page of every range that a present RamBlock holds."""
    blocks = facts.block_keys(dump)
    spans = _block_spans(dump)
    failed: Dict[int, Dict[str, Any]] = {}
    pages = 0
    for number, gpa, length in progress(spans, len(spans), "RamBlocks"):
        if number in failed:
            continue
        try:
            for offset in range(0, length, BLOCK_SIZE):
                dump.read_physical(gpa + offset, min(BLOCK_SIZE, length - offset))
            pages += length // PAGE_SIZE
        except VmrsError as error:
            item = _from_error(error, "memory")
            item["key_path"] = item["key_path"] or blocks[number].key_path
            failed[number] = item
    checked = {"memory_ranges": len(facts.ranges(dump)), "ramblocks": len(blocks),
               "pages_decoded": pages}  # fmt: skip
    return checked, list(failed.values())


def verify(path: str) -> Dict[str, Any]:
    """The ``verify`` document: what was checked and what was found."""
    found: List[Dict[str, Any]] = []
    checked: Dict[str, Any] = {}
    with open_container(path) as storage:
        found += facts.diagnostics(storage.warnings)
        checked["key_tables"] = len(storage.key_table_info)
        checked["keys"] = len(storage.keys())
        checked["values_decoded"], damaged_values = _check_values(storage)
        found += damaged_values
        has_state = PARTITION_STATE_PATH in storage
    checked["partition_state"] = "absent"
    if has_state:
        dump: Optional[SavedStateDump] = None
        try:
            dump = SavedStateDump(path)
        except VmrsError as error:
            checked["partition_state"] = "unreadable"
            found.append(_from_error(error, "saved-state"))
        if dump is not None:
            with dump:
                checked["partition_state"] = "parsed"
                container_count = len(storage.warnings)
                found += facts.diagnostics(dump.warnings[container_count:])
                memory_checked, damaged_blocks = _check_memory(dump)
                checked.update(memory_checked)
                found += damaged_blocks
    damage = [item for item in found if item["severity"] != "note"]
    notes = [item for item in found if item["severity"] == "note"]
    return {
        "command": "verify",
        "file": path,
        "intact": not damage,
        "checked": checked,
        "damage": damage,
        "notes": notes,
    }


def run(args: argparse.Namespace) -> int:
    document = verify(args.file)
    if args.json:
        print_json(document)
    else:
        checked = document["checked"]
        print(f"{args.file}: " + ", ".join(f"{name} {value}" for name, value in checked.items()))
        for item in document["damage"]:
            print(f"DAMAGE  [{item['kind']}] {item['text']}")
        for item in document["notes"]:
            print(f"note    [{item['kind']}] {item['text']}")
        print("intact" if document["intact"] else f"{len(document['damage'])} damaged item(s)")
    return EXIT_OK if document["intact"] else EXIT_DAMAGE
