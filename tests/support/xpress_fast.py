"""A fast XPRESS encoder for bulk test data: literals plus byte runs only.

The full compressor (:mod:`tests.support.xpress_compress`) finds every match and costs a
few milliseconds per page; turning a 256 MiB guest into XPRESS RamBlocks with it takes
minutes. Kernel pages are full of runs (zero padding, 0xff fills), so encoding only those
as matches (distance 1) still compresses them, and the work grows with the number of
runs, not of bytes: literal stretches are copied a flag word (32 literals) at a time.
"""

from __future__ import annotations

import re
import struct

_RUN = re.compile(rb"(.)\1{4,}", re.DOTALL)


class _Writer:
    """Bit-flag bookkeeping of [MS-XCA] §2.3: a u32 of flags before each 32 items."""

    def __init__(self) -> None:
        self.out = bytearray(4)
        self.flag_at = 0
        self.flags = 0
        self.count = 0
        self.nibble_at = -1

    def _flag(self, bit: int) -> None:
        self.flags = (self.flags << 1) | bit
        self.count += 1
        self._flush_if_full()

    def _flush_if_full(self) -> None:
        if self.count == 32:
            self.out[self.flag_at : self.flag_at + 4] = struct.pack("<I", self.flags)
            self.flag_at = len(self.out)
            self.out += b"\0\0\0\0"
            self.flags = 0
            self.count = 0

    def literals(self, data: bytes) -> None:
        position = 0
        while position < len(data):
            take = min(32 - self.count, len(data) - position)
            self.out += data[position : position + take]
            # Literal flags are 0 bits: shifting them in is all it takes.
            self.flags <<= take
            self.count += take
            position += take
            self._flush_if_full()

    def _nibble(self, value: int) -> None:
        if self.nibble_at < 0:
            self.nibble_at = len(self.out)
            self.out.append(value)
        else:
            self.out[self.nibble_at] |= value << 4
            self.nibble_at = -1

    def match(self, distance: int, length: int) -> None:
        value = length - 3
        self.out += struct.pack("<H", ((distance - 1) << 3) | min(value, 7))
        if value >= 7:
            extra = value - 7
            if extra < 15:
                self._nibble(extra)
            else:
                self._nibble(15)
                if value - 22 < 255:
                    self.out.append(value - 22)
                else:
                    self.out.append(255)
                    self.out += struct.pack("<H", value)
        self._flag(1)

    def finish(self) -> bytes:
        free = 32 - self.count
        flags = (self.flags << free) | ((1 << free) - 1)
        self.out[self.flag_at : self.flag_at + 4] = struct.pack("<I", flags)
        return bytes(self.out)


def compress_fast(data: bytes) -> bytes:
    """A valid XPRESS stream for ``data`` (matches are byte runs of 5 or more)."""
    data = bytes(data)
    writer = _Writer()
    position = 0
    for found in _RUN.finditer(data):
        start, end = found.span()
        # The run's first byte is a literal; the rest repeats it at distance 1.
        writer.literals(data[position : start + 1])
        writer.match(1, end - start - 1)
        position = end
    writer.literals(data[position:])
    return writer.finish()
