"""On-disk structures of the HyperVStorage container, each declared once.

A :class:`Layout` is a named, packed little-endian structure. The reader unpacks with it
and the test writer packs with it, so a field can never be declared twice. Structures
that belong to the saved-state payload (memory blocks, partition-state chunks) are
declared the same way in the module that owns them.

Sizes, offsets and signatures follow ``vmrs-format.md`` (sections 2-7).
"""

from __future__ import annotations

import re
import struct
import zlib
from collections import namedtuple
from typing import Any, Dict, Tuple

from .errors import TruncatedError


class Layout:
    """A packed little-endian structure with named fields.

    ``fields`` is a sequence of ``(name, struct code)``; a name starting with ``_`` marks
    padding that :meth:`pack` fills with zeros when not given.
    """

    def __init__(self, name: str, fields: Tuple[Tuple[str, str], ...]) -> None:
        self.name = name
        self.fields = fields
        self._struct = struct.Struct("<" + "".join(code for _, code in fields))
        # Plain-tuple unpacking without the bounds check, for loops over many entries.
        self.unpack_tuple = self._struct.unpack_from
        self.size = self._struct.size
        self.field_names = tuple(field for field, _ in fields)
        self._tuple = namedtuple(re.sub(r"\W", "_", name), self.field_names, rename=True)  # type: ignore[misc]
        self._offsets: Dict[str, int] = {}
        pos = 0
        for field, code in fields:
            self._offsets[field] = pos
            pos += struct.calcsize("<" + code)

    def offset_of(self, field: str) -> int:
        return self._offsets[field]

    def unpack(self, data: bytes, offset: int = 0, *, where: int = 0) -> Any:
        """Unpack at ``offset`` of ``data``; ``where`` is the file offset for messages."""
        if offset < 0 or offset + self.size > len(data):
            raise TruncatedError(
                f"needs {self.size} bytes, only {max(0, len(data) - offset)} available",
                structure=self.name,
                offset=where,
            )
        return self._tuple._make(self._struct.unpack_from(data, offset))

    def as_dict(self, unpacked: Any) -> Dict[str, Any]:
        """Field values by their declared names (padding names included)."""
        return dict(zip(self.field_names, unpacked))

    def pack(self, **values: Any) -> bytes:
        args = []
        for field, code in self.fields:
            if field in values:
                args.append(values.pop(field))
            elif field.startswith("_") or field == "checksum":
                args.append(b"\0" * struct.calcsize("<" + code) if code.endswith("s") else 0)
            else:
                raise TypeError(f"{self.name}: missing field {field}")
        if values:
            raise TypeError(f"{self.name}: unknown fields {sorted(values)}")
        return self._struct.pack(*args)


def crc32(data: bytes) -> int:
    """The container's checksum: plain CRC-32 (ISO-HDLC, zlib), not CRC-32C."""
    return zlib.crc32(data) & 0xFFFFFFFF


def crc32_with_zeroed_field(data: bytes, field_offset: int, field_size: int = 4) -> int:
    """CRC-32 of ``data`` with the checksum field treated as zero."""
    return crc32(data[:field_offset] + b"\0" * field_size + data[field_offset + field_size :])


def stamp_checksum(data: bytes, field_offset: int) -> bytes:
    """Return ``data`` with its CRC-32 field (computed over the zeroed field) filled in."""
    value = crc32_with_zeroed_field(data, field_offset)
    return data[:field_offset] + struct.pack("<I", value) + data[field_offset + 4 :]


# --- file header (§2) -----------------------------------------------------------------
FILE_HEADER_SIGNATURE = 0x01282014
FILE_HEADER_OFFSETS = (0x0000, 0x1000)
SUPPORTED_FORMAT_VERSION = 0x0400
FILE_HEADER = Layout(
    "file_header",
    (
        ("signature", "I"),
        ("checksum", "I"),
        ("sequence", "H"),
        ("format_version", "I"),
        ("data_version", "I"),
        ("flags", "I"),
        ("data_alignment", "I"),
        ("replay_log_offset", "Q"),
        ("replay_log_size", "Q"),
        ("replay_log_header_size", "I"),
    ),
)
assert FILE_HEADER.size == 46

# --- object tables (§3) ---------------------------------------------------------------
ROOT_OBJECT_TABLE_OFFSET = 0x2000
OBJECT_TABLE_SIGNATURE = 0x01110001
OBJECT_TABLE_HEADER = Layout("object_table_header", (("signature", "I"), ("entry_count", "I")))
OBJECT_ENTRY = Layout(
    "object_table_entry",
    (
        ("type", "B"),
        ("checksum", "I"),
        ("file_offset", "Q"),
        ("size", "I"),
        ("flags", "B"),
    ),
)
assert OBJECT_ENTRY.size == 18

OBJECT_TYPE_EMPTY = 0
OBJECT_TYPE_OBJECT_TABLE = 1
OBJECT_TYPE_KEY_TABLE = 2
OBJECT_TYPE_FILE = 3
OBJECT_TYPE_FREE = 4
OBJECT_TYPE_NAMES = {
    0: "empty",
    1: "object table",
    2: "key table",
    3: "file object",
    4: "free",
    5: "unknown header",
    6: "replay log",
    7: "change-tracking buffer",
}

# --- key tables (§4) ------------------------------------------------------------------
KEY_TABLE_SIGNATURE = 0x0002
KEY_TABLE_HEADER = Layout(
    "key_table_header",
    (("signature", "H"), ("table_index", "H"), ("sequence", "H"), ("checksum", "I")),
)
assert KEY_TABLE_HEADER.size == 10

KEY_ENTRY_HEADER = Layout(
    "key_entry",
    (
        ("type", "B"),
        ("flags", "B"),
        ("size", "I"),
        ("parent_table", "H"),
        ("parent_offset", "I"),
        ("checksum", "I"),
        ("insertion_sequence", "I"),
        ("name_size", "B"),
    ),
)
assert KEY_ENTRY_HEADER.size == 21

KEY_FLAG_FILE_OBJECT = 0x01
KEY_FLAG_SUBCOMPONENT = 0x02
KEY_FLAG_SEQUENCE_TRACKING = 0x04

# Pointer stored instead of the value when KEY_FLAG_FILE_OBJECT is set (§5).
FILE_OBJECT_POINTER = Layout("file_object_pointer", (("value_length", "I"), ("file_offset", "Q")))
NODE_VALUE = Layout("node_value", (("change_sequence", "Q"), ("next_insertion_sequence", "I")))

# --- replay log (§6) ------------------------------------------------------------------
REPLAY_LOG_SIGNATURE = 0x01110003
REPLAY_LOG_HEADER = Layout(
    "replay_log_header",
    (
        ("signature", "I"),
        ("checksum", "I"),
        ("current_entries", "I"),
        ("_reserved", "B"),
        ("max_entries", "I"),
        ("change_tracking_enabled", "B"),
        ("change_tracking_buffer_offset", "Q"),
        ("change_tracking_buffer_size", "I"),
        ("change_tracking_buffer_used", "I"),
    ),
)
assert REPLAY_LOG_HEADER.size == 34

REPLAY_LOG_ENTRY = Layout(
    "replay_log_entry",
    (
        ("destination_offset", "Q"),
        ("length", "I"),
        ("data_offset", "Q"),
        ("checksum", "I"),
        ("data_checksum", "I"),
    ),
)
assert REPLAY_LOG_ENTRY.size == 28
