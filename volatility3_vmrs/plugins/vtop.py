"""vmrs.vtop: translate one guest-virtual address with a virtual processor's page tables.

The walk uses the VP's saved CR3 and paging mode (32-bit, PAE, 4-level or 5-level long
mode) and reads the paging structures from saved guest memory. Rows: CR3 and the page-
table root it gives, then one row per paging level (entry address, raw entry, decoded
flags, and the next table or the page it maps), then the result: the guest-physical
address, or the level whose entry was not present (or which table was not saved), or,
for a long-mode address outside the canonical halves, no walk at all: bits 63:47 (4-level
paging) or 63:56 (5-level) must all equal bit 47 (56), and the result row says so.

``--address`` is hexadecimal, with or without ``0x`` (``fffff80000010000``,
``0xfffff800`00010000``); the pack parses it, so a bad one is refused in one line.
"""

from __future__ import annotations

import logging
from typing import Iterator, List, Optional, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

from volatility3_vmrs.layers.vmrs import choose_vp
from volatility3_vmrs.savedstate.errors import InvalidArgumentError, MemoryReadError, VmrsError
from volatility3_vmrs.savedstate.paging import (
    FRAME_MASK_64,
    NON_CANONICAL,
    PageFlags,
    PageNotPresentError,
    PagingStep,
    dtb_from_cr3,
    translate,
)
from volatility3_vmrs.savedstate.types import PAGING_MODE

from .common import (
    find_vmrs_layer,
    parse_address,
    primary_requirement,
    refuse,
    require_memory,
    require_processors,
)

vollog = logging.getLogger(__name__)

COLUMNS = [
    ("VP", int),
    ("VTL", int),
    ("Mode", str),
    ("Level", str),
    ("Entry address", format_hints.Hex),
    ("Entry value", format_hints.Hex),
    ("Flags", str),
    ("Maps", format_hints.Hex),
    ("Result", str),
]


def flag_text(flags: PageFlags) -> str:
    if not flags.present:
        return "not present"
    names = [
        (flags.present, "P"),
        (flags.rw, "RW"),
        (flags.user, "US"),
        (flags.pwt, "PWT"),
        (flags.pcd, "PCD"),
        (flags.accessed, "A"),
        (flags.dirty, "D"),
        (flags.ps, "PS"),
        (flags.global_, "G"),
        (flags.nx, "NX"),
    ]
    return " ".join(name for on, name in names if on)


class Vtop(interfaces.plugins.PluginInterface):
    """Translates a virtual address with a VP's page tables, level by level."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            primary_requirement(),
            # Required, but declared optional so that a configuration saved with
            # --save-config can supply it (argparse would insist on the option).
            # A string the pack parses: Volatility's own int option wants a 0x prefix.
            requirements.StringRequirement(
                name="address",
                description="Guest-virtual address to translate, hex with or without 0x (required)",
                optional=True,
            ),
            requirements.IntRequirement(
                name="vp",
                description="Virtual processor whose CR3 is used (default: the layer's)",
                optional=True,
            ),
            requirements.IntRequirement(
                name="vtl", description="Virtual trust level (default 0)", optional=True
            ),
        ]

    @classmethod
    def rows(cls, dump, vp: int, vtl: int, address: int) -> Iterator[Tuple]:
        try:
            registers = dump.registers(vp, vtl)
            mode = registers.paging_mode
            cr3 = registers.cr3
            la57 = registers.la57
        except VmrsError as error:
            refuse(f"VP {vp} VTL {vtl}: {error}")
        na = renderers.NotApplicableValue()
        head = (vp, vtl, mode.name)
        try:
            root = dtb_from_cr3(mode, cr3)
        except InvalidArgumentError:
            yield (*head, "CR3", na, format_hints.Hex(cr3), "", na, f"no paging ({mode.name})")
            return
        yield (*head, "CR3", na, format_hints.Hex(cr3), "", format_hints.Hex(root), "")
        try:
            translation = translate(dump.read_physical, mode, cr3, address, la57=la57)
        except PageNotPresentError as error:
            for step in error.steps:
                yield (*head, *cls._step(step, mode))
            if error.level == NON_CANONICAL:
                result = f"not mapped: {error}"
            else:
                result = f"{address:#x} not mapped: {error.level} not present"
            yield (*head, "GPA", na, na, "", na, result)
            return
        except MemoryReadError as error:
            yield (*head, "GPA", na, na, "", na, f"paging structure not readable: {error}")
            return
        except InvalidArgumentError as error:
            yield (*head, "GPA", na, na, "", na, str(error))
            return
        for number, step in enumerate(translation.steps):
            last = number == len(translation.steps) - 1
            leaf = (translation.page_base, translation.page_size) if last else None
            yield (*head, *cls._step(step, mode, leaf))
        yield (
            *head,
            "GPA",
            na,
            na,
            "",
            format_hints.Hex(translation.gpa),
            f"{address:#x} -> {translation.gpa:#x} (page size {translation.page_size:#x})",
        )

    @staticmethod
    def _step(step: PagingStep, mode, leaf: Optional[Tuple[int, int]] = None) -> Tuple:
        na = renderers.NotApplicableValue()
        flags = step.flags
        if not flags.present:
            maps: object = na
            result = "not present"
        elif leaf is not None:
            maps = format_hints.Hex(leaf[0])
            result = f"page of {leaf[1]:#x} bytes"
        else:
            is64 = mode != PAGING_MODE.Paging_32Bit
            maps = format_hints.Hex(step.entry_value & (FRAME_MASK_64 if is64 else 0xFFFFF000))
            result = "next table"
        return (
            step.level_name,
            format_hints.Hex(step.entry_address),
            format_hints.Hex(step.entry_value),
            flag_text(flags),
            maps,
            result,
        )

    def run(self) -> interfaces.renderers.TreeGrid:
        layer = find_vmrs_layer(self.context, self.config["primary"])
        dump = layer.dump
        require_processors(dump)
        require_memory(dump)
        vp = self.config.get("vp")
        if vp is None:
            vp = layer.vp_index if layer.vp_index is not None else choose_vp(dump)
            if vp is None:
                refuse("no virtual processor with paging enabled; give --vp")
        elif vp not in dump.vp_indices:
            refuse(f"no virtual processor {vp} (the file has {dump.vp_indices})")
        vtl = self.config.get("vtl")
        vtl = 0 if vtl is None else vtl
        given = self.config.get("address")
        if given is None:
            refuse("--address is required: the guest-virtual address to translate")
        # A configuration saved before the option became a string holds an int.
        address = given if isinstance(given, int) else parse_address(str(given), "--address")
        vollog.debug(f"translating {address:#x} with VP {vp} VTL {vtl}")
        rows = list(self.rows(dump, vp, vtl, address))
        return renderers.TreeGrid(COLUMNS, ((0, row) for row in rows))
