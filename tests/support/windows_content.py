"""What the synthetic Windows guest holds: its processes, DLLs, kernel modules, drivers
and times, and the truth the tests compare plugin output with.

These are the guest's own choices (names, PIDs, addresses, times), not structure
layouts; :mod:`tests.support.windows_guest` lays them out in memory by the kernel's ISF.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

KERNEL_BASE = 0xFFFFF8005A200000  # 2 MiB aligned, in the randomised kernel range
# Whole seconds: Volatility renders Windows times to the second.
SYSTEM_TIME = datetime.datetime(2025, 3, 14, 9, 26, 53, tzinfo=datetime.timezone.utc)
BOOT_TIME = datetime.datetime(2025, 3, 14, 8, 1, 12, tzinfo=datetime.timezone.utc)
NT_BUILD_LAB = "19041.1.amd64fre.vb_release.191206-1406"
PE_TIMESTAMP = 0x5ED0A36B
SIZE_OF_IMAGE = 0xF00000


def wintime(moment: datetime.datetime) -> int:
    """A datetime as a Windows FILETIME (100 ns since 1601-01-01 UTC)."""
    epoch = datetime.datetime(1601, 1, 1, tzinfo=datetime.timezone.utc)
    delta = moment - epoch
    return (delta.days * 86400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def utf16(text: str) -> bytes:
    return text.encode("utf-16-le")


@dataclass(frozen=True)
class Dll:
    name: str
    path: str
    base: int
    size: int


@dataclass
class ProcessSpec:
    pid: int
    ppid: int
    name: str  # ImageFileName (15 bytes at most)
    create_time: datetime.datetime
    image_path: str = ""  # NT path of the image (SeAuditProcessCreationInfo)
    command_line: Optional[str] = None  # None: no PEB (System)
    win32_path: str = ""
    image_base: int = 0
    dlls: Tuple[Dll, ...] = ()
    session: Optional[int] = None
    threads: int = 1
    exit_time: Optional[datetime.datetime] = None
    shadow: bool = False  # give it a KVA-shadow user PML4

    @property
    def listed(self) -> bool:
        return self.exit_time is None


def _after_boot(seconds: int) -> datetime.datetime:
    return BOOT_TIME + datetime.timedelta(seconds=seconds)


NTDLL = Dll("ntdll.dll", r"C:\Windows\SYSTEM32\ntdll.dll", 0x7FFD2E6D0000, 0x1F5000)
KERNEL32 = Dll("KERNEL32.DLL", r"C:\Windows\System32\KERNEL32.DLL", 0x7FFD2D1A0000, 0xBE000)
KERNELBASE = Dll("KERNELBASE.dll", r"C:\Windows\System32\KERNELBASE.dll", 0x7FFD2B9E0000, 0x2C7000)
USER32 = Dll("USER32.dll", r"C:\Windows\System32\USER32.dll", 0x7FFD2C4F0000, 0x1A0000)


PROCESSES: Tuple[ProcessSpec, ...] = (
    ProcessSpec(4, 0, "System", BOOT_TIME, threads=142),
    ProcessSpec(
        388,
        4,
        "smss.exe",
        _after_boot(2),
        image_path=r"\Device\HarddiskVolume3\Windows\System32\smss.exe",
        command_line=r"\SystemRoot\System32\smss.exe",
        win32_path=r"C:\Windows\System32\smss.exe",
        image_base=0x7FF7A1C20000,
        dlls=(NTDLL,),
        threads=2,
    ),
    ProcessSpec(
        4412,
        4380,
        "explorer.exe",
        _after_boot(91),
        image_path=r"\Device\HarddiskVolume3\Windows\explorer.exe",
        command_line=r"C:\Windows\Explorer.EXE",
        win32_path=r"C:\Windows\Explorer.EXE",
        image_base=0x7FF6D7E40000,
        dlls=(NTDLL, KERNEL32, KERNELBASE, USER32),
        session=1,
        threads=71,
    ),
    ProcessSpec(
        6020,
        4412,
        "cmd.exe",
        _after_boot(735),
        image_path=r"\Device\HarddiskVolume3\Windows\System32\cmd.exe",
        command_line=r'"C:\Windows\system32\cmd.exe" /k echo saved state',
        win32_path=r"C:\Windows\system32\cmd.exe",
        image_base=0x7FF64A210000,
        dlls=(NTDLL, KERNEL32, KERNELBASE),
        session=1,
        threads=1,
        shadow=True,
    ),
    ProcessSpec(
        4380,
        636,
        "userinit.exe",
        _after_boot(84),
        image_path=r"\Device\HarddiskVolume3\Windows\System32\userinit.exe",
        command_line=r"C:\Windows\system32\userinit.exe",
        win32_path=r"C:\Windows\system32\userinit.exe",
        image_base=0x7FF79C5A0000,
        dlls=(NTDLL, KERNEL32, KERNELBASE),
        session=1,
        threads=0,
        exit_time=_after_boot(113),
    ),
)
EXE_SIZES = {
    "smss.exe": 0x25000,
    "explorer.exe": 0x4D2000,
    "cmd.exe": 0x5B000,
    "userinit.exe": 0xA000,
}

KERNEL_MODULES: Tuple[Tuple[str, str, int, int], ...] = (
    ("ntoskrnl.exe", r"\SystemRoot\system32\ntoskrnl.exe", KERNEL_BASE, SIZE_OF_IMAGE),
    ("hal.dll", r"\SystemRoot\system32\hal.dll", 0xFFFFF8005AF00000, 0x6C000),
    ("kdcom.dll", r"\SystemRoot\system32\kdcom.dll", 0xFFFFF80060E00000, 0xB000),
    ("CI.dll", r"\SystemRoot\system32\CI.dll", 0xFFFFF80061020000, 0xD7000),
    ("ACPI.sys", r"\SystemRoot\System32\drivers\ACPI.sys", 0xFFFFF80061A40000, 0xB9000),
    ("disk.sys", r"\SystemRoot\System32\drivers\disk.sys", 0xFFFFF80062410000, 0x20000),
)


@dataclass(frozen=True)
class Driver:
    name: str  # the object's name (its name header)
    path: str  # DriverName
    service_key: str
    base: int
    size: int


DRIVERS: Tuple[Driver, ...] = tuple(
    Driver(key, f"\\Driver\\{key}", key, base, size)
    for key, base, size in (
        (module[0].split(".")[0], module[2], module[3])
        for module in KERNEL_MODULES
        if module[0].endswith(".sys")
    )
)


def truth(kpcrs: List[int]) -> Dict[str, Any]:
    processes = []
    for spec in PROCESSES:
        image = (
            Dll(spec.name, spec.win32_path, spec.image_base, EXE_SIZES[spec.name])
            if spec.command_line is not None
            else None
        )
        processes.append(
            {
                "pid": spec.pid,
                "ppid": spec.ppid,
                "name": spec.name,
                "create_time": spec.create_time,
                "exit_time": spec.exit_time,
                "threads": spec.threads,
                "listed": spec.listed,
                "session": spec.session,
                "command_line": spec.command_line,
                "image_path": spec.win32_path or None,
                "audit_path": spec.image_path or None,
                "dlls": [
                    (dll.base, dll.size, dll.name, dll.path)
                    for dll in ([image] if image else []) + list(spec.dlls)
                ],
            }
        )
    return {
        "kernel_base": KERNEL_BASE,
        "processes": processes,
        "drivers": [
            {
                "name": d.name,
                "path": d.path,
                "service_key": d.service_key,
                "base": d.base,
                "size": d.size,
            }
            for d in DRIVERS
        ],
        "modules": [
            {"name": name, "path": path, "base": base, "size": size}
            for name, path, base, size in KERNEL_MODULES
        ],
        "build_lab": NT_BUILD_LAB,
        "system_time": SYSTEM_TIME,
        "system_root": "C:\\Windows",
        "cpu_count": 2,
        "major_minor": "15.19041",
        "pe_timestamp": PE_TIMESTAMP,
        "kpcrs": kpcrs,
    }
