"""Write kallsyms tables the way the kernel's scripts/kallsyms.c lays them out (for tests).

:func:`build` compresses names with a token table (every used character is its own
token, the other codes get multi-character tokens), and writes the tables in one of the
layouts of :data:`LAYOUTS`, each table 8-byte aligned, between junk bytes.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Dict, List, Tuple

LAYOUTS = ("4.x", "6.1", "6.4")
"""4.x-6.0 (no seqs); 6.1 stable-6.3 (seqs before the tokens); 6.4+ (num_syms first)."""

COMMON = [
    "_s", "in", "er", "re", "st", "_t", "de", "_p", "it", "en", "or", "at", "on", "ct",
    "_c", "ma", "ch", "_r", "le", "ad", "ex", "ys", "sys", "_x64", "init", "func", "_to",
]  # fmt: skip


@dataclass
class Written:
    data: bytes
    positions: Dict[str, int]
    relative_base: int


def _pad(out: bytearray) -> None:
    out += b"\0" * (-len(out) % 8)


def _tokens(names: List[bytes]) -> List[bytes]:
    used = {c for name in names for c in name}
    tokens: List[bytes] = [b""] * 256
    extra = iter(t.encode() for t in COMMON)
    for code in range(256):
        if code in used:
            tokens[code] = bytes([code])
        else:
            tokens[code] = next(extra, b"")
    return tokens


def _compress(name: bytes, tokens: List[bytes]) -> bytes:
    by_length = sorted(((t, code) for code, t in enumerate(tokens) if t), key=lambda x: -len(x[0]))
    out, pos = bytearray(), 0
    while pos < len(name):
        for token, code in by_length:
            if name.startswith(token, pos):
                out.append(code)
                pos += len(token)
                break
    return bytes(out)


def build(
    symbols: List[Tuple[str, str, int, bool]],
    layout: str,
    *,
    relative: bool = True,
    absolute_percpu: bool = True,
    marker_width: int = 4,
    seed: int = 1,
) -> Written:
    """Tables for ``symbols`` ((name, type, address, absolute), sorted by address)."""
    rng = random.Random(seed)
    names = [(typ + name).encode() for name, typ, _a, _abs in symbols]
    tokens = _tokens(names)
    n = len(symbols)
    base = min(addr for _n, _t, addr, absolute in symbols if not absolute)
    out = bytearray(rng.randbytes(4096 + 8 * rng.randrange(64)))
    positions: Dict[str, int] = {}

    def label(name: str) -> None:
        _pad(out)
        positions[name] = len(out)

    def addresses() -> None:
        if relative:
            label("kallsyms_offsets")
            for _name, _typ, addr, absolute in symbols:
                if absolute_percpu:
                    value = addr if absolute else base - 1 - addr
                else:
                    value = (addr - base) & 0xFFFFFFFF
                out.extend(struct.pack("<i" if absolute_percpu else "<I", value))
            label("kallsyms_relative_base")
            out.extend(struct.pack("<Q", base))
        else:
            label("kallsyms_addresses")
            for _name, _typ, addr, _abs in symbols:
                out.extend(struct.pack("<Q", addr))

    def seqs() -> None:
        label("kallsyms_seqs_of_names")
        order = sorted(range(n), key=lambda i: names[i][1:])
        for index in order:
            out.extend(index.to_bytes(3, "big"))

    if layout != "6.4":
        addresses()
    label("kallsyms_num_syms")
    out.extend(struct.pack("<I", n))
    label("kallsyms_names")
    markers = []
    for i, name in enumerate(names):
        if i % 256 == 0:
            markers.append(len(out) - positions["kallsyms_names"])
        packed = _compress(name, tokens)
        if len(packed) > 0x7F:
            out.extend(bytes([(len(packed) & 0x7F) | 0x80, len(packed) >> 7]))
        else:
            out.append(len(packed))
        out.extend(packed)
    label("kallsyms_markers")
    for marker in markers:
        out.extend(struct.pack("<I" if marker_width == 4 else "<Q", marker))
    if layout == "6.1":
        seqs()
    label("kallsyms_token_table")
    offsets = []
    for token in tokens:
        offsets.append(len(out) - positions["kallsyms_token_table"])
        out.extend(token + b"\0")
    label("kallsyms_token_index")
    out.extend(struct.pack("<256H", *offsets))
    if layout == "6.4":
        addresses()
        seqs()
    _pad(out)
    out.extend(rng.randbytes(4096))
    return Written(bytes(out), positions, base)
