"""vmrs.registers: the saved register state of every virtual processor and VTL.

One row per VP, VTL and register, for every member of the dump provider's legacy
``REGISTER_ID_X64`` enum (``REGISTER_ID_X86`` for a VP in 32-bit mode), named without
the ``X64_Register`` / ``X86_Register`` prefix (``Rip``, ``Cr3``, ``LowXmm0``, ``SegCs``).
``Value`` is what the DLL's GetRegisterValue returns for that id; segment registers,
TR and LDTR also carry their whole hidden part (base, limit, attributes) decoded. Then
come the registers the reader decodes beyond the legacy enum: ``FpMmx0``-``FpMmx7``,
``Xcr0`` and ``KernelGsBase`` (see :mod:`volatility3_vmrs.register_names`).

``--register`` takes names case-insensitively: the short name (``rip``), the enum name
(``X64_RegisterRip``), a segment without ``Seg`` (``cs``) and a 128-bit register
without ``Low``/``High`` (``xmm0`` selects both halves).
"""

from __future__ import annotations

import logging
from typing import Iterator, List, Optional, Sequence, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

from volatility3_vmrs.register_names import (
    SEGMENT_ATTRIBUTES,
    describe_segment,
    enum_for,
    register_members,
    register_sets,
    register_value,
    select_members,
    short_name,
    unknown_names,
)
from volatility3_vmrs.savedstate.errors import InvalidArgumentError, VmrsError
from volatility3_vmrs.savedstate.processors import RegisterSet
from volatility3_vmrs.savedstate.types import REGISTER_ID_X64, Segment

from .common import find_vmrs_layer, primary_requirement, refuse, require_processors

vollog = logging.getLogger(__name__)

COLUMNS = [
    ("VP", int),
    ("VTL", int),
    ("Register", str),
    ("Value", format_hints.Hex),
    ("Selector", format_hints.Hex),
    ("Base", format_hints.Hex),
    ("Limit", format_hints.Hex),
    ("Attributes", format_hints.Hex),
    ("Decoded", str),
]


def check_names(wanted: Optional[Sequence[str]]) -> None:
    """Refuse names no register of either enum answers to."""
    unknown = unknown_names(wanted)
    if unknown:
        names = ", ".join(short_name(m) for m in register_members(REGISTER_ID_X64))
        refuse(f"unknown register name(s) {', '.join(unknown)}; known: {names}")


class Registers(interfaces.plugins.PluginInterface):
    """Lists the saved registers of each virtual processor (and VTL) of a .vmrs."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            primary_requirement(),
            requirements.IntRequirement(
                name="vp", description="Only this virtual processor", optional=True
            ),
            requirements.IntRequirement(
                name="vtl", description="Only this virtual trust level", optional=True
            ),
            requirements.ListRequirement(
                name="register",
                element_type=str,
                description="Only these registers (case-insensitive: rip cr3 cs xmm0 ...)",
                optional=True,
            ),
        ]

    @classmethod
    def rows(
        cls,
        dump,
        vp: Optional[int] = None,
        vtl: Optional[int] = None,
        wanted: Optional[Sequence[str]] = None,
    ) -> Iterator[Tuple]:
        """(vp, vtl, name, value, selector, base, limit, attributes, decoded) tuples."""
        try:
            for index, level, registers in register_sets(dump, vp, vtl):
                for member in select_members(enum_for(registers), wanted):
                    yield (index, level, *cls._register_row(registers, member))
        except InvalidArgumentError as error:
            refuse(str(error))

    @staticmethod
    def _register_row(registers: RegisterSet, member) -> Tuple:
        name = short_name(member)
        absent = renderers.NotApplicableValue()
        try:
            value = format_hints.Hex(register_value(registers, member))
        except VmrsError as error:
            unreadable = renderers.UnreadableValue()
            return name, unreadable, absent, absent, absent, absent, str(error)
        attribute = SEGMENT_ATTRIBUTES.get(name)
        if attribute is None:
            return name, value, absent, absent, absent, absent, ""
        segment: Segment = getattr(registers, attribute)
        return (
            name,
            value,
            format_hints.Hex(segment.selector),
            format_hints.Hex(segment.base),
            format_hints.Hex(segment.limit),
            format_hints.Hex(segment.attributes),
            describe_segment(segment),
        )

    def run(self) -> interfaces.renderers.TreeGrid:
        layer = find_vmrs_layer(self.context, self.config["primary"])
        require_processors(layer.dump)
        wanted = self.config.get("register") or None
        check_names(wanted)
        # Validate the filters now, so a bad option fails before any output.
        rows = self.rows(layer.dump, self.config.get("vp"), self.config.get("vtl"), wanted)
        first = next(rows, None)

        def generator() -> Iterator[Tuple[int, Tuple]]:
            if first is not None:
                yield 0, first
            for row in rows:
                yield 0, row

        return renderers.TreeGrid(COLUMNS, generator())
