"""Shared helpers of the pack's plugins: the .vmrs layer under the primary layer, refusals.

A pack plugin that cannot do what it was asked (a bad option, a file without memory)
stops with :class:`~volatility3_vmrs.refusal.PluginRefusal`.
"""

from __future__ import annotations

from typing import List

from volatility3.framework import interfaces
from volatility3.framework.configuration import requirements

from volatility3_vmrs.layers.vmrs import (
    VmrsLayer,
    describe_content,
    has_header_signature,
    open_dump,
)
from volatility3_vmrs.refusal import PluginRefusal, refuse
from volatility3_vmrs.savedstate.errors import VmrsError
from volatility3_vmrs.savedstate.memory import PageReader
from volatility3_vmrs.savedstate.processors import PartitionState
from volatility3_vmrs.savedstate.provider import SavedStateDump

# Importing this module imports the layer module, which registers the stacker.
__all__ = [
    "PluginRefusal",
    "VmrsLayer",
    "find_vmrs_layer",
    "parse_address",
    "primary_requirement",
    "refuse",
    "require_memory",
    "require_processors",
]


def primary_requirement() -> requirements.TranslationLayerRequirement:
    """The layer every plugin of the pack starts from (the .vmrs layer lies under it)."""
    return requirements.TranslationLayerRequirement(
        name="primary", description="Memory layer stacked on the Hyper-V saved state"
    )


def find_vmrs_layer(context: interfaces.context.ContextInterface, layer_name: str) -> VmrsLayer:
    """The VmrsLayer at or below ``layer_name``; a refusal if there is none."""
    seen: List[str] = []
    pending = [layer_name]
    while pending:
        name = pending.pop(0)
        if name in seen or name not in context.layers:
            continue
        seen.append(name)
        layer = context.layers[name]
        if isinstance(layer, VmrsLayer):
            return layer
        pending.extend(layer.dependencies)
    for name in seen:
        layer = context.layers[name]
        if not layer.dependencies and has_header_signature(layer):
            # A HyperVStorage file the stacker could not open: say why, as the last line.
            try:
                open_dump(layer).close()
            except VmrsError as error:
                refuse(f"the Hyper-V saved state cannot be read: {error}")
            refuse(f"{layer.name} is a Hyper-V saved state, but no .vmrs layer was stacked on it")
    refuse(
        "this plugin reads Hyper-V saved-state files (.vmrs, .vmcx, .bin); the file given "
        "is not one (it has no HyperVStorage header)"
    )


def parse_address(text: str, option: str) -> int:
    """An address given on the command line: hexadecimal, with or without ``0x``.

    Digits may be grouped with ``_`` or a WinDbg backtick (``fffff800`00010000``). A text
    that is not such a number is refused in one line naming the option.
    """
    digits = text.strip().replace("`", "").replace("_", "")
    if digits[:2].lower() == "0x":
        digits = digits[2:]
    if not digits or any(c not in "0123456789abcdefABCDEF" for c in digits):
        refuse(f"{option} {text!r} is not a hexadecimal address (give it as ffff8000... or 0x...)")
    return int(digits, 16)


def require_memory(dump: SavedStateDump) -> PageReader:
    """The guest memory of the file, or a refusal saying what the file is instead."""
    if dump.memory is None:
        refuse(describe_content(dump))
    return dump.memory


def require_processors(dump: SavedStateDump) -> PartitionState:
    """The processor state of the file, or a refusal saying why there is none."""
    if dump.partition is None:
        refuse(str(dump.not_a_saved_state()))
    return dump.partition
