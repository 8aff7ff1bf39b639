"""Fuzz targets: one small function per target, in a registry.

A target takes the fuzzed bytes and drives one part of the reader as far as it goes.
It may raise anything in :attr:`Target.expected` (``VmrsError`` by default): that is the
reader refusing bad input on purpose. Any other exception, a hang or a memory blow-up
is a finding. Inside a target, :func:`attempt` runs one step and swallows the expected
errors so that the later steps still run on inputs where an early one refuses.

Adding a target (the Volatility stacker target, later) is one decorated function::

    @register("stacker", corpus="file", doc="vmrs layer stacked by volatility3")
    def stacker_target(data: bytes) -> None:
        ...

``corpus`` names the seed family (:data:`fuzz.seeds.CORPORA`) the target is fed with.
"""

from __future__ import annotations

import io
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Type

from volatility3_vmrs.savedstate import legacy as L
from volatility3_vmrs.savedstate import memory as M
from volatility3_vmrs.savedstate import xpress
from volatility3_vmrs.savedstate.diagnostics import Diagnostics
from volatility3_vmrs.savedstate.errors import VmrsError
from volatility3_vmrs.savedstate.memory import PageReader
from volatility3_vmrs.savedstate.memory_map import BlockLocation, MemoryMap, MemoryRange
from volatility3_vmrs.savedstate.processors import PartitionState, RegisterSet
from volatility3_vmrs.savedstate.provider import SavedStateDump
from volatility3_vmrs.savedstate.source import ReadOnlySource
from volatility3_vmrs.savedstate.storage import HyperVStorage
from volatility3_vmrs.savedstate.types import REGISTER_ID, REGISTER_ID_X64, REGISTER_ID_X86

TargetFunction = Callable[[bytes], None]


@dataclass(frozen=True)
class Target:
    name: str
    function: TargetFunction
    corpus: str
    doc: str
    expected: Tuple[Type[BaseException], ...] = (VmrsError,)
    timeout: Optional[float] = None  # seconds per input, when the runner's is too short


TARGETS: Dict[str, Target] = {}


def register(
    name: str,
    *,
    corpus: str,
    doc: str,
    expected: Tuple[Type[BaseException], ...] = (VmrsError,),
    timeout: Optional[float] = None,
) -> Callable[[TargetFunction], TargetFunction]:
    def decorate(function: TargetFunction) -> TargetFunction:
        if name in TARGETS:
            raise ValueError(f"fuzz target {name!r} registered twice")
        TARGETS[name] = Target(name, function, corpus, doc, expected, timeout)
        return function

    return decorate


class DifferentialMismatch(AssertionError):
    """Two decoders that must agree did not (reported as a finding)."""


def attempt(step: Callable[[], Any]) -> Any:
    """Run one step; the reader's own refusals (VmrsError) are fine and give None."""
    try:
        return step()
    except VmrsError:
        return None


# --- (a) the container -----------------------------------------------------------------
@register("container", corpus="file", doc="HyperVStorage: open, walk every key, read values")
def container_target(data: bytes) -> None:
    storage = HyperVStorage(io.BytesIO(data))
    for key in storage.walk():
        attempt(lambda key=key: key.value)
        attempt(lambda key=key: key.read(0, 64))
        attempt(lambda key=key: key.read(max(0, key.size - 16)))
    attempt(lambda: storage.as_dict(arrays=True))
    attempt(lambda: storage.keys())
    for warning in storage.diagnostics.items:
        str(warning)
    _ = storage.replay_log.status, storage.header.format_version_text


# --- (b) page-record streams and XPRESS ------------------------------------------------
# Input: one mode byte, then the payload.
#   mode even: payload is a RamBlock value (page-record stream, or raw when 1 MiB) fed
#              through index_page_stream and the PageReader, every page decoded;
#   mode odd:  3 bytes of output size, then an XPRESS stream, decoded by every backend.
STREAM_MODE_PAGES = 0
STREAM_MODE_XPRESS = 1


def _stream_reader(block: bytes) -> PageReader:
    """One 256-page range backed by RamBlock0 = the input, read through the page reader.

    Building a real container per input would spend the time in the writer; the
    container itself is fuzzed by the ``container`` target.
    """
    memory_map = MemoryMap(
        ranges=(MemoryRange(0, "/savedstate/RamMemoryBlock0", 0, M.PAGES_PER_BLOCK, 0),),
        blocks={0: BlockLocation(0, "/savedstate/RamBlock0", 0, len(block))},
    )
    return PageReader(
        memory_map, ReadOnlySource(io.BytesIO(block)), Diagnostics(), cache_limit_blocks=1
    )


@register(
    "stream",
    corpus="stream",
    doc="RamBlock page-record streams through the PageReader, and XPRESS on every backend",
)
def stream_target(data: bytes) -> None:
    if not data:
        return
    mode, payload = data[0], data[1:]
    if mode & 1 == STREAM_MODE_PAGES:
        _page_stream(payload)
    else:
        _xpress_stream(payload)


def _page_stream(value: bytes) -> None:
    if len(value) < M.BLOCK_SIZE:
        attempt(lambda: M.index_page_stream(value, "/savedstate/RamBlock0"))
    memory = _stream_reader(value)
    for page in range(M.PAGES_PER_BLOCK):
        attempt(lambda page=page: memory.read_physical(page * M.PAGE_SIZE, M.PAGE_SIZE))
    # Unaligned reads across page and record boundaries.
    attempt(lambda: memory.read_physical(0x7F8, 0x1010))
    attempt(lambda: memory.read_raw(M.BLOCK_SIZE - 0x10, 0x10))
    window = (len(value) * 0x1000) % M.BLOCK_SIZE  # somewhere that depends on the input
    memory.read_physical_padded(window, 0x10000)
    for range_ in memory.ranges:
        attempt(lambda range_=range_: memory.page_kind_counts(range_))


def _xpress_stream(payload: bytes) -> None:
    if len(payload) < 3:
        return
    out_size = int.from_bytes(payload[:3], "little")
    if 0x10000 < out_size <= xpress.MAX_OUT_SIZE:
        # The pure decoder needs ~1 s for a 1 MiB output of short matches; keep the
        # inputs fast. Sizes above MAX_OUT_SIZE stay, to exercise their refusal.
        out_size = 0x10000
    stream = payload[3:]
    results: Dict[str, Optional[bytes]] = {}
    for backend in xpress.AVAILABLE_BACKENDS:
        previous = xpress.set_backend(backend)
        try:
            results[backend] = attempt(lambda: xpress.decompress(stream, out_size))
        finally:
            xpress.set_backend(previous)
    decoded = [value for value in results.values() if value is not None]
    for value in decoded:
        if len(value) != out_size:
            raise DifferentialMismatch(f"decompress gave {len(value)} bytes, not {out_size}")
    if len(decoded) > 1 and any(value != decoded[0] for value in decoded[1:]):
        raise DifferentialMismatch(f"XPRESS backends disagree on a {out_size}-byte output")


# --- (c) the partition state ------------------------------------------------------------
_REGISTER_NAMES = tuple(
    name for name, member in vars(RegisterSet).items() if hasattr(member, "__set_name__")
)
_DERIVED = (
    "cpl",
    "in_kernel_space",
    "kernel_gs_base",
    "virtual_msr_words",
    "architecture",
    "paging_mode",
    "la57",
    "dtb",
    "chunks",
)
_REGISTER_IDS = (*REGISTER_ID, *REGISTER_ID_X64, *REGISTER_ID_X86, 0xFFFF, -1)


def exercise_registers(regs: RegisterSet, *, by_id: bool) -> None:
    """Every register by name; with ``by_id`` also every GetRegisterValue id (slower)."""
    for name in _REGISTER_NAMES + _DERIVED:
        attempt(lambda name=name: getattr(regs, name))
    if by_id:
        for register_id in _REGISTER_IDS:
            attempt(lambda register_id=register_id: regs.get(register_id))


@register(
    "partition",
    corpus="partition",
    doc="partition_state parser, every register, paging mode and DTB",
)
def partition_target(data: bytes) -> None:
    state = PartitionState.parse(data)
    _ = (state.vendor, state.is_arm, state.enabled_vtls, state.vp_count, state.boot_vp)
    for vtl in range(16):
        state.guest_os_info_for(vtl)
    info = state.guest_os_info
    str(info)
    for index in (0, 1, 63, 64, 0xFFFFFFFF, -1):
        state.vp_index_present(index)
    by_id = True  # the id tables are the same for every set: walk them once per input
    for vp in state.vps.values():
        _ = (vp.enabled_vtls, vp.active_vtl, repr(vp))
        attempt(lambda vp=vp: vp.registers)
        for vtl in range(17):
            regs = attempt(lambda vp=vp, vtl=vtl: vp.registers_for(vtl))
            if regs is not None:
                exercise_registers(regs, by_id=by_id)
                by_id = False
    for warning in state.diagnostics:
        str(warning)


# --- (d) the whole file through the dump provider ---------------------------------------
READ_CHUNK = 0x10000
_TRY_VAS = (0x0, 0x1000, 0x80010000, 0xFFFFF80000010000, 0xFFFFF80000400000, 0xC0000000)


@register(
    "file",
    corpus="file",
    doc="SavedStateDump: open, processors, read memory in chunks, translate addresses",
)
def file_target(data: bytes) -> None:
    dump = SavedStateDump(io.BytesIO(data), cache_limit_blocks=2)
    with dump:
        for warning in dump.warnings:
            str(warning)
        _ = (dump.vm_version, dump.guest_enabled_vtls, dump.is_nested_virtualization_enabled())
        attempt(lambda: dump.config_version)
        attempt(lambda: dump.saved_state_type)
        attempt(lambda: dump.guest_os_info())
        dump.memory_chunks()
        for memory_range in dump.memory_ranges[:8]:
            start = memory_range.gpa_start
            end = min(memory_range.gpa_end, start + 4 * READ_CHUNK)
            for gpa in range(start, end, READ_CHUNK):
                attempt(lambda gpa=gpa: dump.read_physical(gpa, READ_CHUNK))
            attempt(lambda r=memory_range: dump.read_physical_padded(r.gpa_end - 0x800, 0x1000))
            attempt(lambda r=memory_range: dump.gpa_to_raw_offset(r.gpa_start))
        raw_size = dump.raw_size
        for offset in (0, raw_size // 2, max(0, raw_size - READ_CHUNK)):
            attempt(lambda offset=offset: dump.read_raw(offset, READ_CHUNK))
        for vp_index in dump.vp_indices[:4]:
            regs = attempt(lambda vp_index=vp_index: dump.registers(vp_index))
            if regs is None:
                continue
            attempt(lambda vp_index=vp_index: dump.architecture(vp_index))
            attempt(lambda vp_index=vp_index: dump.in_kernel_space(vp_index))
            mode = attempt(lambda vp_index=vp_index: dump.paging_mode(vp_index))
            if mode is None:
                continue
            vas = list(_TRY_VAS)
            for name in ("rip", "rsp"):
                value = attempt(lambda name=name, regs=regs: getattr(regs, name))
                if value is not None:
                    vas.append(value)
            for va in vas:
                translation = attempt(lambda vp_index=vp_index, va=va: dump.translate(vp_index, va))
                if translation is not None:
                    attempt(lambda t=translation: dump.read_physical(t.gpa, 0x100))


# --- (e) legacy .bin files -------------------------------------------------------------
LEGACY_BLOCKS_DECODED = 8  # per input: each decodes to 1 MiB, the reader itself is lazy


@register(
    "legacy",
    corpus="legacy",
    doc="legacy .bin: header, index, names; blocks decoded whole and through SavedStateDump",
)
def legacy_target(data: bytes) -> None:
    source = ReadOnlySource(io.BytesIO(data))
    diag = Diagnostics()
    parsed = L.parse_legacy_bin(source, diag)
    for item in diag:
        str(item)
    L.identity_ranges(parsed)
    for block in parsed.blocks[:LEGACY_BLOCKS_DECODED]:
        decoded = attempt(lambda block=block: L.decode_block(source, block))
        if decoded is not None and len(decoded) != M.BLOCK_SIZE:
            raise DifferentialMismatch(f"{block.name} decoded to {len(decoded):#x} bytes")
    attempt(lambda: SavedStateDump(io.BytesIO(data), strict=True).close())
    with SavedStateDump(io.BytesIO(data), cache_limit_blocks=2) as dump:
        for block in parsed.blocks[:LEGACY_BLOCKS_DECODED]:
            gpa = block.number * M.BLOCK_SIZE
            attempt(lambda gpa=gpa: dump.read_physical(gpa, M.PAGE_SIZE))
            dump.read_physical_padded(gpa + M.BLOCK_SIZE - 0x800, 0x1000)
        for memory_range in dump.memory_ranges[:2]:
            dump.memory.page_kind_counts(memory_range)
        attempt(lambda: dump.vp_count)


def target_names() -> Tuple[str, ...]:
    return tuple(TARGETS)


# struct is used by seeds that import this module for the stream framing.
def stream_input(value: bytes) -> bytes:
    """Frame a RamBlock value as a ``stream`` target input."""
    return bytes([STREAM_MODE_PAGES]) + value


def xpress_input(stream: bytes, out_size: int) -> bytes:
    """Frame an XPRESS stream and its output size as a ``stream`` target input."""
    return bytes([STREAM_MODE_XPRESS]) + struct.pack("<I", out_size)[:3] + stream


# --- (e) every plugin of the pack, through Volatility's automagic ------------------------
PLUGIN_SECONDS = 5.0


class PluginTooSlow(AssertionError):
    """A pack plugin took longer than the 5 s every malformed file is allowed.

    Counted from the constructed plugin: Volatility's own automagic (its Windows DTB
    scan over a layer without a published DTB, say) is bounded by the target's timeout.
    """


@register(
    "plugins",
    corpus="file",
    doc="every vmrs.* plugin on the file through Volatility's automagic (stacker included)",
    expected=(),
    timeout=6 * PLUGIN_SECONDS,
)
def plugins_target(data: bytes) -> None:
    from fuzz.plugin_harness import PACK_PLUGINS, run_pack_plugin
    from volatility3_vmrs.refusal import PluginRefusal

    with tempfile.TemporaryDirectory(prefix="vmrs-fuzz-") as directory:
        path = Path(directory) / "input.vmrs"
        path.write_bytes(data)
        for plugin in PACK_PLUGINS:
            outcome = run_pack_plugin(path, plugin)
            if outcome.error is not None and not isinstance(outcome.error, PluginRefusal):
                raise outcome.error
            if outcome.plugin_seconds > PLUGIN_SECONDS:
                raise PluginTooSlow(f"{plugin} took {outcome.plugin_seconds:.1f} s")
