"""Errors of the in-memory kernel symbol finder (part of the project's VmrsError family)."""

from __future__ import annotations

from volatility3_vmrs.savedstate.errors import VmrsError

OTHER_ROUTES = (
    "to get an ISF another way: run dwarf2json on the kernel's debug package "
    "(Debian/Ubuntu linux-image-<release>-dbg, Fedora kernel-debuginfo), or "
    "vmrs-btf2isf --vmlinux /boot/vmlinuz-<release> --system-map /boot/System.map-<release>, "
    "then pass the directory with -s"
)


class KernelSymbolsError(VmrsError):
    """The guest's memory does not hold what an ISF is made from.

    ``missing`` names what was not found (``"BTF"``, ``"kallsyms"``, ``"linux_banner"``);
    the message says so in one line and names the other ways to get an ISF.
    """

    def __init__(self, missing: str, detail: str) -> None:
        self.missing = missing
        self.detail = detail
        super().__init__(f"{detail}; {OTHER_ROUTES}")
