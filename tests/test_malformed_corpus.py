"""The checked-in malformed corpus (tests/malformed/): each file does what its manifest says.

``manifest.json`` names, for each ``<case>.vmrs.gz``, either the exception class that
opening it with :class:`SavedStateDump` must raise (exactly that class, with a message
fragment), or the integrity warnings (kind, structure, message fragment) the opened
dump must have recorded. The files come from ``tests/malformed/make_corpus.py``.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from volatility3_vmrs.savedstate import errors
from volatility3_vmrs.savedstate.diagnostics import Diagnostic, exception_for
from volatility3_vmrs.savedstate.errors import VmrsError
from volatility3_vmrs.savedstate.provider import SavedStateDump

CORPUS = Path(__file__).resolve().parent / "malformed"
MANIFEST: List[Dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())["cases"]


def _load(case: Dict[str, Any]) -> bytes:
    return gzip.decompress((CORPUS / case["file"]).read_bytes())


def _matches(warning: Diagnostic, wanted: Dict[str, str]) -> bool:
    return (
        warning.kind == wanted["kind"]
        and warning.structure == wanted["structure"]
        and wanted["message"] in warning.message
    )


def test_manifest_and_files_agree():
    listed = {case["file"] for case in MANIFEST}
    present = {path.name for path in CORPUS.glob("*.vmrs.gz")}
    assert listed == present
    assert len(MANIFEST) >= 20


def test_corpus_files_are_small():
    for case in MANIFEST:
        assert (CORPUS / case["file"]).stat().st_size < 8 * 1024, case["file"]
        assert len(_load(case)) < 64 * 1024, case["file"]


@pytest.mark.parametrize("case", MANIFEST, ids=[case["file"] for case in MANIFEST])
def test_case(case: Dict[str, Any]):
    data = _load(case)
    if case["outcome"] == "error":
        expected = getattr(errors, case["error"], None)
        if expected is None:  # classes defined next to their parser (processors.py, ...)
            expected = VmrsError
        with pytest.raises(VmrsError) as caught:
            SavedStateDump(io.BytesIO(data))
        assert type(caught.value).__name__ == case["error"], caught.value
        assert isinstance(caught.value, expected)
        assert case["message"] in str(caught.value)
        return
    assert case["outcome"] == "opens"
    with SavedStateDump(io.BytesIO(data)) as dump:
        recorded = dump.warnings
        for wanted in case["warnings"]:
            assert any(_matches(w, wanted) for w in recorded), (
                f"{case['file']}: no {wanted} among {[str(w) for w in recorded]}"
            )


@pytest.mark.parametrize("case", MANIFEST, ids=[case["file"] for case in MANIFEST])
def test_case_strict_mode_raises_on_the_first_problem(case: Dict[str, Any]):
    """strict=True raises on the first warning or error, as that kind's exception; a file
    whose only findings are notes opens in strict mode too."""
    data = _load(case)
    if case["outcome"] == "error":
        with pytest.raises(VmrsError):
            SavedStateDump(io.BytesIO(data), strict=True)
        return
    with SavedStateDump(io.BytesIO(data)) as lenient:
        problems = lenient.diagnostics.problems
    if not problems:
        SavedStateDump(io.BytesIO(data), strict=True).close()
        return
    with pytest.raises(VmrsError) as caught:
        SavedStateDump(io.BytesIO(data), strict=True)
    first = problems[0]
    assert isinstance(caught.value, exception_for(first.kind)), (first, caught.value)
    assert first.message in str(caught.value)
