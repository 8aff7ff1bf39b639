"""A Volatility memory image as the kernel symbol finder reads it (the finder's adapter).

:func:`open_physical` stacks a file the way ``vol`` does, with the format stackers only
(.vmrs, ELF, LiME, QEMU, AVML, crash, VMware...; no OS stacker, which would want an ISF),
and returns its guest-physical layer. :func:`guest_memory` turns such a layer into a
:class:`~volatility3_vmrs.kernel.PhysicalMemory`, and for a ``.vmrs`` picks the saved
processor state of a kernel-mode virtual processor.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from volatility3 import framework
from volatility3.framework import interfaces
from volatility3.framework.automagic import stacker
from volatility3.framework.layers import intel, physical

from volatility3_vmrs.kernel import KernelSymbols, PhysicalMemory, VpState, find_kernel_symbols
from volatility3_vmrs.layers.vmrs import VmrsLayer


def format_stackers() -> List[type]:
    """The stackers that recognise file formats (those no OS excludes), in stacking order."""
    framework.import_files(framework.layers, True)
    return sorted(
        (
            cls
            for cls in framework.class_subclasses(interfaces.automagic.StackerLayerInterface)
            if not cls.exclusion_list
        ),
        key=lambda cls: cls.stack_order,
    )


def open_physical(context: interfaces.context.ContextInterface, location: str) -> str:
    """Stack ``location`` (a URL) in ``context``; the name of its guest-physical layer."""
    name = context.layers.free_layer_name("VmrsSymbolsFile")
    config_path = interfaces.configuration.path_join("vmrs_symbols", name)
    context.config[interfaces.configuration.path_join(config_path, "location")] = location
    context.add_layer(physical.FileLayer(context, config_path, name))
    stacked = stacker.LayerStacker.stack_layer(context, name, format_stackers())
    for layer_name in stacked:
        if not isinstance(context.layers[layer_name], intel.Intel):
            return layer_name
    return name


def _ranges(layer: interfaces.layers.DataLayerInterface) -> List[Tuple[int, int]]:
    if isinstance(layer, VmrsLayer):
        page, chunks = layer.dump.memory_chunks()
        return [(c.GuestPhysicalStartPageIndex * page, c.PageCount * page) for c in chunks]
    if isinstance(layer, interfaces.layers.TranslationLayerInterface):
        span = layer.maximum_address - layer.minimum_address + 1
        return [
            (offset, length)
            for offset, length, _mo, _ml, _ln in layer.mapping(
                layer.minimum_address, span, ignore_errors=True
            )
        ]
    return [(layer.minimum_address, layer.maximum_address - layer.minimum_address + 1)]


def _vp_state(layer: interfaces.layers.DataLayerInterface) -> Optional[VpState]:
    """A kernel-mode VP's registers (any VP's if none is in kernel mode), .vmrs only."""
    if not isinstance(layer, VmrsLayer):
        return None
    dump = layer.dump
    chosen = None
    for index in dump.vp_indices:
        registers = dump.registers(index)
        if registers.paging_mode.name != "Paging_Long":
            continue
        if chosen is None or registers.in_kernel_space:
            chosen = registers
            if registers.in_kernel_space:
                break
    if chosen is None:
        return None
    return VpState(
        cr3=chosen.cr3,
        idtr_base=chosen.idtr.base,
        gs_base=chosen.gs.base,
        kernel_gs_base=chosen.kernel_gs_base,
    )


def guest_memory(
    layer: interfaces.layers.DataLayerInterface,
) -> Tuple[PhysicalMemory, Optional[VpState]]:
    """The layer's guest-physical memory, and a VP's state when the image has one."""

    def read(gpa: int, size: int) -> bytes:
        return layer.read(gpa, size, pad=True)

    return PhysicalMemory.of(read, _ranges(layer)), _vp_state(layer)


def kernel_symbols(context: interfaces.context.ContextInterface, layer_name: str) -> KernelSymbols:
    """:func:`~volatility3_vmrs.kernel.find_kernel_symbols` on a physical layer."""
    memory, vp = guest_memory(context.layers[layer_name])
    return find_kernel_symbols(memory, vp)
