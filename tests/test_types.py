"""The DLL's data types: names and numbers against dump-provider-api.md section 2."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from volatility3_vmrs.savedstate.types import (
    GPA_MEMORY_CHUNK,
    GUEST_OS_MICROSOFT_IDS,
    GUEST_OS_OPENSOURCE_IDS,
    GUEST_OS_VENDOR,
    PAGING_MODE,
    REGISTER_ID,
    REGISTER_ID_X64,
    REGISTER_ID_X86,
    VIRTUAL_PROCESSOR_ARCH,
    VIRTUAL_PROCESSOR_REGISTER,
    VIRTUAL_PROCESSOR_VENDOR,
    GuestOsInfo,
    RegisterValue,
    Segment,
    Table,
)


def test_paging_mode_values():
    assert [(m.name, m.value) for m in PAGING_MODE] == [
        ("Paging_Invalid", 0),
        ("Paging_NonPaged", 1),
        ("Paging_32Bit", 2),
        ("Paging_Pae", 3),
        ("Paging_Long", 4),
        ("Paging_Armv8", 5),
    ]


def test_architecture_keeps_original_misspelling_and_alias():
    assert VIRTUAL_PROCESSOR_ARCH.Arch_Unkown == 0
    assert VIRTUAL_PROCESSOR_ARCH.Arch_Unknown is VIRTUAL_PROCESSOR_ARCH.Arch_Unkown
    assert VIRTUAL_PROCESSOR_ARCH.Arch_x86 == 1
    assert VIRTUAL_PROCESSOR_ARCH.Arch_x64 == 2
    assert VIRTUAL_PROCESSOR_ARCH.Arch_Armv8 == 3


def test_vendor_values():
    assert VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Unknown == 0
    assert VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Amd == 1
    assert VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Intel == 2
    assert VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Hygon == 3
    assert VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Arm == 4


def test_guest_os_enums():
    assert GUEST_OS_VENDOR.GuestOsVendorMicrosoft == 1
    assert GUEST_OS_VENDOR.GuestOsVendorHPE == 2
    assert GUEST_OS_VENDOR.GuestOsVendorLANCOM == 0x200
    assert GUEST_OS_MICROSOFT_IDS.GuestOsMicrosoftMSDOS == 1
    assert GUEST_OS_MICROSOFT_IDS.GuestOsMicrosoftWindowsNT == 4
    assert GUEST_OS_MICROSOFT_IDS.GuestOsMicrosoftWindowsCE == 5
    assert GUEST_OS_OPENSOURCE_IDS.GuestOsOpenSourceLinux == 1
    assert GUEST_OS_OPENSOURCE_IDS.GuestOsOpenSourceIllumos == 4


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X64_RegisterRax", 0),
        ("X64_RegisterRip", 16),
        ("X64_RegisterRFlags", 17),
        ("X64_RegisterLowXmm0", 18),
        ("X64_RegisterHighXmm0", 19),
        ("X64_RegisterHighXmm15", 49),
        ("X64_RegisterLowXmmControlStatus", 50),
        ("X64_RegisterHighXmmControlStatus", 51),
        ("X64_RegisterLowFpControlStatus", 52),
        ("X64_RegisterHighFpControlStatus", 53),
        ("X64_RegisterCr0", 54),
        ("X64_RegisterCr3", 56),
        ("X64_RegisterEfer", 59),
        ("X64_RegisterDr0", 60),
        ("X64_RegisterDr7", 65),
        ("X64_RegisterBaseGs", 66),
        ("X64_RegisterBaseFs", 67),
        ("X64_RegisterSegCs", 68),
        ("X64_RegisterSegSs", 73),
        ("X64_RegisterTr", 74),
        ("X64_RegisterLdtr", 75),
        ("X64_RegisterBaseIdtr", 76),
        ("X64_RegisterLimitGdtr", 79),
        ("X64_RegisterCount", 80),
    ],
)
def test_legacy_x64_ids(name, value):
    assert REGISTER_ID_X64[name] == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X86_RegisterEax", 0),
        ("X86_RegisterEdi", 7),
        ("X86_RegisterEip", 8),
        ("X86_RegisterEFlags", 9),
        ("X86_RegisterLowXmm0", 10),
        ("X86_RegisterHighXmm15", 41),
        ("X86_RegisterLowXmmControlStatus", 42),
        ("X86_RegisterHighFpControlStatus", 45),
        ("X86_RegisterCr0", 46),
        ("X86_RegisterCr3", 48),
        ("X86_RegisterEfer", 51),
        ("X86_RegisterDr0", 52),
        ("X86_RegisterDr7", 57),
        ("X86_RegisterBaseGs", 58),
        ("X86_RegisterLdtr", 67),
        ("X86_RegisterBaseIdtr", 68),
        ("X86_RegisterLimitGdtr", 71),
        ("X86_RegisterCount", 72),
    ],
)
def test_legacy_x86_ids(name, value):
    assert REGISTER_ID_X86[name] == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X64_RegisterRax", 0),
        ("X64_RegisterRFlags", 17),
        ("X64_RegisterXmm0", 18),
        ("X64_RegisterXmm15", 33),
        ("X64_RegisterFpMmx0", 34),
        ("X64_RegisterFpMmx7", 41),
        ("X64_RegisterFpControlStatus", 42),
        ("X64_RegisterXmmControlStatus", 43),
        ("X64_RegisterCr0", 44),
        ("X64_RegisterCr3", 46),
        ("X64_RegisterEfer", 49),
        ("X64_RegisterDr0", 50),
        ("X64_RegisterDr7", 55),
        ("X64_RegisterEs", 56),
        ("X64_RegisterCs", 57),
        ("X64_RegisterTr", 63),
        ("X64_RegisterIdtr", 64),
        ("X64_RegisterGdtr", 65),
        ("X64_RegisterMax", 66),
        ("ARM64_RegisterX0", 67),
        ("ARM64_RegisterX28", 95),
        ("ARM64_RegisterXFp", 96),
        ("ARM64_RegisterCpsr", 101),
        ("ARM64_RegisterQ0", 102),
        ("ARM64_RegisterQ31", 133),
        ("ARM64_RegisterFpStatus", 134),
        ("ARM64_RegisterFpControl", 135),
        ("ARM64_RegisterEsrEl1", 136),
        ("ARM64_RegisterTtbr0El1", 141),
        ("ARM64_RegisterTtbr1El1", 142),
        ("ARM64_RegisterSctlrEl1", 144),
        ("ARM64_RegisterTcrEl1", 146),
        ("ARM64_RegisterCntvCtlEl0", 157),
        ("ARM64_RegisterMax", 158),
    ],
)
def test_current_register_ids(name, value):
    assert REGISTER_ID[name] == value


def test_enum_sizes_are_exact():
    assert len(REGISTER_ID_X64) == 81
    assert len(REGISTER_ID_X86) == 73
    assert len(REGISTER_ID) == 159


def test_gpa_memory_chunk_is_frozen():
    chunk = GPA_MEMORY_CHUNK(GuestPhysicalStartPageIndex=0x100, PageCount=0x20)
    assert (chunk.start_page, chunk.page_count) == (0x100, 0x20)
    with pytest.raises(dataclasses.FrozenInstanceError):
        chunk.PageCount = 1  # type: ignore[misc]


def test_legacy_register_struct_fields():
    reg = VIRTUAL_PROCESSOR_REGISTER(
        Architecture=VIRTUAL_PROCESSOR_ARCH.Arch_x64,
        RegisterValue=5,
        RegisterId=REGISTER_ID_X64.X64_RegisterCr3,
    )
    assert [f.name for f in dataclasses.fields(reg)] == [
        "Architecture",
        "RegisterValue",
        "RegisterId",
    ]


def test_register_value_union_views():
    value = RegisterValue.from_int((0x1122334455667788 << 64) | 0x99AABBCCDDEEFF00)
    assert value.low64 == value.reg64 == 0x99AABBCCDDEEFF00
    assert value.high64 == 0x1122334455667788
    assert value.reg32 == 0xDDEEFF00
    assert value.reg16 == 0xFF00
    assert value.reg8 == 0x00

    seg = Segment(base=0xFFFFF80000000000, limit=0xFFFFFFFF, selector=0x10, attributes=0xA09B)
    sv = RegisterValue.from_segment(seg)
    assert sv.raw == struct.pack("<QIHH", seg.base, seg.limit, seg.selector, seg.attributes)
    assert sv.segment == seg
    assert sv.reg64 == seg.base  # union: the u64 view is the base
    decoded = sv.segment
    assert decoded.segment_type == 0xB
    assert decoded.non_system and decoded.present and decoded.long and decoded.granularity
    assert decoded.dpl == 0 and not decoded.default and not decoded.available

    tv = RegisterValue.from_table(Table(limit=0xFFF, base=0xFFFFF80012345000))
    assert tv.raw == struct.pack("<H6xQ", 0xFFF, 0xFFFFF80012345000)
    assert tv.table == Table(0xFFF, 0xFFFFF80012345000)

    fcs = RegisterValue(struct.pack("<HHBBHQ", 0x37F, 0x1234, 0xAB, 0, 0x55, 0x1000))
    assert fcs.fp_control_status.FpControl == 0x37F
    assert fcs.fp_control_status.FpTag == 0xAB
    assert fcs.fp_control_status.LastFpRip == 0x1000
    xcs = RegisterValue(struct.pack("<QII", 0x2000, 0x1F80, 0xFFFF))
    assert xcs.xmm_control_status.XmmStatusControl == 0x1F80
    assert xcs.xmm_control_status.XmmStatusControlMask == 0xFFFF

    with pytest.raises(ValueError):
        RegisterValue(b"short")


def test_windows_10_os_id():
    info = GuestOsInfo(0x0001040A00004A65)
    assert not info.is_open_source
    assert info.vendor_id == GUEST_OS_VENDOR.GuestOsVendorMicrosoft
    assert info.closed_os_id == GUEST_OS_MICROSOFT_IDS.GuestOsMicrosoftWindowsNT
    assert (info.major_version, info.minor_version, info.build_number) == (10, 0, 19045)
    assert info.service_version == 0
    assert info.describe() == "Windows NT 10.0 build 19045"
    assert info.os_family == "Windows"
    assert info.linux_version is None


def test_linux_6_1_0_os_id():
    raw = 0x8100 << 48 | ((6 << 16) | (1 << 8) | 0) << 16
    assert raw == 0x8100000601000000
    info = GuestOsInfo(raw)
    assert info.is_open_source
    assert info.open_os_id == GUEST_OS_OPENSOURCE_IDS.GuestOsOpenSourceLinux
    assert info.vendor_specific2 == 0
    assert info.version == 0x060100
    assert info.linux_version == (6, 1, 0)
    assert info.describe() == "Linux 6.1.0"
    assert info.os_family == "Linux"


def test_unreported_and_other_os_ids():
    assert GuestOsInfo(0).describe() == "unknown (guest never reported its OS)"
    assert GuestOsInfo(0).os_family == "Unknown"
    freebsd = GuestOsInfo(1 << 63 | 2 << 56 | 0x1234 << 16)
    assert freebsd.describe() == "FreeBSD version 0x1234"
    assert freebsd.os_family == "Unknown"
    sp = GuestOsInfo(0x0001040601021DB1)  # Windows 7 SP1-style: 6.1, service 2, build 7601
    assert sp.describe() == "Windows NT 6.1 build 7601 service version 2"
    other = GuestOsInfo(0x0002_01_05_00_00_0001)
    assert other.os_family == "Unknown"
    assert "vendor 0x2" in other.describe()
