"""vmrs.info: what the saved-state file says about itself and the saved VM.

One row per fact, in four typed columns, so that ``-r json`` gives numbers as numbers:

* ``Field`` (str): the name of the fact;
* ``Value`` (str): the fact in words, as an analyst reads it;
* ``Number`` (int, or N/A): the fact as a number where it has one - a count, a size in
  bytes (``File size``, ``Guest RAM``, a range's size), a version, an offset or an
  address (header offset, GPA, DTB, guest OS ID; rendered as Volatility ``Hex``), the
  file offset of a finding;
* ``Flag`` (bool, or N/A): the fact as yes/no where it is one (``RAM pages verified``,
  ``DTB published``).

Integrity is reported in two phases, as the reader finds it: ``at open`` (headers,
tables, keys and their CRC-32s, memory metadata, processor state) and ``while reading``
(page streams, decoded only when a page of them is read). The format has no checksum
over RAM pages, so ``RAM pages verified`` says whether every page was decoded:
``--verify`` does that (every RamBlock, every page, with progress) and reports the bad
blocks and pages. ``--sha256`` adds the SHA-256 of the file as stored, read in 1 MiB
chunks.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Iterator, List, Optional, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

from volatility3_vmrs.savedstate.diagnostics import Kind, Phase
from volatility3_vmrs.savedstate.errors import VmrsError
from volatility3_vmrs.savedstate.legacy_pair import ASSUMPTION, MAPPING_VSV
from volatility3_vmrs.savedstate.memory_map import PAGE_SIZE
from volatility3_vmrs.savedstate.provider import SavedStateDump
from volatility3_vmrs.savedstate.verify import MemoryCheck, verify_memory

from .common import VmrsLayer, find_vmrs_layer, primary_requirement

vollog = logging.getLogger(__name__)

COLUMNS = [("Field", str), ("Value", str), ("Number", int), ("Flag", bool)]
HASH_CHUNK = 1 << 20
PHASE_WORDS = {Phase.OPEN: "found at open", Phase.READ: "found while reading"}
NOT_VERIFIED = (
    "no: the format has no checksum over RAM pages, and page streams are decoded only "
    "when read; run vmrs.info --verify to decode every page"
)

Row = Tuple[str, str, object, object]


def _na() -> renderers.NotApplicableValue:
    return renderers.NotApplicableValue()


def _row(field: str, value: str, number: object = None, flag: object = None) -> Row:
    return (
        field,
        value,
        _na() if number is None else number,
        _na() if flag is None else flag,
    )


def _version_text(value: Optional[int]) -> str:
    if value is None:
        return "absent"
    return f"{value >> 8}.{value & 0xFF} ({value:#06x})"


def _legacy_rows(dump: SavedStateDump) -> Iterator[Row]:
    """What only a legacy pair has: the .bin's index, the .vsv, the memory map's origin."""
    legacy = dump.legacy
    header = legacy.bin.header
    yield _row("VM configuration version", _version_text(dump.vm_version), dump.vm_version)
    damaged = f", {len(legacy.bin.damaged)} damaged" if legacy.bin.damaged else ""
    yield _row(
        ".bin index",
        f"version {header.version:#06x}, {len(legacy.bin.blocks)} RamBlock entries usable "
        f"of {header.index_capacity} slots{damaged}",
        len(legacy.bin.blocks),
    )
    vsv = legacy.vsv
    if vsv is None:
        yield _row(".vsv", "missing: none found beside the .bin (no processor state, no GPA map)")
    elif not vsv.interpreted:
        yield _row(".vsv", f"{vsv.path}: could not be interpreted (see the notes)")
    else:
        yield _row(".vsv", f"{vsv.path}: HyperVStorage container, {len(list(dump.keys()))} keys")
    if legacy.mapping == MAPPING_VSV:
        yield _row("Memory map", "from the .vsv's RamMemoryBlock keys")
    else:
        yield _row("Memory map", f"assumption: {ASSUMPTION[len('assumed: ') :]}")


def _size_text(size: int) -> str:
    return f"{size} bytes ({size / (1 << 20):.1f} MiB)"


class Info(interfaces.plugins.PluginInterface):
    """Lists the format, integrity, memory layout, processors and guest OS of a saved state."""

    _required_framework_version = (2, 0, 0)
    _version = (2, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            primary_requirement(),
            requirements.BooleanRequirement(
                name="verify",
                description="Decode every page of every RamBlock and report bad ones",
                default=False,
                optional=True,
            ),
            requirements.BooleanRequirement(
                name="sha256",
                description="Compute the SHA-256 of the file (read in 1 MiB chunks)",
                default=False,
                optional=True,
            ),
        ]

    def _sha256(self, layer: VmrsLayer) -> str:
        source = layer.dump.source
        digest = hashlib.sha256()
        done = 0
        for chunk in source.stored_chunks(HASH_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            self._progress_callback(100.0 * done / max(1, source.file_size), "SHA-256 of the file")
        return digest.hexdigest()

    def _file_rows(self, layer: VmrsLayer) -> Iterator[Row]:
        dump = layer.dump
        size = dump.source.file_size
        yield _row("File", dump.name)
        yield _row("File size", _size_text(size), size)
        if self.config.get("sha256", False):
            yield _row("File SHA-256", self._sha256(layer))
        else:
            yield _row("File SHA-256", "not computed (--sha256 computes it)")

    def _integrity_rows(self, layer: VmrsLayer, check: Optional[MemoryCheck]) -> Iterator[Row]:
        dump = layer.dump
        storage = dump.storage
        problems = dump.diagnostics.problems
        checksum_failures = sum(1 for item in problems if item.kind == Kind.CHECKSUM)
        yield _row("Checksum failures", str(checksum_failures), checksum_failures)
        if storage is not None:
            label = "Replay log" if dump.legacy is None else "Replay log (.vsv)"
            yield _row(label, storage.replay_log.status)
        for phase in Phase:
            count = sum(1 for item in problems if item.phase == phase)
            yield _row(f"Integrity problems {PHASE_WORDS[phase]}", str(count), count)
        for kind, items in dump.diagnostics.grouped().items():
            for item in items:
                label = (
                    f"{item.severity.name.capitalize()} ({kind.value}, {PHASE_WORDS[item.phase]})"
                )
                offset = None if item.offset is None else format_hints.Hex(item.offset)
                yield _row(label, str(item), offset)
        if dump.memory is None:
            return
        if check is None:
            yield _row("RAM pages verified", NOT_VERIFIED, None, False)
            return
        yield _row("RAM pages verified", f"yes: {check.describe()}", None, True)
        yield _row("Pages verified", str(check.pages), check.pages)
        yield _row("Bad pages", str(check.bad_pages), check.bad_pages)
        yield _row("Bad RamBlocks", str(len(check.bad_blocks)), len(check.bad_blocks))

    def _rows(self, layer: VmrsLayer) -> Iterator[Row]:
        dump = layer.dump
        # The full check runs first, so that what it finds is listed with the rest.
        check = None
        if self.config.get("verify", False) and dump.memory is not None:
            check = verify_memory(dump.memory, self._progress_callback)
        yield from self._file_rows(layer)
        yield _row("Format", dump.format)
        if dump.legacy is not None:
            yield from _legacy_rows(dump)
        else:
            header = dump.storage.header
            yield _row(
                "File format version",
                f"{header.format_version_text} ({header.format_version:#06x})",
                header.format_version,
            )
            yield _row("VM configuration version", _version_text(dump.vm_version), dump.vm_version)
            yield _row("Saved-state type", dump.saved_state_type or "absent")
            yield _row(
                "Active header",
                f"copy at {header.offset:#x}, sequence {header.sequence}",
                format_hints.Hex(header.offset),
            )
        yield from self._integrity_rows(layer, check)
        if dump.memory is None:
            yield _row("Guest memory", "none in this file")
        else:
            ranges = dump.memory.map.ranges
            yield _row("Memory ranges", str(len(ranges)), len(ranges))
            for memory_range in ranges:
                yield _row(
                    f"Range {memory_range.number}",
                    f"GPA {memory_range.gpa_start:#x}-{memory_range.gpa_end - 1:#x} "
                    f"({memory_range.page_count} pages)",
                    memory_range.page_count * PAGE_SIZE,
                )
            total = dump.memory.map.total_pages * PAGE_SIZE
            yield _row("Guest RAM", _size_text(total), total)
        yield from self._processor_rows(layer)

    def _processor_rows(self, layer: VmrsLayer) -> Iterator[Row]:
        dump = layer.dump
        published = layer.metadata.get("page_map_offset")
        dtb_row = _row(
            "DTB published",
            layer.dtb_note,
            None if published is None else format_hints.Hex(published),
            published is not None,
        )
        if dump.partition is None:
            yield _row("Virtual processors", f"none: {dump.missing_processor_state}", 0)
            yield dtb_row
            return
        yield _row("Virtual processors", str(dump.vp_count), dump.vp_count)
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
            yield _row(f"VP {index}", detail)
        vtls = dump.guest_enabled_vtls
        yield _row("VTLs enabled (partition)", f"{vtls:#b}", vtls)
        os_info = dump.guest_os_info(0)
        yield _row(
            "Guest OS",
            f"{os_info.describe()} (guest OS ID {os_info.raw:#018x})",
            format_hints.Hex(os_info.raw),
        )
        yield dtb_row

    def _generator(self, layer: VmrsLayer):
        for row in self._rows(layer):
            yield 0, row

    def run(self) -> interfaces.renderers.TreeGrid:
        layer = find_vmrs_layer(self.context, self.config["primary"])
        return renderers.TreeGrid(COLUMNS, self._generator(layer))
