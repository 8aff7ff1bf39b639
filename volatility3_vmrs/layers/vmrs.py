"""Volatility 3 layer for Hyper-V saved states (``.vmrs``, legacy ``.bin``): guest-physical
memory.

:class:`VmrsLayer` is a physical layer over the plain-Python reader
(:mod:`volatility3_vmrs.savedstate`): addresses are guest-physical, the holes between
memory ranges are invalid addresses, and reads are served by the reader (raw RamBlocks
straight from the file, compressed ones page by page through its cache).

:class:`VmrsStacker` runs before every other stacker. It recognises the container by
the signature of a header copy (a damaged header is the reader's to explain), and a
legacy ``.bin`` by its magic (the ``.vsv`` beside a local file is found by the reader;
without processor state no DTB is published and Volatility's own search runs), builds the
layer, and publishes what the saved processor state knows: the guest OS family, the
architecture, PAE, and the DTB from a virtual processor's CR3 - the last only after the
page tables at that address have been checked the way volatility3's Windows automagic
would check them, because the Windows stacker trusts ``page_map_offset`` blindly. A
container without guest memory (a ``.vmcx``, a running VM's ``.VMRS``) still gets a layer,
with no readable address, so that the pack's key and configuration plugins can read it.

:func:`vp_layer` builds the virtual (Intel / IntelPAE / Intel32e) layer of any virtual
processor for the pack's plugins.
"""

from __future__ import annotations

import logging
import struct
import threading
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from volatility3.framework import constants, exceptions, interfaces
from volatility3.framework.configuration import requirements
from volatility3.framework.layers import intel, physical

from volatility3_vmrs.savedstate import structs
from volatility3_vmrs.savedstate.errors import MemoryReadError, VmrsError
from volatility3_vmrs.savedstate.legacy import is_legacy_bin
from volatility3_vmrs.savedstate.memory_map import BLOCK_SIZE
from volatility3_vmrs.savedstate.paging import FRAME_MASK_64
from volatility3_vmrs.savedstate.provider import SavedStateDump
from volatility3_vmrs.savedstate.types import PAGING_MODE

vollog = logging.getLogger(__name__)

AUTO_VP = -1


class VmrsFormatException(exceptions.LayerException):
    """The .vmrs file cannot be read (the message says what and where)."""


class _LayerFile:
    """A read-only file object over a Volatility layer (for non-local locations)."""

    mode = "rb"

    def __init__(self, layer: interfaces.layers.DataLayerInterface) -> None:
        self._layer = layer
        self._position = 0
        self.name = layer.name

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self._position = offset
        elif whence == 1:
            self._position += offset
        else:
            self._position = self._layer.maximum_address + 1 + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        end = self._layer.maximum_address + 1
        if size < 0:
            size = end - self._position
        size = max(0, min(size, end - self._position))
        data = self._layer.read(self._position, size, pad=True) if size else b""
        self._position += len(data)
        return data

    def close(self) -> None:
        """Nothing to release: the layer belongs to Volatility."""


def _local_path(layer: interfaces.layers.DataLayerInterface) -> Optional[str]:
    """The local file behind a FileLayer, so the reader can use positional reads."""
    if not isinstance(layer, physical.FileLayer):
        return None
    parsed = urllib.parse.urlparse(layer.location)
    if parsed.scheme != "file":
        return None
    return urllib.request.url2pathname(parsed.path)


def has_header_signature(layer: interfaces.layers.DataLayerInterface) -> bool:
    """Whether a header copy carries the HyperVStorage signature: cheap enough to decline
    any other file at once."""
    for offset in structs.FILE_HEADER_OFFSETS:
        # A file cut inside its header is still recognised (and the reader explains it).
        size = min(structs.FILE_HEADER.size, layer.maximum_address + 1 - offset)
        if size < 4:
            continue
        try:
            raw = layer.read(offset, size).ljust(structs.FILE_HEADER.size, b"\0")
        except exceptions.InvalidAddressException:
            continue
        if structs.FILE_HEADER.unpack(raw).signature == structs.FILE_HEADER_SIGNATURE:
            return True
    return False


def has_legacy_magic(layer: interfaces.layers.DataLayerInterface) -> bool:
    """Whether the file starts with the legacy ``.bin`` magic (recognised by header)."""
    try:
        return is_legacy_bin(layer.read(0, 4))
    except exceptions.InvalidAddressException:
        return False


def open_dump(base: interfaces.layers.DataLayerInterface) -> SavedStateDump:
    """Open the saved state in ``base`` (a local file by path, anything else through the
    layer); raises the reader's VmrsError when it cannot be read."""
    source: Any = _local_path(base) or _LayerFile(base)
    return SavedStateDump(source, require_saved_state=False)


class VmrsLayer(interfaces.layers.DataLayerInterface):
    """Guest-physical memory of a Hyper-V saved state."""

    _version = (1, 0, 0)

    def __init__(
        self,
        context: interfaces.context.ContextInterface,
        config_path: str,
        name: str,
        metadata: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(context, config_path, name, metadata)
        self._base_layer = self.config["base_layer"]
        self._dump_: Optional[SavedStateDump] = None
        dump = self._dump  # open now so a bad file fails at construction
        if dump.memory is not None:
            ranges = dump.memory.map.ranges
            self._minimum_address = ranges[0].gpa_start
            self._maximum_address = ranges[-1].gpa_end - 1
        else:  # a configuration-only container: keys, no memory
            self._minimum_address = self._maximum_address = 0
        # The layer's own metadata, never the class-level _direct_metadata, which every
        # layer shares.
        self._metadata = dict(self._metadata)
        self._metadata.update(self._describe(dump))

    # --- the reader -------------------------------------------------------------------
    @property
    def _dump(self) -> SavedStateDump:
        if self._dump_ is None:
            base = self.context.layers[self._base_layer]
            try:
                self._dump_ = open_dump(base)
            except VmrsError as error:
                raise VmrsFormatException(self.name, f"{base.name}: {error}") from error
        return self._dump_

    @property
    def dump(self) -> SavedStateDump:
        """The :class:`SavedStateDump` behind the layer (for the pack's plugins)."""
        return self._dump

    def __getstate__(self) -> Dict[str, Any]:
        # File handles and locks do not pickle: reopen after unpickling
        # (vol --parallelism processes).
        state = self.__dict__.copy()
        state["_dump_"] = None
        return state

    def destroy(self) -> None:
        if self._dump_ is not None:
            self._dump_.close()
            self._dump_ = None

    # --- DataLayerInterface -----------------------------------------------------------
    @property
    def minimum_address(self) -> int:
        return self._minimum_address

    @property
    def maximum_address(self) -> int:
        return self._maximum_address

    @property
    def dependencies(self) -> List[str]:
        return [self._base_layer]

    def is_valid(self, offset: int, length: int = 1) -> bool:
        if length <= 0:
            raise ValueError("Length must be positive")
        memory = self._dump.memory
        return memory is not None and memory.is_readable_span(offset, length)

    def read(self, offset: int, length: int, pad: bool = False) -> bytes:
        if self._dump.memory is None:
            if pad:
                return bytes(length)
            raise exceptions.InvalidAddressException(
                self.name, offset, f"{self.name}: the file holds no guest memory"
            )
        if pad:
            return self._dump.read_physical_padded(offset, length)[0]
        try:
            return self._dump.read_physical(offset, length)
        except MemoryReadError as error:
            raise exceptions.InvalidAddressException(self.name, error.address, str(error)) from None

    def write(self, offset: int, data: bytes) -> None:
        raise exceptions.LayerException(self.name, "saved-state evidence is read-only")

    def _scan_iterator(self, scanner: interfaces.layers.ScannerInterface, sections: Any) -> Any:
        """Like the data-layer iterator, but only over readable saved memory: never into
        holes or missing RamBlocks."""
        memory = self._dump.memory
        runs = memory.map.readable_runs() if memory is not None else ()
        ranges = [(start, start + length) for start, length in runs]
        for section_start, section_length in sections:
            section_end = section_start + section_length
            for range_start, range_end in ranges:
                start, end = max(section_start, range_start), min(section_end, range_end)
                offset = start
                while offset < end:
                    chunk = min(end - offset, scanner.chunk_size + scanner.overlap)
                    yield [(self.name, offset, chunk)], offset + chunk
                    if chunk > scanner.chunk_size:
                        chunk -= scanner.overlap
                    offset += chunk

    # --- metadata ---------------------------------------------------------------------
    def _describe(self, dump: SavedStateDump) -> Dict[str, Any]:
        metadata: Dict[str, Any] = {}
        if dump.partition is None:
            metadata["os"] = "Unknown"
            self.dtb_note = (
                "none: no processor state (Volatility's own DTB search may find one)"
                if dump.legacy is not None
                else "no processor state in the file"
            )
            return metadata
        family = dump.guest_os_info(0).os_family
        metadata["os"] = family if family in ("Windows", "Linux") else "Unknown"
        vp_index = choose_vp(dump, self.config.get("vp", AUTO_VP))
        if vp_index is None:
            self.dtb_note = "no virtual processor in kernel mode with paging enabled"
            return metadata
        registers = dump.registers(vp_index, 0)
        mode = registers.paging_mode
        if registers.la57:
            vollog.warning(
                f"{self.name}: VP {vp_index} runs with 5-level paging (CR4.LA57); "
                "Volatility 3 cannot walk 5-level page tables, so no DTB is published "
                "and Windows/Linux plugins will not find the kernel"
            )
            self.dtb_note = "5-level paging (CR4.LA57) is not supported by Volatility 3"
            return metadata
        if mode == PAGING_MODE.Paging_Long:
            metadata["architecture"] = "Intel64"
        elif mode in (PAGING_MODE.Paging_Pae, PAGING_MODE.Paging_32Bit):
            metadata["architecture"] = "Intel32"
            metadata["pae"] = mode == PAGING_MODE.Paging_Pae
        else:
            self.dtb_note = f"VP {vp_index} has paging mode {mode.name}"
            return metadata
        dtb = registers.dtb
        self.vp_index = vp_index
        if metadata["os"] != "Windows":
            self.dtb_note = f"not published: guest OS is {metadata['os']}, not Windows"
            return metadata
        problem = check_windows_dtb(dump.read_physical, mode, dtb)
        if problem:
            vollog.info(f"{self.name}: CR3 of VP {vp_index} not used as DTB: {problem}")
            if self.config.get("vp", AUTO_VP) == AUTO_VP:
                # Another kernel-mode VP in the same paging mode may hold a sound CR3.
                for other in kernel_mode_vps(dump):
                    candidate = dump.registers(other, 0)
                    if other == vp_index or candidate.paging_mode != mode or candidate.la57:
                        continue
                    if check_windows_dtb(dump.read_physical, mode, candidate.dtb) is None:
                        vp_index, dtb, problem = other, candidate.dtb, None
                        self.vp_index = other
                        break
        if problem:
            self.dtb_note = f"not published: {problem}"
            return metadata
        metadata["page_map_offset"] = dtb
        self.dtb_note = f"{dtb:#x} from CR3 of VP {vp_index} (VTL 0)"
        return metadata

    dtb_note = "not computed"
    vp_index: Optional[int] = None

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            requirements.TranslationLayerRequirement(name="base_layer", optional=False),
            requirements.IntRequirement(
                name="vp",
                description="Virtual processor whose CR3 gives the DTB (-1: automatic)",
                default=AUTO_VP,
                optional=True,
            ),
        ]


def paged_vps(dump: SavedStateDump) -> List[Tuple[int, bool]]:
    """(VP index, in kernel mode) of every VP with paging on at VTL 0, in index order."""
    found = []
    for index in dump.vp_indices:
        try:
            registers = dump.registers(index, 0)
            mode = registers.paging_mode
            kernel = registers.in_kernel_space
        except VmrsError:
            continue
        if mode not in (PAGING_MODE.Paging_Invalid, PAGING_MODE.Paging_NonPaged):
            found.append((index, kernel))
    return found


def kernel_mode_vps(dump: SavedStateDump) -> List[int]:
    return [index for index, kernel in paged_vps(dump) if kernel]


def choose_vp(dump: SavedStateDump, wanted: int = AUTO_VP) -> Optional[int]:
    """The VP whose state gives the DTB: the asked one, else the first in kernel mode at
    VTL 0, else the first with paging on."""
    if wanted is not None and wanted != AUTO_VP:
        dump.vp(wanted)  # raises for an unknown VP
        return wanted
    paged = paged_vps(dump)
    kernel = [index for index, in_kernel in paged if in_kernel]
    if kernel:
        return kernel[0]
    return paged[0][0] if paged else None


def check_windows_dtb(read: Any, mode: PAGING_MODE, dtb: Optional[int]) -> Optional[str]:
    """Why ``dtb`` is not a Windows page-table root, or None when it looks right.

    The tests mirror volatility3's Windows automagic: x64 keeps one self-referencing
    PML4 entry (index 0x100-0x1FF), 32-bit a self-referencing PDE at 0x300, PAE a page
    directory whose first four entries map the four page directories.
    """
    if dtb is None:
        return "paging is off"
    try:
        if mode == PAGING_MODE.Paging_Long:
            table = read(dtb, 0x1000)
            hits = [
                index
                for index, (entry,) in enumerate(struct.iter_unpack("<Q", table))
                if entry & 1 and entry & FRAME_MASK_64 == dtb
            ]
            if len(hits) == 1 and 0x100 <= hits[0] < 0x200:
                return None
            return f"the PML4 at {dtb:#x} has no single self-referencing entry ({len(hits)} found)"
        if mode == PAGING_MODE.Paging_32Bit:
            (entry,) = struct.unpack("<I", read(dtb + 0x300 * 4, 4))
            if entry & 1 and entry & 0xFFFFF000 == dtb:
                return None
            return f"the page directory at {dtb:#x} has no self-reference at index 0x300"
        if mode == PAGING_MODE.Paging_Pae:
            pdpt = struct.unpack("<4Q", read(dtb, 32))
            if not all(entry & 1 for entry in pdpt):
                return f"the PDPT at {dtb:#x} does not map all four page directories"
            top_directory = pdpt[3] & FRAME_MASK_64
            mapped = struct.unpack("<4Q", read(top_directory, 32))
            if all(a & FRAME_MASK_64 == b & FRAME_MASK_64 for a, b in zip(mapped, pdpt)):
                return None
            return f"the page directories of the PDPT at {dtb:#x} are not self-mapped"
    except MemoryReadError as error:
        return f"its page tables are not in saved memory ({error})"
    return f"paging mode {mode.name}"


class VmrsStacker(interfaces.automagic.StackerLayerInterface):
    """Stacks a :class:`VmrsLayer` on a Hyper-V saved state, before any other stacker."""

    stack_order = 5
    exclusion_list: List[str] = []

    @classmethod
    def stack(
        cls,
        context: interfaces.context.ContextInterface,
        layer_name: str,
        progress_callback: constants.ProgressCallback = None,
    ) -> Optional[interfaces.layers.DataLayerInterface]:
        base = context.layers[layer_name]
        if isinstance(base, VmrsLayer):
            return None
        if not (has_header_signature(base) or has_legacy_magic(base)):
            return None  # not a HyperVStorage file nor a legacy .bin: decline without a word
        # A signed header whose checksums fail is still a (damaged) .vmrs: opening it
        # below produces the error that says what is wrong and where.
        new_name = context.layers.free_layer_name("VmrsLayer")
        context.config[interfaces.configuration.path_join(new_name, "base_layer")] = layer_name
        try:
            layer = VmrsLayer(context, new_name, new_name)
        except VmrsFormatException as error:
            # Stacker exceptions are only logged at debug level by volatility3: say it here.
            vollog.error(f"Hyper-V saved state not usable: {error}")
            return None
        dump = layer.dump
        if not dump.is_saved_state:
            vollog.warning(
                f"{base.name}: {describe_content(dump)}; only vmrs.info, vmrs.keys and "
                "vmrs.config can read it"
            )
            return layer
        if dump.legacy is not None:
            vollog.info(f"{base.name}: {dump.format}; {dump.missing_processor_state or ''}")
        warn_broken_thread_scans()
        damage = describe_damage(dump)
        if damage:
            vollog.warning(
                f"{base.name}: {damage}; run `vmrs verify` or vmrs.info --verify for details"
            )
        vollog.info(
            f"Stacked {new_name}: {len(dump.memory.map.ranges) if dump.memory else 0} ranges, "
            f"{dump.vp_count if dump.partition else 0} VPs, os={layer.metadata.get('os')}, "
            f"DTB {layer.dtb_note}"
        )
        return layer


def warn_broken_thread_scans() -> None:
    """Say so when ``--parallelism threads`` meets volatility3's broken threaded scan.

    volatility3 2.28 scans in threads with ``threading.Pool``, which does not exist; the
    scan catches the AttributeError and yields nothing, so scanning plugins print no rows
    and no error. Checked by feature, so a fixed Volatility is not warned about.
    """
    if constants.PARALLELISM == constants.Parallelism.Threading and not hasattr(threading, "Pool"):
        vollog.warning(
            "--parallelism threads is broken in this Volatility (its scanner asks the "
            "threading module for a Pool): every scan returns nothing; use "
            "--parallelism processes or off"
        )


def describe_content(dump: SavedStateDump) -> str:
    """What a file without guest memory is, in words (for the one line vol shows)."""
    if dump.storage.truncation is not None:
        return f"the file holds no guest memory: {dump.storage.truncation.describe()}"
    return (
        "the file holds no guest memory or processor state: a configuration container "
        "(a .vmcx, or the .VMRS of a VM that was running, not saved)"
    )


def describe_damage(dump: SavedStateDump) -> str:
    """One line on what the integrity findings are and how much memory they cost."""
    problems = dump.diagnostics.problems
    if not problems:
        return ""
    kinds: Dict[str, int] = {}
    for item in problems:
        kinds[item.kind.value] = kinds.get(item.kind.value, 0) + 1
    text = "integrity problems: " + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    if dump.memory is not None:
        missing = sum(entry.count for entry in dump.memory.map.missing.values())
        if missing:
            text += f"; {missing} RamBlock(s) missing ({missing * BLOCK_SIZE >> 20} MiB unreadable)"
    return text


def vp_layer(
    context: interfaces.context.ContextInterface,
    vmrs_layer_name: str,
    vp_index: int,
    vtl: int = 0,
) -> Tuple[str, PAGING_MODE]:
    """Build (once) the virtual layer of one VP: Intel / IntelPAE / Intel32e by its paging
    mode, DTB = its CR3. Returns the layer name and the paging mode."""
    layer = context.layers[vmrs_layer_name]
    if not isinstance(layer, VmrsLayer):
        raise TypeError(f"{vmrs_layer_name} is not a .vmrs layer")
    registers = layer.dump.registers(vp_index, vtl)
    mode = registers.paging_mode
    classes = {
        PAGING_MODE.Paging_Long: intel.Intel32e,
        PAGING_MODE.Paging_Pae: intel.IntelPAE,
        PAGING_MODE.Paging_32Bit: intel.Intel,
    }
    if mode not in classes:
        raise VmrsFormatException(
            vmrs_layer_name, f"VP {vp_index} VTL {vtl}: paging mode {mode.name}"
        )
    if registers.la57:
        raise VmrsFormatException(
            vmrs_layer_name, f"VP {vp_index} uses 5-level paging, which Volatility 3 cannot walk"
        )
    name = f"{vmrs_layer_name}_vp{vp_index}_vtl{vtl}"
    if name not in context.layers:
        config_path = interfaces.configuration.path_join("VmrsVpLayers", name)
        context.config[interfaces.configuration.path_join(config_path, "memory_layer")] = (
            vmrs_layer_name
        )
        context.config[interfaces.configuration.path_join(config_path, "page_map_offset")] = (
            registers.dtb
        )
        context.add_layer(classes[mode](context, config_path=config_path, name=name))
    return name, mode
