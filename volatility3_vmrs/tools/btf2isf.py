"""Convert a Linux kernel's BTF type information into a Volatility 3 ISF symbol table.

Debian (and most distribution) kernels ship a ``vmlinuz`` without DWARF, but with a
``.BTF`` section (``CONFIG_DEBUG_INFO_BTF``). BTF describes every type of the kernel;
together with a symbol list (``/proc/kallsyms`` of a running kernel, or ``System.map``)
and the kernel banner, that is enough for Volatility's Linux plugins.

Usage::

    vmrs-btf2isf --vmlinux vmlinux --kallsyms kallsyms.txt -o out.json.xz
    vmrs-btf2isf --vmlinux /boot/vmlinuz-6.1.0-56-cloud-amd64 --system-map System.map -o out.json
    vmrs-btf2isf --btf btf.bin --banner banner.txt --kallsyms kallsyms.txt -o out.json.xz

``--vmlinux`` accepts an ELF ``vmlinux`` or a compressed x86 ``bzImage``/``vmlinuz``
(gzip, xz, lz4, zstd payloads). Inputs ending in ``.xz``/``.gz`` are decompressed.
Output ending in ``.xz``/``.gz`` is compressed. The output is deterministic.

BTF of 6.1-era kernels types only per-CPU variables, so the types of the other global
variables the Volatility Linux plugins use come from a built-in table (:data:`GLOBAL_TYPES`).
"""

from __future__ import annotations

import argparse
import base64
import bz2
import gzip
import io
import json
import lzma
import pathlib
import re
import struct
import sys
from typing import Any, Dict, Iterable, List, Optional, Tuple

# linux.malware.hidden_modules (volatility3 2.28) refuses any kernel table that is not
# dwarf2json >= 0.8.0 by name and version; the ISF carries what dwarf2json 0.9's output
# has, so it says it is dwarf2json-compatible and names the real converter beside.
PRODUCER = {
    "name": "dwarf2json",
    "version": "0.9.0",
    "converter": "vmrs-btf2isf 0.2.0 (Linux BTF + kallsyms, dwarf2json-compatible ISF)",
}
ISF_FORMAT = "6.2.0"
DEFAULT_TEXT_BASE = 0xFFFFFFFF81000000  # x86_64 link address of _text (PHYSICAL_START 16M)

# --------------------------------------------------------------------------- input helpers


def read_input(path: str) -> bytes:
    """Read a file, transparently decompressing ``.xz``/``.lzma``/``.gz``/``.bz2``."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh" and path.endswith(".bz2"):
        return bz2.decompress(data)
    return data


def write_output(path: str, data: bytes) -> None:
    if path == "-":
        sys.stdout.buffer.write(data)
        return
    if path.endswith(".xz"):
        data = lzma.compress(data, preset=9)
    elif path.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    with open(path, "wb") as f:
        f.write(data)


# --------------------------------------------------------------------------- bzImage


def _lz4_legacy_decompress(payload: bytes) -> bytes:
    try:
        import lz4.block
    except ImportError as exc:  # pragma: no cover - depends on environment
        raise RuntimeError("LZ4 kernel payload: install the 'lz4' package") from exc
    pos, out = 4, []
    while pos + 4 <= len(payload):
        (size,) = struct.unpack_from("<I", payload, pos)
        if size == 0x184C2102:  # a new legacy frame (concatenated)
            pos += 4
            continue
        if size == 0 or pos + 4 + size > len(payload):
            break
        out.append(
            lz4.block.decompress(payload[pos + 4 : pos + 4 + size], uncompressed_size=8 << 20)
        )
        pos += 4 + size
    return b"".join(out)


def extract_vmlinux(image: bytes) -> bytes:
    """Return the ELF vmlinux from an ELF (unchanged) or an x86 bzImage."""
    if image[:4] == b"\x7fELF":
        return image
    if image[0x202:0x206] != b"HdrS":
        raise ValueError("neither an ELF file nor an x86 bzImage")
    setup_sects = image[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = image[start : start + payload_length]
    if payload[:4] == b"\x02\x21\x4c\x18":
        data = _lz4_legacy_decompress(payload)
    elif payload[:6] == b"\xfd7zXZ\x00":
        data = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif payload[:2] == b"\x1f\x8b":
        data = gzip.GzipFile(fileobj=io.BytesIO(payload)).read()
    elif payload[:3] == b"\x5d\x00\x00":
        data = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
    elif payload[:4] == b"\x28\xb5\x2f\xfd":
        try:
            import zstandard
        except ImportError as exc:  # pragma: no cover
            raise RuntimeError("zstd kernel payload: install 'zstandard'") from exc
        data = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
    else:
        raise ValueError(f"unsupported bzImage payload compression {payload[:4].hex()}")
    if data[:4] != b"\x7fELF":
        raise ValueError("bzImage payload is not an ELF vmlinux")
    return data


# --------------------------------------------------------------------------- ELF


class ElfFile:
    """Minimal ELF64/ELF32 little-endian section reader."""

    def __init__(self, data: bytes) -> None:
        if data[:4] != b"\x7fELF":
            raise ValueError("not an ELF file")
        self.data = data
        self.is64 = data[4] == 2
        if data[5] != 1:
            raise ValueError("only little-endian ELF is supported")
        if self.is64:
            (shoff,) = struct.unpack_from("<Q", data, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        else:
            (shoff,) = struct.unpack_from("<I", data, 0x20)
            shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)
        self.sections: List[Dict[str, int]] = []
        for i in range(shnum):
            off = shoff + i * shentsize
            if self.is64:
                name, typ, flags, addr, offset, size = struct.unpack_from("<IIQQQQ", data, off)
            else:
                name, typ, flags, addr, offset, size = struct.unpack_from("<IIIIII", data, off)
            self.sections.append(
                {
                    "name_off": name,
                    "type": typ,
                    "flags": flags,
                    "addr": addr,
                    "offset": offset,
                    "size": size,
                }
            )
        strtab = self.sections[shstrndx] if shnum else None
        self.names: List[str] = []
        for sec in self.sections:
            if strtab is None:
                self.names.append("")
                continue
            start = strtab["offset"] + sec["name_off"]
            end = data.index(b"\0", start)
            self.names.append(data[start:end].decode("latin-1"))

    def section(self, name: str) -> Dict[str, int]:
        for sec_name, sec in zip(self.names, self.sections):
            if sec_name == name:
                return sec
        raise KeyError(f"ELF has no section {name}")

    def section_data(self, name: str) -> bytes:
        sec = self.section(name)
        return self.data[sec["offset"] : sec["offset"] + sec["size"]]

    def read_vaddr(self, addr: int, size: int) -> bytes:
        """Read bytes at a link-time virtual address from PROGBITS sections."""
        for sec in self.sections:
            if (
                sec["type"] == 1
                and sec["addr"] <= addr
                and addr + size <= sec["addr"] + sec["size"]
            ):
                off = sec["offset"] + addr - sec["addr"]
                return self.data[off : off + size]
        raise KeyError(f"address {addr:#x} not in any ELF section")

    def read_cstring(self, addr: int) -> bytes:
        """The NUL-terminated string at a link-time virtual address (without the NUL)."""
        self.read_vaddr(addr, 1)
        for sec in self.sections:
            if sec["type"] == 1 and sec["addr"] <= addr < sec["addr"] + sec["size"]:
                off = sec["offset"] + addr - sec["addr"]
                end = self.data.index(b"\0", off, sec["offset"] + sec["size"])
                return self.data[off:end]
        raise KeyError(f"address {addr:#x} not in any ELF section")  # pragma: no cover


def banner_from_vmlinux(elf: ElfFile, address: Optional[int] = None) -> bytes:
    """Return linux_banner (without NUL, with its trailing newline) from a vmlinux.

    With ``address`` (the link-time address of ``linux_banner``) the string is read from
    there; otherwise the last ``Linux version ... #<n>`` string of ``.rodata`` is used.
    """
    if address is not None:
        chunk = elf.read_cstring(address)
        if not chunk.startswith(b"Linux version "):
            raise ValueError(f"no banner at {address:#x}")
        return chunk
    rodata = elf.section_data(".rodata")
    found = re.findall(rb"Linux version [^\0]*#\d[^\0]*\n", rodata)
    if not found:
        raise ValueError("no Linux banner found in .rodata")
    return found[-1]


# --------------------------------------------------------------------------- symbols


def parse_symbol_list(text: str) -> Dict[str, int]:
    """Parse kallsyms / System.map text into name -> address.

    Module symbols (``[mod]`` suffix) are skipped. For duplicate names, a global
    (upper-case type) symbol wins, else the first one listed.
    """
    symbols: Dict[str, int] = {}
    is_global: Dict[str, bool] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:  # 4 fields: a module symbol ("[mod]")
            continue
        addr_s, typ, name = parts
        try:
            addr = int(addr_s, 16)
        except ValueError:
            continue
        if addr == 0xFFFFFFFFFFFFFFFF:
            continue
        glob = typ.isupper()
        if name not in symbols or (glob and not is_global[name]):
            symbols[name] = addr
            is_global[name] = glob
    return symbols


REQUIRED_SYMBOLS = ("_text", "init_task")


class SymbolListError(ValueError):
    """A symbol list that cannot make a working ISF (a stub map, hidden addresses)."""


def check_symbol_list(symbols: Dict[str, int], source: str) -> None:
    """Refuse a list without the symbols every Linux plugin needs (``_text``, ``init_task``)."""
    missing = [name for name in REQUIRED_SYMBOLS if not symbols.get(name)]
    if missing:
        raise SymbolListError(
            f"{source}: {len(symbols)} symbols, no {'/'.join(missing)} (with an address): "
            "not a usable symbol list. A usable one lists every kernel symbol of the same "
            "build: the System.map of its build tree or debug package (Debian's "
            "/boot/System.map-<release> is a one-line stub), `nm -n vmlinux` of the debug "
            "vmlinux, or /proc/kallsyms read as root (--kallsyms); or make the ISF from a "
            "memory image with --from-image"
        )


def count_core_symbols(kallsyms_text: str) -> int:
    """Number of core-kernel entries of a /proc/kallsyms dump (= kallsyms_num_syms)."""
    return sum(1 for line in kallsyms_text.splitlines() if len(line.split()) == 3)


def kaslr_shift(symbols: Dict[str, int], text_base: int = DEFAULT_TEXT_BASE) -> int:
    """The virtual KASLR slide of a kallsyms dump: ``_text`` - its link-time address."""
    if "_text" not in symbols:
        return 0
    return symbols["_text"] - text_base


def unrelocate(symbols: Dict[str, int], shift: int) -> Dict[str, int]:
    """Undo a KASLR slide: kernel-image symbols move, absolute per-CPU offsets do not."""
    if not shift:
        return dict(symbols)
    return {
        name: (addr - shift if addr >= 0xFFFFFFFF80000000 else addr)
        for name, addr in symbols.items()
    }


def _align8(x: int) -> int:
    return (x + 7) & ~7


def _token_tables(data: bytes, pos: int) -> Optional[Tuple[List[bytes], int]]:
    """Parse kallsyms_token_table at ``pos`` and validate kallsyms_token_index after it.

    Returns (tokens, token_index offset) or None.
    """
    tokens, offsets, cur = [], [], pos
    for _ in range(256):
        end = data.find(b"\0", cur, cur + 256)
        if end < 0:
            return None
        offsets.append(cur - pos)
        tokens.append(data[cur:end])
        cur = end + 1
    index_pos = _align8(cur)
    if index_pos + 512 > len(data):
        return None
    if list(struct.unpack_from("<256H", data, index_pos)) != offsets:
        return None
    return tokens, index_pos


def find_kallsyms_tables(elf: ElfFile, num_syms: int) -> Dict[str, int]:
    """Locate the kernel's compressed kallsyms tables in ``.rodata`` of a vmlinux.

    ``/proc/kallsyms`` does not list ``kallsyms_num_syms``, ``kallsyms_names`` & co.,
    but Volatility's kallsyms API needs them. ``num_syms`` is the number of core kernel
    symbols (the three-field lines of /proc/kallsyms). Handles the 6.1+ layout written by
    scripts/kallsyms.c with base-relative offsets: offsets, relative_base, num_syms,
    names, markers, [seqs_of_names (6.2+)], token_table, token_index, each 8-aligned.
    Returns {} if not found.
    """
    try:
        sec = elf.section(".rodata")
    except KeyError:
        return {}
    data = elf.data[sec["offset"] : sec["offset"] + sec["size"]]
    base = sec["addr"]
    needle = struct.pack("<I", num_syms)
    pos = data.find(needle)
    while pos >= 0:
        found = _try_kallsyms_at(data, pos, num_syms)
        if found:
            return {name: base + off for name, off in found.items()}
        pos = data.find(needle, pos + 1)
    return {}


def _try_kallsyms_at(data: bytes, pos: int, n: int) -> Optional[Dict[str, int]]:
    if pos % 8 or pos < 8 + 4 * n:
        return None
    names = _align8(pos + 4)
    cur = names
    starts = []
    for i in range(n):
        if cur >= len(data):
            return None
        if i % 256 == 0:
            starts.append(cur - names)
        length = data[cur]
        if length == 0:
            return None
        if length & 0x80:  # big symbols (6.1+): two-byte ULEB128 length
            length = (length & 0x7F) | (data[cur + 1] << 7)
            cur += 1
        cur += 1 + length
    markers = _align8(cur)
    n_markers = (n + 255) >> 8
    if markers + 4 * n_markers > len(data):
        return None
    if list(struct.unpack_from(f"<{n_markers}I", data, markers)) != starts:
        return None
    after = _align8(markers + 4 * n_markers)
    out = {
        "kallsyms_offsets": pos - 8 - _align8(4 * n),
        "kallsyms_relative_base": pos - 8,
        "kallsyms_num_syms": pos,
        "kallsyms_names": names,
        "kallsyms_markers": markers,
    }
    tables = _token_tables(data, after)
    if tables is None:  # 6.2+: kallsyms_seqs_of_names (3 bytes per symbol) comes first
        seqs = after
        tables = _token_tables(data, _align8(seqs + 3 * n))
        if tables is None:
            return None
        out["kallsyms_seqs_of_names"] = seqs
        after = _align8(seqs + 3 * n)
    out["kallsyms_token_table"] = after
    out["kallsyms_token_index"] = tables[1]
    return out


# --------------------------------------------------------------------------- BTF

BTF_MAGIC = 0xEB9F
KIND_NAMES = {
    0: "UNKN",
    1: "INT",
    2: "PTR",
    3: "ARRAY",
    4: "STRUCT",
    5: "UNION",
    6: "ENUM",
    7: "FWD",
    8: "TYPEDEF",
    9: "VOLATILE",
    10: "CONST",
    11: "RESTRICT",
    12: "FUNC",
    13: "FUNC_PROTO",
    14: "VAR",
    15: "DATASEC",
    16: "FLOAT",
    17: "DECL_TAG",
    18: "TYPE_TAG",
    19: "ENUM64",
}
INT_SIGNED, INT_CHAR, INT_BOOL = 1, 2, 4
QUALIFIERS = ("TYPEDEF", "VOLATILE", "CONST", "RESTRICT", "TYPE_TAG")


class BtfType:
    __slots__ = ("extra", "id", "kind", "kind_flag", "name", "size", "type", "vlen")

    def __init__(self, tid: int, kind: str, name: str, vlen: int, kind_flag: bool, size_type: int):
        self.id = tid
        self.kind = kind
        self.name = name
        self.vlen = vlen
        self.kind_flag = kind_flag
        self.size = size_type  # size for INT/STRUCT/UNION/ENUM*/DATASEC/FLOAT
        self.type = size_type  # referenced type for the others
        self.extra: Any = None

    def __repr__(self) -> str:
        return f"BtfType({self.id}, {self.kind}, {self.name!r})"


class Btf:
    """A parsed ``.BTF`` blob: ``types[id]`` (id 0 is void)."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise ValueError("BTF blob too short")
        magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise ValueError(f"bad BTF magic {magic:#x} (big-endian BTF is not supported)")
        if version != 1:
            raise ValueError(f"unsupported BTF version {version}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self.strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        types_blob = data[hdr_len + type_off : hdr_len + type_off + type_len]
        self.types: List[Optional[BtfType]] = [None]
        pos = 0
        while pos < len(types_blob):
            name_off, info, size_type = struct.unpack_from("<III", types_blob, pos)
            pos += 12
            vlen = info & 0xFFFF
            kind_num = (info >> 24) & 0x1F
            kind = KIND_NAMES.get(kind_num)
            if kind is None or kind == "UNKN":
                raise ValueError(f"unknown BTF kind {kind_num} at type {len(self.types)}")
            t = BtfType(
                len(self.types), kind, self.string(name_off), vlen, bool(info >> 31), size_type
            )
            if kind == "INT":
                (enc,) = struct.unpack_from("<I", types_blob, pos)
                pos += 4
                t.extra = {
                    "encoding": (enc >> 24) & 0xF,
                    "offset": (enc >> 16) & 0xFF,
                    "bits": enc & 0xFF,
                }
            elif kind == "ARRAY":
                elem, index, nelems = struct.unpack_from("<III", types_blob, pos)
                pos += 12
                t.extra = {"type": elem, "index_type": index, "nelems": nelems}
            elif kind in ("STRUCT", "UNION"):
                members = []
                for _ in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", types_blob, pos)
                    pos += 12
                    if t.kind_flag:
                        bitsize, bitoff = m_off >> 24, m_off & 0xFFFFFF
                    else:
                        bitsize, bitoff = 0, m_off
                    members.append((self.string(m_name), m_type, bitoff, bitsize))
                t.extra = members
            elif kind == "ENUM":
                values = []
                for _ in range(vlen):
                    v_name, val = struct.unpack_from("<Ii", types_blob, pos)
                    pos += 8
                    if not t.kind_flag and val < 0:
                        val &= 0xFFFFFFFF
                    values.append((self.string(v_name), val))
                t.extra = values
            elif kind == "ENUM64":
                values = []
                for _ in range(vlen):
                    v_name, lo, hi = struct.unpack_from("<III", types_blob, pos)
                    pos += 12
                    val = (hi << 32) | lo
                    if t.kind_flag and val >= 1 << 63:
                        val -= 1 << 64
                    values.append((self.string(v_name), val))
                t.extra = values
            elif kind == "FUNC_PROTO":
                params = []
                for _ in range(vlen):
                    p_name, p_type = struct.unpack_from("<II", types_blob, pos)
                    pos += 8
                    params.append((self.string(p_name), p_type))
                t.extra = params
            elif kind == "VAR":
                (linkage,) = struct.unpack_from("<I", types_blob, pos)
                pos += 4
                t.extra = linkage
            elif kind == "DATASEC":
                entries = []
                for _ in range(vlen):
                    entries.append(struct.unpack_from("<III", types_blob, pos))
                    pos += 12
                t.extra = entries
            elif kind == "DECL_TAG":
                (t.extra,) = struct.unpack_from("<i", types_blob, pos)
                pos += 4
            self.types.append(t)

    def string(self, off: int) -> str:
        end = self.strings.index(b"\0", off)
        return self.strings[off:end].decode("utf-8", "replace")

    def __getitem__(self, tid: int) -> Optional[BtfType]:
        return self.types[tid]

    def strip(self, tid: int) -> int:
        """Follow typedefs and qualifiers down to a real type id."""
        seen = 0
        while tid and self.types[tid].kind in QUALIFIERS:  # type: ignore[union-attr]
            tid = self.types[tid].type  # type: ignore[union-attr]
            seen += 1
            if seen > 1000:
                raise ValueError("typedef loop in BTF")
        return tid

    def type_size(self, tid: int) -> int:
        tid = self.strip(tid)
        if tid == 0:
            return 0
        t = self.types[tid]
        assert t is not None
        if t.kind in ("INT", "STRUCT", "UNION", "ENUM", "ENUM64", "FLOAT", "DATASEC"):
            return t.size
        if t.kind == "PTR":
            return 8
        if t.kind == "ARRAY":
            return t.extra["nelems"] * self.type_size(t.extra["type"])
        return 0


# --------------------------------------------------------------------------- ISF


class IsfBuilder:
    """Turns a :class:`Btf` into the ISF dictionaries."""

    def __init__(self, btf: Btf, pointer_size: int = 8) -> None:
        self.btf = btf
        self.pointer_size = pointer_size
        self.base_types: Dict[str, Dict[str, Any]] = {}
        self.user_types: Dict[str, Dict[str, Any]] = {}
        self.enums: Dict[str, Dict[str, Any]] = {}
        self.agg_name: Dict[int, str] = {}
        self.enum_name: Dict[int, str] = {}
        self.by_name: Dict[Tuple[str, str], int] = {}  # (struct/union/enum/typedef/int, name) -> id
        self._name_types()

    # names ---------------------------------------------------------------
    def _name_types(self) -> None:
        btf = self.btf
        # Named aggregates first (lowest id wins a name), anonymous ones get unnamed_<id>.
        for t in btf.types[1:]:
            assert t is not None
            if t.kind in ("STRUCT", "UNION"):
                name = t.name or f"unnamed_{t.id}"
                key = ("agg", name)
                if t.name and key in self.by_name:
                    prev = btf[self.by_name[key]]
                    if prev is not None and prev.size == t.size and len(prev.extra) == len(t.extra):
                        self.agg_name[t.id] = name  # structurally the same; share the name
                        continue
                    name = f"{t.name}_{t.id}"
                    key = ("agg", name)
                self.agg_name[t.id] = name
                self.by_name.setdefault(key, t.id)
                self.by_name.setdefault((t.kind.lower(), name), t.id)
            elif t.kind in ("ENUM", "ENUM64"):
                name = t.name or f"unnamed_{t.id}"
                if t.name and ("enum", name) in self.by_name:
                    name = f"{t.name}_{t.id}"
                self.enum_name[t.id] = name
                self.by_name.setdefault(("enum", name), t.id)
            elif t.kind in ("TYPEDEF", "INT", "FLOAT") and t.name:
                self.by_name.setdefault(("named", t.name), t.id)
        # forward declarations resolve to the full definition when there is one
        for t in btf.types[1:]:
            assert t is not None
            if t.kind == "FWD":
                kind = "union" if t.kind_flag else "struct"
                target = self.by_name.get((kind, t.name)) or self.by_name.get(("agg", t.name))
                if target is not None:
                    self.agg_name[t.id] = self.agg_name[target]
                else:
                    self.agg_name[t.id] = t.name or f"unnamed_{t.id}"

    # base types ----------------------------------------------------------
    def _base(self, t: BtfType) -> str:
        name = t.name
        if name not in self.base_types:
            if t.kind == "FLOAT":
                entry = {"kind": "float", "size": t.size, "signed": True, "endian": "little"}
            else:
                enc = t.extra["encoding"]
                kind = "bool" if enc & INT_BOOL else ("char" if "char" in name else "int")
                entry = {
                    "kind": kind,
                    "size": t.size,
                    "signed": bool(enc & INT_SIGNED) or name in ("char", "signed char"),
                    "endian": "little",
                }
                if name == "char":
                    entry["signed"] = True
            self.base_types[name] = entry
        return name

    def char_name(self) -> str:
        if "char" not in self.base_types:
            self.base_types["char"] = {
                "kind": "char",
                "size": 1,
                "signed": True,
                "endian": "little",
            }
        return "char"

    def int_name(self, size: int, signed: bool) -> str:
        names = {
            (1, True): "signed char",
            (1, False): "unsigned char",
            (2, True): "short int",
            (2, False): "short unsigned int",
            (4, True): "int",
            (4, False): "unsigned int",
            (8, True): "long int",
            (8, False): "long unsigned int",
        }
        name = names[(size, signed)]
        if name not in self.base_types:
            self.base_types[name] = {
                "kind": "char" if size == 1 else "int",
                "size": size,
                "signed": signed,
                "endian": "little",
            }
        return name

    # type descriptors ----------------------------------------------------
    def descriptor(self, tid: int, _depth: int = 0) -> Dict[str, Any]:
        btf = self.btf
        tid = btf.strip(tid)
        if tid == 0:
            return {"kind": "base", "name": "void"}
        t = btf[tid]
        assert t is not None
        if t.kind in ("INT", "FLOAT"):
            return {"kind": "base", "name": self._base(t)}
        if t.kind == "PTR":
            return {"kind": "pointer", "subtype": self.descriptor(t.type, _depth + 1)}
        if t.kind == "ARRAY":
            return {
                "kind": "array",
                "count": t.extra["nelems"],
                "subtype": self.descriptor(t.extra["type"], _depth + 1),
            }
        if t.kind in ("STRUCT", "UNION"):
            return {"kind": t.kind.lower(), "name": self.agg_name[tid]}
        if t.kind == "FWD":
            return {"kind": "union" if t.kind_flag else "struct", "name": self.agg_name[tid]}
        if t.kind in ("ENUM", "ENUM64"):
            return {"kind": "enum", "name": self.enum_name[tid]}
        if t.kind in ("FUNC_PROTO", "FUNC"):
            return {"kind": "function"}
        if t.kind == "VAR":
            return self.descriptor(t.type, _depth + 1)
        raise ValueError(f"cannot describe BTF type {t}")

    def _bitfield(self, tid: int, bit_offset: int, bit_size: int) -> Tuple[int, Dict[str, Any]]:
        """Return (byte offset, bitfield descriptor) for a bitfield member."""
        btf = self.btf
        real = btf.strip(tid)
        t = btf[real]
        assert t is not None
        size = max(btf.type_size(real), 1)
        if t.kind in ("ENUM", "ENUM64"):
            inner: Dict[str, Any] = {"kind": "enum", "name": self.enum_name[real]}
        elif t.kind == "INT":
            inner = {"kind": "base", "name": self._base(t)}
        else:  # bitfields of anything else: describe the storage as an unsigned integer
            inner = {"kind": "base", "name": self.int_name(size, False)}
        unit = size * 8
        byte_off = (bit_offset // unit) * size
        pos = bit_offset - byte_off * 8
        if pos + bit_size > unit:  # straddles its natural storage unit (packed structs)
            byte_off = bit_offset // 8
            pos = bit_offset % 8
        return byte_off, {
            "kind": "bitfield",
            "bit_position": pos,
            "bit_length": bit_size,
            "type": inner,
        }

    def build(self) -> None:
        btf = self.btf
        self.base_types["void"] = {"kind": "void", "size": 0, "signed": False, "endian": "little"}
        self.base_types["pointer"] = {
            "kind": "int",
            "size": self.pointer_size,
            "signed": False,
            "endian": "little",
        }
        for t in btf.types[1:]:
            assert t is not None
            if t.kind in ("INT", "FLOAT") and t.name:
                self._base(t)
            elif t.kind in ("STRUCT", "UNION"):
                name = self.agg_name[t.id]
                if name in self.user_types:
                    continue
                fields: Dict[str, Dict[str, Any]] = {}
                for index, (m_name, m_type, bit_off, bit_size) in enumerate(t.extra):
                    if not bit_size:
                        real = btf.strip(m_type)
                        rt = btf[real] if real else None
                        if (
                            rt is not None
                            and rt.kind == "INT"
                            and rt.extra["bits"]
                            not in (
                                0,
                                rt.size * 8,
                            )
                        ):
                            bit_size = rt.extra["bits"]  # old-style bitfield encoding
                            bit_off += rt.extra["offset"]
                    if bit_size:
                        byte_off, desc = self._bitfield(m_type, bit_off, bit_size)
                        field: Dict[str, Any] = {"offset": byte_off, "type": desc}
                    else:
                        field = {"offset": bit_off // 8, "type": self.descriptor(m_type)}
                    if not m_name:
                        real = btf.strip(m_type)
                        rt = btf[real] if real else None
                        if rt is not None and rt.kind in ("STRUCT", "UNION") and not bit_size:
                            field["anonymous"] = True
                            field["type"] = {"kind": rt.kind.lower(), "name": self.agg_name[real]}
                        m_name = f"unnamed_field_{index}"
                    fields[m_name] = field
                self.user_types[name] = {"kind": t.kind.lower(), "size": t.size, "fields": fields}
            elif t.kind in ("ENUM", "ENUM64"):
                name = self.enum_name[t.id]
                if name in self.enums:
                    continue
                signed = t.kind_flag or any(v < 0 for _, v in t.extra)
                size = t.size if t.size in (1, 2, 4, 8) else 4
                self.enums[name] = {
                    "size": size,
                    "base": self.int_name(size, signed),
                    "constants": dict(t.extra),
                }
        # forward declarations without a definition: empty, so references resolve
        for t in btf.types[1:]:
            assert t is not None
            if t.kind == "FWD" and self.agg_name[t.id] not in self.user_types:
                self.user_types[self.agg_name[t.id]] = {
                    "kind": "union" if t.kind_flag else "struct",
                    "size": 0,
                    "fields": {},
                }

    # C type expressions ----------------------------------------------------
    def find(self, kind: str, name: str) -> Optional[int]:
        if kind in ("struct", "union"):
            tid = self.by_name.get((kind, name)) or self.by_name.get(("agg", name))
            return tid
        return self.by_name.get((kind, name))

    def parse_expr(self, expr: str, extent: Optional[int]) -> Optional[Dict[str, Any]]:
        """Describe a C type expression such as ``struct page *[]`` or ``char[64]``.

        ``[]`` takes the element count from ``extent`` (the symbol's size in bytes).
        ``struct {a,b}`` names the anonymous struct whose members are exactly a and b.
        Returns None if the base type is not in the BTF.
        """
        m = re.fullmatch(r"\s*(.*?)\s*((?:\*\s*)*)(?:\[(\d*)\])?\s*", expr)
        if not m:
            raise ValueError(f"bad type expression {expr!r}")
        base, stars, count = m.group(1), m.group(2).count("*"), m.group(3)
        desc: Optional[Dict[str, Any]] = None
        anon = re.fullmatch(r"(struct|union)\s*\{([\w,\s]+)\}", base)
        if anon:
            want = sorted(x.strip() for x in anon.group(2).split(","))
            for t in self.btf.types[1:]:
                if (
                    t is not None
                    and t.kind == anon.group(1).upper()
                    and not t.name
                    and sorted(mm[0] for mm in t.extra) == want
                ):
                    desc = {"kind": anon.group(1), "name": self.agg_name[t.id]}
                    break
        elif base.startswith(("struct ", "union ", "enum ")):
            kind, name = base.split(None, 1)
            tid = self.find(kind, name)
            if tid is not None:
                desc = self.descriptor(tid)
        elif base == "void":
            desc = {"kind": "base", "name": "void"}
        else:
            tid = self.find("named", base)
            if tid is not None:
                desc = self.descriptor(tid)
        if desc is None:
            return None
        for _ in range(stars):
            desc = {"kind": "pointer", "subtype": desc}
        if count is not None:
            elem_size = self.descriptor_size(desc)
            if count:
                n = int(count)
            elif extent and elem_size:
                n = extent // elem_size
            else:
                n = 0
            desc = {"kind": "array", "count": n, "subtype": desc}
        return desc

    def descriptor_size(self, desc: Dict[str, Any]) -> int:
        kind = desc["kind"]
        if kind == "pointer":
            return self.pointer_size
        if kind == "base":
            return self.base_types.get(desc["name"], {}).get("size", 0)
        if kind in ("struct", "union"):
            return self.user_types.get(desc["name"], {}).get("size", 0)
        if kind == "enum":
            return self.enums.get(desc["name"], {}).get("size", 0)
        if kind == "array":
            return desc["count"] * self.descriptor_size(desc["subtype"])
        return 0

    def percpu_var_types(self) -> Dict[str, Dict[str, Any]]:
        """Types of variables BTF itself describes (VARs listed in DATASECs)."""
        out: Dict[str, Dict[str, Any]] = {}
        for t in self.btf.types[1:]:
            assert t is not None
            if t.kind == "DATASEC":
                for var_id, _off, _size in t.extra:
                    v = self.btf[var_id]
                    if v is not None and v.kind == "VAR" and v.name not in out:
                        out[v.name] = self.descriptor(v.type)
        return out


# Types of global variables that BTF (6.1) does not describe but Volatility's Linux
# automagic and plugins use (pslist/pstree/psaux/envars/proc.Maps/lsmod/kmsg/boottime,
# framework/automagic/linux.py, framework/symbols/linux). Linker section markers are
# declared ``extern char _text[]`` in C; Volatility does object_from_symbol("_text") to
# get the kernel's extent, so they must be typed too.
LINKER_MARKERS = (
    "_text",
    "_stext",
    "_etext",
    "_sdata",
    "_edata",
    "_sinittext",
    "_einittext",
    "__start_rodata",
    "__end_rodata",
    "__bss_start",
    "__bss_stop",
    "_end",
    "__per_cpu_start",
    "__per_cpu_end",
)
GLOBAL_TYPES: Dict[str, str] = {
    **{marker: "char[0]" for marker in LINKER_MARKERS},
    "init_top_pgt": "pgd_t[512]",
    "swapper_pg_dir": "pgd_t[512]",
    "init_task": "struct task_struct",
    "init_files": "struct files_struct",
    "init_mm": "struct mm_struct",
    "init_fs": "struct fs_struct",
    "init_nsproxy": "struct nsproxy",
    "init_uts_ns": "struct uts_namespace",
    "init_pid_ns": "struct pid_namespace",
    "init_user_ns": "struct user_namespace",
    "init_ipc_ns": "struct ipc_namespace",
    "init_cred": "struct cred",
    "init_net": "struct net",
    "linux_banner": "char[]",
    "linux_proc_banner": "char[]",
    "tk_core": "struct {seq,timekeeper}",
    "prb": "struct printk_ringbuffer *",
    "printk_rb_static": "struct printk_ringbuffer",
    "printk_rb_dynamic": "struct printk_ringbuffer",
    "log_buf": "char *",
    "log_buf_len": "u32",
    "modules": "struct list_head",
    "mod_tree": "struct mod_tree_root",
    "module_addr_min": "long unsigned int",
    "module_addr_max": "long unsigned int",
    "module_kset": "struct kset *",
    "vmcoreinfo_data": "unsigned char *",
    "vmcoreinfo_size": "size_t",
    "vmcoreinfo_note": "u32[]",
    "__per_cpu_offset": "long unsigned int[]",
    "node_data": "struct pglist_data *[]",
    "mem_section": "struct mem_section **",
    "vmemmap_base": "long unsigned int",
    "page_offset_base": "long unsigned int",
    "vmalloc_base": "long unsigned int",
    "phys_base": "long unsigned int",
    "max_pfn": "long unsigned int",
    "max_low_pfn": "long unsigned int",
    "totalram_pages": "atomic_long_t",
    "jiffies": "long unsigned int",
    "jiffies_64": "u64",
    # TAINT_FLAGS_COUNT (19 from 6.0 on); the array is padded, so its extent over-counts
    # and Volatility would decode the padding and the data after it as taint flags.
    "taint_flags": "struct taint_flag[19]",
    "tainted_mask": "long unsigned int",
    "cap_last_cap": "int",
    "pid_max": "int",
    "nr_threads": "int",
    "ftrace_ops_trampoline_list": "struct list_head",
    "ftrace_mod_maps": "struct list_head",
    "bpf_kallsyms": "struct list_head",
    "sys_call_table": "sys_call_ptr_t[]",
    "ia32_sys_call_table": "sys_call_ptr_t[]",
    "x32_sys_call_table": "sys_call_ptr_t[]",
    "idt_table": "gate_desc[]",
    "modprobe_path": "char[]",
    "net_namespace_list": "struct list_head",
    "super_blocks": "struct list_head",
    "file_systems": "struct file_system_type *",
    "mount_hashtable": "struct hlist_head *",
    "dentry_hashtable": "struct hlist_head *",
    "tty_drivers": "struct list_head",
    "console_drivers": "struct console *",
    "proc_root": "struct proc_dir_entry",
    "vmap_area_list": "struct list_head",
    "keyring_name_hash": "struct list_head[]",
    "num_registered_fb": "int",
    "registered_fb": "struct fb_info *[]",
    "tcp_hashinfo": "struct inet_hashinfo",
    "socket_file_ops": "struct file_operations",
    "sockfs_dentry_operations": "struct dentry_operations",
    "pipefifo_fops": "struct file_operations",
    # linux.malware.check_afinfo (>= 4.18)
    **{
        f"{proto}_seq_ops": "struct seq_operations"
        for proto in ("raw", "udp", "arp", "unix", "udp6", "raw6", "tcp", "tcp4", "tcp6", "packet")
    },
    "keyboard_notifier_list": "struct atomic_notifier_head",
    "ftrace_ops_list": "struct ftrace_ops *",
    "ftrace_list_end": "struct ftrace_ops",
    "prog_idr": "struct idr",
    "__start___tracepoints_ptrs": "tracepoint_ptr_t[]",
    # the compressed kallsyms tables (linux.kallsyms, pscallstack); see find_kallsyms_tables
    "kallsyms_num_syms": "unsigned int",
    "kallsyms_relative_base": "long unsigned int",
    "kallsyms_offsets": "int[]",
    "kallsyms_names": "u8[]",
    "kallsyms_markers": "unsigned int[]",
    "kallsyms_seqs_of_names": "u8[]",
    "kallsyms_token_table": "char[]",
    "kallsyms_token_index": "u16[256]",
}


def symbol_extents(symbols: Dict[str, int]) -> Dict[str, int]:
    """Approximate each symbol's size as the distance to the next higher address."""
    addrs = sorted(set(symbols.values()))
    nxt = {a: b for a, b in zip(addrs, addrs[1:])}
    return {name: nxt[a] - a for name, a in symbols.items() if a in nxt}


def build_isf(
    btf_data: bytes,
    symbols: Dict[str, int],
    banner: Optional[bytes] = None,
    symbol_source: str = "symtab",
    symbol_name: str = "kallsyms",
    global_types: Optional[Dict[str, str]] = None,
) -> Dict[str, Any]:
    """Build the ISF dictionary from a BTF blob, link-time symbol addresses and the banner."""
    if global_types is None:
        global_types = GLOBAL_TYPES
    btf = Btf(btf_data)
    builder = IsfBuilder(btf)
    builder.build()
    extents = symbol_extents(symbols)
    var_types = builder.percpu_var_types()
    # BTF names every non-inlined function (BTF_KIND_FUNC): typing its symbol lets
    # object_from_symbol() work on it (linux.sockscan scans for sk_destruct handlers)
    functions = {t.name for t in btf.types[1:] if t is not None and t.kind == "FUNC"}
    out_symbols: Dict[str, Dict[str, Any]] = {}
    for name in sorted(symbols):
        entry: Dict[str, Any] = {"address": symbols[name]}
        desc = var_types.get(name)
        if desc is None and name in functions:
            desc = {"kind": "function"}
        if name in global_types:
            extent = extents.get(name)
            if name == "linux_banner" and banner is not None:
                extent = len(banner) + 1
            desc = builder.parse_expr(global_types[name], extent) or desc
        if desc is not None:
            entry["type"] = desc
        out_symbols[name] = entry
    if banner is not None:
        banner_sym = out_symbols.setdefault("linux_banner", {"address": 0})
        data = banner if banner.endswith(b"\0") else banner + b"\0"
        banner_sym["constant_data"] = base64.b64encode(data).decode("ascii")
        banner_sym["type"] = {
            "kind": "array",
            "count": len(data),
            "subtype": {"kind": "base", "name": builder.char_name()},
        }
    return {
        "metadata": {
            "format": ISF_FORMAT,
            "producer": dict(PRODUCER),
            "linux": {
                "symbols": [{"kind": symbol_source, "name": symbol_name}],
                "types": [{"kind": "dwarf", "name": "BTF"}],
            },
        },
        "base_types": builder.base_types,
        "user_types": builder.user_types,
        "enums": builder.enums,
        "symbols": out_symbols,
    }


def dumps(isf: Dict[str, Any]) -> bytes:
    """Deterministic JSON serialisation."""
    return (
        json.dumps(isf, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"
    ).encode()


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="vmrs-btf2isf",
        description="Convert Linux kernel BTF + a symbol list into a Volatility 3 ISF (JSON).",
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--vmlinux", help="vmlinux ELF or bzImage/vmlinuz with a .BTF section")
    src.add_argument("--btf", help="raw .BTF section (e.g. /sys/kernel/btf/vmlinux)")
    src.add_argument(
        "--from-image",
        metavar="FILE",
        help="a memory image Volatility opens (.vmrs, raw, LiME, ELF core, ...): BTF, "
        "kallsyms and banner are read from the guest's memory (no symbol list needed)",
    )
    syms = ap.add_mutually_exclusive_group()
    syms.add_argument("--kallsyms", help="/proc/kallsyms dump (KASLR addresses are undone)")
    syms.add_argument("--system-map", help="System.map")
    ap.add_argument(
        "--extra-symbols",
        action="append",
        default=[],
        metavar="MAP",
        help="more link-time symbols in System.map format (e.g. the kallsyms tables); repeatable",
    )
    ap.add_argument(
        "--banner", help="file holding the linux_banner string (else read from vmlinux)"
    )
    ap.add_argument(
        "--text-base",
        type=lambda s: int(s, 0),
        default=DEFAULT_TEXT_BASE,
        help="link-time address of _text, to undo KASLR in kallsyms (default %(default)#x)",
    )
    ap.add_argument("--keep-kaslr", action="store_true", help="keep kallsyms addresses as they are")
    ap.add_argument(
        "--global-type",
        action="append",
        default=[],
        metavar="NAME=TYPE",
        help="type of a global variable, e.g. 'taint_flags=struct taint_flag[18]' (repeatable)",
    )
    ap.add_argument(
        "-o", "--output", required=True, help="output .json, .json.xz or .json.gz ('-' = stdout)"
    )
    return ap


def _global_types(items: List[str]) -> Dict[str, str]:
    global_types = dict(GLOBAL_TYPES)
    for item in items:
        name, _, expr = item.partition("=")
        global_types[name.strip()] = expr.strip()
    return global_types


def _from_image(path: str, global_types: Dict[str, str]) -> Dict[str, Any]:
    """The ISF of the kernel in a memory image (opened through Volatility's stackers)."""
    from volatility3.framework import contexts  # only this route needs Volatility

    from volatility3_vmrs.layers.guest_memory import kernel_symbols, open_physical

    context = contexts.Context()
    kernel = kernel_symbols(context, open_physical(context, pathlib.Path(path).resolve().as_uri()))
    print(
        f"{path}: Linux {kernel.release}, {kernel.num_syms} kallsyms symbols, "
        f"BTF {len(kernel.btf)} bytes at {kernel.btf_gpa:#x}, KASLR slide "
        + (
            f"{kernel.virtual_shift:#x} ({kernel.virtual_shift_source})"
            if kernel.virtual_shift is not None
            else "unknown"
        ),
        file=sys.stderr,
    )
    return build_isf(kernel.btf, kernel.symbols, kernel.banner, "symtab", "kallsyms", global_types)


def _from_files(args: argparse.Namespace, global_types: Dict[str, str]) -> Dict[str, Any]:
    elf: Optional[ElfFile] = None
    if args.vmlinux:
        elf = ElfFile(extract_vmlinux(read_input(args.vmlinux)))
        btf_data = elf.section_data(".BTF")
    else:
        btf_data = read_input(args.btf)

    if args.kallsyms:
        kallsyms_text = read_input(args.kallsyms).decode("latin-1")
        symbols = parse_symbol_list(kallsyms_text)
        check_symbol_list(symbols, args.kallsyms)
        source = "symtab"
        if not args.keep_kaslr:
            symbols = unrelocate(symbols, kaslr_shift(symbols, args.text_base))
        if elf is not None:
            # /proc/kallsyms hides the kallsyms tables themselves; find them in vmlinux
            for name, addr in find_kallsyms_tables(elf, count_core_symbols(kallsyms_text)).items():
                symbols.setdefault(name, addr)
    else:
        symbols = parse_symbol_list(read_input(args.system_map).decode("latin-1"))
        check_symbol_list(symbols, args.system_map)
        source = "system-map"
    for path in args.extra_symbols:
        for name, addr in parse_symbol_list(read_input(path).decode("latin-1")).items():
            symbols.setdefault(name, addr)

    banner: Optional[bytes] = None
    if args.banner:
        banner = read_input(args.banner).rstrip(b"\0")
    elif elf is not None:
        banner = banner_from_vmlinux(elf, symbols.get("linux_banner"))
    else:
        print(
            "warning: no banner given; Volatility will not be able to match this ISF",
            file=sys.stderr,
        )
    return build_isf(
        btf_data,
        symbols,
        banner,
        source,
        "kallsyms" if args.kallsyms else "System.map",
        global_types,
    )


def main(argv: Optional[Iterable[str]] = None) -> int:
    """The ``vmrs-btf2isf`` command; a refused input is one line on stderr and exit 1."""
    ap = _parser()
    args = ap.parse_args(None if argv is None else list(argv))
    if not args.from_image and not (args.kallsyms or args.system_map):
        ap.error("one of --kallsyms or --system-map is required (or use --from-image)")
    global_types = _global_types(args.global_type)
    try:
        if args.from_image:
            isf = _from_image(args.from_image, global_types)
        else:
            isf = _from_files(args, global_types)
        write_output(args.output, dumps(isf))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        print(f"vmrs-btf2isf: error: {_reason(error)}", file=sys.stderr)
        return 1
    except Exception as error:  # Volatility's and the reader's refusals of an image
        if not _is_refusal(error):
            raise
        print(f"vmrs-btf2isf: error: {_reason(error)}", file=sys.stderr)
        return 1
    return 0


def _reason(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())


def _is_refusal(error: BaseException) -> bool:
    """An error that says what is wrong with the input (not a bug to show a traceback for)."""
    from volatility3.framework import exceptions as vol_exceptions

    from volatility3_vmrs.savedstate.errors import VmrsError

    return isinstance(error, (VmrsError, vol_exceptions.VolatilityException))


if __name__ == "__main__":
    sys.exit(main())
