"""The one model: diagnostics policy, memory map answers, truncation named.

Each test here failed on the reader before the model (issue "[model]"): strict mode
that ignored partition-state warnings and failed on a replay log that was only a note,
``is_valid`` True for pages of a missing RamBlock, and a truncated saved state reported
as a configuration-only file.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest
from volatility3.framework import contexts, exceptions
from volatility3.framework.layers import physical

from tests.support.partition_writer import build_partition_state, simple_partition
from tests.support.savedstate_writer import SavedStateWriter
from tests.test_storage import pending_log_file
from volatility3_vmrs.layers.vmrs import VmrsStacker
from volatility3_vmrs.savedstate import Kind, SavedStateDump, Severity
from volatility3_vmrs.savedstate.diagnostics import Diagnostics, Phase
from volatility3_vmrs.savedstate.errors import PartitionStateError, TruncatedError
from volatility3_vmrs.savedstate.processors import PartitionState
from volatility3_vmrs.savedstate.storage import HyperVStorage

CORPUS = Path(__file__).resolve().parent / "malformed"
MIB = 1 << 20


def ram(pages: int, seed: int = 1) -> bytes:
    return b"".join(bytes([(seed + i) % 251 + 1]) * 0x1000 for i in range(pages))


def partition(**extra) -> bytes:
    desc, _ = simple_partition(1)
    for name, value in extra.items():
        setattr(desc, name, value)
    return build_partition_state(desc)


def stack(path: Path):
    context = contexts.Context()
    context.config["base.location"] = path.resolve().as_uri()
    context.add_layer(physical.FileLayer(context, "base", "base"))
    return VmrsStacker.stack(context, "base")


# --- one strict policy --------------------------------------------------------------------
def test_a_note_never_fails_strict_mode():
    data = pending_log_file()
    with HyperVStorage(io.BytesIO(data)) as lenient:
        kinds = {(d.kind, d.severity) for d in lenient.diagnostics}
    assert (Kind.REPLAY_LOG, Severity.NOTE) in kinds
    with HyperVStorage(io.BytesIO(data), strict=True) as strict:
        assert strict.replay_log.applied_entries == 1


def test_strict_mode_raises_on_partition_state_warnings_too():
    blob = partition(extra_chunks=[(0x2ABCD000, b"\x01" * 13)])
    lenient = PartitionState.parse(blob)
    assert [d.detail for d in lenient.diagnostics] == ["unknown-chunk"]
    with pytest.raises(PartitionStateError, match="unknown chunk id 0x2abcd000"):
        PartitionState.parse(blob, diagnostics=Diagnostics(strict=True))


def test_memory_warnings_follow_the_same_policy():
    data = SavedStateWriter([(0, ram(512))], partition(), drop_blocks=[1]).build()[0]
    with SavedStateDump(io.BytesIO(data)) as dump:
        (missing,) = dump.diagnostics.problems
        assert missing.kind == Kind.MISSING_BLOCK and missing.severity == Severity.ERROR
    with pytest.raises(Exception, match="RamBlock"):
        SavedStateDump(io.BytesIO(data), strict=True)


def test_bad_pages_found_while_reading_are_diagnostics_of_the_read_phase():
    broken = {0: b"\xff\xff\xff\x00" + bytes(8)}  # invalid record tag: stream undecodable
    data = SavedStateWriter(
        [(0, ram(512))], partition(), compression="xpress", block_values=broken
    ).build()[0]
    with SavedStateDump(io.BytesIO(data)) as dump:
        assert dump.diagnostics.problems == ()  # streams are decoded on first read only
        assert dump.memory.is_readable_span(0, 0x1000)
        with pytest.raises(Exception, match="RamBlock0"):
            dump.read_physical(0, 16)
        (bad,) = dump.diagnostics.problems
        assert bad.kind == Kind.BAD_BLOCK and bad.phase == Phase.READ
        assert not dump.memory.is_readable_span(0, 0x1000)
        assert dump.memory.is_readable_span(MIB, 0x1000)  # the next block is fine
        dump.read_physical(0, 16, pad=True)
        assert len(dump.diagnostics.problems) == 1  # reported once, however often read


# --- the map answers ----------------------------------------------------------------------
def test_pages_of_a_missing_block_are_invalid_in_the_layer(tmp_path):
    path = tmp_path / "missing-ramblock.vmrs"
    path.write_bytes(gzip.decompress((CORPUS / "missing-ramblock.vmrs.gz").read_bytes()))
    layer = stack(path)
    dump = layer.dump
    (absent_range,) = [r for r in dump.memory.map.ranges if dump.memory.map.missing_blocks(r).count]
    inside = absent_range.gpa_start
    assert not layer.is_valid(inside) and not layer.is_valid(inside - 0x10, 0x20)
    with pytest.raises(exceptions.InvalidAddressException):
        layer.read(inside, 1)
    present = dump.memory.map.ranges[0]
    assert present is not absent_range and layer.is_valid(present.gpa_start, 0x1000)
    runs = list(dump.memory.map.readable_runs())
    assert all(not (start <= inside < start + length) for start, length in runs)


def test_a_range_of_2_40_pages_is_answered_without_walking_it():
    data = gzip.decompress((CORPUS / "range-of-2-40-pages.vmrs.gz").read_bytes())
    with SavedStateDump(io.BytesIO(data)) as dump:
        memory_map = dump.memory.map
        huge = max(memory_map.ranges, key=lambda r: r.page_count)
        missing = memory_map.missing_blocks(huge)
        assert missing.count == len(memory_map.block_span(huge)) - len(memory_map.blocks_of(huge))
        assert missing.first == (2, 3, 4, 5, 6, 7, 8, 9)
        assert sum(length for _, length in memory_map.readable_runs()) < 4 * MIB


# --- truncation is named ------------------------------------------------------------------
def test_a_truncated_saved_state_is_called_truncated_not_configuration_only(tmp_path):
    data = SavedStateWriter([(0, ram(4096))], partition()).build()[0]  # 16 MiB of RAM
    assert len(data) > 16 * MIB
    cut = data[:MIB]
    with pytest.raises(TruncatedError) as caught:
        SavedStateDump(io.BytesIO(cut))
    text = str(caught.value)
    assert "truncated:" in text and "past the end of the file" in text
    assert "configuration" not in text and f"size {MIB:#x}" in text
    path = tmp_path / "cut.vmrs"
    path.write_bytes(cut)
    layer = stack(path)
    assert "truncated:" in str(layer.dump.not_a_saved_state())


def test_ram_before_the_cut_stays_readable_and_the_rest_is_missing():
    data = SavedStateWriter([(0, ram(4096))], partition(), keys_first=True).build()[0]
    cut = data[: 6 * MIB]
    with SavedStateDump(io.BytesIO(cut)) as dump:
        kinds = {d.kind for d in dump.diagnostics.problems}
        assert Kind.TRUNCATED in kinds and Kind.MISSING_BLOCK in kinds
        memory_map = dump.memory.map
        assert 0 < len(memory_map.blocks) < 16
        first = min(memory_map.blocks)
        gpa = first * MIB
        assert dump.read_physical(gpa, 0x1000) == ram(4096)[gpa : gpa + 0x1000]
