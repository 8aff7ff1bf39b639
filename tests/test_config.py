"""The VM configuration decoded from a container's keys, against dissect.hypervisor.

dissect.hypervisor (an independent parser of the same container) gives the expected
values: each field must equal what dissect reads at the key path the field names.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import struct

import pytest
from dissect.hypervisor.descriptor.hyperv import HyperVFile

from tests.support.container_writer import ContainerWriter
from volatility3_vmrs.savedstate import open_storage
from volatility3_vmrs.savedstate.config import Sourced, VmConfiguration, read_configuration


def dissect_value(tree: dict, path: str):
    """The value dissect holds at ``/a/b/c`` (KeyError when absent)."""
    node = tree
    for part in path.strip("/").split("/"):
        node = node[part]
    return node


@pytest.fixture(scope="module")
def vmcx(sample_paths):
    with open(sample_paths["dissect-test.vmcx"], "rb") as handle:
        tree = HyperVFile(handle).as_dict()
    with open_storage(sample_paths["dissect-test.vmcx"]) as storage:
        config = read_configuration(storage)
    return config, tree


def every_sourced(value, found=None):
    """Every Sourced inside the model (dataclasses, tuples)."""
    found = [] if found is None else found
    if isinstance(value, Sourced):
        found.append(value)
    elif dataclasses.is_dataclass(value):
        for item in dataclasses.fields(value):
            every_sourced(getattr(value, item.name), found)
    elif isinstance(value, tuple):
        for item in value:
            every_sourced(item, found)
    return found


def test_vmcx_fields_equal_dissect_at_their_key_paths(vmcx):
    config, tree = vmcx
    sourced = every_sourced(config)
    assert len(sourced) >= 30
    for item in sourced:
        stored = dissect_value(tree, item.key_path)
        if isinstance(stored, dict):  # a node: the boot order
            assert item.value == tuple(stored[k] for k in sorted(stored, key=lambda n: int(n[6:])))
        elif item.raw is not None:
            if isinstance(stored, bytes):
                stored = struct.unpack("<Q", stored)[0]
            assert item.raw == stored, item
        else:
            assert item.value == stored, item


def test_vmcx_identity_memory_processors_disk(vmcx):
    config, tree = vmcx
    properties = tree["configuration"]["properties"]
    settings = tree["configuration"]["settings"]
    assert config.name.value == properties["name"] and config.name.value
    assert config.vm_id.value == properties["global_id"]
    assert config.version.raw == properties["version"]
    assert config.version.value == f"{properties['version'] >> 8}.{properties['version'] & 0xFF}"
    assert config.processor_count.value == settings["processors"]["count"]
    bank = settings["memory"]["bank"]
    assert config.memory.startup_bytes.value == bank["size"] * 1024 * 1024
    assert config.memory.minimum_bytes.value == bank["reservation"] * 1024 * 1024
    assert config.memory.maximum_bytes.value == bank["limit"] * 1024 * 1024
    assert config.memory.dynamic_memory_enabled.value is bank["dynamic_memory_enabled"]
    assert config.owner_sid.value == tree["configuration"]["global_settings"]["owner"]["sid"]
    # Every drive path dissect holds under a controllerN/driveM node is listed, and no other.
    expected = {
        (name.strip("_"), controller, drive, values["pathname"])
        for name, device in tree["configuration"].items()
        if isinstance(device, dict)
        for controller, drives in device.items()
        if controller.startswith("controller")
        for drive, values in drives.items()
    }
    listed = {
        (d.controller_instance, f"controller{d.controller}", f"drive{d.drive}", d.path.value)
        for d in config.disks
    }
    assert listed == expected
    assert any(d.path.value.lower().endswith(".vhdx") for d in config.disks)


def test_vmcx_creation_time_is_the_filetime_in_utc(vmcx):
    config, tree = vmcx
    raw = tree["configuration"]["properties"]["creation_time"]
    ticks = struct.unpack("<Q", raw)[0]
    unix_seconds, rest = divmod(ticks - 116444736000000000, 10_000_000)
    moment = datetime.datetime.fromtimestamp(unix_seconds, tz=datetime.timezone.utc)
    expected = moment.replace(microsecond=rest // 10).isoformat().replace("+00:00", "Z")
    assert config.creation_time.value == expected
    assert config.creation_time.raw == ticks


def test_vmcx_network_boot_and_state_file(vmcx):
    config, tree = vmcx
    (adapter,) = config.network_adapters
    device = tree["configuration"][f"_{adapter.instance_id}_"]
    assert adapter.name.value == device["FriendlyName"]
    assert adapter.mac_address.value == device["MacAddress"]
    assert adapter.mac_address_static.value is device["MacAddressIsStatic"]
    assert adapter.switch_name.value == device["SwitchName"]
    assert adapter.connection_switch_name.value == device["Connection"]["AltSwitchName"]
    assert config.boot_order.value and len(config.boot_order.value) == 4
    assert config.guest_state_file.value.lower().endswith(".vmgs")
    assert config.generation.value == 1 and config.generation.raw == 0
    assert config.checkpoints.count.value == 0 and config.checkpoints.entries == ()
    names = {d.name for d in config.devices}
    assert "Microsoft Emulated IDE Controller" in names
    assert config.problems == ()


@pytest.mark.parametrize("name", ["dissect-test.VMRS", "openvmm-88D07DD7.VMRS"])
def test_runtime_state_files_hold_only_the_version(sample_paths, name):
    with open_storage(sample_paths[name]) as storage:
        config = read_configuration(storage)
    with open(sample_paths[name], "rb") as handle:
        version = HyperVFile(handle).as_dict()["configuration"]["properties"]["version"]
    assert config.version.raw == version
    assert dataclasses.replace(config, version=None) == VmConfiguration()
    assert not config.empty


def _container(values: dict) -> bytes:
    writer = ContainerWriter("openvmm")
    for path, value in values.items():
        writer.set(path, value)
    return writer.build()


def test_wrong_types_are_absent_and_reported_never_guessed():
    data = _container(
        {
            "/configuration/properties/name": 5,
            "/configuration/properties/version": "nine",
            "/configuration/properties/creation_time": b"\x01\x02",
            "/configuration/properties/subtype": 7,
            "/configuration/settings/processors/count": 4,
        }
    )
    with open_storage(io.BytesIO(data)) as storage:
        config = read_configuration(storage)
    assert config.name is None and config.version is None and config.creation_time is None
    assert config.generation is None
    assert config.processor_count.value == 4
    text = "\n".join(config.problems)
    for fragment in ("properties/name: type INT", "version: type STRING", "2 bytes", "subtype 7"):
        assert fragment in text


def test_filetime_zero_is_not_a_date_and_model_is_frozen():
    data = _container({"/configuration/properties/creation_time": bytes(8)})
    with open_storage(io.BytesIO(data)) as storage:
        config = read_configuration(storage)
    assert config.creation_time == Sourced(None, "/configuration/properties/creation_time", 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = Sourced("x", "/")  # type: ignore[misc]


def test_container_without_configuration_is_empty():
    with open_storage(io.BytesIO(_container({"/savedstate/VmVersion": 0x0A00}))) as storage:
        assert read_configuration(storage).empty


# --- the vmrs.config plugin in the stock vol -------------------------------------------------
def test_vol_config_plugin_shows_the_configuration_of_a_saved_state(
    sample_paths, tmp_path, vol_cache
):
    """A saved state carrying the .vmcx sample's /configuration keys: vol shows them."""
    from tests.support.container_writer import UInt
    from tests.support.guests import windows_guest
    from tests.support.plugin_runner import run_vol
    from volatility3_vmrs.savedstate.storage import KeyType
    from volatility3_vmrs.savedstate.types import PAGING_MODE

    extra = {}
    with open_storage(sample_paths["dissect-test.vmcx"]) as storage:
        for key in storage.walk("/configuration"):
            if key.is_node or "[" in key.path or key.path == "/configuration/properties/version":
                continue
            extra[key.path] = UInt(key.value) if key.type == KeyType.UINT else key.value
    guest = windows_guest(PAGING_MODE.Paging_Long, extra_keys=extra)
    path = tmp_path / "configured.vmrs"
    path.write_bytes(guest.data)
    rows = {row["Setting"]: row for row in run_vol(vol_cache, path, "vmrs.config").json_rows()}
    with open(sample_paths["dissect-test.vmcx"], "rb") as handle:
        configuration = HyperVFile(handle).as_dict()["configuration"]
    assert rows["VM name"]["Value"] == configuration["properties"]["name"]
    assert rows["VM name"]["Key path"] == "/configuration/properties/name"
    assert rows["Processors"]["Value"] == str(configuration["settings"]["processors"]["count"])
    startup = configuration["settings"]["memory"]["bank"]["size"] * 1024 * 1024
    assert rows["Startup memory (bytes)"]["Value"] == str(startup)
    disk = configuration["_83f8638b-8dca-4152-9eda-2ca8b33039b4_"]["controller0"]["drive0"]
    assert rows["Disk Microsoft Emulated IDE Controller 0:0 path"]["Value"] == disk["pathname"]


def test_vol_config_plugin_on_a_vmcx(sample_paths, vol_cache):
    """Configuration-only containers stack (an empty layer): vmrs.config reads the .vmcx."""
    from tests.support.plugin_runner import run_vol

    path = sample_paths["dissect-test.vmcx"]
    rows = run_vol(vol_cache, path, "vmrs.config").json_rows()
    with open(path, "rb") as handle:
        configuration = HyperVFile(handle).as_dict()["configuration"]
    by_path = {row["Key path"]: row["Value"] for row in rows}
    assert by_path["/configuration/properties/name"] == configuration["properties"]["name"]
    count = configuration["settings"]["processors"]["count"]
    assert by_path["/configuration/settings/processors/count"] == str(count)
    assert not any(row["Setting"] == "Problem" for row in rows)
