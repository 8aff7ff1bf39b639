"""Shared fixtures: the real Hyper-V samples (committed in tests/data), the Linux guest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_NAMES = ("dissect-test.VMRS", "dissect-test.vmcx", "openvmm-88D07DD7.VMRS")


DATA_DIR = REPO_ROOT / "tests" / "data"


def samples_dir() -> Path:
    """``$VMRS_SAMPLES`` or the copies committed in ``tests/data/samples``."""
    return Path(os.environ.get("VMRS_SAMPLES", DATA_DIR / "samples"))


@pytest.fixture(scope="session")
def sample_paths() -> dict:
    # A missing sample is a broken test environment: fail loudly, never skip.
    directory = samples_dir()
    paths = {name: directory / name for name in SAMPLE_NAMES}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    assert not missing, f"real Hyper-V samples missing (set VMRS_SAMPLES): {missing}"
    return paths


@pytest.fixture(scope="session", autouse=True)
def isolated_symbol_store(tmp_path_factory):
    """Where the pack's automagic keeps the ISFs it makes, for the whole run: a temporary
    directory, never the user's ``~/.cache/volatility3/symbols`` (which Volatility searches:
    an ISF left there would satisfy later runs that must make their own)."""
    directory = tmp_path_factory.mktemp("vmrs_symbol_store")
    previous = os.environ.get("VMRS_SYMBOLS_DIR")
    os.environ["VMRS_SYMBOLS_DIR"] = str(directory)
    yield directory
    if previous is None:
        os.environ.pop("VMRS_SYMBOLS_DIR", None)
    else:
        os.environ["VMRS_SYMBOLS_DIR"] = previous


@pytest.fixture(scope="session")
def vol_cache(tmp_path_factory) -> Path:
    """One Volatility cache for the whole run: its first build takes ~30 s."""
    return tmp_path_factory.mktemp("vol_cache")


@pytest.fixture(scope="session")
def linux_guest_elf(tmp_path_factory) -> Path:
    """The committed real-guest memory ELF, decompressed once per session."""
    from tests.fixtures.linux_guest import artefacts

    directory = tmp_path_factory.getbasetemp() / "linux_guest_elf"
    directory.mkdir(exist_ok=True)
    return artefacts.elf_path(directory)


@pytest.fixture(scope="session")
def linux_guest_vmrs(linux_guest_elf, tmp_path_factory) -> dict:
    """The real guest as .vmrs files, one per ``tests.support.linux_guest.VARIANTS``."""
    from tests.support.linux_guest import VARIANTS, build_vmrs

    directory = tmp_path_factory.mktemp("linux_vmrs")
    files = {}
    for variant in VARIANTS:
        files[variant] = directory / f"guest-{variant}.vmrs"
        build_vmrs(linux_guest_elf, files[variant], variant)
    return files


@pytest.fixture(scope="session")
def linux_guest_symbols() -> Path:
    """The repo's symbols directory (``-s`` for vol), holding linux/<release>.json.xz."""
    return REPO_ROOT / "symbols"
