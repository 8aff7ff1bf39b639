"""``vmrs export FILE --format raw|lime|elf|dmp -o OUT``: guest memory for other tools.

Writes a new file (``--force`` replaces an existing one, never the input), streaming
the memory once; ``--symbols ISF`` (crash dumps of Windows guests) names the kernel's
ISF, whose kernel is found in the guest (:mod:`volatility3_vmrs.export.winkernel`) to
fill the header's WinDbg fields and write the KDBG decoded; ``--sha256`` hashes the
output while it is written. A progress bar is shown on stderr only when stderr is a
terminal. The summary (size, digest, holes of a raw image, notes such as the crash
dump's WinDbg fields) goes to stdout, as one JSON document with ``--json``.

Exit status: 0 written; 2 the input cannot be used or the output cannot be written
(one line ``vmrs export: error: ...`` on stderr, and no partial file left behind).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Iterator, Optional

from volatility3_vmrs.export import FORMATS, ExportError, ExportResult, export_to_path
from volatility3_vmrs.export.winkernel import kernel_from_isf
from volatility3_vmrs.savedstate import SavedStateDump
from volatility3_vmrs.savedstate.errors import VmrsError

from .common import EXIT_OK, EXIT_UNUSABLE

PROG = "vmrs export"


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export", help="write guest memory as raw, LiME, ELF core or Windows crash dump"
    )
    parser.add_argument("file", help="the saved state (.vmrs)")
    parser.add_argument("--format", required=True, choices=list(FORMATS), help="output format")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="the new file")
    parser.add_argument("--sha256", action="store_true", help="SHA-256 of OUT, while writing")
    parser.add_argument(
        "--vp",
        type=int,
        metavar="N",
        help="VP whose CONTEXT and CR3 a crash dump carries (default: lowest in kernel mode)",
    )
    parser.add_argument(
        "--symbols",
        metavar="ISF",
        help="the Windows kernel's ISF (.json or .json.xz): fills a crash dump's WinDbg fields",
    )
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def _error(message: str) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return EXIT_UNUSABLE


class _Bar:
    """A tqdm bar in bytes on stderr, only when stderr is a terminal."""

    def __init__(self, description: str) -> None:
        self._bar: Any = None
        self._description = description

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=self._description, unit="B", unit_scale=True, leave=False
            )
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _progress(description: str) -> Optional[_Bar]:
    is_tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return _Bar(description) if is_tty else None


def _lines(result: ExportResult) -> Iterator[str]:
    yield f"wrote {result.path} ({result.format}, {result.size} bytes)"
    if result.sha256:
        yield f"sha256 {result.sha256}"
    if result.vp is not None:
        yield f"virtual processor {result.vp}"
    for memory_range in result.ranges:
        yield f"range {memory_range.gpa:#x}-{memory_range.end - 1:#x} ({memory_range.size} bytes)"
    for start, end in result.holes:
        yield f"hole  {start:#x}-{end - 1:#x} ({end - start} bytes, sparse, reads as zeros)"
    for note in result.notes:
        yield f"note: {note}"


def run(args: argparse.Namespace, *, out: Callable[[str], None] = print) -> int:
    bar = _progress(f"export {args.format}")
    try:
        with SavedStateDump(args.file) as dump:
            kernel, kernel_note = None, None
            if args.symbols:
                if args.format != "dmp":
                    raise ExportError(f"--symbols is for --format dmp only (not {args.format})")
                kernel, kernel_note = kernel_from_isf(dump, args.symbols)
            result = export_to_path(
                dump,
                args.format,
                args.output,
                inputs=[args.file],
                force=args.force,
                sha256=args.sha256,
                progress=bar,
                vp=args.vp,
                kernel=kernel,
            )
            if kernel_note:
                result.notes.insert(0, kernel_note)
    except VmrsError as error:
        return _error(str(error))
    except OSError as error:
        return _error(f"{error.filename or args.file}: {error.strerror or error}")
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        out(json.dumps({"command": "export", "file": args.file, **result.as_dict()}, indent=2))
    else:
        for line in _lines(result):
            out(line)
    return EXIT_OK
