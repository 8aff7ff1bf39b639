"""The Linux kernel's own symbols from guest memory: BTF + kallsyms -> a Volatility ISF.

No Volatility import here: give :func:`find_kernel_symbols` a
:class:`PhysicalMemory` (a guest-physical ``read(gpa, size)`` and the ranges it holds)
and, when the image has one, a :class:`VpState`; ``.isf()`` of the result is the ISF.
"""

from volatility3_vmrs.kernel.errors import KernelSymbolsError
from volatility3_vmrs.kernel.finder import KernelSymbols, find_kernel_symbols
from volatility3_vmrs.kernel.kaslr import VpState
from volatility3_vmrs.kernel.memory import PhysicalMemory

__all__ = [
    "KernelSymbols",
    "KernelSymbolsError",
    "PhysicalMemory",
    "VpState",
    "find_kernel_symbols",
]
