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
from typing import Any, Dict, Iterator, List, Optional, Tuple

from volatility3_vmrs.savedstate import SavedStateDump
from volatility3_vmrs.savedstate.diagnostics import Diagnostic, Kind, Severity
from volatility3_vmrs.savedstate.errors import (
    ChecksumError,
    GuestMemoryFormatError,
    KeyTreeError,
    PartitionStateError,
    ReplayLogError,
    TruncatedError,
    VmrsError,
)
from volatility3_vmrs.savedstate.memory import PageReader
from volatility3_vmrs.savedstate.memory_map import BLOCK_SIZE, PAGE_SIZE
from volatility3_vmrs.savedstate.storage import Key, KeyType

from . import facts
from .common import (
    EXIT_DAMAGE,
    EXIT_OK,
    add_file_argument,
    add_json_argument,
    open_container,
    open_dump,
    print_json,
    progress,
)

# The model's kind for a reader exception that stopped a stage (most specific first).
_ERROR_KINDS = (
    (PartitionStateError, Kind.PARTITION_STATE),
    (GuestMemoryFormatError, Kind.MEMORY),
    (TruncatedError, Kind.TRUNCATED),
    (ChecksumError, Kind.CHECKSUM),
    (ReplayLogError, Kind.REPLAY_LOG),
    (KeyTreeError, Kind.KEY_TREE),
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify", help="check every checksum, value, range and RamBlock (exit 1: damage)"
    )
    add_file_argument(parser)
    add_json_argument(parser)


def as_diagnostic(error: VmrsError, fallback: Kind = Kind.KEY_TREE) -> Diagnostic:
    """A reader exception that stopped a stage, as an error-severity diagnostic."""
    kind = next((k for cls, k in _ERROR_KINDS if isinstance(error, cls)), fallback)
    return Diagnostic(
        kind=kind,
        severity=Severity.ERROR,
        structure=getattr(error, "structure", type(error).__name__),
        message=getattr(error, "detail", str(error)),
        offset=getattr(error, "offset", None),
        key_path=getattr(error, "key_path", None) or getattr(error, "block", None),
    )


def check_values(keys: Iterator[Key]) -> Tuple[int, List[Diagnostic]]:
    """Decode every value that is not a byte array (arrays are checked by extent)."""
    damage = []
    count = 0
    for key in keys:
        if key.is_node or key.type == KeyType.ARRAY:
            continue
        count += 1
        try:
            key.value  # noqa: B018 - decoding is the check
        except VmrsError as error:
            damage.append(as_diagnostic(error))
    return count, damage


def _chunks(reader: PageReader) -> List[Tuple[int, int]]:
    """(gpa, length) pieces of at most 1 MiB covering every readable run of the map."""
    pieces = []
    for gpa, length in reader.map.readable_runs():
        for offset in range(0, length, BLOCK_SIZE):
            pieces.append((gpa + offset, min(BLOCK_SIZE, length - offset)))
    return pieces


def check_memory(dump: SavedStateDump) -> Tuple[Dict[str, int], List[Diagnostic]]:
    """Read every page the map says the file holds: each RamBlock must decode.

    Pages that do not decode are reported by the page reader into the dump's
    diagnostics; an exception it raises without one is kept here.
    """
    reader = dump.memory
    if reader is None:
        return {}, []
    pieces = _chunks(reader)
    unexplained: List[Diagnostic] = []
    pages = 0
    for gpa, length in progress(pieces, len(pieces), "RamBlocks"):
        before = len(dump.diagnostics)
        try:
            reader.read_physical(gpa, length)
            pages += length // PAGE_SIZE
        except VmrsError as error:
            if len(dump.diagnostics) == before:
                unexplained.append(as_diagnostic(error, Kind.BAD_BLOCK))
    checked = {
        "memory_ranges": len(reader.map.ranges),
        "ramblocks": len(reader.map.blocks),
        "pages_decoded": pages,
    }
    return checked, unexplained


def _open(path: str) -> Tuple[Optional[SavedStateDump], List[Diagnostic], Dict[str, Any]]:
    """The dump, or (when its saved state cannot be read) what the container says."""
    try:
        return open_dump(path, require_saved_state=False), [], {}
    except VmrsError as stopped:
        with open_container(path) as storage:  # unusable container: raises, exit 2
            count, damaged = check_values(storage.walk())
            found = [*storage.diagnostics, *damaged, as_diagnostic(stopped)]
            checked = {
                "key_tables": len(storage.key_table_info),
                "keys": len(storage.keys()),
                "values_decoded": count,
                "partition_state": "unreadable",
            }
        return None, found, checked


def _partition_state(dump: SavedStateDump) -> str:
    if dump.partition is not None:
        return "parsed"
    truncated = dump.storage is not None and dump.storage.truncation is not None
    return "truncated" if truncated else "absent"


def verify(path: str) -> Dict[str, Any]:
    """The ``verify`` document: what was checked and what was found."""
    dump, found, checked = _open(path)
    if dump is not None:
        with dump:
            count, damaged = check_values(dump.keys())
            storage = dump.storage  # None for a legacy .bin without a .vsv container
            checked = {
                "key_tables": len(storage.key_table_info) if storage is not None else 0,
                "keys": len(storage.keys()) if storage is not None else 0,
                "values_decoded": count,
                "partition_state": _partition_state(dump),
            }
            memory_checked, unexplained = check_memory(dump)
            checked.update(memory_checked)
            found = [*dump.diagnostics, *damaged, *unexplained]
    damage = [item for item in found if item.severity >= Severity.WARNING]
    notes = [item for item in found if item.severity < Severity.WARNING]
    return {
        "command": "verify",
        "file": path,
        "intact": not damage,
        "checked": checked,
        "damage": facts.diagnostics(damage),
        "notes": facts.diagnostics(notes),
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
