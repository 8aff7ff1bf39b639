"""The malformed legacy ``.bin`` corpus (tests/malformed/legacy-*.bin.gz) does what its
manifest says: the named exception, or the named warnings and notes, the blocks left
unreadable, and the page streams that fail to decode; the other blocks still decode,
both whole (``legacy.decode_block``) and through :class:`SavedStateDump`. The files come
from ``tests/malformed/make_legacy_corpus.py``.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from tests.malformed import make_legacy_corpus
from volatility3_vmrs.savedstate import errors
from volatility3_vmrs.savedstate import legacy as L
from volatility3_vmrs.savedstate import memory as M
from volatility3_vmrs.savedstate.diagnostics import Diagnostic, Diagnostics, Kind, Severity
from volatility3_vmrs.savedstate.errors import (
    GuestMemoryFormatError,
    MemoryReadError,
    VmrsError,
    VmrsFormatError,
)
from volatility3_vmrs.savedstate.provider import SavedStateDump
from volatility3_vmrs.savedstate.source import ReadOnlySource

CORPUS = Path(__file__).resolve().parent / "malformed"
MANIFEST: List[Dict[str, Any]] = json.loads((CORPUS / "legacy_manifest.json").read_text())["cases"]
IDS = [case["file"] for case in MANIFEST]


def _data(case: Dict[str, Any]) -> bytes:
    return gzip.decompress((CORPUS / case["file"]).read_bytes())


def _open(data: bytes) -> Tuple[ReadOnlySource, L.LegacyBin, Diagnostics]:
    source = ReadOnlySource(io.BytesIO(data))
    diag = Diagnostics()
    return source, L.parse_legacy_bin(source, diag), diag


def _has(records: Tuple[Diagnostic, ...], wanted: Dict[str, str]) -> bool:
    return any(
        r.structure == wanted["structure"] and wanted["message"] in r.message for r in records
    )


def test_manifest_and_files_agree():
    assert {case["file"] for case in MANIFEST} == {p.name for p in CORPUS.glob("legacy-*.bin.gz")}
    assert len(MANIFEST) == len(make_legacy_corpus.CASES) >= 20
    for case in MANIFEST:
        assert (CORPUS / case["file"]).stat().st_size < 8 * 1024, case["file"]


def test_generator_reproduces_the_files():
    for name, _, make, _ in make_legacy_corpus.CASES:
        assert make() == gzip.decompress(make_legacy_corpus.case_path(name).read_bytes()), name


def test_base_file_is_clean():
    source, parsed, diag = _open(make_legacy_corpus.base_bin())
    assert parsed.block_numbers == (0, 1, 2) and diag.items == ()
    decoded = b"".join(L.decode_block(source, block) for block in parsed.blocks)
    assert decoded == make_legacy_corpus.base_memory()


@pytest.mark.parametrize("case", MANIFEST, ids=IDS)
def test_case(case: Dict[str, Any]):
    data = _data(case)
    if case["outcome"] == "error":
        with pytest.raises(VmrsError) as caught:
            _open(data)
        expected = getattr(errors, case["error"], None) or getattr(L, case["error"])
        assert type(caught.value) is expected, caught.value
        assert case["message"] in str(caught.value), str(caught.value)
        assert caught.value.offset is not None  # every refusal names where
        return
    source, parsed, diag = _open(data)
    warnings = diag.at_least(Severity.WARNING)
    notes = tuple(item for item in diag if item.severity == Severity.NOTE)
    for wanted in case["warnings"]:
        assert _has(warnings, wanted), (wanted, [str(w) for w in warnings])
    for wanted in case["notes"]:
        assert _has(notes, wanted), (wanted, [str(n) for n in notes])
    if not case["warnings"]:
        assert warnings == ()
    assert all(w.offset is not None and w.kind == Kind.MEMORY for w in warnings)
    unreadable = set(case["unreadable_blocks"])
    assert set(parsed.block_numbers) == {0, 1, 2} - unreadable
    bad = {entry["block"]: entry["message"] for entry in case["bad_streams"]}
    for block in parsed.blocks:
        if block.number in bad:
            with pytest.raises(GuestMemoryFormatError) as caught:
                L.decode_block(source, block)
            assert bad[block.number] in str(caught.value), str(caught.value)
            assert block.name in str(caught.value)
        else:
            assert len(L.decode_block(source, block)) == M.BLOCK_SIZE
    _check_through_the_dump(data, unreadable, bad)


def _check_through_the_dump(data: bytes, unreadable: set, bad: Dict[int, str]) -> None:
    """The same file as a SavedStateDump: unreadable and bad blocks raise, others read."""
    with SavedStateDump(io.BytesIO(data)) as dump:
        for number in (0, 1, 2):
            gpa = number * M.BLOCK_SIZE
            if number in unreadable or number in bad:
                with pytest.raises(MemoryReadError):
                    dump.read_physical(gpa, M.PAGE_SIZE)
                assert not dump.memory.is_readable(gpa)
            else:
                assert len(dump.read_physical(gpa, M.BLOCK_SIZE)) == M.BLOCK_SIZE
        for number, message in bad.items():
            assert any(
                message in item.message and item.key_path == f"RamBlock/{number}/"
                for item in dump.diagnostics.grouped().get(Kind.BAD_BLOCK, [])
            ), [str(item) for item in dump.diagnostics]


@pytest.mark.parametrize("case", MANIFEST, ids=IDS)
def test_case_strict(case: Dict[str, Any]):
    """strict=True raises every warning; notes never fail; refusals stay in the family."""
    data = _data(case)
    if case["outcome"] == "opens" and case["warnings"]:
        with pytest.raises(VmrsFormatError):
            SavedStateDump(io.BytesIO(data), strict=True)
    elif case["outcome"] == "opens":
        SavedStateDump(io.BytesIO(data), strict=True).close()
    else:
        with pytest.raises(VmrsError):
            SavedStateDump(io.BytesIO(data), strict=True)
