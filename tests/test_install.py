"""Discovery: a built wheel in a fresh virtual environment makes the stock `vol` list the
pack's plugins; uninstalling removes them and leaves volatility3's own files alone."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK_PLUGINS = (
    "vmrs.info.Info",
    "vmrs.registers.Registers",
    "vmrs.memmap.Memmap",
    "vmrs.keys.Keys",
    "vmrs.pescan.PEScan",
    "vmrs.vtop.Vtop",
    "vmrs.config.Config",
)


def run(*command, timeout=900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{command} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_wheel_install_lists_plugins_and_uninstall_removes_them(tmp_path):
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, REPO)
    (wheel,) = wheels.glob("volatility3_vmrs-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", wheel)
    site = Path(
        run(
            python, "-c", "import volatility3, os; print(os.path.dirname(volatility3.__file__))"
        ).stdout.strip()
    )
    own_files = [site / "__init__.py", site / "plugins" / "__init__.py"]
    before = [digest(path) for path in own_files]
    assert (site / "plugins" / "vmrs" / "info.py").is_file()

    listing = run(venv / "bin" / "vol", "-h").stdout
    for plugin in PACK_PLUGINS:
        assert plugin in listing, plugin
    assert "windows.pslist.PsList" in listing  # the stock plugins are all still there
    assert "verify" in run(venv / "bin" / "vmrs", "-h").stdout  # the console script

    run(python, "-m", "pip", "uninstall", "-y", "-q", "volatility3-vmrs")
    listing = run(venv / "bin" / "vol", "-h").stdout
    assert "vmrs." not in listing
    assert "windows.pslist.PsList" in listing
    assert [digest(path) for path in own_files] == before
    assert not (site / "plugins" / "vmrs").exists()
    assert not (venv / "bin" / "vmrs").exists()
