"""Every vmrs.* plugin and the stacker on cases of the malformed legacy corpus.

As ``test_malformed_plugins.py`` does for ``.vmrs`` cases: each run goes through
Volatility's own automagic, in-process (:mod:`fuzz.plugin_harness`), and must end within
5 s with rows or the pack's one-line refusal. A ``.bin`` the reader rejects is explained
by one ERROR line; one that opens with damage gets the one WARNING line; plugins that
need processor state refuse in one line (a ``.bin`` alone has none).
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from fuzz.plugin_harness import PACK_PLUGINS, run_pack_plugin
from volatility3_vmrs.refusal import PluginRefusal
from volatility3_vmrs.savedstate.provider import SavedStateDump

CORPUS = Path(__file__).resolve().parent / "malformed"
MANIFEST: List[Dict[str, Any]] = json.loads((CORPUS / "legacy_manifest.json").read_text())["cases"]
# Every rejected case (cheap: the stacker refuses at once), and one opening case per kind
# of damage (each costs six plugin runs through the automagic).
OPENING = {
    "legacy-entry-data-past-end.bin.gz",
    "legacy-name-not-ramblock.bin.gz",
    "legacy-duplicate-block-numbers.bin.gz",
    "legacy-overlapping-data.bin.gz",
    "legacy-block-number-beyond-map.bin.gz",
    "legacy-odd-unknown-fields.bin.gz",
    "legacy-stream-invalid-tag.bin.gz",
    "legacy-stream-bad-xpress.bin.gz",
}
CASES = [case for case in MANIFEST if case["outcome"] == "error" or case["file"] in OPENING]
NEEDS_PROCESSORS = {"vmrs.registers.Registers", "vmrs.vtop.Vtop"}
SHOW_ROWS = {"vmrs.info.Info", "vmrs.memmap.Memmap"}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("malformed-legacy")
    for case in CASES:
        data = gzip.decompress((CORPUS / case["file"]).read_bytes())
        (directory / case["file"].removesuffix(".gz")).write_bytes(data)
    return directory


def test_the_chosen_cases_exist():
    assert OPENING <= {case["file"] for case in MANIFEST}


@pytest.mark.parametrize("case", CASES, ids=[case["file"] for case in CASES])
def test_every_plugin_on_the_cases(case: Dict[str, Any], corpus_dir: Path):
    path = corpus_dir / case["file"].removesuffix(".gz")
    rejected = case["outcome"] == "error"
    problems = ()
    if not rejected:
        with SavedStateDump(io.BytesIO(path.read_bytes())) as dump:
            problems = dump.diagnostics.problems
    for plugin in PACK_PLUGINS:
        outcome = run_pack_plugin(path, plugin)
        where = f"{case['file']} {plugin}"
        assert outcome.seconds < 5, f"{where}: {outcome.seconds:.1f} s"
        if rejected:
            assert isinstance(outcome.error, PluginRefusal), (where, outcome.error)
            errors = outcome.lines(40)
            assert len(errors) == 1 and "Hyper-V saved state not usable" in errors[0], where
            if case["error"] != "NotALegacyBinError":  # else the container reader explains
                assert case["message"] in errors[0], (where, errors)
            continue
        if plugin in NEEDS_PROCESSORS:
            assert isinstance(outcome.error, PluginRefusal), (where, outcome.error)
            assert "a legacy .bin holds guest memory only" in str(outcome.error), where
        elif plugin == "vmrs.config.Config":  # a .bin alone holds no configuration keys
            assert isinstance(outcome.error, PluginRefusal), (where, outcome.error)
            assert "no VM configuration" in str(outcome.error), where
        else:
            assert outcome.error is None, (where, repr(outcome.error))
        if plugin in SHOW_ROWS:
            assert outcome.rows > 0, where
        damage = [line for line in outcome.lines() if "integrity problems" in line]
        assert len(damage) == (1 if problems else 0), (where, outcome.lines())
