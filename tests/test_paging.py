"""GVA -> GPA translation in 32-bit, PAE and long mode, on built page tables."""

from __future__ import annotations

import pytest

from tests.support.pagetables import (
    GIB1,
    KIB4,
    MIB2,
    MIB4,
    NX,
    PS,
    RW,
    US,
    PageTableBuilder,
)
from volatility3_vmrs.savedstate.errors import (
    InvalidArgumentError,
    MemoryReadError,
    VaNotMappedError,
)
from volatility3_vmrs.savedstate.paging import (
    NON_CANONICAL,
    PageNotPresentError,
    dtb_from_cr3,
    translate,
    walk_levels,
)
from volatility3_vmrs.savedstate.types import PAGING_MODE

LONG = PAGING_MODE.Paging_Long
PAE = PAGING_MODE.Paging_Pae
BIT32 = PAGING_MODE.Paging_32Bit


def _check_all(builder: PageTableBuilder, cr3: int) -> None:
    for m in builder.mappings:
        for offset in (0, 0x123, m.size - 1):
            t = translate(builder.read, builder.mode, cr3, m.va + offset)
            assert t.gpa == m.pa + offset, hex(m.va + offset)
            assert t.page_size == m.size
            assert t.page_base == m.pa


def test_long_mode_all_page_sizes_with_pcid_and_bit63():
    b = PageTableBuilder(LONG)
    b.map(0x0000_7FF6_1234_5000, 0x0000_0012_3456_7000, KIB4, RW | US)
    b.map(0xFFFF_F800_0000_0000, 0x0000_0000_0020_0000, MIB2, RW)
    b.map(0xFFFF_FA80_0000_0000, 0x0000_0040_0000_0000, GIB1, RW | NX)
    b.map(0x0000_0000_0040_0000, 0x000F_FFFF_FFFF_F000, KIB4)  # top of 52-bit space
    cr3 = b.cr3 | 0x8000_0000_0000_0000 | 0x5A5  # bit 63 + PCID
    _check_all(b, cr3)
    t = translate(b.read, LONG, cr3, 0x0000_7FF6_1234_5678)
    assert [s.level_name for s in t.steps] == ["PML4E", "PDPTE", "PDE", "PTE"]
    assert t.user and t.writable and t.executable
    t = translate(b.read, LONG, cr3, 0xFFFF_FA80_1234_5678)
    assert [s.level_name for s in t.steps] == ["PML4E", "PDPTE"]
    assert t.steps[-1].flags.ps and t.steps[-1].flags.nx
    assert not t.executable and not t.user
    t = translate(b.read, LONG, cr3, 0xFFFF_F800_0001_0000)
    assert [s.level_name for s in t.steps] == ["PML4E", "PDPTE", "PDE"]


def test_entries_are_masked_to_52_bits():
    b = PageTableBuilder(LONG)
    b.map(0x1000, 0x5000, KIB4)
    pte = b.entry_address(0x1000, 3)
    value = int.from_bytes(b.read(pte, 8), "little")
    # Set NX, protection-key bits 62:59 and ignored bits 58:52: none may reach the GPA.
    b.write(pte, (value | 0xFFF0_0000_0000_0000).to_bytes(8, "little"))
    assert translate(b.read, LONG, b.cr3, 0x1234).gpa == 0x5234


def test_pae_4k_and_2m_pages_with_32_byte_aligned_cr3():
    b = PageTableBuilder(PAE)
    assert b.cr3 % 0x1000 == 0x20
    b.map(0x8000_0000, 0x1_2340_0000, MIB2)
    b.map(0x0040_1000, 0x0000_7000, KIB4, RW | US | 0)
    b.map(0xC000_0000 | 0x3000, 0xF_FFFF_F000, KIB4)
    _check_all(b, b.cr3 | 0x18)  # PWT/PCD-like low bits are masked (bits 4:0)
    t = translate(b.read, PAE, b.cr3, 0x0040_1ABC)
    assert [s.level_name for s in t.steps] == ["PDPTE", "PDE", "PTE"]
    assert t.writable and t.user  # the PDPTE's missing RW/US bits do not restrict
    assert not t.steps[0].flags.ps


def test_32bit_4k_and_4m_pages_with_pse36():
    b = PageTableBuilder(BIT32)
    b.map(0x8040_0000, 0x0140_0000, MIB4)
    b.map(0xC000_0000, 0x12_0000_0000 | 0x0080_0000, MIB4)  # PSE-36: above 4 GiB
    b.map(0x0001_0000, 0x0000_3000, KIB4)
    _check_all(b, b.cr3 | 0xFFF)
    t = translate(b.read, BIT32, b.cr3, 0x8040_1234)
    assert [s.level_name for s in t.steps] == ["PDE"]
    assert t.steps[0].flags.ps and not t.steps[0].flags.nx


@pytest.mark.parametrize(
    ("mode", "depth", "level", "size"),
    [
        (LONG, 0, "PML4E", 1 << 39),
        (LONG, 1, "PDPTE", GIB1),
        (LONG, 2, "PDE", MIB2),
        (LONG, 3, "PTE", KIB4),
        (PAE, 0, "PDPTE", GIB1),
        (PAE, 1, "PDE", MIB2),
        (PAE, 2, "PTE", KIB4),
        (BIT32, 0, "PDE", MIB4),
        (BIT32, 1, "PTE", KIB4),
    ],
)
def test_not_present_at_each_level(mode, depth, level, size):
    b = PageTableBuilder(mode)
    va = 0x0000_0000_8060_5000 if mode != LONG else 0xFFFF_F800_8060_5000
    b.map(va, 0x9000, KIB4)
    b.clear_present(va, depth)
    with pytest.raises(VaNotMappedError) as info:
        translate(b.read, mode, b.cr3, va + 0x10)
    err = info.value
    assert isinstance(err, PageNotPresentError)
    assert err.hresult == 0xC0370505
    assert err.level == level
    assert err.unmapped_size == size
    assert err.region_start == (va + 0x10) & ~(size - 1)
    assert len(err.steps) == depth + 1
    assert err.steps[-1].level_name == level
    assert not err.steps[-1].flags.present
    assert all(s.flags.present for s in err.steps[:-1])


def test_empty_tables_fail_at_the_top():
    b = PageTableBuilder(LONG)
    with pytest.raises(PageNotPresentError) as info:
        translate(b.read, LONG, b.cr3, 0x1000)
    assert info.value.level == "PML4E"


def test_non_canonical_address():
    b = PageTableBuilder(LONG)
    with pytest.raises(PageNotPresentError) as info:
        translate(b.read, LONG, b.cr3, 0x0000_8000_0000_0000)
    err = info.value
    assert err.level == NON_CANONICAL == "non-canonical"
    assert "bits 63:47 must all equal bit 47" in str(err) and "4-level" in str(err)
    assert err.region_start == 0x0000_8000_0000_0000
    assert err.region_start + err.unmapped_size == 0xFFFF_8000_0000_0000
    # 57-bit addresses are canonical under LA57
    with pytest.raises(PageNotPresentError) as info:
        translate(b.read, LONG, b.cr3, 0x0000_8000_0000_0000, la57=True)
    assert info.value.level == "PML5E"


def test_five_level_walk():
    b = PageTableBuilder(LONG, la57=True)
    b.map(0xFF80_0000_0000_1000, 0x4000, KIB4)
    t = translate(b.read, LONG, b.cr3, 0xFF80_0000_0000_1ABC, la57=True)
    assert t.gpa == 0x4ABC
    assert [s.level_name for s in t.steps] == ["PML5E", "PML4E", "PDPTE", "PDE", "PTE"]


def test_windows_self_reference_entry():
    b = PageTableBuilder(LONG)
    index = b.add_self_reference(0x1ED)
    va = b.self_reference_va(index)
    assert va == 0xFFFF_F6FB_7DBE_D000
    t = translate(b.read, LONG, b.cr3 | 0x2, va + 8 * 0x1ED)
    assert t.gpa == b.cr3 + 8 * 0x1ED


def test_read_failures_propagate():
    def failing(address: int, size: int) -> bytes:
        raise OSError(f"cannot read {address:#x}")

    with pytest.raises(OSError, match="cannot read 0x1000"):
        translate(failing, LONG, 0x1000, 0x1000)
    with pytest.raises(MemoryReadError):
        translate(lambda a, s: b"\x01", LONG, 0x1000, 0x1000)


def test_mode_and_range_checks():
    assert translate(lambda a, s: b"", PAGING_MODE.Paging_NonPaged, 0, 0x1234).gpa == 0x1234
    for mode in (PAGING_MODE.Paging_Invalid, PAGING_MODE.Paging_Armv8):
        with pytest.raises(InvalidArgumentError):
            translate(lambda a, s: bytes(s), mode, 0, 0)
    with pytest.raises(InvalidArgumentError):
        translate(lambda a, s: bytes(s), PAE, 0, 1 << 32)
    with pytest.raises(InvalidArgumentError):
        translate(lambda a, s: bytes(s), LONG, 0, 1 << 64)


def test_dtb_from_cr3_and_level_names():
    assert dtb_from_cr3(LONG, 0x8000_0000_1AD0_0FFF) == 0x1AD0_0000
    assert dtb_from_cr3(PAE, 0x1AD0_0FFF) == 0x1AD0_0FE0
    assert dtb_from_cr3(BIT32, 0x1AD0_0FFF) == 0x1AD0_0000
    assert walk_levels(PAE) == ("PDPTE", "PDE", "PTE")
    assert walk_levels(PAGING_MODE.Paging_NonPaged) is None
    assert PS == 0x80
