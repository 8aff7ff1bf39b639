"""Tests of the BTF -> ISF converter (volatility3_vmrs.tools.btf2isf)."""

from __future__ import annotations

import base64
import json
import lzma
import struct
from pathlib import Path
from typing import Dict, List, Tuple

import jsonschema
import pytest
import volatility3.schemas

from tests.fixtures.linux_guest import artefacts
from volatility3_vmrs.tools import btf2isf

SCHEMA_DIR = Path(volatility3.schemas.__file__).resolve().parent


def schema_for(isf: dict) -> dict:
    path = SCHEMA_DIR / f"schema-{isf['metadata']['format']}.json"
    assert path.is_file(), f"volatility3 has no schema for format {isf['metadata']['format']}"
    return json.loads(path.read_text())


def validate(isf: dict) -> None:
    """Validate like volatility3.schemas.valid() does (its schemas name no draft, so
    jsonschema's latest draft applies), but raise with the reason on failure."""
    jsonschema.Draft202012Validator(schema_for(isf)).validate(isf)


# --------------------------------------------------------------------------- BTF blob builder

KIND = {name: num for num, name in btf2isf.KIND_NAMES.items()}


class BtfBlob:
    """Hand-assembles a little-endian BTF blob, one type at a time (ids from 1)."""

    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.count = 0

    def s(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def _add(
        self, name: str, kind: str, vlen: int, size_type: int, tail: bytes = b"", kflag=0
    ) -> int:
        info = (kflag << 31) | (KIND[kind] << 24) | vlen
        self.types += struct.pack("<III", self.s(name), info, size_type) + tail
        self.count += 1
        return self.count

    def int_(
        self, name: str, size: int, signed: bool = False, bits: int = 0, char=False, boolean=False
    ):
        enc = (1 if signed else 0) | (2 if char else 0) | (4 if boolean else 0)
        return self._add(name, "INT", 0, size, struct.pack("<I", (enc << 24) | (bits or size * 8)))

    def ptr(self, target: int) -> int:
        return self._add("", "PTR", 0, target)

    def typedef(self, name: str, target: int) -> int:
        return self._add(name, "TYPEDEF", 0, target)

    def qual(self, kind: str, target: int) -> int:
        return self._add("", kind, 0, target)

    def array(self, elem: int, index: int, n: int) -> int:
        return self._add("", "ARRAY", 0, 0, struct.pack("<III", elem, index, n))

    def struct(self, name: str, size: int, members: List[Tuple], union=False, kflag=0) -> int:
        tail = b""
        for m in members:
            m_name, m_type, bit_off = m[:3]
            bits = m[3] if len(m) > 3 else 0
            off = (bits << 24) | bit_off if kflag else bit_off
            tail += struct.pack("<III", self.s(m_name), m_type, off)
        kind = "UNION" if union else "STRUCT"
        return self._add(name, kind, len(members), size, tail, kflag)

    def enum(self, name: str, size: int, values: Dict[str, int], signed=False) -> int:
        tail = b"".join(struct.pack("<Ii", self.s(k), v) for k, v in values.items())
        return self._add(name, "ENUM", len(values), size, tail, int(signed))

    def enum64(self, name: str, values: Dict[str, int], signed=False) -> int:
        tail = b"".join(
            struct.pack("<III", self.s(k), v & 0xFFFFFFFF, (v >> 32) & 0xFFFFFFFF)
            for k, v in values.items()
        )
        return self._add(name, "ENUM64", len(values), 8, tail, int(signed))

    def fwd(self, name: str, union=False) -> int:
        return self._add(name, "FWD", 0, 0, kflag=int(union))

    def func_proto(self, ret: int, params: List[Tuple[str, int]]) -> int:
        tail = b"".join(struct.pack("<II", self.s(n), t) for n, t in params)
        return self._add("", "FUNC_PROTO", len(params), ret, tail)

    def func(self, name: str, proto: int) -> int:
        return self._add(name, "FUNC", 0, proto)

    def var(self, name: str, type_id: int) -> int:
        return self._add(name, "VAR", 0, type_id, struct.pack("<I", 1))

    def datasec(self, name: str, entries: List[Tuple[int, int, int]]) -> int:
        tail = b"".join(struct.pack("<III", *e) for e in entries)
        return self._add(name, "DATASEC", len(entries), 0, tail)

    def bytes(self) -> bytes:
        hdr = struct.pack(
            "<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings)
        )
        return hdr + bytes(self.types) + bytes(self.strings)


def convert(blob: BtfBlob, symbols=None, banner=b"Linux version 9.9.9-test (x) #1 SMP\n"):
    return btf2isf.build_isf(blob.bytes(), symbols or {}, banner)


# --------------------------------------------------------------------------- unit tests


def test_struct_with_bitfields_kind_flag():
    b = BtfBlob()
    uint = b.int_("unsigned int", 4)
    sint = b.int_("int", 4, signed=True)
    b.struct(
        "flags",
        12,
        [("a", uint, 0, 3), ("b", uint, 3, 5), ("c", sint, 32), ("d", uint, 72, 4)],
        kflag=1,
    )
    isf = convert(b)
    fields = isf["user_types"]["flags"]["fields"]
    assert isf["user_types"]["flags"]["size"] == 12
    assert fields["a"] == {
        "offset": 0,
        "type": {
            "kind": "bitfield",
            "bit_position": 0,
            "bit_length": 3,
            "type": {"kind": "base", "name": "unsigned int"},
        },
    }
    assert fields["b"]["type"]["bit_position"] == 3
    assert fields["b"]["type"]["bit_length"] == 5
    assert fields["c"] == {"offset": 4, "type": {"kind": "base", "name": "int"}}
    # bit 72 of a 32-bit unit: storage unit at byte 8, bit 8 inside it
    assert fields["d"]["offset"] == 8
    assert fields["d"]["type"]["bit_position"] == 8
    validate(isf)


def test_old_style_int_bitfield_and_typedef_bitfield():
    b = BtfBlob()
    uint = b.int_("unsigned int", 4)
    three_bits = b.int_("unsigned int", 4, bits=3)
    u8 = b.int_("unsigned char", 1, char=False)
    td = b.typedef("u8", u8)
    b.struct("old", 4, [("x", three_bits, 0), ("y", uint, 0)])
    b.struct("td", 1, [("z", td, 2, 4)], kflag=1)
    isf = convert(b)
    x = isf["user_types"]["old"]["fields"]["x"]
    assert x["type"]["kind"] == "bitfield" and x["type"]["bit_length"] == 3
    assert isf["user_types"]["old"]["fields"]["y"]["type"] == {
        "kind": "base",
        "name": "unsigned int",
    }
    z = isf["user_types"]["td"]["fields"]["z"]["type"]
    # typedefs are resolved: the schema only allows base/enum inside a bitfield
    assert z == {
        "kind": "bitfield",
        "bit_position": 2,
        "bit_length": 4,
        "type": {"kind": "base", "name": "unsigned char"},
    }
    validate(isf)


def test_enums_signed_unsigned_and_64():
    b = BtfBlob()
    e1 = b.enum("colour", 4, {"RED": 0, "GREEN": 1, "BLUE": 7})
    b.enum("delta", 4, {"DOWN": -1, "UP": 1}, signed=True)
    b.enum("", 4, {"ANON_A": 5})
    b.enum64("big", {"HUGE": 1 << 40, "SMALL": 2})
    uint = b.int_("unsigned int", 4)
    b.struct("holder", 4, [("c", e1, 0, 2), ("n", uint, 2, 30)], kflag=1)
    isf = convert(b)
    assert isf["enums"]["colour"] == {
        "size": 4,
        "base": "unsigned int",
        "constants": {"RED": 0, "GREEN": 1, "BLUE": 7},
    }
    assert isf["enums"]["delta"]["base"] == "int"
    assert isf["enums"]["delta"]["constants"]["DOWN"] == -1
    assert isf["enums"]["unnamed_3"]["constants"] == {"ANON_A": 5}
    assert isf["enums"]["big"] == {
        "size": 8,
        "base": "long unsigned int",
        "constants": {"HUGE": 1 << 40, "SMALL": 2},
    }
    # enum bitfield keeps the enum type
    c = isf["user_types"]["holder"]["fields"]["c"]["type"]
    assert c["type"] == {"kind": "enum", "name": "colour"}
    for base in ("int", "unsigned int", "long unsigned int"):
        assert base in isf["base_types"]
    validate(isf)


def test_typedef_chain_qualifiers_pointers_arrays():
    b = BtfBlob()
    uint = b.int_("unsigned int", 4)
    u32 = b.typedef("__u32", uint)
    u32b = b.typedef("u32", u32)
    cv = b.qual("CONST", b.qual("VOLATILE", u32b))
    fwd = b.fwd("node")
    node_ptr = b.ptr(fwd)
    idx = b.int_("long unsigned int", 8)
    arr = b.array(cv, idx, 16)
    proto = b.func_proto(0, [("x", uint)])
    fn_ptr = b.ptr(proto)
    void_ptr = b.ptr(0)
    node = b.struct(
        "node",
        96,
        [("next", node_ptr, 0), ("vals", arr, 64), ("cb", fn_ptr, 576), ("opaque", void_ptr, 640)],
    )
    b.typedef("node_t", node)
    isf = convert(b)
    fields = isf["user_types"]["node"]["fields"]
    assert fields["next"] == {
        "offset": 0,
        "type": {"kind": "pointer", "subtype": {"kind": "struct", "name": "node"}},
    }
    assert fields["vals"] == {
        "offset": 8,
        "type": {"kind": "array", "count": 16, "subtype": {"kind": "base", "name": "unsigned int"}},
    }
    assert fields["cb"]["type"] == {"kind": "pointer", "subtype": {"kind": "function"}}
    assert fields["opaque"]["type"] == {
        "kind": "pointer",
        "subtype": {"kind": "base", "name": "void"},
    }
    assert isf["base_types"]["pointer"]["size"] == 8
    assert isf["base_types"]["void"]["kind"] == "void"
    assert "u32" not in isf["user_types"] and "node_t" not in isf["user_types"]
    validate(isf)


def test_anonymous_members_and_fwd_without_definition():
    b = BtfBlob()
    uint = b.int_("unsigned int", 4)
    lng = b.int_("long int", 8, signed=True)
    inner = b.struct("", 8, [("u", uint, 0), ("l", lng, 0)], union=True)
    opaque = b.fwd("opaque_thing")
    b.struct("outer", 24, [("first", uint, 0), ("", inner, 64), ("o", b.ptr(opaque), 128)])
    isf = convert(b)
    fields = isf["user_types"]["outer"]["fields"]
    anon = [f for f in fields.values() if f.get("anonymous")]
    assert anon == [
        {"offset": 8, "anonymous": True, "type": {"kind": "union", "name": f"unnamed_{inner}"}}
    ]
    assert isf["user_types"][f"unnamed_{inner}"]["kind"] == "union"
    assert isf["user_types"]["opaque_thing"] == {"kind": "struct", "size": 0, "fields": {}}
    validate(isf)


def test_symbols_percpu_vars_global_types_and_banner():
    b = BtfBlob()
    uint = b.int_("unsigned int", 4)
    b.int_("char", 1, signed=True, char=True)
    b.int_("long unsigned int", 8)
    task = b.struct("task_struct", 16, [("pid", uint, 0)])
    per_cpu_var = b.var("cpu_number", uint)
    b.datasec(".data..percpu", [(per_cpu_var, 0, 4)])
    b.func("do_thing", b.func_proto(0, []))
    banner = b"Linux version 9.9.9-test (x) #1 SMP\n"
    symbols = {
        "init_task": 0xFFFFFFFF82000000,
        "linux_banner": 0xFFFFFFFF81800000,
        "__per_cpu_offset": 0xFFFFFFFF82100000,
        "after_offsets": 0xFFFFFFFF82100000 + 8 * 64,
        "cpu_number": 0x1234,
        "_text": 0xFFFFFFFF81000000,
    }
    isf = btf2isf.build_isf(b.bytes(), symbols, banner)
    syms = isf["symbols"]
    assert syms["init_task"]["type"] == {"kind": "struct", "name": "task_struct"}
    assert task == 4
    assert syms["cpu_number"] == {
        "address": 0x1234,
        "type": {"kind": "base", "name": "unsigned int"},
    }
    assert syms["__per_cpu_offset"]["type"]["count"] == 64
    assert syms["_text"]["type"] == {
        "kind": "array",
        "count": 0,
        "subtype": {"kind": "base", "name": "char"},
    }
    assert "type" not in syms["after_offsets"]
    assert base64.b64decode(syms["linux_banner"]["constant_data"]) == banner + b"\0"
    assert syms["linux_banner"]["type"]["count"] == len(banner) + 1
    validate(isf)


def test_bad_magic_rejected():
    with pytest.raises(ValueError, match="magic"):
        btf2isf.Btf(b"\x00" * 32)


def test_kallsyms_parsing_and_kaslr_undo():
    text = (
        "0000000000000000 A fixed_percpu_data\n"
        "ffffffff8a800000 T _text\n"
        "ffffffff8c21aa40 D init_task\n"
        "ffffffff8b000000 t dup\n"
        "ffffffff8b000010 T dup\n"
        "ffffffffc0000000 t mod_fn\t[dummy]\n"
    )
    syms = btf2isf.parse_symbol_list(text)
    assert syms["dup"] == 0xFFFFFFFF8B000010  # global wins
    assert "mod_fn" not in syms
    shift = btf2isf.kaslr_shift(syms)
    assert shift == 0x9800000
    plain = btf2isf.unrelocate(syms, shift)
    assert plain["_text"] == 0xFFFFFFFF81000000
    assert plain["init_task"] == 0xFFFFFFFF82A1AA40
    assert plain["fixed_percpu_data"] == 0


def _tiny_elf(sections: Dict[str, bytes]) -> bytes:
    names = b"\0" + b"".join(n.encode() + b"\0" for n in [*sections, ".shstrtab"])
    body = b""
    offsets = []
    base = 64
    for data in sections.values():
        offsets.append(base + len(body))
        body += data
    shstr_off = base + len(body)
    body += names
    shoff = base + len(body)
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    ehdr += struct.pack(
        "<HHIQQQIHHHHHH",
        2,
        62,
        1,
        0,
        0,
        shoff,
        0,
        64,
        56,
        0,
        64,
        len(sections) + 2,
        len(sections) + 1,
    )
    shdrs = b"\0" * 64
    name_off = 1
    for (name, data), off in zip(sections.items(), offsets):
        shdrs += struct.pack(
            "<IIQQQQIIQQ", name_off, 1, 2, 0xFFFFFFFF82000000, off, len(data), 0, 0, 1, 0
        )
        name_off += len(name) + 1
    shdrs += struct.pack("<IIQQQQIIQQ", name_off, 3, 0, 0, shstr_off, len(names), 0, 0, 1, 0)
    return ehdr + body + shdrs


def test_elf_section_reader_and_banner():
    b = BtfBlob()
    b.int_("int", 4, signed=True)
    banner = b"Linux version 9.9.9-test (x) #1 SMP PREEMPT\n"
    elf_bytes = _tiny_elf({".rodata": b"junk\0" + banner + b"\0", ".BTF": b.bytes()})
    elf = btf2isf.ElfFile(btf2isf.extract_vmlinux(elf_bytes))
    assert elf.section_data(".BTF") == b.bytes()
    assert btf2isf.banner_from_vmlinux(elf) == banner
    assert btf2isf.banner_from_vmlinux(elf, 0xFFFFFFFF82000005) == banner
    with pytest.raises(KeyError):
        elf.section(".nope")


def test_cli_from_vmlinux_with_system_map(tmp_path):
    b = BtfBlob()
    b.int_("char", 1, signed=True, char=True)
    banner = b"Linux version 9.9.9-test (x) #1 SMP\n"
    (tmp_path / "vmlinux").write_bytes(_tiny_elf({".rodata": banner + b"\0", ".BTF": b.bytes()}))
    (tmp_path / "System.map").write_text(
        "ffffffff81000000 T _text\nffffffff82000000 D linux_banner\nffffffff82000040 D next\n"
        "ffffffff82000080 D init_task\n"
    )
    out = tmp_path / "out.json.xz"
    argv = ["--vmlinux", str(tmp_path / "vmlinux"), "--system-map", str(tmp_path / "System.map")]
    assert btf2isf.main([*argv, "-o", str(out)]) == 0
    isf = json.loads(lzma.decompress(out.read_bytes()))
    assert isf["metadata"]["linux"]["symbols"] == [{"kind": "system-map", "name": "System.map"}]
    assert base64.b64decode(isf["symbols"]["linux_banner"]["constant_data"]) == banner + b"\0"
    validate(isf)
    # deterministic
    out2 = tmp_path / "again.json"
    btf2isf.main([*argv, "-o", str(out2)])
    assert out2.read_bytes() == lzma.decompress(out.read_bytes())


# --------------------------------------------------------------------------- committed ISF


@pytest.fixture(scope="module")
def committed_isf_bytes() -> bytes:
    return lzma.decompress(artefacts.isf_path().read_bytes())


@pytest.fixture(scope="module")
def committed_isf(committed_isf_bytes) -> dict:
    return json.loads(committed_isf_bytes)


def test_committed_isf_validates_against_volatility_schema(committed_isf):
    assert committed_isf["metadata"]["format"] == btf2isf.ISF_FORMAT
    # Volatility silently ignores an ISF that fails its schema, so this must hold.
    validate(committed_isf)


def test_committed_isf_regenerates_identically(tmp_path, committed_isf_bytes):
    out = tmp_path / "regen.json"
    btf2isf.main(
        [
            "--btf",
            str(artefacts.BTF_XZ),
            "--kallsyms",
            str(artefacts.KALLSYMS_XZ),
            "--banner",
            str(artefacts.BANNER),
            "--extra-symbols",
            str(artefacts.KALLSYMS_TABLES),
            "-o",
            str(out),
        ]
    )
    assert out.read_bytes() == committed_isf_bytes


def test_committed_isf_content(committed_isf):
    manifest = artefacts.load_manifest()
    syms = committed_isf["symbols"]
    banner = artefacts.BANNER.read_bytes()
    assert banner.decode() == manifest["banner"]
    assert base64.b64decode(syms["linux_banner"]["constant_data"]) == banner + b"\0"
    # link-time (un-KASLRed) addresses
    assert syms["_text"]["address"] == btf2isf.DEFAULT_TEXT_BASE
    for name, kind, type_name in [
        ("init_task", "struct", "task_struct"),
        ("init_files", "struct", "files_struct"),
        ("init_mm", "struct", "mm_struct"),
        ("modules", "struct", "list_head"),
        ("mod_tree", "struct", "mod_tree_root"),
    ]:
        assert syms[name]["type"] == {"kind": kind, "name": type_name}, name
    assert syms["prb"]["type"] == {
        "kind": "pointer",
        "subtype": {"kind": "struct", "name": "printk_ringbuffer"},
    }
    tk = committed_isf["user_types"][syms["tk_core"]["type"]["name"]]
    assert set(tk["fields"]) == {"seq", "timekeeper"}
    assert syms["taint_flags"]["type"]["count"] == 19
    assert syms["__per_cpu_offset"]["type"]["count"] == 8192
    assert "current_task" in syms and syms["current_task"]["type"]["kind"] == "pointer"
    # functions BTF names are typed (object_from_symbol on them: linux.sockscan)
    assert syms["sock_def_destruct"]["type"] == {"kind": "function"}
    assert "type" not in syms["_text"] or syms["_text"]["type"]["kind"] == "array"
    task = committed_isf["user_types"]["task_struct"]["fields"]
    for member in ("pid", "tgid", "comm", "tasks", "mm", "active_mm", "real_parent", "files"):
        assert member in task, member
    assert committed_isf["base_types"]["pointer"]["size"] == 8


def test_isf_independent_of_kaslr_slide(tmp_path, committed_isf_bytes):
    """Re-slide the committed kallsyms dump: the ISF (link-time addresses) must not change."""
    text = lzma.decompress(artefacts.KALLSYMS_XZ.read_bytes()).decode()
    lines = []
    for line in text.splitlines():
        addr, rest = line.split(" ", 1)
        value = int(addr, 16)
        if value >= 0xFFFFFFFF80000000:
            value += 0x1E00000  # another 2 MiB-aligned slide
        lines.append(f"{value:016x} {rest}")
    (tmp_path / "kallsyms.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "slid.json"
    argv = ["--btf", str(artefacts.BTF_XZ), "--banner", str(artefacts.BANNER)]
    argv += ["--extra-symbols", str(artefacts.KALLSYMS_TABLES)]
    btf2isf.main([*argv, "--kallsyms", str(tmp_path / "kallsyms.txt"), "-o", str(out)])
    assert out.read_bytes() == committed_isf_bytes


def test_find_kallsyms_tables_synthetic():
    """Lay out tables the way scripts/kallsyms.c does (6.2+ with seqs_of_names) and find them."""

    def pad8(b: bytearray) -> None:
        b += b"\0" * (-len(b) % 8)

    n = 300  # more than 256: two markers
    ro = bytearray(b"\xaa" * 16)
    offsets_at = len(ro)
    ro += struct.pack(f"<{n}i", *range(n))
    pad8(ro)
    base_at = len(ro)
    ro += struct.pack("<Q", 0xFFFFFFFF81000000)
    num_at = len(ro)
    ro += struct.pack("<I", n)
    pad8(ro)
    names_at = len(ro)
    starts = []
    for i in range(n):
        if i % 256 == 0:
            starts.append(len(ro) - names_at)
        entry = bytes([0x54]) + f"sym{i}".encode()
        if i == 5:  # a "big symbol" with a two-byte length
            entry = bytes([0x54]) + b"x" * 200
            ro += bytes([0x80 | (len(entry) & 0x7F), len(entry) >> 7]) + entry
            continue
        ro += bytes([len(entry)]) + entry
    pad8(ro)
    markers_at = len(ro)
    ro += struct.pack(f"<{len(starts)}I", *starts)
    pad8(ro)
    seqs_at = len(ro)
    ro += b"\1\2\3" * n
    pad8(ro)
    tokens_at = len(ro)
    token_offsets = []
    for i in range(256):
        token_offsets.append(len(ro) - tokens_at)
        ro += (bytes([i]) if 32 < i < 127 else b"t%d" % i) + b"\0"
    pad8(ro)
    index_at = len(ro)
    ro += struct.pack("<256H", *token_offsets)
    elf = btf2isf.ElfFile(_tiny_elf({".rodata": bytes(ro)}))
    base = 0xFFFFFFFF82000000
    found = btf2isf.find_kallsyms_tables(elf, n)
    assert found == {
        "kallsyms_offsets": base + offsets_at,
        "kallsyms_relative_base": base + base_at,
        "kallsyms_num_syms": base + num_at,
        "kallsyms_names": base + names_at,
        "kallsyms_markers": base + markers_at,
        "kallsyms_seqs_of_names": base + seqs_at,
        "kallsyms_token_table": base + tokens_at,
        "kallsyms_token_index": base + index_at,
    }
    assert btf2isf.find_kallsyms_tables(elf, n + 1) == {}


# --------------------------------------------------------------------------- refused inputs


DEBIAN_STUB_MAP = (
    "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n"
)


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        (DEBIAN_STUB_MAP, "_text/init_task"),
        ("ffffffff81000000 T _text\n", "init_task"),
        ("0000000000000000 T _text\n0000000000000000 D init_task\n", "_text/init_task"),
    ],
)
def test_unusable_symbol_list_is_refused_in_one_line(tmp_path, capsys, text, missing):
    b = BtfBlob()
    b.int_("char", 1, signed=True, char=True)
    (tmp_path / "btf.bin").write_bytes(b.bytes())
    (tmp_path / "System.map").write_text(text)
    out = tmp_path / "out.json"
    argv = ["--btf", str(tmp_path / "btf.bin"), "--system-map", str(tmp_path / "System.map")]
    assert btf2isf.main([*argv, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"no {missing} (with an address): not a usable symbol list" in err
    assert "System.map of its build tree or debug package" in err and "/proc/kallsyms" in err
    assert not out.exists()


def test_lz4_is_a_declared_runtime_dependency():
    """LZ4 bzImages (Debian's cloud kernels) need lz4 at run time, not only in tests."""
    from importlib.metadata import requires

    runtime = [req for req in requires("volatility3-vmrs") or [] if "extra ==" not in req]
    assert any(req.replace(" ", "").startswith("lz4>=") for req in runtime), runtime
