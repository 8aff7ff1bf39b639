"""An XPRESS (plain LZ77, [MS-XCA] section 2.3) compressor for the tests.

Hyper-V's own compressor is not available, so the decoders are tested against streams
written here. The stream layout, as the decoder in [MS-XCA] 2.4.4 reads it:

* a little-endian u32 flag word precedes every 32 items; its bits, from bit 31 down, say
  literal (0) or match (1) for each item; after the last item the remaining flag bits are
  set to 1, which the decoder takes as "end of stream" once the input is used up;
* a literal is one byte;
* a match is a u16 token ``(distance - 1) << 3 | min(length - 3, 7)``, followed by the
  length extension when ``length - 3 >= 7``.

Match length thresholds (``v = length - 3``), derived from the decoder's arithmetic:

====================  =======================================================
length                encoding
====================  =======================================================
3 … 9                 token only (``v`` in the low 3 bits)
10 … 24               token 7 + a 4-bit nibble ``v - 7`` (0 … 14)
25 … 279              token 7 + nibble 15 + one byte ``v - 22`` (0 … 254)
280 … 65538           token 7 + nibble 15 + byte 255 + u16 ``v`` (277 … 65535)
65539 and more        token 7 + nibble 15 + byte 255 + u16 0 + u32 ``v``
====================  =======================================================

Nibbles are shared: the first match that needs one writes a new byte after its token and
uses the low nibble; the next such match stores its nibble in the high half of that same
byte and writes no nibble byte of its own.

Distances run from 1 to 8192 (13 bits). The matcher is greedy with hash chains on 3-byte
prefixes; it favours speed and determinism over ratio, which is all the tests need.
"""

from __future__ import annotations

from typing import NamedTuple, Union

MIN_MATCH = 3
MAX_DISTANCE = 8192


class Match(NamedTuple):
    distance: int
    length: int


# A literal run is kept as one bytes object; the encoder still writes one flag per byte.
Token = Union[bytes, Match]


def length_form(length: int, *, wide_u32: bool = False) -> str:
    """Name the length encoding the encoder uses: token, nibble, byte, u16 or u32."""
    v = length - MIN_MATCH
    if v < 0:
        raise ValueError(f"match length {length} below {MIN_MATCH}")
    if v < 7:
        return "token"
    if v < 7 + 15:
        return "nibble"
    if v < 7 + 15 + 255:
        return "byte"
    if v < 1 << 16 and not wide_u32:
        return "u16"
    return "u32"


def _common_length(data: bytes, earlier: int, here: int, limit: int) -> int:
    """Length of the common prefix of data[earlier:] and data[here:], at most ``limit``.

    The first MIN_MATCH bytes are known to agree (same hash key). Grows the probe
    exponentially then bisects, so each step is one slice comparison done in C.
    """
    good = MIN_MATCH
    step = 8
    while True:
        probe = min(good + step, limit)
        if data[earlier : earlier + probe] != data[here : here + probe]:
            bad = probe
            break
        good = probe
        if good == limit:
            return good
        step *= 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if data[earlier : earlier + mid] == data[here : here + mid]:
            good = mid
        else:
            bad = mid
    return good


def tokenize(data: bytes, *, max_distance: int = MAX_DISTANCE, max_chain: int = 16) -> list[Token]:
    """Greedy LZ77 parse of ``data`` into literal runs and matches.

    Overlapping matches (distance < length) come out naturally for runs, since the
    comparison is done on the input itself.
    """
    if not 1 <= max_distance <= MAX_DISTANCE:
        raise ValueError(f"max_distance must be 1 … {MAX_DISTANCE}")
    n = len(data)
    chains: dict[bytes, list[int]] = {}
    tokens: list[Token] = []
    literal_start = 0
    i = 0
    while i + MIN_MATCH <= n:
        key = data[i : i + MIN_MATCH]
        candidates = chains.get(key)
        best_length = 0
        best_distance = 0
        if candidates:
            limit = n - i
            for earlier in reversed(candidates[-max_chain:]):
                distance = i - earlier
                if distance > max_distance:
                    break
                # A candidate can only win if it also matches at the current best length.
                if best_length and data[earlier + best_length] != data[i + best_length]:
                    continue
                length = _common_length(data, earlier, i, limit)
                if length > best_length:
                    best_length, best_distance = length, distance
                    if length == limit:
                        break
        if best_length:
            if literal_start < i:
                tokens.append(data[literal_start:i])
            tokens.append(Match(best_distance, best_length))
            # Index the positions the match covers so later data can refer into it; a
            # long run only needs its tail (older entries would be too far or redundant).
            first = max(i, i + best_length - 2 * max_chain)
            for j in range(first, min(i + best_length, n - MIN_MATCH + 1)):
                chains.setdefault(data[j : j + MIN_MATCH], []).append(j)
            i += best_length
            literal_start = i
        else:
            if candidates is None:
                chains[key] = [i]
            else:
                candidates.append(i)
            i += 1
    if literal_start < n:
        tokens.append(data[literal_start:n])
    return tokens


def encode(tokens: list[Token], *, wide_u32: bool = False) -> bytes:
    """Write tokens as an XPRESS stream.

    ``wide_u32`` writes every length that needs more than one extension byte in the u32
    form (u16 field 0, then u32), which [MS-XCA] decoders accept for any such length;
    the tests use it to reach that branch with page-sized outputs. Matches are not
    checked against the data: callers can write invalid distances on purpose.
    """
    out = bytearray(4)
    flag_at = 0  # where the current flag word goes
    flags = 0
    count = 0
    half_byte_at = -1  # a shared length byte whose high nibble is still free

    def add_flag(bit: int) -> None:
        nonlocal flags, count, flag_at
        flags = (flags << 1) | bit
        count += 1
        if count == 32:
            out[flag_at : flag_at + 4] = flags.to_bytes(4, "little")
            flag_at = len(out)
            out.extend(b"\0\0\0\0")
            flags = 0
            count = 0

    def add_nibble(nibble: int) -> None:
        nonlocal half_byte_at
        if half_byte_at < 0:
            half_byte_at = len(out)
            out.append(nibble)
        else:
            out[half_byte_at] |= nibble << 4
            half_byte_at = -1

    for token in tokens:
        if isinstance(token, Match):
            distance, length = token
            if not 1 <= distance <= MAX_DISTANCE:
                raise ValueError(f"distance {distance} not encodable")
            v = length - MIN_MATCH
            form = length_form(length, wide_u32=wide_u32)
            out.extend((((distance - 1) << 3) | min(v, 7)).to_bytes(2, "little"))
            if form == "nibble":
                add_nibble(v - 7)
            elif form != "token":
                add_nibble(15)
                if form == "byte":
                    out.append(v - 22)
                else:
                    out.append(255)
                    if form == "u16":
                        out.extend(v.to_bytes(2, "little"))
                    else:
                        out.extend(b"\0\0")
                        out.extend(v.to_bytes(4, "little"))
            # The flag goes in after the payload: a full flag word is flushed by
            # add_flag and the next one must be reserved after this item's bytes.
            add_flag(1)
        else:
            for byte in token:
                out.append(byte)
                add_flag(0)

    # Fill the unused flag bits with 1: a set bit with no input left ends the stream.
    free = 32 - count
    flags = (flags << free) | ((1 << free) - 1)
    out[flag_at : flag_at + 4] = flags.to_bytes(4, "little")
    return bytes(out)


def compress(data: bytes, *, max_distance: int = MAX_DISTANCE, wide_u32: bool = False) -> bytes:
    """Compress ``data`` to an XPRESS (plain LZ77) stream."""
    return encode(tokenize(bytes(data), max_distance=max_distance), wide_u32=wide_u32)
