"""Test writer for partition_state blobs (format 11.5 / 14 step 9), openvmm's order.

Packs with the very Layout declarations the reader unpacks with (processors.py), so a
field can only be wrong in one place. Registers are given as dicts keyed by the
RegisterSet attribute names (``rax``, ``xmm3``, ``cs``...); missing ones are zero.
Segments may be :class:`Segment` or ``(base, limit, selector, attributes)``; tables
:class:`Table` or ``(limit, base)``.

Knobs for malformed or unusual streams: unknown chunks to inject, registers written
before any VpVtl marker, a VpVtlControlPage before or after the VTL markers, chunks to
omit or truncate, no Epilog, envelope overrides.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from volatility3_vmrs.savedstate.processors import (
    CHUNK_HEADER,
    CONTROL_NAMES,
    CONTROL_REGISTERS,
    DEBUG_NAMES,
    DEBUG_REGISTERS,
    DESCRIPTOR,
    DESCRIPTOR_PADDING,
    FP_NAMES,
    FP_REGISTERS,
    GP_NAMES,
    GP_REGISTERS,
    OS_ID,
    PROLOG_HEAD,
    PROLOG_RESERVED_SIZE,
    PROLOG_TAG,
    SEGMENT_CPL,
    SEGMENT_NAMES,
    SEGMENT_REGISTERS,
    TABLE_NAMES,
    TABLE_REGISTERS,
    VIRTUAL_MSR_WORDS,
    VIRTUAL_MSRS,
    VP_INDICES_HEAD,
    VP_MARKER,
    VTL_CONTROL_PAGE,
    VTL_MARKER,
    XSAVE_CONTROL,
    ChunkId,
    HvProcessorVendor,
)
from volatility3_vmrs.savedstate.types import Segment, Table

# Emission order of register chunks inside a VTL section (openvmm).
REGISTER_CHUNK_ORDER = (
    "gp",
    "control",
    "segment",
    "table",
    "debug",
    "fp",
    "xsave_control",
    "virtual_msrs",
)
_CHUNK_IDS = {
    "gp": ChunkId.GP_REGISTERS,
    "control": ChunkId.CONTROL_REGISTERS,
    "segment": ChunkId.SEGMENT_REGISTERS,
    "table": ChunkId.TABLE_REGISTERS,
    "debug": ChunkId.DEBUG_REGISTERS,
    "fp": ChunkId.FP_REGISTERS,
    "xsave_control": ChunkId.XSAVE_CONTROL,
    "virtual_msrs": ChunkId.VIRTUAL_MSRS,
}

ALL_REGISTER_NAMES = (
    GP_NAMES + FP_NAMES + CONTROL_NAMES + DEBUG_NAMES + SEGMENT_NAMES + TABLE_NAMES + ("xcr0",)
)


def chunk(chunk_id: int, data: bytes = b"", *, data_length: Optional[int] = None) -> bytes:
    """One chunk; ``data_length`` overrides the header's length (for malformed blobs)."""
    length = len(data) if data_length is None else data_length
    return CHUNK_HEADER.pack(chunk_id=chunk_id, data_length=length) + data


def envelope(
    stream: bytes,
    *,
    descriptor_size: int = DESCRIPTOR.size,
    header_size: int = DESCRIPTOR.size,
    total_size: Optional[int] = None,
) -> bytes:
    """Descriptor + 16 zero bytes (+ any header_size beyond 24) + stream."""
    gap = max(0, header_size - DESCRIPTOR.size) + DESCRIPTOR_PADDING
    body_len = DESCRIPTOR.size + gap + len(stream)
    desc = DESCRIPTOR.pack(
        descriptor_size=descriptor_size,
        header_size=header_size,
        total_size=body_len if total_size is None else total_size,
    )
    return desc + bytes(gap) + stream


def _seg(value: Any) -> Segment:
    if isinstance(value, Segment):
        return value
    if value is None:
        return Segment(0, 0, 0, 0)
    return Segment(*value)


def _table(value: Any) -> Table:
    if isinstance(value, Table):
        return value
    if value is None:
        return Table(0, 0)
    return Table(*value)


def register_chunk_data(kind: str, regs: Dict[str, Any], *, with_cpl: bool = True) -> bytes:
    """The data part of one x64 register chunk from a register dict."""
    if kind == "gp":
        return GP_REGISTERS.pack(**{n: regs.get(n, 0) for n in GP_NAMES})
    if kind == "control":
        return CONTROL_REGISTERS.pack(**{n: regs.get(n, 0) for n in CONTROL_NAMES})
    if kind == "debug":
        return DEBUG_REGISTERS.pack(**{n: regs.get(n, 0) for n in DEBUG_NAMES})
    if kind == "fp":
        return FP_REGISTERS.pack(**{n: regs.get(n, 0).to_bytes(16, "little") for n in FP_NAMES})
    if kind == "segment":
        values: Dict[str, int] = {}
        for name in SEGMENT_NAMES:
            s = _seg(regs.get(name))
            values.update(
                {
                    f"{name}_base": s.base,
                    f"{name}_limit": s.limit,
                    f"{name}_selector": s.selector,
                    f"{name}_attributes": s.attributes,
                }
            )
        data = SEGMENT_REGISTERS.pack(**values)
        if with_cpl:
            # openvmm stores CS.selector & 3; a dict may override it with "cpl".
            cpl = regs.get("cpl", _seg(regs.get("cs")).selector & 3)
            data += SEGMENT_CPL.pack(cpl=cpl)
        return data
    if kind == "table":
        values = {}
        for name in TABLE_NAMES:
            t = _table(regs.get(name))
            values.update({f"{name}_limit": t.limit, f"{name}_base": t.base})
        return TABLE_REGISTERS.pack(**values)
    if kind == "xsave_control":
        return XSAVE_CONTROL.pack(xcr0=regs.get("xcr0", 0))
    if kind == "virtual_msrs":
        words = list(regs.get("virtual_msrs", ())) + [0] * VIRTUAL_MSR_WORDS
        return VIRTUAL_MSRS.pack(**{f"word{i}": words[i] for i in range(VIRTUAL_MSR_WORDS)})
    raise ValueError(kind)


@dataclass
class VtlDescription:
    """Registers of one VTL; ``omit``/``truncate`` knock out or shorten register chunks."""

    registers: Dict[str, Any] = field(default_factory=dict)
    omit: Sequence[str] = ()
    truncate: Dict[str, int] = field(default_factory=dict)  # kind -> new data length
    with_cpl: bool = True
    marker: bool = True  # False: registers before any VpVtl marker (older writers)


@dataclass
class VpDescription:
    index: int
    vtls: Dict[int, VtlDescription] = field(default_factory=dict)
    # VTL flagged runnable by a VpVtlControlPage. None: openvmm's rule (one page with
    # vtl_is_runnable=1 before the markers when the VP has several VTLs).
    runnable_vtl: Optional[int] = None
    control_page_position: str = "before"  # "before" the VpVtl markers or "after" (VOL3PR)
    control_page: Optional[bool] = None  # force on/off
    extra_chunks: List[Tuple[int, bytes]] = field(default_factory=list)  # after the marker


@dataclass
class PartitionDescription:
    vps: List[VpDescription] = field(default_factory=list)
    vendor: int = HvProcessorVendor.INTEL
    os_id: int = 0
    os_ids_per_vtl: Optional[Dict[int, int]] = None  # OsId chunk after each PartitionVtl
    partition_vtls: Optional[Sequence[int]] = None  # default: union of the VPs' VTLs
    boot_vp: Optional[int] = None
    vp_indices: bool = True
    extra_chunks: List[Tuple[int, bytes]] = field(default_factory=list)  # after OsId
    epilog: bool = True
    trailing: bytes = b""  # bytes after the Epilog


def prolog_data(vendor: int, *, summary: bool = False) -> bytes:
    head = PROLOG_HEAD.pack(tag=PROLOG_TAG, is_summary_save_state=int(summary), vendor=vendor)
    return head + bytes(PROLOG_RESERVED_SIZE)


def vp_indices_data(indices: Sequence[int], boot: int) -> bytes:
    top = max(indices, default=0)
    size = max(top // 8 + 1, 8)
    size = (size + 3) // 4 * 4
    bitmap = bytearray(size)
    for i in indices:
        bitmap[i // 8] |= 1 << (i % 8)
    return VP_INDICES_HEAD.pack(boot_vp_index=boot) + bytes(bitmap)


def _vtl_section(vtl: int, desc: VtlDescription) -> bytes:
    out = b""
    if desc.marker:
        out += chunk(ChunkId.VP_VTL, VTL_MARKER.pack(vtl=vtl))
    for kind in REGISTER_CHUNK_ORDER:
        if kind in desc.omit:
            continue
        data = register_chunk_data(kind, desc.registers, with_cpl=desc.with_cpl)
        if kind in desc.truncate:
            data = data[: desc.truncate[kind]]
        out += chunk(_CHUNK_IDS[kind], data)
    return out


def control_page_chunk(runnable: bool) -> bytes:
    return chunk(
        ChunkId.VP_VTL_CONTROL_PAGE,
        VTL_CONTROL_PAGE.pack(contents=bytes(24), vtl_is_runnable=int(runnable)),
    )


def _vp_section(vp: VpDescription) -> bytes:
    out = chunk(ChunkId.VP, VP_MARKER.pack(vp_index=vp.index))
    for cid, data in vp.extra_chunks:
        out += chunk(cid, data)
    want_page = vp.control_page
    if want_page is None:
        want_page = len(vp.vtls) > 1 or vp.runnable_vtl is not None
    before = want_page and vp.control_page_position == "before"
    if before:
        # Before the markers the page belongs to VTL 0 (reader's rule).
        out += control_page_chunk(vp.runnable_vtl in (None, 0))
    # Marker-less sections first: they are only meaningful before any VpVtl marker.
    order = sorted(vp.vtls, key=lambda v: (vp.vtls[v].marker, v))
    for vtl in order:
        out += _vtl_section(vtl, vp.vtls[vtl])
        if want_page and not before and vtl == (vp.runnable_vtl or 0):
            out += control_page_chunk(True)
    return out


def build_stream(desc: PartitionDescription) -> bytes:
    out = chunk(ChunkId.PROLOG, prolog_data(desc.vendor))
    vtls = desc.partition_vtls
    if vtls is None:
        vtls = sorted({v for vp in desc.vps for v in vp.vtls} or {0})
    if desc.os_ids_per_vtl is None:
        out += chunk(ChunkId.OS_ID, OS_ID.pack(os_id=desc.os_id))
    for cid, data in desc.extra_chunks:
        out += chunk(cid, data)
    for vtl in vtls:
        out += chunk(ChunkId.PARTITION_VTL, VTL_MARKER.pack(vtl=vtl))
        if desc.os_ids_per_vtl is not None and vtl in desc.os_ids_per_vtl:
            out += chunk(ChunkId.OS_ID, OS_ID.pack(os_id=desc.os_ids_per_vtl[vtl]))
    if desc.vp_indices:
        indices = [vp.index for vp in desc.vps]
        boot = desc.boot_vp if desc.boot_vp is not None else (indices[0] if indices else 0)
        out += chunk(ChunkId.VP_INDICES, vp_indices_data(indices, boot))
    for vp in desc.vps:
        out += _vp_section(vp)
    if desc.epilog:
        out += chunk(ChunkId.EPILOG)
    return out + desc.trailing


def build_partition_state(desc: PartitionDescription, **envelope_overrides: Any) -> bytes:
    """The complete blob: envelope + stream (envelope fields overridable)."""
    return envelope(build_stream(desc), **envelope_overrides)


# --- register generators for tests -----------------------------------------------------
def random_registers(rng: random.Random, *, long_mode: bool = True) -> Dict[str, Any]:
    """Distinct random values for every register, with paging state that makes sense."""
    regs: Dict[str, Any] = {}
    for name in GP_NAMES + DEBUG_NAMES:
        regs[name] = rng.getrandbits(64)
    for name in FP_NAMES:
        regs[name] = rng.getrandbits(128)
    regs.update(cr2=rng.getrandbits(64), cr8=rng.getrandbits(4), xcr0=rng.getrandbits(64))
    regs["cr3"] = rng.getrandbits(52) << 12 | rng.getrandbits(12)
    if long_mode:
        regs.update(cr0=0x80050033, cr4=0x000406F8 | rng.getrandbits(1) << 17, efer=0xD01)
    else:
        regs.update(cr0=0x80000011, cr4=0x20, efer=0)
        for name in ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "rip", "rflags"):
            regs[name] &= 0xFFFFFFFF
    for name in SEGMENT_NAMES:
        regs[name] = Segment(
            rng.getrandbits(64), rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(16)
        )
    for name in TABLE_NAMES:
        regs[name] = Table(rng.getrandbits(16), rng.getrandbits(64))
    regs["virtual_msrs"] = tuple(rng.getrandbits(64) for _ in range(VIRTUAL_MSR_WORDS))
    return regs


def simple_partition(
    vp_count: int = 1, *, seed: int = 0, vtls: Sequence[int] = (0,), **kwargs: Any
) -> Tuple[PartitionDescription, bytes]:
    """A valid description with random registers, and its blob."""
    rng = random.Random(seed)
    vps = [
        VpDescription(i, {v: VtlDescription(random_registers(rng)) for v in vtls})
        for i in range(vp_count)
    ]
    desc = PartitionDescription(vps=vps, **kwargs)
    return desc, build_partition_state(desc)


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)
