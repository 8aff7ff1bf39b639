"""Structure-aware random mutation of seeds (the built-in engine, no dependencies).

Each input is a seed with 1-4 stacked mutations. Offsets go to the seed's "hot" ranges
(metadata) three times out of four. Integer overwrites use values that break length and
count checks (0, 1, -1, 2**31, page and block sizes, the input length). Container inputs
get their file-header and replay-log checksums re-stamped half of the time, because a
header with a bad CRC is simply ignored and the fields behind it would never be reached.
"""

from __future__ import annotations

import random
import struct
from typing import Callable, List, Sequence, Tuple

from fuzz.seeds import Seed
from volatility3_vmrs.savedstate import structs as S

INTERESTING_32 = (
    0,
    1,
    2,
    3,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0xFFF,
    0x1000,
    0x1001,
    0x2000,
    0xFFFF,
    0x10000,
    0xFFFFF,
    0x100000,
    0x100001,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFF0,
    0xFFFFFFFC,
    0xFFFFFFFD,
    0xFFFFFFFE,
    0xFFFFFFFF,
)
INTERESTING_64 = (
    *INTERESTING_32,
    1 << 32,
    1 << 40,
    (1 << 40) - 1,
    1 << 52,
    0x7FFFFFFFFFFFFFFF,
    0x8000000000000000,
    0xFFFFFFFFFFFFFFFF,
)


class Mutator:
    """Random mutations of seed bytes; deterministic for a given ``rng``."""

    def __init__(self, rng: random.Random, *, fix_container_checksums: bool = False) -> None:
        self.rng = rng
        self.fix_container_checksums = fix_container_checksums
        self.operations: List[Callable[[bytearray, Seed, Sequence[Seed]], None]] = [
            self.flip_bits,
            self.flip_bits,
            self.set_byte,
            self.set_int,
            self.set_int,
            self.set_int,
            self.add_int,
            self.truncate,
            self.delete,
            self.insert,
            self.duplicate,
            self.zero_range,
            self.splice,
        ]

    # --- choosing where ------------------------------------------------------------------
    def offset(self, data: bytearray, seed: Seed) -> int:
        if not data:
            return 0
        hot = [(start, end) for start, end in seed.hot if start < len(data)]
        if hot and self.rng.random() < 0.75:
            start, end = self.rng.choice(hot)
            end = min(end, len(data))
            return self.rng.randrange(start, max(start + 1, end))
        return self.rng.randrange(len(data))

    # --- operations ------------------------------------------------------------------------
    def flip_bits(self, data: bytearray, seed: Seed, pool: Sequence[Seed]) -> None:
        if data:
            for _ in range(self.rng.choice((1, 1, 2, 4))):
                at = self.offset(data, seed)
                data[at] ^= 1 << self.rng.randrange(8)

    def set_byte(self, data: bytearray, seed: Seed, pool: Sequence[Seed]) -> None:
        if data:
            data[self.offset(data, seed)] = self.rng.choice((0, 1, 0x7F, 0x80, 0xFE, 0xFF))

    def _int_format(self) -> Tuple[str, Tuple[int, ...]]:
        code = self.rng.choice(("<H", "<I", "<I", "<Q"))
        if code == "<H":
            return code, tuple(v & 0xFFFF for v in INTERESTING_32)
        return code, INTERESTING_32 if code == "<I" else INTERESTING_64

    def set_int(self, data: bytearray, seed: Seed, pool: Sequence[Seed]) -> None:
        code, values = self._int_format()
        size = struct.calcsize(code)
        if len(data) < size:
            return
        at = min(self.offset(data, seed), len(data) - size)
        mask = (1 << (8 * size)) - 1
        choice = self.rng.random()
        if choice < 0.7:
            value = self.rng.choice(values)
        elif choice < 0.85:
            value = len(data) - self.rng.randrange(min(len(data), 64) + 1)
        else:
            value = self.rng.getrandbits(8 * size)
        struct.pack_into(code, data, at, value & mask)

    def add_int(self, data: bytearray, seed: Seed, pool: Sequence[Seed]) -> None:
        code = self.rng.choice(("<H", "<I", "<Q"))
        size = struct.calcsize(code)
        if len(data) < size:
            return
        at = min(self.offset(data, seed), len(data) - size)
        mask = (1 << (8 * size)) - 1
        (value,) = struct.unpack_from(code, data, at)
        delta = self.rng.choice((-1, 1, -8, 8, -16, 16, 0x1000, -0x1000))
        struct.pack_into(code, data, at, (value + delta) & mask)

    def truncate(self, data: bytearray, seed: Seed, pool: Sequence[Seed]) -> None:
        if data:
            del data[self.offset(data, seed) :]

    def delete(self, data: bytearray, seed: Seed, pool: Sequence[Seed]) -> None:
        if data:
            at = self.offset(data, seed)
            del data[at : at + self.rng.choice((1, 2, 4, 8, 16, 64, 512))]

    def insert(self, data: bytearray, seed: Seed, pool: Sequence[Seed]) -> None:
        at = self.offset(data, seed)
        size = self.rng.choice((1, 4, 8, 16, 100))
        data[at:at] = self.rng.randbytes(size)

    def duplicate(self, data: bytearray, seed: Seed, pool: Sequence[Seed]) -> None:
        if data:
            at = self.offset(data, seed)
            size = self.rng.choice((4, 16, 21, 64, 256))
            data[at:at] = data[at : at + size]

    def zero_range(self, data: bytearray, seed: Seed, pool: Sequence[Seed]) -> None:
        if data:
            at = self.offset(data, seed)
            size = self.rng.choice((4, 8, 32, 256, 4096))
            fill = self.rng.choice((0, 0xFF))
            end = min(len(data), at + size)
            data[at:end] = bytes([fill]) * (end - at)

    def splice(self, data: bytearray, seed: Seed, pool: Sequence[Seed]) -> None:
        other = self.rng.choice(pool)
        if not other.data or not data:
            return
        source = self.offset(bytearray(other.data), other)
        size = self.rng.choice((8, 16, 64, 512))
        piece = other.data[source : source + size]
        at = self.offset(data, seed)
        data[at : at + len(piece)] = piece

    # --- whole inputs ----------------------------------------------------------------------
    def mutate(self, seed: Seed, pool: Sequence[Seed]) -> bytes:
        data = bytearray(seed.data)
        for _ in range(self.rng.choice((1, 1, 1, 2, 2, 3, 4))):
            self.rng.choice(self.operations)(data, seed, pool)
        if self.fix_container_checksums and self.rng.random() < 0.5:
            restamp_container(data)
        return bytes(data)


def restamp_container(data: bytearray) -> None:
    """Re-stamp both file-header CRCs and the replay-log header and entry CRCs in place."""
    header_at = S.FILE_HEADER.offset_of("checksum")
    log_offset = None
    for offset in S.FILE_HEADER_OFFSETS:
        end = offset + S.FILE_HEADER.size
        if len(data) < end:
            continue
        stamped = S.stamp_checksum(bytes(data[offset:end]), header_at)
        data[offset:end] = stamped
        fields = S.FILE_HEADER.unpack(stamped)
        if fields.signature == S.FILE_HEADER_SIGNATURE and log_offset is None:
            log_offset = fields.replay_log_offset
    if log_offset is None or log_offset + S.REPLAY_LOG_HEADER.size > len(data):
        return
    end = log_offset + S.REPLAY_LOG_HEADER.size
    stamped = S.stamp_checksum(
        bytes(data[log_offset:end]), S.REPLAY_LOG_HEADER.offset_of("checksum")
    )
    data[log_offset:end] = stamped
    count = min(S.REPLAY_LOG_HEADER.unpack(stamped).current_entries, 8)
    for index in range(count):
        at = end + index * S.REPLAY_LOG_ENTRY.size
        if at + S.REPLAY_LOG_ENTRY.size > len(data):
            break
        entry = bytes(data[at : at + S.REPLAY_LOG_ENTRY.size])
        data[at : at + len(entry)] = S.stamp_checksum(
            entry, S.REPLAY_LOG_ENTRY.offset_of("checksum")
        )
