"""vmrs.pescan: find PE images in guest memory (the DLL's ScanMemoryForDosImages).

Every page-aligned ``MZ`` with a valid PE header in the same page is a hit (see
:mod:`volatility3_vmrs.savedstate.pescan` for the checks). Each image is read at its
mapped layout (sections at their RVAs) and parsed with pefile: machine, image size,
link timestamp, subsystem, the CodeView record (PDB name, GUID, age) and the version
resource's OriginalFilename (a link time of zero is shown as absent, not as 1970).
Pages that cannot be read - holes, missing RamBlocks, or pages not present in the VP's
page tables - read as zeros and are left out of ``Pages read``; what lies in them is
simply not reported.

Guest-physical memory is always scanned. ``--virtual`` also scans the kernel half of a
virtual processor's address space (``--vp``, default: the VP whose CR3 the layer uses).
"""

from __future__ import annotations

import datetime
import logging
from typing import Callable, Iterator, List, Optional, Tuple

from volatility3.framework import exceptions, interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

from volatility3_vmrs.layers.vmrs import choose_vp, vp_layer
from volatility3_vmrs.savedstate import pescan
from volatility3_vmrs.savedstate.types import PAGING_MODE

from .common import find_vmrs_layer, primary_requirement, refuse, require_memory

vollog = logging.getLogger(__name__)

PAGE_SIZE = pescan.PAGE_SIZE
CHUNK = 0x100000
COLUMNS = [
    ("Space", str),
    ("Address", format_hints.Hex),
    ("Machine", str),
    ("Image size", int),
    ("Timestamp", int),
    ("Link time", datetime.datetime),
    ("Subsystem", str),
    ("PDB name", str),
    ("PDB GUID", str),
    ("PDB age", int),
    ("OriginalFilename", str),
    ("Pages read", int),
    ("Pages total", int),
    ("Notes", str),
]
KERNEL_SPACE = {
    PAGING_MODE.Paging_Long: (0xFFFF_8000_0000_0000, 1 << 64),
    PAGING_MODE.Paging_Pae: (0x8000_0000, 1 << 32),
    PAGING_MODE.Paging_32Bit: (0x8000_0000, 1 << 32),
}


def _row(space: str, image: pescan.PeImage) -> Tuple:
    def text(value: Optional[str]) -> object:
        return renderers.NotAvailableValue() if value is None else value

    return (
        space,
        format_hints.Hex(image.address),
        image.machine_name,
        image.image_size,
        image.timestamp,
        # A zero link time means "not set" (reproducible builds, stripped headers), not 1970.
        image.timestamp_datetime if image.timestamp else renderers.NotAvailableValue(),
        image.subsystem_name,
        text(image.pdb_name),
        text(image.pdb_guid),
        renderers.NotAvailableValue() if image.pdb_age is None else image.pdb_age,
        text(image.original_filename),
        image.pages_read,
        image.pages_total,
        "; ".join(image.notes),
    )


def scan_virtual(
    layer: interfaces.layers.TranslationLayerInterface,
    start: int,
    end: int,
    progress: Optional[Callable[[float, str], None]] = None,
) -> Iterator[pescan.PeImage]:
    """Scan the mapped pages of ``[start, end)`` of a virtual layer."""

    def read_page(address: int) -> Optional[bytes]:
        try:
            return layer.read(address, PAGE_SIZE)
        except exceptions.InvalidAddressException:
            return None

    span = max(1, end - start)
    last_reported = -1.0
    for offset, length, mapped, _mapped_length, name in layer.mapping(
        start, end - start, ignore_errors=True
    ):
        if progress is not None:
            percent = 100.0 * (offset - start) / span
            if percent - last_reported >= 0.5:
                progress(percent, f"Scanning virtual memory at {offset:#x}")
                last_reported = percent
        # Virtually and physically contiguous: read the pages' heads through the layer below.
        below = layer.context.layers[name]
        skip = (-offset) % PAGE_SIZE
        position = skip
        while position < length:
            size = min(CHUNK, length - position)
            data = below.read(mapped + position, size, pad=True)
            for candidate in pescan.candidate_offsets(data, offset + position):
                page = read_page(candidate)
                if page is None or pescan.check_header(page) is None:
                    continue
                image = pescan.parse_mapped_image(read_page, candidate, page)
                if image is not None:
                    yield image
            position += size
    if progress is not None:
        progress(100.0, "Scanning virtual memory")


class PEScan(interfaces.plugins.PluginInterface):
    """Scans guest memory of a .vmrs for PE images and reads their identity."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            primary_requirement(),
            requirements.BooleanRequirement(
                name="virtual",
                description="Also scan the kernel virtual address space of a VP",
                default=False,
                optional=True,
            ),
            requirements.IntRequirement(
                name="vp",
                description="VP whose page tables --virtual uses (default: the layer's)",
                optional=True,
            ),
        ]

    def _generator(self, layer, virtual: Optional[Tuple[str, int, int, int]]):
        dump = layer.dump
        for image in pescan.scan_guest_memory(dump.memory, self._progress_callback):
            yield 0, _row("physical", image)
        if virtual is not None:
            name, vp, start, end = virtual
            for image in scan_virtual(
                self.context.layers[name], start, end, self._progress_callback
            ):
                yield 0, _row(f"VP {vp} virtual", image)

    def run(self) -> interfaces.renderers.TreeGrid:
        layer = find_vmrs_layer(self.context, self.config["primary"])
        dump = layer.dump
        require_memory(dump)
        virtual = None
        if self.config.get("virtual", False):
            vp = self.config.get("vp")
            if vp is None:
                vp = layer.vp_index if layer.vp_index is not None else choose_vp(dump)
                if vp is None:
                    refuse("no virtual processor with paging enabled; give --vp")
            elif vp not in dump.vp_indices:
                refuse(f"no virtual processor {vp} (the file has {dump.vp_indices})")
            try:
                name, mode = vp_layer(self.context, layer.name, vp, 0)
            except exceptions.LayerException as error:
                refuse(f"cannot build the virtual layer of VP {vp}: {error}")
            start, end = KERNEL_SPACE[mode]
            virtual = (name, vp, start, end)
        elif self.config.get("vp") is not None:
            vollog.warning("--vp has no effect without --virtual")
        return renderers.TreeGrid(COLUMNS, self._generator(layer, virtual))
