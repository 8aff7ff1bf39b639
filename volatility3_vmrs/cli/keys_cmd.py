"""``vmrs keys FILE``: the container's key tree; ``--dump KEY -o OUT`` writes one value.

Keys are listed depth first in the container's order. Siblings that share a name (arrays
of nodes) appear as ``name``, ``name[1]``, ``name[2]``, ... ``--path`` keeps one key and
its subtree, or, when no key has that path, every key whose path starts with it.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, Iterator, List, Optional

from volatility3_vmrs.savedstate import HyperVStorage
from volatility3_vmrs.savedstate.errors import VmrsError
from volatility3_vmrs.savedstate.storage import Key, KeyType

from .common import (
    EXIT_OK,
    CliError,
    add_file_argument,
    add_json_argument,
    open_container,
    open_output,
    print_json,
    print_table,
)

PREVIEW_BYTES = 16
PREVIEW_CHARS = 60
MAX_JSON_STRING_BYTES = 0x10000
DUMP_CHUNK = 0x100000


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("keys", help="list the key tree, or dump one value")
    add_file_argument(parser)
    parser.add_argument("--path", metavar="PREFIX", help="only this key and its subtree")
    parser.add_argument("--dump", metavar="KEY", help="write the value of KEY to -o OUT")
    parser.add_argument("-o", "--output", metavar="OUT", help="new file for --dump")
    add_json_argument(parser)


def select(storage: HyperVStorage, prefix: Optional[str]) -> Iterator[Key]:
    if not prefix or prefix.strip("/") == "":
        yield from storage.walk("/")
    elif prefix in storage:
        yield from storage.walk(prefix)
    else:
        wanted = "/" + prefix.lstrip("/")
        yield from (key for key in storage.walk("/") if key.path.startswith(wanted))


def _value(key: Key) -> Any:
    """The value for JSON: scalars and strings; None for nodes, arrays, long strings."""
    if key.is_node or key.type in (KeyType.ARRAY, KeyType.FREE, KeyType.UNKNOWN):
        return None
    if key.type == KeyType.STRING and key.size > MAX_JSON_STRING_BYTES:
        return None
    return key.value


def _preview(key: Key) -> str:
    if key.is_node:
        return f"<{len(key.children)} children>"
    if key.type == KeyType.STRING:
        limit = PREVIEW_CHARS * 2
        text = key.read(0, min(key.size - key.size % 2, limit + 2)).decode("utf-16-le", "replace")
        text = text.rstrip("\0")
        return repr(text[:PREVIEW_CHARS] + (" ..." if len(text) > PREVIEW_CHARS else ""))
    if key.type in (KeyType.INT, KeyType.UINT):
        value = key.value
        return f"{value:#x} ({value})"
    if key.type in (KeyType.BOOL, KeyType.DOUBLE):
        return str(key.value)
    head = key.read(0, PREVIEW_BYTES).hex(" ")
    return head + (" ..." if key.size > PREVIEW_BYTES else "")


def describe(key: Key) -> Dict[str, Any]:
    row: Dict[str, Any] = {
        "path": key.path,
        "name": key.name,
        "type": key.type.name.lower(),
        "size": key.size,
        "file_object": key.is_file_object,
        "value": None,
        "preview": None,
        "error": None,
    }
    try:
        row["value"] = _value(key)
        row["preview"] = _preview(key)
    except (VmrsError, ValueError) as error:
        row["error"] = str(error)
    return row


def _dump(storage: HyperVStorage, args: argparse.Namespace) -> int:
    if not args.output:
        raise CliError("--dump needs -o OUT (the new file to write the value to)")
    if args.dump not in storage:
        raise CliError(f"no key {args.dump} in the container")
    key = storage.get(args.dump)
    if key.is_node:
        raise CliError(f"{key.path} is a node: it has children, not a value")
    written = 0
    with open_output(args.output, args.file) as handle:
        while written < key.size:
            chunk = key.read(written, min(DUMP_CHUNK, key.size - written))
            handle.write(chunk)
            written += len(chunk)
    if args.json:
        print_json({"command": "keys", "file": args.file, "key": key.path,
                    "output": args.output, "bytes": written})  # fmt: skip
    else:
        print(f"wrote {written} bytes of {key.path} to {args.output}")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    if args.output and not args.dump:
        raise CliError("-o OUT is only for --dump KEY")
    with open_container(args.file) as storage:
        if args.dump:
            return _dump(storage, args)
        rows: List[Dict[str, Any]] = [describe(key) for key in select(storage, args.path)]
    if args.path and not rows:
        raise CliError(f"no key matches {args.path!r}")
    if args.json:
        print_json({"command": "keys", "file": args.file, "path": args.path, "keys": rows})
    else:
        print_table(
            ("Path", "Type", "Size", "File object", "Value"),
            (
                (r["path"], r["type"], r["size"], "yes" if r["file_object"] else "",
                 r["preview"] if r["error"] is None else f"<unreadable: {r['error']}>")
                for r in rows
            ),
        )  # fmt: skip
    return EXIT_OK
