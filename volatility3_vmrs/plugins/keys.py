"""vmrs.keys: the key tree of the HyperVStorage container behind a .vmrs.

One row per key, depth first, siblings in natural order (``RamBlock2`` before
``RamBlock10``; the container stores them in text order): path, type, value size in
bytes, whether the value is stored as a file object, a short preview of the value, and
``Integer``, the value of an integer key as a number (N/A for other types).

``--path`` limits the listing: when it names a key, that key and its subtree; otherwise
every key whose path starts with the given text. ``--dump`` writes the value of every
listed value key (nodes have none) to a file through Volatility's file handler, so
``-o`` chooses the directory; the file name is in the ``File output`` column.
"""

from __future__ import annotations

import logging
import re
from typing import Iterator, List, Optional, Tuple, Union

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements

from volatility3_vmrs.savedstate.errors import VmrsError
from volatility3_vmrs.savedstate.storage import HyperVStorage, Key, KeyType

from .common import find_vmrs_layer, primary_requirement

vollog = logging.getLogger(__name__)

PREVIEW_BYTES = 16
PREVIEW_CHARS = 64
DUMP_CHUNK = 0x100000
COLUMNS = [
    ("Path", str),
    ("Type", str),
    ("Size", int),
    ("File object", bool),
    ("Value", str),
    ("Integer", int),
    ("File output", str),
]
_DIGITS = re.compile(r"(\d+)")


def preview(key: Key) -> str:
    """A short text of the value, read without loading large values whole."""
    if key.is_node:
        return f"<{len(key.children)} children>"
    if key.type == KeyType.ARRAY:
        head = key.read(0, PREVIEW_BYTES)
        text = head.hex(" ")
        return text + (" ..." if key.size > PREVIEW_BYTES else "")
    if key.type == KeyType.STRING:
        limit = PREVIEW_CHARS * 2 + 2
        data = key.read(0, min(key.size - key.size % 2, limit))
        text = data.decode("utf-16-le", "replace").rstrip("\0")
        if key.size > limit:
            text = text[:PREVIEW_CHARS] + " ..."
        return repr(text)
    value = key.value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:#x} ({value})"
    return str(value)


def natural_key(name: str) -> Tuple[Tuple[Union[int, str], ...], str]:
    """Sort key putting digit runs in numeric order: RamBlock2 < RamBlock10."""
    parts = _DIGITS.split(name)  # text, digits, text, ...: types alternate in step
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), name


def natural_walk(tops: List[Key]) -> Iterator[Key]:
    """Keys depth first from ``tops``, siblings in natural order (no recursion)."""
    stack = sorted(tops, key=lambda k: natural_key(k.name), reverse=True)
    while stack:
        key = stack.pop()
        yield key
        stack.extend(sorted(key.children, key=lambda k: natural_key(k.name), reverse=True))


def select_keys(storage: HyperVStorage, prefix: Optional[str]) -> Iterator[Key]:
    if not prefix or prefix.strip("/") == "":
        yield from natural_walk(storage.root.children)
        return
    if prefix in storage:
        yield from natural_walk([storage.get(prefix)])
        return
    wanted = "/" + prefix.lstrip("/")
    for key in natural_walk(storage.root.children):
        if key.path.startswith(wanted):
            yield key


def dump_filename(key: Key) -> str:
    return "vmrs" + key.path.replace("/", "_") + ".bin"


class Keys(interfaces.plugins.PluginInterface):
    """Lists the key tree of a .vmrs container and can dump values to files."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            primary_requirement(),
            requirements.StringRequirement(
                name="path",
                description="Only this key and its subtree, or keys whose path starts so",
                optional=True,
            ),
            requirements.BooleanRequirement(
                name="dump",
                description="Write the value of each listed value key to a file",
                default=False,
                optional=True,
            ),
        ]

    def _dump(self, key: Key) -> str:
        with self.open(dump_filename(key)) as handle:
            offset = 0
            while offset < key.size:
                chunk = key.read(offset, min(DUMP_CHUNK, key.size - offset))
                handle.write(chunk)
                offset += len(chunk)
        return handle.preferred_filename

    def _generator(self, storage: HyperVStorage, keys: List[Key]) -> Iterator[Tuple[int, Tuple]]:
        dump = self.config.get("dump", False)
        for key in keys:
            integer: object = renderers.NotApplicableValue()
            try:
                value = preview(key)
                if key.type in (KeyType.INT, KeyType.UINT):
                    integer = int(key.value)
            except (VmrsError, ValueError) as error:
                value = f"<unreadable: {error}>"
            output: object = renderers.NotApplicableValue()
            if dump and not key.is_node:
                try:
                    output = self._dump(key)
                except (VmrsError, OSError) as error:
                    vollog.warning(f"cannot dump {key.path}: {error}")
                    output = renderers.UnreadableValue()
            yield (
                0,
                (
                    key.path,
                    key.type.name.title(),
                    key.size,
                    key.is_file_object,
                    value,
                    integer,
                    output,
                ),
            )

    def run(self) -> interfaces.renderers.TreeGrid:
        layer = find_vmrs_layer(self.context, self.config["primary"])
        storage = layer.dump.storage
        if storage is None:  # a legacy .bin without a .vsv container: no key tree
            vollog.warning(
                "no key tree: a legacy .bin holds none, and no .vsv container was read beside it"
            )
            return renderers.TreeGrid(COLUMNS, iter(()))
        keys = list(select_keys(storage, self.config.get("path")))
        if not keys:
            vollog.warning(f"no key matches {self.config.get('path')!r}")
        return renderers.TreeGrid(COLUMNS, self._generator(storage, keys))
