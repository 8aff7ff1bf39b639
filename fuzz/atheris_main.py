"""Coverage-guided fuzzing of one target with atheris (libFuzzer).

``python -m fuzz.atheris_main TARGET CORPUS_DIR [libFuzzer flags...]``; normally started
by ``python -m fuzz --engine atheris``. The project's modules are imported under
atheris' instrumentation so libFuzzer sees their branch coverage. An expected
``VmrsError`` is swallowed; anything else propagates and libFuzzer saves the input as
``crash-*`` under ``-artifact_prefix``; ``-timeout`` and ``-rss_limit_mb`` catch hangs and
memory blow-ups.
"""

from __future__ import annotations

import sys


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["volatility3_vmrs"]):
        import volatility3_vmrs.savedstate.memory
        import volatility3_vmrs.savedstate.processors
        import volatility3_vmrs.savedstate.provider
        import volatility3_vmrs.savedstate.storage
        import volatility3_vmrs.savedstate.xpress  # noqa: F401
    from fuzz.targets import TARGETS

    name = sys.argv[1]
    target = TARGETS[name]

    def one_input(data: bytes) -> None:
        try:
            target.function(data)
        except target.expected:
            pass

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
