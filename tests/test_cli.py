"""The ``vmrs`` command, run in-process through ``main([...])`` (and once as installed).

Oracles: dissect.hypervisor for the real containers' keys and values; the test writers'
own inputs (registers, ranges, page kinds) for generated saved states; the malformed
corpus manifest for broken files.
"""

from __future__ import annotations

import collections
import gzip
import io
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import jsonschema
import pytest
from dissect.hypervisor.descriptor.c_hyperv import KeyDataType, c_hyperv
from dissect.hypervisor.descriptor.hyperv import HyperVFile

from tests.support.guests import windows_guest
from volatility3_vmrs.cli import common
from volatility3_vmrs.cli import main as cli_main
from volatility3_vmrs.cli.main import main
from volatility3_vmrs.savedstate.types import PAGING_MODE

CORPUS = Path(__file__).resolve().parent / "malformed"
MANIFEST: List[Dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())["cases"]
CONTAINERS = ("dissect-test.VMRS", "dissect-test.vmcx", "openvmm-88D07DD7.VMRS")
COMMANDS = ("info", "keys", "config", "registers", "memmap", "verify")
# Manifest errors raised while opening the container itself: nothing can be read.
CONTAINER_ERRORS = {"NotAContainerError", "ReplayLogError", "UnsupportedVersionError"}
TIME_LIMIT = 5.0


def run(capsys, *argv: str) -> Tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv: str) -> Tuple[int, Any]:
    code, out, err = run(capsys, *argv, "--json")
    assert "Traceback" not in err
    return code, json.loads(out)


def assert_one_error_line(err: str, command: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"vmrs {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- JSON schemas: the documented keys, all required, no others ----------------------------
def obj(properties: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def nullable(schema: Dict[str, Any]) -> Dict[str, Any]:
    return {"anyOf": [{"type": "null"}, schema]}


INT, STR, BOOL = {"type": "integer"}, {"type": "string"}, {"type": "boolean"}
N_INT, N_STR = nullable(INT), nullable(STR)
SOURCED = nullable(obj({"value": {}, "raw": {}, "key_path": STR}))
DIAGNOSTIC = obj(
    {
        "kind": {
            "enum": [
                "checksum", "signature", "header", "truncated", "object-table", "key-tree",
                "replay-log", "memory", "missing-block", "bad-block", "partition-state",
                "assumption", "companion",
            ]
        },
        "severity": {"enum": ["note", "warning", "error"]},
        "phase": {"enum": ["open", "read"]},
        "structure": STR,
        "offset": N_INT,
        "key_path": N_STR,
        "message": STR,
        "detail": N_STR,
        "text": STR,
    }
)  # fmt: skip
LIST = {"type": "array"}
SCHEMAS = {
    "info": obj(
        {
            "command": {"const": "info"},
            "file": STR,
            "file_size": INT,
            "kind": {"enum": ["saved-state", "configuration-only", "truncated"]},
            "format": STR,
            "container": nullable(
                obj(
                    {
                        "format_version": INT,
                        "format_version_text": STR,
                        "active_header_offset": INT,
                        "sequence": INT,
                        "header_copies_valid": {"type": "array", "items": BOOL},
                        "replay_log": STR,
                        "key_tables": INT,
                        "keys": INT,
                        "truncated": N_STR,
                    }
                )
            ),
            "configuration": nullable(obj({"name": N_STR, "vm_id": N_STR, "version": N_STR})),
            "saved_state": nullable(
                obj(
                    {
                        "vm_version": N_INT,
                        "vm_version_text": N_STR,
                        "type": N_STR,
                        "memory_ranges": N_INT,
                        "guest_ram_bytes": N_INT,
                        "vp_count": N_INT,
                        "enabled_vtls": N_INT,
                        "processors": {
                            "type": "array",
                            "items": obj(
                                {
                                    "vp": INT,
                                    "architecture": N_STR,
                                    "paging_mode": N_STR,
                                    "mode": N_STR,
                                    "active_vtl": N_INT,
                                    "enabled_vtls": N_INT,
                                    "error": N_STR,
                                }
                            ),
                        },
                        "guest_os": nullable(obj({"id": INT, "description": STR})),
                    }
                )
            ),
            "diagnostics": {"type": "array", "items": DIAGNOSTIC},
        }
    ),
    "keys": obj(
        {
            "command": {"const": "keys"},
            "file": STR,
            "path": N_STR,
            "keys": {
                "type": "array",
                "items": obj(
                    {
                        "path": STR,
                        "name": STR,
                        "type": {
                            "enum": [
                                "free",
                                "unknown",
                                "int",
                                "uint",
                                "double",
                                "string",
                                "array",
                                "bool",
                                "node",
                            ]
                        },
                        "size": INT,
                        "file_object": BOOL,
                        "value": {"type": ["null", "integer", "number", "string", "boolean"]},
                        "preview": N_STR,
                        "error": N_STR,
                    }
                ),
            },
        }
    ),
    "config": obj(
        {
            "command": {"const": "config"},
            "file": STR,
            **{
                name: SOURCED
                for name in (
                    "name",
                    "vm_id",
                    "version",
                    "generation",
                    "creation_time",
                    "notes",
                    "owner_sid",
                    "processor_count",
                    "boot_order",
                    "secure_boot",
                    "guest_state_file",
                )
            },
            "memory": obj(
                {
                    name: SOURCED
                    for name in (
                        "startup_bytes",
                        "dynamic_memory_enabled",
                        "minimum_bytes",
                        "maximum_bytes",
                        "buffer_percent",
                        "weight",
                    )
                }
            ),
            "disks": {
                "type": "array",
                "items": obj(
                    {
                        "controller_device": N_STR,
                        "controller_instance": STR,
                        "controller": INT,
                        "drive": INT,
                        "type": SOURCED,
                        "path": SOURCED,
                        "key_path": STR,
                    }
                ),
            },
            "network_adapters": {
                "type": "array",
                "items": obj(
                    {
                        "instance_id": STR,
                        "key_path": STR,
                        **{
                            name: SOURCED
                            for name in (
                                "name",
                                "mac_address",
                                "mac_address_static",
                                "switch_name",
                                "connection_switch_name",
                                "connected",
                            )
                        },
                    }
                ),
            },
            "file_locations": {"type": "object", "additionalProperties": SOURCED},
            "checkpoints": obj({"count": SOURCED, "entries": {"type": "array", "items": SOURCED}}),
            "devices": {
                "type": "array",
                "items": obj(
                    {
                        "vdev": STR,
                        "name": N_STR,
                        "device_id": N_STR,
                        "instance_id": N_STR,
                        "key_path": STR,
                        "settings_path": N_STR,
                    }
                ),
            },
            "problems": {"type": "array", "items": STR},
        }
    ),
    "registers": obj(
        {
            "command": {"const": "registers"},
            "file": STR,
            "registers": {
                "type": "array",
                "items": obj(
                    {
                        "vp": INT,
                        "vtl": INT,
                        "register": STR,
                        "value": N_INT,
                        "selector": N_INT,
                        "base": N_INT,
                        "limit": N_INT,
                        "attributes": N_INT,
                        "decoded": N_STR,
                        "error": N_STR,
                    }
                ),
            },
        }
    ),
    "memmap": obj(
        {
            "command": {"const": "memmap"},
            "file": STR,
            "page_size": {"const": 4096},
            "ranges": {
                "type": "array",
                "items": obj(
                    {
                        "range": INT,
                        "key_path": STR,
                        "gpa_start": INT,
                        "gpa_end": INT,
                        "pages": INT,
                        "size": INT,
                        "saved_ram_offset": INT,
                        "first_block": INT,
                        "last_block": INT,
                        "missing_blocks": obj({"count": INT, "first": LIST}),
                        "page_kinds": nullable(
                            obj({k: INT for k in ("raw", "fill", "xpress", "missing", "bad")})
                        ),
                        "flags": {"type": "array", "items": STR},
                    }
                ),
            },
        }
    ),
    "verify": obj(
        {
            "command": {"const": "verify"},
            "file": STR,
            "intact": BOOL,
            "checked": {
                "type": "object",
                "required": ["key_tables", "keys", "values_decoded", "partition_state"],
                "properties": {
                    "partition_state": {"enum": ["absent", "parsed", "unreadable", "truncated"]},
                    **{
                        name: INT
                        for name in (
                            "key_tables",
                            "keys",
                            "values_decoded",
                            "memory_ranges",
                            "ramblocks",
                            "pages_decoded",
                        )
                    },
                },
                "additionalProperties": False,
            },
            "damage": {"type": "array", "items": DIAGNOSTIC},
            "notes": {"type": "array", "items": DIAGNOSTIC},
        }
    ),
}


def checked_json(capsys, command: str, *argv: str) -> Tuple[int, Any]:
    code, document = run_json(capsys, command, *argv)
    jsonschema.validate(document, SCHEMAS[command])
    return code, document


# --- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guest():
    return windows_guest(PAGING_MODE.Paging_Long, vtls=(0, 1), compression="xpress", seed=7)


@pytest.fixture(scope="module")
def guest_file(guest, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "guest.vmrs"
    path.write_bytes(guest.data)
    return path


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory) -> Dict[str, Path]:
    directory = tmp_path_factory.mktemp("corpus")
    files = {}
    for case in MANIFEST:
        path = directory / case["file"][: -len(".gz")]
        path.write_bytes(gzip.decompress((CORPUS / case["file"]).read_bytes()))
        files[case["file"]] = path
    return files


def dissect_paths(path: Path) -> collections.Counter:
    """Every live key entry dissect finds, as its path of names (siblings not numbered)."""
    with open(path, "rb") as handle:
        container = HyperVFile(handle)
        paths: collections.Counter = collections.Counter()
        for tables in container.key_tables.values():
            for entry in tables[0].entries:
                if entry.type == KeyDataType.Free:
                    continue
                names = []
                while entry is not None:
                    names.append(entry.key)
                    entry = entry.parent
                paths["/" + "/".join(reversed(names))] += 1
    return paths


SIBLING_NUMBER = re.compile(r"\[(\d+)\]$")


# --- keys ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONTAINERS)
def test_keys_json_lists_exactly_the_keys_dissect_finds(capsys, sample_paths, name):
    code, document = checked_json(capsys, "keys", sample_paths[name])
    assert code == 0
    listed = [row["path"] for row in document["keys"]]
    assert len(listed) == len(set(listed))
    unnumbered = collections.Counter(
        "/".join(SIBLING_NUMBER.sub("", part) for part in path.split("/")) for path in listed
    )
    assert unnumbered == dissect_paths(sample_paths[name])
    # Siblings sharing a name are numbered 0 (no suffix), [1], [2], ... in order.
    groups: Dict[str, List[int]] = collections.defaultdict(list)
    for path in listed:
        parent, _, last = path.rpartition("/")
        match = SIBLING_NUMBER.search(last)
        groups[parent + "/" + SIBLING_NUMBER.sub("", last)].append(
            int(match.group(1)) if match else 0
        )
    assert all(numbers == list(range(len(numbers))) for numbers in groups.values())


def test_keys_values_equal_dissect(capsys, sample_paths):
    path = sample_paths["dissect-test.vmcx"]
    code, document = checked_json(capsys, "keys", path, "--path", "/configuration/properties")
    assert code == 0
    with open(path, "rb") as handle:
        properties = HyperVFile(handle).as_dict()["configuration"]["properties"]
    rows = {row["name"]: row for row in document["keys"] if row["type"] != "node"}
    assert set(rows) == set(properties)
    for name, value in properties.items():
        assert rows[name]["value"] == (None if isinstance(value, bytes) else value), name
    code, out, _ = run(capsys, "keys", path, "--path", "/configuration/properties/na")
    assert code == 0 and "/configuration/properties/name" in out and "version" not in out


def test_keys_dump_writes_the_value_to_a_new_file_only(capsys, sample_paths, tmp_path):
    path = sample_paths["dissect-test.vmcx"]
    key = "/configuration/properties/creation_time"
    out = tmp_path / "value.bin"
    code, text, _ = run(capsys, "keys", path, "--dump", key, "-o", out)
    assert code == 0 and "wrote 8 bytes" in text
    with open(path, "rb") as handle:
        expected = HyperVFile(handle).as_dict()["configuration"]["properties"]["creation_time"]
    assert out.read_bytes() == expected
    code, _, err = run(capsys, "keys", path, "--dump", key, "-o", out)
    assert code == 2 and "exists; it is not overwritten" in assert_one_error_line(err, "keys")
    assert out.read_bytes() == expected
    copy = tmp_path / "copy.vmcx"
    shutil.copyfile(path, copy)
    code, _, err = run(capsys, "keys", copy, "--dump", key, "-o", copy)
    assert code == 2 and "is the input file" in assert_one_error_line(err, "keys")
    assert copy.read_bytes() == Path(path).read_bytes()
    for argv, fragment in (
        (("--dump", key), "needs -o OUT"),
        (("--dump", "/configuration", "-o", tmp_path / "n"), "is a node"),
        (("--dump", "/nope", "-o", tmp_path / "n"), "no key /nope"),
        (("-o", tmp_path / "n"), "only for --dump"),
        (("--path", "/nope"), "no key matches"),
    ):
        code, _, err = run(capsys, "keys", path, *argv)
        assert code == 2 and fragment in assert_one_error_line(err, "keys"), argv
    assert not (tmp_path / "n").exists()


# --- config --------------------------------------------------------------------------------
def test_config_shows_name_id_memory_processors_and_disk(capsys, sample_paths):
    path = sample_paths["dissect-test.vmcx"]
    with open(path, "rb") as handle:
        configuration = HyperVFile(handle).as_dict()["configuration"]
    properties = configuration["properties"]
    settings = configuration["settings"]
    disk_paths = [
        drive["pathname"]
        for device in configuration.values()
        if isinstance(device, dict)
        for controller, drives in device.items()
        if controller.startswith("controller")
        for drive in drives.values()
        if drive["pathname"]
    ]
    assert disk_paths
    code, out, err = run(capsys, "config", path)
    assert code == 0 and err == ""
    startup = settings["memory"]["bank"]["size"] * 1024 * 1024
    for text in (
        properties["name"],
        properties["global_id"],
        f"{startup} bytes",
        *disk_paths,
    ):
        assert text in out, text
    assert re.search(rf"^Processors\s+{settings['processors']['count']}$", out, re.M)
    code, document = checked_json(capsys, "config", path)
    assert code == 0
    assert document["name"] == {
        "value": properties["name"],
        "raw": None,
        "key_path": "/configuration/properties/name",
    }
    assert document["memory"]["startup_bytes"]["value"] == startup
    assert [d["path"]["value"] for d in document["disks"] if d["path"]["value"]] == disk_paths


@pytest.mark.parametrize("name", ["dissect-test.VMRS", "openvmm-88D07DD7.VMRS"])
def test_config_of_runtime_state_shows_absent_fields_as_absent(capsys, sample_paths, name):
    code, document = checked_json(capsys, "config", sample_paths[name])
    assert code == 0
    assert document["version"]["key_path"] == "/configuration/properties/version"
    assert document["name"] is None and document["memory"]["startup_bytes"] is None
    code, out, _ = run(capsys, "config", sample_paths[name])
    assert re.search(r"^VM name\s+-$", out, re.M)


# --- info ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONTAINERS)
def test_info_on_configuration_only_containers(capsys, sample_paths, name):
    code, document = checked_json(capsys, "info", sample_paths[name])
    assert code == 0
    assert document["kind"] == "configuration-only" and document["saved_state"] is None
    assert document["container"]["keys"] == sum(dissect_paths(sample_paths[name]).values())
    assert document["diagnostics"] == []
    code, out, _ = run(capsys, "info", sample_paths[name])
    assert "none: the file holds configuration only" in out


def test_info_registers_memmap_on_a_saved_state(capsys, guest, guest_file):
    code, document = checked_json(capsys, "info", guest_file)
    assert code == 0 and document["kind"] == "saved-state"
    state = document["saved_state"]
    assert state["vp_count"] == len(guest.registers)
    assert state["memory_ranges"] == len(guest.info.ranges)
    assert state["guest_ram_bytes"] == sum(r.pages for r in guest.info.ranges) * 4096
    assert [p["paging_mode"] for p in state["processors"]] == ["Paging_Long"] * 2


def test_info_and_verify_on_the_legacy_bin_sample(capsys):
    from tests.conftest import samples_dir

    path = str(samples_dir() / "vmsavedstatedump-rs-test_file.bin")
    code, document = checked_json(capsys, "info", path)
    assert code == 0 and document["kind"] == "saved-state"
    assert document["format"].startswith("legacy") and document["container"] is None
    assert document["saved_state"]["guest_ram_bytes"] == 252 << 20
    assert {d["kind"] for d in document["diagnostics"]} == {"assumption", "companion"}
    code, document = checked_json(capsys, "verify", path)
    assert code == 0 and document["intact"] and document["checked"]["pages_decoded"] == 64512


def test_registers_equal_the_written_registers(capsys, guest, guest_file):
    code, document = checked_json(
        capsys, "registers", guest_file, "--vp", "1", "--vtl", "1", "--register", "rip", "cs"
    )
    assert code == 0
    rows = {r["register"]: r for r in document["registers"]}
    assert set(rows) == {"Rip", "SegCs"}
    regs = guest.registers[1][1]
    assert rows["Rip"]["value"] == regs["rip"]
    cs = regs["cs"]
    assert (rows["SegCs"]["selector"], rows["SegCs"]["base"], rows["SegCs"]["limit"]) == (
        cs.selector, cs.base, cs.limit,
    )  # fmt: skip
    assert rows["SegCs"]["attributes"] == cs.attributes and rows["SegCs"]["value"] == cs.selector
    code, document = checked_json(capsys, "registers", guest_file)
    assert {(r["vp"], r["vtl"]) for r in document["registers"]} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    cr3 = [r for r in document["registers"] if r["register"] == "Cr3" and r["vtl"] == 0]
    assert [r["value"] for r in cr3] == [guest.registers[i][0]["cr3"] for i in (0, 1)]
    for argv, fragment in (
        (("--vp", "9"), "no virtual processor 9"),
        (("--vtl", "2"), "no register state for VTL 2"),
        (("--register", "bogus"), "unknown register name(s): bogus"),
        (("--vp", "x"), "invalid int value"),
    ):
        code, _, err = run(capsys, "registers", guest_file, *argv)
        assert code == 2 and fragment in assert_one_error_line(err, "registers"), argv


def test_memmap_equals_the_writer(capsys, guest, guest_file):
    code, document = checked_json(capsys, "memmap", guest_file)
    assert code == 0
    assert len(document["ranges"]) == len(guest.info.ranges)
    for number, (row, written) in enumerate(zip(document["ranges"], guest.info.ranges)):
        counts = guest.info.kind_counts(number)
        assert (row["gpa_start"], row["gpa_end"], row["pages"]) == (
            written.gpa, written.gpa + written.pages * 4096, written.pages,
        )  # fmt: skip
        assert row["saved_ram_offset"] == written.mbp_start * 4096
        assert row["page_kinds"] == {
            "raw": counts["raw"], "fill": counts["fill"], "xpress": counts["xpress"],
            "missing": 0, "bad": 0,
        }  # fmt: skip
    code, document = checked_json(capsys, "memmap", guest_file, "--quick")
    assert code == 0 and all(r["page_kinds"] is None for r in document["ranges"])


def test_memmap_names_missing_blocks(capsys, tmp_path):
    dropped = windows_guest(PAGING_MODE.Paging_Long, seed=4, drop_blocks=[2])
    path = tmp_path / "dropped.vmrs"
    path.write_bytes(dropped.data)
    code, document = checked_json(capsys, "memmap", path)
    assert code == 0
    first = document["ranges"][0]
    assert first["missing_blocks"] == {"count": 1, "first": [2]}
    assert first["page_kinds"]["missing"] == 256
    code, out, _ = run(capsys, "memmap", path)
    assert "0-3 (1 absent: 2)" in out
    code, document = checked_json(capsys, "verify", path)
    assert code == 1
    assert any("RamBlock(s) missing (2)" in d["message"] for d in document["damage"])


# --- verify --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONTAINERS)
def test_verify_real_containers_are_intact(capsys, sample_paths, name):
    code, document = checked_json(capsys, "verify", sample_paths[name])
    assert code == 0 and document["intact"] and document["damage"] == []
    assert document["checked"]["keys"] == sum(dissect_paths(sample_paths[name]).values())
    code, out, _ = run(capsys, "verify", sample_paths[name])
    assert code == 0 and out.rstrip().endswith("intact")


def test_verify_names_a_flipped_byte_in_a_key_table(capsys, sample_paths, tmp_path):
    original = Path(sample_paths["dissect-test.vmcx"]).read_bytes()
    with open(sample_paths["dissect-test.vmcx"], "rb") as handle:
        container = HyperVFile(handle)
        table = container.key_tables[max(container.key_tables)][0]
        entry = next(e for e in table.entries if e.type != KeyDataType.Free)
        entry_offset = table.offset + entry.offset
    flipped = entry_offset + len(c_hyperv.HyperVStorageKeyTableEntryHeader) + 1
    damaged = bytearray(original)
    damaged[flipped] ^= 0x20
    path = tmp_path / "flipped.vmcx"
    path.write_bytes(bytes(damaged))
    code, document = checked_json(capsys, "verify", path)
    assert code == 1 and not document["intact"]
    (item,) = document["damage"]
    assert item["kind"] == "checksum" and item["structure"] == "key entry"
    assert item["offset"] == entry_offset
    code, out, _ = run(capsys, "verify", path)
    assert code == 1 and f"key entry at file offset {entry_offset:#x}" in out
    assert "1 damaged item(s)" in out


def test_a_truncated_saved_state_is_called_truncated(capsys, guest, tmp_path):
    path = tmp_path / "cut.vmrs"
    path.write_bytes(guest.data[: len(guest.data) // 2])
    code, document = checked_json(capsys, "info", path)
    assert code == 0 and document["kind"] == "truncated"
    assert document["container"]["truncated"].startswith("truncated: ")
    code, out, _ = run(capsys, "info", path)
    assert "configuration only" not in out and "the file is truncated" in out
    code, document = checked_json(capsys, "verify", path)
    assert code == 1 and document["checked"]["partition_state"] == "truncated"
    assert any(d["kind"] == "truncated" for d in document["damage"])
    for command in ("registers", "memmap"):
        code, _, err = run(capsys, command, path)
        assert code == 2 and "truncated: " in assert_one_error_line(err, command)


def test_verify_random_bytes_is_unusable(capsys, tmp_path):
    path = tmp_path / "random.vmrs"
    path.write_bytes(random.Random(11).randbytes(0x10000))
    for command in COMMANDS:
        code, _, err = run(capsys, command, path)
        assert code == 2, command
        assert "no valid HyperVStorage header" in assert_one_error_line(err, command)


def test_verify_decodes_every_ramblock(capsys, guest, guest_file, tmp_path):
    code, document = checked_json(capsys, "verify", guest_file)
    assert code == 0 and document["intact"]
    checked = document["checked"]
    assert checked["partition_state"] == "parsed"
    assert checked["pages_decoded"] == sum(r.pages for r in guest.info.ranges)
    # A compressed RamBlock whose stream claims more than it holds.
    broken = windows_guest(
        PAGING_MODE.Paging_Long, vtls=(0, 1), compression="xpress", seed=7,
        block_values={1: (0x800).to_bytes(4, "little") + bytes(16)},
    )  # fmt: skip
    path = tmp_path / "broken-block.vmrs"
    path.write_bytes(broken.data)
    code, document = checked_json(capsys, "verify", path)
    assert code == 1
    assert [d["key_path"] for d in document["damage"]] == ["/savedstate/RamBlock1"]


def test_progress_bar_only_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(common.progress(range(3), 3, "RamBlocks")) == [0, 1, 2]
    assert "RamBlocks" in terminal.getvalue()
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    assert list(common.progress(range(3), 3, "RamBlocks")) == [0, 1, 2]
    assert piped.getvalue() == ""


# --- the malformed corpus: every subcommand on every case ----------------------------------
def expected_code(case: Dict[str, Any], command: str) -> int:
    if case["outcome"] == "opens":
        return 1 if command == "verify" else 0
    if case["error"] in CONTAINER_ERRORS:
        return 2
    if case["error"] == "PartitionStateNotFoundError":  # a sound configuration-only file
        return 2 if command in ("registers", "memmap") else 0
    return {"keys": 0, "config": 0, "verify": 1}.get(command, 2)


def damage_texts(document: Dict[str, Any]) -> str:
    return "\n".join(d["text"] for d in document["damage"])


@pytest.mark.parametrize("case", MANIFEST, ids=[case["file"] for case in MANIFEST])
def test_every_command_on_every_malformed_case(capsys, corpus_files, case):
    path = corpus_files[case["file"]]
    for command in COMMANDS:
        started = time.monotonic()
        code, out, err = run(capsys, command, path, "--json")
        assert time.monotonic() - started < TIME_LIMIT, command
        expected = expected_code(case, command)
        assert code == expected, (command, code, err)
        assert "Traceback" not in out + err
        if expected == 2:
            assert case.get("message", "no /savedstate") in assert_one_error_line(err, command)
            assert out == ""
            continue
        assert err == "", (command, err)
        document = json.loads(out)
        jsonschema.validate(document, SCHEMAS[command])
        if command == "verify" and expected == 1 and case["outcome"] == "error":
            assert case["message"] in damage_texts(document)
        if case["outcome"] == "opens" and command in ("verify", "info"):
            found = document["damage"] if command == "verify" else document["diagnostics"]
            for wanted in case["warnings"]:
                assert any(
                    d["kind"] == wanted["kind"]
                    and d["structure"] == wanted["structure"]
                    and wanted["message"] in d["message"]
                    for d in found
                ), (command, wanted)


# --- the command line itself ---------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, prog, fragment",
    [
        ([], "vmrs", "a subcommand is required"),
        (["bogus"], "vmrs", "invalid choice: 'bogus'"),
        (["info"], "vmrs info", "the following arguments are required: file"),
        (["keys", "x", "--nope"], "vmrs", "unrecognized arguments: --nope"),
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys, argv, prog, fragment):
    code, _, err = run(capsys, *argv)
    assert code == 2
    line = err.splitlines()[-1]
    assert line.startswith(f"{prog}: error: ") and fragment in line
    assert "Traceback" not in err


def test_missing_file_and_directory(capsys, tmp_path):
    for command in COMMANDS:
        code, _, err = run(capsys, command, tmp_path / "absent.vmrs")
        assert code == 2 and "No such file" in assert_one_error_line(err, command)
        code, _, err = run(capsys, command, tmp_path)
        assert code == 2
        assert_one_error_line(err, command)


def test_vmgs_file_is_named(capsys, tmp_path):
    path = tmp_path / "vm.vmgs"
    path.write_bytes(b"GUESTRTS" + bytes(0x3000))
    code, _, err = run(capsys, "info", path)
    assert code == 2 and "a .vmgs guest-state file" in assert_one_error_line(err, "info")


def test_optional_subcommands_only_when_present(monkeypatch):
    monkeypatch.setattr(cli_main, "OPTIONAL_SUBCOMMANDS", ("no_such_cmd",))
    _parser, owners = cli_main.build_parser()
    assert set(owners) == {"info", "keys", "config", "registers", "memmap", "verify"}


def test_installed_console_script(sample_paths):
    script = Path(sys.executable).parent / "vmrs"
    result = subprocess.run(
        [str(script), "config", str(sample_paths["dissect-test.vmcx"]), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"]["value"] == "Other Location"
    result = subprocess.run([str(script), "verify", "/nonexistent"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("vmrs verify: error: ")
