"""Whether a benchmark's ratios were measured on an idle machine: the 1-minute load average before a run, and
the spread of a run's timed steps (other work arriving mid-run slows some steps and not others).

The threshold is 0.35 runnable tasks per core (0.7 on 2 cores): one other busy process holds the 1-minute
average near 1.0, while an idle machine sits below 0.3. A run of our own leaves the average high for a while
after it ends (it decays with a 1-minute time constant: from 3 to 0.7 in about 90 s), hence the wait.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

LOAD_PER_CORE = 0.35
WAIT_S, POLL_S = 120.0, 5.0
SPREAD_MAX = 1.3  # slowest / fastest of steps doing the same work; above it something else took the cores


def loaded(load: float, cores: int) -> bool:
    """True when the 1-minute load average is above LOAD_PER_CORE per core."""
    return load > LOAD_PER_CORE * cores


def spread(seconds: Sequence[float]) -> float:
    """Slowest / fastest step (1.0 for fewer than two steps)."""
    return max(seconds) / min(seconds) if len(seconds) > 1 else 1.0


def uneven(seconds: Sequence[float], what: str) -> str | None:
    """None when the steps' spread is within SPREAD_MAX, else the warning to print."""
    if spread(seconds) <= SPREAD_MAX:
        return None
    return (
        f"warning: {what} spread {spread(seconds):.2f}x (slowest / fastest, above {SPREAD_MAX}): other work took "
        "the cores mid-run; these ratios are not an idle-machine measurement"
    )


def wait_for_idle() -> str | None:
    """Wait up to WAIT_S for the machine to be idle; None when it is, else the warning to print."""
    cores = len(os.sched_getaffinity(0))
    deadline = time.monotonic() + WAIT_S
    while loaded(load := os.getloadavg()[0], cores) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    if not loaded(load, cores):
        return None
    return (
        f"warning: machine loaded (load average {load:.2f} on {cores} cores): "
        "these ratios are not an idle-machine measurement"
    )
