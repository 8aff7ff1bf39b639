"""Write a demo Hyper-V saved state holding a real Linux guest's memory.

    .venv/bin/python examples/make_demo_vmrs.py demo.vmrs
    vol -s symbols -f demo.vmrs linux.pslist

The memory and both vCPUs' registers come from the committed QEMU capture of a stock
Debian kernel (tests/fixtures/linux_guest); the file is laid out by the project's test
writer, with XPRESS-compressed RamBlocks as Hyper-V writes them. Runs from a checkout.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.linux_guest import artefacts  # noqa: E402
from tests.support.linux_guest import build_vmrs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="then: vol -s symbols -f OUTPUT linux.pslist",
    )
    parser.add_argument("output", type=Path, help="the .vmrs file to write (about 40 MB)")
    target = parser.parse_args(argv).output
    with tempfile.TemporaryDirectory() as scratch:
        elf = artefacts.elf_path(scratch)
        build_vmrs(elf, target, "xpress")
    banner = artefacts.load_manifest()["banner"].strip()
    print(f"wrote {target} ({target.stat().st_size >> 20} MiB): {banner}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
