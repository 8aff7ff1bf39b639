"""Export a saved state's guest memory to formats other tools read.

No Volatility import: like the reader, this is a library of its own, used by the
``vmrs export`` command and the ``vmrs.export`` plugin.

    from volatility3_vmrs.export import export_to_path
    with SavedStateDump("vm.vmrs") as dump:
        result = export_to_path(dump, "elf", "vm.elf", inputs=["vm.vmrs"], sha256=True)

Formats (:data:`FORMATS`): ``raw`` (file offset = GPA, holes sparse), ``lime`` (one
LiME header per range), ``elf`` (ET_CORE, PT_LOAD per range, per-VP notes) and
``dmp`` (Windows full crash dump). Every format reads the memory once, in bounded
chunks, in ascending GPA order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import IO, Dict, List, Optional, Sequence, Tuple

from volatility3_vmrs.savedstate import SavedStateDump

from . import crashdump, elfcore, lime, raw
from .cpu import choose_vp
from .kdbg import KernelAddresses, KernelSpace
from .kernelcopy import evidence_fd
from .writer import ExportError, MemoryRange, Output, Progress, memory_ranges, open_output

FORMATS: Dict[str, str] = {
    "raw": raw.EXTENSION,
    "lime": lime.EXTENSION,
    "elf": elfcore.EXTENSION,
    "dmp": crashdump.EXTENSION,
}
"""Format name -> usual file extension."""


@dataclass
class ExportResult:
    """What an export wrote: size, digest, the ranges and holes, and notes for the user."""

    format: str
    size: int
    sha256: Optional[str]
    ranges: List[MemoryRange]
    holes: List[Tuple[int, int]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    vp: Optional[int] = None
    path: Optional[str] = None
    kernel_copied: int = 0  # memory bytes copied file-to-file by the kernel

    def as_dict(self) -> Dict[str, object]:
        return {
            "format": self.format,
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "vp": self.vp,
            "ranges": [{"gpa": r.gpa, "size": r.size} for r in self.ranges],
            "holes": [{"start": start, "end": end} for start, end in self.holes],
            "notes": list(self.notes),
            "kernel_copied": self.kernel_copied,
        }


def export(
    dump: SavedStateDump,
    fmt: str,
    stream: IO[bytes],
    *,
    sha256: bool = False,
    progress: Optional[Progress] = None,
    vp: Optional[int] = None,
    kernel: Optional[KernelAddresses] = None,
    evidence: Optional[str] = None,
) -> ExportResult:
    """Write ``dump``'s memory to ``stream`` (opened for writing) in format ``fmt``.

    ``vp`` chooses the processor of the crash dump's CONTEXT and DTB (default: the
    lowest VP in kernel mode; the ELF core carries every VP, raw and LiME none);
    ``kernel`` fills the crash dump's WinDbg fields. ``evidence``, the path the dump was
    opened from, lets raw RamBlocks be copied by the kernel (:mod:`.kernelcopy`).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if vp is not None and fmt != "dmp":
        raise ExportError(f"a VP is chosen for the crash dump only ({fmt} carries no VP choice)")
    ranges = memory_ranges(dump)
    chosen = choose_vp(dump, vp) if fmt == "dmp" else None
    output = Output(stream, sha256=sha256, progress=progress, total=sum(r.size for r in ranges))
    holes: List[Tuple[int, int]] = []
    output.evidence = evidence_fd(dump, evidence) if not sha256 else None
    try:
        if fmt == "raw":
            holes = raw.holes(ranges)
            notes = raw.write_raw(dump, ranges, output)
        elif fmt == "lime":
            notes = lime.write_lime(dump, ranges, output)
        elif fmt == "elf":
            notes = elfcore.write_elf(dump, ranges, output)
        else:
            assert chosen is not None
            notes = crashdump.write_crashdump(dump, ranges, output, vp=chosen, kernel=kernel)
    finally:
        if output.evidence is not None:
            os.close(output.evidence)
    size, digest = output.finish()
    result = ExportResult(fmt, size, digest, ranges, holes, notes, chosen)
    result.kernel_copied = output.kernel_copied
    return result


def export_to_path(
    dump: SavedStateDump,
    fmt: str,
    path: str,
    *,
    inputs: Sequence[str],
    force: bool = False,
    **options: object,
) -> ExportResult:
    """:func:`export` into a new file at ``path``; never over one of ``inputs``.

    A failed export removes the partial file it created (not one it was asked to
    replace with ``force``: that one is already gone).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    stream = open_output(path, inputs=inputs, force=force)
    try:
        with stream:
            evidence = inputs[0] if len(inputs) == 1 else None
            result = export(dump, fmt, stream, evidence=evidence, **options)  # type: ignore[arg-type]
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    result.path = path
    return result


__all__ = [
    "FORMATS",
    "ExportError",
    "ExportResult",
    "KernelAddresses",
    "KernelSpace",
    "MemoryRange",
    "export",
    "export_to_path",
    "memory_ranges",
]
