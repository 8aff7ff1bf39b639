"""partition_state parsing: registers, VPs, VTLs, paging state, malformed blobs."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.partition_writer import (
    PartitionDescription,
    VpDescription,
    VtlDescription,
    build_partition_state,
    build_stream,
    chunk,
    envelope,
    random_registers,
    simple_partition,
)
from volatility3_vmrs.savedstate import paths
from volatility3_vmrs.savedstate.errors import (
    InvalidArgumentError,
    InvalidVpStateError,
    NoVpFoundError,
    PartitionStateError,
    VmrsError,
    VpVtlNotEnabledError,
)
from volatility3_vmrs.savedstate.processors import (
    ChunkId,
    HvProcessorVendor,
    PartitionState,
    PartitionStateNoVpError,
)
from volatility3_vmrs.savedstate.types import (
    PAGING_MODE,
    REGISTER_ID,
    REGISTER_ID_X64,
    REGISTER_ID_X86,
    VIRTUAL_PROCESSOR_ARCH,
    VIRTUAL_PROCESSOR_VENDOR,
    RegisterValue,
    Segment,
    Table,
)

M64 = (1 << 64) - 1


# --- expected values, computed from the register dicts without the reader's tables ----
def _gp_name(short: str) -> str:
    return {"EFlags": "rflags", "RFlags": "rflags", "Eip": "rip"}.get(
        short, "r" + short[1:].lower() if short.startswith("E") else short.lower()
    )


def expected_legacy(name: str, regs: dict) -> int:
    x86 = name.startswith("X86_")
    short = name.split("_Register", 1)[1]
    for half in ("Low", "High"):
        if short.startswith(half):
            rest = short[len(half) :]
            attr = {
                "XmmControlStatus": "xmm_control_status",
                "FpControlStatus": "fp_control_status",
            }.get(rest, rest.lower())
            value = regs[attr]
            return value & M64 if half == "Low" else value >> 64
    if short.startswith(("Cr", "Dr")) or short == "Efer":
        return regs[short.lower()]
    if short.startswith("Base") and short[4:] in ("Gs", "Fs"):
        return regs[short[4:].lower()].base
    if short.startswith("Seg"):
        return regs[short[3:].lower()].selector
    if short in ("Tr", "Ldtr"):
        return regs[short.lower()].selector
    for prefix, part in (("Base", "base"), ("Limit", "limit")):
        if short.startswith(prefix):
            return getattr(regs[short[len(prefix) :].lower()], part)
    value = regs[_gp_name(short)]
    return value & 0xFFFFFFFF if x86 else value


def expected_current(name: str, regs: dict) -> bytes:
    short = name.split("_Register", 1)[1]
    attr = {
        "RFlags": "rflags",
        "FpControlStatus": "fp_control_status",
        "XmmControlStatus": "xmm_control_status",
    }.get(short)
    if attr is None:
        attr = short.lower().replace("fpmmx", "fp_mmx")
    value = regs[attr]
    if isinstance(value, Segment):
        return struct.pack("<QIHH", value.base, value.limit, value.selector, value.attributes)
    if isinstance(value, Table):
        return struct.pack("<H6xQ", value.limit, value.base)
    return value.to_bytes(16, "little")


# --- round trips -----------------------------------------------------------------------
def test_every_register_of_every_vp_and_vtl_round_trips():
    desc, blob = simple_partition(3, seed=7, vtls=(0, 1), os_id=0x0001040A00004A65)
    ps = PartitionState.parse(blob)
    assert ps.diagnostics == []
    assert sorted(ps.vps) == [0, 1, 2]
    checked = 0
    for vp_desc in desc.vps:
        vp = ps.vps[vp_desc.index]
        assert sorted(vp.vtls) == [0, 1]
        for vtl, vtl_desc in vp_desc.vtls.items():
            regs = vtl_desc.registers
            rs = vp.registers_for(vtl)
            for rid in list(REGISTER_ID_X64)[:-1]:
                assert rs.get(rid) == expected_legacy(rid.name, regs), rid.name
                checked += 1
            for rid in list(REGISTER_ID)[: REGISTER_ID.X64_RegisterMax]:
                value = rs.get(rid)
                assert isinstance(value, RegisterValue)
                assert value.raw == expected_current(rid.name, regs), rid.name
                checked += 1
            assert rs.xcr0 == regs["xcr0"]
            assert rs.virtual_msr_words == regs["virtual_msrs"]
            assert rs.kernel_gs_base == regs["virtual_msrs"][1]
            assert rs.cpl == regs["cs"].selector & 3
    assert checked == 3 * 2 * (80 + 66)


def test_specific_numbers_reach_the_right_register():
    rng = random.Random(3)
    regs = random_registers(rng)
    desc = PartitionDescription(vps=[VpDescription(0, {0: VtlDescription(regs)})])
    rs = PartitionState.parse(build_partition_state(desc)).vps[0].registers
    assert rs.get(REGISTER_ID_X64(56)) == regs["cr3"]
    assert rs.get(REGISTER_ID(46)).reg64 == regs["cr3"]
    assert rs.get(46).reg64 == regs["cr3"]  # plain ints mean the current REGISTER_ID
    assert rs.get(REGISTER_ID_X64.X64_RegisterSegCs) == regs["cs"].selector
    assert rs.get(REGISTER_ID_X64.X64_RegisterBaseGs) == regs["gs"].base
    assert rs.get(REGISTER_ID_X64.X64_RegisterHighXmm15) == regs["xmm15"] >> 64
    assert rs.get(REGISTER_ID.X64_RegisterCs).segment == regs["cs"]
    assert rs.get(REGISTER_ID.X64_RegisterGdtr).table == regs["gdtr"]
    assert rs.get(REGISTER_ID.X64_RegisterXmm3).reg128 == regs["xmm3"]


def test_x86_ids_on_a_32_bit_vp():
    rng = random.Random(11)
    regs = random_registers(rng, long_mode=False)
    desc = PartitionDescription(vps=[VpDescription(0, {0: VtlDescription(regs)})])
    rs = PartitionState.parse(build_partition_state(desc)).vps[0].registers
    assert rs.architecture == VIRTUAL_PROCESSOR_ARCH.Arch_x86
    assert rs.paging_mode == PAGING_MODE.Paging_Pae
    for rid in list(REGISTER_ID_X86)[:-1]:
        assert rs.get(rid) == expected_legacy(rid.name, regs), rid.name
    assert rs.get(REGISTER_ID_X86.X86_RegisterCr3) == regs["cr3"]
    assert rs.get(REGISTER_ID_X86(48)) == regs["cr3"]


def test_x86_gp_reads_are_32_bit():
    regs = {"rax": 0xDEADBEEF_12345678, "rip": 0x1_0000_1000}
    desc = PartitionDescription(vps=[VpDescription(0, {0: VtlDescription(regs)})])
    rs = PartitionState.parse(build_partition_state(desc)).vps[0].registers
    assert rs.get(REGISTER_ID_X86.X86_RegisterEax) == 0x12345678
    assert rs.get(REGISTER_ID_X86.X86_RegisterEip) == 0x1000
    assert rs.get(REGISTER_ID_X64.X64_RegisterRax) == 0xDEADBEEF_12345678


@pytest.mark.parametrize(
    "rid",
    [
        REGISTER_ID_X64.X64_RegisterCount,
        REGISTER_ID_X86.X86_RegisterCount,
        REGISTER_ID.X64_RegisterMax,
        REGISTER_ID.ARM64_RegisterX0,
        REGISTER_ID.ARM64_RegisterMax,
        159,
        -1,
    ],
)
def test_sentinels_and_foreign_ids_are_invalid_arguments(rid):
    _, blob = simple_partition(1)
    rs = PartitionState.parse(blob).vps[0].registers
    with pytest.raises(InvalidArgumentError):
        rs.get(rid)


# --- partition-level facts -------------------------------------------------------------
def test_partition_facts():
    _, blob = simple_partition(2, vtls=(0, 1), os_id=0x8100000601000000, boot_vp=1)
    ps = PartitionState.parse(blob)
    assert ps.vendor == VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Intel
    assert ps.hv_vendor == HvProcessorVendor.INTEL
    assert ps.guest_os_id == 0x8100000601000000
    assert ps.guest_os_info.describe() == "Linux 6.1.0"
    assert ps.enabled_vtls == 0b11
    assert ps.vp_count == 2
    assert ps.boot_vp.index == 1
    assert ps.vp_index_present(0) and ps.vp_index_present(1) and not ps.vp_index_present(2)
    assert ps.epilog_offset is not None


def test_defaults_without_vtl_markers_or_vp_indices():
    regs = random_registers(random.Random(1))
    desc = PartitionDescription(
        vps=[VpDescription(0, {0: VtlDescription(regs, marker=False)})],
        partition_vtls=(),
        vp_indices=False,
    )
    ps = PartitionState.parse(build_partition_state(desc))
    assert ps.enabled_vtls == 0b1
    vp = ps.vps[0]
    assert vp.enabled_vtls == 0b1
    assert vp.active_vtl == 0
    assert vp.registers.cr3 == regs["cr3"]  # registers before any VpVtl marker -> VTL 0
    assert ps.boot_vp.index == 0


@pytest.mark.parametrize(
    ("vendor", "expected"),
    [
        (HvProcessorVendor.AMD, VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Amd),
        (HvProcessorVendor.INTEL, VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Intel),
        (HvProcessorVendor.HYGON, VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Hygon),
        (HvProcessorVendor.ARM, VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Arm),
        (0x7, VIRTUAL_PROCESSOR_VENDOR.ProcessorVendor_Unknown),
    ],
)
def test_vendor_mapping(vendor, expected):
    _, blob = simple_partition(1, vendor=vendor)
    assert PartitionState.parse(blob).vendor == expected


def test_arm_vendor_keeps_registers_raw():
    _, blob = simple_partition(1, vendor=HvProcessorVendor.ARM)
    ps = PartitionState.parse(blob)
    rs = ps.vps[0].registers
    assert rs.paging_mode == PAGING_MODE.Paging_Armv8
    assert rs.architecture == VIRTUAL_PROCESSOR_ARCH.Arch_Armv8
    assert rs.dtb is None
    assert "gp" in rs.raw_chunks
    with pytest.raises(InvalidVpStateError, match="ARM64"):
        _ = rs.rax


def test_os_id_per_partition_vtl():
    desc, _ = simple_partition(1, vtls=(0, 1))
    desc.os_ids_per_vtl = {0: 0x0001040A00004A65, 1: 0x0001040A00000001}
    ps = PartitionState.parse(build_partition_state(desc))
    assert ps.guest_os_id == 0x0001040A00004A65
    assert ps.guest_os_info_for(1).build_number == 1
    assert ps.guest_os_info_for(2).build_number == 19045  # falls back to VTL 0


# --- VTLs ------------------------------------------------------------------------------
def _two_vtl_vp(**vp_kwargs):
    rng = random.Random(5)
    vtl_regs = {0: random_registers(rng), 1: random_registers(rng)}
    vp = VpDescription(0, {v: VtlDescription(r) for v, r in vtl_regs.items()}, **vp_kwargs)
    ps = PartitionState.parse(build_partition_state(PartitionDescription(vps=[vp])))
    return ps.vps[0], vtl_regs


def test_openvmm_control_page_before_markers_means_vtl0():
    vp, regs = _two_vtl_vp()
    assert vp.enabled_vtls == 0b11
    assert vp.control_pages[0].before_vtl_markers
    assert vp.active_vtl == 0
    assert vp.registers.cr3 == regs[0]["cr3"]
    assert vp.registers_for(1).cr3 == regs[1]["cr3"]


def test_control_page_after_vtl1_marker_makes_vtl1_active():
    vp, regs = _two_vtl_vp(runnable_vtl=1, control_page_position="after")
    assert vp.active_vtl == 1
    assert not vp.control_pages[0].before_vtl_markers
    assert vp.registers.rip == regs[1]["rip"]


def test_no_control_page_means_vtl0():
    vp, _ = _two_vtl_vp(control_page=False)
    assert vp.control_pages == []
    assert vp.active_vtl == 0


def test_missing_vtl_raises_vtl_not_enabled():
    _, blob = simple_partition(1)
    vp = PartitionState.parse(blob).vps[0]
    with pytest.raises(VpVtlNotEnabledError):
        vp.registers_for(1)


# --- paging state ----------------------------------------------------------------------
def _regs_with(**control):
    regs = random_registers(random.Random(9))
    regs.update(control)
    desc = PartitionDescription(vps=[VpDescription(0, {0: VtlDescription(regs)})])
    return PartitionState.parse(build_partition_state(desc)).vps[0].registers


@pytest.mark.parametrize(
    ("cr0", "cr4", "efer", "mode", "arch"),
    [
        (0x00000011, 0x0, 0x0, PAGING_MODE.Paging_NonPaged, VIRTUAL_PROCESSOR_ARCH.Arch_x86),
        (0x00000011, 0x20, 0x0, PAGING_MODE.Paging_NonPaged, VIRTUAL_PROCESSOR_ARCH.Arch_x86),
        (0x00000011, 0x20, 0x100, PAGING_MODE.Paging_NonPaged, VIRTUAL_PROCESSOR_ARCH.Arch_x86),
        (0x80000011, 0x0, 0x0, PAGING_MODE.Paging_32Bit, VIRTUAL_PROCESSOR_ARCH.Arch_x86),
        (0x80000011, 0x10, 0x0, PAGING_MODE.Paging_32Bit, VIRTUAL_PROCESSOR_ARCH.Arch_x86),
        (0x80000011, 0x20, 0x0, PAGING_MODE.Paging_Pae, VIRTUAL_PROCESSOR_ARCH.Arch_x86),
        (0x80000011, 0x20, 0x800, PAGING_MODE.Paging_Pae, VIRTUAL_PROCESSOR_ARCH.Arch_x86),
        (0x80000011, 0x20, 0x100, PAGING_MODE.Paging_Pae, VIRTUAL_PROCESSOR_ARCH.Arch_x86),
        (0x80050033, 0x20, 0xD01, PAGING_MODE.Paging_Long, VIRTUAL_PROCESSOR_ARCH.Arch_x64),
        (0x80050033, 0x1020, 0x500, PAGING_MODE.Paging_Long, VIRTUAL_PROCESSOR_ARCH.Arch_x64),
    ],
)
def test_paging_mode_and_architecture(cr0, cr4, efer, mode, arch):
    rs = _regs_with(cr0=cr0, cr4=cr4, efer=efer)
    assert rs.paging_mode == mode
    assert rs.architecture == arch
    assert rs.la57 == bool(cr4 & 0x1000)


@pytest.mark.parametrize(
    ("cr0", "cr4", "efer", "cr3", "dtb"),
    [
        (0x80050033, 0x20 | 1 << 17, 0xD01, 0x8000_0000_1AD0_0123, 0x1AD00000),
        (0x80050033, 0x20, 0xD01, 0x000F_FFFF_FFFF_F018, 0x000F_FFFF_FFFF_F000),
        (0x80000011, 0x20, 0x0, 0x0018_5FE8, 0x0018_5FE0),
        (0x80000011, 0x0, 0x0, 0x0018_5FE8, 0x0018_5000),
        (0x00000011, 0x0, 0x0, 0x0018_5FE8, None),
    ],
)
def test_dtb_masks_pcid_and_alignment(cr0, cr4, efer, cr3, dtb):
    rs = _regs_with(cr0=cr0, cr4=cr4, efer=efer, cr3=cr3)
    assert rs.dtb == dtb
    assert rs.cr3 == cr3


def test_kernel_space_from_cpl_byte_and_cs_fallback():
    cs_user = Segment(0, 0xFFFFFFFF, 0x33, 0xA0FB)
    rs = _regs_with(cs=cs_user)
    assert rs.cpl == 3 and not rs.in_kernel_space
    rs = _regs_with(cs=cs_user, cpl=0)  # the CPL byte wins over CS.selector
    assert rs.cpl == 0 and rs.in_kernel_space
    regs = random_registers(random.Random(2))
    regs["cs"] = Segment(0, 0, 0x10, 0xA09B)
    desc = PartitionDescription(vps=[VpDescription(0, {0: VtlDescription(regs, with_cpl=False)})])
    rs = PartitionState.parse(build_partition_state(desc)).vps[0].registers
    assert rs.cpl == 0 and rs.in_kernel_space


# --- leniency and malformed blobs ------------------------------------------------------
def test_unknown_chunks_are_skipped_and_recorded():
    desc, _ = simple_partition(1)
    desc.extra_chunks = [(0x2ABCD000, b"\x01" * 13)]
    desc.vps[0].extra_chunks = [(0x3ABCD000, b"")]
    ps = PartitionState.parse(build_partition_state(desc))
    kinds = [(w.detail, w.key_path) for w in ps.diagnostics]
    assert kinds == [("unknown-chunk", paths.PARTITION_STATE)] * 2
    assert [c.chunk_id for c in ps.unknown_chunks] == [0x2ABCD000, 0x3ABCD000]
    assert ps.vps[0].registers.rax == desc.vps[0].vtls[0].registers["rax"]


def test_known_undecoded_chunks_are_kept_without_warning():
    desc, _ = simple_partition(1)
    desc.vps[0].extra_chunks = [(ChunkId.SYNIC_MSRS, bytes(160))]
    ps = PartitionState.parse(build_partition_state(desc))
    assert ps.diagnostics == []
    assert ps.vps[0].other_chunks[0].name == "SYNIC_MSRS"


def test_short_register_chunk_is_a_warning_and_marks_the_set_incomplete():
    regs = random_registers(random.Random(4))
    vtl = VtlDescription(regs, truncate={"control": 20})
    ps = PartitionState.parse(
        build_partition_state(PartitionDescription(vps=[VpDescription(0, {0: vtl})]))
    )
    assert [w.detail for w in ps.diagnostics] == ["short-chunk"]
    rs = ps.vps[0].registers
    assert "control" in rs.incomplete
    assert rs.rax == regs["rax"]
    with pytest.raises(InvalidVpStateError, match="too short"):
        _ = rs.cr3
    with pytest.raises(InvalidVpStateError):
        rs.get(REGISTER_ID_X64.X64_RegisterCr3)
    with pytest.raises(InvalidVpStateError):
        _ = rs.paging_mode


def test_missing_register_chunk_reads_raise():
    vtl = VtlDescription(random_registers(random.Random(4)), omit=("debug",))
    ps = PartitionState.parse(
        build_partition_state(PartitionDescription(vps=[VpDescription(0, {0: vtl})]))
    )
    with pytest.raises(InvalidVpStateError, match="no debug register chunk"):
        ps.vps[0].registers.get(REGISTER_ID.X64_RegisterDr7)


def test_missing_epilog_and_truncated_total_size_are_warnings():
    desc, _ = simple_partition(1)
    desc.epilog = False
    ps = PartitionState.parse(build_partition_state(desc))
    assert [w.detail for w in ps.diagnostics] == ["missing-epilog"]
    stream = build_stream(simple_partition(1)[0])
    blob = envelope(stream, total_size=len(stream) + 40 + 100)
    ps = PartitionState.parse(blob)
    assert [w.detail for w in ps.diagnostics] == ["truncated"]


def test_total_size_shorter_than_blob_stops_the_stream():
    stream = build_stream(simple_partition(1)[0])
    blob = envelope(stream) + b"\xff" * 50  # garbage after total_size is never read
    assert PartitionState.parse(blob).diagnostics == []


def test_header_size_is_honoured():
    stream = build_stream(simple_partition(1)[0])
    ps = PartitionState.parse(envelope(stream, header_size=64))
    assert ps.stream_start == 80
    assert ps.vp_count == 1


def _assert_partition_error(blob, offset=None):
    with pytest.raises(PartitionStateError) as info:
        PartitionState.parse(blob)
    assert info.value.key_path == paths.PARTITION_STATE
    if offset is not None:
        assert info.value.offset == offset
    return info.value


@pytest.mark.parametrize("size", [0, 1, 23])
def test_truncated_envelope(size):
    _, blob = simple_partition(1)
    _assert_partition_error(blob[:size], offset=0)


def test_absurd_header_size():
    _, blob = simple_partition(1)
    bad = blob[:8] + struct.pack("<Q", 0xFFFFFFFFFFFFFFFF) + blob[16:]
    _assert_partition_error(bad, offset=8)
    bad = blob[:8] + struct.pack("<Q", 3) + blob[16:]
    _assert_partition_error(bad, offset=8)


def test_total_size_before_stream():
    _, blob = simple_partition(1)
    _assert_partition_error(blob[:16] + struct.pack("<Q", 10) + blob[24:], offset=16)


def test_chunk_length_past_blob_and_absurd_length():
    for length in (0x1000, 0xFFFFFFFF):
        stream = chunk(ChunkId.OS_ID, bytes(16), data_length=length)
        err = _assert_partition_error(envelope(stream), offset=40)
        assert "past the end" in err.detail


def test_truncated_chunk_header():
    stream = build_stream(simple_partition(1)[0])
    _assert_partition_error(envelope(stream[:-8]))  # Epilog header cut in half


def test_short_marker_chunks_are_errors():
    for cid in (ChunkId.VP, ChunkId.VP_VTL, ChunkId.OS_ID, ChunkId.PROLOG, ChunkId.VP_INDICES):
        stream = chunk(cid, b"\x00\x00\x00") + chunk(ChunkId.EPILOG)
        _assert_partition_error(envelope(stream), offset=40)


def test_vtl_out_of_range():
    stream = chunk(ChunkId.VP, bytes(16)) + chunk(ChunkId.VP_VTL, b"\x20" + bytes(15))
    _assert_partition_error(envelope(stream), offset=72)


@pytest.mark.parametrize(
    "stream",
    [
        b"",
        chunk(ChunkId.EPILOG),
        chunk(ChunkId.OS_ID, bytes(16)) + chunk(ChunkId.EPILOG),
    ],
)
def test_no_vp(stream):
    err = _assert_partition_error(envelope(stream))
    assert isinstance(err, PartitionStateNoVpError)
    assert isinstance(err, NoVpFoundError)
    assert err.hresult == 0xC0370502


def test_duplicate_and_orphan_chunks_warn():
    regs = random_registers(random.Random(8))
    vtl = VtlDescription(regs)
    desc = PartitionDescription(vps=[VpDescription(0, {0: vtl})], vp_indices=False)
    stream = build_stream(desc)
    gp = chunk(ChunkId.GP_REGISTERS, bytes(144))
    # An orphan GP chunk before the first Vp marker, and a second GP chunk at the end.
    epilog = chunk(ChunkId.EPILOG)
    assert stream.endswith(epilog)
    vp_at = stream.index(struct.pack("<II", ChunkId.VP, 16))
    stream = stream[:vp_at] + gp + stream[vp_at:-16] + gp + epilog
    ps = PartitionState.parse(envelope(stream))
    assert sorted(w.detail for w in ps.diagnostics) == ["duplicate-chunk", "orphan-chunk"]
    assert ps.vps[0].registers.rax == 0  # the later chunk wins


def test_vp_indices_disagreement_warns():
    desc, _ = simple_partition(2)
    desc.vps[1].index = 5  # writer's bitmap follows the VPs, so corrupt it below
    blob = bytearray(build_partition_state(desc))
    at = blob.index(struct.pack("<II", ChunkId.VP_INDICES, 12))
    blob[at + 20] = 0b0000_0011  # claims VPs 0 and 1
    ps = PartitionState.parse(bytes(blob))
    assert [w.detail for w in ps.diagnostics] == ["vp-indices"]


# --- hostile input: nothing but VmrsError may escape ------------------------------------
_VALID = [
    simple_partition(2, seed=1, vtls=(0, 1))[1],
    simple_partition(1, seed=2)[1],
]


def _exercise(blob: bytes) -> None:
    try:
        ps = PartitionState.parse(blob)
    except PartitionStateError:
        return
    for vp in ps.vps.values():
        _ = vp.enabled_vtls, vp.active_vtl
        for rs in vp.vtls.values():
            for rid in list(REGISTER_ID_X64) + list(REGISTER_ID)[:70]:
                try:
                    rs.get(rid)
                except VmrsError:
                    pass
            for attr in ("paging_mode", "dtb", "architecture", "cpl", "la57", "kernel_gs_base"):
                try:
                    getattr(rs, attr)
                except VmrsError:
                    pass
    _ = ps.guest_os_info.describe(), ps.boot_vp, ps.vendor


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(_VALID) - 1),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_mutated_blobs_only_raise_partition_state_errors(which, edits, cut):
    blob = bytearray(_VALID[which])
    for pos, value in edits:
        blob[pos % len(blob)] = value
    if cut is not None:
        blob = blob[: cut % (len(blob) + 1)]
    _exercise(bytes(blob))


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(
        st.tuples(
            st.sampled_from([int(c) for c in ChunkId] + [0x12345678]),
            st.binary(max_size=200),
            st.one_of(st.none(), st.integers(0, 0xFFFFFFFF)),
        ),
        max_size=12,
    )
)
def test_random_chunk_streams(chunks):
    stream = b"".join(chunk(cid, data, data_length=length) for cid, data, length in chunks)
    _exercise(envelope(stream))
