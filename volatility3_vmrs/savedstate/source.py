"""Read-only access to the evidence file, with an in-memory overlay for the replay log.

The file is opened ``rb`` and only ever read: a pending replay log is applied to an
overlay of patches kept in memory, never to the file. Reads use ``os.pread`` where the
platform has it, so several threads (``vol --parallelism threads``) can share one handle
without a seek race; file objects handed in by the caller are read under a lock.

Long reads of guest RAM may instead go through a read-only memory map of the file
(:meth:`ReadOnlySource.mapped`): slices of the map joined into the result cost one
copy, where reading each RamBlock and joining them costs two.
"""

from __future__ import annotations

import bisect
import io
import mmap
import os
import sys
import threading
from typing import BinaryIO, Iterator, List, Optional, Tuple, Union

from .errors import TruncatedError, VmrsError

PathOrFile = Union[str, "os.PathLike[str]", BinaryIO]


class ReadOnlySource:
    """Random access to the bytes of a container file, optionally patched in memory."""

    def __init__(self, source: PathOrFile) -> None:
        self._lock = threading.Lock()
        self._owns_handle = False
        self.name: str
        if isinstance(source, (str, os.PathLike)):
            self.name = os.fspath(source)
            try:
                self._fh: BinaryIO = open(self.name, "rb", buffering=0)
            except OSError as exc:
                raise VmrsError(f"cannot open {self.name}: {exc.strerror or exc}") from exc
            self._owns_handle = True
        else:
            mode = getattr(source, "mode", "rb")
            if isinstance(mode, str) and any(flag in mode for flag in "wa+"):
                # Refuse writable handles: the reader must never be able to alter evidence.
                raise VmrsError("the saved-state file must be opened read-only (mode 'rb')")
            self._fh = source
            self.name = str(getattr(source, "name", "<file object>"))
        self._fileno: Optional[int] = None
        if hasattr(os, "pread"):
            try:
                self._fileno = self._fh.fileno()
            except (AttributeError, OSError, io.UnsupportedOperation):
                self._fileno = None
        self.file_size = self._measure_size()
        # Sorted, non-overlapping (start, bytes) patches from the replay log.
        self._patch_starts: List[int] = []
        self._patches: List[Tuple[int, bytes]] = []
        self._map: Optional[mmap.mmap] = None
        self._view: Optional[memoryview] = None
        self._map_refused = not (self._owns_handle and self._fileno and sys.maxsize > 2**32)

    def _measure_size(self) -> int:
        if self._fileno is not None:
            return os.fstat(self._fileno).st_size
        with self._lock:
            position = self._fh.tell()
            size = self._fh.seek(0, io.SEEK_END)
            self._fh.seek(position)
            return size

    @property
    def size(self) -> int:
        """Size of the file as the overlay presents it (a log entry may extend it)."""
        if self._patches:
            start, data = self._patches[-1]
            return max(self.file_size, start + len(data))
        return self.file_size

    def _read_file(self, offset: int, size: int) -> bytes:
        if size <= 0 or offset >= self.file_size:
            return b""
        size = min(size, self.file_size - offset)
        if self._fileno is not None:
            chunks = []
            while size > 0:
                chunk = os.pread(self._fileno, size, offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
                size -= len(chunk)
            return b"".join(chunks)
        with self._lock:
            self._fh.seek(offset)
            return self._fh.read(size)

    def read(self, offset: int, size: int) -> bytes:
        """Read up to ``size`` bytes at ``offset``; short only at the end of the file."""
        if offset < 0 or size < 0:
            raise ValueError(f"bad read request at {offset:#x} size {size:#x}")
        if not self._patches:
            return self._read_file(offset, size)
        end = min(offset + size, self.size)
        if end <= offset:
            return b""
        data = bytearray(self._read_file(offset, end - offset))
        if len(data) < end - offset:
            # An overlay patch may extend beyond the end of the real file.
            data.extend(b"\0" * (end - offset - len(data)))
        first = max(0, bisect.bisect_right(self._patch_starts, offset) - 1)
        for start, patch in self._patches[first:]:
            if start >= end:
                break
            lo = max(start, offset)
            hi = min(start + len(patch), end)
            if lo < hi:
                data[lo - offset : hi - offset] = patch[lo - start : hi - start]
        return bytes(data)

    def stored_chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The file's bytes as stored (no replay-log overlay), ``chunk_size`` at a time.

        For fingerprints: memory use is one chunk, whatever the file's size.
        """
        if chunk_size <= 0:
            raise ValueError("chunk size must be positive")
        for offset in range(0, self.file_size, chunk_size):
            chunk = self._read_file(offset, chunk_size)
            if not chunk:
                return
            yield chunk

    def read_exact(
        self, offset: int, size: int, structure: str, key_path: Optional[str] = None
    ) -> bytes:
        """Read exactly ``size`` bytes or raise :class:`TruncatedError` naming the structure."""
        if offset < 0 or size < 0 or offset + size > self.size:
            raise TruncatedError(
                f"{size:#x} bytes needed but the file ends at {self.size:#x}",
                structure=structure,
                offset=offset,
                key_path=key_path,
            )
        data = self.read(offset, size)
        if len(data) != size:
            raise TruncatedError(
                f"{size:#x} bytes needed, only {len(data):#x} could be read",
                structure=structure,
                offset=offset,
                key_path=key_path,
            )
        return data

    def read_zero_padded(self, offset: int, size: int) -> bytes:
        """Read ``size`` bytes, treating whatever lies past the end of the file as zeros."""
        data = self.read(offset, size)
        return data + b"\0" * (size - len(data))

    def apply_patch(self, offset: int, data: bytes) -> None:
        """Overlay ``data`` at ``offset`` in memory (later patches win where they overlap).

        Patches stay sorted and disjoint; only those the new one overlaps are cut, found
        by bisection, so n replay-log entries cost O(n log n), not O(n**2).
        """
        if not data:
            return
        end = offset + len(data)
        starts = self._patch_starts
        first = bisect.bisect_right(starts, offset) - 1
        if first < 0 or starts[first] + len(self._patches[first][1]) <= offset:
            first += 1
        last = bisect.bisect_left(starts, end)  # patches from here on start after the new one
        replacement: List[Tuple[int, bytes]] = []
        if first < last:
            start, patch = self._patches[first]
            if start < offset:
                replacement.append((start, patch[: offset - start]))
        replacement.append((offset, bytes(data)))
        if first < last:
            start, patch = self._patches[last - 1]
            if start + len(patch) > end:
                replacement.append((end, patch[end - start :]))
        self._patches[first:last] = replacement
        self._patch_starts[first:last] = [start for start, _ in replacement]

    def mapped(self) -> Optional[memoryview]:
        """The file as stored, as a read-only memory view, or None when it cannot be used.

        Only for a file this source opened by path, on a 64-bit Python, with no replay-log
        overlay, and only while the file still has the size it had at open: reading a
        mapped page that a truncation removed would kill the process, so a file that
        changed under the reader is read with plain reads, which say what is missing.
        """
        if self._map_refused or self._patches:
            return None
        fileno = self._fileno
        assert fileno is not None  # else the map is refused
        if self._view is None:
            with self._lock:
                if self._view is None and not self._map_refused:
                    try:
                        self._map = mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
                        self._view = memoryview(self._map)
                    except (OSError, ValueError, OverflowError):
                        self._map_refused = True  # e.g. an empty file, a pipe, no address space
            if self._view is None:
                return None
        if os.fstat(fileno).st_size != len(self._view):
            return None
        return self._view

    def close(self) -> None:
        if self._view is not None:
            try:
                self._view.release()
                self._map.close()  # type: ignore[union-attr]
            except BufferError:
                pass  # a caller still holds a slice: the map goes when it does
            self._view = None
        if self._owns_handle:
            self._fh.close()
