"""Run a Volatility 3 plugin on a Hyper-V saved state from a Python script (no `vol`).

.venv/bin/python examples/run_plugin.py vm.vmrs vmrs.info.Info
.venv/bin/python examples/run_plugin.py vm.vmrs linux.pslist.PsList --symbols symbols

(the Python of the environment where volatility3 and this pack are installed)
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import volatility3.plugins
import volatility3.symbols
from volatility3 import framework
from volatility3.cli import text_renderer
from volatility3.framework import automagic, contexts, plugins

import volatility3_vmrs.layers  # noqa: F401  (one import: the .vmrs layer and stacker)


def run(image: str, plugin_name: str, symbol_dirs: list[str]) -> int:
    framework.require_interface_version(2, 0, 0)
    # Volatility finds plugins (stock and the pack's vmrs.*) by importing them.
    failures = framework.import_files(volatility3.plugins, True)
    for name in failures:
        print(f"note: plugin module {name} failed to import", file=sys.stderr)
    volatility3.symbols.__path__ = [str(pathlib.Path(d).resolve()) for d in symbol_dirs] + list(
        volatility3.symbols.__path__
    )

    context = contexts.Context()
    context.config["automagic.LayerStacker.single_location"] = (
        pathlib.Path(image).resolve().as_uri()
    )
    available = framework.list_plugins()
    if plugin_name not in available:
        print(f"unknown plugin {plugin_name}", file=sys.stderr)
        return 2
    plugin_class = available[plugin_name]
    chosen = automagic.choose_automagic(automagic.available(context), plugin_class)
    plugin = plugins.construct_plugin(context, chosen, plugin_class, "plugins", None, None)
    text_renderer.QuickTextRenderer().render(plugin.run())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="the .vmrs file")
    parser.add_argument(
        "plugin", help="full plugin name, e.g. vmrs.info.Info or linux.pslist.PsList"
    )
    parser.add_argument("--symbols", action="append", default=[], help="extra ISF directory")
    args = parser.parse_args()
    return run(args.image, args.plugin, args.symbols)


if __name__ == "__main__":
    sys.exit(main())
