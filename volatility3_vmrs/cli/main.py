"""Entry point of the ``vmrs`` console script: ``vmrs <subcommand> FILE [options]``.

Every failure ends in one line on stderr, ``vmrs <subcommand>: error: <message>``, and
the exit status of :mod:`.common` (2 for unusable input and usage errors); never a
traceback. ``VMRS_DEBUG=1`` in the environment re-raises unexpected exceptions.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Dict, List, NoReturn, Optional, Sequence, Tuple

from volatility3_vmrs.savedstate.errors import VmrsError

from .common import EXIT_INTERNAL, EXIT_UNUSABLE, CliError

PROG = "vmrs"
# Subcommand modules, in the order `vmrs -h` lists them; optional ones only when present.
SUBCOMMANDS = ("info_cmd", "keys_cmd", "config_cmd", "registers_cmd", "memmap_cmd", "verify_cmd")
OPTIONAL_SUBCOMMANDS = ("export_cmd",)


class UsageError(Exception):
    def __init__(self, prog: str, message: str) -> None:
        self.prog = prog
        super().__init__(message)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (raised, printed by :func:`main`)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


def subcommand_modules() -> List[ModuleType]:
    names = list(SUBCOMMANDS)
    for name in OPTIONAL_SUBCOMMANDS:
        if importlib.util.find_spec(f"{__package__}.{name}") is not None:
            names.append(name)
    return [importlib.import_module(f"{__package__}.{name}") for name in names]


def build_parser() -> Tuple[Parser, Dict[str, ModuleType]]:
    parser = Parser(
        prog=PROG,
        description="Read Hyper-V files (.vmrs, .vmcx) without Volatility.",
        epilog="Exit status: 0 done, 1 verify found damage, 2 unusable input or usage error.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    owners: Dict[str, ModuleType] = {}
    for module in subcommand_modules():
        before = set(subparsers.choices)
        module.add_parser(subparsers)
        for name in set(subparsers.choices) - before:
            owners[name] = module
    return parser, owners


def _fail(prog: str, message: str, code: int = EXIT_UNUSABLE) -> int:
    text = " ".join(str(message).split())  # one line, whatever the message holds
    sys.stderr.write(f"{prog}: error: {text}\n")
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one subcommand; returns the exit status."""
    parser, owners = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(arguments)
    except UsageError as error:
        return _fail(error.prog, str(error))
    except SystemExit as done:  # -h / --help
        return int(done.code or 0)
    if args.command is None:
        parser.print_usage(sys.stderr)
        return _fail(PROG, "a subcommand is required")
    prog = f"{PROG} {args.command}"
    try:
        return owners[args.command].run(args)
    except CliError as error:
        return _fail(prog, str(error), error.code)
    except BrokenPipeError:
        return 0
    except (VmrsError, OSError) as error:
        return _fail(prog, _describe(error))
    except KeyboardInterrupt:
        return _fail(prog, "interrupted", 130)
    except Exception as error:
        if os.environ.get("VMRS_DEBUG"):
            raise
        return _fail(prog, f"internal error ({type(error).__name__}: {error})", EXIT_INTERNAL)


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}"
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
