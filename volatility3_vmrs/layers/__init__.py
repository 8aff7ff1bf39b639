"""Volatility 3 layers of the pack. Importing this package registers the .vmrs stacker.

import volatility3_vmrs.layers  # one import: VmrsLayer + VmrsStacker take part in stacking
"""

from .vmrs import VmrsFormatException, VmrsLayer, VmrsStacker, vp_layer

__all__ = ["VmrsFormatException", "VmrsLayer", "VmrsStacker", "vp_layer"]
