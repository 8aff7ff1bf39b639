"""Opening builds tens of thousands of small objects and keeps all of them.

CPython's cyclic collector runs a pass every few hundred new container objects and,
as the young objects survive, ever larger ones over the older generations: for the
65,536 keys of a 64 GiB saved state that is a quarter of the opening time, spent
finding no garbage. Opening therefore runs with the collector paused; it resumes
afterwards (only if it was running before), and ordinary reference counting still
frees everything the stages drop.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the ``with`` block (nesting is safe)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
