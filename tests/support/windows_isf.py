"""Structures of a Volatility ISF, for test writers: offsets, sizes and symbol RVAs.

The synthetic Windows guest of the tests takes every layout from a real Volatility
Intermediate Symbol Format file (the kernel's, and the ``pe``/``kdbg`` tables that ship
with volatility3), so a structure is declared in exactly one place: the ISF. A
:class:`Struct` is a zero-filled buffer of one user type whose fields are set by dotted
path (``"Pcb.DirectoryTableBase"``), encoded by their ISF type: base types by their
size and sign, pointers as 8 bytes, enumerations by their base, bit fields in place,
arrays of bytes and characters from ``bytes``.
"""

from __future__ import annotations

import json
import lzma
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import volatility3.framework.symbols.windows as vol_windows_symbols

REPO_ROOT = Path(__file__).resolve().parents[2]
KERNEL_ISF_PATH = (
    REPO_ROOT / "tests/data/symbols/windows/ntkrnlmp.pdb/BBED7C2955FBE4522AAA23F4B8677AD9-1.json.xz"
)
VOLATILITY_WINDOWS_SYMBOLS = Path(vol_windows_symbols.__file__).parent

TypeRef = Dict[str, Any]


class Isf:
    """One ISF: its user types, base types, enumerations and symbols."""

    def __init__(self, document: Dict[str, Any], fallback: Isf | None = None) -> None:
        self.document = document
        self.fallback = fallback

    @classmethod
    def load(cls, path: Path, fallback: Isf | None = None) -> Isf:
        opener = lzma.open if path.suffix == ".xz" else open
        with opener(path, "rt") as handle:  # type: ignore[operator]
            return cls(json.load(handle), fallback)

    @property
    def pdb(self) -> Dict[str, Any]:
        """The ``metadata.windows.pdb`` record: GUID, age, database name, machine."""
        return self.document["metadata"]["windows"]["pdb"]

    def symbol(self, name: str) -> int:
        """The RVA of a kernel symbol."""
        return int(self.document["symbols"][name]["address"])

    def user_type(self, name: str) -> Dict[str, Any]:
        types = self.document["user_types"]
        if name in types:
            return types[name]
        if self.fallback is not None:
            return self.fallback.user_type(name)
        raise KeyError(f"no user type {name!r} in the ISF")

    def size(self, name: str) -> int:
        return int(self.user_type(name)["size"])

    def base_size(self, name: str) -> Tuple[int, bool]:
        base = self.document.get("base_types", {}).get(name)
        if base is None and self.fallback is not None:
            return self.fallback.base_size(name)
        if base is None:
            raise KeyError(f"no base type {name!r} in the ISF")
        return int(base["size"]), bool(base["signed"])

    def enum_base(self, name: str) -> str:
        enums = self.document.get("enums", {})
        if name in enums:
            return str(enums[name]["base"])
        assert self.fallback is not None, f"no enumeration {name!r}"
        return self.fallback.enum_base(name)

    def enum_value(self, enum: str, constant: str) -> int:
        return int(self.document["enums"][enum]["constants"][constant])

    def field(self, type_name: str, path: str) -> Tuple[int, TypeRef]:
        """(offset from the start of ``type_name``, ISF type) of a dotted field path."""
        offset = 0
        current: TypeRef = {"kind": "struct", "name": type_name}
        for part in path.split("."):
            if current["kind"] == "array":
                index = int(part)
                if not 0 <= index < int(current["count"]):
                    raise KeyError(f"{type_name}.{path}: index {index} out of range")
                offset += index * self.type_size(current["subtype"])
                current = current["subtype"]
                continue
            fields = self.user_type(current["name"])["fields"]
            if part not in fields:
                raise KeyError(f"{current['name']} has no field {part!r}")
            offset += int(fields[part]["offset"])
            current = fields[part]["type"]
        return offset, current

    def offset(self, type_name: str, path: str) -> int:
        return self.field(type_name, path)[0]

    def type_size(self, ref: TypeRef) -> int:
        kind = ref["kind"]
        if kind == "base":
            return self.base_size(ref["name"])[0]
        if kind == "pointer":
            return self.base_size("pointer")[0]
        if kind == "enum":
            return self.base_size(self.enum_base(ref["name"]))[0]
        if kind in ("struct", "union"):
            return self.size(ref["name"])
        if kind == "array":
            return int(ref["count"]) * self.type_size(ref["subtype"])
        if kind == "bitfield":
            return self.type_size(ref["type"])
        raise ValueError(f"cannot size ISF type kind {kind!r}")

    def struct(self, name: str) -> Struct:
        return Struct(self, name)


class Struct:
    """A zero-filled instance of one ISF user type, written field by field."""

    def __init__(self, isf: Isf, name: str) -> None:
        self.isf = isf
        self.name = name
        self.data = bytearray(isf.size(name))

    def set(self, path: str, value: Union[int, bytes]) -> Struct:
        offset, ref = self.isf.field(self.name, path)
        self.data[offset : offset + self.isf.type_size(ref)] = _encode(
            self.isf, ref, value, self.data, offset
        )
        return self

    def update(self, **values: Union[int, bytes]) -> Struct:
        """Several top-level fields at once (``__`` stands for ``.`` in nested paths)."""
        for key, value in values.items():
            self.set(key.replace("__", "."), value)
        return self

    def __bytes__(self) -> bytes:
        return bytes(self.data)


def _encode(
    isf: Isf, ref: TypeRef, value: Union[int, bytes], data: bytearray, offset: int
) -> bytes:
    kind = ref["kind"]
    size = isf.type_size(ref)
    if kind == "bitfield":
        assert isinstance(value, int)
        position, length = int(ref["bit_position"]), int(ref["bit_length"])
        assert 0 <= value < 1 << length, f"{value} does not fit {length} bits"
        current = int.from_bytes(data[offset : offset + size], "little")
        mask = ((1 << length) - 1) << position
        current = current & ~mask | value << position
        return current.to_bytes(size, "little")
    if isinstance(value, (bytes, bytearray)):
        assert len(value) <= size, f"{len(value)} bytes do not fit a field of {size}"
        return bytes(value) + bytes(size - len(value))
    if kind == "base":
        signed = isf.base_size(ref["name"])[1]
    elif kind == "enum":
        signed = isf.base_size(isf.enum_base(ref["name"]))[1]
    elif kind == "pointer":
        signed = False
    elif kind in ("struct", "union") and value == 0:
        return bytes(size)
    else:
        raise TypeError(f"an int cannot encode ISF kind {kind!r}")
    return value.to_bytes(size, "little", signed=signed)


class WindowsSymbols:
    """The three ISFs the Windows guest is laid out with."""

    @cached_property
    def kernel(self) -> Isf:
        return Isf.load(KERNEL_ISF_PATH)

    @cached_property
    def pe(self) -> Isf:
        return Isf.load(VOLATILITY_WINDOWS_SYMBOLS / "pe.json", fallback=self.kernel)

    @cached_property
    def kdbg(self) -> Isf:
        return Isf.load(VOLATILITY_WINDOWS_SYMBOLS / "kdbg.json", fallback=self.kernel)


SYMBOLS = WindowsSymbols()
