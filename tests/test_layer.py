"""The Volatility layer and stacker: in-process stacking and the installed stock `vol`."""

from __future__ import annotations

import json
import logging
import pickle
import random
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import volatility3.framework.automagic  # noqa: F401  (the stock OS stackers)
from volatility3 import framework
from volatility3.framework import contexts, exceptions
from volatility3.framework.automagic import stacker
from volatility3.framework.layers import intel, lime, physical

import volatility3_vmrs.layers  # noqa: F401  (one import registers the stacker)
from tests.support.guests import LINUX_6_1_0, SELF_REF_INDEX, windows_guest
from tests.support.partition_writer import simple_partition
from tests.support.savedstate_writer import SavedStateWriter
from tests.support.vol import run_vol
from volatility3_vmrs.layers.vmrs import VmrsLayer, vp_layer
from volatility3_vmrs.savedstate.types import PAGING_MODE

REPO = Path(__file__).resolve().parent.parent
framework.import_files(sys.modules["volatility3.framework.layers"])
framework.import_files(sys.modules["volatility3.framework.automagic"])


def stack(path: Path):
    context = contexts.Context()
    context.config["FileLayer.location"] = path.resolve().as_uri()
    context.add_layer(physical.FileLayer(context, "FileLayer", "FileLayer"))
    names = stacker.LayerStacker.stack_layer(context, "FileLayer")
    return context, names


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def vmrs_layer_of(context, names) -> VmrsLayer:
    found = [context.layers[n] for n in names if isinstance(context.layers[n], VmrsLayer)]
    assert len(found) == 1, names
    return found[0]


WINDOWS_CLASSES = {
    PAGING_MODE.Paging_Long: intel.WindowsIntel32e,
    PAGING_MODE.Paging_Pae: intel.WindowsIntelPAE,
    PAGING_MODE.Paging_32Bit: intel.WindowsIntel,
}


@pytest.mark.parametrize(
    "mode,options",
    [
        (PAGING_MODE.Paging_Long, {}),
        (PAGING_MODE.Paging_Long, {"pcid": 0x7}),
        (PAGING_MODE.Paging_Long, {"compression": "xpress"}),
        (PAGING_MODE.Paging_Pae, {}),
        (PAGING_MODE.Paging_32Bit, {}),
    ],
    ids=["x64", "x64-pcid", "x64-xpress", "pae", "x86"],
)
def test_windows_guest_stacks_with_the_dtb_from_cr3(tmp_path, mode, options):
    guest = windows_guest(mode, **options)
    context, names = stack(write(tmp_path, "guest.vmrs", guest.data))
    top = context.layers[names[0]]
    assert type(top) is WINDOWS_CLASSES[mode], names
    vmrs = vmrs_layer_of(context, names)
    assert names[1:] == [vmrs.name, "FileLayer"]
    assert top.config["page_map_offset"] == guest.dtb
    metadata = vmrs.metadata
    assert metadata["os"] == "Windows"
    assert metadata["page_map_offset"] == guest.dtb
    assert metadata["architecture"] == ("Intel64" if mode == PAGING_MODE.Paging_Long else "Intel32")
    if mode != PAGING_MODE.Paging_Long:
        assert metadata["pae"] == (mode == PAGING_MODE.Paging_Pae)
    if options.get("pcid"):
        assert guest.cr3 != guest.dtb and guest.cr3 & 0xFFF == 0x7
    for va, content in guest.known.items():
        assert top.read(va, len(content)) == content
    # The layer's own metadata: the shared class-level dict stays untouched.
    assert "page_map_offset" not in VmrsLayer._direct_metadata


def test_cr3_with_bit_63_and_pcid_is_masked(tmp_path):
    base = windows_guest(PAGING_MODE.Paging_Long)
    guest = windows_guest(PAGING_MODE.Paging_Long, cr3_override=base.dtb | (1 << 63) | 0x3)
    context, names = stack(write(tmp_path, "guest.vmrs", guest.data))
    assert context.layers[names[0]].config["page_map_offset"] == base.dtb


def test_cr3_that_fails_the_check_is_not_published(tmp_path):
    guest = windows_guest(PAGING_MODE.Paging_Long, cr3_override=0x200000)
    context, names = stack(write(tmp_path, "guest.vmrs", guest.data))
    vmrs = vmrs_layer_of(context, names)
    assert "page_map_offset" not in vmrs.metadata
    assert "no single self-referencing entry" in vmrs.dtb_note
    # Nothing stacked a Windows layer on a guessed DTB of 0x200000.
    for name in names:
        assert context.layers[name].config.get("page_map_offset") != 0x200000


def test_no_self_reference_no_dtb(tmp_path):
    guest = windows_guest(PAGING_MODE.Paging_Long, self_reference=False)
    context, names = stack(write(tmp_path, "guest.vmrs", guest.data))
    assert "page_map_offset" not in vmrs_layer_of(context, names).metadata
    assert not isinstance(context.layers[names[0]], intel.Intel)


def test_linux_guest_publishes_no_dtb(tmp_path):
    guest = windows_guest(PAGING_MODE.Paging_Long, os_id=LINUX_6_1_0)
    context, names = stack(write(tmp_path, "guest.vmrs", guest.data))
    vmrs = vmrs_layer_of(context, names)
    assert vmrs.metadata["os"] == "Linux" and "page_map_offset" not in vmrs.metadata


def test_physical_layer_holes_and_reads(tmp_path):
    guest = windows_guest(PAGING_MODE.Paging_Long)
    context, names = stack(write(tmp_path, "guest.vmrs", guest.data))
    vmrs = vmrs_layer_of(context, names)
    low, high = guest.ranges
    assert vmrs.minimum_address == 0 and vmrs.maximum_address == high[0] + len(high[1]) - 1
    assert vmrs.read(0x5000, 32) == low[1][0x5000:0x5020]
    assert vmrs.is_valid(0x3FFFFF) and not vmrs.is_valid(0x400000)
    assert not vmrs.is_valid(0x3FFFFF, 2)
    with pytest.raises(exceptions.InvalidAddressException) as caught:
        vmrs.read(0x3FFFF0, 32)
    assert caught.value.invalid_address == 0x400000
    assert vmrs.read(0x3FFFF0, 32, pad=True) == low[1][-16:] + bytes(16)


def test_per_vp_layer(tmp_path):
    guest = windows_guest(PAGING_MODE.Paging_Long, vtls=(0, 1))
    context, names = stack(write(tmp_path, "guest.vmrs", guest.data))
    vmrs = vmrs_layer_of(context, names)
    name, mode = vp_layer(context, vmrs.name, 1)
    assert mode == PAGING_MODE.Paging_Long and isinstance(context.layers[name], intel.Intel32e)
    va, content = next(iter(guest.known.items()))
    assert context.layers[name].read(va, 64) == content[:64]
    assert vp_layer(context, vmrs.name, 1) == (name, mode)  # built once
    self_map_va = guest.builder.self_reference_va(SELF_REF_INDEX)
    assert context.layers[name].read(self_map_va, 8) == guest.builder.read(guest.dtb, 8)


def test_config_only_file_stacks_an_empty_layer_and_says_so(sample_paths, caplog):
    with caplog.at_level(logging.INFO):
        context, names = stack(sample_paths["openvmm-88D07DD7.VMRS"])
    assert names == ["VmrsLayer", "FileLayer"]
    layer = context.layers[names[0]]
    assert not layer.is_valid(0) and layer.metadata["os"] == "Unknown"
    with pytest.raises(exceptions.InvalidAddressException, match="holds no guest memory"):
        layer.read(0, 1)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("holds no guest memory or processor state" in m for m in messages), messages


def test_other_files_are_declined_silently_and_others_still_stack(tmp_path, caplog):
    rng = random.Random(3)
    raw = write(tmp_path, "raw.bin", rng.randbytes(0x20000))
    payload = rng.randbytes(0x10000)
    lime_file = write(
        tmp_path,
        "image.lime",
        struct.pack("<IIQQQ", 0x4C694D45, 1, 0x1000, 0x1000 + len(payload) - 1, 0) + payload,
    )
    with caplog.at_level(logging.DEBUG, logger="volatility3_vmrs"):
        _, names = stack(raw)
        assert names == ["FileLayer"]
        context, names = stack(lime_file)
    assert isinstance(context.layers[names[0]], lime.LimeLayer)
    assert context.layers[names[0]].read(0x1000, 16) == payload[:16]
    assert not [r for r in caplog.records if r.name.startswith("volatility3_vmrs")]


def test_concurrent_reads_from_threads(tmp_path):
    guest = windows_guest(PAGING_MODE.Paging_Long, compression="xpress")
    context, names = stack(write(tmp_path, "guest.vmrs", guest.data))
    vmrs = vmrs_layer_of(context, names)
    vmrs.dump.memory_block_cache_limit = 1  # force evictions while threads read
    low = guest.ranges[0][1]
    errors = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            offset = rng.randrange(0, len(low) - 9000)
            if vmrs.read(offset, 9000) != low[offset : offset + 9000]:
                errors.append(offset)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_layer_survives_pickling(tmp_path):
    guest = windows_guest(PAGING_MODE.Paging_Long, compression="xpress")
    context, names = stack(write(tmp_path, "guest.vmrs", guest.data))
    vmrs = vmrs_layer_of(context, names)
    clone = pickle.loads(pickle.dumps(vmrs))
    assert clone.read(0x5000, 4096) == guest.ranges[0][1][0x5000:0x6000]
    assert clone.metadata["page_map_offset"] == guest.dtb


# --- the installed stock vol ---------------------------------------------------------
def banner_guest() -> bytes:
    """A Linux-ID guest whose RAM holds banners, one across a page boundary."""
    banner = b"Linux version 6.1.0-vmrs-test (builder@example) (gcc 12) #1 SMP\n\0"
    low = bytearray(random.Random(4).randbytes(0x300000))
    low[0x2FF0 : 0x2FF0 + len(banner)] = banner
    high = bytearray(0x100000)
    high[0x800 : 0x800 + len(banner)] = banner
    _, blob = simple_partition(2, os_id=LINUX_6_1_0)
    data, _ = SavedStateWriter(
        [(0, bytes(low)), (0x1_0000_0000, bytes(high))], blob, compression="xpress"
    ).build()
    return data


@pytest.fixture(scope="module")
def banner_file(tmp_path_factory):
    return write(tmp_path_factory.mktemp("banner"), "linux.vmrs", banner_guest())


def test_vol_lists_the_pack(vol_cache):
    proc = run_vol(["-h"], cache=vol_cache)
    for plugin in ("vmrs.info.Info",):
        assert plugin in proc.stdout


def test_vol_runs_on_a_vmrs_and_the_parallel_modes_agree(banner_file, vol_cache):
    # volatility3 2.28.2's own "threads" mode fails in every scan (it asks the threading
    # module for a Pool), whatever the layer; threads are covered in-process below.
    outputs = {}
    for mode in ("off", "processes"):
        proc = run_vol(
            ["--parallelism", mode, "-r", "json", "-f", str(banner_file), "banners.Banners"],
            cache=vol_cache,
        )
        outputs[mode] = proc.stdout
    assert outputs["off"] == outputs["processes"]
    assert outputs["off"].count("Linux version 6.1.0-vmrs-test") == 2
    assert "0x100000800" in outputs["off"] or str(0x1_0000_0800) in outputs["off"]


def test_save_config_round_trip(banner_file, vol_cache, tmp_path):
    config = tmp_path / "config.json"
    first = run_vol(
        ["--save-config", str(config), "-f", str(banner_file), "vmrs.info.Info"], cache=vol_cache
    )
    assert config.is_file() and "VmrsLayer" in config.read_text()
    second = run_vol(["-c", str(config), "vmrs.info.Info"], cache=vol_cache)
    assert first.stdout == second.stdout and "Linux 6.1.0" in first.stdout


def test_config_only_file_info_works_and_memory_plugins_say_why(sample_paths, vol_cache):
    sample = str(sample_paths["openvmm-88D07DD7.VMRS"])
    info = run_vol(["-r", "json", "-f", sample, "vmrs.info.Info"], cache=vol_cache)
    rows = json.loads(info.stdout[info.stdout.index("[") :])
    assert {"Field": "Guest memory", "Value": "none in this file"} in [
        {k: row[k] for k in ("Field", "Value")} for row in rows
    ]
    proc = run_vol(["-f", sample, "windows.pslist"], cache=vol_cache, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "faulty layer" not in proc.stderr
    assert "holds no guest memory or processor state" in proc.stderr


def test_readme_example_script(banner_file):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "run_plugin.py"),
            str(banner_file),
            "vmrs.info.Info",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Guest OS\tLinux 6.1.0" in proc.stdout
    assert "Virtual processors\t2" in proc.stdout


def test_a_bad_cr3_on_the_first_kernel_vp_falls_back_to_another_kernel_vp(tmp_path):
    # VP 0 (kernel) has a CR3 that fails the Windows check, VP 1 is in user mode, VP 2
    # (kernel) holds the real one: the layer publishes VP 2's.
    probe = windows_guest(PAGING_MODE.Paging_Long, vp_count=3, seed=9)
    guest = windows_guest(PAGING_MODE.Paging_Long, vp_count=3, seed=9, cr3_by_vp={0: 0x7000})
    assert guest.dtb == probe.dtb
    context, names = stack(write(tmp_path, "bad-vp0.vmrs", guest.data))
    layer = vmrs_layer_of(context, names)
    assert layer.metadata["page_map_offset"] == guest.dtb
    assert layer.vp_index == 2 and "VP 2" in layer.dtb_note
