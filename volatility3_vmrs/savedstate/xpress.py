"""XPRESS (plain LZ77, [MS-XCA] sections 2.3-2.4) decompression of saved RAM pages.

Hyper-V compresses RamBlock pages with ``COMPRESSION_FORMAT_XPRESS`` (format 3), the plain
LZ77 variant: no Huffman stage, and not LZNT1 (vmrs-format.md section 10.4).

Two backends decode the same stream:

* ``"pyfwnt"``: ``pyfwnt.lzxpress_decompress`` from libfwnt-python (C, fast), used when it
  imports;
* ``"python"``: :func:`decompress_pure`, this module's own decoder.

:func:`decompress` is the entry point; it returns exactly ``out_size`` bytes or raises
:class:`XpressError`. The active backend is :data:`BACKEND` (read it as
``xpress.BACKEND``: :func:`set_backend` rebinds it, so a ``from … import BACKEND`` copy goes
stale). Setting the environment variable ``VMRS_XPRESS_BACKEND=python`` before import
forces the pure decoder for a whole process.

Where the backends differ (only on streams no conforming compressor writes for outputs
under 64 KiB, so never on a valid 4 KiB page):

* a u16 length field of 0 announces a u32 length in [MS-XCA]; libfwnt reads it as
  length 3 and goes on parsing the u32 as data;
* a u16 length field below 22 would make the length negative; [MS-XCA] says to fail,
  libfwnt accepts it as length ``value + 3``;
* libfwnt refuses any single match longer than 32771 bytes.

The pure decoder follows [MS-XCA] in all three cases.

libfwnt-python behaviour this wrapper relies on or guards against (release 20260602):

* it raises OSError for input shorter than 2 bytes, even when ``out_size`` is 0, so
  ``out_size == 0`` is answered here without calling it;
* it accepts only ``bytes`` (a bytearray or memoryview gives a ValueError), so the input
  is converted first;
* ``uncompressed_data_size`` is a C int: 2**31 and above raise OverflowError, and any
  value below that is allocated up front (2 GiB for 2**31 - 1), so ``out_size`` is capped
  at :data:`MAX_OUT_SIZE` before it is called;
* when the input runs out early it returns fewer bytes than asked for instead of failing,
  so the length is always checked here;
* a match running past ``out_size`` and a distance reaching before the start of the
  output both raise OSError; input after the last needed byte is ignored.

About 700,000 fuzzed inputs (random bytes, bit-flipped and truncated streams, odd sizes)
neither crashed nor hung this release, and it agreed with the pure decoder on every one
apart from the ``out_size == 0`` case above. Old libfwnt sources (2016) read the flag
word without checking that 4 bytes remain and could write one byte past the output;
the current code checks both, so prefer a recent libfwnt-python.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional, Union

from .errors import GuestMemoryFormatError

__all__ = [
    "AVAILABLE_BACKENDS",
    "BACKEND",
    "MAX_OUT_SIZE",
    "XpressError",
    "decompress",
    "decompress_pure",
    "set_backend",
]

_log = logging.getLogger(__name__)

# The largest output the saved-state format ever asks for is one whole RamBlock (1 MiB);
# anything larger is a corrupt length field, and refusing it keeps a bad u32 from making
# libfwnt allocate gigabytes.
MAX_OUT_SIZE = 1 << 20

_pyfwnt_decompress: Optional[Callable[[bytes, int], bytes]]
try:
    import pyfwnt

    _pyfwnt_decompress = pyfwnt.lzxpress_decompress
except ImportError:  # pragma: no cover - depends on the installation
    _pyfwnt_decompress = None

# Anything with the buffer protocol; an int is refused (bytes(5) would be five zeros).
BytesLike = Union[bytes, bytearray, memoryview]

AVAILABLE_BACKENDS: tuple[str, ...] = (
    ("pyfwnt", "python") if _pyfwnt_decompress is not None else ("python",)
)


class XpressError(GuestMemoryFormatError):
    """An XPRESS stream that does not decode to exactly the expected number of bytes.

    ``input_offset`` is the position in the compressed stream where decoding failed and
    ``output_offset`` the number of bytes produced by then (``None`` when the backend does
    not say). ``structure``, ``offset`` and ``key_path`` are for callers that know where
    the stream lives in the file.
    """

    def __init__(
        self,
        message: str,
        *,
        input_offset: Optional[int] = None,
        output_offset: Optional[int] = None,
        structure: str = "XPRESS stream",
        offset: Optional[int] = None,
        key_path: Optional[str] = None,
    ) -> None:
        self.input_offset = input_offset
        self.output_offset = output_offset
        where = []
        if input_offset is not None:
            where.append(f"input byte {input_offset}")
        if output_offset is not None:
            where.append(f"output byte {output_offset}")
        if where:
            message = f"{message} (at {', '.join(where)})"
        super().__init__(message, structure=structure, offset=offset, key_path=key_path)


def _as_bytes(data: BytesLike) -> bytes:
    # memoryview() refuses ints and str, which bytes() would turn into something.
    return data if type(data) is bytes else bytes(memoryview(data))


def _fail(message: str, ip: int, op: int) -> XpressError:
    return XpressError(message, input_offset=ip, output_offset=op)


def decompress_pure(data: BytesLike, out_size: int) -> bytes:
    """Decode an XPRESS stream to exactly ``out_size`` bytes in pure Python.

    ``data`` is any bytes-like object. Decoding stops as soon as ``out_size`` bytes exist
    (trailing input, such as the end-marker flag bits, is ignored). Truncated input, a
    distance reaching before the start of the output, a match running past ``out_size``
    and input ending before ``out_size`` bytes all raise :class:`XpressError`; no other
    exception escapes for any input.
    """
    if out_size < 0:
        raise XpressError(f"negative output size {out_size}")
    src = _as_bytes(data)
    end = len(src)
    out = bytearray()
    op = 0  # == len(out); kept in a local because len() costs a call per token
    ip = 0
    flags = 0  # the flag bits not yet consumed; consumed bits are cleared
    nbits = 0  # how many flag bits remain (the low ``nbits`` bits of ``flags``)
    half_byte_at = -1  # input position of a shared length byte whose high nibble is free

    while op < out_size:
        if nbits == 0:
            if ip + 4 > end:
                if ip == end:
                    raise _fail(f"input ended after {op} of {out_size} output bytes", ip, op)
                raise _fail("truncated flag word", ip, op)
            flags = int.from_bytes(src[ip : ip + 4], "little")
            ip += 4
            nbits = 32

        # A run of clear flag bits is a run of literals: copy it with one slice instead
        # of one byte per loop turn (this is most of the speed on incompressible pages).
        run = nbits - flags.bit_length()
        if run:
            run = min(run, out_size - op)
            if ip + run > end:
                raise _fail(f"input ended after {op} of {out_size} output bytes", end, op)
            out += src[ip : ip + run]
            ip += run
            op += run
            nbits -= run
            if not nbits or op >= out_size:
                continue
            # Otherwise the run stopped at a set bit: fall through to the match, saving
            # a loop turn per literal run.

        # The top remaining flag bit is set: a match, or the end of the stream when the
        # input is exhausted ([MS-XCA] 2.4.4).
        nbits -= 1
        flags ^= 1 << nbits
        if ip + 2 > end:
            if ip == end:
                raise _fail(f"stream ended after {op} of {out_size} output bytes", ip, op)
            raise _fail("truncated match token", ip, op)
        token = src[ip] | (src[ip + 1] << 8)
        ip += 2
        distance = (token >> 3) + 1
        length = token & 7
        if length == 7:
            # Two consecutive extended lengths share one byte: low nibble first.
            if half_byte_at < 0:
                if ip >= end:
                    raise _fail("truncated length nibble", ip, op)
                length = src[ip] & 15
                half_byte_at = ip
                ip += 1
            else:
                length = src[half_byte_at] >> 4
                half_byte_at = -1
            if length == 15:
                if ip >= end:
                    raise _fail("truncated length byte", ip, op)
                length = src[ip]
                ip += 1
                if length == 255:
                    if ip + 2 > end:
                        raise _fail("truncated 16-bit length", ip, op)
                    length = src[ip] | (src[ip + 1] << 8)
                    ip += 2
                    if length == 0:
                        if ip + 4 > end:
                            raise _fail("truncated 32-bit length", ip, op)
                        length = int.from_bytes(src[ip : ip + 4], "little")
                        ip += 4
                    # The wide forms hold the whole length minus 3; below 15 + 7 they
                    # would go negative, which [MS-XCA] 2.4.4 calls an error.
                    if length < 22:
                        raise _fail(f"wide match length field {length} is below 22", ip, op)
                    length -= 22
                length += 15
            length += 7
        length += 3

        start = op - distance
        if start < 0:
            raise _fail(f"match distance {distance} reaches before the start", ip, op)
        if length > out_size - op:
            raise _fail(f"match of {length} bytes overruns the {out_size}-byte output", ip, op)
        if distance >= length:
            out += out[start : start + length]
        else:
            # Overlapping copy: the byte-by-byte copy of the spec repeats the last
            # ``distance`` bytes, so build the repetition in one go.
            pattern = out[start:]
            out += (pattern * (length // distance + 1))[:length]
        op += length

    return bytes(out)


def _decompress_pyfwnt(data: bytes, out_size: int) -> bytes:
    assert _pyfwnt_decompress is not None
    try:
        result = _pyfwnt_decompress(data, out_size)
    except Exception as exc:  # libfwnt raises OSError, ValueError, OverflowError, ...
        raise XpressError(f"libfwnt: {' '.join(str(exc).split())}") from exc
    if len(result) != out_size:
        raise XpressError(f"stream decoded to {len(result)} bytes, expected {out_size}")
    return result


_BACKENDS: dict[str, Callable[[bytes, int], bytes]] = {"python": decompress_pure}
if _pyfwnt_decompress is not None:
    _BACKENDS["pyfwnt"] = _decompress_pyfwnt

BACKEND: str = AVAILABLE_BACKENDS[0]
_active: Callable[[bytes, int], bytes] = _BACKENDS[BACKEND]


def set_backend(name: str) -> str:
    """Select the decoder used by :func:`decompress`; returns the previous backend name.

    ``name`` is ``"pyfwnt"`` or ``"python"``; asking for pyfwnt when it did not import
    raises ValueError.
    """
    global BACKEND, _active, _fallback_logged
    if name not in _BACKENDS:
        raise ValueError(f"XPRESS backend {name!r} not available (have {AVAILABLE_BACKENDS})")
    previous = BACKEND
    BACKEND = name
    _active = _BACKENDS[name]
    _fallback_logged = False
    return previous


_fallback_logged = False


def _log_fallback() -> None:
    """Say once (per backend switch) that pages are decoded by the slow pure decoder."""
    global _fallback_logged
    _fallback_logged = True
    if _pyfwnt_decompress is None:
        _log.warning(
            "XPRESS pages are decoded by the pure-Python fallback, many times slower than "
            "libfwnt-python, which could not be imported (pip install libfwnt-python)"
        )
    else:
        _log.info("XPRESS pages are decoded by the pure-Python decoder (asked for)")


_forced = os.environ.get("VMRS_XPRESS_BACKEND")
if _forced:
    set_backend(_forced)


def decompress(data: BytesLike, out_size: int) -> bytes:
    """Decode an XPRESS (plain LZ77) stream to exactly ``out_size`` bytes.

    Uses the backend named by :data:`BACKEND`. Raises :class:`XpressError` for any stream
    that does not yield exactly ``out_size`` bytes, and for ``out_size`` outside
    ``0 … MAX_OUT_SIZE``.
    """
    if not 0 <= out_size <= MAX_OUT_SIZE:
        raise XpressError(f"output size {out_size} outside 0 … {MAX_OUT_SIZE}")
    if out_size == 0:
        return b""
    if not _fallback_logged and BACKEND == "python":
        _log_fallback()
    return _active(_as_bytes(data), out_size)
