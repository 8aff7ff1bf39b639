"""Command line of the fuzz harness (``python -m fuzz --help``)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

DEFAULT_FINDINGS = Path(__file__).resolve().parent / "findings"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fuzz",
        description="Fuzz the saved-state reader; exit status 1 when anything is found.",
    )
    parser.add_argument(
        "--target",
        default="all",
        help="target name, comma-separated names, or 'all' (see --list)",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--inputs", type=int, help="inputs per target (seeds included)")
    budget.add_argument("--seconds", type=float, help="seconds per target")
    parser.add_argument("--engine", choices=("mutate", "atheris"), default="mutate")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the mutator")
    parser.add_argument("--findings", type=Path, default=DEFAULT_FINDINGS)
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per input")
    parser.add_argument(
        "--rss-growth-mb",
        type=float,
        default=256.0,
        help="peak-RSS growth by one input that counts as a finding",
    )
    parser.add_argument(
        "--memory-limit-mb",
        type=int,
        default=3072,
        help="RLIMIT_DATA of the process, so a runaway allocation is a MemoryError "
        "finding instead of the machine's problem (0: no limit)",
    )
    parser.add_argument("--stats", type=Path, help="write the run report as JSON here")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--write-seeds", type=Path, help="write the seed corpora here and exit")
    parser.add_argument("--replay", type=Path, nargs="+", help="run these inputs once each")
    parser.add_argument("--quiet", action="store_true")
    return parser


def _limit_memory(megabytes: int) -> None:
    if megabytes <= 0:
        return
    limit = megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def _select(names: str) -> List[str]:
    from fuzz.targets import TARGETS

    if names == "all":
        return list(TARGETS)
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in TARGETS]
    if unknown:
        raise SystemExit(f"unknown fuzz target(s) {unknown}; have {list(TARGETS)}")
    return chosen


def _run_atheris(args: argparse.Namespace) -> int:
    """One libFuzzer process per target (atheris.Fuzz never returns)."""
    from fuzz import seeds as seed_module

    corpora = seed_module.build_all()
    status = 0
    for name in _select(args.target):
        from fuzz.targets import TARGETS

        corpus_dir = args.findings / "atheris-corpus" / name
        seed_module.write_corpus(corpora[TARGETS[name].corpus], corpus_dir)
        artifacts = args.findings / name
        artifacts.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "fuzz.atheris_main",
            name,
            str(corpus_dir),
            f"-artifact_prefix={artifacts}{os.sep}",
            f"-timeout={max(1, round(args.timeout))}",
            f"-rss_limit_mb={args.memory_limit_mb or 2048}",
        ]
        if args.inputs is not None:
            command.append(f"-runs={args.inputs}")
        if args.seconds is not None:
            command.append(f"-max_total_time={max(1, round(args.seconds))}")
        if not args.quiet:
            print("fuzz:", " ".join(command), flush=True)
        result = subprocess.run(command, check=False)
        if result.returncode != 0:
            status = 1
    return status


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.engine == "atheris" and not args.list:
        return _run_atheris(args)

    from fuzz.runner import Runner, TargetStats
    from fuzz.targets import TARGETS

    if args.list:
        for target in TARGETS.values():
            print(f"{target.name:10} corpus={target.corpus:10} {target.doc}")
        return 0
    names = _select(args.target)
    _limit_memory(args.memory_limit_mb)
    runner = Runner(
        args.findings,
        timeout=args.timeout,
        rss_growth_mb=args.rss_growth_mb,
        seed=args.seed,
        log=not args.quiet,
    )
    if args.replay:
        for path in args.replay:
            for name in names:
                stats = TargetStats(name)
                runner.run_one(TARGETS[name], path.read_bytes(), stats)
                verdict = "finding" if stats.findings else "ok"
                print(f"{path}: {name}: {verdict}")
        return 1 if runner.report.findings else 0

    from fuzz import seeds as seed_module

    started = time.monotonic()
    corpora = seed_module.build_all()
    if args.write_seeds:
        for corpus, seeds in corpora.items():
            seed_module.write_corpus(seeds, args.write_seeds / corpus)
        return 0
    if args.inputs is None and args.seconds is None:
        args.inputs = 10_000
    if not args.quiet:
        sizes = {corpus: len(seeds) for corpus, seeds in corpora.items()}
        print(f"fuzz: seeds {sizes} built in {time.monotonic() - started:.1f} s", flush=True)
    for name in names:
        target = TARGETS[name]
        stats = runner.fuzz(
            target, corpora[target.corpus], inputs=args.inputs, seconds=args.seconds
        )
        if not args.quiet:
            print(
                f"fuzz: {name}: {stats.inputs} inputs in {stats.seconds:.1f} s "
                f"({stats.inputs_per_second:.0f}/s), {stats.expected_errors} refused with "
                f"VmrsError, {stats.findings} findings, slowest input "
                f"{stats.slowest_input_seconds * 1000:.0f} ms",
                flush=True,
            )
    report = runner.report
    report.seconds = time.monotonic() - started
    summary = report.as_dict()
    if args.stats:
        args.stats.parent.mkdir(parents=True, exist_ok=True)
        args.stats.write_text(json.dumps(summary, indent=2))
    print(
        f"fuzz: total {report.total_inputs} inputs in {report.seconds:.1f} s, peak RSS "
        f"{report.peak_rss_mb:.0f} MiB, {len(report.findings)} findings",
        flush=True,
    )
    return 1 if report.findings else 0
