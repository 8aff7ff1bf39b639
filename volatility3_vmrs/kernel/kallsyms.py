"""Find and decode the kernel's compressed symbol table (kallsyms) in a block of memory.

scripts/kallsyms.c writes these tables into ``.rodata``, each 8-byte aligned on 64-bit:

* 4.x - 6.0: [kallsyms_offsets + kallsyms_relative_base | kallsyms_addresses],
  kallsyms_num_syms, kallsyms_names, kallsyms_markers, kallsyms_token_table,
  kallsyms_token_index;
* 6.1 stable - 6.3: the same with kallsyms_seqs_of_names between markers and token table;
* 6.4 on: kallsyms_num_syms, names, markers, token_table, token_index, then
  [offsets + relative_base | addresses], kallsyms_seqs_of_names.

``kallsyms_markers`` are ``unsigned int`` (``unsigned long`` on older kernels). A name is
a length byte (two, ULEB128, from 6.1 for long names) then token codes; the first
decoded character is the symbol type. The search anchors on the token table: every
character used in symbol names is its own one-character token, so the tokens of codes
'a'..'z' are the bytes ``a\\0b\\0...z\\0``. From there the tables before and after are
checked against each other (markers against names, token index against token table),
so a stray match is rejected.

Addresses: ``relative_base`` and ``kallsyms_addresses`` are relocated at boot, so they
hold run-time (KASLR) addresses. With CONFIG_KALLSYMS_ABSOLUTE_PERCPU (x86_64 SMP) an
offset >= 0 is an absolute value (a per-CPU symbol) and a negative one is
``relative_base - 1 - offset``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

TOKEN_NEEDLE = b"".join(bytes([c, 0]) for c in range(ord("a"), ord("z") + 1))
FIRST_NEEDLE_CODE = ord("a")
MAX_SYMS = 1 << 22
MAX_NAME = 514  # KSYM_NAME_LEN 512 + two length bytes
KERNEL_TEXT_MIN = 0xFFFFFFFF80000000
_KERNEL_ADDRESS = re.compile(rb"[\x80-\xbf]\xff\xff\xff\xff", re.S)


def _align8(x: int) -> int:
    return (x + 7) & ~7


@dataclass
class KallsymsTables:
    """Where each table is, as offsets into the searched block, and what it says."""

    positions: Dict[str, int]
    num_syms: int
    absolute_percpu: bool
    relative_base: Optional[int]  # run-time value, None with kallsyms_addresses
    symbols: List[Tuple[str, str, int, bool]] = field(default_factory=list)
    """(name, type, value, is_absolute), in kallsyms order (by address)."""


def _u32(buf: bytes, pos: int) -> int:
    return struct.unpack_from("<I", buf, pos)[0]


def _u64(buf: bytes, pos: int) -> int:
    return struct.unpack_from("<Q", buf, pos)[0]


def token_table_at(buf: bytes, hit: int) -> Optional[Tuple[int, int, List[bytes]]]:
    """(token_table, token_index, tokens) from a :data:`TOKEN_NEEDLE` hit, if they check."""
    cur = hit
    for _ in range(FIRST_NEEDLE_CODE, 256):
        end = buf.find(b"\0", cur, cur + 256)
        if end < 0:
            return None
        cur = end + 1
    index = _align8(cur)
    if index + 512 > len(buf):
        return None
    offsets = struct.unpack_from("<256H", buf, index)
    table = hit - offsets[FIRST_NEEDLE_CODE]
    if table < 0 or offsets[0] != 0:
        return None
    tokens: List[bytes] = []
    pos = table
    for code in range(256):
        if pos - table != offsets[code]:
            return None
        end = buf.find(b"\0", pos, pos + 256)
        if end < 0:  # a code no symbol uses has an empty token
            return None
        tokens.append(buf[pos:end])
        pos = end + 1
    if _align8(pos) != index:
        return None
    return table, index, tokens


def _markers(buf: bytes, pos: int, count: int, width: int) -> Optional[List[int]]:
    if pos < 0 or pos + width * count > len(buf):
        return None
    fmt = f"<{count}{'I' if width == 4 else 'Q'}"
    values = list(struct.unpack_from(fmt, buf, pos))
    if values[0] != 0:
        return None
    for a, b in zip(values, values[1:]):
        if not 256 * 2 <= b - a <= 256 * MAX_NAME:
            return None
    return values


def _walk_names(buf: bytes, start: int, n: int, markers: List[int]) -> Optional[int]:
    """End of ``n`` names from ``start`` if every 256th starts where its marker says."""
    cur = start
    size = len(buf)
    for i in range(n):
        if cur >= size:
            return None
        if not i & 0xFF and cur - start != markers[i >> 8]:
            return None
        length = buf[cur]
        if length & 0x80:
            length = (length & 0x7F) | (buf[cur + 1] << 7)
            cur += 1
        if length == 0:
            return None
        cur += 1 + length
    return cur


def _names_before(buf: bytes, markers_pos: int, markers: List[int]) -> Optional[Tuple[int, int]]:
    """(num_syms position, n) for names that end just before ``markers_pos``."""
    k = len(markers)
    low = max(8, markers_pos - markers[-1] - 256 * MAX_NAME - 8)
    high = markers_pos - markers[-1]
    q = _align8(low) - 8
    while q + 8 <= high:
        n = _u32(buf, q)
        if 256 * (k - 1) < n <= 256 * k and _u32(buf, q + 4) == 0:
            end = _walk_names(buf, q + 8, n, markers)
            if end is not None and _align8(end) == markers_pos:
                return q, n
        q += 8
    return None


def _find_case_plain(buf: bytes, table: int) -> Optional[Dict[str, int]]:
    """Markers right before the token table (no seqs there): 4.x-6.0, 6.4+."""
    for width in (4, 8):
        for k in range(1, (MAX_SYMS >> 8) + 1):
            markers_pos = table - _align8(width * k)
            if markers_pos < 16:
                break
            if _u32(buf, markers_pos) != 0 or (width == 8 and _u32(buf, markers_pos + 4)):
                continue
            if k > 1 and not 0 < _u32(buf, markers_pos + width) < 256 * MAX_NAME:
                continue
            markers = _markers(buf, markers_pos, k, width)
            if markers is None:
                continue
            found = _names_before(buf, markers_pos, markers)
            if found is not None:
                q, n = found
                return {"num_syms": q, "n": n, "markers": markers_pos, "width": width}
    return None


def _find_case_seqs(buf: bytes, table: int) -> Optional[Dict[str, int]]:
    """6.1 stable - 6.3: relative_base, num_syms, names, markers, seqs_of_names, tokens."""
    lowest = max(0, table - 64 * MAX_SYMS)
    for match in _KERNEL_ADDRESS.finditer(buf, lowest, table):
        base_pos = match.start() - 3
        if base_pos % 8:
            continue
        q = base_pos + 8
        n = _u32(buf, q)
        if not 1 <= n <= MAX_SYMS or _u32(buf, q + 4):
            continue
        k = (n + 255) >> 8
        seqs = table - _align8(3 * n)
        markers_pos = seqs - _align8(4 * k)
        if markers_pos <= q + 8 or _u32(buf, markers_pos):
            continue
        markers = _markers(buf, markers_pos, k, 4)
        if markers is None:
            continue
        end = _walk_names(buf, q + 8, n, markers)
        if end is not None and _align8(end) == markers_pos:
            return {"num_syms": q, "n": n, "markers": markers_pos, "width": 4, "seqs": seqs}
    return None


AddressTables = Tuple[List[Tuple[int, bool]], bool, Optional[int], Dict[str, int]]


def _decode_addresses(
    buf: bytes, n: int, base_pos: Optional[int], table_pos: int
) -> Optional[AddressTables]:
    """([(value, absolute)], absolute_percpu, relative_base, positions) if sorted.

    With ``base_pos``: ``kallsyms_offsets`` at ``table_pos`` and ``kallsyms_relative_base``
    at ``base_pos``; without: absolute ``kallsyms_addresses`` at ``table_pos``.
    """
    if table_pos < 0:
        return None
    if base_pos is not None:
        if base_pos + 8 > len(buf) or table_pos + 4 * n > len(buf):
            return None
        base = _u64(buf, base_pos)
        if base < KERNEL_TEXT_MIN:
            return None
        offsets = struct.unpack_from(f"<{n}i", buf, table_pos)
        absolute_percpu = any(off < 0 for off in offsets)
        if absolute_percpu:
            values = [(off, True) if off >= 0 else (base - 1 - off, False) for off in offsets]
        else:
            values = [(base + (off & 0xFFFFFFFF), False) for off in offsets]
        positions = {"kallsyms_offsets": table_pos, "kallsyms_relative_base": base_pos}
        result: AddressTables = (values, absolute_percpu, base, positions)
    else:
        if table_pos + 8 * n > len(buf):
            return None
        raw = struct.unpack_from(f"<{n}Q", buf, table_pos)
        values = [(v, v < KERNEL_TEXT_MIN) for v in raw]
        result = (values, False, None, {"kallsyms_addresses": table_pos})
    relative = [v for v, absolute in result[0] if not absolute]
    if not relative or any(a > b for a, b in zip(relative, relative[1:])):
        return None
    if relative[0] < KERNEL_TEXT_MIN:
        return None
    return result


def _addresses(
    buf: bytes, positions: Dict[str, int], n: int, after_index: bool
) -> Optional[AddressTables]:
    """The address tables before ``kallsyms_num_syms`` (up to 6.3) or after the index (6.4+)."""
    q = positions["kallsyms_num_syms"]
    if after_index:  # 6.4+: offsets, relative_base, seqs after the token index
        start = _align8(positions["kallsyms_token_index"] + 512)
        base_pos = _align8(start + 4 * n)
        found = _decode_addresses(buf, n, base_pos, start)
        if found is not None:
            found[3]["kallsyms_seqs_of_names"] = base_pos + 8
            return found
        found = _decode_addresses(buf, n, None, start)
        if found is not None:
            found[3]["kallsyms_seqs_of_names"] = start + 8 * n
        return found
    found = _decode_addresses(buf, n, q - 8, q - 8 - _align8(4 * n))
    if found is not None:
        return found
    return _decode_addresses(buf, n, None, q - 8 * n)


def _decode_names(buf: bytes, start: int, n: int, tokens: List[bytes]) -> List[Tuple[str, str]]:
    out: List[Tuple[str, str]] = []
    cur = start
    for _ in range(n):
        length = buf[cur]
        if length & 0x80:
            length = (length & 0x7F) | (buf[cur + 1] << 7)
            cur += 1
        text = b"".join([tokens[c] for c in buf[cur + 1 : cur + 1 + length]])
        cur += 1 + length
        name = text.decode("latin-1")
        out.append((name[1:], name[:1]))
    return out


def find_kallsyms(buf: bytes, hit: int) -> Optional[KallsymsTables]:
    """The kallsyms tables around a :data:`TOKEN_NEEDLE` hit at ``hit`` in ``buf``, or None."""
    tables = token_table_at(buf, hit)
    if tables is None:
        return None
    table, index, tokens = tables
    layout = _find_case_plain(buf, table)
    seqs_between = False
    if layout is None:
        layout = _find_case_seqs(buf, table)
        seqs_between = layout is not None
    if layout is None:
        return None
    n = layout["n"]
    positions = {
        "kallsyms_num_syms": layout["num_syms"],
        "kallsyms_names": layout["num_syms"] + 8,
        "kallsyms_markers": layout["markers"],
        "kallsyms_token_table": table,
        "kallsyms_token_index": index,
    }
    if seqs_between:
        positions["kallsyms_seqs_of_names"] = layout["seqs"]
    found = _addresses(buf, positions, n, after_index=False)
    if found is None and not seqs_between:
        found = _addresses(buf, positions, n, after_index=True)
    if found is None:
        return None
    values, absolute_percpu, base, address_positions = found
    positions.update(address_positions)
    names = _decode_names(buf, positions["kallsyms_names"], n, tokens)
    symbols = [
        (name, typ, value, absolute) for (name, typ), (value, absolute) in zip(names, values)
    ]
    return KallsymsTables(positions, n, absolute_percpu, base, symbols)
