"""What every subcommand shares: errors, file opening, output, progress.

Exit codes (the same for every subcommand):

* 0 - done;
* 1 - ``verify`` only: the file was read and damage was found (listed);
* 2 - the input cannot be used (not a Hyper-V file, a structure the reader refuses, no
  guest memory for a command that needs it), or a usage error;
* 3 - an internal error (a bug: please report it with the file's description).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import IO, Any, Iterable, Iterator, List, Optional, Sequence, TypeVar

from volatility3_vmrs.savedstate import HyperVStorage, SavedStateDump, open_storage
from volatility3_vmrs.savedstate.errors import NotAContainerError

EXIT_OK = 0
EXIT_DAMAGE = 1
EXIT_UNUSABLE = 2
EXIT_INTERNAL = 3

# Signature of a .vmgs guest-state file (openvmm's vmgs_format: b"GUESTRTS" at offset 0).
VMGS_SIGNATURE = b"GUESTRTS"
LEGACY_SUFFIXES = (".bin", ".vsv")

T = TypeVar("T")


class CliError(Exception):
    """A reason to stop with one line on stderr and exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_UNUSABLE) -> None:
        self.code = code
        super().__init__(message)


def add_file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the Hyper-V file (.vmrs, .vmcx, ...)")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document (keys in the README)"
    )


def _describe_not_a_container(path: str, error: NotAContainerError) -> str:
    """The reader's message, and what the file looks like instead when that is known."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(VMGS_SIGNATURE))
    except OSError:
        head = b""
    if head == VMGS_SIGNATURE:
        return (
            "a .vmgs guest-state file (firmware and TPM state, signature GUESTRTS), not a "
            "HyperVStorage container: this tool does not read it"
        )
    return str(error)


def open_container(path: str) -> HyperVStorage:
    """The HyperVStorage container at ``path`` (.vmcx, .vmrs with or without RAM)."""
    try:
        return open_storage(path)
    except NotAContainerError as error:
        raise CliError(_describe_not_a_container(path, error)) from None


def open_dump(path: str, **options: Any) -> SavedStateDump:
    """The saved state at ``path``; a configuration-only container is refused clearly
    unless ``require_saved_state=False`` is passed."""
    try:
        return SavedStateDump(path, **options)
    except NotAContainerError as error:
        raise CliError(_describe_not_a_container(path, error)) from None


def print_json(document: Any, stream: Optional[IO[str]] = None) -> None:
    json.dump(document, stream or sys.stdout, indent=2)
    (stream or sys.stdout).write("\n")


def print_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], stream: Optional[IO[str]] = None
) -> None:
    """Left-aligned columns; ``None`` shows as ``-``."""
    out = stream or sys.stdout
    text_rows = [["-" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for column, cell in enumerate(row):
            widths[column] = max(widths[column], len(cell))
    for row in [list(headers), ["-" * w for w in widths], *text_rows]:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n")


def print_fields(pairs: Iterable[Sequence[Any]], stream: Optional[IO[str]] = None) -> None:
    """``name  value`` lines, names padded to one width."""
    out = stream or sys.stdout
    items: List[Sequence[Any]] = list(pairs)
    width = max((len(str(name)) for name, _ in items), default=0)
    for name, value in items:
        out.write(f"{str(name).ljust(width)}  {'-' if value is None else value}\n")


def hex_or_none(value: Optional[int]) -> Optional[str]:
    return None if value is None else f"{value:#x}"


def open_output(path: str, input_path: str) -> IO[bytes]:
    """A new file for writing: never an existing file, never the input."""
    if os.path.exists(path):
        same = os.path.exists(input_path) and os.path.samefile(path, input_path)
        what = "is the input file" if same else "exists"
        raise CliError(f"output {path} {what}; it is not overwritten")
    try:
        return open(path, "xb")
    except OSError as error:
        raise CliError(f"cannot create {path}: {error.strerror or error}") from None


def progress(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Iterate with a progress bar on stderr when stderr is a terminal, silently otherwise."""
    from tqdm import tqdm

    disable = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    yield from tqdm(items, total=total, desc=description, unit="item", disable=disable, leave=False)
