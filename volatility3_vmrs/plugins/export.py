"""vmrs.export: write the guest memory of a .vmrs as raw, LiME, ELF core or crash dump.

The file goes through Volatility's file handler, so ``vol -o DIR`` chooses where it
lands (and Volatility, not this plugin, picks a free name). The work is done by
:mod:`volatility3_vmrs.export`; this plugin only finds the saved state under the
primary layer, reports progress through Volatility's callback and, for ``--format
dmp`` on a Windows guest, finds the kernel and its symbols to fill the header's
KdDebuggerDataBlock / PsActiveProcessHead / PsLoadedModuleList and to decode the KDBG.

How the kernel is found, and why not by a ``kernel`` ModuleRequirement: Volatility's
stacker runs once and splices the stacked layers into the *first* unsatisfied
TranslationLayerRequirement, here ``primary``; a second, optional ModuleRequirement
never gets a layer, so the PDB scan (which only scans layers named by a requirement
together with their ``memory_layer``) sees nothing and the module stays empty. Making
``kernel`` the plugin's only layer would fix that, but then every run - raw, LiME and
ELF exports, Linux guests - would pay Volatility's PDB scan (up to several passes over
the whole memory) for fields only a crash dump has. So the plugin asks for the
primary layer alone and, only when the format is ``dmp`` and the primary layer is a
Windows Intel layer (the one Volatility's Windows stacker put above the .vmrs layer),
runs the same steps the automagic would: :class:`KernelPDBScanner`'s
``determine_valid_kernel`` on that layer, :class:`PDBUtility` to load the ISF of the
PDB found (from ``-s`` / the symbol cache), and a module at the kernel's base. The
addresses go into the header in canonical form (Volatility masks them to 48 bits).
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from typing import Iterator, List, Optional, Tuple

from volatility3.framework import exceptions, interfaces, renderers
from volatility3.framework.automagic import pdbscan
from volatility3.framework.configuration import requirements
from volatility3.framework.layers import intel
from volatility3.framework.symbols import native
from volatility3.framework.symbols.windows import pdbutil

from volatility3_vmrs.export import FORMATS, ExportError, KernelAddresses, KernelSpace, export
from volatility3_vmrs.savedstate.errors import VmrsError
from volatility3_vmrs.savedstate.types import PAGING_MODE

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
KERNEL_SYMBOLS = (
    "KdDebuggerDataBlock",
    "PsActiveProcessHead",
    "PsLoadedModuleList",
    "KdpDataBlockEncoded",
    "KiWaitNever",
    "KiWaitAlways",
)
KERNEL_TABLE_CLASS = "volatility3.framework.symbols.windows.WindowsKernelIntermedSymbols"


def output_name(location: Optional[str], extension: str) -> str:
    """``<saved-state file stem>.<extension>``, or ``vmrs-export.<extension>``."""
    stem = "vmrs-export"
    if location:
        path = urllib.parse.unquote(urllib.parse.urlparse(location).path)
        base = os.path.splitext(os.path.basename(path))[0]
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in base) or stem
    return f"{stem}.{extension}"


def kernel_space(layer: intel.Intel) -> KernelSpace:
    """The DTB and paging mode of a Volatility Intel layer."""
    if isinstance(layer, intel.Intel32e):
        mode = PAGING_MODE.Paging_Long
    elif isinstance(layer, intel.IntelPAE):
        mode = PAGING_MODE.Paging_Pae
    else:
        mode = PAGING_MODE.Paging_32Bit
    return KernelSpace(int(layer.config["page_map_offset"]), mode)


def kernel_addresses(kernel: interfaces.context.ModuleInterface) -> KernelAddresses:
    """The crash dump's WinDbg header fields and the KDBG's decoding keys: absolute
    (canonical) addresses of the kernel's symbols, to be read through the kernel's
    layer (a module whose layer is not in the context gives the addresses alone)."""
    layers = kernel.context.layers
    layer = layers[kernel.layer_name] if kernel.layer_name in layers else None
    found = {}
    for symbol in KERNEL_SYMBOLS:
        try:
            address = kernel.get_absolute_symbol_address(symbol)
            found[symbol] = (
                layer.canonicalize(address) if isinstance(layer, intel.Intel) else address
            )
        except exceptions.SymbolError:
            vollog.info(f"the kernel's symbol table has no {symbol}: left zero")
            found[symbol] = 0
    return KernelAddresses(
        kd_debugger_data_block=found["KdDebuggerDataBlock"],
        ps_active_process_head=found["PsActiveProcessHead"],
        ps_loaded_module_list=found["PsLoadedModuleList"],
        kdp_data_block_encoded=found["KdpDataBlockEncoded"],
        ki_wait_never=found["KiWaitNever"],
        ki_wait_always=found["KiWaitAlways"],
        space=kernel_space(layer) if isinstance(layer, intel.Intel) else None,
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
            requirements.VersionRequirement(
                name="pdb_utility", component=pdbutil.PDBUtility, version=(1, 0, 1)
            ),
        ]

    def _windows_kernel(self, layer_name: str) -> Optional[interfaces.context.ModuleInterface]:
        """The Windows kernel above the .vmrs layer, found as Volatility's automagic
        finds it (see the module docstring); None, with the reason logged, if not."""
        layer = self.context.layers[layer_name]
        if not isinstance(layer, intel.WindowsMixin):
            vollog.info(f"{layer_name} is not a Windows layer: no kernel symbols looked for")
            return None
        if "pdbscan" not in self.context.symbol_space:
            self.context.symbol_space.append(native.NativeTable("pdbscan", native.std_ctypes))
        scan_path = interfaces.configuration.path_join(self.config_path, "KernelPDBScanner")
        scanner = pdbscan.KernelPDBScanner(self.context, scan_path)
        found = scanner.determine_valid_kernel(self.context, [layer_name], self._progress_callback)
        if not found:
            vollog.warning("Volatility's PDB scan found no Windows kernel in the guest")
            return None
        _layer, offset, pdb = found
        name, guid, age = str(pdb["pdb_name"]), str(pdb["GUID"]), int(pdb["age"])  # type: ignore[arg-type]
        table = pdbutil.PDBUtility.load_windows_symbol_table(
            context=self.context,
            guid=guid,
            age=age,
            pdb_name=name,
            symbol_table_class=KERNEL_TABLE_CLASS,
            config_path=interfaces.configuration.path_join(self.config_path, "kernel_symbols"),
            progress_callback=self._progress_callback,
        )
        if not table:
            vollog.warning(
                f"the kernel is {name} {guid}-{age} at {offset:#x}, but no ISF for it is in "
                "the symbol path (-s DIR or the symbol cache)"
            )
            return None
        vollog.info(f"kernel {name} {guid}-{age} at {offset:#x}")
        return self.context.module(table, layer_name, offset)

    def _kernel_addresses(self) -> Optional[KernelAddresses]:
        kernel = self._windows_kernel(self.config["primary"])
        return kernel_addresses(kernel) if kernel is not None else None

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
