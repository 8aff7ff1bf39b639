"""Copy raw RamBlocks from the evidence file to the output inside the kernel.

A raw (uncompressed) RamBlock holds the guest's bytes exactly as they lie in the file,
so ``os.copy_file_range`` can move them without passing through Python: one copy in
the page cache instead of a read and a write (about the speed of ``cp``). This is only
done when it cannot change a byte of the result:

* the dump was opened from the very file given (same inode), and the container's
  replay log was not applied in memory (no replay-log diagnostic): the file bytes are
  the bytes the reader would serve;
* the output is a real file and no SHA-256 is asked for (a digest needs the bytes);
* the block is raw per the reader's memory map; everything else is read through
  ``read_physical``.

The reader's model is asked (``dump.memory.map``: ranges, and the file location of each
RamBlock); nothing of its page reader is used.
"""

from __future__ import annotations

import os
from typing import Iterator, Optional, Tuple

from volatility3_vmrs.savedstate import SavedStateDump
from volatility3_vmrs.savedstate.diagnostics import Kind
from volatility3_vmrs.savedstate.memory_map import BLOCK_SIZE


def evidence_fd(dump: SavedStateDump, evidence: Optional[str]) -> Optional[int]:
    """A read-only descriptor of ``evidence`` when kernel copies are exact, else None."""
    if not evidence or not hasattr(os, "copy_file_range") or dump.memory is None:
        return None
    if any(item.kind == Kind.REPLAY_LOG for item in dump.diagnostics):
        return None
    try:
        if not os.path.samefile(dump.name, evidence):
            return None
        fd = os.open(evidence, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError):
        return None
    if os.fstat(fd).st_ino != os.stat(dump.name).st_ino:
        os.close(fd)
        return None
    return fd


def file_spans(
    dump: SavedStateDump, gpa: int, size: int
) -> Iterator[Tuple[int, int, Optional[int]]]:
    """(gpa, length, file offset or None) pieces of a mapped GPA run; None: not raw."""
    memory_map = dump.memory.map  # type: ignore[union-attr]
    for start, length, raw in memory_map.spans(gpa, size):
        while length > 0:
            if raw is None:
                yield start, length, None
                break
            number, within = divmod(raw, BLOCK_SIZE)
            step = min(length, BLOCK_SIZE - within)
            location = memory_map.blocks.get(number)
            raw_block = location is not None and location.is_raw
            yield start, step, (location.offset + within) if raw_block else None
            start, length, raw = start + step, length - step, raw + step
