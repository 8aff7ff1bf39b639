"""The stage every export format writes through: a guarded output, streamed memory.

* :func:`open_output` opens the destination exclusively (``'xb'``); ``force`` allows
  replacing an existing file, but never one of the input files (compared by
  ``os.path.samefile``, by real path and by device/inode, so a hard link or a symlink
  to the evidence is refused as well).
* :class:`Output` wraps any binary stream (a file opened here, or Volatility's file
  handler): it counts bytes, feeds an optional SHA-256 as data is written, reports
  progress, leaves holes as sparse regions (a seek) when the stream can seek, and
  copies raw RamBlocks file-to-file in the kernel when :mod:`.kernelcopy` allows it.
* :func:`memory_ranges` and :func:`copy_range` read the guest-physical memory through
  the public :class:`~volatility3_vmrs.savedstate.SavedStateDump` API only, in bounded
  chunks, so memory use stays at the reader's cache plus one chunk.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import IO, Callable, List, Optional, Sequence, Tuple

from volatility3_vmrs.savedstate import SavedStateDump, VmrsError

from .kernelcopy import file_spans

# One read from the reader and one write, aligned on GPA multiples of it: the reader's
# RamBlocks are 1 MiB, and a read inside one block takes its fast path (no joining).
CHUNK_SIZE = 1 << 20
_ZEROS = bytes(1 << 20)

Progress = Callable[[int, int], None]
"""``progress(done, total)``: bytes of guest memory exported so far, out of ``total``."""


class ExportError(VmrsError):
    """An export that cannot be done as asked (destination, VP, format limits)."""


@dataclass(frozen=True)
class Patch:
    """Bytes an export writes at ``gpa`` instead of the saved ones (inside one page)."""

    gpa: int
    data: bytes


@dataclass(frozen=True)
class MemoryRange:
    """A run of guest-physical memory that the saved state holds: [gpa, gpa + size)."""

    gpa: int
    size: int

    @property
    def end(self) -> int:
        return self.gpa + self.size


def memory_ranges(dump: SavedStateDump) -> List[MemoryRange]:
    """The GPA chunks of the saved state as byte ranges, sorted, adjacent ones merged."""
    page_size, chunks = dump.memory_chunks()
    merged: List[MemoryRange] = []
    for chunk in sorted(chunks, key=lambda c: c.start_page):
        if chunk.page_count <= 0:
            continue
        gpa, size = chunk.start_page * page_size, chunk.page_count * page_size
        if merged and merged[-1].end > gpa:
            raise ExportError(
                f"GPA chunks overlap at {gpa:#x}: the saved state's memory map is not usable"
            )
        if merged and merged[-1].end == gpa:
            merged[-1] = MemoryRange(merged[-1].gpa, merged[-1].size + size)
        else:
            merged.append(MemoryRange(gpa, size))
    if not merged:
        raise ExportError("the saved state holds no guest memory to export")
    return merged


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        if os.path.samefile(a, b):
            return True
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_destination(path: str, inputs: Sequence[str]) -> None:
    """Refuse a destination that is (or links to) one of the input files."""
    for source in inputs:
        if source and _same_file(path, source):
            raise ExportError(f"refusing to write {path}: it is the input file {source}")


def open_output(path: str, *, inputs: Sequence[str], force: bool = False) -> IO[bytes]:
    """Open ``path`` for writing: exclusively, or replacing a file when ``force``."""
    check_destination(path, inputs)
    try:
        if force and os.path.lexists(path):
            if os.path.isdir(path):
                raise ExportError(f"cannot write {path}: it is a directory")
            return open(path, "wb")
        return open(path, "xb")
    except FileExistsError:
        raise ExportError(f"{path} exists; give another name or --force to replace it") from None
    except IsADirectoryError:
        raise ExportError(f"cannot write {path}: it is a directory") from None
    except OSError as error:
        raise ExportError(f"cannot write {path}: {error.strerror or error}") from None


class Output:
    """A write-only view of a binary stream with byte count, SHA-256 and progress.

    ``total`` is the number of guest-memory bytes the format will export; only
    :meth:`write_memory` and :meth:`hole` count towards the progress it reports.
    """

    def __init__(
        self,
        stream: IO[bytes],
        *,
        sha256: bool = False,
        progress: Optional[Progress] = None,
        total: int = 0,
    ) -> None:
        self._stream = stream
        self._hash = hashlib.sha256() if sha256 else None
        self._progress = progress
        self.total = total
        self.done = 0
        self.position = 0
        self._pending_hole = 0
        self.evidence: Optional[int] = None  # an evidence fd for kernel copies (kernelcopy)
        self.kernel_copied = 0
        self._kernel_copies = True
        try:
            self._sparse = bool(stream.seekable())
        except (AttributeError, OSError, ValueError):
            self._sparse = False

    def write(self, data: bytes) -> None:
        """Write format structures (headers, notes): not counted as memory."""
        if not data:
            return
        self._flush_hole()
        self._stream.write(data)
        if self._hash is not None:
            self._hash.update(data)
        self.position += len(data)

    def write_memory(self, data: bytes) -> None:
        self.write(data)
        self._advance(len(data))

    def hole(self, size: int, *, memory: bool = True) -> None:
        """``size`` zero bytes: a sparse region when the stream can seek, else written."""
        if size <= 0:
            return
        if self._hash is not None:
            left = size
            while left:
                step = min(left, len(_ZEROS))
                self._hash.update(_ZEROS[:step] if step < len(_ZEROS) else _ZEROS)
                left -= step
        if self._sparse:
            self._pending_hole += size
        else:
            left = size
            while left:
                step = min(left, len(_ZEROS))
                self._stream.write(_ZEROS[:step])
                left -= step
        self.position += size
        if memory:
            self._advance(size)

    def copy_from(self, fd: int, offset: int, size: int) -> bool:
        """Copy ``size`` bytes of file ``fd`` at ``offset`` in the kernel (memory bytes).

        False when it cannot be done here (no SHA-256 may be asked, the stream must be a
        real file, the kernel must accept the copy); nothing was written then.
        """
        if self._hash is not None or not self._sparse or not self._kernel_copies:
            return False
        try:
            target = self._stream.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        self._flush_hole()
        self._stream.flush()
        position = self._stream.tell()
        done = 0
        try:
            while done < size:
                copied = os.copy_file_range(fd, target, size - done, offset + done, position + done)
                if copied <= 0:
                    break
                done += copied
        except OSError:
            pass
        if done < size:
            # Whatever was copied is overwritten by the caller's ordinary write; the
            # kernel refused once (another file system, an old kernel): not again.
            self._kernel_copies = False
            return False
        self._stream.seek(position + size)
        self.position += size
        self.kernel_copied += size
        self._advance(size)
        return True

    def _flush_hole(self) -> None:
        if self._pending_hole:
            self._stream.seek(self._pending_hole, os.SEEK_CUR)
            self._pending_hole = 0

    def _advance(self, size: int) -> None:
        self.done += size
        if self._progress is not None:
            self._progress(self.done, self.total)

    def finish(self) -> Tuple[int, Optional[str]]:
        """Settle a trailing hole (truncate to the full size); return (size, sha256)."""
        if self._pending_hole:
            self._pending_hole = 0
            self._stream.truncate(self.position)
            self._stream.seek(self.position)
        self._stream.flush()
        return self.position, self._hash.hexdigest() if self._hash is not None else None


def copy_range(
    dump: SavedStateDump,
    memory_range: MemoryRange,
    output: Output,
    chunk: int = CHUNK_SIZE,
) -> None:
    """Stream one guest-physical range into ``output``, in reads that end on ``chunk``
    multiples of the GPA; with ``output.evidence`` (see :mod:`.kernelcopy`), raw
    RamBlocks are copied by the kernel when the output allows it."""
    evidence = output.evidence
    gpa, end = memory_range.gpa, memory_range.end
    while gpa < end:
        size = min(chunk - gpa % chunk, end - gpa)
        if evidence is not None:
            for start, length, offset in file_spans(dump, gpa, size):
                if offset is None or not output.copy_from(evidence, offset, length):
                    _read_into(dump, start, length, output)
        else:
            _read_into(dump, gpa, size, output)
        gpa += size


def copy_range_patched(
    dump: SavedStateDump,
    memory_range: MemoryRange,
    output: Output,
    patches: Sequence[Patch],
    page: int = 0x1000,
) -> None:
    """:func:`copy_range`, with each page that a patch touches read, patched and written
    whole; the pages no patch touches are copied as :func:`copy_range` does."""
    touched = sorted(
        {p.gpa - p.gpa % page for p in patches if memory_range.gpa <= p.gpa < memory_range.end}
    )
    gpa = memory_range.gpa
    for start in touched:
        if start > gpa:
            copy_range(dump, MemoryRange(gpa, start - gpa), output)
        data = bytearray(dump.read_physical(start, page))
        for patch in patches:
            if start <= patch.gpa < start + page:
                offset = patch.gpa - start
                data[offset : offset + len(patch.data)] = patch.data
        if len(data) != page:
            raise ExportError(f"patched page at GPA {start:#x} is {len(data)} bytes, not {page}")
        output.write_memory(bytes(data))
        gpa = start + page
    if gpa < memory_range.end:
        copy_range(dump, MemoryRange(gpa, memory_range.end - gpa), output)


def _read_into(dump: SavedStateDump, gpa: int, size: int, output: Output) -> None:
    data = dump.read_physical(gpa, size)
    if len(data) != size:
        raise ExportError(f"short read at GPA {gpa:#x}: {len(data)} of {size} bytes")
    output.write_memory(data)


def scan_ranges(
    dump: SavedStateDump,
    ranges: Sequence[MemoryRange],
    needle: bytes,
    accept: Callable[[int], Optional[bytes]],
    chunk: int = CHUNK_SIZE,
) -> Optional[bytes]:
    """The first ``accept(gpa)`` result that is not None, over every ``needle`` hit.

    One pass over the ranges in ``chunk`` reads; hits spanning two chunks are found
    through an overlap of ``len(needle) - 1`` bytes.
    """
    overlap = len(needle) - 1
    for memory_range in ranges:
        gpa = memory_range.gpa
        tail = b""
        while gpa < memory_range.end:
            size = min(chunk, memory_range.end - gpa)
            data = tail + dump.read_physical(gpa, size)
            base = gpa - len(tail)
            at = data.find(needle)
            while at >= 0:
                found = accept(base + at)
                if found is not None:
                    return found
                at = data.find(needle, at + 1)
            tail = data[-overlap:] if overlap else b""
            gpa += size
    return None
