"""``vmrs registers FILE``: the saved registers of every virtual processor and VTL.

One row per VP, VTL and register of the dump provider's legacy ``REGISTER_ID_X64`` enum
(``REGISTER_ID_X86`` for a VP in 32-bit mode), named without the ``X64_Register`` /
``X86_Register`` prefix. Segment registers, TR and LDTR carry their hidden part.
``--register`` takes names case-insensitively: ``rip``, ``X64_RegisterRip``, ``cs`` for
``SegCs``, ``xmm0`` for both ``LowXmm0`` and ``HighXmm0``.
"""

from __future__ import annotations

import argparse
from enum import Enum
from typing import Any, Dict, List, Optional, Sequence

from volatility3_vmrs.register_names import (
    SEGMENT_ATTRIBUTES,
    aliases,
    describe_segment,
    enum_for,
    register_members,
    register_sets,
    register_value,
    short_name,
    unknown_names,
)
from volatility3_vmrs.savedstate.errors import VmrsError
from volatility3_vmrs.savedstate.types import Segment

from .common import (
    EXIT_OK,
    CliError,
    add_file_argument,
    add_json_argument,
    hex_or_none,
    open_dump,
    print_json,
    print_table,
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("registers", help="saved registers per VP and VTL")
    add_file_argument(parser)
    parser.add_argument("--vp", type=int, metavar="N", help="only this virtual processor")
    parser.add_argument("--vtl", type=int, metavar="N", help="only this virtual trust level")
    parser.add_argument(
        "--register", nargs="+", metavar="NAME", help="only these registers (rip cr3 cs xmm0)"
    )
    add_json_argument(parser)


def check_names(wanted: Optional[Sequence[str]]) -> None:
    unknown = unknown_names(wanted)
    if unknown:
        raise CliError(f"unknown register name(s): {', '.join(unknown)}")


def _row(vp: int, vtl: int, registers: Any, member: Enum) -> Dict[str, Any]:
    name = short_name(member)
    row: Dict[str, Any] = {
        "vp": vp, "vtl": vtl, "register": name, "value": None, "selector": None,
        "base": None, "limit": None, "attributes": None, "decoded": None, "error": None,
    }  # fmt: skip
    try:
        row["value"] = register_value(registers, member)
        attribute = SEGMENT_ATTRIBUTES.get(name)
        if attribute is not None:
            segment: Segment = getattr(registers, attribute)
            row.update(
                selector=segment.selector,
                base=segment.base,
                limit=segment.limit,
                attributes=segment.attributes,
                decoded=describe_segment(segment),
            )
    except VmrsError as error:
        row["error"] = str(error)
    return row


def rows(
    dump: Any, vp: Optional[int], vtl: Optional[int], wanted: Optional[Sequence[str]]
) -> List[Dict[str, Any]]:
    asked = {name.strip().lower() for name in wanted} if wanted else None
    return [
        _row(index, level, registers, member)
        for index, level, registers in register_sets(dump, vp, vtl)
        for member in register_members(enum_for(registers))
        if asked is None or aliases(member) & asked
    ]


def run(args: argparse.Namespace) -> int:
    check_names(args.register)
    with open_dump(args.file) as dump:
        found = rows(dump, args.vp, args.vtl, args.register)
    if args.json:
        print_json({"command": "registers", "file": args.file, "registers": found})
        return EXIT_OK
    print_table(
        ("VP", "VTL", "Register", "Value", "Selector", "Base", "Limit", "Attributes", "Decoded"),
        (
            (r["vp"], r["vtl"], r["register"],
             hex_or_none(r["value"]) if r["error"] is None else f"<unreadable: {r['error']}>",
             hex_or_none(r["selector"]), hex_or_none(r["base"]), hex_or_none(r["limit"]),
             hex_or_none(r["attributes"]), r["decoded"])
            for r in found
        ),
    )  # fmt: skip
    return EXIT_OK
