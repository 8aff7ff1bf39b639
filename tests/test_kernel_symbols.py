"""The kernel symbol finder (volatility3_vmrs.kernel): BTF + kallsyms from guest memory.

Oracles: the committed inputs of the real guest's ISF (``btf.bin.xz``, the guest's own
``/proc/kallsyms``, ``kallsyms_tables.map`` found in ``vmlinux``, the banner), none of
which the finder reads; and kallsyms tables written in each kernel layout by
``tests/support/kallsyms_writer.py``.
"""

from __future__ import annotations

import lzma
import mmap
import struct
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from tests.fixtures.linux_guest import artefacts
from tests.support import kallsyms_writer
from volatility3_vmrs.kernel import KernelSymbolsError, PhysicalMemory, find_kernel_symbols
from volatility3_vmrs.kernel.btf import BTF_NEEDLE
from volatility3_vmrs.kernel.kallsyms import TOKEN_NEEDLE, find_kallsyms
from volatility3_vmrs.kernel.kaslr import VpState, translate
from volatility3_vmrs.savedstate import SavedStateDump
from volatility3_vmrs.tools import btf2isf

MANIFEST = artefacts.load_manifest()


def elf_memory(path: Path, patches: Optional[Dict[int, bytes]] = None) -> Iterator[PhysicalMemory]:
    """The ELF's PT_LOAD segments as guest-physical memory; ``patches`` overwrite GPAs."""
    segments = artefacts.elf_load_segments(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:

        def read(gpa: int, size: int) -> bytes:
            out = bytearray(size)
            for start, offset, length in segments:
                lo, hi = max(gpa, start), min(gpa + size, start + length)
                if lo < hi:
                    out[lo - gpa : hi - gpa] = mm[offset + lo - start : offset + hi - start]
            for at, data in (patches or {}).items():
                lo, hi = max(gpa, at), min(gpa + size, at + len(data))
                if lo < hi:
                    out[lo - gpa : hi - gpa] = data[lo - at : hi - at]
            return bytes(out)

        yield PhysicalMemory.of(read, [(start, length) for start, _o, length in segments])


@pytest.fixture(scope="module")
def guest(linux_guest_elf):
    gen = elf_memory(linux_guest_elf)
    memory = next(gen)
    yield memory, find_kernel_symbols(memory)
    gen.close()


def committed_symbols() -> Dict[str, int]:
    text = lzma.decompress(artefacts.KALLSYMS_XZ.read_bytes()).decode("latin-1")
    symbols = btf2isf.parse_symbol_list(text)
    symbols = btf2isf.unrelocate(symbols, btf2isf.kaslr_shift(symbols))
    tables = btf2isf.parse_symbol_list(artefacts.KALLSYMS_TABLES.read_text())
    return {**symbols, **tables}


def test_symbols_equal_the_guests_own_kallsyms_and_tables(guest):
    _memory, kernel = guest
    assert kernel.symbols == committed_symbols()
    assert kernel.num_syms == btf2isf.count_core_symbols(
        lzma.decompress(artefacts.KALLSYMS_XZ.read_bytes()).decode("latin-1")
    )


def test_btf_banner_and_kaslr(guest):
    _memory, kernel = guest
    assert kernel.btf == lzma.decompress(artefacts.BTF_XZ.read_bytes())
    assert kernel.banner == artefacts.BANNER.read_bytes().rstrip(b"\0")
    assert kernel.banner.decode() == MANIFEST["banner"]
    assert kernel.release == MANIFEST["kernel_release"]
    assert kernel.virtual_shift == MANIFEST["kaslr_virtual_shift"]
    assert kernel.virtual_shift_source == "kallsyms"
    assert kernel.physical_text % (2 << 20) == 0


def test_isf_from_memory_is_the_committed_isf(guest):
    """Byte for byte: so every type and symbol any plugin uses is the same."""
    _memory, kernel = guest
    committed = lzma.decompress(artefacts.isf_path().read_bytes())
    assert btf2isf.dumps(kernel.isf()) == committed


def test_saved_processor_state_confirms_the_slide(linux_guest_vmrs):
    with SavedStateDump(str(linux_guest_vmrs["xpress"])) as dump:
        page, chunks = dump.memory_chunks()
        ranges = [(c.GuestPhysicalStartPageIndex * page, c.PageCount * page) for c in chunks]
        memory = PhysicalMemory.of(
            lambda gpa, size: dump.read_physical(gpa, size, pad=True), ranges
        )
        kernel_vp = next(vp for vp in dump.vp_indices if dump.registers(vp).in_kernel_space)
        regs = dump.registers(kernel_vp)
        vp = VpState(cr3=regs.cr3, idtr_base=regs.idtr.base, gs_base=regs.gs.base)
        kernel = find_kernel_symbols(memory, vp)
        assert kernel.virtual_shift == MANIFEST["kaslr_virtual_shift"]
        assert kernel.virtual_shift_source == "kallsyms, confirmed by IDTR base"
        # the kernel's page tables map the run-time _text onto the image found physically
        runtime_text = btf2isf.DEFAULT_TEXT_BASE + kernel.virtual_shift
        assert translate(memory.read, regs.cr3, runtime_text) == kernel.physical_text


def test_zeroed_btf_is_one_clear_error(guest, linux_guest_elf):
    _memory, kernel = guest
    gen = elf_memory(linux_guest_elf, {kernel.btf_gpa: bytes(len(kernel.btf))})
    with pytest.raises(KernelSymbolsError) as caught:
        find_kernel_symbols(next(gen))
    gen.close()
    message = str(caught.value)
    assert caught.value.missing == "BTF"
    assert "no kernel BTF (magic 0xEB9F)" in message and "CONFIG_DEBUG_INFO_BTF" in message
    assert "dwarf2json" in message and "\n" not in message


def test_kallsyms_not_found_is_one_clear_error(guest, linux_guest_elf):
    _memory, kernel = guest
    table = kernel.symbols["kallsyms_token_table"] - btf2isf.DEFAULT_TEXT_BASE
    table_gpa = kernel.physical_text + table
    gen = elf_memory(linux_guest_elf, {table_gpa: bytes(1024)})
    with pytest.raises(KernelSymbolsError) as caught:
        find_kernel_symbols(next(gen))
    gen.close()
    assert caught.value.missing == "kallsyms"
    assert "no kallsyms tables" in str(caught.value)


def test_not_a_linux_image():
    memory = PhysicalMemory.of(lambda gpa, size: bytes(size), [(0, 1 << 20)])
    with pytest.raises(KernelSymbolsError, match="no Linux kernel banner"):
        find_kernel_symbols(memory)


def test_needles_straddling_scan_chunks(monkeypatch):
    from volatility3_vmrs.kernel import memory as memory_module

    monkeypatch.setattr(memory_module, "SCAN_CHUNK", 4096)
    data = bytearray(3 * 4096)
    data[4096 - 3 : 4096 - 3 + len(BTF_NEEDLE)] = BTF_NEEDLE
    data[2 * 4096 - 1 : 2 * 4096 - 1 + len(TOKEN_NEEDLE)] = TOKEN_NEEDLE
    memory = PhysicalMemory.of(lambda gpa, size: bytes(data[gpa : gpa + size]), [(0, len(data))])
    hits = memory.find_all([BTF_NEEDLE, TOKEN_NEEDLE])
    assert hits == {BTF_NEEDLE: [4096 - 3], TOKEN_NEEDLE: [2 * 4096 - 1]}


# --------------------------------------------------------------------------- layouts


def synthetic_symbols(long_name: bool) -> List[Tuple[str, str, int, bool]]:
    percpu = [("fixed_percpu_data", "A", 0, True), ("cpu_debug_store", "A", 0x1000, True)]
    words = ["alpha", "bravo", "quick", "jump", "vexed", "wizard", "zebra", "yak", "golf"]
    names = ["_text", "startup_64"] + [f"{words[i % 9]}_{i}_fn_xy" for i in range(700)]
    if long_name:
        names.append("long_" + "qwertyuiopasdfghjklzxcvbnm" * 6)
    names += ["init_task", "linux_banner"]
    text = 0xFFFFFFFFA1200000
    out = list(percpu)
    for i, name in enumerate(names):
        out.append((name, "T" if i % 3 else "t", text + 0x40 * i, False))
    return out


CASES = [
    ("4.x", {"absolute_percpu": True}, False),
    ("4.x", {"absolute_percpu": False}, False),
    ("4.x", {"marker_width": 8}, False),
    ("4.x", {"relative": False}, False),
    ("6.1", {}, True),
    ("6.4", {}, True),
    ("6.4", {"relative": False}, True),
]


@pytest.mark.parametrize(("layout", "options", "long_name"), CASES)
def test_kallsyms_layouts(layout, options, long_name):
    symbols = synthetic_symbols(long_name)
    if not options.get("absolute_percpu", True) and options.get("relative", True):
        symbols = [s for s in symbols if not s[3]]  # no absolute symbols without the option
    written = kallsyms_writer.build(symbols, layout, **options)
    tables = find_kallsyms(written.data, written.data.find(TOKEN_NEEDLE))
    assert tables is not None
    assert tables.positions == written.positions
    assert tables.num_syms == len(symbols)
    assert tables.symbols == symbols
    if options.get("relative", True):
        assert tables.relative_base == written.relative_base
    else:
        assert tables.relative_base is None


def test_kallsyms_rejects_a_damaged_marker():
    symbols = synthetic_symbols(False)
    written = kallsyms_writer.build(symbols, "6.1")
    data = bytearray(written.data)
    at = written.positions["kallsyms_markers"] + 4
    data[at : at + 4] = struct.pack("<I", struct.unpack_from("<I", data, at)[0] + 1)
    assert find_kallsyms(bytes(data), data.find(TOKEN_NEEDLE)) is None


def test_isf_made_is_recorded_as_validated_for_volatility(tmp_path, monkeypatch):
    """The automagic checks its ISF with fastjsonschema and notes it in volatility3's cache,
    so volatility3 does not validate it again (tens of seconds) - for the ISF as written."""
    import json

    from volatility3 import schemas

    from volatility3_vmrs.plugins.linux_symbols import record_validated

    monkeypatch.setattr(schemas, "cached_validation_filepath", str(tmp_path / "hashcache"))
    monkeypatch.setattr(schemas, "cached_validations", set())
    isf = json.loads(lzma.decompress(artefacts.isf_path().read_bytes()))
    as_written = json.loads(btf2isf.dumps(isf))
    record_validated(isf)
    assert isf == as_written  # validation left it as it is
    schema_file = Path(schemas.__file__).with_name("schema-6.2.0.json")
    digest = schemas.create_json_hash(as_written, json.loads(schema_file.read_text()))
    assert digest in json.loads((tmp_path / "hashcache").read_text())
    assert digest in schemas.cached_validations  # so schemas.validate() answers at once
