"""One diagnostics policy for a whole dump: what reading found, how bad it is, where.

Every stage of the reader (container, guest memory, processor state, the legacy ``.bin``)
reports into one :class:`Diagnostics` object instead of keeping lists of its own. A
:class:`Diagnostic` has

* a :class:`Kind` (one enum for the whole reader),
* a :class:`Severity`: ``NOTE`` (a fact worth knowing that is no fault: a replay log
  applied in memory, an assumption the reader made), ``WARNING`` (damage or a deviation
  that reading tolerated: a checksum mismatch, an unknown chunk) or ``ERROR`` (content
  that cannot be read: a missing or undecodable RamBlock, a truncated file),
* the structure, the file offset and the key path it concerns, and
* the :class:`Phase` in which it was found: while opening the file, or later while
  reading memory (a page stream is only decoded when a page of it is read).

Strict mode means one thing everywhere: a ``WARNING`` or ``ERROR`` raises the matching
exception of :mod:`.errors` at the point it is found; a ``NOTE`` never does.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple, Type

from .errors import (
    ChecksumError,
    GuestMemoryFormatError,
    KeyTreeError,
    PartitionStateError,
    ReplayLogError,
    SignatureError,
    TruncatedError,
    VmrsFormatError,
    describe_location,
)


class Severity(enum.IntEnum):
    NOTE = 0
    WARNING = 1
    ERROR = 2


class Phase(str, enum.Enum):
    OPEN = "open"  # found while the file was opened (metadata, checksums, structure)
    READ = "read"  # found while guest memory was read (page streams are decoded lazily)


class Kind(str, enum.Enum):
    """What a diagnostic is about; the value is the stable, machine-readable name."""

    CHECKSUM = "checksum"
    SIGNATURE = "signature"
    HEADER = "header"
    TRUNCATED = "truncated"
    OBJECT_TABLE = "object-table"
    KEY_TREE = "key-tree"
    REPLAY_LOG = "replay-log"
    MEMORY = "memory"  # memory metadata: overlaps, odd numbering, keys not interpreted
    MISSING_BLOCK = "missing-block"  # a RamBlock a range needs is not in the file
    BAD_BLOCK = "bad-block"  # a RamBlock whose page stream cannot be decoded
    PARTITION_STATE = "partition-state"  # processor state: unknown or odd chunks
    ASSUMPTION = "assumption"  # what the reader assumed where the file says nothing
    COMPANION = "companion"  # a second file of a pair (the .vsv beside a .bin)


_EXCEPTIONS: Dict[Kind, Type[VmrsFormatError]] = {
    Kind.CHECKSUM: ChecksumError,
    Kind.SIGNATURE: SignatureError,
    Kind.TRUNCATED: TruncatedError,
    Kind.KEY_TREE: KeyTreeError,
    Kind.REPLAY_LOG: ReplayLogError,
    Kind.MEMORY: GuestMemoryFormatError,
    Kind.MISSING_BLOCK: GuestMemoryFormatError,
    Kind.BAD_BLOCK: GuestMemoryFormatError,
    Kind.PARTITION_STATE: PartitionStateError,
}


def exception_for(kind: Kind) -> Type[VmrsFormatError]:
    """The exception strict mode raises for a diagnostic of ``kind``."""
    return _EXCEPTIONS.get(kind, VmrsFormatError)


@dataclass(frozen=True)
class Diagnostic:
    """One finding. ``detail`` names a sub-kind where one kind covers several causes."""

    kind: Kind
    severity: Severity
    structure: str
    message: str
    offset: Optional[int] = None
    key_path: Optional[str] = None
    phase: Phase = Phase.OPEN
    detail: str = ""

    def __str__(self) -> str:
        return f"{describe_location(self.structure, self.offset, self.key_path)}: {self.message}"

    def as_dict(self) -> Dict[str, object]:
        return {
            "kind": self.kind.value,
            "severity": self.severity.name.lower(),
            "phase": self.phase.value,
            "structure": self.structure,
            "offset": self.offset,
            "key_path": self.key_path,
            "message": self.message,
            "detail": self.detail or None,
        }


class Diagnostics:
    """The sink every stage reports into; ``strict`` raises on warnings and errors."""

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self._items: List[Diagnostic] = []
        self._seen: set = set()
        self._lock = threading.Lock()

    def report(
        self,
        kind: Kind,
        severity: Severity,
        structure: str,
        message: str,
        *,
        offset: Optional[int] = None,
        key_path: Optional[str] = None,
        phase: Phase = Phase.OPEN,
        detail: str = "",
    ) -> Diagnostic:
        item = Diagnostic(kind, severity, structure, message, offset, key_path, phase, detail)
        if self.strict and severity >= Severity.WARNING:
            raise exception_for(kind)(
                message, structure=structure, offset=offset, key_path=key_path
            )
        with self._lock:
            if phase == Phase.READ:
                # Memory found bad while reading is reported once, however often it is read.
                identity = (kind, structure, message, offset, key_path)
                if identity in self._seen:
                    return item
                self._seen.add(identity)
            self._items.append(item)
        return item

    def note(self, kind: Kind, structure: str, message: str, **where: object) -> Diagnostic:
        return self.report(kind, Severity.NOTE, structure, message, **where)  # type: ignore[arg-type]

    def warn(self, kind: Kind, structure: str, message: str, **where: object) -> Diagnostic:
        return self.report(kind, Severity.WARNING, structure, message, **where)  # type: ignore[arg-type]

    def error(self, kind: Kind, structure: str, message: str, **where: object) -> Diagnostic:
        return self.report(kind, Severity.ERROR, structure, message, **where)  # type: ignore[arg-type]

    # --- queries ----------------------------------------------------------------------
    @property
    def items(self) -> Tuple[Diagnostic, ...]:
        with self._lock:
            return tuple(self._items)

    def __iter__(self) -> Iterator[Diagnostic]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self._items)

    def at_least(self, severity: Severity) -> Tuple[Diagnostic, ...]:
        return tuple(item for item in self.items if item.severity >= severity)

    @property
    def problems(self) -> Tuple[Diagnostic, ...]:
        """Warnings and errors: what is wrong with the file (notes are not)."""
        return self.at_least(Severity.WARNING)

    def grouped(self) -> Dict[Kind, List[Diagnostic]]:
        """Diagnostics by kind, kinds in enum order."""
        groups: Dict[Kind, List[Diagnostic]] = {}
        for item in sorted(self.items, key=lambda d: list(Kind).index(d.kind)):
            groups.setdefault(item.kind, []).append(item)
        return groups

    def counts(self) -> Dict[str, int]:
        """Number of notes, warnings and errors (keys ``note``, ``warning``, ``error``)."""
        result = {severity.name.lower(): 0 for severity in Severity}
        for item in self.items:
            result[item.severity.name.lower()] += 1
        return result
