"""Shared helpers of the pack's plugins: finding the .vmrs layer under the primary layer."""

from __future__ import annotations

from typing import List

from volatility3.framework import exceptions, interfaces
from volatility3.framework.configuration import requirements

from volatility3_vmrs.layers.vmrs import VmrsLayer

# Importing this module imports the layer module, which registers the stacker.
__all__ = ["VmrsLayer", "find_vmrs_layer", "primary_requirement"]


def primary_requirement() -> requirements.TranslationLayerRequirement:
    """The layer every plugin of the pack starts from (the .vmrs layer lies under it)."""
    return requirements.TranslationLayerRequirement(
        name="primary", description="Memory layer stacked on the .vmrs file"
    )


def find_vmrs_layer(context: interfaces.context.ContextInterface, layer_name: str) -> VmrsLayer:
    """The VmrsLayer at or below ``layer_name``; a clear error if there is none."""
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
    raise exceptions.LayerException(
        layer_name,
        "this plugin needs a Hyper-V saved state (.vmrs): no .vmrs layer under "
        f"{layer_name} (layers seen: {', '.join(seen) or 'none'})",
    )
