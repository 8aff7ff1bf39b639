"""Names of the dump provider's legacy register ids, as ``vmrs registers`` and the
``vmrs.registers`` plugin show and accept them (no Volatility import).

A register is shown without the ``X64_Register`` / ``X86_Register`` prefix (``Rip``,
``Cr3``, ``LowXmm0``, ``SegCs``) and asked for case-insensitively by that name, by the
enum name (``X64_RegisterRip``), by a segment without ``Seg`` (``cs``) or by a 128-bit
register without ``Low``/``High`` (``xmm0`` selects both halves).

After the legacy ids come the registers the reader decodes that those enums have no id
for (:data:`EXTRAS`): the x87/MMX slots ``FpMmx0``-``FpMmx7`` (whole 128-bit values,
named as in the current ``REGISTER_ID`` enum), ``Xcr0`` and ``KernelGsBase`` (the
kernel GS base of a VP saved in user mode; its virtual-MSR slot is UNVERIFIED).
:func:`register_value` reads either kind.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Callable, Iterator, List, Optional, Sequence, Set, Tuple, Type, Union

from volatility3_vmrs.savedstate.errors import InvalidArgumentError, VmrsError
from volatility3_vmrs.savedstate.processors import RegisterSet
from volatility3_vmrs.savedstate.types import (
    REGISTER_ID,
    REGISTER_ID_X64,
    REGISTER_ID_X86,
    VIRTUAL_PROCESSOR_ARCH,
    Segment,
)

# Legacy short name -> RegisterSet attribute holding the whole segment.
SEGMENT_ATTRIBUTES = {
    "SegCs": "cs",
    "SegDs": "ds",
    "SegEs": "es",
    "SegFs": "fs",
    "SegGs": "gs",
    "SegSs": "ss",
    "Tr": "tr",
    "Ldtr": "ldtr",
}


class Extra:
    """A register the reader decodes that the legacy enums have no id for."""

    def __init__(self, name: str, read: Callable[[RegisterSet], int]) -> None:
        self.name = f"Extra_Register{name}"
        self.read = read


def _whole(member: Enum) -> Callable[[RegisterSet], int]:
    return lambda registers: registers.get(member).reg128


EXTRAS: Tuple[Extra, ...] = (
    *(
        Extra(short, _whole(member))
        for member in REGISTER_ID
        for short in [member.name.split("_Register", 1)[1]]
        if member.name.startswith("X64_RegisterFpMmx")
    ),
    Extra("Xcr0", lambda registers: registers.xcr0),
    Extra("KernelGsBase", lambda registers: registers.kernel_gs_base),
)

Member = Union[Enum, Extra]


def short_name(member: Member) -> str:
    return member.name.split("_Register", 1)[1]


def register_members(enum_type: Type[Enum]) -> List[Member]:
    """Every register of a legacy enum (without the Count sentinel), then the extras."""
    legacy: List[Member] = [m for m in enum_type if not m.name.endswith("_RegisterCount")]
    return legacy + list(EXTRAS)


def register_value(registers: RegisterSet, member: Member) -> int:
    """GetRegisterValue of a legacy id, or the value of an extra register."""
    if isinstance(member, Extra):
        return int(member.read(registers))
    return int(registers.get(member))


def aliases(member: Member) -> Set[str]:
    short = short_name(member)
    names = {short.lower(), member.name.lower()}
    if short.startswith("Seg"):
        names.add(short[3:].lower())
    for half in ("Low", "High"):
        if short.startswith(half):
            names.add(short[len(half) :].lower())
    return names


def select_members(enum_type: Type[Enum], wanted: Optional[Sequence[str]]) -> List[Member]:
    members = register_members(enum_type)
    if not wanted:
        return members
    asked = {name.strip().lower() for name in wanted}
    return [m for m in members if aliases(m) & asked]


def unknown_names(wanted: Optional[Sequence[str]]) -> List[str]:
    """The names no register of either enum answers to."""
    if not wanted:
        return []
    known: Set[str] = set()
    for enum_type in (REGISTER_ID_X64, REGISTER_ID_X86):
        for member in register_members(enum_type):
            known |= aliases(member)
    return [name for name in wanted if name.strip().lower() not in known]


def describe_segment(segment: Segment) -> str:
    parts = [
        f"type={segment.segment_type:#x}",
        "code/data" if segment.non_system else "system",
        f"DPL={segment.dpl}",
        f"RPL={segment.rpl}",
    ]
    for flag, name in (
        (segment.present, "P"),
        (segment.available, "AVL"),
        (segment.long, "L"),
        (segment.default, "D/B"),
        (segment.granularity, "G"),
    ):
        if flag:
            parts.append(name)
    return " ".join(parts)


def enum_for(registers: RegisterSet) -> Type[Enum]:
    """REGISTER_ID_X86 for a VP in 32-bit mode, else REGISTER_ID_X64."""
    try:
        if registers.architecture == VIRTUAL_PROCESSOR_ARCH.Arch_x86:
            return REGISTER_ID_X86
    except VmrsError:
        pass  # no control registers: report with the x64 ids
    return REGISTER_ID_X64


def register_sets(
    dump: Any, vp: Optional[int] = None, vtl: Optional[int] = None
) -> Iterator[Tuple[int, int, RegisterSet]]:
    """(VP, VTL, registers) of a dump, limited to ``vp`` and ``vtl`` when given.

    Raises :class:`~.savedstate.errors.InvalidArgumentError` for a VP the file does not
    have, or a VTL none of the chosen VPs has state for.
    """
    vps = list(dump.vp_indices)
    if vp is not None:
        if vp not in vps:
            raise InvalidArgumentError(f"no virtual processor {vp} (the file has {vps})")
        vps = [vp]
    found_vtl = False
    for index in vps:
        processor = dump.vp(index)
        for level in sorted(processor.vtls):
            if vtl is not None and level != vtl:
                continue
            found_vtl = True
            yield index, level, processor.vtls[level]
    if vtl is not None and not found_vtl:
        raise InvalidArgumentError(f"no register state for VTL {vtl} in VP(s) {vps}")
