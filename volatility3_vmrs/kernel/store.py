"""Where ISFs made from guest memory are kept, and how one is written.

``$VMRS_SYMBOLS_DIR`` when set, else ``vmrs-btf/`` under Volatility's per-user symbol
directory (``$XDG_CACHE_HOME/volatility3/symbols``, by default
``~/.cache/volatility3/symbols``), which the stock ``vol`` searches for ISFs. Deleting
the directory (or one file) clears what was made; the next run makes it again.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Dict

from volatility3_vmrs.tools import btf2isf

SYMBOLS_DIR_ENV = "VMRS_SYMBOLS_DIR"
SUBDIRECTORY = "vmrs-btf"


def symbols_directory() -> Path:
    """The per-user directory the pack writes ISFs made from memory to."""
    override = os.environ.get(SYMBOLS_DIR_ENV)
    if override:
        return Path(override).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache, "volatility3", "symbols", SUBDIRECTORY).resolve()


def isf_file_name(banner: bytes, release: str) -> str:
    """``linux/<release>-<12 hex of sha256(banner)>.json.gz``: one file per banner."""
    safe = "".join(c if c.isalnum() or c in "._-+" else "_" for c in release)
    digest = hashlib.sha256(banner).hexdigest()[:12]
    return f"linux/{safe}-{digest}.json.gz"


def write_isf(path: Path, isf: Dict[str, Any]) -> None:
    """Write ``isf`` as gzip'd JSON (fast to write and load), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = gzip.compress(btf2isf.dumps(isf), compresslevel=1, mtime=0)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
