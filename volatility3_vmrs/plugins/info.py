"""vmrs.info: what the saved-state file says about itself and the saved VM."""

from __future__ import annotations

import logging
from typing import Iterator, List, Tuple

from volatility3.framework import interfaces, renderers

from volatility3_vmrs.savedstate.diagnostics import Kind
from volatility3_vmrs.savedstate.errors import VmrsError

from .common import VmrsLayer, find_vmrs_layer, primary_requirement

vollog = logging.getLogger(__name__)


def _version_text(value) -> str:
    if value is None:
        return "absent"
    return f"{value >> 8}.{value & 0xFF} ({value:#06x})"


class Info(interfaces.plugins.PluginInterface):
    """Lists the format, integrity, memory layout, processors and guest OS of a .vmrs."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            primary_requirement(),
        ]

    def _rows(self, layer: VmrsLayer) -> Iterator[Tuple[str, str]]:
        dump = layer.dump
        storage = dump.storage
        header = storage.header
        yield "File format version", f"{header.format_version_text} ({header.format_version:#06x})"
        yield "VM configuration version", _version_text(dump.vm_version)
        yield "Saved-state type", dump.saved_state_type or "absent"
        yield "Active header", f"copy at {header.offset:#x}, sequence {header.sequence}"
        problems = dump.diagnostics.problems
        checksum_failures = sum(1 for item in problems if item.kind == Kind.CHECKSUM)
        yield "Checksum failures", str(checksum_failures)
        yield "Replay log", storage.replay_log.status
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
            yield "Virtual processors", "none: the file holds no processor state"
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
