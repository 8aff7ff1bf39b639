"""How the pack's plugins refuse: one line, the last one the analyst sees.

:class:`PluginRefusal` is a ``SystemExit`` carrying one line. ``vol`` catches only
Volatility's own exceptions, and renders each of them with an invitation to file a bug
about Volatility (a "faulty layer implementation", an "unexpected situation"); a
``SystemExit`` passes through, so Python prints the pack's reason as the last line of
stderr and ``vol`` exits with status 1. Code that runs plugins itself can catch it.
"""

from __future__ import annotations

from typing import NoReturn


class PluginRefusal(SystemExit):
    """A pack plugin's refusal (bad option, file without the state it needs)."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(f"volatility3-vmrs: {message}")


def refuse(message: str) -> NoReturn:
    raise PluginRefusal(message)
