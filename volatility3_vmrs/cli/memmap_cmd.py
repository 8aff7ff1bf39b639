"""``vmrs memmap FILE``: guest-physical memory ranges and how their pages are saved.

One row per memory range (a RamMemoryBlock, overlaps clipped): GPA start and end, pages,
offset in the saved RAM, the 1 MiB RamBlocks it spans and how many are missing, and how
many pages are stored raw, as fills, XPRESS-compressed, missing (RamBlock absent) or bad
(a stream that does not decode). ``--quick`` skips the page counts (they index every
compressed RamBlock).
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, List

from . import facts
from .common import (
    EXIT_OK,
    add_file_argument,
    add_json_argument,
    open_dump,
    print_json,
    print_table,
    progress,
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("memmap", help="guest memory ranges and their page kinds")
    add_file_argument(parser)
    parser.add_argument("--quick", action="store_true", help="no page counts")
    add_json_argument(parser)


def _blocks(item: Dict[str, Any]) -> str:
    first, last = item["first_block"], item["last_block"]
    text = str(first) if first == last else f"{first}-{last}"
    missing = item["missing_blocks"]
    if missing["count"]:
        shown = ", ".join(str(n) for n in missing["first"])
        more = " ..." if missing["count"] > len(missing["first"]) else ""
        text += f" ({missing['count']} absent: {shown}{more})"
    return text


def run(args: argparse.Namespace) -> int:
    with open_dump(args.file) as dump:
        ranges = dump.memory_ranges  # raises when the file holds no guest memory
        items: List[Dict[str, Any]] = [
            facts.memory_range(dump.memory, item, not args.quick)
            for item in progress(ranges, len(ranges), "ranges")
        ]
    if args.json:
        document = {"command": "memmap", "file": args.file, "page_size": facts.PAGE_SIZE}
        print_json({**document, "ranges": items})
        return EXIT_OK

    def kinds(item: Dict[str, Any]) -> List[Any]:
        counts = item["page_kinds"]
        return [None if counts is None else counts[k] for k in facts.PAGE_KINDS]

    print_table(
        ("Range", "GPA start", "GPA end", "Pages", "Saved RAM offset", "RamBlocks",
         "Raw", "Fill", "XPRESS", "Missing", "Bad", "Flags"),
        (
            (i["range"], f"{i['gpa_start']:#x}", f"{i['gpa_end'] - 1:#x}", i["pages"],
             f"{i['saved_ram_offset']:#x}", _blocks(i), *kinds(i), ", ".join(i["flags"]))
            for i in items
        ),
    )  # fmt: skip
    return EXIT_OK
