"""ELF core export: ET_CORE with one PT_LOAD per guest-physical range and per-VP notes.

Layout: ELF header, program headers (the PT_NOTE first, as crash expects), the notes,
then the memory of each range at a page-aligned file offset.

* ``p_paddr`` is the GPA: that is the field volatility3's Elf64Layer maps, and the one
  crash and makedumpfile read for physical memory. ``p_vaddr`` is set to the same
  value (identity): the segments do not overlap (QEMU's paging-off dumps put 0 in every
  ``p_vaddr``), and gdb, which reads memory by ``p_vaddr``, then reads physical
  addresses; kernel virtual addresses need a page-table walk that gdb does not do.
* Notes: one ``NT_PRSTATUS`` ("CORE") per VP with ``pr_pid`` = VP index + 1 and the
  registers in Linux ``user_regs_struct`` order, so gdb shows one thread per VP; an
  ``NT_PRFPREG`` (the FXSAVE image) where the VP's floating-point state was saved; for
  Linux guests a ``VMCOREINFO`` note copied from the guest's own text when found.
* The file is ELFCLASS64 for every guest (physical addresses need 64 bits, and
  volatility3 reads ELF64 only); a 32-bit guest gets ``EM_386`` and the i386
  ``elf_prstatus`` layout (not checked with gdb).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

from volatility3_vmrs.savedstate import SavedStateDump, VmrsError
from volatility3_vmrs.savedstate.structs import Layout
from volatility3_vmrs.savedstate.types import VIRTUAL_PROCESSOR_ARCH

from .cpu import CpuState, cpu_state
from .vmcoreinfo import find_vmcoreinfo
from .writer import ExportError, MemoryRange, Output, copy_range

EXTENSION = "elf"
PAGE = 0x1000

ELFCLASS64, ELFDATA2LSB, EV_CURRENT = 2, 1, 1
ET_CORE = 4
EM_386, EM_X86_64 = 3, 62
PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
NT_PRSTATUS, NT_PRFPREG = 1, 2
NT_VMCOREINFO = 0
PN_XNUM = 0xFFFF

ELF64_EHDR = Layout(
    "Elf64_Ehdr",
    (
        ("e_ident", "16s"),
        ("e_type", "H"),
        ("e_machine", "H"),
        ("e_version", "I"),
        ("e_entry", "Q"),
        ("e_phoff", "Q"),
        ("e_shoff", "Q"),
        ("e_flags", "I"),
        ("e_ehsize", "H"),
        ("e_phentsize", "H"),
        ("e_phnum", "H"),
        ("e_shentsize", "H"),
        ("e_shnum", "H"),
        ("e_shstrndx", "H"),
    ),
)
ELF64_PHDR = Layout(
    "Elf64_Phdr",
    (
        ("p_type", "I"),
        ("p_flags", "I"),
        ("p_offset", "Q"),
        ("p_vaddr", "Q"),
        ("p_paddr", "Q"),
        ("p_filesz", "Q"),
        ("p_memsz", "Q"),
        ("p_align", "Q"),
    ),
)
ELF_NHDR = Layout("Elf_Nhdr", (("n_namesz", "I"), ("n_descsz", "I"), ("n_type", "I")))
assert ELF64_EHDR.size == 64 and ELF64_PHDR.size == 56

# Linux user_regs_struct (arch/x86/include/asm/user_64.h), in order.
USER_REGS_X86_64 = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
    "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs_selector", "rflags",
    "rsp", "ss_selector", "fs_base", "gs_base", "ds_selector", "es_selector",
    "fs_selector", "gs_selector",
)  # fmt: skip
# i386 user_regs_struct (arch/x86/include/asm/user_32.h), 32-bit slots.
USER_REGS_I386 = (
    "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rax", "ds_selector", "es_selector",
    "fs_selector", "gs_selector", "orig_rax", "rip", "cs_selector", "rflags", "rsp",
    "ss_selector",
)  # fmt: skip


def _prstatus(regs_code: str, word: str) -> Layout:
    """``struct elf_prstatus`` with ``word``-sized longs and timevals."""
    return Layout(
        f"elf_prstatus_{regs_code}",
        (
            ("si_signo", "i"),
            ("si_code", "i"),
            ("si_errno", "i"),
            ("pr_cursig", "h"),
            ("_pad0", "2s"),
            ("pr_sigpend", word),
            ("pr_sighold", word),
            ("pr_pid", "i"),
            ("pr_ppid", "i"),
            ("pr_pgrp", "i"),
            ("pr_sid", "i"),
            ("_times", f"{8 * struct_size(word)}s"),  # utime stime cutime cstime
            ("pr_reg", regs_code),
            ("pr_fpvalid", "i"),
            ("_pad1", "4s" if word == "Q" else "0s"),
        ),
    )


def struct_size(code: str) -> int:
    return {"Q": 8, "I": 4}[code]


PRSTATUS_X86_64 = _prstatus(f"{len(USER_REGS_X86_64) * 8}s", "Q")
PRSTATUS_I386 = _prstatus(f"{len(USER_REGS_I386) * 4}s", "I")
assert PRSTATUS_X86_64.size == 336 and PRSTATUS_I386.size == 144


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def note(name: bytes, note_type: int, desc: bytes) -> bytes:
    """One ELF note: header, NUL-terminated name and descriptor, each padded to 4."""
    name_z = name + b"\0"
    header = ELF_NHDR.pack(n_namesz=len(name_z), n_descsz=len(desc), n_type=note_type)
    return header + _pad4(name_z) + _pad4(desc)


def prstatus(state: CpuState, is_64: bool) -> bytes:
    values = dict(state.values, orig_rax=0xFFFF_FFFF_FFFF_FFFF)
    order, layout, size = (
        (USER_REGS_X86_64, PRSTATUS_X86_64, 8) if is_64 else (USER_REGS_I386, PRSTATUS_I386, 4)
    )
    mask = (1 << (8 * size)) - 1
    regs = b"".join((values[name] & mask).to_bytes(size, "little") for name in order)
    return layout.pack(
        si_signo=0,
        si_code=0,
        si_errno=0,
        pr_cursig=0,
        pr_sigpend=0,
        pr_sighold=0,
        pr_pid=state.vp + 1,
        pr_ppid=0,
        pr_pgrp=0,
        pr_sid=0,
        pr_reg=regs,
        pr_fpvalid=int(state.fxsave is not None and is_64),
    )


def build_notes(
    dump: SavedStateDump, ranges: Sequence[MemoryRange], is_64: bool
) -> Tuple[bytes, List[str]]:
    messages: List[str] = []
    parts: List[bytes] = []
    for vp in dump.vp_indices:
        try:
            state = cpu_state(dump, vp)
        except VmrsError as error:
            messages.append(f"VP {vp}: no NT_PRSTATUS ({error})")
            continue
        parts.append(note(b"CORE", NT_PRSTATUS, prstatus(state, is_64)))
        if is_64 and state.fxsave is not None:
            parts.append(note(b"CORE", NT_PRFPREG, state.fxsave))
    if dump.guest_os_info().os_family == "Linux":
        text = find_vmcoreinfo(dump, ranges)
        if text is None:
            messages.append("no VMCOREINFO text found in guest memory: crash needs --kaslr")
        else:
            parts.append(note(b"VMCOREINFO", NT_VMCOREINFO, text))
    return b"".join(parts), messages


def elf_machine(dump: SavedStateDump) -> int:
    architecture = dump.architecture(dump.vp_indices[0]) if dump.vp_indices else None
    if architecture == VIRTUAL_PROCESSOR_ARCH.Arch_x86:
        return EM_386
    if architecture in (VIRTUAL_PROCESSOR_ARCH.Arch_x64, None):
        return EM_X86_64
    raise ExportError(f"no ELF core layout for a {architecture.name} guest")


def write_elf(dump: SavedStateDump, ranges: Sequence[MemoryRange], output: Output) -> List[str]:
    machine = elf_machine(dump)
    phnum = len(ranges) + 1
    if phnum >= PN_XNUM:
        raise ExportError(f"{len(ranges)} memory ranges: more than an ELF header can count")
    notes, messages = build_notes(dump, ranges, machine == EM_X86_64)
    notes_offset = ELF64_EHDR.size + phnum * ELF64_PHDR.size
    data_offset = -(-(notes_offset + len(notes)) // PAGE) * PAGE
    ident = b"\x7fELF" + bytes((ELFCLASS64, ELFDATA2LSB, EV_CURRENT)) + bytes(9)
    header = ELF64_EHDR.pack(
        e_ident=ident,
        e_type=ET_CORE,
        e_machine=machine,
        e_version=EV_CURRENT,
        e_entry=0,
        e_phoff=ELF64_EHDR.size,
        e_shoff=0,
        e_flags=0,
        e_ehsize=ELF64_EHDR.size,
        e_phentsize=ELF64_PHDR.size,
        e_phnum=phnum,
        e_shentsize=0,
        e_shnum=0,
        e_shstrndx=0,
    )
    phdrs = [
        ELF64_PHDR.pack(
            p_type=PT_NOTE,
            p_flags=0,
            p_offset=notes_offset,
            p_vaddr=0,
            p_paddr=0,
            p_filesz=len(notes),
            p_memsz=len(notes),
            p_align=0,
        )
    ]
    offset = data_offset
    for memory_range in ranges:
        phdrs.append(
            ELF64_PHDR.pack(
                p_type=PT_LOAD,
                p_flags=PF_R | PF_W | PF_X,
                p_offset=offset,
                p_vaddr=memory_range.gpa,
                p_paddr=memory_range.gpa,
                p_filesz=memory_range.size,
                p_memsz=memory_range.size,
                p_align=PAGE,
            )
        )
        offset += memory_range.size
    output.write(header + b"".join(phdrs) + notes)
    output.hole(data_offset - output.position, memory=False)
    for memory_range in ranges:
        copy_range(dump, memory_range, output)
    return messages
