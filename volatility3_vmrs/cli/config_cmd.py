"""``vmrs config FILE``: the VM's configuration (see :mod:`volatility3_vmrs.savedstate.config`).

The table shows each value once; ``--json`` adds, for each, the key path it came from and
the stored value where it was converted. Absent keys show as ``-`` (``null`` in JSON).
"""

from __future__ import annotations

import argparse
from typing import Any, List, Optional, Tuple

from volatility3_vmrs.savedstate.config import Sourced, VmConfiguration, read_configuration

from .common import (
    EXIT_OK,
    add_file_argument,
    add_json_argument,
    open_container,
    print_fields,
    print_json,
    print_table,
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("config", help="the VM's configuration from the key tree")
    add_file_argument(parser)
    add_json_argument(parser)


def _v(item: Optional[Sourced]) -> Any:
    if item is None:
        return None
    value = item.value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    if value == "":
        return "(empty)"
    return value


def _bytes(item: Optional[Sourced]) -> Any:
    if item is None or item.value is None:
        return None
    return f"{item.value} bytes ({item.value >> 20} MiB)"


def _fields(config: VmConfiguration) -> List[Tuple[str, Any]]:
    memory = config.memory
    return [
        ("VM name", _v(config.name)),
        ("VM ID", _v(config.vm_id)),
        ("Configuration version", _v(config.version)),
        ("Generation", _v(config.generation)),
        ("Created (UTC)", _v(config.creation_time)),
        ("Notes", _v(config.notes)),
        ("Owner SID", _v(config.owner_sid)),
        ("Processors", _v(config.processor_count)),
        ("Startup memory", _bytes(memory.startup_bytes)),
        ("Dynamic memory", _v(memory.dynamic_memory_enabled)),
        ("Minimum memory", _bytes(memory.minimum_bytes)),
        ("Maximum memory", _bytes(memory.maximum_bytes)),
        ("Memory buffer (%)", _v(memory.buffer_percent)),
        ("Memory weight", _v(memory.weight)),
        ("Boot order", _v(config.boot_order)),
        ("Secure boot", _v(config.secure_boot)),
        ("Guest-state file", _v(config.guest_state_file)),
        *((f"Location: {name}", _v(value)) for name, value in config.file_locations),
        ("Checkpoints", _v(config.checkpoints.count)),
        *((f"Checkpoint key {e.key_path}", _v(e)) for e in config.checkpoints.entries),
    ]


def run(args: argparse.Namespace) -> int:
    with open_container(args.file) as storage:
        config = read_configuration(storage)
    if args.json:
        print_json({"command": "config", "file": args.file, **config.to_dict()})
        return EXIT_OK
    if config.empty:
        print("The container holds no configuration keys.")
        return EXIT_OK
    print_fields(_fields(config))
    if config.disks:
        print("\nDisks")
        print_table(
            ("Controller", "Ctrl", "Drive", "Type", "Path"),
            (
                (d.controller_device or d.controller_instance, d.controller, d.drive,
                 _v(d.type), _v(d.path))
                for d in config.disks
            ),
        )  # fmt: skip
    if config.network_adapters:
        print("\nNetwork adapters")
        print_table(
            ("Name", "MAC", "Static MAC", "Switch", "Connection switch", "Connected"),
            (
                (_v(n.name), _v(n.mac_address), _v(n.mac_address_static), _v(n.switch_name),
                 _v(n.connection_switch_name), _v(n.connected))
                for n in config.network_adapters
            ),
        )  # fmt: skip
    for problem in config.problems:
        print(f"Problem: {problem}")
    return EXIT_OK
