"""Find a Linux guest's own VMCOREINFO text in its physical memory.

The kernel keeps the text that kdump hands to crash and makedumpfile (``OSRELEASE=``,
``PAGESIZE=``, ``SYMBOL(...)=``, ..., ``KERNELOFFSET=`` with the KASLR shift and
``NUMBER(phys_base)=``) in one page (``vmcoreinfo_data``, and a copy in the
``vmcoreinfo_note``). The search is one bounded pass over the mapped ranges that stops
at the first hit that is real text: the format strings in the kernel image that build
it (``OSRELEASE=%s``) are rejected, as is anything without ``KERNELOFFSET=``.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from volatility3_vmrs.savedstate import SavedStateDump

from .writer import MemoryRange, scan_ranges

START = b"OSRELEASE="
REQUIRED = b"KERNELOFFSET="
MAX_SIZE = 4096  # VMCOREINFO_BYTES: one page
_LINE = re.compile(rb"[A-Za-z0-9_()./-]+=[\x20-\x7e]*")


def _text_at(dump: SavedStateDump, gpa: int) -> Optional[bytes]:
    data = dump.read_physical(gpa, MAX_SIZE, pad=True)
    text = data.split(b"\0", 1)[0]
    if REQUIRED not in text or b"%" in text or not text.endswith(b"\n"):
        return None
    lines = text[:-1].split(b"\n")
    if not all(_LINE.fullmatch(line) for line in lines):
        return None
    return text


def find_vmcoreinfo(dump: SavedStateDump, ranges: Sequence[MemoryRange]) -> Optional[bytes]:
    """The guest's VMCOREINFO text (ending in a newline), or None."""
    return scan_ranges(dump, ranges, START, lambda gpa: _text_at(dump, gpa))
