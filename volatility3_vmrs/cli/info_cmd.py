"""``vmrs info FILE``: what a Hyper-V file is, whether it reads cleanly, what it holds.

For a saved state: format, integrity, memory layout, processors, guest OS (what the
``vmrs.info`` plugin shows). For a configuration-only container (a ``.vmcx``, a running
VM's ``.VMRS``): format, integrity and the VM it describes.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Tuple

from volatility3_vmrs.savedstate import SavedStateDump
from volatility3_vmrs.savedstate.config import read_configuration, version_text
from volatility3_vmrs.savedstate.errors import VmrsError
from volatility3_vmrs.savedstate.memory_map import PAGE_SIZE

from . import facts
from .common import (
    EXIT_OK,
    add_file_argument,
    add_json_argument,
    open_dump,
    print_fields,
    print_json,
)

KIND_SAVED_STATE = "saved-state"
KIND_CONFIGURATION = "configuration-only"
KIND_TRUNCATED = "truncated"  # cut short: whether it held a saved state cannot be told


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "info", help="what the file is, its integrity, memory, processors, guest OS"
    )
    add_file_argument(parser)
    add_json_argument(parser)


def _processors(dump: SavedStateDump) -> List[Dict[str, Any]]:
    rows = []
    for index in dump.vp_indices:
        row: Dict[str, Any] = {"vp": index}
        try:
            registers = dump.registers(index)
            row.update(
                architecture=dump.architecture(index).name,
                paging_mode=dump.paging_mode(index).name,
                mode="kernel" if registers.in_kernel_space else "user",
                active_vtl=dump.active_vtl(index),
                enabled_vtls=dump.enabled_vtls(index),
                error=None,
            )
        except VmrsError as error:
            row.update(
                architecture=None,
                paging_mode=None,
                mode=None,
                active_vtl=None,
                enabled_vtls=None,
                error=str(error),
            )
        rows.append(row)
    return rows


def _saved_state(dump: SavedStateDump) -> Dict[str, Any]:
    """Memory and processor facts; ``None`` for the parts the file does not hold."""
    ranges = dump.memory.map.ranges if dump.memory is not None else None
    partition = dump.partition is not None
    os_info = dump.guest_os_info(0) if partition else None
    return {
        "vm_version": dump.vm_version,
        "vm_version_text": None if dump.vm_version is None else version_text(dump.vm_version),
        "type": dump.saved_state_type,
        "memory_ranges": None if ranges is None else len(ranges),
        "guest_ram_bytes": None if ranges is None else dump.memory.map.total_pages * PAGE_SIZE,
        "vp_count": dump.vp_count if partition else None,
        "enabled_vtls": dump.guest_enabled_vtls if partition else None,
        "processors": _processors(dump) if partition else [],
        "guest_os": None
        if os_info is None
        else {"id": os_info.raw, "description": os_info.describe()},
    }


def _configuration(storage: Any) -> Dict[str, Any]:
    config = read_configuration(storage)
    return {
        "name": config.name.value if config.name else None,
        "vm_id": config.vm_id.value if config.vm_id else None,
        "version": config.version.value if config.version else None,
    }


def collect(path: str) -> Dict[str, Any]:
    """The ``info`` document of one file."""
    with open_dump(path, require_saved_state=False) as dump:
        saved = dump.is_saved_state
        storage = dump.storage  # None for a legacy .bin without a .vsv container
        if saved:
            kind = KIND_SAVED_STATE
        elif storage is not None and storage.truncation is not None:
            kind = KIND_TRUNCATED
        else:
            kind = KIND_CONFIGURATION
        return {
            "command": "info",
            "file": path,
            "file_size": os.path.getsize(path),
            "kind": kind,
            "format": dump.format,
            "container": facts.container(storage) if storage is not None else None,
            "configuration": _configuration(storage) if storage is not None else None,
            "saved_state": _saved_state(dump) if saved else None,
            "diagnostics": facts.grouped(dump.diagnostics),
        }


def _lines(document: Dict[str, Any]) -> List[Tuple[str, Any]]:
    lines: List[Tuple[str, Any]] = [
        ("File", document["file"]),
        ("Size", f"{document['file_size']} bytes"),
        ("Kind", document["kind"]),
        ("Format", document["format"]),
    ]
    if document["container"] is not None:
        lines += _container_lines(document["container"], document["configuration"])
    lines += _state_lines(document)
    problems = [d for d in document["diagnostics"] if d["severity"] != "note"]
    lines.append(("Integrity", "no problem found" if not problems else f"{len(problems)} problems"))
    for item in document["diagnostics"]:
        lines.append((f"{item['severity'].capitalize()} ({item['kind']})", item["text"]))
    return lines


def _container_lines(container: Dict[str, Any], config: Dict[str, Any]) -> List[Tuple[str, Any]]:
    copies = ", ".join("valid" if ok else "invalid" for ok in container["header_copies_valid"])
    return [
        ("Container format", container["format_version_text"]),
        (
            "Active header",
            f"copy at {container['active_header_offset']:#x}, sequence "
            f"{container['sequence']} (copies: {copies})",
        ),
        ("Replay log", container["replay_log"]),
        ("Keys", f"{container['keys']} in {container['key_tables']} key tables"),
        ("Truncated", container["truncated"] or "no"),
        ("VM name", config["name"]),
        ("VM ID", config["vm_id"]),
        ("Configuration version", config["version"]),
    ]


def _state_lines(document: Dict[str, Any]) -> List[Tuple[str, Any]]:
    lines: List[Tuple[str, Any]] = []
    state = document["saved_state"]
    if state is None and document["kind"] == KIND_TRUNCATED:
        lines.append(("Guest memory", "unknown: the file is truncated (see above)"))
    elif state is None:
        lines.append(("Guest memory", "none: the file holds configuration only"))
    else:
        ram = state["guest_ram_bytes"]
        lines += [
            ("Saved-state VM version", state["vm_version_text"]),
            ("Saved-state type", state["type"]),
            ("Memory ranges", state["memory_ranges"] if ram is not None else "none saved"),
            ("Guest RAM", None if ram is None else f"{ram} bytes ({ram / (1 << 20):.1f} MiB)"),
            ("Virtual processors", state["vp_count"] or "none: no processor state"),
        ]
        for vp in state["processors"]:
            if vp["error"]:
                detail = f"unreadable: {vp['error']}"
            else:
                detail = (
                    f"{vp['architecture']}, {vp['paging_mode']}, {vp['mode']} mode, "
                    f"active VTL {vp['active_vtl']}, VTLs {vp['enabled_vtls']:#b}"
                )
            lines.append((f"VP {vp['vp']}", detail))
        guest = state["guest_os"]
        if guest is not None:
            lines.append(("VTLs enabled (partition)", f"{state['enabled_vtls']:#b}"))
            lines.append(("Guest OS", f"{guest['description']} (guest OS ID {guest['id']:#018x})"))
    return lines


def run(args: argparse.Namespace) -> int:
    document = collect(args.file)
    if args.json:
        print_json(document)
    else:
        print_fields(_lines(document))
    return EXIT_OK
