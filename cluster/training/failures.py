"""Failures that end a job with one line a user can act on (never a traceback), and `run.auto_resume`.

Recoverable faults (a sampler actor or a reward replica that dies) are handled where they happen
(cluster/runtime/samplers.py, loop.score_with_retries); these are the ones that are not: a learner rank that
died, an actor that keeps dying, scoring that keeps failing, a checkpoint that could not be written.
`python -m cluster.main` prints `error: <message>` and exits with EXIT_FAILURE; with run.auto_resume > 0
it first restarts the job from its newest complete checkpoint, at most that many times.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from cluster.training.checkpoints import newest_valid

EXIT_FAILURE = 3  # a JobFailure; 2 is a config error, 0 a finished (or preempted and checkpointed) job


class JobFailure(RuntimeError):
    """The job cannot go on; the message says what failed and where to resume from."""


class LearnerDiedError(JobFailure):
    def __init__(self, rank: int, cause: str, last_checkpoint: Path | None):
        where = (
            f"last checkpoint {last_checkpoint}, continue with --resume"
            if last_checkpoint
            else "no checkpoint written yet"
        )
        super().__init__(f"learner rank {rank} died ({cause}); {where}")
        self.rank, self.last_checkpoint = rank, last_checkpoint


class ActorLostError(JobFailure):
    """A sampler actor died and did not come back (restarts used up, or it failed to start again)."""


class ScoringFailedError(JobFailure):
    """The reward service failed the same scoring call on every attempt."""


class CheckpointWriteError(JobFailure):
    """A checkpoint could not be written (e.g. a full disk); the previous complete one is untouched."""


def first_line(error: BaseException | str, limit: int = 200) -> str:
    """Ray's errors span many lines (tracebacks, hints); a log line keeps the first."""
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def run_with_auto_resume(job, run: Callable, log: Callable[[str], None] = print):
    """run(job); after a JobFailure restart from the newest checkpoint, at most job.run.auto_resume times."""
    attempt = 0
    while True:
        try:
            return run(job)
        except JobFailure as failure:
            checkpoint, _ = newest_valid(job.run.run_dir)
            if attempt >= job.run.auto_resume or checkpoint is None:
                raise
            attempt += 1
            log(f"error: {failure}; auto_resume {attempt}/{job.run.auto_resume}: restarting from {checkpoint}")
            job = dataclasses.replace(job, run=dataclasses.replace(job.run, resume=True))
