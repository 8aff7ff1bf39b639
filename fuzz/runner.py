"""The built-in fuzz loop: mutate seeds, run a target, keep what goes wrong.

A finding is one of

* ``exception``: the target raised something that is not in ``Target.expected``
  (anything but a ``VmrsError`` subclass, by default; MemoryError and RecursionError
  included);
* ``hang``: one input ran longer than ``timeout`` seconds, twice in a row (SIGALRM
  interrupts Python code; the second run rules out a stall of a loaded machine; a
  watchdog thread saves the input and ends the process with status 3 if native code
  does not return within ``hard_timeout`` seconds);
* ``memory``: one input raised the process's peak RSS (``ru_maxrss``) by more than
  ``rss_growth_mb`` MiB.

Each finding is saved once per signature (kind, exception type, innermost project frame)
under ``findings/<target>/`` as ``<signature>-<sha1>.bin`` with a ``.txt`` beside it
holding the traceback; ``python -m fuzz --replay FILE --target NAME`` runs one again.
"""

from __future__ import annotations

import hashlib
import os
import random
import resource
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Dict, List, Optional, Sequence, Tuple

from fuzz.mutate import Mutator
from fuzz.seeds import Seed
from fuzz.targets import Target

PROJECT_MARKER = f"{os.sep}volatility3_vmrs{os.sep}"


class InputTimeout(BaseException):
    """Raised by the SIGALRM handler in the middle of a slow input."""


@dataclass
class Finding:
    target: str
    kind: str  # exception / hang / memory
    signature: str
    summary: str
    path: str


@dataclass
class TargetStats:
    target: str
    inputs: int = 0
    seconds: float = 0.0
    expected_errors: int = 0
    findings: int = 0
    slowest_input_seconds: float = 0.0
    unconfirmed_hangs: int = 0  # over the timeout once, fast when run again

    @property
    def inputs_per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


@dataclass
class RunReport:
    targets: List[TargetStats] = field(default_factory=list)
    findings: List[Finding] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    seconds: float = 0.0

    @property
    def total_inputs(self) -> int:
        return sum(stats.inputs for stats in self.targets)

    def as_dict(self) -> dict:
        return {
            "total_inputs": self.total_inputs,
            "seconds": round(self.seconds, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "targets": [
                {**asdict(stats), "inputs_per_second": round(stats.inputs_per_second, 1)}
                for stats in self.targets
            ],
            "findings": [asdict(finding) for finding in self.findings],
        }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far.

    On Linux this is VmHWM of the process's own address space: ``ru_maxrss`` survives
    exec(), so a child started by a large parent (pytest after the big-guest tests)
    would report the parent's peak and hide any growth of its own.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    # Elsewhere: ru_maxrss (Linux reports KiB, macOS bytes).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _signature(kind: str, error: Optional[BaseException]) -> str:
    if error is None:
        return kind
    frames = traceback.extract_tb(error.__traceback__)
    where = "?"
    for frame in reversed(frames):
        if PROJECT_MARKER in frame.filename or f"{os.sep}fuzz{os.sep}" in frame.filename:
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            break
    return f"{kind}-{type(error).__name__}-{where}"


class _Watchdog(threading.Thread):
    """Ends the process when native code ignores SIGALRM for ``hard_timeout`` seconds."""

    def __init__(self, runner: Runner, hard_timeout: float) -> None:
        super().__init__(daemon=True, name="fuzz-watchdog")
        self.runner = runner
        self.hard_timeout = hard_timeout
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            started = self.runner.current_started
            limit = max(self.hard_timeout, 2 * self.runner.current_timeout)
            if started is not None and time.monotonic() - started > limit:
                self.runner.save_finding(
                    self.runner.current_target or "?",
                    "hang",
                    "hang-native",
                    f"input still running after {limit} s (native code?)",
                    self.runner.current_input or b"",
                    "",
                )
                sys.stderr.write("fuzz: hard timeout; input saved, exiting with status 3\n")
                sys.stderr.flush()
                os._exit(3)


class Runner:
    def __init__(
        self,
        findings_dir: Path,
        *,
        timeout: float = 1.0,
        hard_timeout: float = 10.0,
        rss_growth_mb: float = 256.0,
        seed: int = 0,
        log: bool = True,
    ) -> None:
        self.findings_dir = findings_dir
        self.timeout = timeout
        self.hard_timeout = hard_timeout
        self.current_timeout = timeout
        self.rss_growth_mb = rss_growth_mb
        self.rng = random.Random(seed)
        self.log = log
        self.report = RunReport()
        self.signatures: Dict[str, int] = {}
        self.current_input: Optional[bytes] = None
        self.current_target: Optional[str] = None
        self.current_started: Optional[float] = None

    # --- findings --------------------------------------------------------------------------
    def save_finding(
        self, target: str, kind: str, signature: str, summary: str, data: bytes, details: str
    ) -> Optional[Finding]:
        """Save the input once per signature; return the Finding when it is new."""
        key = f"{target}:{signature}"
        self.signatures[key] = self.signatures.get(key, 0) + 1
        if self.signatures[key] > 1:
            return None
        directory = self.findings_dir / target
        directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha1(data).hexdigest()[:16]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in signature)[:120]
        path = directory / f"{safe}-{digest}.bin"
        path.write_bytes(data)
        path.with_suffix(".txt").write_text(f"{target}: {summary}\n\n{details}")
        finding = Finding(target, kind, signature, summary, str(path))
        self.report.findings.append(finding)
        if self.log:
            print(f"fuzz: FINDING {target} {signature}: {summary} -> {path}", flush=True)
        return finding

    # --- one input -------------------------------------------------------------------------
    def run_one(self, target: Target, data: bytes, stats: TargetStats) -> None:
        self.current_input, self.current_target = data, target.name
        rss_before = peak_rss_mb()
        kind, error, elapsed = self._timed(target, data, stats)
        if kind == "hang":
            # A loaded machine can stall any input for a second: count a hang only when
            # a second run is slow too.
            again, again_error, again_elapsed = self._timed(target, data, TargetStats("retry"))
            if again != "hang":
                stats.unconfirmed_hangs += 1
                kind, error = "", None
            else:
                error, elapsed = again_error, max(elapsed, again_elapsed)
        if not kind and peak_rss_mb() - rss_before > self.rss_growth_mb:
            kind = "memory"
        if not kind:
            return
        if error is not None:
            summary = f"{type(error).__name__}: {error}"[:300]
            details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        else:
            summary = f"{kind}: {elapsed:.2f} s, peak RSS {peak_rss_mb():.0f} MiB"
            details = summary
        signature = _signature(kind, error if kind == "exception" else None)
        if self.save_finding(target.name, kind, signature, summary, data, details):
            stats.findings += 1

    def _timed(
        self, target: Target, data: bytes, stats: TargetStats
    ) -> Tuple[str, Optional[BaseException], float]:
        """Run one input under the alarm: (finding kind or "", exception, seconds)."""
        error: Optional[BaseException] = None
        kind = ""
        # A target may allow more per input (the plugins target runs six plugins).
        timeout = self.current_timeout = target.timeout or self.timeout
        started = time.monotonic()
        self.current_started = started
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            target.function(data)
        except target.expected:
            stats.expected_errors += 1
        except InputTimeout as exc:
            kind, error = "hang", exc
        except Exception as exc:  # anything else is what we are looking for
            kind, error = "exception", exc
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.current_started = None
        elapsed = time.monotonic() - started
        stats.slowest_input_seconds = max(stats.slowest_input_seconds, elapsed)
        if not kind and elapsed > timeout:
            kind = "hang"
        return kind, error, elapsed

    # --- a campaign ------------------------------------------------------------------------
    def fuzz(
        self,
        target: Target,
        seeds: Sequence[Seed],
        *,
        inputs: Optional[int] = None,
        seconds: Optional[float] = None,
    ) -> TargetStats:
        """Every seed as is, then mutations until ``inputs`` or ``seconds`` runs out."""
        if not seeds:
            raise ValueError(f"no seeds for target {target.name}")
        stats = TargetStats(target.name)
        mutator = Mutator(self.rng, fix_container_checksums=target.corpus == "file")
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        watchdog = _Watchdog(self, self.hard_timeout)
        watchdog.start()
        started = time.monotonic()
        deadline = started + seconds if seconds is not None else None
        next_log = started + 10
        try:
            for seed in seeds:
                self.run_one(target, seed.data, stats)
                stats.inputs += 1
            while True:
                if inputs is not None and stats.inputs >= inputs:
                    break
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if self.log and now >= next_log:
                    rate = stats.inputs / (now - started)
                    print(
                        f"fuzz: {target.name}: {stats.inputs} inputs, {rate:.0f}/s, "
                        f"peak RSS {peak_rss_mb():.0f} MiB, findings {stats.findings}",
                        flush=True,
                    )
                    next_log = now + 30
                seed = self.rng.choice(seeds)
                self.run_one(target, mutator.mutate(seed, seeds), stats)
                stats.inputs += 1
        finally:
            watchdog.stopped.set()
            signal.signal(signal.SIGALRM, previous)
            stats.seconds = time.monotonic() - started
            self.report.targets.append(stats)
            self.report.peak_rss_mb = peak_rss_mb()
        return stats


def _on_alarm(signum: int, frame: Optional[FrameType]) -> None:
    raise InputTimeout("input exceeded the per-input time limit")
