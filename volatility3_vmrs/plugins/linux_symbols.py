"""Automagic: a Linux guest with no ISF gets one made from its own BTF and kallsyms.

volatility3 finds automagics as subclasses of ``AutomagicInterface`` among the modules
it imports, and runs them by ``priority``. Two live here:

* :class:`VmrsSymbolDirectory` (priority -10, before the symbol cache is refreshed) puts
  the pack's per-user ISF directory (:func:`~volatility3_vmrs.kernel.store.symbols_directory`)
  on Volatility's symbol path, so ISFs made earlier are found like any other.
* :class:`LinuxSymbolsFromMemory` (priority 15, after the layer stacker, before the
  symbol finders). When a Linux plugin's kernel layer and symbol table are still
  unsatisfied - no ISF on the symbol path or in the cache matched the guest's
  ``linux_banner`` - it stacks the image's physical layer, finds BTF + kallsyms +
  banner in it, writes the ISF to the per-user directory (never to a ``-s``
  directory), refreshes the identifier cache, logs one line, and runs the stacker
  again, after which Volatility goes on as if the ISF had always been there.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict, List

import fastjsonschema
from volatility3 import schemas, symbols
from volatility3.framework import constants, interfaces
from volatility3.framework.automagic import stacker, symbol_cache
from volatility3.framework.configuration import requirements
from volatility3.framework.layers import intel

from volatility3_vmrs.kernel import KernelSymbolsError
from volatility3_vmrs.kernel.store import isf_file_name, symbols_directory, write_isf
from volatility3_vmrs.layers.guest_memory import kernel_symbols, open_physical

vollog = logging.getLogger(__name__)

STACKER_PATH = interfaces.configuration.path_join(
    constants.AUTOMAGIC_CONFIG_PATH, stacker.LayerStacker.__name__
)


def ensure_on_symbol_path() -> str:
    """Add the per-user ISF directory to ``volatility3.symbols.__path__`` (once)."""
    directory = str(symbols_directory())
    paths = [os.path.realpath(p) for p in symbols.__path__]
    if os.path.realpath(directory) not in paths:
        symbols.__path__.append(directory)
    return directory


def record_validated(isf: Dict[str, Any]) -> None:
    """Validate ``isf`` against Volatility's own schema and note it in Volatility's cache.

    volatility3 validates an ISF on first use with jsonschema, which takes tens of
    seconds for a kernel's 10 MB ISF; fastjsonschema checks the same schema in a few.
    An ISF that fails raises ``fastjsonschema.JsonSchemaException``.
    """
    name = f"schema-{isf['metadata']['format']}.json"
    with open(os.path.join(os.path.dirname(schemas.__file__), name), encoding="utf-8") as f:
        schema = json.load(f)
    digest = schemas.create_json_hash(isf, schema)  # of the ISF as written
    fastjsonschema.compile(schema, use_default=False)(isf)  # (defaults would alter it)
    schemas.cached_validations.add(digest)
    schemas.record_cached_validations(schemas.cached_validations)


class VmrsSymbolDirectory(interfaces.automagic.AutomagicInterface):
    """Puts the pack's per-user directory of ISFs made from memory on the symbol path."""

    priority = -10
    exclusion_list = ["windows", "mac"]

    def __call__(self, context, config_path, requirement, progress_callback=None) -> None:
        ensure_on_symbol_path()


def _needs_symbols(context: interfaces.context.ContextInterface, found: List) -> bool:
    """A symbol table is unsatisfied and no kernel (Intel) layer was stacked."""
    for path, req in found:
        if isinstance(req, requirements.TranslationLayerRequirement):
            layer = context.config.get(path, None)
            if layer in context.layers and isinstance(context.layers[layer], intel.Intel):
                return False
    return any(
        isinstance(req, requirements.SymbolTableRequirement)
        and req.unsatisfied(context, interfaces.configuration.parent_path(path))
        for path, req in found
    )


class LinuxSymbolsFromMemory(interfaces.automagic.AutomagicInterface):
    """Makes the ISF of a Linux guest from its memory when no ISF matches its banner."""

    priority = 15
    exclusion_list = ["windows", "mac"]

    def __call__(
        self,
        context: interfaces.context.ContextInterface,
        config_path: str,
        requirement: interfaces.configuration.RequirementInterface,
        progress_callback: constants.ProgressCallback = None,
    ) -> None:
        found = self.find_requirements(
            context,
            config_path,
            requirement,
            (requirements.TranslationLayerRequirement, requirements.SymbolTableRequirement),
            shortcut=False,
        )
        if not _needs_symbols(context, found):
            return
        location = context.config.get(
            interfaces.configuration.path_join(STACKER_PATH, "single_location"), None
        )
        if not location:
            return
        started = time.perf_counter()
        scratch = context.clone()
        try:
            layer_name = open_physical(scratch, location)
            kernel = kernel_symbols(scratch, layer_name)
        except KernelSymbolsError as error:
            vollog.warning(f"vmrs: no ISF matches this image, and none could be made: {error}")
            return
        finally:
            for name in list(scratch.layers):
                scratch.layers[name].destroy()
        known = symbol_cache.load_cache_manager().get_identifier_dictionary(
            operating_system="linux"
        )
        for banner in (kernel.banner + b"\0", kernel.banner):
            if banner in known:
                vollog.warning(
                    f"vmrs: the ISF {known[banner]} matches this kernel but Volatility could "
                    "not use it; not making another"
                )
                return
        directory = ensure_on_symbol_path()
        path = symbols_directory() / isf_file_name(kernel.banner, kernel.release)
        isf = kernel.isf()
        record_validated(isf)
        write_isf(path, isf)
        symbol_cache.SqliteCache(
            os.path.join(constants.CACHE_PATH, constants.IDENTIFIERS_FILENAME)
        ).update()
        vollog.warning(
            f"vmrs: no ISF for Linux {kernel.release}; made one from the guest's BTF and "
            f"kallsyms ({kernel.num_syms} symbols) in {time.perf_counter() - started:.1f} s: "
            f"{path} (kept for later runs; delete {directory} to clear)"
        )
        # The first stacking may have settled for the physical layer (value and branch);
        # forget both so that the stacker chooses again, now that an ISF matches.
        for path, req in found:
            if isinstance(req, requirements.TranslationLayerRequirement) and path in context.config:
                del context.config[path]
                context.config.splice(path, interfaces.configuration.HierarchicalDict())
        stacker.LayerStacker(context, STACKER_PATH)(
            context, config_path, requirement, progress_callback
        )
