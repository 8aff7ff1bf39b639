"""Run the pack's ``vmrs.*`` plugins in-process on a file, the way ``vol`` runs them.

Used by the ``plugins`` fuzz target and by the malformed-corpus tests: every plugin of
the pack, through Volatility's own automagic (so the stacker runs too), rendering every
row. What comes out is an :class:`Outcome`: rows rendered, or the exception that stopped
the plugin, and the pack's log lines (the lines an analyst sees at the default level).
"""

from __future__ import annotations

import logging
import pathlib
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

PACK_PLUGINS: Dict[str, Dict[str, Any]] = {
    "vmrs.info.Info": {},
    "vmrs.config.Config": {},
    "vmrs.keys.Keys": {},
    "vmrs.memmap.Memmap": {},
    "vmrs.registers.Registers": {},
    "vmrs.pescan.PEScan": {},
    "vmrs.vtop.Vtop": {"address": "0xfffff80000001000"},
}


@dataclass
class Outcome:
    plugin: str
    rows: int = 0
    error: Optional[BaseException] = None
    seconds: float = 0.0  # in all, Volatility's automagic included
    plugin_seconds: float = 0.0  # the plugin's own run and rendering
    log: List[Tuple[int, str]] = field(default_factory=list)

    def lines(self, level: int = logging.WARNING) -> List[str]:
        return [message for lvl, message in self.log if lvl >= level]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[Tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.getMessage()))


_PLUGINS: Optional[Dict[str, Any]] = None


def _available() -> Dict[str, Any]:
    global _PLUGINS
    if _PLUGINS is None:
        import volatility3.plugins
        from volatility3 import framework

        import volatility3_vmrs.layers  # noqa: F401  (the stacker)

        framework.require_interface_version(2, 0, 0)
        framework.import_files(volatility3.plugins, True)
        _PLUGINS = framework.list_plugins()
    return _PLUGINS


def _count_rows(grid: Any) -> int:
    count = 0

    def visit(node: Any, accumulator: Any) -> Any:
        nonlocal count
        count += 1
        for value in node.values:
            str(value)
        return accumulator

    grid.populate(visit, None)
    return count


def run_pack_plugin(path: pathlib.Path, plugin_name: str, **options: Any) -> Outcome:
    """Run one plugin on ``path``; never raises for what the plugin or stacker raise."""
    from volatility3.framework import automagic, contexts, plugins

    available = _available()
    plugin_class = available[plugin_name]
    context = contexts.Context()
    context.config["automagic.LayerStacker.single_location"] = path.resolve().as_uri()
    for key, value in {**PACK_PLUGINS.get(plugin_name, {}), **options}.items():
        context.config[f"plugins.{plugin_class.__name__}.{key}"] = value
    capture = _Capture()
    logger = logging.getLogger("volatility3_vmrs")
    pack_plugins = logging.getLogger("volatility3.plugins.vmrs")
    previous = logger.level, pack_plugins.level
    for target in (logger, pack_plugins):
        target.addHandler(capture)
        target.setLevel(logging.DEBUG)
    outcome = Outcome(plugin_name)
    started = time.perf_counter()
    try:
        chosen = automagic.choose_automagic(automagic.available(context), plugin_class)
        plugin = plugins.construct_plugin(context, chosen, plugin_class, "plugins", None, None)
        constructed = time.perf_counter()
        try:
            outcome.rows = _count_rows(plugin.run())
        finally:
            outcome.plugin_seconds = time.perf_counter() - constructed
    except (Exception, SystemExit) as error:  # what vol would show; the caller judges it
        outcome.error = error
    finally:
        for target in (logger, pack_plugins):
            target.removeHandler(capture)
        logger.setLevel(previous[0])
        pack_plugins.setLevel(previous[1])
    outcome.seconds = time.perf_counter() - started
    outcome.log = capture.records
    return outcome
