"""Every vmrs.* plugin and the stacker on every case of the malformed corpus.

Each run goes through Volatility's own automagic (so the stacker decides), in-process
(:mod:`fuzz.plugin_harness`), and must end within 5 s with rows or with the pack's
refusal; a file the reader rejects is explained by one ERROR line naming the manifest's
message, a damaged file that opens gets the one WARNING line, whatever plugin runs.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from fuzz.plugin_harness import PACK_PLUGINS, run_pack_plugin
from volatility3_vmrs.refusal import PluginRefusal
from volatility3_vmrs.savedstate.provider import SavedStateDump

CORPUS = Path(__file__).resolve().parent / "malformed"
MANIFEST: List[Dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())["cases"]
# Plugins that need memory or processor state refuse a file without them, in one line.
NEEDS_STATE = {"vmrs.memmap.Memmap", "vmrs.registers.Registers", "vmrs.pescan.PEScan"}
NEEDS_STATE |= {"vmrs.vtop.Vtop"}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("malformed")
    for case in MANIFEST:
        data = gzip.decompress((CORPUS / case["file"]).read_bytes())
        (directory / case["file"].removesuffix(".gz")).write_bytes(data)
    return directory


@pytest.mark.parametrize("case", MANIFEST, ids=[case["file"] for case in MANIFEST])
def test_every_plugin_on_every_case(case: Dict[str, Any], corpus_dir: Path):
    path = corpus_dir / case["file"].removesuffix(".gz")
    rejected = case["outcome"] == "error"
    config_only = case["file"].startswith("config-only")
    problems = []
    if not rejected:
        with SavedStateDump(path, require_saved_state=False) as dump:
            problems = dump.diagnostics.problems
    for plugin in PACK_PLUGINS:
        outcome = run_pack_plugin(path, plugin)
        where = f"{case['file']} {plugin}"
        assert outcome.seconds < 5, f"{where}: {outcome.seconds:.1f} s"
        lines = outcome.lines()
        if rejected and not config_only:
            # The stacker says why in one ERROR line; the plugin then refuses.
            assert isinstance(outcome.error, PluginRefusal), (where, outcome.error)
            errors = outcome.lines(40)
            assert len(errors) == 1 and case["message"] in errors[0], (where, errors)
            continue
        if config_only and plugin in NEEDS_STATE:
            assert isinstance(outcome.error, PluginRefusal), (where, outcome.error)
            assert "holds no" in str(outcome.error) or "not a saved state" in str(outcome.error)
            continue
        assert outcome.error is None, (where, repr(outcome.error))
        assert outcome.rows > 0 or plugin == "vmrs.pescan.PEScan", where
        if problems:
            warnings = [line for line in lines if "integrity problems" in line]
            assert len(warnings) == 1, (where, lines)
            assert "vmrs verify" in warnings[0] and "vmrs.info --verify" in warnings[0]
        else:
            assert not any("integrity problems" in line for line in lines), (where, lines)
