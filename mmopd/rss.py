"""This process's resident memory: now (VmRSS), its peak (VmHWM), and a log of both after each phase.

`mmopd bench opd` runs each side in its own process and logs the same phases on both (imports, models
loaded, the first step's parts, all steps), so a peak can be read as what each phase added.
"""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """The process's peak RSS: the kernel's high-water mark (VmHWM, the same counter VmRSS reads), or
    ru_maxrss where /proc has none; ru_maxrss alone can lag the current VmRSS on Linux."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def current_rss_mb() -> float:
    return _status_mb("VmRSS") or float("nan")


def _status_mb(field: str) -> float:
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class PhaseLog:
    """[phase, RSS after it, peak so far] rows, in MB; `wrap` logs after each call of a function."""

    def __init__(self) -> None:
        self.rows: list[list] = []

    def mark(self, phase: str) -> None:
        self.rows.append([phase, round(current_rss_mb(), 1), round(self.peak(), 1)])

    def peak(self) -> float:
        """The peak so far: Linux reports VmHWM as max(its stored high-water mark, the RSS now) and updates the
        stored mark only now and then, so a reading can fall below an earlier one; the largest reading counts."""
        return max([peak_rss_mb(), *(row[2] for row in self.rows)])

    def wrap(self, function, phase: str, times: int = 1):
        """`function`, logging `phase` after each of its first `times` calls."""
        calls = [0]

        def logged(*args, **kwargs):
            result = function(*args, **kwargs)
            calls[0] += 1
            if calls[0] <= times:
                self.mark(phase)
            return result

        return logged
