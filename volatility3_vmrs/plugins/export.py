"""vmrs.export: write the guest memory of a .vmrs as raw, LiME, ELF core or crash dump.

The file goes through Volatility's file handler, so ``vol -o DIR`` chooses where it
lands (and Volatility, not this plugin, picks a free name). The work is done by
:mod:`volatility3_vmrs.export`; this plugin only finds the saved state under the
primary layer, reports progress through Volatility's callback and, for ``--format
dmp``, fills the header's KdDebuggerDataBlock / PsActiveProcessHead /
PsLoadedModuleList from the Windows kernel's symbols when Volatility found them.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from typing import Iterator, List, Optional, Tuple

from volatility3.framework import exceptions, interfaces, renderers
from volatility3.framework.configuration import requirements

from volatility3_vmrs.export import FORMATS, ExportError, KernelAddresses, export
from volatility3_vmrs.savedstate.errors import VmrsError

from .common import find_vmrs_layer, primary_requirement, refuse, require_memory

vollog = logging.getLogger(__name__)

COLUMNS = [
    ("Format", str),
    ("File output", str),
    ("Size", int),
    ("SHA-256", str),
    ("VP", int),
    ("Notes", str),
]
KERNEL_SYMBOLS = ("KdDebuggerDataBlock", "PsActiveProcessHead", "PsLoadedModuleList")


def output_name(location: Optional[str], extension: str) -> str:
    """``<saved-state file stem>.<extension>``, or ``vmrs-export.<extension>``."""
    stem = "vmrs-export"
    if location:
        path = urllib.parse.unquote(urllib.parse.urlparse(location).path)
        base = os.path.splitext(os.path.basename(path))[0]
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in base) or stem
    return f"{stem}.{extension}"


def kernel_addresses(kernel: interfaces.context.ModuleInterface) -> KernelAddresses:
    """The crash dump's WinDbg header fields: absolute addresses of the kernel's symbols."""
    found = {}
    for symbol in KERNEL_SYMBOLS:
        try:
            found[symbol] = kernel.get_absolute_symbol_address(symbol)
        except exceptions.SymbolError:
            vollog.info(f"the kernel's symbol table has no {symbol}: left zero")
            found[symbol] = 0
    return KernelAddresses(
        kd_debugger_data_block=found["KdDebuggerDataBlock"],
        ps_active_process_head=found["PsActiveProcessHead"],
        ps_loaded_module_list=found["PsLoadedModuleList"],
    )


class Export(interfaces.plugins.PluginInterface):
    """Exports the guest-physical memory of a .vmrs to raw, LiME, ELF core or crash dump."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            primary_requirement(),
            requirements.ChoiceRequirement(
                name="format",
                description="Output format",
                choices=list(FORMATS),
                default="raw",
                optional=True,
            ),
            requirements.IntRequirement(
                name="vp",
                description="Virtual processor for the crash dump's CONTEXT and DTB",
                optional=True,
            ),
            requirements.BooleanRequirement(
                name="sha256",
                description="Compute the SHA-256 of the written file while writing",
                default=False,
                optional=True,
            ),
            requirements.ModuleRequirement(
                name="kernel",
                description="Windows kernel (fills the crash dump's WinDbg fields)",
                architectures=["Intel32", "Intel64"],
                optional=True,
            ),
        ]

    def _kernel_addresses(self) -> Optional[KernelAddresses]:
        module_name = self.config.get("kernel")
        if not module_name or module_name not in self.context.modules:
            return None
        return kernel_addresses(self.context.modules[module_name])

    def _generator(self) -> Iterator[Tuple[int, Tuple]]:
        layer = find_vmrs_layer(self.context, self.config["primary"])
        require_memory(layer.dump)
        fmt = self.config.get("format") or "raw"
        location = self.context.config.get("automagic.LayerStacker.single_location")
        kernel = self._kernel_addresses() if fmt == "dmp" else None
        progress = self._progress_callback

        def report(done: int, total: int) -> None:
            if progress is not None and total:
                progress(100.0 * done / total, f"Exporting guest memory to {fmt}")

        try:
            with self.open(output_name(location, FORMATS[fmt])) as handle:
                result = export(
                    layer.dump,
                    fmt,
                    handle,
                    sha256=bool(self.config.get("sha256")),
                    progress=report,
                    vp=self.config.get("vp"),
                    kernel=kernel,
                )
                name = handle.preferred_filename
        except (ExportError, VmrsError) as error:
            refuse(f"vmrs.export: {error}")
        for message in result.notes:
            vollog.warning(message)
        yield (
            0,
            (
                fmt,
                name,
                result.size,
                result.sha256 or renderers.NotApplicableValue(),
                result.vp if result.vp is not None else renderers.NotApplicableValue(),
                "; ".join(result.notes) or "-",
            ),
        )

    def run(self) -> interfaces.renderers.TreeGrid:
        return renderers.TreeGrid(COLUMNS, self._generator())
