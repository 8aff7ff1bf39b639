"""vmrs.info: what the saved-state file says about itself and the saved VM."""

from __future__ import annotations

import logging
from typing import Iterator, List, Tuple

from volatility3.framework import interfaces, renderers

from volatility3_vmrs.savedstate.diagnostics import Kind
from volatility3_vmrs.savedstate.errors import VmrsError
from volatility3_vmrs.savedstate.legacy_pair import ASSUMPTION, MAPPING_VSV
from volatility3_vmrs.savedstate.provider import SavedStateDump

from .common import VmrsLayer, find_vmrs_layer, primary_requirement

vollog = logging.getLogger(__name__)


def _version_text(value) -> str:
    if value is None:
        return "absent"
    return f"{value >> 8}.{value & 0xFF} ({value:#06x})"


def _legacy_rows(dump: SavedStateDump) -> Iterator[Tuple[str, str]]:
    """What only a legacy pair has: the .bin's index, the .vsv, the memory map's origin."""
    legacy = dump.legacy
    header = legacy.bin.header
    yield "VM configuration version", _version_text(dump.vm_version)
    damaged = f", {len(legacy.bin.damaged)} damaged" if legacy.bin.damaged else ""
    yield (
        ".bin index",
        f"version {header.version:#06x}, {len(legacy.bin.blocks)} RamBlock entries usable "
        f"of {header.index_capacity} slots{damaged}",
    )
    vsv = legacy.vsv
    if vsv is None:
        yield ".vsv", "missing: none found beside the .bin (no processor state, no GPA map)"
    elif not vsv.interpreted:
        yield ".vsv", f"{vsv.path}: could not be interpreted (see the notes)"
    else:
        yield ".vsv", f"{vsv.path}: HyperVStorage container, {len(list(dump.keys()))} keys"
    if legacy.mapping == MAPPING_VSV:
        yield "Memory map", "from the .vsv's RamMemoryBlock keys"
    else:
        yield "Memory map", f"assumption: {ASSUMPTION[len('assumed: ') :]}"


class Info(interfaces.plugins.PluginInterface):
    """Lists the format, integrity, memory layout, processors and guest OS of a saved state."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            primary_requirement(),
        ]

    def _rows(self, layer: VmrsLayer) -> Iterator[Tuple[str, str]]:
        dump = layer.dump
        yield "Format", dump.format
        if dump.legacy is not None:
            yield from _legacy_rows(dump)
        else:
            storage = dump.storage
            header = storage.header
            yield (
                "File format version",
                f"{header.format_version_text} ({header.format_version:#06x})",
            )
            yield "VM configuration version", _version_text(dump.vm_version)
            yield "Saved-state type", dump.saved_state_type or "absent"
            yield "Active header", f"copy at {header.offset:#x}, sequence {header.sequence}"
        problems = dump.diagnostics.problems
        checksum_failures = sum(1 for item in problems if item.kind == Kind.CHECKSUM)
        yield "Checksum failures", str(checksum_failures)
        if dump.storage is not None:
            label = "Replay log" if dump.legacy is None else "Replay log (.vsv)"
            yield label, dump.storage.replay_log.status
        yield "Integrity warnings", str(len(problems))
        for kind, items in dump.diagnostics.grouped().items():
            for item in items:
                label = f"{item.severity.name.capitalize()} ({kind.value}, {item.phase.value})"
                yield label, str(item)
        if dump.memory is None:
            yield "Guest memory", "none in this file"
        else:
            ranges = dump.memory.map.ranges
            yield "Memory ranges", str(len(ranges))
            for memory_range in ranges:
                yield (
                    f"Range {memory_range.number}",
                    f"GPA {memory_range.gpa_start:#x}-{memory_range.gpa_end - 1:#x} "
                    f"({memory_range.page_count} pages)",
                )
            total = dump.memory.map.total_pages * 4096
            yield "Guest RAM", f"{total} bytes ({total / (1 << 20):.1f} MiB)"
        if dump.partition is None:
            yield "Virtual processors", f"none: {dump.missing_processor_state}"
            yield "DTB published", layer.dtb_note
            return
        yield "Virtual processors", str(dump.vp_count)
        for index in dump.vp_indices:
            try:
                registers = dump.registers(index)
                detail = (
                    f"{dump.architecture(index).name}, {dump.paging_mode(index).name}, "
                    f"{'kernel' if registers.in_kernel_space else 'user'} mode, "
                    f"active VTL {dump.active_vtl(index)}, VTLs {dump.enabled_vtls(index):#b}"
                )
            except VmrsError as error:
                detail = f"unreadable: {error}"
            yield f"VP {index}", detail
        yield "VTLs enabled (partition)", f"{dump.guest_enabled_vtls:#b}"
        os_info = dump.guest_os_info(0)
        yield "Guest OS", f"{os_info.describe()} (guest OS ID {os_info.raw:#018x})"
        yield "DTB published", layer.dtb_note

    def _generator(self, layer: VmrsLayer):
        for field, value in self._rows(layer):
            yield 0, (field, value)

    def run(self) -> interfaces.renderers.TreeGrid:
        layer = find_vmrs_layer(self.context, self.config["primary"])
        return renderers.TreeGrid([("Field", str), ("Value", str)], self._generator(layer))
