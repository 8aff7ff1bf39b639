"""Find what an ISF is made from in guest-physical memory, and make the ISF.

:func:`find_kernel_symbols` scans the memory once for three things: BTF headers, the
kallsyms token table (:data:`~volatility3_vmrs.kernel.kallsyms.TOKEN_NEEDLE`) and
``Linux version`` strings. The kernel image is physically contiguous, so the tables are
read as they lie, and ``__start_BTF`` (a kallsyms symbol) ties physical addresses to
link-time ones. Symbols are given at link time (``_text`` at 0xffffffff81000000, as a
``System.map`` has them), which is what :mod:`volatility3_vmrs.tools.btf2isf` expects;
Volatility finds the slide itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from volatility3_vmrs.kernel.btf import BTF_NEEDLE, find_btf
from volatility3_vmrs.kernel.errors import KernelSymbolsError
from volatility3_vmrs.kernel.kallsyms import TOKEN_NEEDLE, KallsymsTables, find_kallsyms
from volatility3_vmrs.kernel.kaslr import VpState, virtual_shift_from_registers
from volatility3_vmrs.kernel.memory import PhysicalMemory
from volatility3_vmrs.tools import btf2isf

BANNER_NEEDLE = b"Linux version "
TEXT_BASE = btf2isf.DEFAULT_TEXT_BASE
LINK_PHYSICAL_START = TEXT_BASE - 0xFFFFFFFF80000000  # CONFIG_PHYSICAL_START (16 MiB)
KALLSYMS_WINDOW = 24 << 20  # the tables lie within this distance of the token table
MAX_BANNER = 1024
IMAGE_WINDOW = 64 << 20  # how far from .BTF the kallsyms tables may be (same image)
MAX_CANDIDATES = 64


@dataclass
class KernelSymbols:
    """What the guest's memory says about its kernel, ready for :func:`btf2isf.build_isf`."""

    banner: bytes
    btf: bytes
    btf_gpa: int
    symbols: Dict[str, int]
    """Link-time address of every core kernel symbol and of the kallsyms tables."""
    num_syms: int
    kallsyms_gpa: int
    physical_text: int
    virtual_shift: Optional[int]
    virtual_shift_source: str
    seconds: float
    notes: List[str] = field(default_factory=list)

    @property
    def physical_shift(self) -> int:
        return self.physical_text - LINK_PHYSICAL_START

    @property
    def release(self) -> str:
        """The kernel release (``uname -r``) from the banner."""
        parts = self.banner.decode("latin-1").split()
        return parts[2] if len(parts) > 2 else "unknown"

    def isf(self) -> Dict[str, Any]:
        """The ISF dictionary (deterministic; see :func:`btf2isf.dumps`)."""
        return btf2isf.build_isf(self.btf, self.symbols, self.banner, "symtab", "kallsyms")


def _kallsyms(memory: PhysicalMemory, hits: List[int]) -> Optional[Tuple[KallsymsTables, int]]:
    for hit in hits:
        start, end = memory.clip(max(0, hit - KALLSYMS_WINDOW), hit + KALLSYMS_WINDOW)
        if not start <= hit < end:
            start, end = memory.clip(hit, hit + KALLSYMS_WINDOW)
        window = memory.read(start, end - start)
        tables = find_kallsyms(window, hit - start)
        if tables is not None:
            return tables, start
    return None


def _link_symbols(tables: KallsymsTables) -> Dict[str, int]:
    """name -> link-time address; a global symbol wins a duplicate name, else the first."""
    text = next((v for name, _t, v, absolute in tables.symbols if name == "_text"), None)
    if text is None:
        raise KernelSymbolsError("kallsyms", "kallsyms has no _text symbol")
    symbols: Dict[str, int] = {}
    is_global: Dict[str, bool] = {}
    for name, typ, value, absolute in tables.symbols:
        addr = value if absolute else TEXT_BASE + (value - text)
        glob = typ.isupper()
        if name not in symbols or (glob and not is_global[name]):
            symbols[name] = addr
            is_global[name] = glob
    return symbols


def _physical_text(
    memory: PhysicalMemory, symbols: Dict[str, int], btf_gpa: int, banners: List[int]
) -> int:
    """Guest-physical address of ``_text``: from __start_BTF, checked by linux_banner."""
    candidates: List[int] = []
    if "__start_BTF" in symbols:
        candidates.append(btf_gpa - (symbols["__start_BTF"] - TEXT_BASE))
    if "linux_banner" in symbols:
        candidates += [hit - (symbols["linux_banner"] - TEXT_BASE) for hit in banners]
    for text in candidates:
        if text < 0 or text & 0xFFF:
            continue
        if "linux_banner" not in symbols:
            return text
        at = text + symbols["linux_banner"] - TEXT_BASE
        if memory.read(at, len(BANNER_NEEDLE)) == BANNER_NEEDLE:
            return text
    raise KernelSymbolsError(
        "linux_banner", "linux_banner is not where kallsyms and the BTF blob put it"
    )


def find_kernel_symbols(memory: PhysicalMemory, vp: Optional[VpState] = None) -> KernelSymbols:
    """Find BTF, kallsyms and the banner of the Linux kernel in ``memory``.

    ``vp`` (a kernel-mode virtual processor's CR3 and registers, when the image has them)
    gives the virtual KASLR slide where kallsyms does not hold run-time addresses, and
    checks it where it does. Raises :class:`KernelSymbolsError` naming what is missing.
    """
    started = time.perf_counter()
    hits = memory.find_all([BTF_NEEDLE, BANNER_NEEDLE], MAX_CANDIDATES)
    scanned = f"{memory.size >> 20} MiB of guest memory"
    if not hits[BANNER_NEEDLE]:
        raise KernelSymbolsError("linux_banner", f"no Linux kernel banner in {scanned}")
    btf = find_btf(memory, hits[BTF_NEEDLE])
    if btf is None:
        raise KernelSymbolsError(
            "BTF",
            f"no kernel BTF (magic 0xEB9F) in {scanned}: the kernel was built without "
            "CONFIG_DEBUG_INFO_BTF or its .BTF section is not in the image",
        )
    # kallsyms lies in .rodata of the same (physically contiguous) image as .BTF
    token_hits = memory.find_near(
        TOKEN_NEEDLE, btf.gpa - IMAGE_WINDOW, btf.gpa + len(btf.data) + IMAGE_WINDOW
    )
    found = _kallsyms(memory, sorted(token_hits, key=lambda hit: abs(hit - btf.gpa)))
    if found is None:
        raise KernelSymbolsError(
            "kallsyms",
            f"no kallsyms tables in {scanned}: the kernel was built without "
            "CONFIG_KALLSYMS_ALL or they are not in the image",
        )
    tables, window_start = found
    symbols = _link_symbols(tables)
    physical_text = _physical_text(memory, symbols, btf.gpa, hits[BANNER_NEEDLE])
    for name, offset in tables.positions.items():
        symbols[name] = TEXT_BASE + (window_start + offset - physical_text)
    banner_gpa = physical_text + symbols["linux_banner"] - TEXT_BASE
    banner = memory.read(banner_gpa, MAX_BANNER).split(b"\0", 1)[0]
    notes: List[str] = []
    shift: Optional[int] = None
    source = "unknown"
    runtime_text = next((v for n, _t, v, a in tables.symbols if n == "_text" and not a), None)
    if tables.relative_base is not None or "kallsyms_addresses" in tables.positions:
        shift, source = (runtime_text or TEXT_BASE) - TEXT_BASE, "kallsyms"
    if vp is not None:
        from_vp = virtual_shift_from_registers(memory.read, vp, symbols)
        if from_vp is not None:
            if shift is None:
                shift, source = from_vp
            elif from_vp[0] != shift:
                notes.append(
                    f"{from_vp[1]} gives a KASLR slide of {from_vp[0]:#x}, kallsyms {shift:#x}"
                )
            else:
                source = f"kallsyms, confirmed by {from_vp[1]}"
    return KernelSymbols(
        banner=banner,
        btf=btf.data,
        btf_gpa=btf.gpa,
        symbols=symbols,
        num_syms=tables.num_syms,
        kallsyms_gpa=window_start + tables.positions["kallsyms_names"],
        physical_text=physical_text,
        virtual_shift=shift,
        virtual_shift_source=source,
        seconds=time.perf_counter() - started,
        notes=notes,
    )
