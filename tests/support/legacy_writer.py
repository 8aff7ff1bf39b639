"""Writer of legacy ``.bin`` saved-state RAM files for the tests (not shipped API).

Lays a file out as Hyper-V does (``vmrs-format.md`` section 13): the header in the first
4 KiB, each block's page stream 4 KiB aligned from 0x1000, then the index (``capacity``
24-byte entries, unused ones zero) and the string table of ``RamBlock/N/`` names. The
structures come from :mod:`volatility3_vmrs.savedstate.legacy` (declared once), the page
streams from :func:`tests.support.savedstate_writer.encode_block`.

Everything a malformed case needs to change is a parameter: explicit entries
(:class:`Entry`) may carry any name, offset and sizes; ``header`` overrides header fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from tests.support.savedstate_writer import encode_block
from volatility3_vmrs.savedstate import legacy as L
from volatility3_vmrs.savedstate import memory as M

ALIGN = L.DATA_ALIGNMENT


@dataclass
class Entry:
    """One index entry as written. ``data_offset`` None: placed by the writer."""

    name: bytes
    data: bytes
    data_offset: Optional[int] = None
    data_size: Optional[int] = None  # default len(data)
    allocated_size: Optional[int] = None  # default len(data) rounded up to 4 KiB
    unknown_a: int = 1
    unknown_b: int = 1
    name_length: Optional[int] = None  # default len(name) (the name includes its NUL)


def block_name(number: int) -> bytes:
    return b"RamBlock/%d/\0" % number


def memory_entries(
    memory: bytes, *, order: Optional[Sequence[int]] = None, raw_blocks: Sequence[int] = ()
) -> List[Entry]:
    """One entry per 1 MiB of ``memory`` (zero-padded), as page streams.

    ``order`` lists block numbers in index order (Hyper-V's index is not sorted);
    blocks in ``raw_blocks`` are stored as 1 MiB of raw memory.
    """
    if len(memory) % M.BLOCK_SIZE:
        memory += bytes(M.BLOCK_SIZE - len(memory) % M.BLOCK_SIZE)
    count = len(memory) // M.BLOCK_SIZE
    numbers = list(order) if order is not None else list(range(count))
    entries = []
    for number in numbers:
        block = memory[number * M.BLOCK_SIZE : (number + 1) * M.BLOCK_SIZE]
        data = block if number in raw_blocks else encode_block(block)[0]
        entries.append(Entry(block_name(number), data))
    return entries


def build_bin(
    entries: Sequence[Entry], *, capacity: int = 0x400, header: Optional[Dict[str, int]] = None
) -> bytes:
    """The bytes of a ``.bin`` holding ``entries`` (in index order)."""
    image = bytearray(ALIGN)
    placed: List[Tuple[Entry, int]] = []
    for entry in entries:
        if entry.data_offset is None:
            offset = len(image)
            image += entry.data
            image += bytes(-len(image) % ALIGN)
        else:
            offset = entry.data_offset
            end = offset + len(entry.data)
            if end > len(image):
                image += bytes(end - len(image))
            image[offset:end] = entry.data
        placed.append((entry, offset))
    image += bytes(-len(image) % ALIGN)
    strings = bytearray()
    index = bytearray()
    for entry, offset in placed:
        name_offset = len(strings)
        strings += entry.name
        index += L.LEGACY_INDEX_ENTRY.pack(
            name_offset=name_offset,
            name_length=len(entry.name) if entry.name_length is None else entry.name_length,
            unknown_a=entry.unknown_a,
            unknown_b=entry.unknown_b,
            allocated_size=(
                entry.allocated_size
                if entry.allocated_size is not None
                else -(-len(entry.data) // ALIGN) * ALIGN
            ),
            data_size=len(entry.data) if entry.data_size is None else entry.data_size,
            data_offset=offset,
        )
    assert len(placed) <= capacity
    index += bytes((capacity - len(placed)) * L.LEGACY_INDEX_ENTRY.size)
    index_offset = len(image)
    image += index
    image += bytes(-len(image) % ALIGN)
    string_capacity = max(0x4000, -(-len(strings) // ALIGN) * ALIGN)
    fields = dict(
        magic=L.LEGACY_MAGIC,
        version=L.KNOWN_VERSION,
        unknown=1,
        index_capacity=capacity,
        index_offset=index_offset,
        string_table_offset=len(image),
        string_table_capacity=string_capacity,
        string_table_used=len(strings),
    )
    image += strings + bytes(string_capacity - len(strings))
    fields.update(header or {})
    image[: L.LEGACY_HEADER.size] = L.LEGACY_HEADER.pack(**fields)
    return bytes(image)


def build_memory_bin(memory: bytes, **options: object) -> bytes:
    """A well-formed ``.bin`` of ``memory``: block N holds bytes N MiB to N+1 MiB."""
    return build_bin(memory_entries(memory), **options)  # type: ignore[arg-type]
