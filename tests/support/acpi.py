"""An independent ACPI table walker, used as an oracle on decoded guest memory.

It knows nothing of saved states: give it a ``read(gpa, size) -> bytes`` function.
Following the ACPI specification (section 5.2): the RSDP is searched on 16-byte
boundaries of the BIOS area 0xE0000-0xFFFFF; its first 20 bytes sum to zero (and all 36
when its revision is 2 or more); it points at the RSDT (32-bit entries) and, from
revision 2, the XSDT (64-bit entries). Every table starts with a 36-byte header whose
``length`` bytes sum to zero. The FACP (FADT) points at the DSDT (``DSDT`` at offset 40,
``X_DSDT`` at offset 140 when the table is long enough).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

Reader = Callable[[int, int], bytes]

BIOS_AREA = (0xE0000, 0x100000)
RSDP_SIGNATURE = b"RSD PTR "
TABLE_HEADER = struct.Struct("<4sIBB6s8sI4sI")
assert TABLE_HEADER.size == 36
MAX_TABLE_LENGTH = 1 << 20


class AcpiError(AssertionError):
    """The memory does not hold a consistent set of ACPI tables."""


@dataclass(frozen=True)
class Table:
    signature: str
    address: int
    length: int
    checksum_ok: bool


@dataclass
class AcpiTables:
    rsdp_address: int
    rsdp_revision: int
    oem_id: str
    root_signature: str  # "RSDT" or "XSDT"
    root_address: int
    tables: List[Table] = field(default_factory=list)  # root table first, DSDT after FACP

    def signatures(self) -> List[str]:
        return [table.signature for table in self.tables]

    def by_signature(self, signature: str) -> Optional[Table]:
        return next((t for t in self.tables if t.signature == signature), None)


def _sums_to_zero(data: bytes) -> bool:
    return sum(data) & 0xFF == 0


def find_rsdp(read: Reader) -> Tuple[int, bytes]:
    """The address and 36 bytes of the first RSDP with a valid checksum."""
    start, end = BIOS_AREA
    area = read(start, end - start)
    position = area.find(RSDP_SIGNATURE)
    while position >= 0:
        if position % 16 == 0 and _sums_to_zero(area[position : position + 20]):
            return start + position, area[position : position + 36]
        position = area.find(RSDP_SIGNATURE, position + 1)
    raise AcpiError("no RSDP with a valid checksum in 0xE0000-0xFFFFF")


def read_table(read: Reader, address: int) -> Tuple[Table, bytes]:
    header = read(address, TABLE_HEADER.size)
    signature, length = TABLE_HEADER.unpack(header)[:2]
    if not TABLE_HEADER.size <= length <= MAX_TABLE_LENGTH:
        raise AcpiError(f"table {signature!r} at {address:#x} has length {length:#x}")
    data = read(address, length)
    name = signature.decode("ascii", "replace")
    return Table(name, address, length, _sums_to_zero(data)), data


def walk(read: Reader) -> AcpiTables:
    """RSDP, then the root table and every table it lists, then the FACP's DSDT."""
    rsdp_address, rsdp = find_rsdp(read)
    oem_id = rsdp[9:15].decode("ascii", "replace")
    revision = rsdp[15]
    rsdt_address = struct.unpack_from("<I", rsdp, 16)[0]
    if revision >= 2:
        if not _sums_to_zero(rsdp[: struct.unpack_from("<I", rsdp, 20)[0]]):
            raise AcpiError(f"RSDP at {rsdp_address:#x}: extended checksum wrong")
        xsdt_address = struct.unpack_from("<Q", rsdp, 24)[0]
    else:
        xsdt_address = 0
    root_address, entry = (xsdt_address, "<Q") if xsdt_address else (rsdt_address, "<I")
    root, data = read_table(read, root_address)
    found = AcpiTables(rsdp_address, revision, oem_id, root.signature, root_address, [root])
    size = struct.calcsize(entry)
    for offset in range(TABLE_HEADER.size, root.length - size + 1, size):
        (address,) = struct.unpack_from(entry, data, offset)
        table, body = read_table(read, address)
        found.tables.append(table)
        if table.signature == "FACP":
            dsdt = struct.unpack_from("<I", body, 40)[0]
            if table.length >= 148 and struct.unpack_from("<Q", body, 140)[0]:
                dsdt = struct.unpack_from("<Q", body, 140)[0]
            found.tables.append(read_table(read, dsdt)[0])
    return found
