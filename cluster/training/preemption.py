"""SIGTERM (preemption, `scancel`, a pod eviction) stops the job at the next step boundary with a checkpoint.

The first SIGTERM only sets a flag; the step in progress finishes, a checkpoint is written, and the job
exits with code 0 and one line saying where to resume from (`--resume` continues exactly, as after any
checkpoint). A second SIGTERM stops at once (the handler that was there before takes over again).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path


class Preempted(Exception):  # noqa: N818 - not an error: the job stopped where it was asked to
    """Raised at a step boundary after a SIGTERM, once the checkpoint is written."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"SIGTERM: stopped after step {step}; checkpoint {checkpoint}, continue with --resume")
        self.step, self.checkpoint = step, checkpoint


class StopRequest:
    def __init__(self) -> None:
        self.requested = False


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[StopRequest]:
    """A StopRequest whose `requested` turns true on SIGTERM (only the main thread can take signals: elsewhere
    it never does). Install it after ray.init, which sets its own SIGTERM handler in the driver."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame) -> None:
        request.requested = True
        signal.signal(signal.SIGTERM, previous)  # a second SIGTERM is not deferred
        print("SIGTERM: stopping after this step with a checkpoint (send it again to stop now)", flush=True)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)
