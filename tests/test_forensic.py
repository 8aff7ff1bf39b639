"""Forensic soundness: the evidence is never modified, and broken files fail in one clear line."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from tests.support.container_writer import ContainerWriter, ReplayEntry
from tests.support.guests import windows_guest
from tests.support.partition_writer import simple_partition
from tests.support.savedstate_writer import SavedStateWriter
from tests.support.vol import run_vol
from volatility3_vmrs.savedstate import structs as S
from volatility3_vmrs.savedstate.storage import HyperVStorage
from volatility3_vmrs.savedstate.types import PAGING_MODE

OLD_TIME = 1_000_000_000  # evidence timestamps far in the past: any touch would show


def fingerprint(path: Path) -> tuple:
    stat = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mtime_ns, stat.st_size


def evidence(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    os.chmod(path, 0o644)  # writable on purpose: only the code's discipline protects it
    os.utime(path, (OLD_TIME, OLD_TIME))
    return path


def pending_replay_guest() -> bytes:
    """A Hyper-V-flavour saved state whose replay log still holds a pending entry."""
    _, blob = simple_partition(2)
    ram = [(0, bytes(range(256)) * 4096)]

    def build(version: int, entries=()):
        writer = SavedStateWriter(
            ram,
            blob,
            flavour="hyperv",
            replay_entries=entries,
            extra_keys={"/savedstate/counter": version},
        )
        return writer.build()

    new, info = build(2)
    old, _ = build(1)
    table = info.container.layout["table_offsets"][0]
    assert new[table : table + 0x1000] != old[table : table + 0x1000]
    data, _ = build(1, [ReplayEntry(table, new[table : table + 0x1000])])
    assert HyperVStorage(io.BytesIO(data)).replay_log.applied_entries == 1
    return data


def damaged_checksums(data: bytes) -> bytes:
    """The same file with a bad key-table header checksum and a bad object-table entry."""
    image = bytearray(data)
    image[S.ROOT_OBJECT_TABLE_OFFSET + 8 + 18 * 5 + 1] ^= 0xFF
    storage = HyperVStorage(io.BytesIO(data))
    first_table = min(offset for offset, _ in storage.key_table_info.values())
    image[first_table + 6] ^= 0xFF
    return bytes(image)


PACK_PLUGINS = [
    ["vmrs.info.Info"],
    ["vmrs.registers.Registers"],
    ["vmrs.memmap.Memmap"],
    ["vmrs.keys.Keys", "--dump"],
    ["vmrs.pescan.PEScan", "--virtual"],
    ["vmrs.vtop.Vtop", "--address", "0xfffff80000010000"],
]
STOCK_PLUGINS = [["linux.pslist.PsList"], ["windows.info.Info"]]


@pytest.fixture(scope="module")
def evidence_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("evidence")
    guest = windows_guest(PAGING_MODE.Paging_Long, compression="xpress")
    return {
        "xpress": evidence(directory, "guest.vmrs", guest.data),
        "pending-replay-log": evidence(directory, "pending.vmrs", pending_replay_guest()),
        "checksum-failures": evidence(directory, "damaged.vmrs", damaged_checksums(guest.data)),
    }


@pytest.mark.parametrize("kind", ["xpress", "pending-replay-log", "checksum-failures"])
def test_evidence_is_untouched_by_every_plugin(kind, evidence_files, vol_cache, tmp_path):
    path = evidence_files[kind]
    before = fingerprint(path)
    for plugin in PACK_PLUGINS + STOCK_PLUGINS:
        output = tmp_path / plugin[0]
        output.mkdir()
        proc = run_vol(["-o", str(output), "-f", str(path), *plugin], cache=vol_cache, check=False)
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        if plugin[0].startswith("vmrs."):
            assert proc.returncode == 0, f"{plugin}: {proc.stderr[-3000:]}"
        assert fingerprint(path) == before, f"{plugin} changed the evidence"
    assert fingerprint(path) == before


def test_integrity_problems_are_shown_by_vmrs_info(evidence_files, vol_cache):
    damaged = run_vol(
        ["-f", str(evidence_files["checksum-failures"]), "vmrs.info.Info"], cache=vol_cache
    )
    assert "Checksum failures\t2" in damaged.stdout
    assert "key table at file offset" in damaged.stdout
    assert "object table entry at file offset" in damaged.stdout
    pending = run_vol(
        ["-f", str(evidence_files["pending-replay-log"]), "vmrs.info.Info"], cache=vol_cache
    )
    assert "Replay log\tapplied in memory (1 entries)" in pending.stdout


def broken_files(directory: Path) -> dict:
    guest = windows_guest(PAGING_MODE.Paging_Long)
    both_headers = bytearray(guest.data)
    both_headers[4] ^= 1
    both_headers[0x1004] ^= 1
    version = ContainerWriter("openvmm", format_version=0x0300)
    version.set("/savedstate/VmVersion", 0x0A00)
    _, blob = simple_partition(1)
    bad_chunk = bytearray(blob)
    # The first chunk after the envelope claims a length far past the blob.
    bad_chunk[40 + 4 : 40 + 8] = (0x7FFFFFF0).to_bytes(4, "little")
    bad_partition, _ = SavedStateWriter([(0, bytes(0x10000))], bytes(bad_chunk)).build()
    return {
        "both header checksums bad": (
            evidence(directory, "headers.vmrs", bytes(both_headers)),
            "no valid HyperVStorage header",
        ),
        "unknown format version": (
            evidence(directory, "version.vmrs", version.build()),
            "unsupported format version 0x0300",
        ),
        "partition state chunk past the blob": (
            evidence(directory, "chunk.vmrs", bad_partition),
            "/savedstate/savedVM/partition_state",
        ),
    }


def test_broken_files_fail_in_one_clear_line(vol_cache, tmp_path):
    for what, (path, message) in broken_files(tmp_path).items():
        before = fingerprint(path)
        proc = run_vol(["-f", str(path), "vmrs.info.Info"], cache=vol_cache, check=False)
        assert proc.returncode != 0, what
        assert "Traceback" not in proc.stderr, (what, proc.stderr[-3000:])
        ours = [
            line for line in proc.stderr.splitlines() if "Hyper-V saved state not usable" in line
        ]
        assert len(ours) == 1 and message in ours[0], (what, proc.stderr[-2000:])
        assert fingerprint(path) == before
