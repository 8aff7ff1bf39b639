"""vmrs.config: the VM's configuration from the container's ``/configuration`` keys.

The same decoding as ``vmrs config`` (:mod:`volatility3_vmrs.savedstate.config`): one
row per value, with the key path it came from; absent keys give no row.
"""

from __future__ import annotations

from typing import Any, Iterator, List, Optional, Tuple

from volatility3.framework import interfaces, renderers

from volatility3_vmrs.savedstate.config import Sourced, VmConfiguration, read_configuration

from .common import find_vmrs_layer, primary_requirement, refuse

COLUMNS = [("Setting", str), ("Value", str), ("Key path", str)]


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


def settings(config: VmConfiguration) -> Iterator[Tuple[str, Optional[Sourced]]]:
    """(setting name, value) pairs in the order ``vmrs config`` shows them."""
    memory = config.memory
    yield from (
        ("VM name", config.name),
        ("VM ID", config.vm_id),
        ("Configuration version", config.version),
        ("Generation", config.generation),
        ("Created (UTC)", config.creation_time),
        ("Notes", config.notes),
        ("Owner SID", config.owner_sid),
        ("Processors", config.processor_count),
        ("Startup memory (bytes)", memory.startup_bytes),
        ("Dynamic memory", memory.dynamic_memory_enabled),
        ("Minimum memory (bytes)", memory.minimum_bytes),
        ("Maximum memory (bytes)", memory.maximum_bytes),
        ("Memory buffer (%)", memory.buffer_percent),
        ("Memory weight", memory.weight),
        ("Boot order", config.boot_order),
        ("Secure boot", config.secure_boot),
        ("Guest-state file", config.guest_state_file),
        ("Checkpoints", config.checkpoints.count),
    )
    for name, value in config.file_locations:
        yield f"Location: {name}", value
    for disk in config.disks:
        where = f"Disk {disk.controller_device or disk.controller_instance} {disk.controller}:"
        yield f"{where}{disk.drive} type", disk.type
        yield f"{where}{disk.drive} path", disk.path
    for adapter in config.network_adapters:
        label = f"Network adapter {adapter.instance_id}"
        yield f"{label} name", adapter.name
        yield f"{label} MAC", adapter.mac_address
        yield f"{label} static MAC", adapter.mac_address_static
        yield f"{label} switch", adapter.switch_name
        yield f"{label} connection switch", adapter.connection_switch_name


class Config(interfaces.plugins.PluginInterface):
    """Shows the VM's configuration (name, ID, memory, processors, disks, network...)."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [primary_requirement()]

    def _generator(self, config: VmConfiguration) -> Iterator[Tuple[int, Tuple[str, str, str]]]:
        for name, value in settings(config):
            if value is not None:
                yield 0, (name, _text(value.value), value.key_path)
        for problem in config.problems:
            yield 0, ("Problem", problem, "")

    def run(self) -> interfaces.renderers.TreeGrid:
        layer = find_vmrs_layer(self.context, self.config["primary"])
        if layer.dump.storage is None:
            refuse(
                "no VM configuration: a legacy .bin holds none, and no .vsv container was "
                "read beside it"
            )
        config = read_configuration(layer.dump.storage)
        return renderers.TreeGrid(COLUMNS, self._generator(config))
