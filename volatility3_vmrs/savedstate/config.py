"""The virtual machine's configuration, decoded from the ``/configuration`` key tree.

A ``.vmcx`` file is a HyperVStorage container whose keys describe the VM: its name and
ID, memory, processors, devices. A ``.VMRS`` of a running VM holds a few of the same
keys; a saved state may hold more. :func:`read_configuration` takes an opened container
(:class:`~.storage.HyperVStorage`) and returns an immutable :class:`VmConfiguration`.

Rules:

* Nothing is invented. A key that is absent gives ``None``; a key of an unexpected type
  gives ``None`` and a line in :attr:`VmConfiguration.problems`. An empty string is kept
  as the empty string it is.
* Every value carries the key path it came from (:class:`Sourced`). When the value is
  converted (MiB to bytes, FILETIME to ISO-8601, version number to ``major.minor``), the
  stored value is kept in ``raw``.
* Bounded work: one pass over the children of ``/configuration`` and of the manifest;
  strings longer than :data:`MAX_TEXT_BYTES` are not read.

Where the key names come from (``V`` = present in the real Hyper-V-written
``dissect-test.vmcx`` of the test data, configuration version 9.0; ``D`` = public
third-party readers and strings of Hyper-V's own binaries, not seen in a sample)::

    V  /configuration/properties/name                   VM name (String)
    V  /configuration/properties/global_id              VM ID (String, a GUID)
    V  /configuration/properties/version                configuration version (Int, major<<8|minor)
    V  /configuration/properties/creation_time          8-byte Array: a FILETIME (UTC)
    V  /configuration/properties/subtype                Int; the sample (a generation 1
                                                        VM with BIOS and IDE) holds 0
    D  subtype 1 = generation 2 (a public .vmcx import tool maps 0 -> 1, 1 -> 2)
    V  /configuration/properties/notes                  String
    V  /configuration/settings/memory/bank/size         startup memory (Int, MiB)
    V  .../bank/dynamic_memory_enabled                  Bool
    V  .../bank/reservation, .../bank/limit             minimum and maximum (Int, MiB);
                                                        unit inferred: the sample holds
                                                        Hyper-V's defaults 1024/512/1048576
    V  .../bank/target_memory_buffer, .../bank/priority buffer (%) and weight (Int);
                                                        meaning inferred from the sample's
                                                        values, Hyper-V's defaults 20, 5000
    V  /configuration/settings/processors/count         processor count (Int)
    V  /configuration/global_settings/owner/sid         owner SID (String)
    V  /configuration/global_settings/snapshots/list/size  checkpoint count (Int, 0 in
                                                        the sample; the names of the list
                                                        entries are not known: every other
                                                        child of ``list`` is reported raw)
    D  /configuration/global_settings/data_root, .../snapshots/data_root,
       .../slp_data_root, /configuration/savedstate/vsvlocation, .../memlocation
                                                        file locations (String)
    V  /configuration/manifest/vdevNNN/{device,instance,name}  the virtual devices; each
                                                        instance's settings live under
                                                        /configuration/_<instance>_
    V  _<instance>_/controller<N>/drive<M>/{type,pathname}  drives (type VHD, ISO, VFD,
                                                        NONE) of a storage controller
    V  _<instance>_/{FriendlyName,MacAddress,MacAddressIsStatic,SwitchName,IsConnected}
                                                        a network adapter (a device with a
                                                        MacAddress key)
    V  _<instance>_/Connection/AltSwitchName            switch of the adapter's connection
                                                        (D: a public tool reads the switch
                                                        here; empty in the sample)
    V  _<instance>_/boot/device<N>                      boot order (BIOS device)
    V  _<instance>_/secure_boot_enabled                 secure boot (Bool)
    V  _<instance>_/StateFilePath                       guest-state file (.vmgs) path
"""

from __future__ import annotations

import datetime
import re
import struct
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .storage import HyperVStorage, Key, KeyType

CONFIGURATION = "/configuration"
PROPERTIES = "/configuration/properties"
NAME_PATH = PROPERTIES + "/name"
ID_PATH = PROPERTIES + "/global_id"
VERSION_PATH = PROPERTIES + "/version"
CREATION_TIME_PATH = PROPERTIES + "/creation_time"
SUBTYPE_PATH = PROPERTIES + "/subtype"
NOTES_PATH = PROPERTIES + "/notes"
MEMORY_BANK = "/configuration/settings/memory/bank"
PROCESSOR_COUNT_PATH = "/configuration/settings/processors/count"
OWNER_SID_PATH = "/configuration/global_settings/owner/sid"
CHECKPOINT_LIST = "/configuration/global_settings/snapshots/list"
MANIFEST = "/configuration/manifest"
FILE_LOCATIONS = {
    # field name: key path (all from public sources, none in the sample)
    "data_root": "/configuration/global_settings/data_root",
    "checkpoint_root": "/configuration/global_settings/snapshots/data_root",
    "smart_paging_root": "/configuration/global_settings/slp_data_root",
    "saved_state_vsv": "/configuration/savedstate/vsvlocation",
    "saved_state_bin": "/configuration/savedstate/memlocation",
}
# subtype -> generation (public third-party mapping; 0 seen on a generation 1 sample).
GENERATIONS = {0: 1, 1: 2}
MIB = 1 << 20
MAX_TEXT_BYTES = 0x10000
FILETIME_EPOCH = datetime.datetime(1601, 1, 1, tzinfo=datetime.timezone.utc)
# FILETIME of 9999-12-31: anything later cannot be shown as a date.
MAX_FILETIME = 2650467743999999999

_DEVICE_NODE = re.compile(r"_([0-9A-Fa-f-]{36})_\Z")
_CONTROLLER = re.compile(r"controller(\d{1,4})\Z")
_DRIVE = re.compile(r"drive(\d{1,4})\Z")
_BOOT_DEVICE = re.compile(r"device(\d{1,4})\Z")


@dataclass(frozen=True)
class Sourced:
    """A configuration value and the key it was read from (``raw``: the stored value)."""

    value: Any
    key_path: str
    raw: Any = None

    def to_dict(self) -> Dict[str, Any]:
        return {"value": _plain(self.value), "raw": _plain(self.raw), "key_path": self.key_path}


@dataclass(frozen=True)
class Memory:
    startup_bytes: Optional[Sourced] = None
    dynamic_memory_enabled: Optional[Sourced] = None
    minimum_bytes: Optional[Sourced] = None
    maximum_bytes: Optional[Sourced] = None
    buffer_percent: Optional[Sourced] = None
    weight: Optional[Sourced] = None


@dataclass(frozen=True)
class Device:
    """One entry of the manifest: a virtual device and where its settings are kept."""

    vdev: str
    name: Optional[str]
    device_id: Optional[str]
    instance_id: Optional[str]
    key_path: str
    settings_path: Optional[str]  # /configuration/_<instance>_ when present


@dataclass(frozen=True)
class Disk:
    """A drive slot of a storage controller (``type`` NONE: an empty slot)."""

    controller_device: Optional[str]  # manifest name of the controller, if listed
    controller_instance: str
    controller: int
    drive: int
    type: Optional[Sourced]
    path: Optional[Sourced]
    key_path: str


@dataclass(frozen=True)
class NetworkAdapter:
    instance_id: str
    key_path: str
    name: Optional[Sourced] = None
    mac_address: Optional[Sourced] = None
    mac_address_static: Optional[Sourced] = None
    switch_name: Optional[Sourced] = None
    connection_switch_name: Optional[Sourced] = None
    connected: Optional[Sourced] = None


@dataclass(frozen=True)
class Checkpoints:
    count: Optional[Sourced] = None
    entries: Tuple[Sourced, ...] = ()  # every other child of the list, raw


@dataclass(frozen=True)
class VmConfiguration:
    """What the key tree says about the VM; ``None`` wherever it says nothing."""

    name: Optional[Sourced] = None
    vm_id: Optional[Sourced] = None
    version: Optional[Sourced] = None
    generation: Optional[Sourced] = None
    creation_time: Optional[Sourced] = None
    notes: Optional[Sourced] = None
    owner_sid: Optional[Sourced] = None
    processor_count: Optional[Sourced] = None
    memory: Memory = field(default_factory=Memory)
    disks: Tuple[Disk, ...] = ()
    network_adapters: Tuple[NetworkAdapter, ...] = ()
    boot_order: Optional[Sourced] = None
    secure_boot: Optional[Sourced] = None
    guest_state_file: Optional[Sourced] = None
    file_locations: Tuple[Tuple[str, Sourced], ...] = ()
    checkpoints: Checkpoints = field(default_factory=Checkpoints)
    devices: Tuple[Device, ...] = ()
    problems: Tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the container holds none of the keys read here."""
        return self == VmConfiguration()

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready nested dicts (keys as documented in the README)."""
        result = _plain(self)
        result["file_locations"] = {name: value.to_dict() for name, value in self.file_locations}
        return result


def _plain(value: Any) -> Any:
    if isinstance(value, Sourced):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value


def filetime_to_iso(filetime: int) -> Optional[str]:
    """ISO-8601 UTC text of a FILETIME; ``None`` for 0 (never set) or out of range."""
    if filetime <= 0 or filetime > MAX_FILETIME:
        return None
    moment = FILETIME_EPOCH + datetime.timedelta(microseconds=filetime // 10)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def version_text(version: int) -> str:
    return f"{version >> 8}.{version & 0xFF}"


class _Reader:
    """Typed reads of one container's keys, collecting what does not fit.

    Each method takes a key (or None when it is absent) and returns a :class:`Sourced`
    value, or None when the key is absent or unusable (then a line in ``problems``).
    """

    def __init__(self, storage: HyperVStorage) -> None:
        self.storage = storage
        self.problems: List[str] = []

    def key(self, path: str) -> Optional[Key]:
        return self.storage.get(path) if path in self.storage else None

    def typed(self, key: Optional[Key], types: Iterable[KeyType]) -> Optional[Any]:
        """The key's value if its type is one of ``types``; else None (and a problem)."""
        if key is None:
            return None
        wanted = tuple(types)
        if key.type not in wanted:
            names = "/".join(t.name for t in wanted)
            self.problems.append(f"{key.path}: type {key.type.name}, expected {names}; ignored")
            return None
        if key.type in (KeyType.STRING, KeyType.ARRAY) and key.size > MAX_TEXT_BYTES:
            self.problems.append(f"{key.path}: value of {key.size} bytes is too long; ignored")
            return None
        return key.value

    def text(self, key: Optional[Key]) -> Optional[Sourced]:
        value = self.typed(key, (KeyType.STRING,))
        return None if value is None or key is None else Sourced(value, key.path)

    def integer(
        self, key: Optional[Key], convert: Optional[Callable[[int], Any]] = None
    ) -> Optional[Sourced]:
        value = self.typed(key, (KeyType.INT, KeyType.UINT))
        if value is None or key is None:
            return None
        if convert is None:
            return Sourced(value, key.path)
        return Sourced(convert(value), key.path, value)

    def boolean(self, key: Optional[Key]) -> Optional[Sourced]:
        value = self.typed(key, (KeyType.BOOL,))
        return None if value is None or key is None else Sourced(value, key.path)

    def filetime(self, key: Optional[Key]) -> Optional[Sourced]:
        value = self.typed(key, (KeyType.ARRAY, KeyType.INT, KeyType.UINT))
        if value is None or key is None:
            return None
        if isinstance(value, bytes):
            if len(value) != 8:
                self.problems.append(f"{key.path}: {len(value)} bytes, a FILETIME has 8")
                return None
            value = struct.unpack("<Q", value)[0]
        return Sourced(filetime_to_iso(value), key.path, value)


def _children(key: Optional[Key]) -> List[Key]:
    return list(key.children) if key is not None and key.is_node else []


def _child(key: Optional[Key], name: str) -> Optional[Key]:
    """The first child called ``name`` of a node (None if absent or not a node)."""
    for child in _children(key):
        if child.name == name:
            return child
    return None


def _devices(reader: _Reader) -> Tuple[Device, ...]:
    devices = []
    for entry in _children(reader.key(MANIFEST)):
        if not entry.is_node:
            continue
        name, device_id, instance = (
            reader.text(_child(entry, child)) for child in ("name", "device", "instance")
        )
        instance_id = instance.value.strip("{}").lower() if instance is not None else None
        settings = f"{CONFIGURATION}/_{instance_id}_" if instance_id else None
        devices.append(
            Device(
                vdev=entry.name,
                name=name.value if name is not None else None,
                device_id=device_id.value if device_id is not None else None,
                instance_id=instance_id,
                key_path=entry.path,
                settings_path=settings if settings and settings in reader.storage else None,
            )
        )
    return tuple(devices)


def _numbered(key: Key, pattern: re.Pattern) -> List[Tuple[int, Key]]:
    found = []
    for child in key.children:
        match = pattern.match(child.name)
        if match:
            found.append((int(match.group(1)), child))
    return sorted(found, key=lambda item: item[0])


def _disks(reader: _Reader, node: Key, instance: str, names: Dict[str, str]) -> List[Disk]:
    disks = []
    for controller, controller_key in _numbered(node, _CONTROLLER):
        for drive, drive_key in _numbered(controller_key, _DRIVE):
            if not drive_key.is_node:
                continue
            disks.append(
                Disk(
                    controller_device=names.get(instance),
                    controller_instance=instance,
                    controller=controller,
                    drive=drive,
                    type=reader.text(_child(drive_key, "type")),
                    path=reader.text(_child(drive_key, "pathname")),
                    key_path=drive_key.path,
                )
            )
    return disks


def _adapter(reader: _Reader, node: Key, instance: str) -> NetworkAdapter:
    return NetworkAdapter(
        instance_id=instance,
        key_path=node.path,
        name=reader.text(_child(node, "FriendlyName")),
        mac_address=reader.text(_child(node, "MacAddress")),
        mac_address_static=reader.boolean(_child(node, "MacAddressIsStatic")),
        switch_name=reader.text(_child(node, "SwitchName")),
        connection_switch_name=reader.text(_child(_child(node, "Connection"), "AltSwitchName")),
        connected=reader.boolean(_child(node, "IsConnected")),
    )


def _boot_order(reader: _Reader, node: Key) -> Optional[Sourced]:
    boot = _child(node, "boot")
    if boot is None or not boot.is_node:
        return None
    order = []
    for _, device in _numbered(boot, _BOOT_DEVICE):
        value = reader.text(device)
        if value is not None:
            order.append(value.value)
    return Sourced(tuple(order), boot.path) if order else None


def _checkpoints(reader: _Reader) -> Checkpoints:
    listing = reader.key(CHECKPOINT_LIST)
    if listing is None:
        return Checkpoints()
    entries = []
    for child in _children(listing):
        if child.name == "size":
            continue
        value = None if child.is_node else reader.typed(child, tuple(KeyType))
        entries.append(Sourced(value, child.path))
    return Checkpoints(count=reader.integer(_child(listing, "size")), entries=tuple(entries))


def _memory(reader: _Reader) -> Memory:
    bank = reader.key(MEMORY_BANK)

    def mib(name: str) -> Optional[Sourced]:
        return reader.integer(_child(bank, name), lambda value: value * MIB)

    return Memory(
        startup_bytes=mib("size"),
        dynamic_memory_enabled=reader.boolean(_child(bank, "dynamic_memory_enabled")),
        minimum_bytes=mib("reservation"),
        maximum_bytes=mib("limit"),
        buffer_percent=reader.integer(_child(bank, "target_memory_buffer")),
        weight=reader.integer(_child(bank, "priority")),
    )


def _generation(reader: _Reader) -> Optional[Sourced]:
    subtype = reader.integer(reader.key(SUBTYPE_PATH))
    if subtype is None:
        return None
    if subtype.value not in GENERATIONS:
        reader.problems.append(f"{subtype.key_path}: unknown subtype {subtype.value}")
        return None
    return Sourced(GENERATIONS[subtype.value], subtype.key_path, subtype.value)


def read_configuration(storage: HyperVStorage) -> VmConfiguration:
    """Decode the configuration keys of an opened container (any kind, any version)."""
    reader = _Reader(storage)
    devices = _devices(reader)
    names = {d.instance_id: d.name for d in devices if d.instance_id and d.name}
    disks: List[Disk] = []
    adapters: List[NetworkAdapter] = []
    boot_order = secure_boot = guest_state = None
    for node in _children(reader.key(CONFIGURATION)):
        match = _DEVICE_NODE.match(node.name)
        if not match or not node.is_node:
            continue
        instance = match.group(1).lower()
        disks.extend(_disks(reader, node, instance, names))
        if _child(node, "MacAddress") is not None:
            adapters.append(_adapter(reader, node, instance))
        boot_order = boot_order or _boot_order(reader, node)
        secure_boot = secure_boot or reader.boolean(_child(node, "secure_boot_enabled"))
        guest_state = guest_state or reader.text(_child(node, "StateFilePath"))
    locations = tuple(
        (name, value)
        for name, value in ((n, reader.text(reader.key(p))) for n, p in FILE_LOCATIONS.items())
        if value is not None
    )
    return VmConfiguration(
        name=reader.text(reader.key(NAME_PATH)),
        vm_id=reader.text(reader.key(ID_PATH)),
        version=reader.integer(reader.key(VERSION_PATH), version_text),
        generation=_generation(reader),
        creation_time=reader.filetime(reader.key(CREATION_TIME_PATH)),
        notes=reader.text(reader.key(NOTES_PATH)),
        owner_sid=reader.text(reader.key(OWNER_SID_PATH)),
        processor_count=reader.integer(reader.key(PROCESSOR_COUNT_PATH)),
        memory=_memory(reader),
        disks=tuple(disks),
        network_adapters=tuple(adapters),
        boot_order=boot_order,
        secure_boot=secure_boot,
        guest_state_file=guest_state,
        file_locations=locations,
        checkpoints=_checkpoints(reader),
        devices=devices,
        problems=tuple(reader.problems),
    )
