"""Run every stock ``linux.*`` plugin once, in one process, and report how each ended.

``python -m tests.support.all_linux_plugins IMAGE SYMBOLS_DIR CACHE_DIR [TIMEOUT]`` prints
one JSON object: ``{plugin: {"status": "ok"|"error"|"timeout", "rows": n, "error": ...,
"symbol_error": bool, "seconds": s}}``. One process and one context for all of them: the
image is stacked and the ISF loaded once, which is what keeps ~50 plugins affordable.
Deprecated aliases (``linux.check_idt`` for ``linux.malware.check_idt``...) run once,
under their current name. A few plugins need an argument; :data:`ARGUMENTS` gives it.
"""

from __future__ import annotations

import io
import json
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List

ARGUMENTS: Dict[str, Dict[str, Any]] = {
    "linux.pagecache.InodePages": {"find": "/init"},
    "linux.module_extract.ModuleExtract": {"base": 0xFFFFFFFFC0000000},
    "linux.vmaregexscan.VmaRegExScan": {"pattern": "vmrs_alpha"},
    # all of the kernel's 87k symbols take minutes; pscallstack uses the same tables
    "linux.kallsyms.Kallsyms": {"modules": True},
}
# What an ISF problem looks like when a plugin fails on it.
SYMBOL_ERROR_WORDS = (
    "symbol table",
    "symbol_table",
    "Unknown symbol",
    "Unknown type",
    "has no attribute",
    "ISF",
    "dwarf2json",
    "SymbolError",
    "SymbolSpaceError",
    "Unsatisfied",
    "no associated type",
)


class _Timeout(BaseException):
    """Not an Exception: plugins that catch Exception per item must not swallow it."""


def _alarm(_signum: int, _frame: Any) -> None:
    raise _Timeout()


def linux_plugins(plugin_list: Dict[str, type]) -> List[str]:
    """Current names of every linux plugin (aliases of a ``linux.<group>.x`` left out)."""
    names = sorted(name for name in plugin_list if name.startswith("linux."))
    modules = {name.split(".")[-2] for name in names if name.count(".") >= 3}
    return [n for n in names if not (n.count(".") == 2 and n.split(".")[1] in modules)]


def main(image: str, symbols_dir: str, cache_dir: str, timeout: int = 240) -> Dict[str, Any]:
    import volatility3.plugins
    import volatility3.symbols
    from volatility3 import framework
    from volatility3.framework import automagic, constants, contexts, exceptions, interfaces
    from volatility3.framework import plugins as vol_plugins

    constants.CACHE_PATH = cache_dir
    volatility3.symbols.__path__ = [symbols_dir, *constants.SYMBOL_BASEPATHS]
    framework.require_interface_version(2, 0, 0)
    framework.import_files(volatility3.plugins, True)
    out_dir = Path(tempfile.mkdtemp(prefix="vmrs-plugins-"))

    class OutputFile(interfaces.plugins.FileHandlerInterface, io.BytesIO):
        def __init__(self, filename: str) -> None:
            interfaces.plugins.FileHandlerInterface.__init__(self, filename)
            io.BytesIO.__init__(self)

        def close(self) -> None:
            (out_dir / Path(self.preferred_filename).name).write_bytes(self.getvalue())
            io.BytesIO.close(self)

    plugin_list = framework.list_plugins()
    context = contexts.Context()
    context.config["automagic.LayerStacker.single_location"] = Path(image).resolve().as_uri()
    available = automagic.available(context)
    results: Dict[str, Any] = {}
    signal.signal(signal.SIGALRM, _alarm)
    for name in linux_plugins(plugin_list):
        plugin = plugin_list[name]
        for key, value in ARGUMENTS.get(name, {}).items():
            context.config[f"plugins.{plugin.__name__}.{key}"] = value
        started = time.perf_counter()
        entry: Dict[str, Any] = {"status": "ok", "rows": 0}
        signal.alarm(timeout)
        try:
            chosen = automagic.choose_automagic(available, plugin)
            constructed = vol_plugins.construct_plugin(
                context, chosen, plugin, "plugins", None, OutputFile
            )
            grid = constructed.run()
            rows = [0]

            def visit(_node: Any, acc: Any, rows: List[int] = rows) -> Any:
                rows[0] += 1
                return acc

            grid.populate(visit, None)
            entry["rows"] = rows[0]
        except _Timeout:
            entry["status"] = "timeout"
        except (exceptions.VolatilityException, Exception) as error:  # report, go on
            text = "".join(traceback.format_exception_only(type(error), error)).strip()
            if isinstance(error, exceptions.UnsatisfiedException):
                text = f"Unsatisfied requirements: {sorted(error.unsatisfied)}"
            entry.update(status="error", error=text[-600:])
            entry["symbol_error"] = isinstance(
                error, (exceptions.SymbolError, exceptions.SymbolSpaceError)
            ) or (
                any(word in text for word in SYMBOL_ERROR_WORDS)
                and "'NoneType' object has no attribute" not in text  # a plugin's own None
            )
        finally:
            signal.alarm(0)
        entry["seconds"] = round(time.perf_counter() - started, 2)
        results[name] = entry
        print(f"{name}: {entry}", file=sys.stderr, flush=True)
    return results


if __name__ == "__main__":
    args = sys.argv[1:]
    report = main(args[0], args[1], args[2], int(args[3]) if len(args) > 3 else 240)
    print(json.dumps(report, indent=1, sort_keys=True))
